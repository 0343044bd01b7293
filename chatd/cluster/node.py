"""A clustered node: the one :class:`~chatd.core.hub.Hub` on Redis parts.

:func:`cluster_hub` builds it (``--cluster redis://...``):
:class:`~chatd.cluster.names.RedisNames`, :class:`~chatd.cluster.bus.RedisBus`,
:class:`~chatd.cluster.history.RedisHistory` and
:class:`~chatd.cluster.rooms.RedisRooms` over two
:class:`~chatd.cluster.link.RedisLink` s (commands, and the blocking
reader); :class:`ClusterService` connects them, runs the read loop and
the heartbeat (names, this node's liveness, the sweep of dead nodes'
members), and on stop gives the names up and disconnects.

With accounts (``--accounts`` with ``--cluster``), :func:`cluster_accounts`
adds :class:`~chatd.cluster.accounts.RedisAccounts` (its log read with the
messages, like the rooms' records) and :func:`use_cluster_accounts` puts
it under the hub and its moderation; the login throttle is a
:class:`~chatd.cluster.accounts.RedisThrottle` on the same connection.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatd.cluster.accounts import RedisAccounts, RedisThrottle
from chatd.cluster.bus import RedisBus
from chatd.cluster.entries import SkipLog
from chatd.cluster.history import RedisHistory
from chatd.cluster.link import Link, RedisLink
from chatd.cluster.names import HEARTBEAT, RedisNames
from chatd.cluster.rooms import RedisRooms
from chatd.cluster.scripts import ACCOUNT_LOG, ROOM_LOG
from chatd.core.hub import Hub
from chatd.metrics import Metrics


def new_node_id() -> str:
    """A node's name in Redis (in name values and stream entries)."""
    return uuid.uuid4().hex[:12]


def hub_on_links(
    clock: IReactorTime,
    commands: Link,
    reader: Link,
    max_message: int = 2000,
    metrics: Metrics | None = None,
    node: str | None = None,
    **options: Any,
) -> Hub:
    """A hub whose names, bus, history and rooms are in the Redis behind
    the two links (real ones, or a test's)."""
    node = node if node is not None else new_node_id()
    metrics = metrics if metrics is not None else Metrics()
    skips = SkipLog()  # one per node: the read loop's and history's skips are logged once
    bus = RedisBus(clock, commands, reader, node, max_message, metrics, skips)
    names = RedisNames(commands, node, when_ready=bus.when_ready)
    history = RedisHistory(commands, max_message, skips)
    directory = RedisRooms(commands, node)
    # The rooms' records are loaded before the node is ready, and kept
    # fresh from their log, read with the messages.
    bus.follow(ROOM_LOG, directory.start, directory.handle)
    hub = Hub(clock, history, names, bus, max_message=max_message, metrics=metrics, directory=directory, **options)
    # An account's sessions may be on any node: counted, and its presence
    # decided, in Redis.
    hub.account_sessions = names
    return hub


def cluster_accounts(hub: Hub) -> RedisAccounts:
    """The account store of a clustered hub (built by :func:`hub_on_links`),
    its names, bans and mutes loaded before the node is ready and kept
    fresh from their log; call before the :class:`ClusterService` starts."""
    if not isinstance(hub.bus, RedisBus):
        raise TypeError("cluster_accounts wants a hub built by cluster_hub()")
    store = RedisAccounts(hub.bus.commands, hub.bus.node)
    hub.bus.follow(ACCOUNT_LOG, store.start, store.handle)
    return store


def cluster_throttle(hub: Hub, clock: IReactorTime, register_rate: int) -> RedisThrottle:
    """The login throttle and registration rate of a clustered hub, shared by every node."""
    if not isinstance(hub.bus, RedisBus):
        raise TypeError("cluster_throttle wants a hub built by cluster_hub()")
    return RedisThrottle(hub.bus.commands, clock, hub.bus.node, register_rate=register_rate)


def use_cluster_accounts(hub: Hub, store: RedisAccounts, operators: frozenset[str] = frozenset(), max_sessions: int = 8) -> None:
    """Accounts on for a clustered hub: ``store`` keeps them, their rooms,
    DMs, bans and mutes; the hub asks its copy of the names at once."""
    hub.use_accounts(store, operators, max_sessions, spelling=store.account_name)
    hub.moderation.store = store
    # Another node's ban or mute: this node's cached mutes are read again.
    store.on_change = hub.moderation.restrictions_changed


def cluster_hub(reactor: Any, url: str, max_message: int = 2000, metrics: Metrics | None = None, **options: Any) -> Hub:
    """A hub that is one node of the cluster on the Redis at ``url``
    (``redis://HOST:PORT/DB``); nothing connects before
    :class:`ClusterService` starts."""
    commands, reader = RedisLink.pair(reactor, url)
    return hub_on_links(reactor, commands, reader, max_message, metrics, **options)


class ClusterService(MultiService):
    """Runs a clustered hub: its links, read loop and heartbeat."""

    log = Logger()

    def __init__(self, hub: Hub, clock: IReactorTime) -> None:
        super().__init__()
        if not isinstance(hub.bus, RedisBus) or not isinstance(hub.registry, RedisNames):
            raise TypeError("ClusterService runs a hub built by cluster_hub()")
        self.bus: RedisBus = hub.bus
        self.names: RedisNames = hub.registry
        self.rooms: RedisRooms | None = hub.directory if isinstance(hub.directory, RedisRooms) else None
        heartbeat = TimerService(HEARTBEAT, self._beat)
        heartbeat.clock = clock
        heartbeat.setServiceParent(self)

    def _beat(self) -> None:
        # A TimerService stops for good at the first exception: log it
        # and keep beating, or every name here would expire.
        try:
            self.names.heartbeat()
        except Exception:
            self.log.failure("the names' heartbeat failed")
        if self.rooms is not None:
            try:
                self.rooms.heartbeat()
                self.rooms.sweep()
            except Exception:
                self.log.failure("the rooms' heartbeat failed")

    @property
    def links(self) -> list[Link]:
        """The node's Redis links (the names share the bus's commands)."""
        links: list[Link] = [self.bus.commands, self.bus.reader]
        if all(link is not self.names.link for link in links):
            links.append(self.names.link)
        return links

    def startService(self) -> None:
        """Connect, start reading (the start first), and beat."""
        for link in self.links:
            link.start()
        self.bus.start()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        """Stop beating and reading, give our names up, disconnect."""
        stopped: Deferred[Any] = super().stopService()
        self.bus.stop()
        stopped.addBoth(lambda _: self.names.release_all())
        if self.rooms is not None:
            rooms = self.rooms
            stopped.addBoth(lambda _: rooms.retire())
        stopped.addBoth(lambda _: DeferredList([link.stop() for link in self.links], consumeErrors=True))
        return stopped.addErrback(lambda failure: None)

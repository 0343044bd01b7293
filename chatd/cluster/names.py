"""Names held across the cluster, in Redis (:class:`RedisNames`).

A name is ``chatd:name:<lower>``, set with ``NX`` and a short expiry
(:data:`NAME_TTL_MS`) to ``<node>|<Name>``; the owning node's heartbeat
refreshes its names every :data:`HEARTBEAT` seconds, so a dead node's
names vanish within the expiry.  A node cut off from Redis re-takes its
names when it is back, unless another node took one meanwhile: that
name's ``on_lost`` is called (its session must end), and the name is no
longer ours (releasing it later must not touch the other node's).
``chatd:users`` keeps the cluster-wide login order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd import messages
from chatd.cluster.link import Link, busy_unless_chat_error, cluster_busy
from chatd.cluster.scripts import CLAIM_NAME, LOGIN_SEQ_KEY, REFRESH_NAMES, RELEASE_NAME, USERS_KEY, name_key
from chatd.interfaces import INameRegistry
from chatd.messages import ChatError

#: A name's key lives this long without a heartbeat (ms).
NAME_TTL_MS = 10_000
#: How often a node refreshes its names (s).
HEARTBEAT = 2.0


@dataclass(eq=False)
class _Held:
    """A name this node holds: its key, its value, its login sequence."""

    name: str
    lower: str
    key: str
    value: str
    seq: str
    on_lost: Callable[[], object] | None


def _nothing_yet() -> Deferred[None]:
    return succeed(None)


@implementer(INameRegistry)
class RedisNames:
    """The cluster's names, claimed and refreshed by this node in Redis.

    ``when_ready`` is waited for before each claim: the bus's readiness
    (a node must know where it starts reading the streams before anyone
    logs in there, or a message posted at once could be missed).
    """

    log = Logger()

    def __init__(self, link: Link, node: str, when_ready: Callable[[], Deferred[None]] = _nothing_yet) -> None:
        self.link = link
        self.node = node
        self.when_ready = when_ready
        self._held: dict[str, _Held] = {}  # lower-cased -> ours

    def claim(self, name: str, on_lost: Callable[[], object] | None = None) -> Deferred[None]:
        """Take ``name`` cluster-wide (``name_taken``; ``server_busy`` when
        Redis is away or the node not ready within the call timeout)."""
        claimed = self.when_ready().addCallback(lambda _: self._claim(name, on_lost))
        return claimed.addErrback(busy_unless_chat_error)

    def _claim(self, name: str, on_lost: Callable[[], object] | None) -> Deferred[None]:
        if not self.link.connected:
            raise cluster_busy()
        lower = name.lower()
        value, key = f"{self.node}|{name}", name_key(lower)
        d = self.link.call("EVAL", CLAIM_NAME, "3", key, LOGIN_SEQ_KEY, USERS_KEY, value, str(NAME_TTL_MS), lower)

        def claimed(seq: Any) -> None:
            if not int(seq):
                raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")
            self._held[lower] = _Held(name, lower, key, value, str(seq), on_lost)

        return d.addCallback(claimed)

    def release(self, name: str) -> None:
        """Give ``name`` up (if it is still ours); a failure is logged
        (the name then expires within :data:`NAME_TTL_MS`)."""
        self._release(name.lower()).addErrback(self._log_failure, "releasing a name")

    def _release(self, lower: str) -> Deferred[Any]:
        held = self._held.pop(lower, None)
        if held is None:
            return succeed(None)
        return self.link.call("EVAL", RELEASE_NAME, "2", held.key, USERS_KEY, held.value, lower)

    def release_all(self) -> Deferred[Any]:
        """Give up every name we hold (at shutdown); fires when Redis answered."""
        releases = [self._release(lower) for lower in list(self._held)]
        return DeferredList(releases, consumeErrors=True).addErrback(lambda failure: None)

    @property
    def held(self) -> list[str]:
        """The names this node holds, as given."""
        return [held.name for held in self._held.values()]

    def names(self) -> Deferred[list[str]]:
        """Every name held in the cluster, in login order (expired ones
        are pruned from the order as they are met)."""
        d = self.link.call("ZRANGE", USERS_KEY, "0", "-1").addCallback(self._values_of)
        return d.addErrback(busy_unless_chat_error)

    def _values_of(self, lowers: Any) -> Deferred[list[str]] | list[str]:
        if not lowers:
            return []
        keys = [name_key(lower) for lower in lowers]
        return self.link.call("MGET", *keys).addCallback(self._present, lowers)

    def _present(self, values: list[Any], lowers: list[str]) -> list[str]:
        names = []
        for lower, value in zip(lowers, values):
            if value is None:
                # Expired (its node died): out of the login order too.
                self.link.call("ZREM", USERS_KEY, lower).addErrback(lambda failure: None)
            elif isinstance(value, str) and "|" in value:
                names.append(value.split("|", 1)[1])
        return names

    def heartbeat(self) -> None:
        """Refresh our names (re-take expired ones); names another node
        took while we were cut off are lost.  Never raises (a timer calls it)."""
        held = list(self._held.values())
        if not held or not self.link.connected:
            return
        keys = [USERS_KEY] + [entry.key for entry in held]
        args = [str(NAME_TTL_MS)]
        for entry in held:
            args += [entry.value, entry.lower, entry.seq]
        d = self.link.call("EVAL", REFRESH_NAMES, str(len(keys)), *keys, *args)
        d.addCallback(self._refreshed, {entry.lower: entry for entry in held})
        d.addErrback(self._log_failure, "refreshing names")

    def _refreshed(self, lost: Any, asked: dict[str, _Held]) -> None:
        # Names another node took while we were cut off: theirs now. Our
        # sessions of those names must go, or a name would exist twice.
        for lower in lost if isinstance(lost, list) else ():
            held = asked.get(lower) if isinstance(lower, str) else None
            if held is None or self._held.get(lower) is not held:
                continue  # released (or taken again) since we asked
            del self._held[lower]
            self.log.warn("{user} lost its name to another node while Redis was away", user=held.name)
            if held.on_lost is None:
                continue
            try:
                held.on_lost()
            except Exception:
                # One session failing to end must not keep the others.
                self.log.failure("telling {user} its name was lost", user=held.name)

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))

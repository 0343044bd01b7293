"""The server factory and its settings.

:class:`ChatFactory` builds one :class:`~chatd.frontends.json.protocol.ChatProtocol` per
connection and hands each the shared hub, the settings and the clock.
Several listeners (plain TCP, TLS, ...) may share one factory, and so
one hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import messages
from chatd.accounts.service import AccountService
from chatd.caps import ConnectionCaps, host_of
from chatd.stores.history import HistoryError, Retention
from chatd.core.hub import Hub
from chatd.frontends.json.protocol import ChatProtocol


@dataclass(frozen=True)
class ServerConfig:
    """Per-connection settings, from the command line (see ``chatd.tap``)."""

    framing: str = "auto"  # auto | lines | classic
    pace: float = 0.025  # seconds between classic-framing writes
    history_on_login: int | None = 100  # None: all
    max_request: int = 16384  # bytes in one request
    login_timeout: float = 60.0  # seconds; 0 turns it off
    idle_timeout: float = 0.0  # seconds a logged-in user may send nothing; 0: off
    msg_rate: float = 10.0  # messages per second per connection; 0: no limit
    msg_burst: float = 20.0  # messages a connection may send at once
    request_rate: float = 20.0  # request budget units per second per connection; 0: no limit
    request_burst: float = 100.0  # request budget units a connection may spend at once
    max_sendq: int = 1024 * 1024  # bytes of unsent output before a connection is dropped
    max_per_ip: int = 20  # connections from one address; 0: no limit
    max_connections: int = 10000  # connections in all; 0: no limit
    accounts: str = "off"  # off | optional | required (PROTOCOL.md section 6.4)
    registration: str = "open"  # open | closed (only server operators register)
    max_sessions: int = 8  # sessions one account may have at once


def close_all(protocols: list[Any], clock: IReactorTime, grace: float, abort_all: Any) -> Deferred[None]:
    """Tell each of ``protocols`` to shut down; a Deferred the factory
    fires once they are all closed (``abort_all()`` after ``grace``
    seconds for those that would not close), already fired if none."""
    for protocol in protocols:
        protocol.shut_down()
    if not protocols:
        return succeed(None)
    done: Deferred[None] = Deferred()
    abort = clock.callLater(grace, abort_all)

    def cancel_abort(result: Failure | None) -> Failure | None:
        if abort.active():
            abort.cancel()
        return result

    done.addBoth(cancel_abort)
    return done


class BusyProtocol(Protocol):
    """Answers ``server_busy`` (one JSON object and a newline), then closes."""

    def __init__(self, clock: IReactorTime, text: str) -> None:
        self.clock = clock
        self.text = text

    def connectionMade(self) -> None:
        assert self.transport is not None  # set by makeConnection, just before
        response = messages.error(messages.SERVER_BUSY, self.text, messages.format_timestamp(self.clock.seconds()))
        self.transport.write(messages.encode(response) + b"\n")
        self.transport.loseConnection()


class ChatFactory(ServerFactory[ChatProtocol]):
    """Builds chat connections that share one hub, within connection caps."""

    protocol = ChatProtocol
    log = Logger()

    def __init__(
        self,
        hub: Hub,
        config: ServerConfig,
        clock: IReactorTime,
        accounts: AccountService | None = None,
        operators: frozenset[str] = frozenset(),
    ) -> None:
        self.hub = hub
        self.config = config
        self.clock = clock
        # Registration, logins with a password, password changes; None
        # with --accounts off.
        self.accounts = accounts
        # Server operators (section 6.5): lower-cased account names.
        self.operators = operators
        # The last unsolicited event encoded, reused for its next recipients.
        self.event_cache: tuple[Any, bytes] | None = None
        #: The last presence line (see chatd.frontends.json.protocol.presence_line).
        self.presence_cache: tuple[tuple[str, str, str, str], bytes] | None = None
        self.protocols: set[ChatProtocol] = set()  # open chat connections
        # One caps object for every listener (TCP, TLS, and the web port's
        # HTTP connections: see chatd.frontends.site), so no way in escapes the caps.
        self.caps = ConnectionCaps(config.max_per_ip, config.max_connections)
        self._holding_slot: set[ChatProtocol] = set()  # chat connections that took a cap slot
        self.shutting_down = False
        self._until_empty: list[Deferred[None]] = []
        hub.metrics.watch(self._live_counts)

    def _live_counts(self) -> tuple[dict[str, int], int]:
        by_transport: dict[str, int] = {}
        for protocol in self.protocols:
            by_transport[protocol.transport_kind] = by_transport.get(protocol.transport_kind, 0) + 1
        return by_transport, self.local_users

    @property
    def local_users(self) -> int:
        """Users logged in on this node's connections.

        The hub's own count, synchronous: a clustered hub's ``names()`` is
        a Deferred (a Redis round trip), which a scrape or /health cannot
        wait for.
        """
        return self.hub.local_users

    @property
    def connections(self) -> int:
        """Open chat connections (busy refusals not counted)."""
        return len(self.protocols)

    @property
    def per_ip(self) -> dict[str, int]:
        """Open connections per remote host, all listeners together (the shared caps')."""
        return self.caps.per_ip

    # The override returns a BusyProtocol when refusing, not only a
    # ChatProtocol as Factory[ChatProtocol] promises; its callers (the
    # listening port, the web side) take any protocol.
    def buildProtocol(  # type: ignore[override]  # a refusal is a BusyProtocol
        self, addr: IAddress | None, holds_slot: bool = False
    ) -> Protocol:
        """A chat connection for ``addr``, or a busy answer over a cap.

        ``holds_slot``: the connection already counts against the caps (a
        WebSocket: its HTTP connection took the slot), so it takes none.
        """
        host = host_of(addr)
        if self.shutting_down:
            return BusyProtocol(self.clock, "The server is shutting down.")
        if not holds_slot:
            refusal = self.caps.acquire(host)
            if refusal is not None:
                return BusyProtocol(self.clock, refusal)
        protocol = super().buildProtocol(addr)
        assert protocol is not None
        protocol.peer_host = host
        self.protocols.add(protocol)
        if not holds_slot:
            self._holding_slot.add(protocol)
        return protocol

    def connection_closed(self, protocol: ChatProtocol) -> None:
        """A chat connection ended: it no longer counts against the caps."""
        host, protocol.peer_host = protocol.peer_host, None
        if host is None:
            return  # not counted, or already uncounted
        self.protocols.discard(protocol)
        if protocol in self._holding_slot:
            self._holding_slot.discard(protocol)
            self.caps.release(host)
        for waiter in self._until_empty if not self.protocols else ():
            if not waiter.called:
                waiter.callback(None)

    def shut_down(self, grace: float) -> Deferred[None]:
        """Tell every user the server is going, close every connection.

        Accepted messages still pending are stored and delivered first.
        Connections get ``grace`` seconds to take their last output; then
        the rest are aborted.  The Deferred fires when all are closed.
        """
        self.shutting_down = True
        self.hub.flush()
        self.log.info("shutting down: closing {count} connections", count=len(self.protocols))
        done = close_all(list(self.protocols), self.clock, grace, self._abort_all)
        self._until_empty = [done]
        return done

    def _abort_all(self) -> None:
        for protocol in list(self.protocols):
            # Every transport here can abort: TCP, TLS, the WebSocket adapter.
            cast(ITCPTransport, protocol.transport).abortConnection()


class ShutdownService(Service):
    """On stop: the factory tells every user and closes their connections.

    It stops after the listeners (so no one new arrives) and before the
    history service (which then stores anything still pending).
    """

    def __init__(self, factory: ChatFactory, grace: float = 3.0) -> None:
        self.factory = factory
        self.grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.factory.shut_down(self.grace)


#: How often the history service looks at the SQLite WAL, in seconds.
CHECKPOINT_EVERY = 1.0
#: The WAL size past which it is checkpointed (in a thread); SQLite's own
#: automatic checkpoint, which it replaces, ran at 1,000 pages (4 MiB).
CHECKPOINT_BYTES = 4 * 1024 * 1024


class HistoryService(Service):
    """Owns the history store's life: open, prune on a timer, flush and close.

    On stop, the hub's pending batch is committed before the store closes,
    so nothing accepted is lost on a clean shutdown.
    """

    log = Logger()

    def __init__(
        self,
        hub: Hub,
        retention: Retention,
        clock: IReactorTime,
        prune_every: float = 600.0,
        in_thread: Callable[[Callable[[], None]], Deferred[None]] | None = None,
    ) -> None:
        self.hub = hub
        self.retention = retention
        self.clock = clock
        self.prune_every = prune_every
        self._pruner: LoopingCall | None = None
        # The WAL checkpoint (SQLite): in a thread of the reactor's pool
        # (tests give a function that runs it at once).
        self._in_thread = in_thread
        self._checkpointer: LoopingCall | None = None
        self._checkpointing = False

    def startService(self) -> None:
        super().startService()
        store = self.hub.history
        reopen = getattr(store, "open", None)
        if reopen is not None:
            reopen()
        if self.retention.count is not None or self.retention.days is not None:
            self._pruner = LoopingCall(self.prune)
            self._pruner.clock = self.clock
            self._pruner.start(self.prune_every, now=True)
        # (A test's reactor without a clock, such as MemoryReactor, runs no timers.)
        if getattr(self._sqlite(), "checkpoint_wal", None) is not None and IReactorTime.providedBy(self.clock):
            self._checkpointer = LoopingCall(self.checkpoint)
            self._checkpointer.clock = self.clock
            self._checkpointer.start(CHECKPOINT_EVERY, now=False)

    def _sqlite(self) -> object:
        """The store under the hub's history reader (an SQLite one has a WAL)."""
        history = self.hub.history
        return getattr(history, "store", history)

    def checkpoint(self) -> None:
        """Copy the SQLite WAL into the database in a thread, once it has
        grown past :data:`CHECKPOINT_BYTES` (one at a time)."""
        store: Any = self._sqlite()
        if self._checkpointing or store.wal_bytes() < CHECKPOINT_BYTES:
            return
        in_thread = self._in_thread
        if in_thread is None:
            from twisted.internet.threads import deferToThread

            in_thread = deferToThread
        self._checkpointing = True

        def done(result: object) -> None:
            self._checkpointing = False
            if isinstance(result, Failure):
                self.log.error("checkpointing history failed: {problem}", problem=str(result.value))

        in_thread(store.checkpoint_wal).addBoth(done)

    def prune(self) -> None:
        """Drop history that the retention setting no longer keeps."""
        try:
            dropped = self.hub.history.prune(self.retention, self.clock.seconds())
        except HistoryError as problem:
            self.log.error("pruning history failed: {problem}", problem=str(problem))
            return
        if dropped:
            self.log.info("pruned {count} old messages from history", count=dropped)

    def stopService(self) -> Any:
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        if self._checkpointer is not None and self._checkpointer.running:
            self._checkpointer.stop()
        self.hub.flush()
        try:
            self.hub.history.close()
        except HistoryError as problem:
            self.log.error("closing history failed: {problem}", problem=str(problem))
        return super().stopService()

"""A connection to Redis that fails fast, as the cluster's parts use it.

txredisapi 1.6 notes: ``convertNumbers=False`` (so "007" stays "007");
every call checks the pool is connected first and has a reply timeout
(calls made while disconnected would otherwise wait forever); ``XREAD
BLOCK`` runs on its own single connection, whose reply timeout is the
block plus a call's timeout.

The parts (:mod:`chatd.cluster.names`, :mod:`chatd.cluster.bus`,
:mod:`chatd.cluster.history`) take any :class:`Link`, so tests give them
an in-memory one.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlparse

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from chatd import messages
from chatd.messages import ChatError

#: Reply timeout of ordinary Redis calls (s); also how long a login waits
#: for a node that does not know its place in the streams yet.
CALL_TIMEOUT = 3.0
#: How long the reader's ``XREAD`` blocks on the server (s).
READ_BLOCK = 1.0
#: Reply timeout of the reader (s): a block and a call's timeout.  A
#: connection that died without a word (a blackholed network) would
#: otherwise wait for its reply for ever, and the node deliver nothing;
#: txredisapi drops it on the timeout and connects again.
READ_TIMEOUT = READ_BLOCK + CALL_TIMEOUT


class RedisUnavailable(Exception):
    """Redis cannot be reached right now."""


class Link(Protocol):
    """What the cluster's parts need of a Redis connection."""

    @property
    def connected(self) -> bool:
        """Whether a call may be made now."""

    def call(self, *args: str) -> Deferred[Any]:
        """One Redis command; fails with :class:`RedisUnavailable` when down."""

    def start(self) -> None:
        """Connect (and keep reconnecting)."""

    def stop(self) -> Deferred[Any]:
        """Disconnect for good."""


def parse_url(url: str) -> tuple[str, int, int]:
    """``redis://HOST:PORT/DB`` as (host, port, db)."""
    parsed = urlparse(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        raise ValueError(f"--cluster wants redis://HOST:PORT/DB, not {url!r}")
    try:
        db = int(parsed.path.strip("/") or 0)
        port = parsed.port or 6379
    except ValueError:
        raise ValueError(f"--cluster wants redis://HOST:PORT/DB, not {url!r}") from None
    return parsed.hostname, port, db


class RedisLink:
    """A txredisapi pool that fails fast when disconnected."""

    def __init__(self, reactor: Any, host: str, port: int, db: int, poolsize: int, timeout: float | None) -> None:
        import txredisapi  # type: ignore[import-untyped]  # it ships no annotations

        self.factory: Any = txredisapi.RedisFactory(
            f"{host}:{port}", db or None, poolsize, isLazy=True, convertNumbers=False, replyTimeout=timeout
        )
        self.factory.maxDelay = 2  # back within seconds of Redis's return
        self.factory.deferred.addErrback(lambda failure: None)  # reported by each call instead
        self.endpoint = HostnameEndpoint(reactor, host, port, timeout=5)

    @classmethod
    def pair(cls, reactor: IReactorTCP | IReactorTime, url: str) -> tuple[RedisLink, RedisLink]:
        """The two links of a node: commands (one connection, a reply
        timeout) and the blocking reader (one connection, a timeout just
        past its block)."""
        host, port, db = parse_url(url)
        # One command connection: Redis runs its commands in the order
        # sent, so a sender's messages get ids in the order it sent them.
        return cls(reactor, host, port, db, 1, CALL_TIMEOUT), cls(reactor, host, port, db, 1, READ_TIMEOUT)

    def start(self) -> None:
        """Connect (and keep reconnecting)."""
        self.factory.startConnecting(self.endpoint)

    def stop(self) -> Deferred[Any]:
        """Disconnect for good."""
        done: Deferred[Any] = self.factory.disconnect()
        return done

    @property
    def connected(self) -> bool:
        """Whether at least one connection of the pool is up."""
        return bool(self.factory.size)

    def call(self, *args: str) -> Deferred[Any]:
        """One Redis command; fails at once with RedisUnavailable if down."""
        if not self.connected:
            return fail(RedisUnavailable("Redis is not connected"))
        result: Deferred[Any] = self.factory.handler.execute_command(*args)
        return result


def cluster_busy() -> ChatError:
    """The ``server_busy`` a user gets while the cluster cannot answer."""
    return ChatError(messages.SERVER_BUSY, "The server cannot reach its cluster; try again soon.")


def busy_unless_chat_error(failure: Failure) -> Failure:
    """An errback: a ``ChatError`` passes, anything else becomes ``server_busy``."""
    if failure.check(ChatError):
        return failure
    return Failure(cluster_busy())

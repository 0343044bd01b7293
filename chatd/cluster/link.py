"""A connection to Redis that fails fast, as the cluster's parts use it.

:class:`RedisLink` speaks RESP2 itself (:class:`RedisProtocol`): one
connection, commands written as they come (those of one reactor turn
leave in one write: they are pipelined), replies parsed in one pass over
what arrived, resuming where the last chunk ended.  (txredisapi, used
before, re-split its whole buffer and paused the transport for a
reactor turn at every bulk string of a reply: reading an ``XREAD`` of
500 entries back cost more than the fan-out of its messages.)

Replies come as txredisapi gave them with ``convertNumbers=False``:
bulk strings as ``str`` (``bytes`` if they are not UTF-8, so "007"
stays "007"), integers as ``int``, nil as None, arrays as lists; an
error reply fails the call with :class:`ResponseError` (inside an array
it is an item).  Every call checks the link is up first and has a reply
timeout (calls made while disconnected would otherwise wait forever):
when it passes, every call waiting on the connection fails and the
connection is dropped, then made again (:class:`ClientService`).
``XREAD BLOCK`` runs on its own link, whose reply timeout is the block
plus a call's timeout.

The parts (:mod:`chatd.cluster.names`, :mod:`chatd.cluster.bus`,
:mod:`chatd.cluster.history`) take any :class:`Link`, so tests give them
an in-memory one.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol
from urllib.parse import urlparse

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
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
#: the link drops it on the timeout and connects again.
READ_TIMEOUT = READ_BLOCK + CALL_TIMEOUT
#: Delays between attempts to connect (s): from the first to the longest.
CONNECT_RETRY = 0.5
CONNECT_RETRY_MAX = 2.0
#: The longest line of a reply (a length, an integer, a status or an
#: error) before the connection is taken for garbage.
MAX_LINE = 65536


class RedisUnavailable(Exception):
    """Redis cannot be reached right now."""


class ResponseError(Exception):
    """An error reply of Redis (``-ERR ...``)."""


class RedisProtocolError(Exception):
    """Bytes from Redis that are not RESP2."""


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


def encode_command(args: tuple[object, ...]) -> bytes:
    """A command as RESP2 (an array of bulk strings; a number is written
    as its digits, as txredisapi did)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class ReplyParser:
    """RESP2 replies out of a byte stream, parsed as they complete.

    :meth:`feed` returns the replies that the bytes so far complete; an
    array cut by the end of a chunk keeps its parsed items (``_stack``)
    and only its unfinished element is read again with the next chunk.
    """

    def __init__(self) -> None:
        self._buffer = b""
        # The arrays being filled, innermost last: [items, items still to come].
        self._stack: list[list[Any]] = []

    def feed(self, data: bytes) -> list[Any]:
        """The replies ``data`` completes (raises :class:`RedisProtocolError`)."""
        buffer = self._buffer + data if self._buffer else data
        stack = self._stack
        replies: list[Any] = []
        pos, size = 0, len(buffer)
        value: Any
        while pos < size:
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                if size - pos > MAX_LINE:
                    raise RedisProtocolError("a reply line is too long")
                break
            kind = buffer[pos]
            if kind == 36:  # $: a bulk string
                length = int(buffer[pos + 1 : end])
                if length < 0:
                    value, pos = None, end + 2
                else:
                    stop = end + 2 + length
                    if stop + 2 > size:
                        break  # unfinished: read again with the next chunk
                    raw = buffer[end + 2 : stop]
                    try:
                        value = raw.decode()
                    except UnicodeDecodeError:
                        value = raw
                    pos = stop + 2
            elif kind == 42:  # *: an array
                count = int(buffer[pos + 1 : end])
                pos = end + 2
                if count > 0:
                    # Its bulk strings in a loop of their own (a stream
                    # entry's fields are nothing else): the common case.
                    items: list[Any] = []
                    while count and pos < size and buffer[pos] == 36:
                        end = buffer.find(b"\r\n", pos)
                        if end < 0:
                            break
                        length = int(buffer[pos + 1 : end])
                        if length < 0:
                            items.append(None)
                            pos = end + 2
                        else:
                            stop = end + 2 + length
                            if stop + 2 > size:
                                break
                            raw = buffer[end + 2 : stop]
                            try:
                                items.append(raw.decode())
                            except UnicodeDecodeError:
                                items.append(raw)
                            pos = stop + 2
                        count -= 1
                    if count:
                        stack.append([items, count])
                        continue
                    value = items
                else:
                    value = [] if count == 0 else None
            elif kind == 58:  # :: an integer
                value, pos = int(buffer[pos + 1 : end]), end + 2
            elif kind == 43:  # +: a status
                value, pos = buffer[pos + 1 : end].decode(errors="replace"), end + 2
            elif kind == 45:  # -: an error
                value, pos = ResponseError(buffer[pos + 1 : end].decode(errors="replace")), end + 2
            else:
                raise RedisProtocolError(f"a reply starts with {bytes([kind])!r}")
            # Into the arrays it completes, or a reply of its own.
            while stack:
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                stack.pop()
                value = top[0]
            else:
                replies.append(value)
        self._buffer = buffer[pos:]
        return replies


class RedisProtocol(TwistedProtocol):
    """One connection to Redis: commands out, replies matched to them in order."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.parser = ReplyParser()
        # Calls waiting for their reply, oldest first, with their deadlines.
        self.waiting: deque[tuple[Deferred[Any], float]] = deque()
        self._timer: IDelayedCall | None = None
        self.lost = False

    def call(self, args: tuple[str, ...], timeout: float | None) -> Deferred[Any]:
        """Send one command; its Deferred fires with the reply."""
        assert self.transport is not None
        self.transport.write(encode_command(args))
        result: Deferred[Any] = Deferred()
        deadline = self.link.clock.seconds() + timeout if timeout is not None else float("inf")
        self.waiting.append((result, deadline))
        if timeout is not None and self._timer is None:
            self._timer = self.link.clock.callLater(timeout, self._check_deadline)
        return result

    def _check_deadline(self) -> None:
        # One timer for every call: it looks at the oldest waiting call,
        # and comes back at its deadline if that is not yet passed.
        self._timer = None
        if not self.waiting or self.lost:
            return
        left = self.waiting[0][1] - self.link.clock.seconds()
        if left > 0:
            if left != float("inf"):
                self._timer = self.link.clock.callLater(left, self._check_deadline)
            return
        self._fail_all(RedisUnavailable(f"no reply from Redis within {self.link.timeout}s"))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # every TCP transport has it

    def connectionMade(self) -> None:
        """The link may use this connection (once its database is chosen)."""
        self.link._made(self)

    def dataReceived(self, data: bytes) -> None:
        """Hand each complete reply to the oldest waiting call."""
        try:
            replies = self.parser.feed(data)
        except (RedisProtocolError, ValueError) as problem:
            self._fail_all(RedisUnavailable(f"Redis sent garbage: {problem}"))
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]  # every TCP transport has it
            return
        for reply in replies:
            # (self.waiting each time: a callback may have failed them all.)
            if self.lost or not self.waiting:
                break  # a reply nobody waits for (their calls timed out)
            result, _ = self.waiting.popleft()
            if isinstance(reply, ResponseError):
                result.errback(reply)
            else:
                result.callback(reply)

    def _fail_all(self, problem: Exception) -> None:
        waiting, self.waiting = self.waiting, deque()
        for result, _ in waiting:
            result.errback(problem)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Every waiting call fails; the link knows it is down."""
        self.lost = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.link._lost(self)
        self._fail_all(RedisUnavailable("lost the connection to Redis"))


class _Factory(Factory):
    noisy = False  # a line per reconnection is enough (ClientService logs it)

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        return RedisProtocol(self.link)


class RedisLink:
    """One connection to Redis, made again whenever it drops, whose
    calls fail at once while it is down."""

    def __init__(self, reactor: Any, host: str, port: int, db: int, timeout: float | None) -> None:
        self.clock: IReactorTime = reactor
        self.db = db
        self.timeout = timeout
        self._protocol: RedisProtocol | None = None
        endpoint = HostnameEndpoint(reactor, host, port, timeout=5)
        self.service = ClientService(
            endpoint, _Factory(self),
            retryPolicy=backoffPolicy(initialDelay=CONNECT_RETRY, maxDelay=CONNECT_RETRY_MAX),
            clock=reactor,
        )

    @classmethod
    def pair(cls, reactor: IReactorTCP | IReactorTime, url: str) -> tuple[RedisLink, RedisLink]:
        """The two links of a node: commands (one connection, a reply
        timeout) and the blocking reader (one connection, a timeout just
        past its block)."""
        host, port, db = parse_url(url)
        # One command connection: Redis runs its commands in the order
        # sent, so a sender's messages get ids in the order it sent them.
        return cls(reactor, host, port, db, CALL_TIMEOUT), cls(reactor, host, port, db, READ_TIMEOUT)

    def _made(self, protocol: RedisProtocol) -> None:
        """A new connection: its database chosen, then it takes calls."""
        if not self.db:
            self._protocol = protocol
            return

        def ready(_: object) -> None:
            if not protocol.lost:
                self._protocol = protocol

        def failed(failure: Failure) -> None:
            # Not a usable connection: dropped, and made again.
            if protocol.transport is not None:
                protocol.transport.loseConnection()

        protocol.call(("SELECT", str(self.db)), self.timeout).addCallbacks(ready, failed)

    def _lost(self, protocol: RedisProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    def start(self) -> None:
        """Connect (and keep reconnecting)."""
        if not self.service.running:
            self.service.startService()

    def stop(self) -> Deferred[Any]:
        """Disconnect for good."""
        if not self.service.running:
            return succeed(None)
        done: Deferred[Any] = self.service.stopService()
        return done

    @property
    def connected(self) -> bool:
        """Whether the connection is up (and its database chosen)."""
        return self._protocol is not None

    def call(self, *args: str) -> Deferred[Any]:
        """One Redis command; fails at once with RedisUnavailable if down."""
        protocol = self._protocol
        if protocol is None:
            return fail(RedisUnavailable("Redis is not connected"))
        return protocol.call(args, self.timeout)


def cluster_busy() -> ChatError:
    """The ``server_busy`` a user gets while the cluster cannot answer."""
    return ChatError(messages.SERVER_BUSY, "The server cannot reach its cluster; try again soon.")


def busy_unless_chat_error(failure: Failure) -> Failure:
    """An errback: a ``ChatError`` passes, anything else becomes ``server_busy``."""
    if failure.check(ChatError):
        return failure
    return Failure(cluster_busy())

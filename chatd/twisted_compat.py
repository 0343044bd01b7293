"""Every use chatd makes of Twisted's internals, in one place.

Twisted's public API does not offer everything chatd needs; what is used
beyond it (private attributes, undocumented behaviour) lives here and
nowhere else, so that a Twisted upgrade has one module to review, and
``tests/test_twisted_compat.py`` checks each item against the installed
Twisted and fails with the attribute's name and the Twisted version if it
changed.  pyproject.toml caps Twisted at the newest version that passed.

What is relied on:

- :func:`writer_for`: ``FileDescriptor``'s send buffer (``dataBuffer``,
  ``offset``, ``_tempDataBuffer``), to write straight to an idle socket;
- :func:`forget_exit_signal`: ``reactor._exitSignal``, which twistd reads
  after the reactor stops to re-raise the signal that stopped it;
- :func:`intercept_upgraded_input`: after a WebSocket upgrade, Twisted
  (``HTTPChannel._protocolUpgradeForWebsockets``) routes the connection's
  bytes through ``channel.dataReceived``, replaced by the wire protocol's
  own; we wrap that replacement to count bytes before they are buffered;
- :func:`end_http_timeout` and :func:`release_http_producer`: after the
  upgrade the HTTP channel still holds its idle timeout and its
  registration as the TCP transport's producer (Twisted's upgrade leaves
  both);
- :func:`websocket_connection`: the wire protocol's ``transport`` (the TCP
  connection), which Twisted's ``WebSocketTransport`` protocol does not
  declare;
- :data:`HTTP_CHANNEL_HOOKS`, :func:`declared_body_length` and
  :func:`request_line_read`: ``HTTPChannel``'s undocumented parsing hooks
  and state, which ``chatd.frontends.site.WebChannel`` overrides and
  reads for its request deadline and body cap.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, cast

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.web.http import HTTPChannel
from twisted.web.server import Request
from twisted.web.websocket import WebSocketTransport


# -- write-through for plain TCP ----------------------------------------

#: ``FileDescriptor`` attributes :func:`writer_for` reads: the unsent
#: bytes are ``dataBuffer[offset:]`` plus the chunks in ``_tempDataBuffer``.
SEND_BUFFER_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataBuffer")


def writer_for(transport: Any) -> Callable[[bytes], None]:
    """The fastest correct way to write to ``transport``.

    Twisted's TCP transport queues every ``write`` and sends it when the
    reactor next finds the socket writable: for each write to an idle
    connection that costs two ``epoll_ctl`` calls (watch for writable, stop
    watching) and a reactor pass, on top of the ``send``.  In fan-out,
    where every message is one write to each of hundreds of idle
    connections, that overhead is most of the server's time.  C servers
    avoid it by trying the ``send`` first; so does this: when the
    transport holds no unsent data, the bytes go straight to the socket,
    and only what the kernel does not take is handed to
    ``transport.write`` (which then watches for writability as usual, and
    applies back-pressure to producers).

    Only a plain ``tcp.Server`` with the buffer attributes of
    :data:`SEND_BUFFER_ATTRIBUTES` gets this; any other transport (TLS,
    WebSocket, test transports) keeps plain ``write``.
    """
    plain: Callable[[bytes], None] = transport.write
    sock = getattr(transport, "socket", None)
    if type(transport) is not tcp.Server or sock is None:
        return plain
    if not all(hasattr(transport, name) for name in SEND_BUFFER_ATTRIBUTES):
        return plain  # another Twisted: correct, only slower (the compat test says so)
    server: tcp.Server = transport
    send: Callable[[bytes], int] = sock.send

    def write_through(data: bytes) -> None:
        if (
            server._tempDataBuffer
            or len(server.dataBuffer) > server.offset
            or server.disconnecting
            or not server.connected
        ):
            plain(data)  # something is queued: keep the order, queue too
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            plain(data)  # let the transport see the error and close
            return
        if sent < len(data):
            plain(data[sent:])

    return write_through


# -- twistd's exit status -----------------------------------------------

#: The reactor attribute where Twisted records the signal that stopped it
#: (``twisted.internet.interfaces._ISupportsExitSignalCapturing``); twistd
#: re-raises that signal once the reactor has stopped.
EXIT_SIGNAL_ATTRIBUTE = "_exitSignal"


def forget_exit_signal(reactor: object, signals: tuple[int, ...]) -> bool:
    """If one of ``signals`` stopped ``reactor``, forget it: twistd then exits with status 0.

    Whether it was forgotten.  A reactor that records no signal (a test's
    ``MemoryReactor``, another reactor type) is left alone.
    """
    if getattr(reactor, EXIT_SIGNAL_ATTRIBUTE, None) not in signals:
        return False
    setattr(reactor, EXIT_SIGNAL_ATTRIBUTE, None)
    return True


# -- a WebSocket on Twisted's HTTP channel -------------------------------


class StreamTransport(Protocol):
    """What chatd uses of the TCP (or TLS) connection under a WebSocket."""

    def loseConnection(self) -> None:
        """Close after the buffered output is written."""

    def abortConnection(self) -> None:
        """Close at once, unsent data dropped."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Have ``producer`` paused while the send buffer is full."""

    def unregisterProducer(self) -> None:
        """Forget the producer."""

    def pauseProducing(self) -> None:
        """Stop reading."""

    def resumeProducing(self) -> None:
        """Read again."""

    def stopProducing(self) -> None:
        """Stop reading for good."""


def websocket_connection(wire: WebSocketTransport) -> StreamTransport:
    """The connection (TCP or TLS) a WebSocket runs on.

    Twisted's wire protocol keeps it as ``transport``, an attribute its
    ``WebSocketTransport`` protocol does not declare.
    """
    return cast(StreamTransport, getattr(wire, "transport"))


def intercept_upgraded_input(request: Request, guard: Callable[[bytes, Callable[[bytes], None]], None]) -> None:
    """Pass every read of ``request``'s upgraded connection through ``guard(data, deliver)``.

    Call it from ``negotiationStarted``: by then Twisted has replaced the
    HTTP channel's ``dataReceived`` by the WebSocket wire protocol's
    (which buffers a whole message, with no size cap); ``guard`` sees
    each read first and calls ``deliver(data)`` to hand it on, or not.
    """
    channel = request.channel
    deliver: Callable[[bytes], None] = channel.dataReceived

    def guarded(data: bytes) -> None:
        guard(data, deliver)

    channel.dataReceived = guarded  # type: ignore[method-assign]  # the point: Twisted routes reads through it


def end_http_timeout(request: Request) -> None:
    """The upgraded connection is no longer HTTP: no HTTP idle timeout on it.

    Twisted's upgrade leaves the channel's timeout armed (and, the bytes
    now going to the wire protocol, never reset by traffic).
    """
    request.channel.setTimeout(None)


def release_http_producer(connection: StreamTransport) -> None:
    """Unregister the HTTP channel from ``connection``, where it registered itself as producer.

    After the upgrade the channel no longer reads or writes the
    connection, but its registration stays, and a connection takes one
    producer only (``FileDescriptor.producer``).
    """
    if getattr(connection, "producer", None) is not None:
        connection.unregisterProducer()


#: ``HTTPChannel`` methods ``chatd.frontends.site.WebChannel`` overrides,
#: none of them documented API: if Twisted renamed one, the override
#: would silently never run (and a limit would silently go).
HTTP_CHANNEL_HOOKS = (
    "dataReceived",
    "rawDataReceived",
    "allHeadersReceived",
    "allContentReceived",
    "requestDone",
    "connectionLost",
    "lineLengthExceeded",
    "timeoutConnection",
)


def declared_body_length(channel: HTTPChannel) -> int | None:
    """The current request's ``Content-Length`` once its headers are read (None if chunked)."""
    length: int | None = channel.length
    return length


def request_line_read(channel: HTTPChannel) -> bool:
    """Whether ``channel`` holds a request: one whose request line was read (or one still answered)."""
    return bool(channel.requests)

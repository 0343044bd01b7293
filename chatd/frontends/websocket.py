"""The WebSocket front-end: the JSON chat, one request per text frame.

``/ws`` on the web port (:mod:`chatd.frontends.site`, which checks the
Origin before the upgrade) hands each upgraded connection to a
:class:`ChatWebSocket`.  It runs a JSON session
(:class:`~chatd.frontends.json.protocol.ChatProtocol`: the same request
checks, handlers, rendering and limits as TCP) on a wire of its own:

- input: each text frame holds a request (over ``--max-request`` bytes:
  ``too_long``, then close; not JSON, or a value cut at the frame's end:
  ``bad_json``); a binary frame is answered ``bad_json``.  Twisted buffers a whole message with
  no size cap, so every read is counted before it is buffered
  (:func:`chatd.twisted_compat.intercept_upgraded_input`);
- output: each response is one text frame (:class:`FrameOutput`);
- flow control, the send-queue meter and aborts act on the TCP (or TLS)
  connection under the WebSocket; a polite close sends a close frame
  (:class:`WebSocketWire`).

The connection counts once against the caps: its HTTP connection took
the slot (``buildProtocol(addr, holds_slot=True)``).  After the upgrade
the HTTP idle timeout ends; the chat's login and idle timeouts apply.
"""

from __future__ import annotations

from typing import Callable, cast

from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from twisted.web.websocket import WebSocketTransport
from wsproto.utilities import LocalProtocolError

from chatd import messages
from chatd.caps import SERVER_FULL
from chatd.core.session import DEFAULT_BUFFER_SIZE
from chatd.frontends.json.framing import Decoded, StreamDecoder, UnpacedOutput
from chatd.frontends.json.protocol import ChatProtocol
from chatd.server import ChatFactory
from chatd.twisted_compat import (
    StreamTransport,
    end_http_timeout,
    intercept_upgraded_input,
    release_http_producer,
    websocket_connection,
)

#: Bytes a partly received WebSocket message may take beyond the request
#: limit before we hang up (frame headers, and one read of the next).
FRAMING_SLACK = 64 * 1024

#: The name of the WebSocket's output framing.
FRAMES = "frames"


class WebSocketWire:
    """A session's :class:`~chatd.core.session.Wire` over one WebSocket.

    Closing politely sends a close frame; reading, the send-queue meter
    (the producer API) and aborting act on the TCP (or TLS) connection
    under the WebSocket.
    """

    def __init__(self, websocket: WebSocketTransport) -> None:
        self.websocket = websocket
        self.connection: StreamTransport = websocket_connection(websocket)
        self.bufferSize: int = getattr(self.connection, "bufferSize", DEFAULT_BUFFER_SIZE)
        self.closed = False  # the WebSocket takes no more frames

    def send_frame(self, payload: bytes) -> None:
        """Send one encoded response (ASCII JSON) as a text frame.

        Once the peer's close frame has been answered (Twisted does that
        itself, before the session hears of the close) the WebSocket
        refuses frames: what is sent then is dropped, never raised into
        the fan-out that called us.
        """
        if self.closed:
            return
        try:
            self.websocket.sendTextMessage(payload.decode("ascii"))
        except LocalProtocolError:
            self.closed = True

    def loseConnection(self) -> None:
        """Close the WebSocket (close frame), then the connection."""
        if not self.closed:
            self.closed = True
            try:
                self.websocket.loseConnection()
                return
            except LocalProtocolError:
                pass  # closing already: only the connection is left
        self.connection.loseConnection()

    def abortConnection(self) -> None:
        """Drop the connection at once."""
        self.connection.abortConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Watch the TCP transport's buffer (the send-queue limit)."""
        # The HTTP channel's own registration goes first: after the
        # upgrade it no longer reads or writes this connection.
        release_http_producer(self.connection)
        self.connection.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Stop watching the buffer."""
        self.connection.unregisterProducer()

    def pauseProducing(self) -> None:
        """Stop reading from the browser for a while."""
        self.connection.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the browser again."""
        self.connection.resumeProducing()


class FrameOutput(UnpacedOutput):
    """The WebSocket's output framing: each response is one text frame,
    written at once."""

    name = FRAMES

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def send(self, payload: bytes) -> None:
        """Write one encoded response as one frame."""
        self._write(payload)


def decode_frame(data: bytes, max_request: int) -> list[Decoded]:
    """The requests of one text frame, with the stream decoder's checks
    (depth, constants, surrogates, one ``bad_json`` per read).

    A frame is a boundary: a value it leaves incomplete is ``bad_json``,
    never continued by the next frame.  A frame may hold several values
    (each is a request, as on TCP); whitespace alone holds none.
    """
    decoder = StreamDecoder(max_request)
    events = decoder.feed(data + b"\n")
    if decoder.buffered and not any(event.error is not None for event in events):
        events.append(Decoded(None, messages.BAD_JSON, True))
    return events


class ChatWebSocket:
    """One WebSocket connection: text frames in and out of a JSON session."""

    log = Logger()

    def __init__(self, factory: ChatFactory, request: Request) -> None:
        self.factory = factory
        self.request = request
        self.wire: WebSocketTransport | None = None
        self.chat: Protocol | None = None  # a ChatProtocol, or the busy answer
        self._unframed = 0  # bytes received since the last whole message
        self._delivered = False

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        """The upgrade is under way: guard the input and keep the transport."""
        self.wire = transport
        # The upgraded connection is ours: no HTTP idle timeout on it (the
        # chat's own login and idle timeouts apply).
        end_http_timeout(self.request)
        intercept_upgraded_input(self.request, self._guard_input)

    def _guard_input(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        # Twisted buffers a whole message with no size cap: count what
        # arrives between whole messages and hang up past the limit.
        chat = self.chat
        if chat is not None and (not isinstance(chat, ChatProtocol) or chat.closing):
            return  # closing (a busy answer always is): nothing more is read
        self._unframed += len(data)
        self._delivered = False
        deliver(data)
        if self._delivered:
            self._unframed = 0  # what is left is the start of the next message
        elif self._unframed > self.factory.config.max_request + FRAMING_SLACK and isinstance(chat, ChatProtocol):
            # Reads that completed no message (a message being sent, or
            # control frames) past the limit: no request can be that long.
            chat.too_long()

    def negotiationFinished(self) -> None:
        """The WebSocket is open: start a JSON session on it."""
        assert self.wire is not None  # negotiationStarted came first
        address = self.request.getClientAddress()
        # The HTTP connection under this WebSocket already holds a cap slot.
        chat = self.factory.buildProtocol(address, holds_slot=True)
        self.chat = chat
        wire = WebSocketWire(self.wire)
        if not isinstance(chat, ChatProtocol):
            self._refuse(wire, str(getattr(chat, "text", SERVER_FULL)))
            return
        chat.transport_kind = "websocket"
        # The server's shutdown aborts what lingers through the protocol's
        # transport: the connection under the WebSocket (a TCP or TLS
        # transport, which is an ITransport; the compat module types only
        # what chatd calls on it).
        chat.transport = cast(ITransport, wire.connection)
        chat.start(wire, wire.send_frame, address, wire.bufferSize)
        chat.use_output(FrameOutput(chat.write))

    def _refuse(self, wire: WebSocketWire, text: str) -> None:
        """Over a cap, or shutting down: ``server_busy`` in one frame, then close."""
        timestamp = messages.format_timestamp(self.factory.clock.seconds())
        wire.send_frame(messages.encode(messages.error(messages.SERVER_BUSY, text, timestamp)))
        wire.loseConnection()

    def textMessageReceived(self, message: str) -> None:
        """One request (a whole text frame)."""
        self._delivered = True
        chat = self.chat
        if not isinstance(chat, ChatProtocol) or chat.closing:
            return
        data = message.encode("utf-8", "surrogatepass")
        if len(data) > chat.MAX_LENGTH:
            # Queued like any request: the requests before it are answered first.
            chat.frame_received([Decoded(None, messages.TOO_LONG, True)], len(data))
            return
        chat.frame_received(decode_frame(data, chat.MAX_LENGTH), len(data))

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        """Binary frames carry no JSON here."""
        self._delivered = True
        if isinstance(self.chat, ChatProtocol) and not self.chat.closing:
            # Queued like any request (in order, with its cost): bad_json.
            self.chat.frame_received([Decoded(None, messages.BAD_JSON, True)], len(data))

    def pongReceived(self, payload: bytes) -> None:
        """Nothing to do: pings are not used yet."""

    def connectionLost(self, reason: Failure) -> None:
        """The browser went away."""
        if self.chat is not None:
            self.chat.connectionLost(reason)


class ChatWebSocketFactory:
    """Builds :class:`ChatWebSocket` connections on one chat factory."""

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory

    def buildProtocol(self, request: Request) -> ChatWebSocket:
        """One WebSocket chat connection for this upgrade request."""
        return ChatWebSocket(self.factory, request)

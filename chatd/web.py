"""The web side: WebSocket chat, the browser client, health and metrics.

``--web tcp:8080`` serves, with ``twisted.web``:

- ``/ws``: the chat over WebSocket, one JSON object per text frame, on the
  same hub as TCP (v1 semantics until ``hello``, v2 after).  Each
  WebSocket connection is a :class:`~chatd.protocol.ChatProtocol` behind a
  small transport adapter, so every rule and limit is the same as on TCP.
  The Origin is checked before the upgrade;
- ``/``: the browser client (static files, no build step, no CDN);
- ``/health``: JSON status, 200 or 503;
- ``/metrics``: Prometheus text.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, static
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource

from chatd import messages
from chatd.framing import LINES
from chatd.hub import LOBBY
from chatd.metrics import content_type
from chatd.protocol import ChatProtocol
from chatd.server import ChatFactory

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")

#: Bytes a partly received WebSocket message may take beyond the request
#: limit before we hang up (frame headers, and one read of the next).
FRAMING_SLACK = 64 * 1024

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class WebSocketChatTransport:
    """What a ChatProtocol needs of a transport, over one WebSocket.

    Each line the protocol writes (lines framing: JSON and ``\\n``) goes
    out as one text frame.
    """

    def __init__(self, wire: Any, peer: IAddress, host: IAddress) -> None:
        self.wire = wire
        self.peer = peer
        self.host = host
        self.bufferSize = getattr(wire.transport, "bufferSize", 65536)

    @property
    def disconnecting(self) -> bool:
        """Whether the underlying connection is closing."""
        return bool(getattr(self.wire.transport, "disconnecting", False))

    def write(self, data: bytes) -> None:
        """Send each complete line as a text frame."""
        for line in data.split(b"\n"):
            if line:
                self.wire.sendTextMessage(line.decode("ascii"))

    def writeSequence(self, data: list[bytes]) -> None:
        """Send several writes."""
        for item in data:
            self.write(item)

    def loseConnection(self) -> None:
        """Close the WebSocket (close frame), then the connection."""
        self.wire.loseConnection()

    def abortConnection(self) -> None:
        """Drop the connection at once."""
        self.wire.transport.abortConnection()

    def getPeer(self) -> IAddress:
        """The browser's address."""
        return self.peer

    def getHost(self) -> IAddress:
        """Our address."""
        return self.host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Watch the TCP transport's buffer (the send-queue limit)."""
        tcp = self.wire.transport
        if getattr(tcp, "producer", None) is not None:
            # The HTTP channel's own registration: after the upgrade it
            # no longer reads or writes this connection.
            tcp.unregisterProducer()
        tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Stop watching the buffer."""
        self.wire.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        """Stop reading from the browser for a while."""
        self.wire.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the browser again."""
        self.wire.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Stop reading for good."""
        self.wire.transport.stopProducing()


class ChatWebSocket:
    """One WebSocket connection: frames in and out of a ChatProtocol."""

    log = Logger()

    def __init__(self, factory: ChatFactory, request: Request) -> None:
        self.factory = factory
        self.request = request
        self.wire: Any = None
        self.chat: Any = None
        self._unframed = 0  # bytes received since the last whole message
        self._delivered = False

    def negotiationStarted(self, transport: Any) -> None:
        """The upgrade is under way: guard the input and keep the transport."""
        self.wire = transport
        channel = self.request.channel
        # The upgraded connection is ours: no HTTP idle timeout on it (the
        # chat's own login and idle timeouts apply).
        channel.setTimeout(None)
        inner = channel.dataReceived
        limit = self.factory.config.max_request + FRAMING_SLACK

        def guarded(data: bytes) -> None:
            # Twisted buffers a whole message with no size cap: count what
            # arrives between whole messages and hang up past the limit.
            if self.chat is not None and self.chat.closing:
                return
            self._unframed += len(data)
            if self._unframed > limit and isinstance(self.chat, ChatProtocol):
                self.chat.lineLengthExceeded(b"")
                return
            self._delivered = False
            inner(data)
            if self._delivered:
                self._unframed = 0

        channel.dataReceived = guarded

    def negotiationFinished(self) -> None:
        """The WebSocket is open: start a chat connection on it."""
        address = self.request.getClientAddress()
        chat = self.factory.buildProtocol(address)
        transport = WebSocketChatTransport(self.wire, address, self.request.getHost())
        self.chat = chat
        if isinstance(chat, ChatProtocol):
            chat.transport_kind = "websocket"
            chat.makeConnection(transport)
            chat._use_framing(LINES)
        else:
            chat.makeConnection(transport)  # busy: it answers and closes

    def textMessageReceived(self, message: str) -> None:
        """One request (a whole text frame)."""
        self._delivered = True
        if not isinstance(self.chat, ChatProtocol):
            return
        data = message.encode("utf-8", "surrogatepass")
        if len(data) > self.chat.MAX_LENGTH:
            self.chat.lineLengthExceeded(b"")
            return
        self.chat.dataReceived(data + b"\n")

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        """Binary frames carry no JSON here."""
        self._delivered = True
        if isinstance(self.chat, ChatProtocol) and not self.chat.closing:
            self.chat.send_error(messages.BAD_JSON, "Invalid JSON: send requests as text frames.")

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


class OriginCheckedWebSocketResource(WebSocketResource):
    """``/ws``: refuses (403) an upgrade from a page of another origin.

    Allowed: ``http(s)://<Host header>`` and every ``--web-origin``.  A
    request without an Origin (not a browser) is allowed.
    """

    def __init__(self, factory: ChatWebSocketFactory, allowed_origins: list[str]) -> None:
        super().__init__(factory)
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}

    def origin_allowed(self, request: Request) -> bool:
        """Whether the request's Origin may open a chat."""
        origin = request.getHeader("origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        host = (request.getHeader("host") or "").lower()
        return origin in (f"http://{host}", f"https://{host}") or origin in self.allowed_origins

    def render_GET(self, request: Request) -> bytes | int:
        if not self.origin_allowed(request):
            request.setResponseCode(403)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"Forbidden: this origin may not open a chat connection.\n"
        return super().render_GET(request)


class HealthResource(resource.Resource):
    """``/health``: whether the hub and the history store work."""

    isLeaf = True

    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> bytes:
        hub = self.factory.hub
        status = "ok"
        try:
            hub.history.last_id(LOBBY)  # a read: the store answers
        except Exception:
            status = "failing"
        if self.factory.shutting_down:
            status = "shutting down"
        body = {
            "status": status,
            "connections": self.factory.connections,
            "users": len(hub.names()),
            "history": hub.history.kind,
        }
        request.setResponseCode(200 if status == "ok" else 503)
        request.setHeader("content-type", "application/json")
        request.setHeader("cache-control", "no-store")
        return json.dumps(body).encode()


class MetricsResource(resource.Resource):
    """``/metrics``: Prometheus text format."""

    isLeaf = True

    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", content_type())
        return self.factory.hub.metrics.exposition()


class StaticFiles(static.File):
    """The browser client's files, with a strict Content-Security-Policy."""

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader("content-security-policy", _CSP)
        request.setHeader("x-content-type-options", "nosniff")
        request.setHeader("referrer-policy", "no-referrer")
        return super().render_GET(request)

    def createSimilarFile(self, path: str) -> StaticFiles:
        similar = StaticFiles(path, self.defaultType, self.ignoredExts, self.registry)
        similar.processors = self.processors
        similar.indexNames = self.indexNames[:]
        similar.childNotFound = self.childNotFound
        return similar


def make_site(factory: ChatFactory, allowed_origins: list[str]) -> Site:
    """The web site of one chat factory."""
    root = StaticFiles(STATIC_DIR)
    root.putChild(b"ws", OriginCheckedWebSocketResource(ChatWebSocketFactory(factory), allowed_origins))
    root.putChild(b"health", HealthResource(factory))
    root.putChild(b"metrics", MetricsResource(factory))
    site = Site(root)
    site.displayTracebacks = False
    return site

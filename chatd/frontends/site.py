"""The web side: WebSocket chat, the browser client, health and metrics.

``--web tcp:8080`` serves, with ``twisted.web``:

- ``/ws``: the chat over WebSocket, one JSON object per text frame, on the
  same hub as TCP (v1 semantics until ``hello``, v2 after): the WebSocket
  front-end, :mod:`chatd.frontends.websocket`, a JSON session on a wire
  of its own, so every rule and limit is the same as on TCP.  The Origin
  is checked here, before the upgrade (see :class:`OriginPolicy`);
- ``/``: the browser client (its few static files, by name, no build step,
  no CDN);
- ``/health``: JSON status, 200 or 503;
- ``/metrics``: Prometheus text.

Limits of the web port (a hostile client gets a clear answer and its
connection closed, never the process's file descriptors or disk):

- every HTTP connection counts against ``--max-per-ip`` and
  ``--max-connections``, with the chat connections (one
  :class:`~chatd.caps.ConnectionCaps` for every listener); over a cap the
  connection is answered ``503`` and closed.  A WebSocket counts once;
- a request (request line, headers and body) must arrive whole within
  :data:`REQUEST_DEADLINE` seconds of the connection opening or of the
  previous response, or the connection is closed (slow trickles, idle
  keep-alive connections);
- a request body may have :data:`MAX_BODY` bytes (only GET is served):
  a larger ``Content-Length`` is answered ``413`` before anything is
  read, a chunked body is counted and cut at the same size.
"""

from __future__ import annotations

import ipaddress
import json
import os
from io import BytesIO
from urllib.parse import urlsplit

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, static
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource
from wsproto import ConnectionType
from wsproto.handshake import H11Handshake

from chatd.caps import CappedFactory
from chatd.frontends.websocket import ChatWebSocketFactory
from chatd.metrics import content_type
from chatd.server import ChatFactory
from chatd.twisted_compat import declared_body_length, request_line_read

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")

#: Seconds a whole request may take to arrive, from the connection's start
#: or the end of the previous response (Twisted's own idle timeout is
#: reset by every byte, so one byte every few seconds held a connection).
REQUEST_DEADLINE = 10.0

#: Bytes of request body accepted (the web side serves GET only; a body
#: is read and dropped, never spooled to disk).
MAX_BODY = 4096

#: Header lines one request may have.
MAX_HEADERS = 100

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Names of this machine that only it can serve: a page of such an origin
#: on the web port is ours.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

#: ``interface=`` values that mean every address (they name no host).
_WILDCARDS = ("", "0.0.0.0", "::", "0", "*")


def parse_origin(text: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an Origin such as ``https://chat.example.org``.

    The host is lower-cased and unbracketed (``::1``); a missing port is
    the scheme's default.  None if ``text`` is not an http(s) origin.
    """
    if not text.isascii():
        return None
    try:
        parts = urlsplit(text.strip().lower())
        port = parts.port
    except ValueError:  # a bad port, an unclosed bracket, ...
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return parts.scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal (IPv4-mapped IPv6 as IPv4), or None for a name."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class OriginPolicy:
    """Which page origins may open a chat over ``/ws``.

    Browsers send the page's Origin with a WebSocket upgrade.  The Host
    header is never trusted (a DNS-rebinding page sends its own name as
    Host while its requests reach us).  Allowed, with scheme http or https:

    - each configured origin (``--web-origin``);
    - the web port on a name the web endpoint listens on: its
      ``interface=`` (unless it is a wildcard) and the loopback names
      ``localhost``, ``127.0.0.1`` and ``[::1]``;
    - the web port on the IP address the connection arrived at (an IP
      literal only, which no other site's page can have as its origin).

    A request without an Origin is not from a browser page: allowed.
    """

    def __init__(self, configured: list[str], port: int | None = None, interface: str | None = None) -> None:
        self.configured: set[tuple[str, str, int]] = set()
        for origin in configured:
            parsed = parse_origin(origin)
            if parsed is None:
                raise ValueError(f"--web-origin {origin!r} is not an origin such as https://chat.example.org")
            self.configured.add(parsed)
        self.port = port or None  # None (or 0): the port the connection arrived at
        self.names = set(LOOPBACK_NAMES)
        if interface is not None and interface.strip("[]") not in _WILDCARDS:
            self.names.add(interface.strip("[]").lower())

    def allows(self, origin: str | None, local: IAddress) -> bool:
        """Whether a page of ``origin`` may connect through the local address ``local``."""
        if origin is None:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if parsed in self.configured:
            return True
        _, host, port = parsed
        if port != (self.port or getattr(local, "port", None)):
            return False
        if host in self.names:
            return True
        arrived_at = _ip(str(getattr(local, "host", "")))
        return arrived_at is not None and not arrived_at.is_unspecified and _ip(host) == arrived_at


def _is_websocket_upgrade(request: Request) -> bool:
    """Whether ``request`` is a well-formed WebSocket upgrade (as Twisted will check it)."""
    handshake = H11Handshake(ConnectionType.SERVER)
    headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
    try:
        handshake.initiate_upgrade_connection(headers, request.path)
    except Exception:  # wsproto's RemoteProtocolError, or anything odd in the headers
        return False
    return True


class OriginCheckedWebSocketResource(WebSocketResource):
    """``/ws``: refuses (403) an upgrade from a page of an origin not allowed.

    A request that is no WebSocket upgrade is answered 400 here, quietly
    (Twisted's own answer logs an error for each).
    """

    def __init__(self, factory: ChatWebSocketFactory, policy: OriginPolicy) -> None:
        super().__init__(factory)
        self.policy = policy

    def origin_allowed(self, request: Request) -> bool:
        """Whether the request's Origin may open a chat."""
        # Raw bytes: a header that is not UTF-8 must be refused, not crash
        # getHeader's decoding.
        values = request.requestHeaders.getRawHeaders(b"origin")
        origin = values[-1].decode("latin-1") if values else None
        return self.policy.allows(origin, request.getHost())

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        return NOT_FOUND

    def render_GET(self, request: Request) -> bytes | int:
        if not self.origin_allowed(request):
            return _plain(request, 403, b"Forbidden: this origin may not open a chat connection.\n")
        if not _is_websocket_upgrade(request):
            return _plain(request, 400, b"Bad request: /ws takes a WebSocket connection.\n")
        return super().render_GET(request)


def _plain(request: Request, code: int, text: bytes) -> bytes:
    """Answer ``code`` with a plain-text body."""
    request.setResponseCode(code)
    request.setHeader("content-type", "text/plain; charset=utf-8")
    return text


class HealthResource(resource.Resource):
    """``/health``: whether the hub and the history store work.

    ``users`` counts the users logged in on this node (synchronously: a
    clustered hub's registry is a Redis round trip away).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, factory: ChatFactory) -> None:
        super().__init__()
        self.factory = factory
        self._failing = False

    def store_works(self) -> bool:
        """Whether the history store can read and write (its ``check()``, synchronous)."""
        try:
            self.factory.hub.history.check()
        except Exception as problem:
            if not self._failing:  # once per outage, not once per probe
                self.log.warn("health: the history store fails: {problem}", problem=str(problem))
            self._failing = True
            return False
        if self._failing:
            self.log.info("health: the history store works again")
        self._failing = False
        return True

    def render_GET(self, request: Request) -> bytes:
        hub = self.factory.hub
        status = "ok" if self.store_works() else "failing"
        if self.factory.shutting_down:
            status = "shutting down"
        body = {
            "status": status,
            "connections": self.factory.connections,
            "users": self.factory.local_users,
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


class NotFound(resource.Resource):
    """A quiet, plain 404 for any method and any path below it."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _plain(request, 404, b"Not found.\n")


NOT_FOUND = NotFound()


class StaticFile(static.File):
    """One file of the browser client, with a strict Content-Security-Policy.

    A file has no children: any longer path is 404, without a look at
    the disk.
    """

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader("content-security-policy", _CSP)
        request.setHeader("x-content-type-options", "nosniff")
        request.setHeader("referrer-policy", "no-referrer")
        body: bytes | int = super().render_GET(request)
        return body

    render_HEAD = render_GET  # static.File's is its own render_GET, without our headers

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        return NOT_FOUND


class ClientFiles(resource.Resource):
    """``/``: the browser client's files, served by name only.

    The names are read once from the directory; any other path segment
    (``%00``, ``%ff``, ``..%2f``, very long names, ...) is a quiet 404
    and never becomes a file-system path.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                self.putChild(name.encode(), StaticFile(path))
        self.putChild(b"", self.children[b"index.html"])

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        return NOT_FOUND


_HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PATCH")


class WebRequest(Request):
    """A request whose body is counted against :data:`MAX_BODY` as it arrives."""

    channel: WebChannel

    def render(self, resrc: resource.IResource) -> None:
        """Every resource here takes GET and HEAD only: anything else is 405 (or 501)."""
        if self.method in (b"GET", b"HEAD"):
            super().render(resrc)
            return
        if self.method in _HTTP_METHODS:
            self.setHeader(b"allow", b"GET, HEAD")
            body = _plain(self, 405, b"Method not allowed: the web side serves GET only.\n")
        else:  # not a method HTTP defines
            body = _plain(self, 501, b"Not implemented: unknown method.\n")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.body_received(len(data)):
            super().handleContentChunk(data)


class WebChannel(HTTPChannel):
    """HTTP/1.1 with a whole-request deadline and a small body cap.

    It overrides HTTPChannel's parsing hooks, which are not documented
    API: they are listed in :data:`chatd.twisted_compat.HTTP_CHANNEL_HOOKS`
    and checked against each Twisted by tests/test_twisted_compat.py.
    """

    maxHeaders = MAX_HEADERS
    request_deadline: float | None = REQUEST_DEADLINE
    _deadline: IDelayedCall | None = None
    _refused = False  # answered 413: nothing more is read
    _body_bytes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_deadline()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._body_bytes = 0
        length = declared_body_length(self)
        if length is not None and length > MAX_BODY:
            # Refused before any of it is read (and before "100 Continue").
            self._refuse_body()
            return
        super().allHeadersReceived()

    def body_received(self, size: int) -> bool:
        """Count ``size`` bytes of body: whether they may be kept (else the request is refused)."""
        if self._refused:
            return False
        self._body_bytes += size
        if self._body_bytes > MAX_BODY:
            self._refuse_body()
            return False
        return True

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._cancel_deadline()  # the request is whole: answering has no deadline
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # The next request (a keep-alive connection) has its own deadline;
        # armed first, as pipelined data may complete it right away.
        self._arm_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        # A request line or a header line over MAX_LENGTH: say which, and
        # close (Twisted would close without a word).
        if request_line_read(self):  # then it is a header line
            self._refuse(b"431 Request Header Fields Too Large", "Bad request: a header line is too long.")
        else:
            self._refuse(b"414 URI Too Long", "Bad request: the request line is too long.")

    def _refuse_body(self) -> None:
        self._refuse(b"413 Content Too Large", f"Content too large: at most {MAX_BODY} bytes of request body.")

    def _refuse(self, status: bytes, text: str) -> None:
        """Answer ``status`` with ``text``, close, and read nothing more."""
        self._refused = True
        _answer_and_close(self, status, (text + "\n").encode())
        self.loseConnection()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        if self.request_deadline:
            self._deadline = self.callLater(self.request_deadline, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _deadline_passed(self) -> None:
        self._deadline = None
        # Twisted's idle-timeout path: close now, abort if it lingers.
        self.timeoutConnection()


def _answer_and_close(protocol: Protocol, status: bytes, body: bytes) -> None:
    """Write a complete plain-text HTTP response that closes the connection."""
    assert protocol.transport is not None
    protocol.transport.writeSequence([
        b"HTTP/1.1 ", status, b"\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n\r\n",
        body,
    ])


class WebBusy(Protocol):
    """Over a connection cap: answers ``503 Service Unavailable`` and closes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def connectionMade(self) -> None:
        _answer_and_close(self, b"503 Service Unavailable", (self.text + "\n").encode())
        assert self.transport is not None
        self.transport.loseConnection()


class ChatSite(Site):
    """The web site: :class:`WebChannel` connections, bodies never spooled to disk."""

    protocol = WebChannel  # type: ignore[assignment]  # HTTP/1.1 only (no HTTP/2 upgrade path around the limits)

    def __init__(self, root: resource.Resource, reactor: IReactorTime, request_deadline: float | None = REQUEST_DEADLINE) -> None:
        super().__init__(root, requestFactory=WebRequest, parsePOSTFormSubmission=False, reactor=reactor)
        self.request_deadline = request_deadline
        self.displayTracebacks = False

    def buildProtocol(self, addr: IAddress | None) -> WebChannel:  # type: ignore[override]  # protocol is WebChannel: see above
        channel: WebChannel = super().buildProtocol(addr)
        channel.request_deadline = self.request_deadline
        return channel

    def getContentFile(self, length: int | None) -> BytesIO:
        """Where a request body goes: memory (it is at most :data:`MAX_BODY` bytes)."""
        return BytesIO()


def make_site(
    factory: ChatFactory,
    allowed_origins: list[str],
    port: int | None = None,
    interface: str | None = None,
    request_deadline: float | None = REQUEST_DEADLINE,
) -> ChatSite:
    """The web site of one chat factory (not yet counted against the caps: see :func:`make_web`).

    ``port`` and ``interface``: where the web endpoint listens (see
    :func:`listen_address`), for the Origin check.
    """
    root = ClientFiles(STATIC_DIR)
    policy = OriginPolicy(allowed_origins, port, interface)
    root.putChild(b"ws", OriginCheckedWebSocketResource(ChatWebSocketFactory(factory), policy))
    root.putChild(b"health", HealthResource(factory))
    root.putChild(b"metrics", MetricsResource(factory))
    return ChatSite(root, factory.clock, request_deadline)


def make_web(
    factory: ChatFactory,
    allowed_origins: list[str],
    port: int | None = None,
    interface: str | None = None,
    request_deadline: float | None = REQUEST_DEADLINE,
) -> CappedFactory:
    """What the web endpoint listens with: the site, each connection counted in ``factory.caps``."""
    site = make_site(factory, allowed_origins, port, interface, request_deadline)
    return CappedFactory(site, factory.caps, WebBusy)


def _endpoint_fields(description: str) -> list[tuple[str, str | None]]:
    """The ``:``-separated fields of an endpoint description, as ``(positional, None)``
    or ``(key, value)``, honouring ``\\`` escapes as Twisted does."""
    fields: list[tuple[str, str | None]] = []
    key: str | None = None
    current: list[str] = []
    escaped = False
    for char in description + ":":
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=" and key is None:
            key, current = "".join(current), []
        elif char == ":":
            text = "".join(current)
            fields.append((key, text) if key is not None else (text, None))
            key, current = None, []
        else:
            current.append(char)
    return fields


def listen_address(description: str) -> tuple[int | None, str | None]:
    """The port and ``interface=`` of a ``tcp``/``tcp6``/``ssl`` endpoint description.

    ``(None, None)`` for other kinds (a UNIX socket has no port: then only
    ``--web-origin`` and the connection's own port apply).
    """
    fields = _endpoint_fields(description)
    kind = fields[0][0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return None, None
    positional = [name for name, value in fields[1:] if value is None]
    named = {name: value for name, value in fields[1:] if value is not None}
    port_text = named.get("port", positional[0] if positional else "")
    interface = named.get("interface")
    if interface is None and kind != "ssl" and len(positional) > 1:
        interface = positional[1]  # tcp:PORT:INTERFACE
    port = int(port_text) if port_text.isdigit() else None
    return port, interface

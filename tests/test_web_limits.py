"""The web port's limits, in memory: connection caps shared with the chat,
a whole-request deadline, a small body cap, quiet 404s for odd paths, and
a hypothesis fuzz of raw requests.

Each connection is the real listening factory (``make_web``) over a
``StringTransport``, on a ``task.Clock``.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import _producer_helpers
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.site import MAX_BODY, REQUEST_DEADLINE, make_web

from tests.support import FakeClient, make_factory

_ports = itertools.count(20000)
WEB_PORT = 8080
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Origin: http://127.0.0.1:8080\r\n\r\n"
)


class WebConnection:
    """One client connection to the web port, over a StringTransport."""

    def __init__(self, web: Any, host: str) -> None:
        peer = IPv4Address("TCP", host, next(_ports))
        self.transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", WEB_PORT))
        self.protocol = web.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.lost = False

    def send(self, data: bytes) -> None:
        """Deliver ``data`` as one read (nothing once the connection ended)."""
        if not self.lost:
            self.protocol.dataReceived(data)

    def output(self) -> bytes:
        """Everything written to the client so far."""
        return self.transport.value()

    @property
    def closing(self) -> bool:
        """Whether the server closed (or is closing) the connection."""
        return bool(self.transport.disconnecting) or self.lost

    def lose(self) -> None:
        """The connection ends (the client left, or the close completed)."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


class WebTestCase(SynchronousTestCase):
    """A chat factory and its web port, on one clock; file responses run on it too."""

    config: dict[str, Any] = {}

    def setUp(self) -> None:
        self.start()
        # Static files are sent by a pull producer through the global
        # cooperator: run it on our clock instead of a reactor.
        cooperator = Cooperator(scheduler=lambda work: self.clock.callLater(0, work))
        self.patch(_producer_helpers, "cooperate", cooperator.cooperate)
        self.addCleanup(self.close_all)

    def start(self) -> None:
        """A new server: clock, chat factory, web port."""
        self.clock = Clock()
        self.factory = make_factory(self.clock, **self.config)
        self.web = make_web(self.factory, [], port=WEB_PORT)
        self.connections: list[WebConnection] = []

    def connect(self, host: str = "10.0.0.1") -> WebConnection:
        connection = WebConnection(self.web, host)
        self.connections.append(connection)
        return connection

    def close_all(self) -> None:
        for connection in self.connections:
            connection.lose()

    def pump(self, seconds: float = 0.0) -> None:
        """Let the clock run: pending writes, then ``seconds``."""
        self.clock.advance(0)
        self.clock.advance(0)
        self.complete_closes()
        if seconds:
            self.clock.advance(seconds)
            self.complete_closes()

    def complete_closes(self) -> None:
        """Connections the server closed end, as the reactor would end them."""
        for connection in self.connections:
            if connection.transport.disconnecting:
                connection.lose()


def status(data: bytes) -> int | None:
    """The status code of the first response in ``data``."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(match.group(1)) if match else None


class CapsTests(WebTestCase):
    config = {"max_per_ip": 3, "max_connections": 5}

    def test_web_connections_count_per_address(self) -> None:
        """Half-open HTTP requests from one address are capped: the next gets 503 and is closed."""
        held = [self.connect() for _ in range(3)]
        for connection in held:
            connection.send(b"GET / HTTP/1.1\r\n")  # never finished
        extra = self.connect()
        self.assertEqual(status(extra.output()), 503)
        self.assertIn(b"Too many connections from your address", extra.output())
        self.assertTrue(extra.closing)
        self.assertTrue(all(not connection.closing for connection in held))
        other = self.connect("10.0.0.2")
        self.assertFalse(other.closing)
        held[0].lose()
        extra.lose()
        self.assertFalse(self.connect().closing)

    def test_chat_and_web_share_the_caps(self) -> None:
        chats = [FakeClient(self.factory, host="10.0.0.1") for _ in range(2)]
        self.assertFalse(self.connect().closing)
        self.assertEqual(status(self.connect().output()), 503)  # 2 chat + 1 web from 10.0.0.1
        self.assertIn(b"server_busy", self.busy_chat("10.0.0.1"))
        for host in ("10.0.0.2", "10.0.0.3"):
            self.assertFalse(self.connect(host).closing)
        full = self.connect("10.0.0.4")  # 5 in all
        self.assertEqual(status(full.output()), 503)
        self.assertIn(b"The server is full", full.output())
        chats[0].disconnect()
        self.assertFalse(self.connect("10.0.0.4").closing)

    def busy_chat(self, host: str) -> bytes:
        client = FakeClient(self.factory, host=host)
        return bytes(client.transport.value())

    def test_a_websocket_counts_once(self) -> None:
        connection = self.connect()
        connection.send(UPGRADE)
        self.assertEqual(status(connection.output()), 101)
        self.assertEqual((self.factory.connections, self.factory.caps.total), (1, 1))
        self.assertEqual(self.factory.per_ip, {"10.0.0.1": 1})
        # Two more slots for this address, not one.
        self.assertFalse(self.connect().closing)
        self.assertFalse(self.connect().closing)
        connection.lose()
        self.assertEqual((self.factory.connections, self.factory.caps.total), (0, 2))

    def test_counts_return_to_zero(self) -> None:
        for _ in range(3):
            connection = self.connect()
            connection.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            connection.lose()
            connection.lose()  # a second notice must not count twice
        self.connect().lose()
        self.assertEqual((self.factory.caps.total, self.factory.per_ip), (0, {}))


class DeadlineTests(WebTestCase):
    def test_trickled_headers_are_cut(self) -> None:
        """One header byte now and then no longer holds a connection open."""
        connection = self.connect()
        connection.send(b"GET / HTTP/1.1\r\n")
        for second in range(int(REQUEST_DEADLINE) - 1):
            self.clock.advance(1)
            connection.send(b"X")
        self.assertFalse(connection.closing)
        self.clock.advance(1)
        self.assertTrue(connection.closing)
        self.assertEqual(connection.output(), b"")

    def test_silent_connection_closed(self) -> None:
        connection = self.connect()
        self.clock.advance(REQUEST_DEADLINE)
        self.assertTrue(connection.closing)

    def test_idle_keep_alive_closed(self) -> None:
        connection = self.connect()
        self.clock.advance(REQUEST_DEADLINE - 1)
        connection.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(status(connection.output()), 200)
        self.clock.advance(REQUEST_DEADLINE - 1)
        self.assertFalse(connection.closing)  # a fresh deadline for the next request
        connection.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(REQUEST_DEADLINE - 0.5)
        self.assertFalse(connection.closing)
        self.clock.advance(0.5)
        self.assertTrue(connection.closing)

    def test_websocket_has_no_request_deadline(self) -> None:
        """After the upgrade the chat's own timeouts apply."""
        connection = self.connect()
        connection.send(UPGRADE)
        self.clock.advance(REQUEST_DEADLINE * 3)
        self.assertFalse(connection.closing)


class BodyTests(WebTestCase):
    def test_large_content_length_refused_before_reading(self) -> None:
        connection = self.connect()
        connection.send(b"POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
                        b"Expect: 100-continue\r\n\r\n" + b"x" * 65536)
        output = connection.output()
        self.assertEqual(status(output), 413)
        self.assertNotIn(b"100 Continue", output)
        self.assertTrue(connection.closing)
        channel = connection.protocol.wrappedProtocol
        self.assertIsNone(getattr(channel.requests[-1], "content", None))
        connection.send(b"x" * 65536)  # the rest of a body: ignored
        self.assertEqual(connection.output(), output)

    def test_chunked_body_counted_and_cut(self) -> None:
        connection = self.connect()
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (1000, b"y" * 1000)
        for _ in range(MAX_BODY // 1000):
            connection.send(chunk)
        self.assertEqual(connection.output(), b"")
        connection.send(chunk)
        self.assertEqual(status(connection.output()), 413)
        self.assertTrue(connection.closing)
        content = connection.protocol.wrappedProtocol.requests[-1].content
        self.assertLessEqual(len(content.getvalue()), MAX_BODY)

    def test_small_body_is_read_and_dropped(self) -> None:
        connection = self.connect()
        connection.send(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(status(connection.output()), 405)
        self.assertFalse(connection.closing)


class PathTests(WebTestCase):
    """Odd paths are a quiet 404, never a 500 or a logged traceback."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def get(self, path: bytes) -> bytes:
        connection = self.connect()
        connection.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.pump()
        return connection.output()

    def test_odd_paths(self) -> None:
        for path in (b"/%00", b"/app.js%00", b"/%ff", b"/%c0%af", b"/..%2f..%2fetc%2fpasswd", b"/%2e%2e/",
                     b"/" + b"a" * 8000, b"/a/" * 1000, b"/app.js/x", b"/app.js/%ff", b"/ws/%00", b"/.",
                     b"/index.html/"):
            self.assertEqual(status(self.get(path)), 404, path)
        serious = [event for event in self.events if event.get("log_level") in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(serious, [])

    def test_client_files_served(self) -> None:
        for path, kind in ((b"/", b"text/html"), (b"/index.html", b"text/html"), (b"/app.js", b"javascript"),
                           (b"/style.css", b"text/css")):
            response = self.get(path)
            self.assertEqual(status(response), 200, path)
            head = response.split(b"\r\n\r\n", 1)[0].lower()
            self.assertIn(kind, head)
            self.assertIn(b"content-security-policy:", head)

    def test_too_long_lines_answered(self) -> None:
        connection = self.connect()
        connection.send(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n")
        self.assertEqual((status(connection.output()), connection.closing), (414, True))
        connection = self.connect()
        connection.send(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertEqual((status(connection.output()), connection.closing), (431, True))

    def test_ws_without_upgrade_is_a_quiet_400(self) -> None:
        self.assertEqual(status(self.get(b"/ws")), 400)
        serious = [event for event in self.events if event.get("log_level") in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(serious, [])


class WiringTests(SynchronousTestCase):
    """``twistd chatd --web``: the web port counts in the chat factory's caps and knows where it listens."""

    def web_listener(self, *args: str) -> tuple[Any, Any]:
        from twisted.internet.testing import MemoryReactorClock

        from chatd.tap import Options, makeService

        options = Options()
        options.parseOptions(["--history", "memory", "--max-per-ip", "1", *args])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (_, chat, _, _), (_, web, _, _) = reactor.tcpServers
        return chat, web

    def test_one_caps_object(self) -> None:
        chat, web = self.web_listener("--web", "tcp:8181:interface=127.0.0.1")
        self.assertIs(web.caps, chat.caps)
        FakeClient(chat, host="10.0.0.1")
        self.assertEqual(status(WebConnection(web, "10.0.0.1").output()), 503)

    def test_origin_policy_from_the_endpoint(self) -> None:
        _, web = self.web_listener("--web", "tcp:8181:interface=10.9.8.7", "--web-origin", "https://chat.example.org")
        policy = web.wrappedFactory.resource.children[b"ws"].policy
        self.assertEqual((policy.port, "10.9.8.7" in policy.names), (8181, True))
        local = IPv4Address("TCP", "10.9.8.7", 8181)
        self.assertTrue(policy.allows("http://10.9.8.7:8181", local))
        self.assertTrue(policy.allows("https://chat.example.org", local))
        self.assertFalse(policy.allows("http://rebound.example:8181", local))


# -- fuzz ----------------------------------------------------------------

STANDARD_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PATCH"}
_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT",
                            b"PATCH", b"get", b"FOO", b"G\x00T", b""])
_SEGMENTS = st.one_of(
    st.sampled_from([b"", b"%00", b"%ff", b"..", b"%2e%2e", b"..%2f", b"ws", b"health", b"metrics",
                     b"index.html", b"app.js", b"style.css", b"%c0%af", b"a" * 300, b"%", b"%zz", b"\xff"]),
    st.binary(max_size=12).map(lambda raw: raw.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")),
)
_PATHS = st.one_of(
    st.lists(_SEGMENTS, max_size=5).map(lambda segments: b"/" + b"/".join(segments)),
    st.sampled_from([b"*", b"", b"http://evil.example/", b"/?%00=%ff", b"/health?x=%00"]),
    st.integers(1000, 20000).map(lambda size: b"/" + b"a" * size),
)
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b"", b"FOO"])
_HEADER_NAMES = st.sampled_from([b"Host", b"Origin", b"Content-Length", b"Transfer-Encoding", b"Connection",
                                 b"Upgrade", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Expect",
                                 b"Cookie", b"Range", b"If-Modified-Since", b"Accept-Encoding", b"X-\xff",
                                 b"Bad Name", b""])
_HEADER_VALUES = st.one_of(
    st.sampled_from([b"chunked", b"identity", b"0", b"10", b"-1", b"99999999999999", b"close", b"keep-alive",
                     b"websocket", b"Upgrade", b"13", b"dGhlIHNhbXBsZSBub25jZQ==", b"100-continue",
                     b"bytes=0-10", b"bytes=5-1", b"gzip", b"http://127.0.0.1:8080", b"null", b"http://\xff\x9b",
                     b"\xc3\xa9t\xc3\xa9"]),
    st.binary(max_size=20).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
)
_BODIES = st.one_of(
    st.binary(max_size=200),
    st.integers(0, 3 * MAX_BODY).map(lambda size: b"b" * size),
    st.lists(st.binary(min_size=1, max_size=3000), max_size=4).map(
        lambda chunks: b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"),
)


@st.composite
def raw_requests(draw: Any) -> list[bytes]:
    """A raw request (valid, odd or broken), cut into one to three reads."""
    line = draw(_METHODS) + b" " + draw(_PATHS) + b" " + draw(_VERSIONS)
    headers = draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6))
    head = line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    data = head + draw(_BODIES)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=2)))
    edges = [0, *cuts, len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:])]


def complete_first_response(data: bytes, head_request: bool) -> bool:
    """Whether ``data`` starts with a whole HTTP response (or a WebSocket upgrade)."""
    head, separator, body = data.partition(b"\r\n\r\n")
    code = status(data)
    if not separator or code is None:
        return False
    if code == 101 or head_request or code in (204, 304):
        return True
    lengths = re.findall(rb"(?im)^content-length: *(\d+)\r?$", head)
    if lengths:
        return len(body) >= int(lengths[0])
    if re.search(rb"(?im)^transfer-encoding: *chunked", head):
        return b"0\r\n\r\n" in body
    return True  # delimited by the close (asserted separately)


class FuzzTests(WebTestCase):
    config = {"max_per_ip": 2}

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(reads=raw_requests())
    def test_any_request(self, reads: list[bytes]) -> None:
        """Whatever arrives: no 5xx, nothing logged as an error, the connection ends, the caps return."""
        del self.events[:]
        self.start()
        connection = self.connect()
        for data in reads:
            connection.send(data)
            self.pump()
        self.pump(REQUEST_DEADLINE)
        output = connection.output()
        # Everything ends: by the answer, the request deadline, or (an
        # upgraded WebSocket) the chat's login timeout.
        for _ in range(3):
            self.pump(self.factory.config.login_timeout)
        self.assertTrue(connection.closing, output[:200])
        codes = [int(code) for code in re.findall(rb"(?m)^HTTP/1\.[01] (\d{3}) ", output)]
        method = b"".join(reads).split(b" ", 1)[0]
        allowed = {501} if method not in STANDARD_METHODS else set()  # 501: a method HTTP does not define
        self.assertFalse([code for code in codes if code >= 500 and code not in allowed], output[:300])
        if output:
            self.assertTrue(complete_first_response(output, b"".join(reads).startswith(b"HEAD ")), output[:300])
        serious = [event for event in self.events if event.get("log_level") in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(serious, [])
        connection.lose()
        self.assertEqual((self.factory.caps.total, self.factory.connections), (0, 0))


# -- the WebSocket front-end, in memory ------------------------------------


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked (client to server) WebSocket frame."""
    mask = b"\x01\x02\x03\x04"
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The ``(opcode, payload)`` of each server frame after the 101 response."""
    data = data.partition(b"\r\n\r\n")[2]
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(data[2:10], "big"), 10
        frames.append((opcode, data[start : start + size]))
        data = data[start + size :]
    return frames


class WebSocketFrontEndTests(WebTestCase):
    """The WebSocket front-end's own wire: frames in, one frame per response out."""

    config = {"max_request": 200}

    def open(self) -> WebConnection:
        connection = self.connect()
        connection.send(UPGRADE)
        self.assertEqual(status(connection.output()), 101)
        return connection

    def texts(self, connection: WebConnection) -> list[dict[str, Any]]:
        return [json.loads(payload) for opcode, payload in server_frames(connection.output()) if opcode == 1]

    def test_each_response_is_one_text_frame(self) -> None:
        connection = self.open()
        connection.send(client_frame(b'{"request": "login", "content": "web"}'))
        self.pump()
        connection.send(client_frame(b'{"request": "msg", "content": "hi", "ref": 7}'))
        self.pump()
        responses = self.texts(connection)
        self.assertEqual([r["response"] for r in responses], ["info", "history", "message"])
        self.assertEqual((responses[2]["content"], responses[2]["ref"]), ("hi", 7))
        self.assertEqual(self.factory.connections, 1)
        self.assertEqual([p.transport_kind for p in self.factory.protocols], ["websocket"])

    def test_bad_frames_are_answered(self) -> None:
        connection = self.open()
        connection.send(client_frame(b"not json"))
        connection.send(client_frame(b"\x00\x01", opcode=2))
        connection.send(client_frame(b'{"request": "help"'))  # cut at the frame's end
        connection.send(client_frame(b', "content": null}'))  # not its continuation
        self.pump()
        codes = [r.get("code") for r in self.texts(connection)]
        self.assertEqual(codes, ["bad_json", "bad_json", "bad_json", "bad_json"])
        self.assertFalse(connection.closing)

    def test_too_long_frame_then_close(self) -> None:
        connection = self.open()
        connection.send(client_frame(json.dumps({"request": "msg", "content": "x" * 300}).encode()))
        self.pump()
        self.assertEqual([r["code"] for r in self.texts(connection)], ["too_long"])
        self.assertEqual(server_frames(connection.output())[-1][0], 8)  # a close frame
        self.assertTrue(connection.closing)

    def test_requests_per_turn_are_bounded_across_frames(self) -> None:
        """Each frame arrives as its own read: the per-turn bound holds
        across them, as it does for one TCP read."""
        from chatd.core.session import MAX_REQUESTS_PER_TURN

        connection = self.open()
        connection.send(client_frame(b'{"request": "login", "content": "web"}'))
        self.pump()
        before = len(self.texts(connection))
        connection.send(b"".join(client_frame(b'{"request": "ping", "content": %d}' % i) for i in range(100)))
        first = [r["content"] for r in self.texts(connection)[before:]]
        self.assertEqual(first, list(range(MAX_REQUESTS_PER_TURN)))
        self.clock.advance(0)
        every = [r["content"] for r in self.texts(connection)[before:]]
        self.assertEqual(every, list(range(100)))

    def test_errors_keep_their_place_in_order(self) -> None:
        """A binary frame's bad_json and an oversize frame's too_long come
        after the answers to the frames before them (they jumped the
        queue, and too_long dropped what was queued)."""
        for last, code in ((client_frame(b"\x00\x01", opcode=2), "bad_json"), (client_frame(b"x" * 300), "too_long")):
            connection = self.open()
            connection.send(client_frame(b'{"request": "login", "content": "web"}'))
            self.pump()
            before = len(self.texts(connection))
            pings = b"".join(client_frame(b'{"request": "ping", "content": %d}' % i) for i in range(40))
            connection.send(pings + last)
            self.pump()
            answers = self.texts(connection)[before:]
            self.assertEqual([r.get("content") for r in answers[:40]], list(range(40)), code)
            self.assertEqual([r.get("code") for r in answers[40:]], [code])
            self.assertEqual(connection.closing, code == "too_long")

    def test_a_close_frame_during_fan_out_hurts_nobody(self) -> None:
        """The peer's close frame is answered by Twisted before the session
        hears of it; fan-out to it then must neither raise nor stop the
        batch (it wedged the sender and cut later members off)."""
        connection = self.open()
        connection.send(client_frame(b'{"request": "login", "content": "web"}'))
        self.pump()
        bee = FakeClient(self.factory)
        bee.login("bee")
        # Twisted answers the close frame at once; the connection ends a
        # reactor turn or more later (its output must drain first).
        connection.send(client_frame(b"\x03\xe8", opcode=8))  # close, 1000
        bee.send("msg", "after the close")
        bee.send("ping", "still answered")
        responses = bee.received()
        self.assertEqual([r["content"] for r in responses], ["after the close", "still answered"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_shutdown_aborts_a_websocket_that_lingers(self) -> None:
        connection = self.open()
        self.factory.shut_down(grace=3)
        self.assertEqual(self.texts(connection)[-1]["content"], "Server shutting down")
        connection.transport.disconnecting = False  # the peer never answers the close
        self.clock.advance(3)
        self.assertTrue(connection.transport.disconnecting)

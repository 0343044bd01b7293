"""The web side: WebSocket chat, origin check, /health, /metrics."""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from chatd.stores.history import HistoryError
from chatd.frontends.site import (
    HealthResource,
    MetricsResource,
    OriginCheckedWebSocketResource,
    OriginPolicy,
    listen_address,
)
from chatd.frontends.websocket import FrameOutput, WebSocketWire

from tests.e2e import can_connect, DEADLINE, LinesClient, ServerProcess, free_port, wait_for
from tests.support import FakeClient, make_factory


class FakeWire:
    """The WebSocket wire protocol, as our adapter sees it."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.transport = StringTransport()
        self.closed = False

    def sendTextMessage(self, text: str) -> None:
        self.frames.append(text)

    def loseConnection(self, code: int = 1000) -> None:
        self.closed = True


class WireTests(SynchronousTestCase):
    def test_each_response_is_one_frame(self) -> None:
        wire = FakeWire()
        output = FrameOutput(WebSocketWire(wire).send_frame)  # type: ignore[arg-type]  # a fake wire
        output.send(b'{"a": 1}')
        output.send(b'{"b": 2}')
        output.send(b'{"c": 3}')
        self.assertEqual(wire.frames, ['{"a": 1}', '{"b": 2}', '{"c": 3}'])

    def test_producer_replaces_the_http_channel(self) -> None:
        wire = FakeWire()
        wire.transport.registerProducer(object(), True)  # the HTTP channel's
        transport = WebSocketWire(wire)  # type: ignore[arg-type]  # a fake wire
        meter = object()
        transport.registerProducer(meter, True)  # type: ignore[arg-type]  # any producer
        self.assertIs(wire.transport.producer, meter)

    def test_close_sends_a_close_frame_and_abort_drops_the_connection(self) -> None:
        wire = FakeWire()
        transport = WebSocketWire(wire)  # type: ignore[arg-type]  # a fake wire
        transport.loseConnection()
        self.assertTrue(wire.closed)
        self.assertFalse(wire.transport.disconnecting)
        transport.abortConnection()
        self.assertTrue(wire.transport.disconnecting)


def get(resource: Any, path: bytes = b"/", headers: dict[bytes, bytes] | None = None) -> tuple[int, bytes, DummyRequest]:
    request = DummyRequest([path])
    for key, value in (headers or {}).items():
        request.requestHeaders.addRawHeader(key, value)
    body = resource.render_GET(request)
    if isinstance(body, bytes):
        request.write(body)
    return request.responseCode or 200, b"".join(request.written), request


class HealthTests(SynchronousTestCase):
    def test_ok(self) -> None:
        factory = make_factory()
        FakeClient(factory).login("bob")
        FakeClient(factory)
        code, body, request = get(HealthResource(factory))
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"status": "ok", "connections": 2, "users": 1, "history": "memory"})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])

    def test_store_failing(self) -> None:
        factory = make_factory()

        def broken(room: str) -> int:
            raise HistoryError("disk gone")

        factory.hub.history.last_id = broken  # type: ignore[method-assign]
        factory.hub.history.check = broken  # type: ignore[attr-defined]
        code, body, _ = get(HealthResource(factory))
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["status"], "failing")

    def test_check_is_asked(self) -> None:
        """/health asks the store's check(), which also tries a write."""
        factory = make_factory()
        checks: list[int] = []

        def cannot_write() -> None:
            checks.append(1)
            raise OSError("read-only file system")

        factory.hub.history.check = cannot_write  # type: ignore[attr-defined]
        code, body, _ = get(HealthResource(factory))
        self.assertEqual((code, json.loads(body)["status"], len(checks)), (503, "failing", 1))
        factory.hub.history.check = lambda: None  # type: ignore[attr-defined]
        self.assertEqual(get(HealthResource(factory))[0], 200)

    def test_cluster_names_are_a_deferred(self) -> None:
        """A clustered hub's names() is a Deferred: /health and /metrics count local users."""
        factory = make_factory()
        FakeClient(factory).login("ann")
        FakeClient(factory).login("bea")
        FakeClient(factory)
        factory.hub.names = lambda: Deferred()  # type: ignore[method-assign]
        code, body, _ = get(HealthResource(factory))
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["users"], 2)
        code, body, _ = get(MetricsResource(factory))
        self.assertEqual(code, 200)
        self.assertIn(b"chatd_users 2.0", body)


class MetricsTests(SynchronousTestCase):
    def scrape(self, factory: Any) -> dict[str, float]:
        _, body, _ = get(MetricsResource(factory))
        values = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return values

    def test_counters_move(self) -> None:
        factory = make_factory(max_sendq=50_000)
        before = self.scrape(factory)
        self.assertEqual(before["chatd_messages_accepted_total"], 0)
        alice, bob = FakeClient(factory), FakeClient(factory)
        alice.login("alice")
        bob.login("bob")
        for i in range(3):
            alice.send("msg", f"m{i}")
        alice.send("msg", "")
        alice.send("bogus")
        bob.transport.producer.pauseProducing()
        for i in range(60):
            alice.send("msg", "x" * 1000)
        after = self.scrape(factory)
        self.assertEqual(after["chatd_messages_accepted_total"], 63)
        self.assertGreaterEqual(after["chatd_deliveries_total"], 3 * 2 + 60)
        self.assertEqual(after["chatd_errors_total{code=empty_message}"], 1)
        self.assertEqual(after["chatd_errors_total{code=unknown_request}"], 1)
        self.assertEqual(after["chatd_sendq_drops_total"], 1)
        self.assertEqual(after["chatd_connections{transport=tcp}"], 2)
        self.assertEqual(after["chatd_connections{transport=websocket}"], 0)
        self.assertEqual(after["chatd_users"], 2)
        self.assertGreater(after["chatd_history_write_seconds_count"], 0)


class OriginTests(SynchronousTestCase):
    """Only configured origins and the web endpoint's own names may open /ws; Host is never trusted."""

    def allowed(
        self,
        origin: bytes | None,
        host: bytes = b"127.0.0.1:8080",
        extra: list[str] | None = None,
        port: int | None = 8080,
        interface: str | None = None,
        local: tuple[str, int] = ("127.0.0.1", 8080),
    ) -> bool:
        request = DummyRequest([b"ws"])
        request.requestHeaders.addRawHeader(b"host", host)
        if origin is not None:
            request.requestHeaders.addRawHeader(b"origin", origin)
        request.getHost = lambda: IPv4Address("TCP", *local)  # type: ignore[method-assign]
        resource = OriginCheckedWebSocketResource(None, OriginPolicy(extra or [], port, interface))  # type: ignore[arg-type]
        return resource.origin_allowed(request)

    def test_loopback_names_on_the_web_port(self) -> None:
        for origin in (b"http://127.0.0.1:8080", b"http://localhost:8080", b"https://localhost:8080",
                       b"http://[::1]:8080", b"HTTP://LocalHost:8080/"):
            self.assertTrue(self.allowed(origin), origin)

    def test_host_header_is_not_trusted(self) -> None:
        """DNS rebinding: the page's own name arrives as both Origin and Host."""
        self.assertFalse(self.allowed(b"http://evil.example:8080", host=b"evil.example:8080"))
        self.assertFalse(self.allowed(b"http://chat.example.org:8080", host=b"chat.example.org:8080"))

    def test_other_origins_refused(self) -> None:
        self.assertFalse(self.allowed(b"http://evil.example"))
        self.assertFalse(self.allowed(b"http://127.0.0.1:8081"))  # another port
        self.assertFalse(self.allowed(b"http://127.0.0.1"))  # port 80
        self.assertFalse(self.allowed(b"null"))
        self.assertFalse(self.allowed(b"http://127.0.0.1:8080.evil.example"))
        self.assertFalse(self.allowed(b"http://user@127.0.0.1:8080"))
        self.assertFalse(self.allowed(b"http://127.0.0.1:99999"))
        self.assertFalse(self.allowed(b"ftp://127.0.0.1:8080"))

    def test_interface_name(self) -> None:
        self.assertTrue(self.allowed(b"http://10.1.2.3:8080", interface="10.1.2.3", local=("10.1.2.3", 8080)))
        self.assertTrue(self.allowed(b"http://[fd00::1]:8080", interface="fd00::1"))
        self.assertFalse(self.allowed(b"http://0.0.0.0:8080", interface="0.0.0.0"))

    def test_the_address_the_connection_arrived_at(self) -> None:
        """An IP literal no other site's page can have: listening on all interfaces, a LAN user's page works."""
        self.assertTrue(self.allowed(b"http://192.168.1.5:8080", interface="0.0.0.0", local=("192.168.1.5", 8080)))
        self.assertFalse(self.allowed(b"http://192.168.1.6:8080", interface="0.0.0.0", local=("192.168.1.5", 8080)))

    def test_port_from_the_connection_when_unknown(self) -> None:
        self.assertTrue(self.allowed(b"http://localhost:4321", port=None, local=("127.0.0.1", 4321)))
        self.assertFalse(self.allowed(b"http://localhost:4322", port=None, local=("127.0.0.1", 4321)))

    def test_configured_origins(self) -> None:
        self.assertTrue(self.allowed(b"https://app.example.org", extra=["https://app.example.org/"]))
        self.assertTrue(self.allowed(b"https://app.example.org", extra=["https://App.Example.org:443"]))
        self.assertFalse(self.allowed(b"http://app.example.org", extra=["https://app.example.org"]))

    def test_bad_configured_origin(self) -> None:
        self.assertRaises(ValueError, OriginPolicy, ["chat.example.org"])

    def test_no_origin_is_not_a_browser(self) -> None:
        self.assertTrue(self.allowed(None))

    def test_refusal_is_403(self) -> None:
        request = DummyRequest([b"ws"])
        request.requestHeaders.addRawHeader(b"host", b"a:1")
        request.requestHeaders.addRawHeader(b"origin", b"http://b:1")
        OriginCheckedWebSocketResource(None, OriginPolicy([], 8080)).render_GET(request)  # type: ignore[arg-type]
        self.assertEqual(request.responseCode, 403)


class ListenAddressTests(SynchronousTestCase):
    def test_descriptions(self) -> None:
        self.assertEqual(listen_address("tcp:8080"), (8080, None))
        self.assertEqual(listen_address("tcp:8080:interface=127.0.0.1"), (8080, "127.0.0.1"))
        self.assertEqual(listen_address("tcp:port=8080:interface=10.0.0.1"), (8080, "10.0.0.1"))
        self.assertEqual(listen_address(r"tcp6:8080:interface=\:\:1"), (8080, "::1"))
        self.assertEqual(listen_address("ssl:8443:privateKey=k.pem:interface=10.0.0.2"), (8443, "10.0.0.2"))
        self.assertEqual(listen_address("unix:/run/chatd.sock"), (None, None))


class WebEndToEndTests(SynchronousTestCase):
    """The real server: WebSocket and TCP users on one hub."""

    def setUp(self) -> None:
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.web_port = free_port()
        self.server = ServerProcess(workdir, "--web", f"tcp:{self.web_port}:interface=127.0.0.1",
                                    "--max-request", "1000").start()
        self.addCleanup(self.server.kill)
        wait_for(lambda: can_connect(self.web_port), "the web listener")

    def ws(self, **options: Any) -> Any:
        import websocket

        connection = websocket.create_connection(f"ws://127.0.0.1:{self.web_port}/ws", timeout=DEADLINE, **options)
        self.addCleanup(connection.close)
        return connection

    def test_websocket_and_tcp_share_the_room(self) -> None:
        browser = self.ws()
        terminal = LinesClient(self.server.port)
        self.addCleanup(terminal.close)
        terminal.send("login", "terminal")
        terminal.receive()
        terminal.receive()
        browser.send(json.dumps({"request": "login", "content": "browser"}))
        info = json.loads(browser.recv())
        self.assertEqual(info["content"], "Login successful. You are now logged in as browser")
        self.assertEqual(json.loads(browser.recv())["response"], "history")
        browser.send(json.dumps({"request": "msg", "content": "from the web"}))
        self.assertEqual(json.loads(browser.recv())["content"], "from the web")
        self.assertEqual(terminal.receive()["content"], "from the web")
        terminal.send("msg", "from the terminal")
        self.assertEqual(json.loads(browser.recv())["content"], "from the terminal")

    def test_v1_until_hello_then_v2(self) -> None:
        browser = self.ws()
        browser.send(json.dumps({"request": "login", "content": "first"}))
        browser.recv()
        history = json.loads(browser.recv())
        browser.send(json.dumps({"request": "msg", "content": "one"}))
        browser.recv()
        second = self.ws()
        second.send(json.dumps({"request": "login", "content": "second"}))
        second.recv()
        v1_history = json.loads(second.recv())["content"]
        self.assertIsInstance(v1_history[0], str)  # v1: JSON strings
        third = self.ws()
        third.send(json.dumps({"request": "hello", "content": {"protocol": 2}, "ref": 1}))
        hello = json.loads(third.recv())
        self.assertEqual((hello["response"], hello["ref"]), ("hello", 1))
        third.send(json.dumps({"request": "login", "content": "third"}))
        third.recv()
        v2_history = json.loads(third.recv())["content"]
        self.assertEqual(v2_history[0]["content"], "one")  # v2: objects
        self.assertEqual(history["content"], [])

    def test_one_frame_per_response(self) -> None:
        browser = self.ws()
        browser.send(json.dumps({"request": "help"}) + json.dumps({"request": "help"}))
        for _ in range(2):
            self.assertEqual(json.loads(browser.recv())["response"], "info")

    def test_too_long_then_close(self) -> None:
        import websocket

        browser = self.ws()
        browser.send(json.dumps({"request": "msg", "content": "x" * 2000}))
        self.assertEqual(json.loads(browser.recv())["code"], "too_long")
        self.assertRaises((websocket.WebSocketConnectionClosedException, ConnectionError), lambda: [browser.recv() for _ in range(3)])

    def test_foreign_origin_refused(self) -> None:
        import websocket

        error = self.assertRaises(websocket.WebSocketBadStatusException, self.ws, origin="http://evil.example")
        self.assertEqual(error.status_code, 403)
        self.ws(origin=f"http://127.0.0.1:{self.web_port}")

    def test_health_and_metrics_over_http(self) -> None:
        import urllib.request

        browser = self.ws()
        browser.send(json.dumps({"request": "login", "content": "counted"}))
        browser.recv()
        browser.recv()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=DEADLINE) as response:
            self.assertEqual(response.headers["content-type"], "application/json")
            health = json.loads(response.read())
        self.assertEqual(health, {"status": "ok", "connections": 1, "users": 1, "history": "sqlite"})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=DEADLINE) as response:
            families = {family.name: family for family in text_string_to_metric_families(response.read().decode())}
        websocket_count = [s.value for s in families["chatd_connections"].samples if s.labels["transport"] == "websocket"]
        self.assertEqual(websocket_count, [1.0])

    def test_page_is_served_with_a_strict_policy(self) -> None:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/", timeout=DEADLINE) as response:
            page = response.read().decode()
            policy = response.headers["content-security-policy"]
        self.assertIn('<script src="app.js">', page)
        self.assertIn("script-src 'self'", policy)
        self.assertNotRegex(page, r"(src|href)=\"(https?:)?//")

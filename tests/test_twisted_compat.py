"""chatd/twisted_compat.py against the installed Twisted.

Each test checks one thing chatd relies on beyond Twisted's public API;
a failure names the attribute and the Twisted version, so that a Twisted
upgrade that changed it says so here, loudly, rather than as a limit that
quietly stopped working.  The write-through tests (formerly
tests/test_writethrough.py) are here too.
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any, Callable

import twisted
from twisted.application import app
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request as WSRequest, TextMessage
from zope.interface import directlyProvides

from chatd import twisted_compat
from chatd.twisted_compat import (
    EXIT_SIGNAL_ATTRIBUTE,
    HTTP_CHANNEL_HOOKS,
    SEND_BUFFER_ATTRIBUTES,
    declared_body_length,
    end_http_timeout,
    forget_exit_signal,
    intercept_upgraded_input,
    release_http_producer,
    request_line_read,
    websocket_connection,
    writer_for,
)


def changed(what: str, used_by: str) -> str:
    """The failure message: which Twisted internal changed, in which version, and who needs it."""
    return (
        f"Twisted {twisted.__version__} changed {what}, which chatd/twisted_compat.py relies on"
        f" ({used_by}); adapt that module before raising the twisted cap in pyproject.toml"
    )


class CompatTestCase(SynchronousTestCase):
    def relies_on(self, obj: object, name: str, used_by: str) -> Any:
        """``obj.name``, or a failure naming it and the Twisted version."""
        if not hasattr(obj, name):
            owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
            self.fail(changed(f"{owner}.{name} (it is gone)", used_by))
        return getattr(obj, name)


# -- FileDescriptor's send buffer (writer_for) ---------------------------


class TCPServerCase(CompatTestCase):
    """A real ``tcp.Server`` on one end of a socket pair, under a MemoryReactor."""

    def setUp(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.ours.setblocking(False)
        self.peer.settimeout(5)
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(self.ours, Protocol(), ("127.0.0.1", 1), None, 1, self.reactor)


class SendBufferTests(TCPServerCase):
    """What writer_for reads of FileDescriptor's buffer means what it assumes."""

    used_by = "writer_for: whether a TCP transport holds unsent data"

    def unsent(self) -> bytes:
        buffer = self.relies_on(self.transport, "dataBuffer", self.used_by)
        offset = self.relies_on(self.transport, "offset", self.used_by)
        chunks = self.relies_on(self.transport, "_tempDataBuffer", self.used_by)
        self.assertIsInstance(offset, int, changed("FileDescriptor.offset (not an int)", self.used_by))
        self.assertIsInstance(chunks, list, changed("FileDescriptor._tempDataBuffer (not a list)", self.used_by))
        return bytes(buffer[offset:]) + b"".join(chunks)

    def test_the_attributes_exist(self) -> None:
        for name in SEND_BUFFER_ATTRIBUTES:
            self.relies_on(self.transport, name, self.used_by)

    def test_an_idle_transport_holds_nothing(self) -> None:
        self.assertEqual(self.unsent(), b"")

    def test_a_write_is_held_until_the_socket_is_writable(self) -> None:
        self.transport.write(b"queued\n")
        self.assertEqual(self.unsent(), b"queued\n", changed("where FileDescriptor.write keeps unsent data", self.used_by))
        self.transport.doWrite()
        self.assertEqual(self.peer.recv(100), b"queued\n")
        self.assertEqual(self.unsent(), b"", changed("how FileDescriptor.doWrite empties its buffer", self.used_by))

    def test_the_fast_path_is_taken(self) -> None:
        # writer_for falls back to plain write on a transport without these
        # attributes: correct, but the fan-out speed-up would be gone.
        self.assertNotEqual(
            writer_for(self.transport),
            self.transport.write,
            changed(f"tcp.Server's send buffer ({', '.join(SEND_BUFFER_ATTRIBUTES)})", self.used_by),
        )


class WriteThroughTests(TCPServerCase):
    """writer_for: send at once to idle TCP sockets, queue behind unsent data."""

    def setUp(self) -> None:
        super().setUp()
        self.write = writer_for(self.transport)

    def test_idle_socket_gets_the_bytes_at_once(self) -> None:
        self.write(b"hello\n")
        self.assertEqual(self.peer.recv(100), b"hello\n")
        self.assertEqual(self.transport._tempDataBuffer, [])
        self.assertNotIn(self.transport, self.reactor.getWriters())  # no reactor round trip

    def test_queued_data_keeps_its_order(self) -> None:
        self.transport.write(b"first\n")  # queued by Twisted, not yet sent
        self.write(b"second\n")
        self.assertEqual(self.transport._tempDataBuffer, [b"first\n", b"second\n"])
        self.transport.doWrite()
        self.assertEqual(self.peer.recv(100), b"first\nsecond\n")

    def test_what_the_kernel_does_not_take_is_queued(self) -> None:
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"x" * 4_000_000
        self.write(big)
        queued = b"".join(self.transport._tempDataBuffer)
        self.assertTrue(queued)
        self.assertTrue(big.endswith(queued))
        self.assertIn(self.transport, self.reactor.getWriters())
        received = b""
        while len(received) < len(big):
            self.transport.doWrite()
            received += self.peer.recv(1 << 20)
        self.assertEqual(received, big)

    def test_other_transports_use_plain_write(self) -> None:
        transport = StringTransport()
        self.assertEqual(writer_for(transport), transport.write)


# -- reactor._exitSignal (forget_exit_signal) ----------------------------


class StoppedReactor:
    """Enough of a reactor for twistd's runner: ``run`` returns at once, as if stopped by ``stopped_by``."""

    def __init__(self, stopped_by: int | None, forget: bool) -> None:
        self.stopped_by = stopped_by
        self.forget = forget
        directlyProvides(self, _ISupportsExitSignalCapturing)

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        """What the signal handlers schedule (the stop): not needed here."""

    def stop(self) -> None:
        """Never called: callFromThread ignores it."""

    def run(self) -> None:
        if self.stopped_by is not None:
            # The reactor's own handler records the signal...
            ReactorBase.sigTerm(self, self.stopped_by)  # type: ignore[arg-type]  # a stand-in for a ReactorBase
        if self.forget:
            # ...and ChatService.stopService, run as the reactor stops, forgets it.
            forget_exit_signal(self, (signal.SIGTERM, signal.SIGINT))


class ExitSignalTests(CompatTestCase):
    used_by = "forget_exit_signal: twistd exits 0 after SIGTERM/SIGINT"

    def exit_signal_after(self, reactor: StoppedReactor) -> object:
        """The signal twistd's runner would re-raise after running ``reactor``."""
        runner = app.ApplicationRunner({"profile": None, "profiler": "cprofile", "debug": False, "nodaemon": True})
        try:
            runner.startReactor(reactor, sys.stdout, sys.stderr)
        except AttributeError as problem:  # it reads another attribute of the reactor
            self.fail(changed(f"how twistd learns the stop signal ({problem})", self.used_by))
        return self.relies_on(runner, EXIT_SIGNAL_ATTRIBUTE, self.used_by)

    def test_the_reactor_records_the_signal_where_we_look(self) -> None:
        for handler in ("sigTerm", "sigInt"):
            reactor = StoppedReactor(None, False)
            self.relies_on(ReactorBase, handler, self.used_by)(reactor, signal.SIGTERM)
            self.assertEqual(
                getattr(reactor, EXIT_SIGNAL_ATTRIBUTE, None),
                signal.SIGTERM,
                changed(f"where ReactorBase.{handler} records the signal (reactor.{EXIT_SIGNAL_ATTRIBUTE})", self.used_by),
            )

    def test_twistd_reraises_the_recorded_signal(self) -> None:
        # The control: without forget_exit_signal, twistd would re-raise
        # SIGTERM (exit status -15).  If this fails, clearing the
        # attribute no longer changes anything.
        self.assertEqual(
            self.exit_signal_after(StoppedReactor(signal.SIGTERM, forget=False)),
            signal.SIGTERM,
            changed(f"how twistd learns the stop signal (reactor.{EXIT_SIGNAL_ATTRIBUTE})", self.used_by),
        )

    def test_a_forgotten_signal_is_not_reraised(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            self.assertIsNone(self.exit_signal_after(StoppedReactor(number, forget=True)))

    def test_other_signals_are_kept(self) -> None:
        reactor = MemoryReactor()
        setattr(reactor, EXIT_SIGNAL_ATTRIBUTE, signal.SIGHUP)
        self.assertFalse(forget_exit_signal(reactor, (signal.SIGTERM, signal.SIGINT)))
        self.assertEqual(getattr(reactor, EXIT_SIGNAL_ATTRIBUTE), signal.SIGHUP)

    def test_a_reactor_without_it_is_left_alone(self) -> None:
        reactor = MemoryReactor()
        self.assertFalse(forget_exit_signal(reactor, (signal.SIGTERM,)))
        self.assertFalse(hasattr(reactor, EXIT_SIGNAL_ATTRIBUTE))


# -- the WebSocket upgrade on Twisted's HTTP channel ----------------------


class Probe:
    """A WebSocket protocol that takes the connection over as chatd's does."""

    def __init__(self, request: Request, deliver: bool = True) -> None:
        self.request = request
        self.deliver = deliver
        self.seen: list[bytes] = []
        self.messages: list[str] = []
        self.wire: WebSocketTransport | None = None
        self.connection: Any = None

    def guard(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        self.seen.append(data)
        if self.deliver:
            deliver(data)

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.wire = transport
        self.connection = websocket_connection(transport)
        end_http_timeout(self.request)
        intercept_upgraded_input(self.request, self.guard)

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.messages.append(message)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


class ProbeFactory:
    def __init__(self, deliver: bool = True) -> None:
        self.deliver = deliver
        self.probes: list[Probe] = []

    def buildProtocol(self, request: Request) -> Probe:
        probe = Probe(request, self.deliver)
        self.probes.append(probe)
        return probe


def read(transport: StringTransport, data: bytes) -> None:
    """Bytes arriving on ``transport``, handed on as a TCP connection does."""
    transport.protocol.dataReceived(data)  # type: ignore[attr-defined]  # set by the test, as tcp.Connection has it


class PlainSite(Site):
    protocol = HTTPChannel  # as chatd's site: no HTTP/2 wrapper


class UpgradeTests(CompatTestCase):
    """A WebSocket upgrade through Twisted's own HTTPChannel, in memory."""

    def upgrade(self, deliver: bool = True) -> tuple[HTTPChannel, StringTransport, Probe, WSConnection]:
        root = Resource()
        factory = ProbeFactory(deliver)
        root.putChild(b"ws", WebSocketResource(factory))
        self.clock = Clock()
        site = PlainSite(root, reactor=self.clock)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(channel, HTTPChannel)
        transport = StringTransport()
        transport.protocol = channel  # as a TCP connection: each read goes to transport.protocol
        channel.makeConnection(transport)
        browser = WSConnection(ConnectionType.CLIENT)
        read(transport, browser.send(WSRequest(host="localhost", target="/ws")))
        browser.receive_data(transport.value())
        self.assertIsInstance(next(browser.events()), AcceptConnection)
        self.assertEqual(len(factory.probes), 1)
        return channel, transport, factory.probes[0], browser

    def test_reads_pass_through_the_guard(self) -> None:
        used_by = "intercept_upgraded_input: the WebSocket size guard"
        channel, transport, probe, browser = self.upgrade()
        frame = browser.send(TextMessage("hello"))
        read(transport, frame)
        self.assertEqual(
            probe.seen,
            [frame],
            changed("how the upgrade routes reads (HTTPChannel.dataReceived, set by _protocolUpgradeForWebsockets)", used_by),
        )
        self.assertEqual(probe.messages, ["hello"])

    def test_the_guard_can_hold_a_read_back(self) -> None:
        channel, transport, probe, browser = self.upgrade(deliver=False)
        read(transport, browser.send(TextMessage("hello")))
        self.assertEqual(len(probe.seen), 1)  # seen, and held back
        self.assertEqual(probe.messages, [])

    def test_the_connection_under_the_websocket(self) -> None:
        channel, transport, probe, browser = self.upgrade()
        self.assertIs(
            probe.connection,
            transport,
            changed("the WebSocket wire protocol's transport attribute", "websocket_connection: pause, abort, buffer size"),
        )

    def test_no_http_timeout_after_the_upgrade(self) -> None:
        channel, transport, probe, browser = self.upgrade()
        self.clock.advance(10 * (channel.timeOut or 1))
        self.assertFalse(
            transport.disconnecting,
            changed("HTTPChannel's idle timeout (setTimeout)", "end_http_timeout: an idle WebSocket stays open"),
        )

    def test_the_http_channel_gives_up_the_producer_slot(self) -> None:
        channel, transport, probe, browser = self.upgrade()
        release_http_producer(transport)
        producer = object()
        try:
            transport.registerProducer(producer, True)
        except RuntimeError:
            self.fail(changed("the HTTP channel's producer registration", "release_http_producer: the send-queue limit"))
        self.assertIs(transport.producer, producer)

    def test_release_without_a_producer(self) -> None:
        transport = StringTransport()
        release_http_producer(transport)
        self.assertIsNone(transport.producer)


# -- HTTPChannel's hooks and state (chatd.frontends.site.WebChannel) -------


def recording_channel(calls: list[str], lengths: list[int | None]) -> type[HTTPChannel]:
    """An HTTPChannel subclass that records each call of :data:`HTTP_CHANNEL_HOOKS`."""

    def hook(name: str) -> Callable[..., object]:
        def recorded(self: HTTPChannel, *args: object) -> object:
            calls.append(name)
            if name == "allHeadersReceived":
                lengths.append(declared_body_length(self))
            return getattr(HTTPChannel, name)(self, *args)

        return recorded

    return type("RecordingChannel", (HTTPChannel,), {name: hook(name) for name in HTTP_CHANNEL_HOOKS if hasattr(HTTPChannel, name)})


class Ok(Resource):
    """Every path: 200, a short body."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"ok"


class ChannelHookTests(CompatTestCase):
    used_by = "chatd.frontends.site.WebChannel: request deadline, body cap, line limits"

    def channel(self) -> tuple[HTTPChannel, StringTransport, list[str], list[int | None]]:
        calls: list[str] = []
        lengths: list[int | None] = []
        site = PlainSite(Ok(), reactor=Clock())
        site.protocol = recording_channel(calls, lengths)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(channel, HTTPChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport, calls, lengths

    def test_the_hooks_exist(self) -> None:
        for name in HTTP_CHANNEL_HOOKS:
            self.assertTrue(callable(self.relies_on(HTTPChannel, name, self.used_by)))

    def test_twisted_calls_each_hook(self) -> None:
        channel, transport, calls, lengths = self.channel()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        channel.dataReceived(b"GET /" + b"x" * (channel.MAX_LENGTH + 10))
        channel.timeoutConnection()
        channel.connectionLost(Failure(ConnectionError()))
        missing = [name for name in HTTP_CHANNEL_HOOKS if name not in calls]
        self.assertEqual(missing, [], changed(f"HTTPChannel's hooks (never called: {', '.join(missing)})", self.used_by))
        self.assertEqual(
            lengths,
            [5, None],
            changed("HTTPChannel.length (the declared body length at allHeadersReceived)", self.used_by),
        )

    def test_request_line_read(self) -> None:
        channel, transport, calls, lengths = self.channel()
        self.assertFalse(request_line_read(channel))
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(
            request_line_read(channel),
            changed("HTTPChannel.requests (a request is listed once its line is read)", self.used_by),
        )


class ModuleTests(SynchronousTestCase):
    def test_writethrough_moved_here(self) -> None:
        # One module holds every use of Twisted's internals.
        with self.assertRaises(ImportError):
            __import__("chatd.writethrough")
        self.assertIs(twisted_compat.writer_for, writer_for)

"""The terminal client against the real server protocol, over iosim."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from chatd.client import client as chatd_client
from chatd import messages
from chatd.client.client import DRAIN_MAX, RESUME_REF, ChatClientProtocol, ChatSession, Printer, UserInput
from chatd.frontends.json.protocol import ChatProtocol
from chatd.server import ChatFactory

from tests.support import FakeClient, make_factory, names_of, stored


class Harness:
    """A ChatSession whose connections go to ``factory`` through iosim."""

    def __init__(self, factory: ChatFactory, name: str | None = None, max_retries: int = 8, delay_connect: bool = False) -> None:
        self.factory = factory
        self.delay_connect = delay_connect
        self.waiting: list[defer.Deferred[Any]] = []
        self.clock = factory.clock
        self.out = io.StringIO()
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[Any] = []
        self.refuse = False
        self.session = ChatSession(self.clock, self.connect, Printer(self.out, colour=False), name=name, max_retries=max_retries)
        self.status: list[int] = []
        self.session.start().addCallback(self.status.append)

    def connect(self, session: ChatSession) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(error.ConnectionRefusedError())
        if self.delay_connect:
            self.waiting.append(defer.Deferred())
            return self.waiting[-1]
        return defer.succeed(self._connection(session))

    def complete_connect(self) -> None:
        """Let the connection attempt made earlier succeed now."""
        self.delay_connect = False
        self.waiting.pop().callback(self._connection(self.session))

    def _connection(self, session: ChatSession) -> ChatClientProtocol:
        client, server, pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), lambda: ChatClientProtocol(session), greet=False, clock=self.clock
        )
        self.pumps.append(pump)
        self.servers.append(server)
        pump.flush(advanceClock=False)
        return client

    def pump(self) -> None:
        for _ in range(5):
            for pump in self.pumps:
                pump.flush(advanceClock=False)
            self.clock.advance(0)  # the hub's flush of accepted messages

    def type(self, *lines: str) -> None:
        for line in lines:
            self.session.user_line(line)
        self.pump()

    def lines(self) -> list[str]:
        text = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        return text.splitlines()

    def drop(self) -> None:
        """The network drops the current connection."""
        server = self.servers[-1]
        server.transport.abortConnection()
        self.pump()


class ClientConversationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = make_factory()
        self.clock = self.factory.clock

    def test_login_message_names(self) -> None:
        alice = Harness(self.factory)
        alice.type("/login alice", "hello world", "/names")
        lines = alice.lines()
        self.assertEqual(lines[0], "* Login successful. You are now logged in as alice")
        self.assertRegex(lines[1], r"^\[\d\d:\d\d:\d\d\] alice: hello world$")
        self.assertEqual(lines[2], "* alice")
        self.assertEqual(alice.session.name, "alice")

    def test_name_option_logs_in_on_connect(self) -> None:
        bob = Harness(self.factory, name="bob")
        bob.pump()
        self.assertEqual(bob.lines(), ["* Login successful. You are now logged in as bob"])

    def test_two_users_chat_and_third_gets_history(self) -> None:
        alice, bob = Harness(self.factory, name="alice"), Harness(self.factory, name="bob")
        alice.type("hi bob")
        bob.type("hi alice")
        alice.pump()
        chat = [line.split("] ", 1)[1] for line in alice.lines() if line.startswith("[")]
        self.assertEqual(chat, ["alice: hi bob", "bob: hi alice"])
        carol = Harness(self.factory, name="carol")
        carol.pump()
        self.assertEqual([line.split("] ", 1)[1] for line in carol.lines()[1:]], ["alice: hi bob", "bob: hi alice"])
        alice.pump()
        self.assertIn("- carol is online", alice.lines())

    def test_errors_are_printed(self) -> None:
        client = Harness(self.factory)
        client.type("hello")
        self.assertEqual(client.lines(), ["! You are not logged in. Log in first."])
        client.type("/login bad name!")
        self.assertTrue(client.lines()[0].startswith("! Invalid username"))
        self.assertIsNone(client.session.name)

    def test_unknown_command_is_local(self) -> None:
        client = Harness(self.factory, name="bob")
        client.pump()
        client.lines()
        client.type("/dance")
        [line] = client.lines()
        self.assertTrue(line.startswith("! Unknown command /dance"))
        self.assertIn("/quit", line)

    def test_quit_logs_out_and_exits_zero(self) -> None:
        client = Harness(self.factory, name="bob")
        client.pump()
        client.type("/quit")
        self.clock.advance(0)
        client.pump()
        self.assertEqual(client.status, [0])
        self.assertEqual(names_of(self.factory.hub), [])

    def test_other_users_escape_sequences_are_neutralised(self) -> None:
        viewer = Harness(self.factory, name="viewer")
        attacker = FakeClient(self.factory)
        attacker.login("mallory")
        attacker.send_raw(json.dumps({"request": "msg", "content": "\x1b[2J\x1b]0;pwned\x07"}).encode() + b"\n")
        viewer.pump()
        printed = viewer.out.getvalue()
        self.assertNotIn("\x1b", printed)
        self.assertNotIn("\x07", printed)

    def test_control_sequences_from_a_server_never_printed(self) -> None:
        client = Harness(self.factory)
        client.pump()
        client.session.line_received(json.dumps({"response": "info", "content": "\x1b[2J\x1bc"}).encode())
        client.session.line_received(b"\x1b[2J not json")
        printed = client.out.getvalue()
        self.assertNotIn("\x1b", printed)
        self.assertIn("invalid JSON from server", printed)

    def test_colour_only_when_asked(self) -> None:
        out = io.StringIO()
        printer = Printer(out, colour=True)
        from chatd.client.parser import Line

        printer.show(Line("error", "x"))
        self.assertEqual(out.getvalue(), "\x1b[31m! x\x1b[0m\n")

    def test_quit_before_connecting_sends_earlier_lines_first(self) -> None:
        client = Harness(self.factory, delay_connect=True)
        # Lines piped in before the connection is made are queued.
        client.session.user_line("/login bob")
        client.session.user_line("hi")
        client.session.user_line("/quit")
        self.assertEqual(client.status, [])
        client.complete_connect()
        self.clock.advance(0)
        client.pump()
        self.assertEqual(client.status, [0])
        lines = client.lines()
        self.assertEqual(lines[0], "* Login successful. You are now logged in as bob")
        self.assertTrue(lines[1].endswith("bob: hi"))
        self.assertEqual(lines[2], "* Logout successful")

    def test_input_end_waits_for_replies_then_exits_zero(self) -> None:
        client = Harness(self.factory)
        client.session.user_line("/login bob")
        client.session.user_line("hello")
        client.session.input_ended()
        self.assertEqual(client.status, [])
        client.pump()
        # v2: a ping after the last line; its pong says every reply is in.
        self.assertEqual(client.status, [0])
        lines = client.lines()
        self.assertEqual(lines[0], "* Login successful. You are now logged in as bob")
        self.assertTrue(lines[1].endswith("bob: hello"))

    def test_input_end_has_a_deadline(self) -> None:
        client = Harness(self.factory, name="bob")
        client.pump()
        client.session.input_ended()
        for _ in range(int(DRAIN_MAX * 2)):
            client.session.line_received(b'{"response": "info", "content": "chatter"}')
            self.clock.advance(0.5)
        client.pump()
        self.assertEqual(client.status, [0])

    def test_user_input_protocol(self) -> None:
        client = Harness(self.factory)
        stdin = UserInput(client.session)
        stdin.makeConnection(iosim.FakeTransport(stdin, isServer=False))
        stdin.dataReceived(b"/login bob\nhello\n/na")
        stdin.dataReceived(b"mes")
        stdin.connectionLost()
        client.pump()
        self.clock.advance(1.0)
        client.pump()
        lines = client.lines()
        self.assertEqual(lines[-1], "* bob")
        self.assertEqual(client.status, [0])


class V1Protocol(ChatProtocol):
    """A server that knows nothing of protocol 2."""

    request_hello = None
    request_ping = None
    request_history = None


def v1_factory() -> ChatFactory:
    factory = make_factory()
    factory.protocol = V1Protocol
    return factory


class V1ServerTests(SynchronousTestCase):
    """Against a v1-only server the client falls back to v1."""

    def setUp(self) -> None:
        self.factory = v1_factory()
        self.clock = self.factory.clock

    def test_falls_back_and_chats(self) -> None:
        client = Harness(self.factory, name="bob")
        client.type("hi")
        lines = client.lines()
        self.assertEqual(lines[0], "* Login successful. You are now logged in as bob")
        self.assertTrue(lines[1].endswith("bob: hi"))
        self.assertFalse(client.session.v2)

    def test_input_end_uses_the_quiet_period(self) -> None:
        client = Harness(self.factory)
        client.session.user_line("/login bob")
        client.session.user_line("hello")
        client.session.input_ended()
        client.pump()
        self.assertEqual(client.status, [])
        self.clock.advance(1.0)
        client.pump()
        self.assertEqual(client.status, [0])
        self.assertTrue(client.lines()[1].endswith("bob: hello"))

    def test_reconnect_without_repeats(self) -> None:
        alice = Harness(self.factory, name="alice")
        bob = FakeClient(self.factory)
        bob.login("bob")
        bob.send("msg", "one")
        alice.pump()
        alice.drop()
        bob.send("msg", "two")
        self.clock.advance(1.0)
        alice.pump()
        messages = [line.split("] ", 1)[1] for line in alice.lines() if line.startswith("[")]
        self.assertEqual(messages, ["bob: one", "bob: two"])


class ResumeTests(SynchronousTestCase):
    """v2 resume: after a reconnect, exactly the missed messages, in order."""

    def test_no_gaps_past_the_login_history(self) -> None:
        factory = make_factory(history_on_login=5)
        clock = factory.clock
        alice = Harness(factory, name="alice")
        bob = FakeClient(factory)
        bob.login("bob")
        bob.send("msg", "m1")
        alice.pump()
        alice.drop()
        for i in range(2, 702):  # more than one page of 500
            bob.send("msg", f"m{i}")
        clock.advance(1.0)  # reconnect; the resume requests go out
        # A live message arrives while alice is still paging.
        alice.pumps[-1].flush(advanceClock=False)
        bob.send("msg", "live")
        alice.pump()
        bob.send("msg", "after")
        alice.pump()
        messages = [line.split("] ", 1)[1] for line in alice.lines() if line.startswith("[")]
        expected = [f"bob: m{i}" for i in range(1, 702)] + ["bob: live", "bob: after"]
        self.assertEqual(messages, expected)
        self.assertFalse(alice.session._resuming)

    def test_resume_fails_gracefully_when_login_fails(self) -> None:
        factory = make_factory()
        clock = factory.clock
        alice = Harness(factory, name="alice")
        bob = FakeClient(factory)
        bob.login("bob")
        bob.send("msg", "m1")
        alice.pump()
        alice.drop()
        thief = FakeClient(factory)
        thief.login("alice")
        bob.send("msg", "m2")
        clock.advance(1.0)
        alice.pump()
        lines = alice.lines()
        self.assertIn("! Username 'alice' is taken.", lines)
        self.assertIsNone(alice.session.name)
        self.assertFalse(alice.session._resuming)
        self.assertFalse([line for line in lines if "m2" in line])


class ClientConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = make_factory()
        self.clock = self.factory.clock

    def test_refused_first_connection_exits_one(self) -> None:
        factory = make_factory()
        out = io.StringIO()
        session = ChatSession(factory.clock, lambda s: defer.fail(error.ConnectionRefusedError()), Printer(out, False), describe="127.0.0.1:1")
        status: list[int] = []
        session.start().addCallback(status.append)
        self.assertEqual(status, [1])
        self.assertEqual(out.getvalue(), "! cannot connect to 127.0.0.1:1: connection refused\n")

    def test_lost_without_name_exits_one(self) -> None:
        client = Harness(self.factory)
        client.drop()
        self.assertEqual(client.status, [1])
        self.assertIn("! connection to the server lost", client.lines())

    def test_reconnect_logs_in_again_without_repeats(self) -> None:
        alice = Harness(self.factory, name="alice")
        bob = FakeClient(self.factory)
        bob.login("bob")
        bob.send("msg", "one")
        alice.pump()
        alice.drop()
        self.assertEqual(alice.status, [])
        self.assertEqual(names_of(self.factory.hub), ["bob"])
        bob.send("msg", "two while away")
        self.clock.advance(1.0)
        alice.pump()
        self.assertEqual(names_of(self.factory.hub), ["bob", "alice"])
        bob.send("msg", "three")
        alice.pump()
        messages = [line.split("] ", 1)[1] for line in alice.lines() if line.startswith("[")]
        self.assertEqual(messages, ["bob: one", "bob: two while away", "bob: three"])

    def test_backoff_grows_and_gives_up(self) -> None:
        alice = Harness(self.factory, name="alice", max_retries=3)
        alice.pump()
        alice.refuse = True
        alice.drop()
        delays = []
        for _ in range(3):
            [call] = [c for c in self.clock.getDelayedCalls() if c.func == alice.session._attempt]
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0])
        self.assertEqual(alice.status, [1])
        self.assertIn("giving up", alice.lines()[-1])

    def test_reconnect_succeeds_after_failures(self) -> None:
        alice = Harness(self.factory, name="alice")
        alice.pump()
        alice.refuse = True
        alice.drop()
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        alice.refuse = False
        self.clock.advance(4.0)
        alice.pump()
        self.assertEqual(names_of(self.factory.hub), ["alice"])
        self.assertIn("- reconnected to the server", alice.lines())

    def test_server_close_after_input_end_exits_zero(self) -> None:
        client = Harness(self.factory, name="bob")
        client.pump()
        client.session.input_ended()
        client.drop()
        self.assertEqual(client.status, [0])


# -- a hostile server ------------------------------------------------------


def chat(message_id: int, content: str = "x", timestamp: Any = "2026-11-25T19:34:22.123Z") -> dict[str, Any]:
    """A ``message`` response as a server sends it."""
    return {"timestamp": timestamp, "sender": "bob", "response": "message", "content": content, "id": message_id}


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


class HostileServer:
    """The test plays the server: the client's connections are
    StringTransports, and whatever the test sends reaches the client
    byte for byte through ``dataReceived``.  An exception there would
    reach the test (a real reactor would drop the connection)."""

    def __init__(self, name: str | None = "alice", stream: Any = None) -> None:
        self.clock = task.Clock()
        self.out = stream if stream is not None else io.StringIO()
        self.protocols: list[ChatClientProtocol] = []
        self.session = ChatSession(self.clock, self.connect, Printer(self.out, colour=False), name=name)
        self.status: list[int] = []
        self.session.start().addCallback(self.status.append)

    def connect(self, session: ChatSession) -> defer.Deferred[Any]:
        protocol = ChatClientProtocol(session)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return defer.succeed(protocol)

    @property
    def protocol(self) -> ChatClientProtocol:
        return self.protocols[-1]

    @property
    def transport(self) -> StringTransport:
        transport = self.protocol.transport
        assert isinstance(transport, StringTransport)
        return transport

    def send(self, *responses: dict[str, Any] | bytes) -> None:
        for response in responses:
            data = response if isinstance(response, bytes) else json.dumps(response).encode()
            self.protocol.dataReceived(data + b"\n")

    def hello(self) -> None:
        self.send({"response": "hello", "content": {"protocol": 2, "server": "evil/1"}})

    def requests(self) -> list[dict[str, Any]]:
        """The requests the client sent since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines()]

    def resume_requests(self) -> list[dict[str, Any]]:
        return [request for request in self.requests() if request.get("ref") == RESUME_REF]

    def lines(self) -> list[str]:
        text = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        return text.splitlines()

    def chat_lines(self) -> list[str]:
        return [line.split("] ", 1)[1] for line in self.lines() if line.startswith("[")]

    def reconnect(self) -> None:
        """The connection is lost; the client comes back 1 s later, says
        hello and asks for what it missed."""
        self.protocol.connectionLost(Failure(error.ConnectionLost()))
        self.clock.advance(1.0)
        self.hello()

    def connected(self) -> bool:
        return not self.transport.disconnecting and self.session.protocol is self.protocol


class MalformedResponseTests(SynchronousTestCase):
    """Nothing a server sends raises: an error line, and the connection stays."""

    def setUp(self) -> None:
        self.server = HostileServer()
        self.server.hello()
        self.server.lines()

    def assert_still_works(self) -> None:
        self.server.send(chat(10**6, "still here"))
        self.assertEqual(self.server.chat_lines(), ["bob: still here"])
        self.assertTrue(self.server.connected())

    def test_history_string_entry_nested_deep(self) -> None:
        entry = nested(100_000).decode()
        self.server.send({"response": "history", "content": [entry, json.dumps(chat(1, "fine"))]})
        lines = self.server.lines()
        self.assertTrue(lines[0].startswith("! invalid JSON from server: [[[["), lines[0][:80])
        self.assertTrue(lines[1].endswith("bob: fine"))
        self.assert_still_works()

    def test_objects_nested_at_every_depth(self) -> None:
        # Decoding and encoding JSON recurse, so a depth just under the
        # limit decodes and then fails to encode deeper in the stack: try
        # every depth up to past the limit, wherever the stack is.
        for depth in range(sys.getrecursionlimit() // 2, sys.getrecursionlimit() + 20):
            inner = nested(depth)
            for raw in (
                b'{"response": "message", "content": ' + inner + b"}",
                b'{"response": ' + inner + b"}",
                b'{"response": "history", "content": [{"response": "message", "sender": ' + inner + b"}]}",
                inner,
            ):
                self.server.send(raw)
                lines = self.server.lines()
                self.assertEqual(len(lines), 1, (depth, raw[:40], lines))
        self.assert_still_works()

    def test_timestamps_out_of_range(self) -> None:
        for message_id, timestamp in enumerate((
            "9999-12-31T23:59:59-14:00",  # past year 9999 in UTC
            "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
            "9999-99-99T99:99:99Z",
            "0000-01-01T00:00:00Z",
            "+275760-09-13T00:00:00Z",
            10**30,
            1e308,
            None,
            ["2026-11-25T19:34:22Z"],
        ), start=1):
            self.server.send(chat(message_id, "x", timestamp))
            self.assertEqual(self.server.lines(), ["[--:--:--] bob: x"], timestamp)
        self.assert_still_works()

    def test_lone_surrogate_on_a_strict_terminal(self) -> None:
        # A JSON "\ud800" decodes to a lone surrogate, which a UTF-8
        # stream refuses to encode (UnicodeEncodeError).
        stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        server = HostileServer(stream=stream)
        server.hello()
        server.send(b'{"response": "message", "sender": "bob", "content": "a\\ud800b", "id": 1}')
        stream.seek(0)
        self.assertIn("bob: a\\ud800b", stream.read())
        self.assertTrue(server.connected())

    def test_character_the_terminal_cannot_show(self) -> None:
        stream = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="strict")
        server = HostileServer(stream=stream)
        server.hello()
        server.send(chat(1, "caf\u00e9 \U0001f600"))
        stream.seek(0)
        self.assertIn("bob: caf\u00e9 \\U0001f600", stream.read())

    def test_blank_lines_ignored(self) -> None:
        self.server.send(b"", b"\r")
        self.assertEqual(self.server.lines(), [])


class ResumeBoundsTests(SynchronousTestCase):
    """Resuming is bounded, whatever the server answers."""

    def setUp(self) -> None:
        self.server = HostileServer()
        self.server.hello()
        self.server.send(chat(1, "m1"))
        self.server.reconnect()
        self.server.lines()

    def test_server_always_has_more(self) -> None:
        server = self.server
        server.send(chat(100_000, "live"))  # held until the resume ends
        pages = 0
        for next_id in range(2, 102):  # bounded, whatever the client does
            if not server.resume_requests():
                break
            pages += 1
            server.send({"response": "history", "content": [chat(next_id, f"m{next_id}")], "more": True, "ref": RESUME_REF})
        self.assertLess(pages, 100)
        self.assertEqual(pages, chatd_client.MAX_RESUME_PAGES)
        lines = server.lines()
        expected = [f"bob: m{i}" for i in range(2, pages + 2)]
        self.assertEqual([line.split("] ", 1)[1] for line in lines if line.startswith("[")], expected + ["bob: live"])
        self.assertIn(f"- history incomplete: stopped after {pages} pages", lines)
        self.assertLess(lines.index(f"- history incomplete: stopped after {pages} pages"), len(lines) - 1)
        self.assertFalse(server.session._resuming)
        server.send(chat(100_001, "next"))
        self.assertEqual(server.chat_lines(), ["bob: next"])

    def test_page_without_new_messages_ends_resume(self) -> None:
        server = self.server
        pages = 0
        for _ in range(100):
            if not server.resume_requests():
                break
            pages += 1
            server.send({"response": "history", "content": [chat(1, "m1 again")], "more": True, "ref": RESUME_REF})
        self.assertEqual(pages, 1)
        self.assertEqual(server.lines(), ["- history incomplete: the server sent no new messages"])

    def test_live_messages_held_are_bounded_in_number(self) -> None:
        server = self.server
        held = 1000  # chatd_client.MAX_RESUME_BUFFER
        for message_id in range(2, held + 2):
            server.send(chat(message_id, f"live{message_id}"))
        lines = server.lines()
        self.assertEqual(lines[0], f"- history incomplete: {held} new messages arrived while fetching it")
        self.assertEqual([line.split("] ", 1)[1] for line in lines[1:]], [f"bob: live{i}" for i in range(2, held + 2)])
        # The page asked for comes too late: its messages are older.
        server.send({"response": "history", "content": [chat(2, "old")], "more": True, "ref": RESUME_REF})
        self.assertEqual(server.lines(), [])
        self.assertEqual(chatd_client.MAX_RESUME_BUFFER, held)

    def test_live_messages_held_are_bounded_in_bytes(self) -> None:
        self.patch(chatd_client, "MAX_RESUME_BUFFER_BYTES", 160_000)  # 16 MiB really: as many bytes, faster
        server = self.server
        big = "y" * 10_000
        for message_id in range(2, 40):
            server.send(chat(message_id, big))
            if not server.session._resuming:
                break
        self.assertLessEqual(message_id, 17)
        self.assertEqual(server.lines()[0], f"- history incomplete: {message_id - 1} new messages arrived while fetching it")

    def test_malformed_page_ends_resume(self) -> None:
        server = self.server
        server.send(chat(50, "live"))
        deep = nested(100_000)
        server.send(b'{"response": "history", "ref": "' + RESUME_REF.encode() + b'", "content": [' + deep + b"]}")
        lines = server.lines()
        self.assertTrue(lines[0].startswith("! invalid JSON from server"))
        self.assertEqual(lines[1], "- history incomplete: the server sent a malformed response")
        self.assertTrue(lines[2].endswith("bob: live"))
        self.assertTrue(server.connected())

    def test_error_answer_to_resume_is_shown(self) -> None:
        server = self.server
        server.send({"response": "error", "content": "Slow down.", "code": "rate_limited", "ref": RESUME_REF})
        self.assertEqual(server.lines(), ["! Slow down.", "- history incomplete: the server did not send it"])


class LongLineTests(SynchronousTestCase):
    """Line handling is linear in the bytes received, and bounded."""

    CHUNK = b"x" * 65536  # what one read from a socket gives at most

    def test_limit_fits_the_largest_legitimate_response(self) -> None:
        # A history page at the server's default limits: 500 messages of
        # 2000 astral characters (12 bytes each, escaped as a surrogate pair).
        message = messages.response("message", "\U0001f600" * 2000, "2026-11-25T19:34:22.123Z", sender="a" * 32, id=2**63 - 1)
        page = messages.response("history", [message] * 500, "2026-11-25T19:34:22.123Z", more=True, ref=RESUME_REF)
        v1_page = messages.response("history", [messages.encode(message).decode()] * 500, "2026-11-25T19:34:22.123Z")
        largest = max(len(messages.encode(page)), len(messages.encode(v1_page)))
        self.assertLessEqual(ChatClientProtocol.MAX_LENGTH, 16 * 1024 * 1024)
        self.assertGreater(ChatClientProtocol.MAX_LENGTH, largest)

    def test_over_long_line_dropped_at_the_limit(self) -> None:
        server = HostileServer()
        server.hello()
        server.lines()
        chunks = 0
        for chunks in range(1, 16 * 16 + 3):  # at most 16 MiB and a bit
            server.protocol.dataReceived(self.CHUNK)
            if server.transport.disconnecting:
                break
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(chunks * len(self.CHUNK), ChatClientProtocol.MAX_LENGTH + len(self.CHUNK))
        self.assertEqual(server.protocol.lines.pending, 0)  # the memory is freed
        self.assertEqual(server.lines(), ["! the server sent a response too large to read (over 16 MiB); disconnecting"])
        server.protocol.dataReceived(b"more\n" + self.CHUNK)  # ignored
        server.protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(server.lines(), ["! connection to the server lost", "- reconnecting in 1 s (attempt 1 of 8)"])

    def test_long_line_costs_linear_work(self) -> None:
        server = HostileServer()
        server.hello()
        server.lines()
        size = 64 * len(self.CHUNK)  # 4 MiB
        for _ in range(64):
            server.protocol.dataReceived(self.CHUNK)
        server.protocol.dataReceived(b"\n")
        self.assertEqual(server.protocol.lines.scanned, len(b'{"response": "hello", "content": {"protocol": 2, "server": "evil/1"}}\n') + size + 1)
        [line] = server.lines()
        self.assertTrue(line.startswith("! invalid JSON from server: xxxx"))
        self.assertLess(len(line), 300)
        self.assertTrue(server.connected())

    def test_many_lines_in_one_chunk_cost_linear_work(self) -> None:
        splitter = chatd_client.LineSplitter(100)
        data = b'{"a": 1}\n' * 100_000 + b"partial"
        self.assertEqual(sum(1 for _ in splitter.split(data)), 100_000)
        self.assertEqual(splitter.scanned, len(data))
        self.assertEqual(splitter.pending, len(b"partial"))

    def test_splitter_limit(self) -> None:
        splitter = chatd_client.LineSplitter(10)
        self.assertEqual(list(splitter.split(b"0123456789\n01234")), [b"0123456789"])
        self.assertEqual(list(splitter.split(b"56789\n")), [b"0123456789"])
        with self.assertRaises(chatd_client.LineTooLong):
            list(splitter.split(b"01234567890\n"))  # ended in one chunk
        self.assertEqual(splitter.pending, 0)
        self.assertEqual(list(splitter.split(b"012345")), [])
        with self.assertRaises(chatd_client.LineTooLong):
            list(splitter.split(b"67890"))  # not ended yet
        self.assertEqual(splitter.pending, 0)

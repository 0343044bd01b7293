"""The terminal client against the real server protocol, over iosim."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import defer, error
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from chatd.client import DRAIN_MAX, ChatClientProtocol, ChatSession, Printer, UserInput
from chatd.protocol import ChatProtocol
from chatd.server import ChatFactory

from tests.support import FakeClient, make_factory


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
        self.assertEqual(self.factory.hub.names(), [])

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
        from chatd.parser import Line

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
        self.assertEqual(self.factory.hub.names(), ["bob"])
        bob.send("msg", "two while away")
        self.clock.advance(1.0)
        alice.pump()
        self.assertEqual(self.factory.hub.names(), ["bob", "alice"])
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
        self.assertEqual(self.factory.hub.names(), ["alice"])
        self.assertIn("- reconnected to the server", alice.lines())

    def test_server_close_after_input_end_exits_zero(self) -> None:
        client = Harness(self.factory, name="bob")
        client.pump()
        client.session.input_ended()
        client.drop()
        self.assertEqual(client.status, [0])

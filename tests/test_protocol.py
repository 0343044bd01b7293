"""Connections in memory: every request and response of PROTOCOL.md sections 2-4."""

from __future__ import annotations

import json
import re

from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.json.encoding import encode_message
from chatd.frontends.json.protocol import CLASSIC_READ_SIZE

from tests.support import FakeClient, decode_stream, make_factory, names_of, stored

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class ProtocolTestCase(SynchronousTestCase):
    """A fresh factory (hub, memory history, clock) per test."""

    config: dict[str, object] = {}

    def setUp(self) -> None:
        self.factory = make_factory(**self.config)
        self.clock = self.factory.clock

    def client(self, name: str | None = None, newline: bool = True) -> FakeClient:
        client = FakeClient(self.factory, newline=newline)
        if name is not None:
            client.login(name)
        return client

    def assertError(self, response: dict[str, object], code: str) -> None:
        self.assertEqual(response["response"], "error", response)
        self.assertEqual(response["code"], code, response)
        self.assertEqual(response["sender"], "server")
        self.assertIsInstance(response["content"], str)
        self.assertTrue(response["content"])


class LoginTests(ProtocolTestCase):
    def test_success_then_empty_history(self) -> None:
        info, history = self.client().login("bob")
        self.assertEqual(info["response"], "info")
        self.assertEqual(info["sender"], "server")
        self.assertEqual(info["content"], "Login successful. You are now logged in as bob")
        self.assertEqual(history["response"], "history")
        self.assertEqual(history["sender"], "server")
        self.assertEqual(history["content"], [])

    def test_response_envelope(self) -> None:
        info, _ = self.client().login("bob")
        self.assertEqual(list(info), ["timestamp", "sender", "response", "content"])
        self.assertRegex(info["timestamp"], TIMESTAMP)

    def test_timestamp_is_the_reactor_time(self) -> None:
        self.clock.advance(0.5)
        info, _ = self.client().login("bob")
        self.assertEqual(info["timestamp"], "2025-11-24T16:00:00.500Z")

    def test_invalid_usernames(self) -> None:
        client = self.client()
        for name in ["", "a" * 33, "bob\n", "bob ", " bob", "b\u00f8b", "bob!", "bo-b", "bob_", "\uff42ob", "\u0661", 42, None, ["bob"], {"n": "bob"}, True]:
            client.send("login", name)
            self.assertError(client.one(), "invalid_username")
        client.send_obj({"request": "login"})
        self.assertError(client.one(), "invalid_username")

    def test_longest_and_shortest_names(self) -> None:
        for name in ["a" * 32, "Z", "007"]:
            info, _ = self.client().login(name)
            self.assertEqual(info["content"], f"Login successful. You are now logged in as {name}")

    def test_name_taken_case_insensitively(self) -> None:
        self.client("Bob")
        other = self.client()
        for name in ["Bob", "bob", "BOB", "bOb"]:
            other.send("login", name)
            response = other.one()
            self.assertError(response, "name_taken")
            self.assertEqual(response["content"], f"Username '{name}' is taken.")

    def test_case_is_preserved(self) -> None:
        self.client("BoB")
        watcher = self.client("alice")
        watcher.send("names")
        self.assertEqual(watcher.one()["content"], "BoB, alice")

    def test_already_logged_in(self) -> None:
        client = self.client("bob")
        for name in ["bob", "alice", "!!"]:
            client.send("login", name)
            self.assertError(client.one(), "already_logged_in")

    def test_reserved_server_name(self) -> None:
        client = self.client()
        for name in ["server", "Server", "SERVER"]:
            client.send("login", name)
            self.assertError(client.one(), "name_taken")

    def test_history_on_login_is_strings_of_full_messages(self) -> None:
        alice = self.client("alice")
        alice.send("msg", "one")
        self.clock.advance(1)
        alice.send("msg", "two")
        echoes = alice.received()
        _, history = self.client().login("bob")
        self.assertEqual(history["content"], [json.dumps(echo) for echo in echoes])
        self.assertEqual([json.loads(item) for item in history["content"]], echoes)
        self.assertEqual([json.loads(item)["content"] for item in history["content"]], ["one", "two"])


class HistoryLimitTests(ProtocolTestCase):
    config = {"history_on_login": 3}

    def test_newest_messages_oldest_first(self) -> None:
        alice = self.client("alice")
        for i in range(5):
            alice.send("msg", f"m{i}")
        _, history = self.client().login("bob")
        self.assertEqual([json.loads(item)["content"] for item in history["content"]], ["m2", "m3", "m4"])


class HistoryAllTests(ProtocolTestCase):
    config = {"history_on_login": None}

    def test_all(self) -> None:
        alice = self.client("alice")
        for i in range(150):
            alice.send("msg", f"m{i}")
        _, history = self.client().login("bob")
        self.assertEqual(len(history["content"]), 150)


class HistoryNoneTests(ProtocolTestCase):
    config = {"history_on_login": 0}

    def test_zero_still_sends_an_empty_history(self) -> None:
        self.client("alice").send("msg", "hi")
        info, history = self.client().login("bob")
        self.assertEqual(history["content"], [])


class HistoryDefaultTests(ProtocolTestCase):
    def test_default_is_100(self) -> None:
        alice = self.client("alice")
        for i in range(120):
            alice.send("msg", f"m{i}")
        _, history = self.client().login("bob")
        self.assertEqual(len(history["content"]), 100)
        self.assertEqual(json.loads(history["content"][0])["content"], "m20")

    def test_classic_history_fits_one_read(self) -> None:
        alice = self.client("alice")
        for i in range(120):
            alice.send("msg", f"message number {i} " + "x" * 30)
        classic = self.client(newline=False)
        classic.send("login", "bob")
        classic.drain()
        writes = classic.transport.writes
        self.assertEqual(len(writes), 2)
        self.assertLessEqual(len(writes[1]), CLASSIC_READ_SIZE)
        history = json.loads(writes[1])
        contents = [json.loads(item)["content"] for item in history["content"]]
        self.assertGreater(len(contents), 10)
        self.assertEqual(contents[-1], "message number 119 " + "x" * 30)
        self.assertEqual(contents, [f"message number {i} " + "x" * 30 for i in range(120 - len(contents), 120)])
        # The newest that fit: the next older one would not have.
        messages = stored(self.factory.hub)
        older = encode_message(messages[-len(contents) - 1]).decode()
        one_more = dict(history, content=[older] + history["content"])
        self.assertGreater(len(json.dumps(one_more)), CLASSIC_READ_SIZE)

    def test_lines_history_is_not_trimmed(self) -> None:
        alice = self.client("alice")
        for i in range(100):
            alice.send("msg", "x" * 100)
        _, history = self.client().login("bob")
        self.assertEqual(len(history["content"]), 100)


class MessageTests(ProtocolTestCase):
    def test_echo_and_delivery_to_everyone(self) -> None:
        alice, bob, carol = self.client("alice"), self.client("bob"), self.client("carol")
        outsider = self.client()
        outsider.received()
        bob.send("msg", "hello")
        for client in (alice, bob, carol):
            message = client.one()
            self.assertEqual(message["response"], "message")
            self.assertEqual(message["sender"], "bob")
            self.assertEqual(message["content"], "hello")
            self.assertEqual(message["id"], 1)
            self.assertRegex(message["timestamp"], TIMESTAMP)
        self.assertEqual(outsider.received(), [])

    def test_same_bytes_to_every_member(self) -> None:
        alice, bob = self.client("alice"), self.client("bob")
        alice.transport.writes.clear()
        bob.transport.writes.clear()
        alice.send("msg", "hi")
        self.assertEqual(alice.transport.writes, bob.transport.writes)

    def test_ids_strictly_increase(self) -> None:
        alice, bob = self.client("alice"), self.client("bob")
        for i in range(5):
            (alice if i % 2 else bob).send("msg", str(i))
        ids = [message["id"] for message in alice.received()]
        self.assertEqual(ids, [1, 2, 3, 4, 5])

    def test_timestamp_is_acceptance_time_and_history_replays_it(self) -> None:
        alice = self.client("alice")
        self.clock.advance(2.25)
        alice.send("msg", "hi")
        echo = alice.one()
        self.assertEqual(echo["timestamp"], "2025-11-24T16:00:02.250Z")
        self.clock.advance(100)
        _, history = self.client().login("bob")
        self.assertEqual(json.loads(history["content"][0])["timestamp"], "2025-11-24T16:00:02.250Z")

    def test_control_characters_removed(self) -> None:
        alice = self.client("alice")
        alice.send("msg", "a\x1b[2Jb\x07c\rd\ne\tf\x00g\x7fh\x85i")
        self.assertEqual(alice.one()["content"], "a[2Jbcd\ne\tfghi")

    def test_empty_messages(self) -> None:
        alice = self.client("alice")
        for text in ["", " ", "\n\t ", "\x1b\x07", "\u3000\u2003", " \r\n"]:
            alice.send("msg", text)
            self.assertError(alice.one(), "empty_message")
        self.assertEqual(stored(self.factory.hub), [])

    def test_message_length_in_code_points(self) -> None:
        alice = self.client("alice")
        body = {"request": "msg", "content": "\U0001f600" * 2000}
        alice.send_raw(json.dumps(body, ensure_ascii=False).encode() + b"\n")
        self.assertEqual(alice.one()["content"], "\U0001f600" * 2000)
        alice.send("msg", "x" * 2001)
        self.assertError(alice.one(), "message_too_long")
        # Control characters are removed before the length is checked.
        alice.send("msg", "x" * 2000 + "\x07" * 10)
        self.assertEqual(alice.one()["content"], "x" * 2000)

    def test_content_must_be_a_string(self) -> None:
        alice = self.client("alice")
        for content in [5, None, ["hi"], {"text": "hi"}, True]:
            alice.send("msg", content)
            self.assertError(alice.one(), "bad_request")
        alice.send_obj({"request": "msg"})
        self.assertError(alice.one(), "bad_request")
        self.assertEqual(stored(self.factory.hub), [])

    def test_output_is_ascii_with_escapes(self) -> None:
        alice = self.client("alice")
        alice.send("msg", "h\u00e9llo \u20ac \U0001f600")
        raw = alice.transport.value()
        self.assertTrue(raw.isascii())
        self.assertIn(b"\\u00e9", raw)
        self.assertEqual(alice.one()["content"], "h\u00e9llo \u20ac \U0001f600")

    def test_lone_surrogate_replaced(self) -> None:
        alice = self.client("alice")
        alice.send_raw(b'{"request": "msg", "content": "a\\ud800b"}\n')
        self.assertEqual(alice.one()["content"], "a\ufffdb")

    def test_invalid_utf8_in_a_message(self) -> None:
        alice = self.client("alice")
        alice.send_raw(b'{"request": "msg", "content": "a\xffb"}\n')
        self.assertError(alice.one(), "bad_json")
        self.assertEqual(stored(self.factory.hub), [])

    def test_ref_and_unknown_keys_ignored(self) -> None:
        alice = self.client("alice")
        alice.send("msg", "hi", extra=1)
        self.assertEqual(alice.one()["content"], "hi")


class NamesHelpLogoutTests(ProtocolTestCase):
    def test_names_in_login_order(self) -> None:
        carol = self.client("carol")
        self.client("alice")
        bob = self.client("bob")
        carol.send("names")
        info = carol.one()
        self.assertEqual(info["response"], "info")
        self.assertEqual(info["content"], "carol, alice, bob")
        carol.send("logout")
        carol.received()
        carol.login("carol")
        bob.send("names")
        self.assertEqual(bob.one()["content"], "alice, bob, carol")

    def test_ignored_content_forms(self) -> None:
        alice = self.client("alice")
        for request in ("names", "help"):
            for content in (None, "", "None", 5, ["x"]):
                alice.send(request, content)
                self.assertEqual(alice.one()["response"], "info")
            alice.send_obj({"request": request})
            self.assertEqual(alice.one()["response"], "info")
        for content in (None, "", "None"):
            alice.send("logout", content)
            self.assertEqual(alice.one()["content"], "Logout successful")
            alice.login("alice")
        alice.send_obj({"request": "logout"})
        self.assertEqual(alice.one()["content"], "Logout successful")

    def test_help_lists_every_request(self) -> None:
        client = self.client()
        client.send("help")
        info = client.one()
        self.assertEqual(info["response"], "info")
        for request in ("login", "logout", "msg", "names", "help"):
            self.assertIn(request, info["content"])

    def test_logout_frees_name_and_keeps_connection(self) -> None:
        alice = self.client("alice")
        alice.send("logout")
        info = alice.one()
        self.assertEqual(info["response"], "info")
        self.assertEqual(info["content"], "Logout successful")
        self.assertFalse(alice.closed)
        self.client("ALICE")
        alice.send("msg", "hi")
        self.assertError(alice.one(), "not_logged_in")
        info, history = alice.login("bob")
        self.assertEqual(info["content"], "Login successful. You are now logged in as bob")

    def test_logged_out_user_gets_no_messages(self) -> None:
        alice, bob = self.client("alice"), self.client("bob")
        alice.send("logout")
        alice.received()
        bob.send("msg", "hi")
        self.assertEqual(alice.received(), [])


class RequestCheckTests(ProtocolTestCase):
    def test_before_login(self) -> None:
        client = self.client()
        for request in ("msg", "names", "logout"):
            client.send(request, "x")
            self.assertError(client.one(), "not_logged_in")
        client.send("help")
        self.assertEqual(client.one()["response"], "info")

    def test_unknown_request(self) -> None:
        client = self.client("bob")
        for request in ("foo", "Login", "MSG", "names ", "", "__init__", "request_login"):
            client.send(request)
            self.assertError(client.one(), "unknown_request")

    def test_missing_or_non_string_request(self) -> None:
        client = self.client("bob")
        for obj in ({}, {"content": "x"}, {"request": 5}, {"request": None}, {"request": ["msg"]}, {"Request": "msg"}):
            client.send_obj(obj)
            self.assertError(client.one(), "bad_request")

    def test_check_order(self) -> None:
        client = self.client()
        client.send_obj({"content": 5})
        self.assertError(client.one(), "bad_request")
        client.send("foo")
        self.assertError(client.one(), "unknown_request")
        client.send("msg", 5)
        self.assertError(client.one(), "bad_request")
        client.send("msg", "hi")
        self.assertError(client.one(), "not_logged_in")

    def test_bad_json_then_resync(self) -> None:
        client = self.client()
        client.send_raw(b'garbage{"request": "help"}')
        bad, info = client.received()
        self.assertError(bad, "bad_json")
        self.assertEqual(info["response"], "info")

    def test_one_bad_json_per_chunk(self) -> None:
        client = self.client()
        client.send_raw(b"a\nb\n[1]\n42\n")
        self.assertError(client.one(), "bad_json")

    def test_non_object_value(self) -> None:
        client = self.client()
        client.send_raw(b"[1, 2]\n")
        self.assertError(client.one(), "bad_json")

    def test_too_long_then_close(self) -> None:
        client = self.client("bob")
        client.send_raw(json.dumps({"request": "msg", "content": "x" * 17000}).encode())
        self.assertError(client.one(), "too_long")
        self.assertTrue(client.closed)
        client.send("names")
        self.assertEqual(client.received(), [])
        self.assertEqual(stored(self.factory.hub), [])

    def test_incomplete_too_long_then_close(self) -> None:
        client = self.client()
        client.send_raw(b'{"request": "msg", "content": "' + b"x" * 16400)
        self.assertError(client.one(), "too_long")
        self.assertTrue(client.closed)


class SmallLimitTests(ProtocolTestCase):
    config = {"max_request": 200}

    def test_max_request_option(self) -> None:
        client = self.client("bob")
        client.send("msg", "x" * 150)
        self.assertEqual(client.one()["response"], "message")
        client.send("msg", "x" * 200)
        self.assertError(client.one(), "too_long")
        self.assertEqual(client.protocol.MAX_LENGTH, 200)


class MaxMessageTests(SynchronousTestCase):
    def test_max_message_option(self) -> None:
        client = FakeClient(make_factory(max_message=5))
        client.login("bob")
        client.send("msg", "12345")
        self.assertEqual(client.one()["content"], "12345")
        client.send("msg", "123456")
        self.assertEqual(client.one()["code"], "message_too_long")


class DisconnectTests(ProtocolTestCase):
    def test_disconnect_frees_the_name(self) -> None:
        alice = self.client("alice")
        alice.disconnect()
        info, _ = self.client().login("alice")
        self.assertEqual(info["content"], "Login successful. You are now logged in as alice")
        self.assertEqual(names_of(self.factory.hub), ["alice"])

    def test_disconnected_user_gets_no_fan_out(self) -> None:
        alice, bob = self.client("alice"), self.client("bob")
        alice.disconnect()
        alice.transport.clear()
        bob.send("msg", "hi")
        self.assertEqual(alice.transport.value(), b"")
        self.assertEqual(bob.one()["content"], "hi")


class LoginTimeoutTests(ProtocolTestCase):
    def test_closed_when_not_logged_in(self) -> None:
        client = self.client()
        self.clock.advance(59.9)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)
        self.assertTrue(client.closed)

    def test_help_does_not_extend(self) -> None:
        client = self.client()
        self.clock.advance(50)
        client.send("help")
        self.clock.advance(10)
        self.assertTrue(client.closed)

    def test_login_cancels(self) -> None:
        client = self.client()
        self.clock.advance(30)
        client.login("bob")
        self.clock.advance(600)
        self.assertFalse(client.closed)

    def test_logged_out_connection_times_out_again(self) -> None:
        client = self.client("bob")
        self.clock.advance(600)
        client.send("logout")
        self.clock.advance(60)
        self.assertTrue(client.closed)

    def test_timer_cancelled_on_disconnect(self) -> None:
        client = self.client()
        client.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LoginTimeoutOptionTests(ProtocolTestCase):
    config = {"login_timeout": 5.0}

    def test_option(self) -> None:
        client = self.client()
        self.clock.advance(5)
        self.assertTrue(client.closed)


class NoLoginTimeoutTests(ProtocolTestCase):
    config = {"login_timeout": 0.0}

    def test_zero_disables(self) -> None:
        client = self.client()
        self.clock.advance(100000)
        self.assertFalse(client.closed)


class FramingDetectionTests(ProtocolTestCase):
    def test_lines_when_newline_follows(self) -> None:
        client = self.client()
        client.send_raw(b'{"request": "help"} \r\n{"request": "help"}\n')
        self.assertEqual(client.protocol.output.name, "lines")
        self.assertEqual(client.transport.value().count(b"}\n"), 2)

    def test_classic_when_bare(self) -> None:
        client = self.client(newline=False)
        client.send("help")
        self.assertEqual(client.protocol.output.name, "classic")
        self.assertNotIn(b"\n", client.transport.value())

    def test_first_error_decides(self) -> None:
        client = self.client()
        client.send_raw(b"garbage")
        self.assertEqual(client.protocol.output.name, "classic")

    def test_decided_once(self) -> None:
        client = self.client(newline=False)
        client.send("help")
        client.send_raw(b'{"request": "help"}\n')
        self.assertEqual(client.protocol.output.name, "classic")

    def test_classic_one_response_per_write_paced(self) -> None:
        alice = self.client(newline=False)
        alice.send("login", "alice")
        self.assertEqual(len(alice.transport.writes), 1)
        self.clock.advance(0.025)
        self.assertEqual(len(alice.transport.writes), 2)
        for _ in range(3):
            alice.send("msg", "hi")
        self.assertEqual(len(alice.transport.writes), 2)
        for expected in (3, 4, 5):
            self.clock.advance(0.025)
            self.assertEqual(len(alice.transport.writes), expected)
        responses = [json.loads(write) for write in alice.transport.writes]
        self.assertEqual([r["response"] for r in responses], ["info", "history", "message", "message", "message"])

    def test_classic_close_after_queue(self) -> None:
        client = self.client(newline=False)
        client.send("help")
        client.send("help")
        client.send_raw(b'{"request": "msg", "content": "' + b"x" * 17000)
        self.assertFalse(client.transport.disconnecting)
        client.drain()
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual([r.get("code") for r in decode_stream(client.transport.value())], [None, None, "too_long"])


class ForcedFramingTests(ProtocolTestCase):
    config = {"framing": "classic", "pace": 0.1}

    def test_classic_forced_and_paced(self) -> None:
        client = self.client()
        client.send("help")
        client.send("help")
        self.assertEqual(len(client.transport.writes), 1)
        self.clock.advance(0.05)
        self.assertEqual(len(client.transport.writes), 1)
        self.clock.advance(0.05)
        self.assertEqual(len(client.transport.writes), 2)
        self.assertNotIn(b"\n", client.transport.value())


class ForcedLinesTests(ProtocolTestCase):
    config = {"framing": "lines"}

    def test_lines_forced(self) -> None:
        client = self.client(newline=False)
        client.send("help")
        client.send("help")
        self.assertEqual(client.transport.value().count(b"\n"), 2)


class IndependentHubTests(SynchronousTestCase):
    def test_two_hubs_do_not_see_each_other(self) -> None:
        first, second = make_factory(), make_factory()
        a = FakeClient(first)
        a.login("bob")
        b = FakeClient(second)
        info, history = b.login("bob")
        self.assertEqual(info["content"], "Login successful. You are now logged in as bob")
        a.send("msg", "only here")
        self.assertEqual(b.received(), [])
        b.send("names")
        self.assertEqual(b.one()["content"], "bob")
        self.assertEqual(len(stored(first.hub)), 1)
        self.assertEqual(stored(second.hub), [])


class Collector(Protocol):
    """A client protocol that keeps what it receives."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class IOSimConversationTests(SynchronousTestCase):
    """Two clients talking through the real transport simulation."""

    def test_classic_and_lines_clients_chat(self) -> None:
        factory = make_factory()
        clock: Clock = factory.clock

        def connect() -> tuple[Collector, iosim.IOPump]:
            client, server, pump = iosim.connectedServerAndClient(
                lambda: factory.buildProtocol(None), Collector, clock=clock
            )
            return client, pump

        classic, classic_pump = connect()
        modern, modern_pump = connect()

        def pump_all() -> None:
            for _ in range(20):
                classic_pump.pump(advanceClock=False)
                modern_pump.pump(advanceClock=False)
                clock.advance(0.025)

        classic.transport.write(json.dumps({"request": "login", "content": "old"}).encode())
        modern.transport.write(b'{"request": "login", "content": "new"}\n')
        pump_all()
        classic.transport.write(json.dumps({"request": "msg", "content": "hi from old"}).encode())
        pump_all()
        modern.transport.write(b'{"request": "msg", "content": "hi from new"}\n')
        pump_all()
        old_seen = decode_stream(classic.data)
        new_seen = decode_stream(modern.data)
        self.assertNotIn(b"\n", classic.data)
        self.assertEqual(modern.data.count(b"\n"), len(new_seen))
        self.assertEqual([r["content"] for r in old_seen if r["response"] == "message"], ["hi from old", "hi from new"])
        self.assertEqual([r["content"] for r in new_seen if r["response"] == "message"], ["hi from old", "hi from new"])

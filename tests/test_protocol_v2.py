"""Protocol version 2 (PROTOCOL.md section 5): hello, ping, ref, history paging."""

from __future__ import annotations

import json

from tests.support import FakeClient, names_of, stored
from tests.test_protocol import ProtocolTestCase


class V2TestCase(ProtocolTestCase):
    def v2_client(self, name: str | None = None, newline: bool = True) -> FakeClient:
        client = FakeClient(self.factory, newline=newline)
        client.send("hello", {"protocol": 2, "client": "test/1"})
        hello = client.one()
        self.assertEqual(hello["response"], "hello")
        if name is not None:
            client.login(name)
        return client

    def post(self, count: int, name: str = "poster") -> None:
        poster = self.client(name)
        for i in range(count):
            poster.send("msg", f"m{i + 1}")
        poster.disconnect()


class HelloTests(V2TestCase):
    def test_hello_response(self) -> None:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2, "client": "chatd-client/0.1"})
        hello = client.one()
        self.assertEqual(list(hello)[:4], ["timestamp", "sender", "response", "content"])
        self.assertEqual(hello["sender"], "server")
        content = hello["content"]
        self.assertEqual(content["protocol"], 2)
        self.assertTrue(content["server"].startswith("chatd/"))
        self.assertEqual(content["features"][:3], ["ping", "history", "ref"])
        self.assertEqual(content["limits"]["max_request"], 16384)
        self.assertEqual(content["limits"]["max_message"], 2000)
        self.assertEqual(content["limits"]["history_page"], 500)

    def test_hello_switches_to_lines_framing(self) -> None:
        client = FakeClient(self.factory, newline=False)
        client.send("help")
        self.assertEqual(client.protocol.output.name, "classic")
        client.send("hello", {"protocol": 2})
        client.send("help")
        client.received()
        self.assertEqual(client.protocol.output.name, "lines")
        self.assertTrue(client.transport.writes[-1].endswith(b"}\n"))

    def test_hello_before_or_after_login(self) -> None:
        client = self.client("bob")
        client.send("hello", {"protocol": 2})
        self.assertEqual(client.one()["response"], "hello")

    def test_hello_needs_protocol_2(self) -> None:
        client = FakeClient(self.factory)
        for content in ({}, {"protocol": 1}, {"protocol": "2"}, {"protocol": True}):
            client.send("hello", content)
            self.assertError(client.one(), "bad_request")
        for content in (None, "2", 2, [2]):
            client.send("hello", content)
            self.assertError(client.one(), "bad_request")
        self.assertEqual(client.protocol.version, 1)

    def test_v2_login_history_is_objects(self) -> None:
        self.post(3)
        client = self.v2_client()
        info, history = client.login("bob")
        self.assertEqual([m["content"] for m in history["content"]], ["m1", "m2", "m3"])
        self.assertEqual([m["id"] for m in history["content"]], [1, 2, 3])
        self.assertEqual(history["content"][0]["response"], "message")

    def test_v1_client_never_gets_v2_types(self) -> None:
        v1 = self.client("old")
        v2 = self.v2_client("new")
        v2.send("msg", "hi")
        v2.send("logout")
        v2.disconnect()
        kinds = {response["response"] for response in v1.received()}
        self.assertLessEqual(kinds, {"message", "info", "error", "history"})


class PresenceTests(V2TestCase):
    def test_v2_members_see_others_come_and_go(self) -> None:
        watcher = self.v2_client("watcher")
        old = self.client("old")
        new = self.v2_client("new")
        old.send("logout")
        new.disconnect()
        seen = [(r["content"]["user"], r["content"]["status"], r["content"]["room"])
                for r in watcher.received() if r["response"] == "presence"]
        self.assertEqual(seen, [("old", "online", "#lobby"), ("new", "online", "#lobby"),
                                ("old", "offline", "#lobby"), ("new", "offline", "#lobby")])

    def test_no_presence_of_oneself_and_none_for_v1(self) -> None:
        v1 = self.client("classic")
        me = self.v2_client()
        info, history = me.login("me")
        self.assertEqual(me.received(), [])
        self.client("other")
        [presence] = me.received()
        self.assertEqual(presence["content"]["user"], "other")
        self.assertNotIn("ref", presence)
        self.assertEqual([r for r in v1.received() if r["response"] == "presence"], [])

    def test_feature_announced(self) -> None:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2})
        self.assertIn("presence", client.one()["content"]["features"])


class PingTests(V2TestCase):
    def test_ping_echoes_content(self) -> None:
        client = FakeClient(self.factory)
        for content in (None, 5, "x", {"a": [1]}):
            client.send("ping", content)
            pong = client.one()
            self.assertEqual(pong["response"], "pong")
            self.assertEqual(pong["content"], content)

    def test_ping_does_not_extend_login_timeout(self) -> None:
        client = FakeClient(self.factory)
        self.clock.advance(59)
        client.send("ping")
        self.clock.advance(1)
        self.assertTrue(client.closed)


class RefTests(V2TestCase):
    def test_ref_on_direct_responses(self) -> None:
        client = self.v2_client()
        client.send("login", "bob", ref="r1")
        info, history = client.received()
        self.assertEqual((info["ref"], history["ref"]), ("r1", "r1"))
        client.send("names", ref=7)
        self.assertEqual(client.one()["ref"], 7)
        client.send("msg", "", ref="e")
        error = client.one()
        self.assertEqual((error["code"], error["ref"]), ("empty_message", "e"))
        client.send("nope", ref="u")
        self.assertEqual(client.one()["ref"], "u")
        client.send("ping", ref="p")
        self.assertEqual(client.one()["ref"], "p")

    def test_own_echo_carries_ref_others_do_not(self) -> None:
        alice = self.v2_client("alice")
        bob = self.v2_client("bob")
        alice.received()  # bob's presence
        alice.send("msg", "hi", ref="m1")
        mine, theirs = alice.one(), bob.one()
        self.assertEqual(mine["ref"], "m1")
        self.assertNotIn("ref", theirs)
        self.assertEqual({k: v for k, v in mine.items() if k != "ref"}, theirs)

    def test_ref_not_leaked_to_later_responses(self) -> None:
        client = self.v2_client("bob")
        client.send("names", ref="x")
        client.send("names")
        first, second = client.received()
        self.assertEqual(first["ref"], "x")
        self.assertNotIn("ref", second)

    def test_invalid_ref(self) -> None:
        client = self.v2_client("bob")
        for ref in (True, 1.5, ["x"], {"a": 1}, "x" * 129):
            client.send("names", ref=ref)
            response = client.one()
            self.assertError(response, "bad_request")
            self.assertNotIn("ref", response)


class HistoryRequestTests(V2TestCase):
    def test_after(self) -> None:
        self.post(10)
        client = self.v2_client("bob")
        client.send("history", {"after": 3, "limit": 4})
        page = client.one()
        self.assertEqual(page["response"], "history")
        self.assertEqual([m["id"] for m in page["content"]], [4, 5, 6, 7])
        self.assertIs(page["more"], True)
        client.send("history", {"after": 7, "limit": 4})
        page = client.one()
        self.assertEqual([m["id"] for m in page["content"]], [8, 9, 10])
        self.assertIs(page["more"], False)

    def test_before(self) -> None:
        self.post(10)
        client = self.v2_client("bob")
        client.send("history", {"before": 4, "limit": 2})
        page = client.one()
        self.assertEqual([m["id"] for m in page["content"]], [2, 3])
        self.assertIs(page["more"], True)
        client.send("history", {"before": 2})
        page = client.one()
        self.assertEqual([m["id"] for m in page["content"]], [1])
        self.assertIs(page["more"], False)

    def test_newest_by_default(self) -> None:
        self.post(150)
        client = self.v2_client("bob")
        for content in (None, {}):
            client.send("history", content)
            page = client.one()
            self.assertEqual(len(page["content"]), 100)
            self.assertEqual(page["content"][-1]["id"], 150)
            self.assertIs(page["more"], True)
        client.send_obj({"request": "history"})
        self.assertEqual(len(client.one()["content"]), 100)

    def test_limit_clamped(self) -> None:
        self.post(600)
        client = self.v2_client("bob")
        client.send("history", {"after": 0, "limit": 1000})
        self.assertEqual(len(client.one()["content"]), 500)
        client.send("history", {"after": 0, "limit": 0})
        self.assertEqual(len(client.one()["content"]), 1)

    def test_bad_queries(self) -> None:
        client = self.v2_client("bob")
        for content in ({"before": 5, "after": 1}, {"after": "1"}, {"after": -1}, {"before": True}, {"limit": 2.5}, {"room": 5}):
            client.send("history", content)
            self.assertError(client.one(), "bad_request")
        for content in ("x", 5, [1]):
            client.send("history", content)
            self.assertError(client.one(), "bad_request")

    def test_room(self) -> None:
        self.post(2)
        client = self.v2_client("bob")
        client.send("history", {"room": "#lobby"})
        self.assertEqual(len(client.one()["content"]), 2)
        client.send("history", {"room": "#nowhere"})
        self.assertError(client.one(), "no_such_room")

    def test_needs_login(self) -> None:
        client = self.v2_client()
        client.send("history", {})
        self.assertError(client.one(), "not_logged_in")

    def test_v1_connection_gets_strings(self) -> None:
        self.post(2)
        client = self.client("bob")
        client.send("history", {"after": 0})
        page = client.one()
        self.assertEqual([json.loads(m)["content"] for m in page["content"]], ["m1", "m2"])
        self.assertIs(page["more"], False)

    def test_resume_after_last_seen(self) -> None:
        self.post(5)
        client = self.v2_client("bob")
        client.disconnect()
        self.post(250, name="other")
        client = self.v2_client("bob")
        seen: list[int] = []
        after, more = 5, True
        while more:
            client.send("history", {"after": after, "limit": 100})
            page = client.one()
            seen.extend(m["id"] for m in page["content"])
            after, more = seen[-1], page["more"]
        self.assertEqual(seen, list(range(6, 256)))


class OrderingTests(V2TestCase):
    def test_responses_follow_request_order(self) -> None:
        client = self.v2_client("bob")
        client.send_raw(
            b'{"request": "msg", "content": "one"}\n{"request": "names"}\n'
            b'{"request": "msg", "content": "two"}\n{"request": "ping", "content": 1}\n'
        )
        kinds = [(r["response"], r.get("content")) for r in client.received()]
        self.assertEqual(kinds, [("message", "one"), ("info", "bob"), ("message", "two"), ("pong", 1)])

    def test_messages_stored_before_anyone_sees_them(self) -> None:
        watcher = self.client("watcher")
        poster = self.client("poster")
        poster.protocol.dataReceived(b'{"request": "msg", "content": "x"}\n')
        # Not flushed yet: nobody has it, and it is not in history either.
        self.assertEqual(watcher.transport.value(), b"")
        self.assertEqual(stored(self.factory.hub), [])
        self.clock.advance(0)
        self.assertEqual([m.text for m in stored(self.factory.hub)], ["x"])
        self.assertEqual(watcher.one()["content"], "x")

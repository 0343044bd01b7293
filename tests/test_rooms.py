"""Rooms and direct messages (PROTOCOL.md sections 6.1-6.3) on the JSON
front-end, in memory: join, part, rooms, names, topic, msg to a room or a
name, history of a room, presence per room, and every error in its order."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.stores.history import MemoryHistory, SQLiteHistory
from tests.support import FakeClient, make_factory, rebuild_hub


def kinds(responses: list[dict[str, Any]]) -> list[str]:
    return [r["response"] for r in responses]


class RoomsTestCase(SynchronousTestCase):
    hub_options: dict[str, Any] = {}
    config: dict[str, Any] = {}

    def setUp(self) -> None:
        self.store = MemoryHistory()
        self.factory = make_factory(store=self.store, hub_options=self.hub_options, **self.config)

    def v2(self, name: str) -> FakeClient:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2})
        client.login(name)
        client.received()
        self.clients = getattr(self, "clients", [])
        for other in self.clients:
            other.received()  # its lobby presence
        self.clients.append(client)
        return client

    def v1(self, name: str, newline: bool = True) -> FakeClient:
        client = FakeClient(self.factory, newline=newline)
        client.login(name)
        return client

    def error(self, client: FakeClient, code: str) -> dict[str, Any]:
        answer = client.one()
        self.assertEqual((answer["response"], answer.get("code")), ("error", code), answer)
        return answer

    def join(self, client: FakeClient, room: str) -> list[dict[str, Any]]:
        client.send("join", room)
        return client.received()


class JoinTests(RoomsTestCase):
    def test_first_joiner_creates_with_spelling_and_is_op(self) -> None:
        alice = self.v2("alice")
        alice.send("join", "#Dev", ref=1)
        info, history = alice.received()
        self.assertEqual(info["response"], "info")
        self.assertEqual(info["content"], "Joined #Dev")
        self.assertEqual(info["room"], "#Dev")
        self.assertEqual(info["members"], ["alice"])
        self.assertEqual(info["ops"], ["alice"])
        self.assertEqual(info["voiced"], [])
        self.assertEqual(info["topic"], "")
        self.assertEqual(
            info["modes"],
            {"invite_only": False, "topic_ops": True, "moderated": False, "secret": False, "no_external": True},
        )
        self.assertEqual(info["ref"], 1)
        self.assertEqual((history["response"], history["content"], history["room"], history["ref"]), ("history", [], "#Dev", 1))
        self.assertEqual(list(info)[:4], ["timestamp", "sender", "response", "content"])

    def test_second_joiner_sees_canonical_name_and_members_are_told(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#Dev")
        info, _ = self.join(bob, "#dev")
        self.assertEqual((info["content"], info["room"], info["members"], info["ops"]), ("Joined #Dev", "#Dev", ["alice", "bob"], ["alice"]))
        presence = alice.one()
        self.assertEqual(presence["response"], "presence")
        self.assertEqual(presence["content"], {"user": "bob", "status": "online", "room": "#Dev"})
        self.assertNotIn("ref", presence)

    def test_join_with_object_content(self) -> None:
        alice = self.v2("alice")
        info, history = self.join(alice, {"room": "#ops"})  # type: ignore[arg-type]
        self.assertEqual((info["room"], history["room"]), ("#ops", "#ops"))

    def test_join_again_answers_the_info_only(self) -> None:
        alice = self.v2("alice")
        self.join(alice, "#dev")
        again = self.join(alice, "#DEV")
        self.assertEqual(kinds(again), ["info"])
        self.assertEqual(again[0]["members"], ["alice"])

    def test_join_lobby_answers_the_info_only(self) -> None:
        alice = self.v2("alice")
        answer = self.join(alice, "#lobby")
        self.assertEqual(kinds(answer), ["info"])
        self.assertEqual(answer[0]["room"], "#lobby")
        self.assertEqual(answer[0]["ops"], [])

    def test_join_sends_the_rooms_history(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        for i in range(3):
            alice.send("msg", f"m{i}", room="#dev")
        alice.send("msg", "lobby line")
        alice.received()
        bob.received()
        _, history = self.join(bob, "#dev")
        self.assertEqual([m["content"] for m in history["content"]], ["m0", "m1", "m2"])
        self.assertEqual([m["id"] for m in history["content"]], [1, 2, 3])
        self.assertEqual({m["room"] for m in history["content"]}, {"#dev"})

    def test_invalid_room_names(self) -> None:
        alice = self.v2("alice")
        for name in ["dev", "#", "#" + "a" * 49, "#dev\n", "#de v", "#dév", ""]:
            alice.send("join", name)
            self.error(alice, "invalid_room")

    def test_wrong_types_are_bad_requests(self) -> None:
        alice = self.v2("alice")
        for content in [None, 5, ["#dev"], {"room": 5}, {}]:
            alice.send("join", content)
            self.error(alice, "bad_request")
        alice.send("part", {"room": "#dev", "comment": 5})
        self.error(alice, "bad_request")

    def test_room_limit_is_forbidden(self) -> None:
        self.factory.hub.max_rooms_per_user = 2
        alice = self.v2("alice")
        self.join(alice, "#a")
        self.join(alice, "#b")
        alice.send("join", "#c")
        self.error(alice, "forbidden")
        alice.send("join", "#a")  # already a member: still fine
        self.assertEqual(kinds(alice.received()), ["info"])

    def test_invalid_room_before_the_limit(self) -> None:
        self.factory.hub.max_rooms_per_user = 1
        alice = self.v2("alice")
        self.join(alice, "#a")
        alice.send("join", "nope")
        self.error(alice, "invalid_room")


class PartTests(RoomsTestCase):
    def test_part_and_presence(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.received()
        bob.send("part", "#DEV", ref="p")
        answer = bob.one()
        self.assertEqual((answer["content"], answer["room"], answer["ref"]), ("Left #dev", "#dev", "p"))
        self.assertEqual(alice.one()["content"], {"user": "bob", "status": "offline", "room": "#dev"})
        alice.send("msg", "still here", room="#dev")
        self.assertEqual(bob.received(), [])

    def test_part_comment_reaches_the_members(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.received()
        bob.send("part", {"room": "#dev", "comment": "bye\nfor now\x07"})
        self.assertEqual(bob.one()["content"], "Left #dev")
        presence = alice.one()
        self.assertEqual(presence["response"], "presence")
        self.assertEqual(presence["content"], {"user": "bob", "status": "offline", "room": "#dev", "comment": "bye for now"})

    def test_part_errors_in_order(self) -> None:
        alice = self.v2("alice")
        alice.send("part", "dev")
        self.error(alice, "invalid_room")
        alice.send("part", "#lobby")
        self.error(alice, "forbidden")
        alice.send("part", "#nowhere")
        self.error(alice, "no_such_room")
        self.join(self.v2("bob"), "#dev")
        alice.send("part", "#dev")
        self.error(alice, "not_in_room")

    def test_guest_op_ends_when_it_leaves(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.send("part", "#dev")
        alice.received()
        carol = self.v2("carol")
        info, _ = self.join(carol, "#dev")
        # bob was not op; with alice gone nobody present is op: carol is.
        self.assertEqual(info["ops"], ["carol"])

    def test_logout_leaves_every_room(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.received()
        bob.disconnect()
        offline = [r["content"] for r in alice.received()]
        self.assertIn({"user": "bob", "status": "offline", "room": "#dev"}, offline)
        self.assertIn({"user": "bob", "status": "offline", "room": "#lobby"}, offline)
        alice.send("names", {"room": "#dev"})
        self.assertEqual(alice.one()["content"], "alice")


class MessageTests(RoomsTestCase):
    def test_room_messages_reach_members_only(self) -> None:
        alice, bob, carol = self.v2("alice"), self.v2("bob"), self.v2("carol")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.received()
        alice.send("msg", "hi dev", room="#DEV", ref=7)
        mine = alice.one()
        self.assertEqual((mine["content"], mine["room"], mine["id"], mine["ref"]), ("hi dev", "#dev", 1, 7))
        theirs = bob.one()
        self.assertEqual((theirs["room"], theirs["id"], theirs["sender"]), ("#dev", 1, "alice"))
        self.assertNotIn("ref", theirs)
        self.assertEqual(carol.received(), [])

    def test_ids_count_per_room(self) -> None:
        alice = self.v2("alice")
        self.join(alice, "#a")
        self.join(alice, "#b")
        for room in ["#a", "#b", "#a", "#lobby", "#b", "#a"]:
            alice.send("msg", "x", room=room)
        got = [(m.get("room", "#lobby"), m["id"]) for m in alice.received()]
        self.assertEqual(got, [("#a", 1), ("#b", 1), ("#a", 2), ("#lobby", 1), ("#b", 2), ("#a", 3)])

    def test_room_message_errors_in_order(self) -> None:
        alice = self.v2("alice")
        alice.send("msg", "x", room="dev")
        self.error(alice, "invalid_room")
        alice.send("msg", "x", room="#nowhere")
        self.error(alice, "no_such_room")
        self.join(self.v2("bob"), "#dev")
        alice.send("msg", "x", room="#dev")
        self.error(alice, "not_in_room")
        self.join(alice, "#dev")
        alice.send("msg", "   ", room="#dev")
        self.error(alice, "empty_message")

    def test_room_and_to_together_is_bad_request(self) -> None:
        alice = self.v2("alice")
        alice.send("msg", "x", room="#lobby", to="bob")
        self.error(alice, "bad_request")
        alice.send("msg", "x", room=5)
        self.error(alice, "bad_request")
        alice.send("msg", "x", to=["bob"])
        self.error(alice, "bad_request")

    def test_lobby_messages_carry_no_room_key(self) -> None:
        alice = self.v2("alice")
        alice.send("msg", "hello", room="#Lobby")
        message = alice.one()
        self.assertNotIn("room", message)
        self.assertEqual(list(message), ["timestamp", "sender", "response", "content", "id"])


class DirectMessageTests(RoomsTestCase):
    def test_dm_to_both_sides_only(self) -> None:
        alice, bob, carol = self.v2("alice"), self.v2("Bob"), self.v2("carol")
        alice.send("msg", "lunch?", to="bob", ref="d1")
        mine = alice.one()
        self.assertEqual((mine["content"], mine["to"], mine["id"], mine["ref"], mine["sender"]), ("lunch?", "Bob", 1, "d1", "alice"))
        self.assertNotIn("room", mine)
        theirs = bob.one()
        self.assertEqual((theirs["to"], theirs["id"], theirs["sender"]), ("Bob", 1, "alice"))
        self.assertNotIn("ref", theirs)
        self.assertEqual(carol.received(), [])

    def test_ids_count_per_conversation_in_both_directions(self) -> None:
        alice, bob, carol = self.v2("alice"), self.v2("bob"), self.v2("carol")
        alice.send("msg", "1", to="bob")
        bob.send("msg", "2", to="alice")
        alice.send("msg", "3", to="carol")
        self.assertEqual([m["id"] for m in alice.received()], [1, 2, 1])
        self.assertEqual([m["id"] for m in carol.received()], [1])

    def test_dm_to_oneself_once(self) -> None:
        alice = self.v2("alice")
        alice.send("msg", "note", to="ALICE")
        self.assertEqual([(m["content"], m["to"]) for m in alice.received()], [("note", "alice")])

    def test_no_such_user(self) -> None:
        alice = self.v2("alice")
        self.v1("classic")
        alice.received()
        for to in ["carol", "bad name", "server", "x" * 40, "classic"]:
            alice.send("msg", "hi", to=to)
            self.error(alice, "no_such_user")

    def test_no_such_user_before_empty_message(self) -> None:
        alice = self.v2("alice")
        alice.send("msg", "", to="carol")
        self.error(alice, "no_such_user")

    def test_dm_ids_never_reused_after_restart(self) -> None:
        path = self.mktemp()
        store = SQLiteHistory(path)
        self.factory = make_factory(store=store)
        alice, bob = self.v2("alice"), self.v2("bob")
        alice.send("msg", "one", to="bob")
        alice.received()
        alice.disconnect()
        bob.disconnect()
        store.close()
        store = SQLiteHistory(path)
        self.addCleanup(store.close)
        rebuild_hub(self.factory.hub, store)
        alice, bob = self.v2("alice"), self.v2("bob")
        alice.send("msg", "two", to="bob")
        self.assertEqual(alice.one()["id"], 2)
        # Guests' DMs are live only: nothing of them is stored.
        self.assertEqual(store._query("SELECT count(*) FROM messages", ())[0][0], 0)


class RoomsListNamesTopicTests(RoomsTestCase):
    def test_rooms_lists_visible_rooms_with_counts(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#Dev")
        self.join(bob, "#dev")
        self.join(bob, "#zeta")
        self.join(alice, "#abc")
        alice.send("part", "#abc")
        alice.received()
        alice.send("rooms", ref=3)
        answer = alice.one()
        self.assertEqual(answer["content"], "#Dev (2), #lobby (2), #zeta (1)")
        self.assertEqual(answer["rooms"][0], {"room": "#Dev", "members": 2, "topic": "", "invite_only": False, "secret": False})
        self.assertEqual(answer["ref"], 3)

    def test_names_of_a_room(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(bob, "#dev")
        self.join(alice, "#dev")
        bob.received()
        alice.send("names", {"room": "#DEV"})
        answer = alice.one()
        self.assertEqual((answer["content"], answer["room"]), ("bob, alice", "#dev"))
        carol = self.v2("carol")  # a public room: anyone may read its names
        carol.send("names", {"room": "#dev"})
        self.assertEqual(carol.one()["content"], "bob, alice")
        carol.send("names", {"room": "#none"})
        self.error(carol, "no_such_room")
        carol.send("names", {"room": "none"})
        self.error(carol, "invalid_room")
        carol.send("names", {"room": 3})
        self.error(carol, "bad_request")

    def test_topic_read_set_clear(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.received()
        alice.send("topic", {"room": "#dev"})
        read = alice.one()
        self.assertEqual((read["room"], read["topic"], read["by"], read["set_at"]), ("#dev", "", None, None))
        alice.send("topic", {"room": "#DEV", "topic": "Release\n0.5\t\x07now"}, ref="t")
        answer, event = alice.received()
        self.assertEqual((answer["response"], answer["content"], answer["ref"]), ("info", "Topic of #dev set", "t"))
        self.assertEqual(event["response"], "topic")
        self.assertEqual(event["content"], {"room": "#dev", "topic": "Release 0.5 now", "by": "alice"})
        self.assertNotIn("ref", event)
        self.assertEqual(bob.one()["content"], {"room": "#dev", "topic": "Release 0.5 now", "by": "alice"})
        bob.send("topic", {"room": "#dev"})
        read = bob.one()
        self.assertEqual((read["topic"], read["by"]), ("Release 0.5 now", "alice"))
        self.assertTrue(read["set_at"].endswith("Z"))
        info, _ = self.join(self.v2("carol"), "#dev")
        self.assertEqual(info["topic"], "Release 0.5 now")
        alice.send("topic", {"room": "#dev", "topic": ""})
        alice.received()
        bob.received()
        bob.send("topic", {"room": "#dev"})
        self.assertEqual(bob.one()["set_at"], None)

    def test_topic_errors_in_order(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        alice.send("topic", {"room": "dev", "topic": "x"})
        self.error(alice, "invalid_room")
        alice.send("topic", {"room": "#none", "topic": "x"})
        self.error(alice, "no_such_room")
        bob.send("topic", {"room": "#dev", "topic": "x"})
        self.error(bob, "not_in_room")
        self.join(bob, "#dev")
        bob.send("topic", {"room": "#dev", "topic": "x"})
        self.error(bob, "not_op")
        alice.received()
        alice.send("topic", {"room": "#dev", "topic": "x" * 391})
        self.error(alice, "message_too_long")
        alice.send("topic", {"room": "#dev", "topic": 5})
        self.error(alice, "bad_request")
        alice.send("topic", "#dev")
        self.error(alice, "bad_request")

    def test_history_of_a_room(self) -> None:
        alice, bob = self.v2("alice"), self.v2("bob")
        self.join(alice, "#dev")
        for i in range(5):
            alice.send("msg", f"m{i}", room="#dev")
        alice.received()
        alice.send("history", {"room": "#DEV", "after": 2, "limit": 2})
        page = alice.one()
        self.assertEqual(([m["id"] for m in page["content"]], page["room"], page["more"]), ([3, 4], "#dev", True))
        bob.send("history", {"room": "#dev"})
        self.error(bob, "not_in_room")
        bob.send("history", {"room": "#none"})
        self.error(bob, "no_such_room")
        bob.send("history", {"room": "none"})
        self.error(bob, "invalid_room")
        bob.send("history", {"room": "#dev", "with": "alice"})
        self.error(bob, "bad_request")
        bob.send("history", {"with": "alice"})
        self.error(bob, "forbidden")
        bob.send("history", {"room": "#lobby"})
        lobby = bob.one()
        self.assertNotIn("room", lobby)


class ChurnLimitTests(RoomsTestCase):
    config = {"msg_rate": 1.0, "msg_burst": 3.0}

    def test_join_part_topic_share_a_bucket_and_rejections_are_free(self) -> None:
        alice = self.v2("alice")
        for _ in range(5):
            alice.send("join", "bad")  # rejected: no token
            self.error(alice, "invalid_room")
        self.join(alice, "#a")
        alice.send("topic", {"room": "#a", "topic": "t"})
        alice.received()
        alice.send("part", "#a")
        alice.received()
        alice.send("join", "#b")
        self.error(alice, "rate_limited")
        alice.send("topic", {"room": "#a"})  # reading takes no token
        self.assertEqual(alice.one()["response"], "info")
        self.factory.clock.advance(1.0)
        self.assertEqual(kinds(self.join(alice, "#b")), ["info", "history"])


class VersionOneTests(RoomsTestCase):
    def test_v2_only_requests_are_forbidden(self) -> None:
        classic = self.v1("classic")
        requests: list[tuple[str, Any, dict[str, Any]]] = [
            ("join", "#dev", {}),
            ("part", "#dev", {}),
            ("rooms", None, {}),
            ("topic", {"room": "#lobby"}, {}),
            ("msg", "hi", {"room": "#dev"}),
            ("msg", "hi", {"to": "bob"}),
            ("names", {"room": "#dev"}, {}),
            ("history", {"room": "#dev"}, {}),
            ("history", {"with": "bob"}, {}),
        ]
        for kind, content, extra in requests:
            classic.send(kind, content, **extra)
            answer = self.error(classic, "forbidden")
            self.assertEqual(answer["content"], "Send hello first: this request needs protocol 2.")

    def test_v1_may_name_the_lobby(self) -> None:
        classic = self.v1("classic")
        classic.send("msg", "hi", room="#lobby")
        self.assertEqual(classic.one()["content"], "hi")
        classic.send("names", {"room": "#LOBBY"})
        self.assertEqual(classic.one()["content"], "classic")

    def test_v1_sees_only_the_lobby_bytes(self) -> None:
        classic = FakeClient(self.factory, newline=False)
        classic.login("classic")
        alice, bob = self.v2("alice"), self.v2("bob")
        classic.received()
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.send("msg", "dev talk", room="#dev")
        alice.send("msg", "psst", to="bob")
        alice.send("topic", {"room": "#dev", "topic": "t"})
        classic.transport.clear()
        alice.send("msg", "lobby talk")
        classic.drain()
        written = classic.transport.value()
        self.assertNotIn(b"dev", written)
        self.assertNotIn(b"psst", written)
        self.assertEqual(len(classic.received() or [written]), 1)
        self.assertTrue(written.startswith(b'{"timestamp": '))
        self.assertTrue(written.endswith(b'"response": "message", "content": "lobby talk", "id": 1}'))


class PersistenceTests(SynchronousTestCase):
    def test_rooms_survive_a_restart(self) -> None:
        path = self.mktemp()
        store = SQLiteHistory(path)
        factory = make_factory(store=store)
        alice = FakeClient(factory)
        alice.send("hello", {"protocol": 2})
        alice.login("alice")
        alice.send("join", "#Dev")
        alice.send("topic", {"room": "#dev", "topic": "kept"})
        alice.send("msg", "m1", room="#dev")
        alice.received()
        store.close()
        store = SQLiteHistory(path)
        self.addCleanup(store.close)
        rebuild_hub(factory.hub, store)
        bob = FakeClient(factory)
        bob.send("hello", {"protocol": 2})
        bob.login("bob")
        bob.received()
        bob.send("join", "#DEV")
        info, history = bob.received()
        self.assertEqual((info["room"], info["topic"], info["ops"]), ("#Dev", "kept", ["bob"]))
        self.assertEqual([m["content"] for m in history["content"]], ["m1"])
        bob.send("msg", "m2", room="#dev")
        self.assertEqual(bob.one()["id"], 2)


class RetentionAndMetricsTests(RoomsTestCase):
    def test_retention_counts_per_room(self) -> None:
        from chatd.stores.history import Retention

        alice = self.v2("alice")
        self.join(alice, "#a")
        for i in range(5):
            alice.send("msg", f"a{i}", room="#a")
        for i in range(2):
            alice.send("msg", f"l{i}")
        alice.received()
        self.assertEqual(self.store.prune(Retention(count=3), self.factory.clock.seconds()), 2)
        self.assertEqual([m.id for m in self.store.recent("#a", None)], [3, 4, 5])
        self.assertEqual([m.id for m in self.store.recent("#lobby", None)], [1, 2])
        alice.send("msg", "next", room="#a")
        self.assertEqual(alice.one()["id"], 6)

    def test_rooms_gauge(self) -> None:
        metrics = self.factory.hub.metrics
        self.assertIn(b"chatd_rooms 1.0", metrics.exposition())
        alice = self.v2("alice")
        self.join(alice, "#a")
        self.join(alice, "#b")
        alice.send("part", "#b")
        self.assertIn(b"chatd_rooms 3.0", metrics.exposition())


class EchoOrderTests(RoomsTestCase):
    def test_echoes_of_one_read_come_in_request_order(self) -> None:
        import json

        ann = self.v2("ann")
        self.v2("bob")
        ann.received()
        self.join(ann, "#dev")
        requests = [
            {"request": "msg", "content": "a", "room": "#dev", "ref": 1},
            {"request": "msg", "content": "b", "ref": 2},
            {"request": "msg", "content": "d", "to": "bob", "ref": 3},
            {"request": "msg", "content": "c", "room": "#dev", "ref": 4},
        ]
        ann.send_raw(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        self.assertEqual([(r["ref"], r["content"]) for r in ann.received()], [(1, "a"), (2, "b"), (3, "d"), (4, "c")])


class PresenceEncodingTests(RoomsTestCase):
    def test_a_presence_is_encoded_once_for_every_member(self) -> None:
        from chatd import messages

        watchers = [self.v2(f"user{i}") for i in range(20)]
        for watcher in watchers:
            watcher.received()
        encoded = []
        original = messages.encode

        def counting(obj: dict[str, Any]) -> bytes:
            if obj.get("response") == "presence":
                encoded.append(obj)
            return original(obj)

        self.patch(messages, "encode", counting)
        late = FakeClient(self.factory)
        late.send("hello", {"protocol": 2})
        late.login("late")
        self.assertEqual(len(encoded), 1)
        for watcher in watchers:
            self.assertEqual(watcher.one()["content"], {"user": "late", "status": "online", "room": "#lobby"})

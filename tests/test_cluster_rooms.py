"""Rooms and direct messages across a cluster (PROTOCOL.md sections 6.2,
6.3 and 6.8).

In memory first: nodes on one :class:`tests.cluster_fakes.FakeRedis`
with a Clock (each node the one Hub on the Redis parts, JSON clients
over StringTransports), then the Lua scripts on a real redis-server,
then three real ``twistd chatd --cluster`` nodes.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from chatd.cluster.bus import READ_RETRY_MAX, RedisBus
from chatd.cluster.names import HEARTBEAT, NAME_TTL_MS
from chatd.cluster.rooms import NODE_TTL_MS, RedisRooms
from chatd.cluster.scripts import (
    CREATE_ROOM,
    DM_PUBLISH,
    ENTER_ROOM,
    LEAVE_ROOM,
    LOAD_ROOMS,
    NODE_BEAT,
    REASSERT_MEMBERS,
    REPAIR,
    SWEEP_NODES,
    UPDATE_ROOM,
    members_key,
    node_key,
    node_members_key,
    presence_key,
)
from chatd.core.hub import Hub
from chatd.core.rooms import Delivery, Draft
from chatd.interfaces import ISession
from chatd.stores.roomstate import RoomRecord
from tests.cluster_fakes import WAIT, FakeLink
from tests.e2e import DEADLINE, LinesClient
from tests.support import FakeClient, fired
from tests.test_cluster import RedisTestCase
from tests.test_cluster_parts import ClusterCase, Node, contents
from tests.test_cluster_stream import Redis, with_rooms

TS = "2025-11-24T16:00:00.000Z"


def kinds(responses: list[dict[str, Any]]) -> list[str]:
    return [response["response"] for response in responses]


def of(responses: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [response for response in responses if response["response"] == kind]


def records(node: Node) -> dict[str, RoomRecord]:
    directory = node.hub.directory
    return {record.key: record for record in directory.records()}


def directory_of(node: Node) -> RedisRooms:
    assert isinstance(node.hub.directory, RedisRooms)
    return node.hub.directory


class RoomsCase(ClusterCase):
    """Nodes on a fake Redis, and v2 users on them."""

    def user(self, node: Node, name: str) -> FakeClient:
        """A v2 user logged in on ``node``; every user so far has heard of it."""
        client = node.login(name, version=2)
        self.clients = getattr(self, "clients", [])
        self.clients.append(client)
        self.settle(*self.clients)
        return client

    def join(self, client: FakeClient, room: str) -> list[dict[str, Any]]:
        """The answer to ``join`` (presence that came meanwhile left out)."""
        client.send("join", room)
        return [response for response in client.received() if response["response"] != "presence"]

    def settle(self, *clients: FakeClient) -> None:
        """Let every node read what is in the streams; forget what came."""
        self.clock.advance(0)
        for client in clients:
            client.received()


class RoomAcrossNodesTests(RoomsCase):
    def test_members_on_three_nodes_see_one_order(self) -> None:
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        alice, bob, carol = self.user(a, "alice"), self.user(b, "bob"), self.user(c, "carol")
        dave = self.user(a, "dave")  # not in the room, on a node that reads it
        info, history = self.join(alice, "#Dev")
        self.assertEqual((info["room"], info["members"], info["ops"], history["content"]), ("#Dev", ["alice"], ["alice"], []))
        self.clock.advance(0)
        info, _ = self.join(bob, "#dev")
        self.assertEqual((info["room"], info["members"], info["ops"]), ("#Dev", ["alice", "bob"], ["alice"]))
        info, _ = self.join(carol, "#DEV")
        self.assertEqual(info["members"], ["alice", "bob", "carol"])
        self.settle(alice, bob, carol, dave)
        for round_ in range(3):
            for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                client.send("msg", f"{name} {round_}", room="#dev")
        self.clock.advance(0)
        seen = []
        for client in (alice, bob, carol):
            got = of(client.received(), "message")
            seen.append([(m["id"], m["sender"], m["content"], m["room"], m["timestamp"]) for m in got])
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(seen[0], seen[2])
        self.assertEqual([item[0] for item in seen[0]], list(range(1, 10)))
        self.assertEqual({item[3] for item in seen[0]}, {"#Dev"})
        self.assertEqual(dave.received(), [])
        for node in (a, b, c):
            self.assertEqual(fired(node.hub.names("#dev")), ["alice", "bob", "carol"])

    def test_a_node_without_members_does_not_read_the_room(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(alice, "#dev")
        self.assertTrue(a.bus.watching("#dev"))
        self.assertFalse(b.bus.watching("#dev"))
        alice.send("msg", "only a", room="#dev")
        self.clock.advance(0)
        self.assertEqual(bob.received(), [])
        xread = [call for call in b.reader.calls if call[0] == "XREAD"][-1]
        self.assertNotIn("chatd:stream:#dev", xread)
        self.join(bob, "#dev")
        bob.send("part", "#dev")
        self.clock.advance(0)
        self.assertFalse(b.bus.watching("#dev"))

    def test_join_gets_history_then_everything_later_none_twice(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(alice, "#dev")
        for n in range(3):
            alice.send("msg", f"old {n}", room="#dev")
        self.settle(alice)
        # Posted in the same turn as the join, from the other node: either
        # in the history or delivered after it, never both, never neither.
        alice.send("msg", "racing", room="#dev")
        bob.send("join", "#dev")
        alice.send("msg", "after", room="#dev")
        self.clock.advance(0)
        got = bob.received()
        self.assertEqual(kinds(got)[:2], ["info", "history"])
        texts = [m["content"] for m in got[1]["content"]] + [m["content"] for m in of(got[2:], "message")]
        self.assertEqual(texts, ["old 0", "old 1", "old 2", "racing", "after"])
        ids = [m["id"] for m in got[1]["content"]] + [m["id"] for m in of(got[2:], "message")]
        self.assertEqual(ids, [1, 2, 3, 4, 5])

    def test_second_local_joiner_starts_where_delivery_is(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob, bea = self.user(a, "alice"), self.user(b, "bob"), self.user(b, "bea")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        alice.send("msg", "one", room="#dev")
        self.settle(alice, bob)
        self.assertEqual(b.bus.last_delivered("#dev"), 1)
        b.reader.cut()
        alice.send("msg", "two", room="#dev")  # published, not read by b yet
        got = self.join(bea, "#dev")
        self.assertEqual([m["content"] for m in got[1]["content"]], ["one"])
        b.reader.restore()
        self.clock.advance(READ_RETRY_MAX)
        self.assertEqual(contents(bea.received()), ["two"])
        self.assertEqual(contents(bob.received()), ["two"])

    def test_a_newly_watched_room_is_read_at_once(self) -> None:
        # b's reader is blocked in XREAD (without #dev) when bob joins: the
        # wake entry ends that read, and alice's message comes without
        # waiting for the block to time out.
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(alice, "#dev")
        self.settle(alice)
        self.assertTrue(any(blocked[3] is b.reader for blocked in self.redis.blocked))
        self.join(bob, "#dev")
        self.assertIn("chatd:wake:b", self.redis.streams)
        alice.send("msg", "prompt", room="#dev")
        self.assertEqual(contents(bob.received()), ["prompt"])  # the clock never moved
        xread = [call for call in b.reader.calls if call[0] == "XREAD"][-1]
        self.assertIn("chatd:stream:#dev", xread)

    def test_presence_and_topic_cross_nodes(self) -> None:
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        alice, bob, carol = self.user(a, "alice"), self.user(b, "bob"), self.user(c, "carol")
        self.join(alice, "#dev")
        self.settle(alice)
        self.join(bob, "#dev")
        self.clock.advance(0)
        self.assertEqual([p["content"] for p in of(alice.received(), "presence")],
                         [{"user": "bob", "status": "online", "room": "#dev"}])
        alice.send("topic", {"room": "#dev", "topic": "Release"})
        self.clock.advance(0)
        self.assertEqual(kinds(alice.received()), ["info", "topic"])
        event = of(bob.received(), "topic")
        self.assertEqual([e["content"] for e in event], [{"room": "#dev", "topic": "Release", "by": "alice"}])
        bob.send("topic", {"room": "#dev"})
        read = bob.one()
        self.assertEqual((read["topic"], read["by"]), ("Release", "alice"))
        info, _ = self.join(carol, "#dev")  # a third node learnt it too
        self.assertEqual(info["topic"], "Release")
        self.settle(alice, bob, carol)
        bob.send("part", {"room": "#dev", "comment": "lunch"})
        self.clock.advance(0)
        offline = of(alice.received(), "presence")
        self.assertEqual([p["content"]["user"] for p in offline], ["bob"])
        self.assertEqual(offline[0]["content"]["status"], "offline")
        self.assertEqual(of(carol.received(), "presence"), offline)

    def test_bad_events_are_skipped(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        self.settle(alice, bob)
        for fields in (["event", "topic", "content", "not json", "node", "a"],
                       ["event", "topic", "content", "[1]", "node", "a"],
                       ["event", "Not A Kind", "content", "{}", "node", "a"],
                       ["event", "topic", "content", "{" + " " * 9000 + "}", "node", "a"]):
            self.redis.xadd(presence_key("#dev"), "*", fields)
        self.redis.xadd(presence_key("#dev"), "*", ["event", "topic", "content", '{"room":"#dev","topic":"ok","by":"alice"}', "node", "a"])
        self.clock.advance(0)
        self.assertEqual([r["content"]["topic"] for r in of(bob.received(), "topic")], ["ok"])
        self.assertEqual(of(alice.received(), "topic"), [])  # a's own: a told its members itself
        self.assertEqual(len(b.bus.skips), 4)

    def test_rooms_lists_every_nodes_members(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob, bea = self.user(a, "alice"), self.user(b, "bob"), self.user(b, "bea")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        self.join(bea, "#ops")
        self.settle(alice, bob, bea)
        alice.send("rooms")
        answer = alice.one()
        self.assertEqual(answer["content"], "#dev (2), #lobby (3), #ops (1)")

    def test_non_member_post_is_echoed_by_a_node_that_does_not_read_the_room(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(alice, "#dev")
        record = fired(directory_of(a).update("#dev", lambda r: dataclasses.replace(r, modes={**r.modes, "no_external": False})))
        self.assertFalse(record.modes["no_external"])
        self.clock.advance(0)
        self.assertFalse(records(b)["#dev"].modes["no_external"])
        bob.send("msg", "from outside", room="#dev", ref="x1")
        self.clock.advance(0)
        echo = bob.one()
        self.assertEqual((echo["content"], echo["room"], echo["id"], echo["ref"]), ("from outside", "#dev", 1, "x1"))
        self.assertEqual(contents(alice.received()), ["from outside"])
        self.assertFalse(b.bus.watching("#dev"))
        self.assertEqual(b.bus.pending, 0)


class DirectMessageTests(RoomsCase):
    def test_dm_between_nodes(self) -> None:
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        alice, bob, carol = self.user(a, "alice"), self.user(b, "Bob"), self.user(c, "carol")
        alice.send("msg", "lunch?", to="bob", ref="d1")
        self.clock.advance(0)
        mine = alice.one()
        self.assertEqual((mine["content"], mine["to"], mine["id"], mine["ref"], mine["sender"]), ("lunch?", "Bob", 1, "d1", "alice"))
        theirs = bob.one()
        self.assertEqual((theirs["to"], theirs["id"], theirs["sender"]), ("Bob", 1, "alice"))
        self.assertNotIn("ref", theirs)
        bob.send("msg", "yes", to="ALICE")
        alice.send("msg", "to carol", to="carol")
        self.clock.advance(0)
        self.assertEqual([(m["content"], m["id"], m["to"]) for m in alice.received()],
                         [("yes", 2, "alice"), ("to carol", 1, "carol")])
        self.assertEqual([(m["content"], m["id"]) for m in bob.received()], [("yes", 2)])
        self.assertEqual([(m["content"], m["id"]) for m in carol.received()], [("to carol", 1)])
        # Guests' DMs are live only: no history kept, ids never reused.
        self.assertNotIn("chatd:stream:@alice bob", self.redis.streams)
        self.assertEqual(self.redis.get("chatd:seq:@alice bob"), "2")

    def test_dm_to_a_name_nobody_holds(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice = self.user(a, "alice")
        bob = self.user(b, "bob")
        bob.send("logout")
        self.clock.advance(0)
        alice.received()
        alice.send("msg", "hello?", to="bob", ref="r")
        self.clock.advance(0)
        error = alice.one()
        self.assertEqual((error["response"], error["code"], error["ref"]), ("error", "no_such_user", "r"))
        self.assertEqual(error["content"], "No such user: bob is not online.")
        self.assertIsNone(self.redis.get("chatd:seq:@alice bob"))  # no id taken
        alice.send("msg", "still talking")
        self.clock.advance(0)
        self.assertEqual(contents(alice.received()), ["still talking"])

    def test_dm_to_oneself_once(self) -> None:
        a = self.node("a")
        alice = self.user(a, "alice")
        alice.send("msg", "note", to="ALICE")
        self.clock.advance(0)
        self.assertEqual([(m["content"], m["to"]) for m in alice.received()], [("note", "alice")])

    def test_dm_ids_per_conversation_from_one_batch(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob, bea = self.user(a, "alice"), self.user(b, "bob"), self.user(b, "bea")
        for to in ("bob", "bea", "bob", "nobody", "bea"):
            alice.send("msg", f"to {to}", to=to)
        self.clock.advance(0)
        got = alice.received()
        self.assertEqual([(m.get("to"), m.get("id"), m.get("code")) for m in got],
                         [("bob", 1, None), ("bea", 1, None), ("bob", 2, None), (None, None, "no_such_user"), ("bea", 2, None)])
        self.assertEqual([m["id"] for m in bob.received()], [1, 2])
        self.assertEqual([m["id"] for m in bea.received()], [1, 2])


    def test_bad_dm_entries_are_skipped(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        good = {"conv": "@alice bob", "id": "1", "sender": "alice", "text": "hi", "ts": TS, "to": "bob"}
        bad = [
            {**good, "conv": "@bob alice"},  # not in order
            {**good, "conv": "#dev"},
            {**good, "sender": "mallory"},  # not of the conversation
            {**good, "to": "carol"},
            {**good, "id": "x"},
            {**good, "id": "0"},
            {**good, "text": "a\x00b"},
            {**good, "ts": "now"},
            {key: value for key, value in good.items() if key != "to"},
        ]
        for fields in bad:
            n = self.redis.incr("chatd:dmseq")
            self.redis.xadd("chatd:dm", f"{n}-1", [item for pair in fields.items() for item in pair])
        alice.send("msg", "real", to="bob")
        self.clock.advance(0)
        self.assertEqual([(m["content"], m["id"]) for m in bob.received()], [("real", 1)])
        self.assertEqual([(m["content"], m["id"]) for m in alice.received()], [("real", 1)])
        self.assertEqual(len(b.bus.skips), len(bad))


class DirectoryTests(RoomsCase):
    def test_creations_at_once_agree_on_one_spelling(self) -> None:
        a, b = self.node("a"), self.node("b")
        first = fired(directory_of(a).create("#Dev", TS))
        second = fired(directory_of(b).create("#dev", TS))  # b has not read the log yet
        self.assertEqual((first.name, second.name), ("#Dev", "#Dev"))
        self.clock.advance(0)
        self.assertEqual(records(a), records(b))

    def test_updates_from_two_nodes_are_both_kept(self) -> None:
        a, b = self.node("a"), self.node("b")
        fired(directory_of(a).create("#dev", TS))
        self.clock.advance(0)
        fired(directory_of(a).update("#dev", lambda r: r.with_topic("from a", "alice", TS)))
        # b still holds the older record: its compare-and-set fails, and
        # its change is made again from the newer one.
        self.assertEqual(records(b)["#dev"].topic, "")
        final = fired(directory_of(b).update("#dev", lambda r: r.with_op("bob")))
        self.assertEqual((final.topic, final.ops), ("from a", ("bob",)))
        self.clock.advance(0)
        self.assertEqual(records(a)["#dev"], final)
        self.assertEqual(records(b)["#dev"], final)

    def test_an_older_change_read_later_does_not_win(self) -> None:
        a, b = self.node("a"), self.node("b")
        fired(directory_of(a).create("#dev", TS))
        fired(directory_of(a).update("#dev", lambda r: r.with_topic("one", "alice", TS)))
        fired(directory_of(b).update("#dev", lambda r: r.with_topic("two", "bob", TS)))
        self.assertEqual(records(b)["#dev"].topic, "two")
        self.clock.advance(0)  # b reads the log: creation, "one", "two"
        self.assertEqual(records(b)["#dev"].topic, "two")
        self.assertEqual(records(a)["#dev"].topic, "two")

    def test_a_node_started_later_holds_every_record_when_ready(self) -> None:
        a = self.node("a")
        for name in ("#One", "#two"):
            fired(directory_of(a).create(name, TS))
        fired(directory_of(a).update("#two", lambda r: r.with_topic("kept", "alice", TS)))
        late = self.node("late")
        self.assertTrue(late.bus.ready)
        self.assertEqual(sorted(record.name for record in late.hub.directory.records()), ["#One", "#two"])
        self.assertEqual(records(late)["#two"].topic, "kept")

    def test_records_caught_up_after_losing_redis(self) -> None:
        a, b = self.node("a"), self.node("b")
        fired(directory_of(a).create("#dev", TS))
        self.clock.advance(0)
        b.reader.cut()
        fired(directory_of(a).update("#dev", lambda r: r.with_topic("while away", "alice", TS)))
        self.redis.streams["chatd:roomlog"].clear()  # as if trimmed meanwhile
        b.reader.restore()
        self.clock.advance(5)
        self.assertEqual(records(b)["#dev"].topic, "while away")

    def test_bad_records_are_skipped(self) -> None:
        self.redis.hashes["chatd:rooms"] = {"#bad": "not json", "#other": RoomRecord("#wrong", TS).to_json(),
                                            "#good": RoomRecord("#Good", TS).to_json()}
        a = self.node("a")
        self.assertEqual(sorted(records(a)), ["#good"])
        self.redis.xadd("chatd:roomlog", "*", ["key", "#x"])  # no record
        self.redis.xadd("chatd:roomlog", "*", ["key", "#x", "record", "[]"])
        self.clock.advance(0)
        self.assertEqual(sorted(records(a)), ["#good"])
        self.assertTrue(a.bus.ready)


class NodeDeathTests(RoomsCase):
    def kill(self, node: Node) -> None:
        """The node dies: nothing of it is released, it just stops."""
        node.service.stopService = lambda: succeed(None)  # type: ignore[method-assign]  # killed
        node.service.running = False
        node.cut()

    def test_a_dead_nodes_members_leave_within_15_seconds(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(bob, "#dev")  # bob is op
        self.join(alice, "#dev")
        self.settle(alice, bob)
        self.kill(b)
        waited = 0.0
        offline: list[dict[str, Any]] = []
        while not offline and waited < 15:
            self.clock.advance(0.5)
            waited += 0.5
            offline = [p["content"] for p in of(alice.received(), "presence") if p["content"]["room"] == "#dev"]
        self.assertEqual(offline, [{"user": "bob", "status": "offline", "room": "#dev"}])
        self.assertLessEqual(waited, NODE_TTL_MS / 1000 + HEARTBEAT + 0.5)
        self.assertEqual(fired(a.hub.names("#dev")), ["alice"])
        self.assertEqual(records(a)["#dev"].ops, ())  # a guest's op ended with it
        self.assertNotIn("b", self.redis.sets["chatd:nodes"])
        carol = self.user(a, "carol")
        info, _ = self.join(carol, "#dev")
        self.assertEqual(info["ops"], ["carol"])  # nobody present was op

    def test_members_put_back_after_the_node_was_cut_off(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob, bea = self.user(a, "alice"), self.user(b, "bob"), self.user(b, "bea")
        self.join(bob, "#dev")
        self.join(alice, "#dev")
        self.join(bea, "#dev")
        self.settle(alice, bob, bea)
        b.cut()
        self.clock.advance(NAME_TTL_MS / 1000 + 2 * HEARTBEAT)
        self.assertEqual(fired(a.hub.names("#dev")), ["alice"])
        alice.received()
        b.restore()
        self.clock.advance(HEARTBEAT)
        self.clock.advance(1)
        self.assertEqual(fired(a.hub.names("#dev")), ["bob", "alice", "bea"])  # their old places
        online = [p["content"]["user"] for p in of(alice.received(), "presence") if p["content"]["room"] == "#dev"]
        self.assertEqual(sorted(online), ["bea", "bob"])
        alice.send("msg", "welcome back", room="#dev")
        self.clock.advance(0)
        self.assertEqual(contents(bob.received()), ["welcome back"])

    def test_a_stopped_node_leaves_nothing_behind(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = self.user(a, "alice"), self.user(b, "bob")
        self.join(alice, "#dev")
        self.join(bob, "#dev")
        self.settle(alice, bob)
        bob.disconnect()
        b.service.stopService()
        self.clock.advance(0)
        self.assertEqual(fired(a.hub.names("#dev")), ["alice"])
        self.assertIsNone(self.redis.get(node_key("b")))
        self.assertNotIn("b", self.redis.sets["chatd:nodes"])


@implementer(ISession)
class Member:
    """A v2 session of a test that records what it is handed."""

    version = 2

    def __init__(self, name: str) -> None:
        self.name: str | None = name
        self.got: list[tuple[str, int, str]] = []
        self.settled: list[Draft] = []

    def deliver(self, delivery: Delivery) -> None:
        self.got.extend((delivery.room, message.id, message.text) for message in delivery.messages)

    def presence(self, user: str, status: str, room: str) -> None:
        pass

    def notify(self, kind: str, content: dict[str, object]) -> None:
        pass

    def name_lost(self) -> None:
        pass

    def draft_settled(self, draft: Draft) -> None:
        self.settled.append(draft)


class BusWatchTests(SynchronousTestCase):
    """:meth:`RedisBus.watch` and ``unwatch`` with replies held back."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.held: list[Deferred[Any]] = []
        self.hold = False
        self.seq = "4"
        self.commands = FakeLink(with_rooms(self.answer))
        self.reader = FakeLink(lambda args: WAIT)
        self.bus = RedisBus(self.clock, self.commands, self.reader, "n")
        self.bus.start()
        self.clock.advance(0)
        self.assertTrue(self.bus.ready)

    def tearDown(self) -> None:
        self.bus.stop()

    def answer(self, args: tuple[Any, ...]) -> Any:
        if args[:2] == ("EVAL", REPAIR):
            if self.hold:
                return WAIT
            return self.seq
        if args[0] == "XREVRANGE":
            return []
        return "OK"

    def release(self) -> None:
        """The held repair replies arrive."""
        for d in self.commands.waiting:
            d.callback(self.seq)
        self.commands.waiting.clear()

    def test_joins_waiting_for_one_start_share_it(self) -> None:
        self.hold = True
        first, second = self.bus.watch("#Dev"), self.bus.watch("#dev")
        starts: list[int] = []
        first.addCallback(starts.append)
        second.addCallback(starts.append)
        self.assertEqual(starts, [])
        self.assertEqual(len(self.commands.waiting), 1)  # one start for both
        self.release()
        self.assertEqual(starts, [4, 4])
        self.assertEqual(self.bus.position("#dev"), "4-1")
        self.assertEqual(fired(self.bus.watch("#DEV")), 4)  # read already: at once

    def test_unwatch_by_a_gone_joiner_waits_for_the_others(self) -> None:
        self.hold = True
        first, second = self.bus.watch("#dev"), self.bus.watch("#dev")
        # The first joiner's session went meanwhile: its callback unwatches
        # while the second joiner's is still to come.
        first.addCallback(lambda _: self.bus.unwatch("#dev"))
        entered: list[bool] = []
        second.addCallback(lambda _: entered.append(self.bus.watching("#dev")))
        self.release()
        self.assertEqual(entered, [True])
        self.assertTrue(self.bus.watching("#dev"))
        self.bus.unwatch("#dev")
        self.assertFalse(self.bus.watching("#dev"))
        self.bus.unwatch("#lobby")  # read from the start: never unwatched
        self.assertTrue(self.bus.watching("#lobby"))

    def test_a_failed_start_fails_the_joins(self) -> None:
        self.hold = True
        watched = self.bus.watch("#dev")
        failures: list[Any] = []
        watched.addErrback(failures.append)
        self.commands.waiting.pop().errback(ConnectionError("gone"))
        self.assertEqual(failures[0].value.code, "server_busy")
        self.assertFalse(self.bus.watching("#dev"))

    def test_own_message_to_a_room_unwatched_before_it_was_read(self) -> None:
        hub = Hub(self.clock, None, None, self.bus)  # type: ignore[arg-type]  # only the bus is used
        member = Member("alice")
        hub._sessions["alice"] = member
        watched = self.bus.watch("#dev")
        self.assertEqual(fired(watched), 4)
        draft = Draft("#dev", "alice", "bye", TS, member)
        self.bus.publish(draft)
        # Published: id 6; another node's 5 lies before it, so it waits
        # for the stream to deliver 5 first.
        self.commands.answer = with_rooms(lambda args: [6] if args[1] != REPAIR else self.seq)
        self.clock.advance(0)
        self.assertFalse(draft.settled)
        self.bus.unwatch("#dev")  # the room is left before the stream brought it
        self.assertTrue(draft.settled)
        self.assertEqual(member.got, [("#dev", 6, "bye")])


class ScriptTests(RedisTestCase):
    """The rooms' and DMs' Lua scripts on a real redis-server."""

    def setUp(self) -> None:
        super().setUp()
        self.redis_cli = Redis(self.redis.port)
        self.addCleanup(self.redis_cli.close)

    def call(self, *args: str) -> Any:
        return self.redis_cli(*args)

    def rooms(self, script: str, *argv: str) -> Any:
        return self.call("EVAL", script, "3", "chatd:rooms", "chatd:roomrev", "chatd:roomlog", *argv)

    def test_create_update_load(self) -> None:
        dev = RoomRecord("#Dev", TS)
        created = self.rooms(CREATE_ROOM, "#dev", dev.to_json(), "100")
        self.assertEqual(created[0], dev.to_json().encode())
        rev = created[1].decode()
        again = self.rooms(CREATE_ROOM, "#dev", RoomRecord("#dev", TS).to_json(), "100")
        self.assertEqual(again, created)  # the first spelling stays
        topic = dev.with_topic("t", "alice", TS).to_json()
        done = self.rooms(UPDATE_ROOM, "#dev", rev, topic, "100")
        self.assertEqual(done[:2], [1, topic.encode()])
        stale = self.rooms(UPDATE_ROOM, "#dev", rev, dev.to_json(), "100")
        self.assertEqual(stale, [2, topic.encode(), done[2]])
        self.assertEqual(self.rooms(UPDATE_ROOM, "#none", "0-0", "{}", "100"), [0])
        position, held, revs = self.rooms(LOAD_ROOMS)
        self.assertEqual((position, held, revs), (done[2], [b"#dev", topic.encode()], [b"#dev", done[2]]))
        log = self.call("XRANGE", "chatd:roomlog", "-", "+")
        self.assertEqual([entry[0] for entry in log], [created[1], done[2]])

    def enter(self, node: str, room: str, name: str) -> int:
        member = f"{node}|{name}"
        keys = ["chatd:joinseq", members_key(room), node_members_key(node), "chatd:nodes"]
        return int(self.call("EVAL", ENTER_ROOM, "4", *keys, member, room, node))

    def test_members_sweep_and_reassert(self) -> None:
        self.call("EVAL", NODE_BEAT, "2", node_key("a"), "chatd:nodes", "10000", "a")
        self.assertEqual(self.call("EVAL", NODE_BEAT, "2", node_key("a"), "chatd:nodes", "10000", "a"), 1)
        self.assertEqual(self.call("EVAL", NODE_BEAT, "2", node_key("b"), "chatd:nodes", "100", "b"), 0)
        seqs = [self.enter("b", "#dev", "bob"), self.enter("a", "#dev", "alice"), self.enter("b", "#ops", "bob")]
        self.assertEqual(seqs, [1, 2, 3])
        self.assertEqual(self.enter("b", "#dev", "bob"), 1)  # already in: same place
        self.call("EVAL", LEAVE_ROOM, "2", members_key("#ops"), node_members_key("b"), "b|bob", "#ops")
        self.assertEqual(self.call("ZRANGE", members_key("#ops"), "0", "-1"), [])
        time.sleep(0.2)  # b's key (100 ms) expires
        prefixes = [node_key(""), node_members_key(""), members_key(""), presence_key("")]
        removed = self.call("EVAL", SWEEP_NODES, "1", "chatd:nodes", *prefixes, "100")
        self.assertEqual(removed, [b"#dev", b"bob"])
        self.assertEqual(self.call("ZRANGE", members_key("#dev"), "0", "-1"), [b"a|alice"])
        presence = self.call("XRANGE", presence_key("#dev"), "-", "+")
        self.assertEqual(presence[0][1], [b"user", b"bob", b"status", b"offline", b"node", b"b"])
        self.assertEqual(self.call("SMEMBERS", "chatd:nodes"), [b"a"])
        self.assertEqual(self.call("EXISTS", node_members_key("b")), 0)
        # b comes back: bob at his old place, the room told.
        keys = [node_members_key("b"), members_key("#dev"), presence_key("#dev")]
        self.assertEqual(self.call("EVAL", REASSERT_MEMBERS, "3", *keys, "b", "100", "#dev", "b|bob", "1", "bob"), 1)
        self.assertEqual(self.call("ZRANGE", members_key("#dev"), "0", "-1"), [b"b|bob", b"a|alice"])
        self.assertEqual(self.call("XRANGE", presence_key("#dev"), "-", "+")[1][1][3], b"online")
        self.assertEqual(self.call("EVAL", REASSERT_MEMBERS, "3", *keys, "b", "100", "#dev", "b|bob", "1", "bob"), 0)

    def test_dm_publish(self) -> None:
        self.call("SET", "chatd:name:bob", "b|Bob")
        keys = ["chatd:dmseq", "chatd:dm", "chatd:seq:@alice bob", "chatd:name:bob", "chatd:seq:@alice zed", "chatd:name:zed"]
        head = ["100", "chatd:dmkept:", "chatd:dmconvs:", "2"]
        first = ["alice", "hi", TS, "a", "1", "@alice bob", "", "", ""]
        argv = [*head, *first, "alice", "anyone?", TS, "a", "2", "@alice zed", "", "", ""]
        self.assertEqual(self.call("EVAL", DM_PUBLISH, "6", *keys, *argv), [1, b"Bob", 0, b""])
        self.assertEqual(self.call("EVAL", DM_PUBLISH, "4", *keys[:4], *head, *first), [2, b"Bob"])
        entries = self.call("XRANGE", "chatd:dm", "-", "+")
        self.assertEqual([entry[0] for entry in entries], [b"1-1", b"2-1"])
        self.assertEqual(entries[1][1][:4], [b"conv", b"@alice bob", b"id", b"2"])
        self.assertIsNone(self.call("GET", "chatd:seq:@alice zed"))
        # A stray entry beyond the sequence is repaired as in a room's stream.
        self.call("XADD", "chatd:dm", "*", "x", "y")
        self.assertEqual(self.call("EVAL", DM_PUBLISH, "4", *keys[:4], *head, *first), [3, b"Bob"])
        self.assertEqual([entry[0] for entry in self.call("XRANGE", "chatd:dm", "-", "+")], [b"1-1", b"2-1", b"3-1"])
        # Kept for its owners (the newest 2 here), and to an account nobody holds.
        kept = ["alice", "kept", TS, "a", "3", "@alice bob", "alice bob", "", ""]
        for _ in range(2):
            self.call("EVAL", DM_PUBLISH, "4", *keys[:4], *head, *kept)
        offline = ["alice", "later", TS, "a", "4", "@alice zed", "alice zed", "Zed", "1"]
        self.assertEqual(self.call("EVAL", DM_PUBLISH, "4", *keys[:2], *keys[4:], *head, *offline), [1, b"Zed"])
        self.assertEqual(self.call("XRANGE", "chatd:dm", "-", "+")[-1][1][-4:], [b"offline", b"1", b"notice", b"1"])
        for owner in ("alice", "bob"):
            stored = self.call("ZRANGE", f"chatd:dmkept:{owner}:@alice bob", "0", "-1", "WITHSCORES")
            self.assertEqual(stored[1::2], [b"4", b"5"])
            self.assertEqual(
                json.loads(stored[0]),
                {"id": "4", "sender": "alice", "to": "Bob", "text": "kept", "ts": TS, "offline": False, "notice": False},
            )
        self.assertEqual(self.call("HGETALL", "chatd:dmconvs:alice"), [b"@alice bob", b"5", b"@alice zed", b"1"])
        kept_offline = json.loads(self.call("ZRANGE", "chatd:dmkept:zed:@alice zed", "0", "-1")[0])
        self.assertEqual((kept_offline["offline"], kept_offline["notice"]), (True, True))


class ClusterRoomsTests(RedisTestCase):
    """Three real nodes: one room spread over them, and DMs across them."""

    def setUp(self) -> None:
        super().setUp()
        self.nodes = [self.start_node(f"node{i}", None, "--msg-rate", "0") for i in range(3)]

    def user(self, index: int, name: str) -> LinesClient:
        client = LinesClient(self.nodes[index].port)
        self.addCleanup(client.close)
        client.sock.settimeout(DEADLINE)
        client.send("hello", {"protocol": 2})
        self.assertEqual(client.receive()["response"], "hello")
        client.send("login", name)
        self.assertEqual(client.receive()["content"], f"Login successful. You are now logged in as {name}")
        client.receive()  # #lobby's history
        return client

    def next_of(self, client: LinesClient, kind: str) -> dict[str, Any]:
        while True:
            response = client.receive(presence=True)
            if response["response"] == kind:
                return response

    def test_one_room_on_three_nodes_and_a_dm(self) -> None:
        users = [self.user(index, name) for index, name in enumerate(("alice", "Bob", "carol"))]
        outsider = self.user(1, "dave")
        joined = []
        for client in users:
            client.send("join", "#Dev")
            info = self.next_of(client, "info")
            self.next_of(client, "history")
            joined.append(info)
        self.assertEqual(joined[0]["members"], ["alice"])
        self.assertEqual(joined[2]["members"], ["alice", "Bob", "carol"])
        self.assertEqual({info["room"] for info in joined}, {"#Dev"})
        per_user = 20

        def send_all(index: int) -> None:
            for n in range(per_user):
                users[index].send("msg", f"{index}:{n}", room="#dev")

        threads = [threading.Thread(target=send_all, args=(index,)) for index in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        seen = []
        for client in users:
            got: list[tuple[Any, ...]] = []
            while len(got) < 3 * per_user:
                message = self.next_of(client, "message")
                got.append((message["id"], message["sender"], message["content"], message["timestamp"], message["room"]))
            seen.append(got)
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(seen[0], seen[2])
        self.assertEqual([item[0] for item in seen[0]], list(range(1, 3 * per_user + 1)))
        for index, name in enumerate(("alice", "Bob", "carol")):  # each sender's messages in its order
            own = [text for _, sender, text, _, _ in seen[0] if sender == name]
            self.assertEqual(own, [f"{index}:{n}" for n in range(per_user)])
        # A DM between users on different nodes, both ways, one conversation.
        users[0].send("msg", "psst", to="bob", ref="d")
        echo = self.next_of(users[0], "message")
        self.assertEqual((echo["content"], echo["to"], echo["id"], echo["ref"]), ("psst", "Bob", 1, "d"))
        theirs = self.next_of(users[1], "message")
        self.assertEqual((theirs["content"], theirs["to"], theirs["id"], theirs["sender"]), ("psst", "Bob", 1, "alice"))
        users[1].send("msg", "yes?", to="alice")
        self.assertEqual(self.next_of(users[1], "message")["id"], 2)
        answer = self.next_of(users[0], "message")
        self.assertEqual((answer["content"], answer["to"], answer["id"]), ("yes?", "alice", 2))
        users[2].send("msg", "x", to="nobody")
        self.assertEqual(self.next_of(users[2], "error")["code"], "no_such_user")
        # The outsider, on a node that reads #Dev, saw none of it.
        outsider.send("ping", "last")
        responses = []
        while True:
            response = outsider.receive()
            if response["response"] == "pong":
                break
            responses.append(response)
        self.assertEqual([r for r in responses if r["response"] == "message"], [])
        # Every node answers names and the topic alike.
        users[0].send("topic", {"room": "#dev", "topic": "shared"})
        self.next_of(users[0], "info")
        self.assertEqual(self.next_of(users[2], "topic")["content"], {"room": "#Dev", "topic": "shared", "by": "alice"})
        for client in users:
            client.send("names", {"room": "#dev"})
            self.assertEqual(self.next_of(client, "info")["content"], "alice, Bob, carol")

    def test_a_dead_nodes_members_leave_the_room(self) -> None:
        alice, bob = self.user(0, "alice"), self.user(1, "bob")
        for client in (alice, bob):
            client.send("join", "#dev")
            self.next_of(client, "history")
        online = self.next_of(alice, "presence")
        while online["content"].get("room") != "#dev":
            online = self.next_of(alice, "presence")
        self.nodes[1].stop(signal.SIGKILL)
        started = time.monotonic()
        offline = self.next_of(alice, "presence")
        while offline["content"].get("room") != "#dev":
            offline = self.next_of(alice, "presence")
        self.assertEqual(offline["content"], {"user": "bob", "status": "offline", "room": "#dev"})
        self.assertLess(time.monotonic() - started, 15)
        alice.send("names", {"room": "#dev"})
        self.assertEqual(self.next_of(alice, "info")["content"], "alice")

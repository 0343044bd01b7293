"""The cluster's read loop against stream entries it did not write.

In memory: a hub on the cluster's parts whose two Redis links are fakes
that answer from the test (:class:`tests.cluster_fakes.FakeLink`), so
every reply (well-formed or not) is crafted and the clock is a
:class:`Clock`.  The end-to-end counterparts (a real redis-server, real
nodes) are at the end of this file.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from chatd.cluster.bus import RedisBus
from chatd.cluster.node import hub_on_links
from chatd.cluster.scripts import LOAD_ROOMS, NODE_BEAT, PUBLISH, REPAIR
from chatd.core.hub import DEFAULT_ROOM, Hub
from chatd.core.rooms import Delivery
from chatd.interfaces import ISession
from chatd.stores.history import HistoryError
from tests.cluster_fakes import WAIT, FakeLink
from tests.e2e import LinesClient
from tests.test_cluster import RedisTestCase, login_at

STREAM = "chatd:stream:#lobby"
PRESENCE = "chatd:presence:#lobby"
TS = "2025-11-24T16:00:00.000Z"


@implementer(ISession)
class Member:
    """A logged-in session that records what it is told."""

    def __init__(self, name: str, explode: bool = False) -> None:
        self.name: str | None = name
        self.got: list[tuple[int, str]] = []
        self.failed: list[Any] = []
        self.presences: list[tuple[str, str]] = []
        self.explode = explode

    def deliver(self, delivery: Delivery) -> None:
        if self.explode:
            raise RuntimeError("a member that fails to take a batch")
        self.got.extend((message.id, message.text) for message in delivery.messages)

    def presence(self, user: str, status: str, room: str) -> None:
        self.presences.append((user, status))

    def name_lost(self) -> None:
        pass


def with_rooms(answer: Callable[[tuple[Any, ...]], Any]) -> Callable[[tuple[Any, ...]], Any]:
    """``answer``, with the rooms' start (the node's heartbeat, loading the
    records) answered as an empty cluster answers it."""

    def both(args: tuple[Any, ...]) -> Any:
        if args[:2] == ("EVAL", LOAD_ROOMS):
            return ["0-0", [], []]
        if args[:2] == ("EVAL", NODE_BEAT):
            return 1
        return answer(args)

    return both


def fake_hub(clock: MemoryReactorClock, answer: Callable[[tuple[Any, ...]], Any], **kw: Any) -> Hub:
    """A clustered hub whose commands get ``answer`` and whose XREADs wait."""
    return hub_on_links(clock, FakeLink(with_rooms(answer)), FakeLink(lambda args: WAIT), **kw)


def bus_of(hub: Hub) -> RedisBus:
    """The hub's Redis bus."""
    assert isinstance(hub.bus, RedisBus)
    return hub.bus


def fields(sender: Any = "bob", text: Any = "hi", ts: Any = TS, **extra: Any) -> list[Any]:
    """A stream entry's field list (a field given as None is left out)."""
    raw: list[Any] = []
    for name, value in (("sender", sender), ("text", text), ("ts", ts), *extra.items()):
        if value is not None:
            raw += [name, value]
    return raw


def entry(stream_id: str, **kw: Any) -> list[Any]:
    return [stream_id, fields(**kw)]


#: Entries no script wrote, each with the reason it must be skipped.
BAD_ENTRIES = {
    "no sender": entry("1-1", sender=None),
    "non-UTF-8 text (bytes from txredisapi)": entry("1-1", text=b"\xff\xfe"),
    "non-UTF-8 field name": ["1-1", [b"\xffsender", "bob", "text", "hi", "ts", TS]],
    "text over max_message": entry("1-1", text="x" * 101),
    "huge other field": entry("1-1", node="n" * 100_000),
    "empty text": entry("1-1", text="  "),
    "control characters": entry("1-1", text="a\x00b"),
    "invalid sender": entry("1-1", sender="no such user!"),
    "reserved sender": entry("1-1", sender="server"),
    "bad timestamp": entry("1-1", ts="yesterday"),
    "odd field list": ["1-1", ["sender", "bob", "text"]],
    "fields not a list": ["1-1", None],
    "id not a string": [1, fields()],
    "not a pair": ["1-1"],
    "not a list": "1-1",
    "id too large": entry("1" * 16 + "-1"),
    "id 0-1": entry("0-1"),
}


class ReadLoopTests(SynchronousTestCase):
    """``_read``/``_got_entries`` driven with crafted replies."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_764_000_000)
        self.seq = "0"
        self.history: list[Any] = []
        # The script's reply to our messages (WAIT: it comes after the
        # stream brought them, so the read loop delivers them).
        self.publish_reply: Any = [1]
        self.hub = fake_hub(self.clock, self.command, max_message=100)
        self.bus = bus_of(self.hub)
        self.events: list[dict[str, Any]] = []
        self.bus.log = Logger(observer=self.events.append)  # type: ignore[arg-type]  # a plain function observes
        self.bus.skips.log = Logger(observer=self.events.append)  # type: ignore[arg-type]  # a plain function observes
        self.members = [Member("alice"), Member("carol")]
        for member in self.members:
            self.hub.lobby.add(member)
        self.bus.start()  # finds its start (the repair's sequence), then XREAD
        self.clock.advance(0)
        self.assertEqual(len(self.reader.waiting), 1)

    def tearDown(self) -> None:
        self.bus.stop()

    def rewind(self) -> None:
        """Back to the start of the stream (as if nothing was delivered)."""
        room = self.bus._rooms[DEFAULT_ROOM]
        room.last_delivered = 0
        room.position = "0-0"

    def command(self, args: tuple[Any, ...]) -> Any:
        if args[:2] == ("EVAL", REPAIR):
            return self.seq
        if args[:2] == ("EVAL", PUBLISH):
            return self.publish_reply
        if args[0] in ("XREVRANGE", "XRANGE"):
            return self.history if args[1] == STREAM else []
        return "OK"

    @property
    def reader(self) -> FakeLink:
        return self.bus.reader  # type: ignore[return-value]

    @property
    def commands(self) -> FakeLink:
        return self.bus.commands  # type: ignore[return-value]

    def reply(self, reply: Any) -> None:
        """Answer the pending XREAD with ``reply``, then let the loop turn."""
        self.reader.waiting.pop(0).callback(reply)
        self.clock.advance(0)

    def stream(self, *entries: Any) -> list[Any]:
        return [[STREAM, list(entries)]]

    def position(self) -> str:
        """The stream id the last XREAD read from."""
        return str(self.reader.calls[-1][-2])

    def assert_reading(self) -> None:
        """The loop has an XREAD pending (within the longest retry delay)."""
        if not self.reader.waiting:
            self.clock.advance(5.0)
        self.assertEqual(len(self.reader.waiting), 1, "the read loop stopped")

    def skipped(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event["log_format"].startswith("skipping entry")]

    def test_each_bad_entry_is_skipped_and_the_next_message_delivered(self) -> None:
        for reason, bad in BAD_ENTRIES.items():
            with self.subTest(reason):
                self.rewind()
                for member in self.members:
                    member.got.clear()
                self.reply(self.stream(bad, entry("2-1", text="after")))
                self.assert_reading()
                for member in self.members:
                    self.assertEqual(member.got, [(2, "after")], reason)
                self.assertEqual(self.bus.last_delivered(), 2)
                self.assertEqual(self.position(), "2-1")

    def test_a_skipped_entry_is_logged_once(self) -> None:
        bad = entry("1-1", sender=None)
        self.reply(self.stream(bad))
        self.bus._rooms[DEFAULT_ROOM].position = "0-0"
        self.reply(self.stream(bad))
        self.assertEqual(len(self.skipped()), 1)
        self.assertIn("sender", self.skipped()[0]["problem"])

    def test_skipped_log_is_bounded(self) -> None:
        for n in range(1, 1100):
            self.reply(self.stream(entry(f"{n}-1", sender=None)))
        self.assertEqual(len(self.bus.skips), 1024)
        self.assertEqual(self.position(), "1099-1")

    def test_clock_id_neither_delivered_nor_moves_ids(self) -> None:
        # XADD chatd:stream:#lobby * ...: a valid-looking message whose id
        # is the clock's.  Nobody gets it; the stream is repaired (the
        # script deletes it) and reading goes on from where it was.
        self.reply(self.stream(entry("1764000000000-0", text="stray")))
        self.assertEqual(self.commands.calls[-1][:2], ("EVAL", REPAIR))
        self.assert_reading()
        self.assertEqual(self.position(), "0-0")
        self.assertEqual(self.bus.last_delivered(), 0)
        self.reply(self.stream(entry("1-1", text="first")))
        self.assertEqual(self.members[0].got, [(1, "first")])
        self.assertEqual(self.position(), "1-1")
        # A stray entry at or below the repaired sequence (5) is final: the
        # position moves past it, so it is not read again and again.
        self.seq = "5"
        self.reply(self.stream(entry("3-0")))
        self.assert_reading()
        self.assertEqual(self.position(), "3-0")

    def test_stray_entry_before_a_message_is_passed(self) -> None:
        started = len(self.commands.calls)
        self.reply(self.stream(entry("1-0"), entry("1-1", text="m")))
        self.assertEqual(self.members[0].got, [(1, "m")])
        self.assertEqual(self.position(), "1-1")
        self.assertNotIn(("EVAL", REPAIR), [call[:2] for call in self.commands.calls[started:]])
        self.reply(self.stream(entry("1-1", text="again"), entry("2-1", text="two")))
        self.assertEqual(self.members[0].got, [(1, "m"), (2, "two")])  # no id twice

    def test_replies_of_unexpected_shapes_do_not_stop_the_loop(self) -> None:
        for reply in (42, "x", b"x", {}, [None], [[STREAM]], [[STREAM, None]], [[STREAM, 7]], [[None, []]],
                      [[STREAM, [None, 5]]], [[PRESENCE, [["1-0", None]]]]):
            with self.subTest(reply=reply):
                self.reply(reply)
                self.assert_reading()
        self.reply(self.stream(entry("1-1", text="still here")))
        self.assertEqual(self.members[0].got, [(1, "still here")])

    def test_failures_back_off_and_recover(self) -> None:
        self.reply(None)  # the block timed out: read again at once
        self.assertEqual(len(self.reader.waiting), 1)
        delays = []
        for _ in range(6):
            self.reader.waiting.pop(0).errback(ConnectionError("gone"))
            before = self.clock.seconds()
            while not self.reader.waiting:
                self.clock.advance(0.25)
            delays.append(self.clock.seconds() - before)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0])
        self.reply(self.stream(entry("1-1")))  # success resets the delay
        self.assertEqual(self.bus._retry, 0.5)

    def test_failing_repair_is_retried(self) -> None:
        self.commands.answer = with_rooms(lambda args: ConnectionError("gone") if args[1] == REPAIR else "OK")
        self.reply(self.stream(entry("1764000000000-0")))
        self.assert_reading()
        self.assertEqual(self.position(), "0-0")

    def test_failing_member_does_not_stop_the_loop(self) -> None:
        self.hub.lobby.add(Member("dave", explode=True))
        self.reply(self.stream(entry("1-1")))
        self.assert_reading()
        self.reply(self.stream(entry("2-1")))
        self.assert_reading()
        self.assertEqual(self.position(), "2-1")
        # The room logs the failing member and goes on to the others.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def post(self, member: Member, text: str) -> list[str]:
        """``member`` posts ``text``; returns a list that fills once it is answered."""
        done: list[str] = []
        draft = self.hub.post(member, text)

        def failed(failure: Failure) -> None:
            member.failed.append("r1")

        draft.stored.addErrback(failed).addBoth(lambda _: done.append("answered"))
        self.clock.advance(0)  # published
        return done

    def test_sender_answered_after_bad_entries(self) -> None:
        self.publish_reply = WAIT  # the stream brings it first
        sender = self.members[0]
        done = self.post(sender, "mine")
        token = self.commands.calls[-1][-2]  # the last message's token (its notice flag follows)
        self.reply(self.stream(entry("1764000000000-0", sender=None)))
        self.assertEqual(done, [])
        self.reply(self.stream(entry("1-1", text="mine", node=self.bus.node, token=token)))
        self.assertEqual(done, ["answered"])
        self.assertEqual(sender.got, [(1, "mine")])

    def test_sender_of_a_skipped_own_entry_is_told_and_answered(self) -> None:
        self.publish_reply = WAIT  # the stream brings it first
        sender = self.members[0]
        done = self.post(sender, "mine")
        token = self.commands.calls[-1][-2]  # the last message's token (its notice flag follows)
        self.reply(self.stream(entry("1-1", text=b"\xff", node=self.bus.node, token=token)))
        self.assertEqual((done, sender.failed), (["answered"], ["r1"]))

    def test_sender_answered_even_if_fan_out_fails(self) -> None:
        self.publish_reply = WAIT  # the stream brings it first
        sender = self.members[0]
        self.hub.lobby.add(Member("dave", explode=True))
        done = self.post(sender, "mine")
        token = self.commands.calls[-1][-2]  # the last message's token (its notice flag follows)
        self.reply(self.stream(entry("1-1", text="mine", node=self.bus.node, token=token)))
        self.assertEqual(done, ["answered"])
        self.assertEqual(sender.got, [(1, "mine")])  # the other members got it too
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_presence_skipped(self) -> None:
        good = ["7-0", ["user", "bob", "status", "online", "node", "x"]]
        bad = [["1-0", ["user", b"\xff", "status", "online"]], ["2-0", ["user", "bob", "status", "dancing"]],
               ["3-0", ["user", "bob"]], ["4-0", None]]
        self.reply([[PRESENCE, [*bad, good]]])
        self.assert_reading()
        self.assertEqual(self.members[0].presences, [("bob", "online")])
        self.assertEqual(self.reader.calls[-1][-1], "7-0")

    def test_start_ignores_a_stray_newest_entry(self) -> None:
        # The start is the repair's sequence, not the stream's newest id
        # (the old code took "1764000000000-0" and never delivered again).
        hub = fake_hub(self.clock, lambda args: "7" if args[1] == REPAIR else [["9-0", ["user", "x"]]])
        bus = bus_of(hub)
        bus.start()
        self.clock.advance(0)
        xread = bus.reader.calls[-1]  # type: ignore[attr-defined]
        self.assertEqual((bus.last_delivered(), xread[-2:]), (7, ("7-1", "9-0")))
        bus.stop()

    def test_bad_start_reply_is_retried(self) -> None:
        hub = fake_hub(self.clock, lambda args: None)
        bus = bus_of(hub)
        bus.log = Logger(observer=lambda event: None)  # type: ignore[arg-type]  # a plain function observes
        bus.start()
        self.clock.advance(0)
        self.assertIsNone(bus.position())
        bus.commands.answer = with_rooms(lambda args: "3" if args[1] == REPAIR else [])  # type: ignore[attr-defined]
        self.clock.advance(0.5)
        self.assertEqual(bus.position(), "3-1")
        bus.stop()

    def test_history_skips_bad_entries(self) -> None:
        good = [entry(f"{n}-1", text=f"m{n}") for n in (1, 3, 5)]
        self.history = [good[0], *BAD_ENTRIES.values(), good[1], entry("1764000000000-0"), good[2]]
        recent: list[Any] = []
        self.history.reverse()  # XREVRANGE: newest first
        self.hub.recent(DEFAULT_ROOM, None).addCallback(recent.append)
        self.assertEqual([message.id for message in recent[0]], [1, 3, 5])
        page: list[Any] = []
        self.hub.page(DEFAULT_ROOM, None, None, 50).addCallback(page.append)
        self.assertEqual([message.id for message in page[0][0]], [1, 3, 5])
        self.history.reverse()  # XRANGE: oldest first
        self.hub.page(DEFAULT_ROOM, None, 0, 50).addCallback(page.append)
        self.assertEqual([message.id for message in page[1][0]], [1, 3, 5])

    def test_health_check(self) -> None:
        self.hub.history.check()
        self.commands.connected = False
        self.assertRaises(HistoryError, self.hub.history.check)


# -- end to end: a real redis-server and real nodes -------------------------


class Redis:
    """A tiny RESP client for the tests: one command at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args: str | bytes) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if int(rest) < 0:
                return None
            data = self.reader.read(int(rest) + 2)[:-2]
            return data
        if kind == b"*":
            return None if int(rest) < 0 else [self._reply() for _ in range(int(rest))]
        raise AssertionError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class StrayEntryTests(RedisTestCase):
    """Two nodes; a stray entry is added by hand; chat and history go on."""

    def setUp(self) -> None:
        super().setUp()
        self.nodes = [self.start_node(f"node{i}", None, "--msg-rate", "0") for i in range(2)]
        self.redis_cli = Redis(self.redis.port)
        self.addCleanup(self.redis_cli.close)
        self.alice = login_at(self, self.nodes[0].port, "alice")
        self.bob = login_at(self, self.nodes[1].port, "bob")
        for client in (self.alice, self.bob):
            client.sock.settimeout(8)  # a stalled node fails the test in seconds
        self.say(self.alice, "before")

    def say(self, client: LinesClient, text: str) -> None:
        """``client`` says ``text``: both users get it (the sender its echo)."""
        client.send("msg", text)
        for user in (self.alice, self.bob):
            got = user.receive()
            self.assertEqual((got["response"], got["content"]), ("message", text))

    def next_id(self) -> str:
        """The next id as the script would give it (a buggy publisher)."""
        return f"{self.redis_cli('INCR', 'chatd:seq:#lobby')}-1"

    def stray(self, stream_id: str, *raw: str | bytes) -> None:
        self.redis_cli("XADD", STREAM, stream_id, *raw)

    def check_after(self) -> None:
        self.say(self.bob, "after")
        self.say(self.alice, "after again")
        reader = LinesClient(self.nodes[1].port)
        self.addCleanup(reader.close)
        reader.sock.settimeout(8)
        reader.send("hello", {"protocol": 2})
        reader.receive()
        reader.send("login", "reader")
        reader.receive()
        self.assertEqual([m["content"] for m in reader.receive()["content"]], ["before", "after", "after again"])
        reader.send("history", {"after": 0})
        page = reader.receive()
        self.assertEqual([m["content"] for m in page["content"]], ["before", "after", "after again"])
        ids = [m["id"] for m in page["content"]]
        self.assertEqual(ids, sorted(ids))
        self.assertLess(ids[-1], 10)  # no id came from a clock

    def test_entry_without_sender(self) -> None:
        self.stray(self.next_id(), "text", "x", "ts", TS)
        self.check_after()

    def test_non_utf8_text(self) -> None:
        self.stray(self.next_id(), "sender", "mallory", "text", b"\xff\xfe", "ts", TS)
        self.check_after()

    def test_oversized_text(self) -> None:
        self.stray(self.next_id(), "sender", "mallory", "text", b"x" * (20 * 1024 * 1024), "ts", TS)
        self.check_after()

    def test_clock_id(self) -> None:
        self.stray("*", "sender", "mallory", "text", "from the clock", "ts", TS)
        self.check_after()

    def test_node_started_after_a_clock_id(self) -> None:
        self.stray("*", "sender", "mallory", "text", "from the clock", "ts", TS)
        late = self.start_node("late", None, "--msg-rate", "0")
        carol = login_at(self, late.port, "carol")
        carol.sock.settimeout(8)
        self.alice.send("msg", "to the late node")
        for user in (self.alice, self.bob, carol):
            got = user.receive()
            self.assertEqual((got["content"], got["id"]), ("to the late node", 2))


class ScriptTests(RedisTestCase):
    """The Lua scripts on a real redis-server: only they give ids."""

    def setUp(self) -> None:
        super().setUp()
        self.redis_cli = Redis(self.redis.port)
        self.addCleanup(self.redis_cli.close)

    def publish(self, *texts: str) -> list[int]:
        args: list[str] = []
        for text in texts:
            args += ["bob", text, TS, "node", "1", ""]
        ids = self.redis_cli("EVAL", PUBLISH, "2", "chatd:seq:#lobby", STREAM, "1000", *args)
        return list(ids)

    def ids(self) -> list[str]:
        return [item[0].decode() for item in self.redis_cli("XRANGE", STREAM, "-", "+")]

    def test_publish_after_a_clock_id(self) -> None:
        self.assertEqual(self.publish("one"), [1])
        self.redis_cli("XADD", STREAM, "*", "sender", "x", "text", "y", "ts", TS)
        self.assertEqual(self.publish("two", "three"), [2, 3])
        self.assertEqual(self.ids(), ["1-1", "2-1", "3-1"])  # the stray entry is gone

    def test_a_notice_is_marked_in_its_entry(self) -> None:
        args = ["bob", "loud", TS, "node", "1", "1", "bob", "plain", TS, "node", "2", ""]
        self.assertEqual(list(self.redis_cli("EVAL", PUBLISH, "2", "chatd:seq:#lobby", STREAM, "1000", *args)), [1, 2])
        fields = [item[1] for item in self.redis_cli("XRANGE", STREAM, "-", "+")]
        self.assertEqual(fields[0][-2:], [b"notice", b"1"])
        self.assertNotIn(b"notice", fields[1])

    def test_publish_after_a_clock_id_that_was_deleted(self) -> None:
        # The stream remembers the largest id it ever gave, even deleted.
        self.publish("one")
        stray = self.redis_cli("XADD", STREAM, "*", "a", "b")
        self.redis_cli("XDEL", STREAM, stray)
        self.assertEqual(self.publish("two"), [2])

    def test_publish_after_an_id_of_its_own_form(self) -> None:
        # Readers may have delivered it already: the ids move past it.
        self.publish("one")
        self.redis_cli("XADD", STREAM, "5-1", "sender", "x", "text", "y", "ts", TS)
        self.assertEqual(self.publish("six"), [6])
        self.assertEqual(self.ids(), ["1-1", "5-1", "6-1"])

    def test_publish_with_a_broken_sequence(self) -> None:
        self.publish("one", "two")
        self.redis_cli("SET", "chatd:seq:#lobby", "not a number")
        self.assertEqual(self.publish("three"), [3])

    def test_repair(self) -> None:
        self.redis_cli("XADD", STREAM, "*", "sender", "x", "text", "y", "ts", TS)
        self.redis_cli("XADD", STREAM, "9999999999999999-1", "sender", "x", "text", "y", "ts", TS)  # 16 digits
        self.assertEqual(self.redis_cli("EVAL", REPAIR, "2", "chatd:seq:#lobby", STREAM), b"0")
        self.assertEqual(self.ids(), [])
        self.assertEqual(self.publish("one"), [1])

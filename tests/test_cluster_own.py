"""A node delivers its own messages from the script's ids, not from the
stream, and still in the room's one order (chatd/cluster/bus.py).

In memory first: a clustered hub on two :class:`tests.cluster_fakes.FakeLink`
s, the script's replies and the ``XREAD`` replies held back and given in
any order, as two connections to Redis may bring them.  Then end to end:
two real nodes on a real redis-server, both chatting in one room at
once, one of them restarted.
"""

from __future__ import annotations

import random
import time
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from chatd.cluster.bus import RedisBus
from chatd.cluster.scripts import PUBLISH, REPAIR
from chatd.core.rooms import Draft
from chatd.stores.history import HistoryError, StoredMessage
from tests.cluster_fakes import WAIT
from tests.e2e import LinesClient
from tests.test_cluster import RedisTestCase, login_at
from tests.test_cluster_stream import STREAM, TS, Member, bus_of, fake_hub


class OwnMessagesCase(SynchronousTestCase):
    """A node with two local members in #lobby; its script calls and its
    reads wait until the test answers them."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.seq = "0"
        self.publishes: list[tuple[Any, ...]] = []  # the PUBLISH calls, in the order sent
        self.hub = fake_hub(self.clock, self.command, max_message=100)
        self.bus: RedisBus = bus_of(self.hub)
        self.events: list[dict[str, Any]] = []
        self.bus.skips.log = Logger(observer=self.events.append)  # type: ignore[arg-type]  # a plain function observes
        self.members = [Member("alice"), Member("carol")]
        for member in self.members:
            self.hub.lobby.add(member)
        self.bus.start()
        self.clock.advance(0)
        self.assertEqual(len(self.reader.waiting), 1)

    def tearDown(self) -> None:
        self.bus.stop()

    def command(self, args: tuple[Any, ...]) -> Any:
        if args[:2] == ("EVAL", REPAIR):
            return self.seq
        if args[:2] == ("EVAL", PUBLISH):
            self.publishes.append(args)
            return WAIT
        if args[0] in ("XREVRANGE", "XRANGE"):
            return []
        return "OK"

    @property
    def reader(self) -> Any:
        return self.bus.reader

    @property
    def commands(self) -> Any:
        return self.bus.commands

    def post(self, text: str, member: int = 0) -> Draft:
        """A local member posts ``text`` (published at the end of the turn)."""
        return self.hub.post(self.members[member], text)

    def published(self, *ids: int) -> None:
        """The oldest script call waiting gets its reply: ``ids``."""
        self.commands.waiting.pop(0).callback(list(ids))
        self.clock.advance(0)

    def read(self, *entries: Any) -> None:
        """The pending XREAD brings ``entries`` of #lobby's stream."""
        self.reader.waiting.pop(0).callback([[STREAM, list(entries)]])
        self.clock.advance(0)
        self.assertEqual(len(self.reader.waiting), 1, "the read loop stopped")

    def own_entry(self, number: int, text: str, publish: int = 0, index: int = 0, **fields: Any) -> list[Any]:
        """Our entry ``<number>-1`` as the script wrote it, from PUBLISH
        call ``publish``'s ``index``-th message (``fields`` overrides)."""
        args = self.publishes[publish]
        sender, body, ts, node, token = args[6 + 6 * index : 11 + 6 * index]
        values = {"sender": sender, "text": body, "ts": ts, "node": node, "token": token, **fields}
        raw: list[Any] = []
        for name, value in values.items():
            if value is not None:
                raw += [name, value]
        self.assertEqual(body, text)
        return [f"{number}-1", raw]

    @staticmethod
    def other_entry(number: int, text: str) -> list[Any]:
        """Another node's message ``<number>-1``."""
        return [f"{number}-1", ["sender", "bob", "text", text, "ts", TS, "node", "elsewhere", "token", "7"]]

    def got(self) -> list[tuple[int, str]]:
        """What the first member got (the second must have got the same)."""
        self.assertEqual(self.members[0].got, self.members[1].got)
        return self.members[0].got

    def position(self) -> str:
        """The stream id the last XREAD read #lobby from."""
        call = self.reader.calls[-1]
        keys = call[6:]
        half = len(keys) // 2
        return str(keys[half + keys[:half].index(STREAM)])


class OwnMessagesTests(OwnMessagesCase):
    def test_delivered_from_the_ids_at_once_and_never_again(self) -> None:
        first, second = self.post("one"), self.post("two")
        self.clock.advance(0)
        self.assertEqual(len(self.publishes), 1)  # one script call for the turn
        self.published(1, 2)
        self.assertEqual(self.got(), [(1, "one"), (2, "two")])
        self.assertEqual(self.members[0].got, [(1, "one"), (2, "two")])
        self.assertTrue(first.settled and second.settled)
        self.assertEqual((first.result.id, second.result.id), (1, 2))
        self.assertEqual(self.bus.last_delivered(), 2)
        # The stream brings them back: skipped by id, none twice.
        self.read(self.own_entry(1, "one"), self.own_entry(2, "two", index=1))
        self.assertEqual(self.got(), [(1, "one"), (2, "two")])
        self.assertEqual(self.position(), "2-1")
        self.assertEqual(self.bus.pending, 0)

    def count(self) -> str:
        """The COUNT of the last XREAD."""
        return str(self.reader.calls[-1][2])

    def test_a_batch_of_ours_is_not_read_back(self) -> None:
        self.assertEqual(self.count(), "500")
        for n in range(5):
            self.post(f"m{n}")
        self.clock.advance(0)
        self.published(1, 2, 3, 4, 5)
        # The blocking read under way brings the batch's first entry (a
        # full count would bring all five): the next read starts past
        # the batch, and takes one entry per stream while only our
        # delivered messages come.
        self.read(self.own_entry(1, "m0"))
        self.assertEqual((self.position(), self.count()), ("5-1", "1"))
        self.assertEqual(self.got(), [(n + 1, f"m{n}") for n in range(5)])
        # Another node's message: full counts again.
        self.read(self.other_entry(6, "theirs"))
        self.assertEqual((self.position(), self.count()), ("6-1", "500"))
        self.assertEqual(self.got()[-1], (6, "theirs"))

    def test_a_read_failure_takes_a_full_count_again(self) -> None:
        self.post("mine")
        self.clock.advance(0)
        self.published(1)
        self.read(self.own_entry(1, "mine"))
        self.assertEqual(self.count(), "1")
        self.reader.waiting.pop(0).errback(ConnectionError("gone"))
        self.clock.advance(1)
        self.assertEqual(self.count(), "500")

    def test_waits_for_another_nodes_message_before_it(self) -> None:
        mine = self.post("mine")
        self.clock.advance(0)
        self.published(2)  # bob's 1 on another node came first
        self.assertEqual(self.got(), [])
        self.assertFalse(mine.settled)
        # Our entry is known by its id: its fields are not read (here
        # they would not even parse).
        self.read(self.other_entry(1, "theirs"), self.own_entry(2, "mine", sender=None))
        self.assertEqual(self.got(), [(1, "theirs"), (2, "mine")])
        self.assertTrue(mine.settled)
        self.assertEqual(self.events, [])  # nothing skipped
        self.assertEqual(self.position(), "2-1")

    def test_goes_out_as_soon_as_the_gap_before_it_is_filled(self) -> None:
        mine = self.post("mine")
        self.clock.advance(0)
        self.published(2)
        self.read(self.other_entry(1, "theirs"))  # the stream has not brought 2 yet
        self.assertEqual(self.got(), [(1, "theirs"), (2, "mine")])
        self.assertTrue(mine.settled)
        self.read(self.own_entry(2, "mine"))
        self.assertEqual(self.got(), [(1, "theirs"), (2, "mine")])
        self.assertEqual(self.position(), "2-1")

    def test_stream_faster_than_the_scripts_reply(self) -> None:
        mine = self.post("mine")
        self.clock.advance(0)
        self.read(self.own_entry(1, "mine"))
        self.assertEqual(self.got(), [(1, "mine")])
        self.assertTrue(mine.settled)
        self.published(1)  # its reply comes after: nothing twice
        self.assertEqual(self.got(), [(1, "mine")])
        self.assertEqual(self.bus.pending, 0)

    def test_an_id_given_again_by_a_redis_that_lost_its_data(self) -> None:
        self.read(self.other_entry(1, "old"), self.other_entry(2, "older"))
        mine = self.post("mine")
        self.clock.advance(0)
        self.published(1)  # Redis restarted empty: 1 again
        self.assertEqual(self.got(), [(1, "old"), (2, "older")])
        self.assertTrue(mine.settled)
        self.assertIsInstance(mine.result.value, HistoryError)
        self.assertEqual(self.bus.pending, 0)


class InterleavingTests(OwnMessagesCase):
    """Our messages and another node's in one room, the script's replies
    and the stream's in random order: every member gets every id once,
    in order, and every sender its answer."""

    def test_random_interleavings(self) -> None:
        for seed in range(30):
            with self.subTest(seed=seed):
                self.tearDown()
                self.setUp()
                self.run_schedule(random.Random(seed))

    def run_schedule(self, rng: random.Random) -> None:
        stream: list[list[Any]] = []  # what Redis holds, in id order
        drafts: list[Draft] = []
        executed = 0  # script calls Redis ran (their entries are in the stream)
        replied = 0  # script calls whose reply came back
        texts: dict[int, str] = {}

        def execute() -> None:
            nonlocal executed
            args = self.publishes[executed]
            ids = []
            for index in range((len(args) - 6) // 6):
                number = len(stream) + 1
                ids.append(number)
                stream.append(self.own_entry(number, args[7 + 6 * index], publish=executed, index=index))
                texts[number] = args[7 + 6 * index]
            replies.append(ids)
            executed += 1

        replies: list[list[int]] = []

        def read() -> None:
            position = int(self.position().split("-")[0])
            entries = stream[position : position + rng.randint(1, 4)]
            if entries:
                self.read(*entries)

        for step in range(120):
            action = rng.random()
            if action < 0.3:
                for _ in range(rng.randint(1, 3)):
                    drafts.append(self.post(f"mine {step}.{len(drafts)}", member=rng.randint(0, 1)))
                self.clock.advance(0)
            elif action < 0.45 and executed < len(self.publishes):
                execute()
            elif action < 0.6 and replied < executed:
                self.published(*replies[replied])
                replied += 1
            elif action < 0.75:
                number = len(stream) + 1
                stream.append(self.other_entry(number, f"theirs {number}"))
                texts[number] = f"theirs {number}"
            else:
                read()
        # Everything arrives in the end.
        while executed < len(self.publishes):
            execute()
        while replied < executed:
            self.published(*replies[replied])
            replied += 1
        for _ in range(len(stream) + 1):
            read()
        expected = [(number, texts[number]) for number in range(1, len(stream) + 1)]
        self.assertEqual(self.got(), expected)
        self.assertTrue(all(draft.settled for draft in drafts))
        results = [draft.result for draft in drafts]
        self.assertTrue(all(isinstance(result, StoredMessage) for result in results))
        self.assertEqual(sorted(texts[result.id] for result in results), sorted(draft.text for draft in drafts))
        self.assertEqual(self.bus.pending, 0)
        self.assertEqual(self.events, [])


class OwnMessagesEndToEndTests(RedisTestCase):
    """Two real nodes on a real Redis, both posting in #lobby at once."""

    def setUp(self) -> None:
        super().setUp()
        self.nodes = [self.start_node(f"node{i}", None, "--msg-rate", "0") for i in range(2)]

    def chat(self, rounds: int, tag: str) -> None:
        """Two senders on each node and a listener on each post ``rounds``
        messages each, all sent before any is read: every client gets
        every message once, ids increasing, the same order everywhere."""
        senders = [login_at(self, self.nodes[index % 2].port, f"{tag}s{index}") for index in range(4)]
        listeners = [login_at(self, node.port, f"{tag}l{index}") for index, node in enumerate(self.nodes)]
        clients = senders + listeners
        for client in clients:
            client.sock.settimeout(10)
        sent = []
        for n in range(rounds):
            for index, sender in enumerate(senders):
                text = f"{tag} {index}.{n}"
                sender.send("msg", text)
                sent.append(text)
        orders = []
        for client in clients:
            got: list[tuple[int, str]] = []
            while len(got) < len(sent):
                response = client.receive()
                if response["response"] == "message":
                    got.append((response["id"], response["content"]))
            ids = [number for number, _ in got]
            self.assertEqual(ids, sorted(set(ids)))  # increasing, none twice
            self.assertEqual(sorted(text for _, text in got), sorted(sent))
            orders.append(got)
        self.assertTrue(all(order == orders[0] for order in orders))
        for index, sender in enumerate(senders):  # each sender's own in the order sent
            mine = [text for _, text in orders[0] if text.startswith(f"{tag} {index}.")]
            self.assertEqual(mine, [f"{tag} {index}.{n}" for n in range(rounds)])
        for client in clients:
            client.close()

    def test_both_nodes_at_once_then_one_restarted(self) -> None:
        self.chat(25, "a")
        self.nodes[0].kill()
        self.nodes[0] = self.start_node("node0again", None, "--msg-rate", "0")
        self.chat(25, "b")
        # History holds every message once, in id order.
        reader = LinesClient(self.nodes[1].port)
        self.addCleanup(reader.close)
        reader.sock.settimeout(10)
        reader.send("hello", {"protocol": 2})
        reader.receive()
        reader.send("login", "reader")
        reader.receive()
        reader.receive()  # #lobby's recent history
        contents: list[str] = []
        after = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reader.send("history", {"after": after})
            page = reader.receive()
            while page["response"] != "history":
                page = reader.receive()
            if not page["content"]:
                break
            contents += [message["content"] for message in page["content"]]
            after = page["content"][-1]["id"]
        self.assertEqual(len(contents), 200)
        self.assertEqual(len(set(contents)), 200)

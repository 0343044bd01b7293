"""The hub on a single node's parts: registry, batching, store-before-send."""

from __future__ import annotations

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from chatd.stores.history import HistoryError, MemoryHistory, SQLiteHistory, StoredMessage
from chatd.core.hub import Hub
from chatd.core.local import RETRY_FIRST, RETRY_FOR, RETRY_MAX, LocalBus
from chatd.core.rooms import Delivery, Draft
from chatd.frontends.json.encoding import delivery_lines, encode_message
from chatd.messages import ChatError

from tests.support import FakeClient, fired, make_factory, names_of, rebuild_hub


class CountingHistory(MemoryHistory):
    """A memory store that counts commits and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.fail = False

    def _write(self, batch: list[StoredMessage]) -> None:
        if self.fail:
            raise HistoryError("disk on fire")
        self.commits += 1
        super()._write(batch)


class Member:
    """A session: records what it got, and which of its drafts failed."""

    def __init__(self, name: str) -> None:
        self.name: str | None = name
        self.got: list[int] = []
        self.failed: list[str] = []

    def deliver(self, delivery: Delivery) -> None:
        self.got.extend(message.id for message in delivery.messages)
        assert delivery_lines(delivery) == b"".join(encode_message(message) + b"\n" for message in delivery.messages)

    def post_to(self, hub: Hub, text: str) -> Draft:
        draft = hub.post(self, text)
        draft.stored.addErrback(lambda failure: self.failed.append(draft.text))
        return draft

    def presence(self, user: str, status: str, room: str) -> None:
        pass

    def name_lost(self) -> None:
        pass


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.history = CountingHistory()
        self.hub = Hub.local(self.clock, self.history)

    def join(self, name: str) -> Member:
        member = Member(name)
        self.assertEqual(fired(self.hub.login(member, name)), name)
        return member

    def test_one_commit_per_reactor_turn(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        for i in range(5):
            (alice if i % 2 else bob).post_to(self.hub, f"m{i}")
        self.assertEqual(alice.got, [])
        self.clock.advance(0)
        self.assertEqual(self.history.commits, 1)
        self.assertEqual(alice.got, [1, 2, 3, 4, 5])
        self.assertEqual(bob.got, [1, 2, 3, 4, 5])

    def test_failed_commit_delivers_nothing_and_tells_the_sender(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.history.fail = True
        alice.post_to(self.hub, "lost")
        self.clock.advance(0)
        self.assertEqual((alice.got, bob.got), ([], []))
        self.assertEqual(alice.failed, ["lost"])
        self.history.fail = False
        alice.post_to(self.hub, "kept")
        self.clock.advance(0)
        self.assertEqual(bob.got, [1])  # the failed id is handed out again

    def test_stored_fires_after_delivery(self) -> None:
        alice = self.join("alice")
        order: list[str] = []
        draft = alice.post_to(self.hub, "x")
        draft.stored.addCallback(lambda message: order.append(f"{message.id} after delivery of {alice.got}"))
        self.assertEqual(order, [])
        self.clock.advance(0)
        self.assertEqual(order, ["1 after delivery of [1]"])

    def test_member_who_left_before_flush_gets_nothing(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        alice.post_to(self.hub, "x")
        self.hub.logout(bob)
        self.clock.advance(0)
        self.assertEqual(bob.got, [])

    def test_a_failing_member_hurts_nobody_else(self) -> None:
        alice, broken, bob = self.join("alice"), self.join("broken"), self.join("bob")

        def explode(delivery: Delivery) -> None:
            raise RuntimeError("a transport in a state nobody foresaw")

        broken.deliver = explode  # type: ignore[method-assign]  # a member that raises
        stored: list[int] = []
        draft = alice.post_to(self.hub, "x")
        draft.stored.addCallback(lambda message: stored.append(message.id))
        self.clock.advance(0)
        self.assertEqual((alice.got, bob.got, stored), ([1], [1], [1]))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_validation(self) -> None:
        alice = self.join("alice")
        for text, code in (("", "empty_message"), ("x" * 2001, "message_too_long")):
            error = self.assertRaises(ChatError, self.hub.post, alice, text)
            self.assertEqual(error.code, code)

    def test_names_and_logout(self) -> None:
        alice, bob = self.join("alice"), self.join("Bob")
        self.assertEqual(names_of(self.hub), ["alice", "Bob"])
        self.hub.logout(alice)
        self.assertEqual(names_of(self.hub), ["Bob"])
        self.assertTrue(self.hub.is_member(bob))
        self.assertFalse(self.hub.is_member(alice))


class FailedStoreProtocolTests(SynchronousTestCase):
    def test_sender_gets_an_error_with_its_ref(self) -> None:
        factory = make_factory()
        history = CountingHistory()
        rebuild_hub(factory.hub, history)
        client = FakeClient(factory)
        client.login("bob")
        history.fail = True
        client.send("msg", "x", ref="r")
        error = client.one()
        self.assertEqual((error["response"], error["code"], error["ref"]), ("error", "server_busy", "r"))


class SQLiteHubTests(SynchronousTestCase):
    """A hub on a real SQLite file: locked by another process, or full.

    Finding 12: a lock freezes nobody.  The store fails fast (a few ms) on the lock; the hub keeps the batch
    and tries again on the clock.  That a retry is scheduled on the Clock
    (rather than the commit having waited) is what shows the reactor was
    not blocked.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "chatd.sqlite3")
        self.history = SQLiteHistory(self.path)
        self.addCleanup(self.history.close)
        self.clock = Clock()
        self.hub = Hub.local(self.clock, self.history)
        self.alice, self.bob = Member("alice"), Member("bob")
        fired(self.hub.login(self.alice, "alice"))
        fired(self.hub.login(self.bob, "bob"))

    def lock(self) -> sqlite3.Connection:
        locker = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        return locker

    def retry_delays(self) -> list[float]:
        return [round(call.getTime() - self.clock.seconds(), 6) for call in self.clock.getDelayedCalls()]

    def test_retried_later_then_delivered_in_order(self) -> None:
        locker = self.lock()
        done: list[list[int]] = []
        first = self.alice.post_to(self.hub, "first")
        first.stored.addCallback(lambda _: done.append(list(self.alice.got)))
        self.clock.advance(0)
        self.assertEqual(self.retry_delays(), [RETRY_FIRST])  # the commit did not wait
        self.assertEqual((self.alice.got, self.alice.failed, done), ([], [], []))
        self.bob.post_to(self.hub, "second")  # joins the pending batch
        self.clock.advance(RETRY_FIRST)
        self.assertEqual(self.retry_delays(), [2 * RETRY_FIRST])
        self.assertEqual((self.bob.got, done), ([], []))
        locker.execute("ROLLBACK")
        self.clock.advance(2 * RETRY_FIRST)
        self.assertEqual(self.alice.got, [1, 2])
        self.assertEqual(self.bob.got, [1, 2])
        self.assertEqual(done, [[1, 2]])  # waiting requests go on after delivery
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual([m.text for m in self.history.recent("#lobby", None)], ["first", "second"])

    def test_lock_held_too_long_fails_the_batch(self) -> None:
        locker = self.lock()
        started = self.clock.seconds()
        self.alice.post_to(self.hub, "doomed")
        self.clock.advance(0)
        for _ in range(30):
            delays = self.retry_delays()
            if not delays:
                break
            self.assertLessEqual(delays[0], RETRY_MAX)
            self.clock.advance(delays[0])
        self.assertEqual(self.alice.failed, ["doomed"])
        self.assertEqual(self.bob.got, [])
        self.assertAlmostEqual(self.clock.seconds() - started, RETRY_FOR)
        locker.execute("ROLLBACK")
        self.alice.post_to(self.hub, "kept")
        self.clock.advance(0)
        self.assertEqual(self.bob.got, [1])  # the failed id is handed out again

    def test_shutdown_flush_is_one_last_try(self) -> None:
        locker = self.lock()
        ran: list[str] = []
        draft = self.alice.post_to(self.hub, "x")
        draft.stored.addBoth(lambda _: ran.append("after"))
        self.clock.advance(0)
        self.assertEqual(self.retry_delays(), [RETRY_FIRST])
        self.hub.flush()  # a pending retry does not make it wait
        self.assertEqual((self.alice.failed, ran), (["x"], ["after"]))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        locker.execute("ROLLBACK")
        self.alice.post_to(self.hub, "y")
        self.hub.flush()  # and it commits synchronously when it can
        self.assertEqual(self.bob.got, [1])

    def test_disk_full_is_logged_as_such(self) -> None:
        """Finding 10: the log names the real error, not the failed rollback."""
        events: list[dict] = []
        self.patch(LocalBus, "log", Logger(observer=events.append))
        db = self.history._connection()
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        self.alice.post_to(self.hub, "x" * 2000)
        self.clock.advance(0)
        self.assertEqual(self.alice.failed, ["x" * 2000])
        [line] = [formatEvent(event) for event in events if event["log_level"] == LogLevel.error]
        self.assertIn("database or disk is full", line)
        self.assertRaises(HistoryError, self.history.check)

"""The hub: registry, batching, store-before-send."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.history import HistoryError, MemoryHistory, StoredMessage
from chatd.hub import Hub
from chatd.messages import ChatError

from tests.support import FakeClient, make_factory


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
    def __init__(self, name: str) -> None:
        self.name: str | None = name
        self.got: list[int] = []
        self.failed: list[int] = []

    def deliver(self, message: StoredMessage) -> None:
        self.got.append(message.id)

    def deliver_many(self, batch: list[StoredMessage], lines: bytes) -> None:
        self.got.extend(message.id for message in batch)
        assert lines == b"".join(message.line for message in batch)

    def deliver_own(self, message: StoredMessage, ref: object) -> None:
        self.got.append(message.id)

    def message_failed(self, message: StoredMessage, ref: object) -> None:
        self.failed.append(message.id)

    def presence(self, user: str, status: str, room: str) -> None:
        pass

    def name_lost(self) -> None:
        pass


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.history = CountingHistory()
        self.hub = Hub(self.clock, self.history)

    def join(self, name: str) -> Member:
        member = Member(name)
        self.hub.login(member, name)
        return member

    def test_one_commit_per_reactor_turn(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        for i in range(5):
            self.hub.post(alice if i % 2 else bob, f"m{i}")
        self.assertEqual(alice.got, [])
        self.clock.advance(0)
        self.assertEqual(self.history.commits, 1)
        self.assertEqual(alice.got, [1, 2, 3, 4, 5])
        self.assertEqual(bob.got, [1, 2, 3, 4, 5])

    def test_failed_commit_delivers_nothing_and_tells_the_sender(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.history.fail = True
        self.hub.post(alice, "lost")
        self.clock.advance(0)
        self.assertEqual((alice.got, bob.got), ([], []))
        self.assertEqual(alice.failed, [1])
        self.history.fail = False
        self.hub.post(alice, "kept")
        self.clock.advance(0)
        self.assertEqual(bob.got, [1])  # the failed id is handed out again

    def test_after_flush_runs_after_delivery(self) -> None:
        alice = self.join("alice")
        order: list[str] = []
        self.hub.after_flush(lambda: order.append("nothing pending: at once"))
        self.hub.post(alice, "x")
        self.hub.after_flush(lambda: order.append(f"after delivery of {alice.got}"))
        self.clock.advance(0)
        self.assertEqual(order, ["nothing pending: at once", "after delivery of [1]"])

    def test_member_who_left_before_flush_gets_nothing(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.hub.post(alice, "x")
        self.hub.logout(bob)
        self.clock.advance(0)
        self.assertEqual(bob.got, [])

    def test_validation(self) -> None:
        alice = self.join("alice")
        for text, code in (("", "empty_message"), ("x" * 2001, "message_too_long")):
            error = self.assertRaises(ChatError, self.hub.post, alice, text)
            self.assertEqual(error.code, code)

    def test_names_and_logout(self) -> None:
        alice, bob = self.join("alice"), self.join("Bob")
        self.assertEqual(self.hub.names(), ["alice", "Bob"])
        self.hub.logout(alice)
        self.assertEqual(self.hub.names(), ["Bob"])
        self.assertTrue(self.hub.is_member(bob))
        self.assertFalse(self.hub.is_member(alice))


class FailedStoreProtocolTests(SynchronousTestCase):
    def test_sender_gets_an_error_with_its_ref(self) -> None:
        factory = make_factory()
        history = CountingHistory()
        factory.hub.history = history
        client = FakeClient(factory)
        client.login("bob")
        history.fail = True
        client.send("msg", "x", ref="r")
        error = client.one()
        self.assertEqual((error["response"], error["code"], error["ref"]), ("error", "server_busy", "r"))

"""The JSON front-end's one-call fan-out (``ChatProtocol.deliver``) does what
the general path (``Session.deliver`` -> ``write_delivery`` -> ``send_block``
-> ``write`` -> ``check_sendq``) does: same bytes, same send-queue count,
same drop of a reader over ``max_sendq``."""

from __future__ import annotations

from typing import Any, Callable

from chatd.core.rooms import Delivery
from chatd.core.session import Session
from chatd.frontends.json.framing import LinesOutput
from chatd.stores.history import StoredMessage

from tests.support import FakeClient, decode_stream
from tests.test_protocol import ProtocolTestCase


def _batch(*texts: str, room: str = "#lobby") -> Delivery:
    messages = [StoredMessage(100 + i, room, "someone", text, "2025-11-24T00:00:00.000Z") for i, text in enumerate(texts)]
    return Delivery(room, messages, [None] * len(messages))


def _general(client: FakeClient) -> Callable[[Delivery], None]:
    """The general path of ``client``'s session, bypassing the one-call override."""
    protocol: Any = client.protocol
    return lambda delivery: Session.deliver(protocol, delivery)


class FastPathTests(ProtocolTestCase):
    config = {"max_sendq": 100_000}

    def test_the_shared_block_is_written_once_per_member_unchanged(self) -> None:
        first, second = self.client("first"), self.client("second")
        for client in (first, second):
            client.received()
            client.transport.writes.clear()
        delivery = _batch("one", "two")
        first.protocol.deliver(delivery)
        second.protocol.deliver(delivery)
        block = delivery.cached["json-lines"]
        # Encoded once: the very same bytes object went to both.
        self.assertIs(first.transport.writes[0], block)
        self.assertIs(second.transport.writes[0], block)
        self.assertEqual([r["content"] for r in decode_stream(block)], ["one", "two"])

    def test_same_output_as_the_general_path(self) -> None:
        fast, general = self.client("fast"), self.client("general")
        fast.received()
        general.received()
        for texts in (("a",), ("b", "c"), ("d" * 500,)):
            fast.protocol.deliver(_batch(*texts))
            _general(general)(_batch(*texts))
        self.assertEqual(fast.transport.value(), general.transport.value())
        self.assertTrue(fast.transport.value())

    def test_send_queue_counted_once_paused(self) -> None:
        fast, general = self.client("fast"), self.client("general")
        for client in (fast, general):
            self.assertIsInstance(client.protocol.output, LinesOutput)
            client.transport.producer.pauseProducing()
        fast.protocol.deliver(_batch("x" * 1000))
        _general(general)(_batch("x" * 1000))
        self.assertGreater(fast.protocol.sendq.unsent, fast.protocol.sendq.buffer_size)
        self.assertEqual(fast.protocol.sendq.unsent, general.protocol.sendq.unsent)

    def test_flowing_output_counts_nothing(self) -> None:
        client = self.client("reader")
        client.protocol.deliver(_batch("x" * 1000))
        self.assertFalse(client.protocol.sendq.backlogged)
        self.assertEqual(client.protocol.sendq.unsent, 0)

    def test_a_pause_caused_by_the_write_itself_is_counted(self) -> None:
        client = self.client("reader")
        sendq = client.protocol.sendq
        write: Any = client.protocol._transport_write

        def pausing_write(data: bytes) -> None:
            write(data)
            sendq.pauseProducing()  # as Twisted does when a write fills the buffer

        client.protocol._transport_write = pausing_write
        delivery = _batch("y" * 300)
        client.protocol.deliver(delivery)
        self.assertEqual(sendq.unsent, sendq.buffer_size + len(delivery.cached["json-lines"]))

    def test_over_the_limit_dropped_on_the_fast_path(self) -> None:
        slow = self.client("slow")
        slow.transport.producer.pauseProducing()
        for i in range(200):
            slow.protocol.deliver(_batch(f"{i} " + "z" * 1000))
            if slow.transport.disconnected:
                break
        self.assertTrue(slow.transport.disconnected)
        self.assertTrue(slow.protocol.closing)
        self.assertEqual(self.factory.hub.metrics.registry.get_sample_value("chatd_sendq_drops_total"), 1)
        before = slow.transport.value()
        slow.protocol.deliver(_batch("after the drop"))
        self.assertEqual(slow.transport.value(), before)  # nothing more once closing

    def test_a_join_being_answered_holds_the_batch(self) -> None:
        client = self.client("joiner")
        client.received()
        client.protocol._joining.add("#later")
        client.protocol.deliver(_batch("held", room="#later"))
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(len(client.protocol._held_deliveries), 1)

    def test_own_message_with_ref_echoed_with_it(self) -> None:
        poster, other = self.client("poster"), self.client("other")
        poster.received()
        other.received()
        poster.send("msg", "hello", ref=7)
        echo = [r for r in poster.received() if r["response"] == "message"]
        seen = [r for r in other.received() if r["response"] == "message"]
        self.assertEqual([r.get("ref") for r in echo], [7])
        self.assertEqual([r.get("ref") for r in seen], [None])
        self.assertEqual(echo[0]["content"], seen[0]["content"])

    def test_classic_member_is_paced(self) -> None:
        classic = self.client(newline=False)
        classic.send("login", "classic")
        classic.received()
        classic.protocol.deliver(_batch("p", "q"))
        got = classic.received()  # drained through the pacing queue
        self.assertEqual([r["content"] for r in got], ["p", "q"])
        self.assertNotIn(b"\n", b"".join(classic.transport.writes[-2:]))


class PresenceFastPathTests(ProtocolTestCase):
    """``ChatProtocol.presence`` writes what ``Session.presence`` would."""

    def v2(self, name: str) -> FakeClient:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2})
        client.login(name)
        client.received()
        client.transport.writes.clear()
        return client

    def test_same_bytes_as_the_general_path_and_one_shared_line(self) -> None:
        fast, general, other = self.v2("fast"), self.v2("general"), self.v2("other")
        for client in (fast, general, other):  # the later logins' presence
            client.received()
            client.transport.writes.clear()
        for user, status in (("dave", "online"), ("dave", "offline"), ("erin", "online")):
            fast.protocol.presence(user, status, "#lobby")
            other.protocol.presence(user, status, "#lobby")
            Session.presence(general.protocol, user, status, "#lobby")
        self.assertEqual(fast.transport.value(), general.transport.value())
        self.assertIs(fast.transport.writes[0], other.transport.writes[0])  # encoded once
        shown = [(r["response"], r["content"]["user"], r["content"]["status"]) for r in decode_stream(fast.transport.value())]
        self.assertEqual(shown, [("presence", "dave", "online"), ("presence", "dave", "offline"), ("presence", "erin", "online")])

    def test_a_v1_client_gets_none_and_a_held_one_waits(self) -> None:
        v1 = self.client("oldie")
        v1.received()
        v1.protocol.presence("dave", "online", "#lobby")
        self.assertEqual(v1.transport.value(), b"")
        held = self.v2("held")
        held.protocol._waiting_for_store = True  # its own message is not echoed yet
        held.protocol.presence("dave", "online", "#lobby")
        self.assertEqual(held.transport.value(), b"")
        self.assertEqual(len(held.protocol._held), 1)

    def test_paused_output_is_counted_as_the_general_path_counts_it(self) -> None:
        fast, general = self.v2("fast"), self.v2("general")
        fast.received()
        for client in (fast, general):
            client.transport.producer.pauseProducing()
        fast.protocol.presence("dave", "online", "#lobby")
        Session.presence(general.protocol, "dave", "online", "#lobby")
        self.assertTrue(fast.protocol.sendq.backlogged)
        self.assertEqual(fast.protocol.sendq.unsent, general.protocol.sendq.unsent)

"""Issue 13, findings 1, 3, 5, 13, 14 and 18: the request budget, work per
turn, reading only while answers are read, every close ending in a closed
socket, store read errors, out-of-range ids and a clock that steps back."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.json.framing import Decoded
from chatd.stores.history import HistoryError, MemoryHistory, StoredMessage
from chatd.core.limits import FloodMeter, RequestBudget, SendQueueMeter, TokenBucket
from chatd.core.session import CLOSE_GRACE, MAX_REQUESTS_PER_TURN
from chatd.frontends.json.protocol import request_cost

from tests.support import FakeClient, RecordingTransport, make_factory, names_of, stored, rebuild_hub
from tests.test_protocol import ProtocolTestCase

BUDGET = {"request_rate": 20.0, "request_burst": 100.0}


def pings(count: int, start: int = 0) -> bytes:
    """``count`` ping requests as lines, numbered from ``start``."""
    return b"".join(b'{"request": "ping", "content": %d}\n' % i for i in range(start, start + count))


def pongs(client: FakeClient) -> list[Any]:
    return [r["content"] for r in client.received() if r["response"] == "pong"]


class RequestBudgetTests(SynchronousTestCase):
    def test_debt_then_wait(self) -> None:
        clock = Clock()
        budget = RequestBudget(clock, rate=10, burst=5)
        budget.charge(4)
        self.assertEqual(budget.wait(), 0)
        budget.charge(21)  # one expensive request is never refused for its size
        self.assertAlmostEqual(budget.wait(), 2.0)
        clock.advance(1.5)
        self.assertAlmostEqual(budget.wait(), 0.5)
        clock.advance(0.5)
        self.assertEqual(budget.wait(), 0)
        clock.advance(100)
        self.assertEqual(budget.balance, 5)  # refilled up to the burst, no more

    def test_behind(self) -> None:
        budget = RequestBudget(Clock(), rate=10, burst=5)
        self.assertEqual(budget.behind(5), 0)
        self.assertAlmostEqual(budget.behind(105), 10.0)

    def test_zero_rate_is_unlimited(self) -> None:
        budget = RequestBudget(Clock(), rate=0, burst=1)
        budget.charge(1e9)
        self.assertEqual((budget.wait(), budget.behind(1e9)), (0, 0))


class CostTests(SynchronousTestCase):
    def cost(self, request: Any, **config: Any) -> float:
        return request_cost(Decoded(request, None, True), make_factory(**config))

    def test_every_request_costs(self) -> None:
        for request in ({"request": "ping"}, {"request": "help"}, {"request": "nope"}, {"x": 1}, {"request": "msg"}):
            self.assertGreaterEqual(self.cost(request), 1, request)
        self.assertEqual(request_cost(Decoded(None, "bad_json", False), make_factory()), 1)

    def test_history_costs_by_the_rows_it_may_return(self) -> None:
        small = self.cost({"request": "history", "content": {"limit": 1}})
        default = self.cost({"request": "history", "content": {}})
        large = self.cost({"request": "history", "content": {"limit": 500}})
        huge = self.cost({"request": "history", "content": {"limit": 10**30}})
        self.assertLess(small, default)
        self.assertLess(default, large)
        self.assertEqual(large, huge)  # clamped like the page itself
        self.assertEqual(large, 21)

    def test_login_costs_by_its_history(self) -> None:
        self.assertLess(
            self.cost({"request": "login"}, history_on_login=0), self.cost({"request": "login"}, history_on_login=100)
        )
        self.assertEqual(self.cost({"request": "login"}, history_on_login=None), 21)

    def test_names_login_logout_cost_by_the_connections(self) -> None:
        factory = make_factory()
        for kind in ("names", "login", "logout"):
            before = request_cost(Decoded({"request": kind}, None, True), factory)
            clients = [FakeClient(factory) for _ in range(300)]
            after = request_cost(Decoded({"request": kind}, None, True), factory)
            self.assertAlmostEqual(after - before, 3.0)
            for client in clients:
                client.disconnect()


class FakelagTests(ProtocolTestCase):
    config = BUDGET

    def test_within_the_burst_at_once(self) -> None:
        client = self.client("bob")
        client.send_raw(pings(60))
        self.assertEqual(pongs(client), list(range(60)))

    def test_over_the_burst_waits_in_order(self) -> None:
        client = self.client("bob")  # login cost 5 of the 100
        client.send_raw(pings(200))
        first = pongs(client)
        self.assertEqual(first, list(range(len(first))))
        self.assertLess(len(first), 100)
        self.assertEqual(client.protocol.transport.producerState, "paused")  # not reading meanwhile
        self.clock.advance(1.0)  # 20 more units
        second = pongs(client)
        self.assertEqual(second, list(range(len(first), len(first) + len(second))))
        self.assertIn(len(second), (20, 21))
        self.clock.advance(10.0)
        rest = pongs(client)
        self.assertEqual(first + second + rest, list(range(200)))
        self.assertEqual(client.protocol.transport.producerState, "producing")
        self.assertFalse(client.closed)

    def test_every_request_type_is_charged(self) -> None:
        client = self.client("bob")
        budget = client.protocol.budget
        for data in (b"{}\n", b"garbage\n", b'{"request": "help"}\n', b'{"request": "nope"}\n', b'{"request": "names"}\n'):
            budget.charge(budget.balance + 1)  # in debt: the next request waits
            client.send_raw(data)
            self.assertEqual(client.received(), [], data)  # waits
            self.clock.advance(0.2)
            self.assertEqual(len(client.received()), 1, data)

    def test_history_pages_are_paced_by_their_size(self) -> None:
        poster = self.client("poster")
        for i in range(100):
            self.factory.hub.post(poster.protocol, f"m{i}")
        self.factory.hub.flush()
        client = self.client("bob")
        request = b'{"request": "history", "content": {"limit": 500}}\n'
        client.send_raw(request * 8)  # 168 units: 5 at once (100 - 5 for login)
        self.assertEqual(len(client.received()), 5)
        self.clock.advance(1.05)  # 21 units
        self.assertEqual(len(client.received()), 1)

    def test_flood_is_rate_limited_then_closed(self) -> None:
        flooder, other = self.client("flooder"), self.client("other")
        flooder.send_raw(b"{}\n" * 20_000)
        responses = flooder.received()
        self.assertLess(len(responses), 200)  # the flood itself was never handled
        self.assertEqual(responses[-1]["code"], "rate_limited")
        self.assertIn("Closing", responses[-1]["content"])
        self.assertTrue(flooder.closed)
        other.send("ping", "still here")
        self.assertEqual(other.one()["content"], "still here")

    def test_garbage_costs_by_its_bytes(self) -> None:
        flooder = self.client("flooder")
        for reads in range(1, 100):
            flooder.send_raw(b"x" * 60_000)  # one bad_json per read at most
            if flooder.closed:
                break
        self.assertLess(reads, 30)
        self.assertIn("Flooding", flooder.received()[-1]["content"])

    def test_input_debt_pauses_reading(self) -> None:
        client = self.client("bob")
        client.send_raw(b" " * 500_000)  # whitespace: no request, 122 units
        self.assertEqual(client.protocol.transport.producerState, "paused")
        self.clock.advance(2)
        self.assertEqual(client.protocol.transport.producerState, "producing")
        client.send("ping", 1)
        self.assertEqual(client.one()["content"], 1)

    def test_msg_keeps_its_own_rate_limit_answer(self) -> None:
        self.factory = make_factory(msg_rate=10.0, msg_burst=20.0, **BUDGET)
        client = self.client("bob")
        for i in range(25):
            client.send("msg", f"m{i}")
        codes = [r.get("code") for r in client.received()]
        self.assertEqual(codes.count(None), 20)
        self.assertEqual(codes.count("rate_limited"), 5)


class WorkPerTurnTests(ProtocolTestCase):
    """Without a budget too, one connection gets a bounded share of a turn."""

    def test_bounded_per_turn(self) -> None:
        client = self.client("bob")
        client.protocol.dataReceived(pings(1000))  # no clock turn yet
        self.assertEqual(len(pongs(client)), MAX_REQUESTS_PER_TURN)
        self.assertEqual(client.protocol.transport.producerState, "paused")
        other = self.client("alice")
        other.send("ping", "me first")
        self.assertEqual(other.one()["content"], "me first")
        self.clock.advance(0)
        self.assertEqual(len(pongs(client)), 1000 - MAX_REQUESTS_PER_TURN)
        self.assertEqual(client.protocol.transport.producerState, "producing")


class BackpressureTransport(RecordingTransport):
    """Like Twisted's TCP transport: over ``bufferSize`` unsent bytes, it
    pauses its producer on *every* write; it sends nothing until told."""

    bufferSize = 4096

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.unsent = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and self.unsent > self.bufferSize:
            self.producer.pauseProducing()

    def drain(self) -> None:
        """The peer read everything."""
        self.unsent = 0
        if self.producer is not None:
            self.producer.resumeProducing()


class BackpressureClient(FakeClient):
    def __init__(self, factory: Any) -> None:
        self.newline = True
        self.factory = factory
        self.transport = BackpressureTransport(next(self._ports))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)


class SendQueueFindingTests(ProtocolTestCase):
    config = {"max_sendq": 100_000}

    def test_meter_keeps_counting_through_repeated_pauses(self) -> None:
        meter = SendQueueMeter(buffer_size=100)
        meter.pauseProducing()
        meter.wrote(50)
        meter.pauseProducing()  # Twisted: again, on the next write
        meter.wrote(50)
        self.assertEqual(meter.unsent, 200)

    def test_lines_reader_that_never_reads_is_cut(self) -> None:
        sleeper = BackpressureClient(self.factory)
        sleeper.send("login", "sleeper")
        poster = self.client("poster")
        for i in range(500):  # small messages: one write each
            poster.send("msg", f"{i} " + "x" * 300)
            if sleeper.transport.disconnected:
                break
        self.assertTrue(sleeper.transport.disconnected)  # aborted
        self.assertLess(sleeper.transport.unsent, 2 * 100_000)

    def test_requests_wait_while_answers_are_not_read(self) -> None:
        client = BackpressureClient(self.factory)
        client.send("login", "bob")
        client.protocol.sendq.pauseProducing()  # the transport says: full
        client.send_raw(pings(3))
        self.assertEqual(pongs(client), [])
        self.assertEqual(client.transport.producerState, "paused")
        client.transport.drain()
        self.assertEqual(pongs(client), [0, 1, 2])
        self.assertEqual(client.transport.producerState, "producing")


class ClosePathTests(ProtocolTestCase):
    """Whatever the peer does, a close ends in a closed socket."""

    config = {"login_timeout": 5.0, "idle_timeout": 30.0}

    def assertClosedWithinGrace(self, client: FakeClient) -> None:
        self.assertTrue(client.closed)
        self.assertFalse(client.transport.disconnected)  # asked politely first
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(client.transport.disconnected)  # then aborted

    def test_login_timeout(self) -> None:
        client = self.client()
        self.clock.advance(5)
        self.assertClosedWithinGrace(client)

    def test_too_long(self) -> None:
        client = self.client("bob")
        client.send_raw(b'"' + b"x" * 20000)
        self.assertEqual(client.received()[-1]["code"], "too_long")
        self.assertClosedWithinGrace(client)

    def test_idle_timeout(self) -> None:
        self.client("bob")
        client = self.client("alice")
        self.clock.advance(30)
        self.assertClosedWithinGrace(client)

    def test_closed_connection_reads_again_and_drops_its_producer(self) -> None:
        client = BackpressureClient(self.factory)
        client.send("login", "bob")
        client.protocol.sendq.pauseProducing()  # backlogged: reading stops
        client.send_raw(pings(3))
        self.assertEqual(client.transport.producerState, "paused")
        client.protocol.close_after_output()
        # Reading again, so the peer's close is seen; and no producer left
        # registered, which would keep a TLS transport from shutting down.
        self.assertEqual(client.transport.producerState, "producing")
        self.assertIsNone(client.transport.producer)
        self.assertTrue(client.closed)

    def test_closed_when_its_output_never_drains(self) -> None:
        self.factory = make_factory(clock=self.clock, **BUDGET)
        client = BackpressureClient(self.factory)
        client.send("login", "bob")
        client.protocol.sendq.pauseProducing()
        client.protocol.dataReceived(b"{}\n" * 20_000)  # a flood while backlogged
        self.assertClosedWithinGrace(client)
        client.disconnect()
        self.assertEqual((names_of(self.factory.hub), self.factory.connections), ([], 0))

    def test_no_abort_after_a_clean_close(self) -> None:
        client = self.client()
        self.clock.advance(5)
        client.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FailingHistory(MemoryHistory):
    """A store whose reads fail (a corrupt database)."""

    def _newest(self, room: str, limit: int | None) -> list[StoredMessage]:
        raise HistoryError("cannot read history database x: database disk image is malformed")

    _after = _before = lambda self, *args: FailingHistory._newest(self, "", None)  # type: ignore[assignment]


class HistoryReadErrorTests(ProtocolTestCase):
    def setUp(self) -> None:
        super().setUp()
        rebuild_hub(self.factory.hub, FailingHistory())

    def test_login_history(self) -> None:
        client = self.client()
        client.send("login", "bob", ref="r1")
        info, error = client.received()
        self.assertEqual(info["response"], "info")
        self.assertEqual((error["code"], error["ref"]), ("server_busy", "r1"))
        self.assertFalse(client.closed)
        client.send("names")
        self.assertEqual(client.one()["content"], "bob")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_history_request(self) -> None:
        client = self.client("bob")
        for query in ({}, {"after": 3}, {"before": 3}):
            client.send("history", query, ref=7)
            error = client.one()
            self.assertEqual((error["code"], error["ref"]), ("server_busy", 7), query)
        self.assertFalse(client.closed)


class IdRangeTests(ProtocolTestCase):
    def test_ids_past_64_bits_are_bad_requests(self) -> None:
        client = self.client("bob")
        for key in ("before", "after", "limit"):
            for value in (2**63, 2**64, 10**30):
                client.send("history", {key: value})
                self.assertEqual(client.one()["code"], "bad_request", (key, value))
        client.send("history", {"after": 2**63 - 1})
        self.assertEqual(client.one()["content"], [])
        self.assertFalse(client.closed)


class BackwardClockTests(SynchronousTestCase):
    def test_bucket_and_meter_survive_an_hour_back(self) -> None:
        clock = Clock()
        clock.advance(1_764_000_000)
        bucket, meter = TokenBucket(clock, rate=10, burst=20), FloodMeter(clock, rate=10, limit=40)
        clock.rightNow -= 3600
        self.assertTrue(bucket.available())
        meter.reject()
        clock.advance(1)
        self.assertTrue(bucket.available())
        self.assertFalse(meter.reject())

    def test_users_not_disconnected_after_a_step_back(self) -> None:
        factory = make_factory(msg_rate=10.0, msg_burst=20.0, **BUDGET)
        client = FakeClient(factory)
        client.login("bob")
        factory.clock.rightNow -= 3600
        for i in range(5):
            client.send("msg", f"m{i}")
            factory.clock.advance(0.2)
        responses = client.received()
        self.assertEqual([r["content"] for r in responses], [f"m{i}" for i in range(5)])
        self.assertFalse(client.closed)




class NoDelayTransport(RecordingTransport):
    """A transport with a TCP socket's Nagle switch."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class NoDelayTests(SynchronousTestCase):
    def test_nagle_off_where_there_is_tcp(self) -> None:
        factory = make_factory()
        transport = NoDelayTransport(12345)
        protocol = factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        protocol.makeConnection(transport)
        self.assertTrue(transport.no_delay)
        FakeClient(factory).login("bob")  # and no harm where there is none

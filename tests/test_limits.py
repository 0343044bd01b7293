"""Abuse resistance: rate limit, flood, send queue, connection caps, idle
timeout, hostile input (PROTOCOL.md section 4, "Disconnects and limits")."""

from __future__ import annotations


from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.core.limits import FloodMeter, SendQueueMeter, TokenBucket

from tests.support import FakeClient, decode_stream, make_factory, names_of, stored
from tests.test_protocol import ProtocolTestCase


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, rate=10, burst=3)
        for _ in range(3):
            self.assertTrue(bucket.available())
            bucket.take()
        self.assertFalse(bucket.available())
        clock.advance(0.1)
        self.assertTrue(bucket.available())
        bucket.take()
        self.assertFalse(bucket.available())
        clock.advance(100)
        for _ in range(3):
            bucket.take()
        self.assertFalse(bucket.available())

    def test_zero_rate_is_unlimited(self) -> None:
        bucket = TokenBucket(Clock(), rate=0, burst=1)
        for _ in range(1000):
            self.assertTrue(bucket.available())
            bucket.take()


class FloodMeterTests(SynchronousTestCase):
    def test_forgives_at_the_rate(self) -> None:
        clock = Clock()
        meter = FloodMeter(clock, rate=10, limit=40)
        # 5 rejections a second above the rate: forgiven as fast as they come.
        for _ in range(500):
            self.assertFalse(meter.reject())
            clock.advance(0.2)

    def test_persistent_flood_trips(self) -> None:
        clock = Clock()
        meter = FloodMeter(clock, rate=10, limit=40)
        tripped = []
        for step in range(200):
            if meter.reject():
                tripped.append(step)
                break
            clock.advance(0.05)  # 20 rejections a second
        self.assertEqual(len(tripped), 1)


class SendQueueMeterTests(SynchronousTestCase):
    def test_counts_only_while_backlogged(self) -> None:
        meter = SendQueueMeter(buffer_size=100)
        meter.wrote(1000)
        self.assertEqual(meter.unsent, 0)
        meter.pauseProducing()
        meter.wrote(50)
        self.assertEqual(meter.unsent, 150)
        meter.resumeProducing()
        self.assertEqual(meter.unsent, 0)


class RateLimitTests(ProtocolTestCase):
    config = {"msg_rate": 10.0, "msg_burst": 20.0}

    def messages_and_errors(self, client: FakeClient) -> tuple[int, list[str]]:
        responses = client.received()
        sent = sum(1 for r in responses if r["response"] == "message")
        return sent, [r["code"] for r in responses if r["response"] == "error"]

    def test_burst_then_rate_limited(self) -> None:
        client = self.client("bob")
        for i in range(25):
            client.send("msg", f"m{i}")
        sent, errors = self.messages_and_errors(client)
        self.assertEqual((sent, errors), (20, ["rate_limited"] * 5))
        self.assertEqual(len(stored(self.factory.hub)), 20)

    def test_refill(self) -> None:
        client = self.client("bob")
        for i in range(20):
            client.send("msg", f"m{i}")
        client.received()
        self.clock.advance(0.1)
        client.send("msg", "one more")
        client.send("msg", "too many")
        sent, errors = self.messages_and_errors(client)
        self.assertEqual((sent, errors), (1, ["rate_limited"]))

    def test_rejections_take_no_token(self) -> None:
        client = self.client("bob")
        for i in range(20):
            client.send("msg", f"m{i}")
        for _ in range(5):
            client.send("msg", "rejected")
        client.received()
        self.clock.advance(0.1)
        client.send("msg", "accepted")
        self.assertEqual(client.one()["content"], "accepted")

    def test_invalid_messages_take_no_token(self) -> None:
        client = self.client("bob")
        for _ in range(30):
            client.send("msg", "   ")
        client.received()
        for i in range(20):
            client.send("msg", f"m{i}")
        sent, errors = self.messages_and_errors(client)
        self.assertEqual((sent, errors), (20, []))

    def test_rate_limited_comes_before_the_message_checks(self) -> None:
        client = self.client("bob")
        for i in range(20):
            client.send("msg", f"m{i}")
        client.received()
        client.send("msg", "")
        self.assertEqual(client.one()["code"], "rate_limited")
        client.send("msg", 5)
        self.assertEqual(client.one()["code"], "bad_request")

    def test_per_connection(self) -> None:
        alice, bob = self.client("alice"), self.client("bob")
        for i in range(20):
            alice.send("msg", f"m{i}")
        alice.send("msg", "over")
        bob.send("msg", "fine")
        self.assertIn("rate_limited", self.messages_and_errors(alice)[1])
        self.assertEqual(self.messages_and_errors(bob), (21, []))

    def test_names_not_rate_limited(self) -> None:
        client = self.client("bob")
        for i in range(25):
            client.send("msg", f"m{i}")
        client.received()
        client.send("names")
        self.assertEqual(client.one()["content"], "bob")

    def test_persistent_flood_is_disconnected(self) -> None:
        flooder, other = self.client("flooder"), self.client("other")
        for _ in range(100):  # 5 seconds at 60 messages a second: 6x the rate
            for _ in range(3):
                flooder.send("msg", "spam")
            self.clock.advance(0.05)
            if flooder.closed:
                break
        self.assertTrue(flooder.closed)
        last = flooder.received()[-1]
        self.assertEqual(last["code"], "rate_limited")
        self.assertIn("Closing", last["content"])
        other.send("names")
        self.assertIn("other", other.received()[-1]["content"])

    def test_slightly_fast_sender_is_not_disconnected(self) -> None:
        client = self.client("eager")
        for _ in range(300):  # 30 seconds at 12.5 messages a second
            client.send("msg", "hi")
            self.clock.advance(0.08)
        self.assertFalse(client.closed)


class NoRateLimitTests(ProtocolTestCase):
    config = {"msg_rate": 0.0}

    def test_zero_means_no_limit(self) -> None:
        client = self.client("bob")
        for i in range(500):
            client.send("msg", f"m{i}")
        self.assertEqual(len(stored(self.factory.hub)), 500)
        self.assertFalse(client.closed)


class DefaultLimitTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        from chatd.server import ServerConfig

        config = ServerConfig()
        self.assertEqual((config.msg_rate, config.msg_burst), (10.0, 20.0))
        self.assertEqual(config.max_sendq, 1024 * 1024)
        self.assertEqual((config.max_per_ip, config.max_connections), (20, 10000))
        self.assertEqual(config.idle_timeout, 0.0)


class SendQueueTests(ProtocolTestCase):
    config = {"max_sendq": 100_000}

    def test_slow_reader_dropped_others_served(self) -> None:
        slow, fast, poster = self.client("slow"), self.client("fast"), self.client("poster")
        self.assertIs(slow.transport.producer, slow.protocol.sendq)
        slow.transport.producer.pauseProducing()  # its socket stopped taking data
        for i in range(200):
            poster.send("msg", f"{i} " + "x" * 1000)
            if slow.transport.disconnected:
                break
        self.assertTrue(slow.transport.disconnected)  # aborted, not waiting to flush
        self.assertEqual(self.factory.hub.metrics.registry.get_sample_value("chatd_sendq_drops_total"), 1)
        for i in range(10):
            poster.send("msg", f"after {i}")
        got = [r["content"] for r in fast.received() if r["response"] == "message"]
        self.assertEqual(got[-1], "after 9")
        self.assertEqual(len(got), len(stored(self.factory.hub)))

    def test_reader_that_catches_up_is_kept(self) -> None:
        reader, poster = self.client("reader"), self.client("poster")
        for _ in range(20):
            reader.transport.producer.pauseProducing()
            for i in range(30):
                poster.send("msg", "x" * 1000)
            reader.transport.producer.resumeProducing()  # its buffer drained
        self.assertFalse(reader.transport.disconnected)

    def test_classic_pacing_queue_counts(self) -> None:
        classic = self.client(newline=False)
        classic.send("login", "classic")
        for _ in range(300):
            classic.send_raw(b'{"request": "help"}' * 5)
            if classic.transport.disconnected:
                break
        self.assertTrue(classic.transport.disconnected)
        self.assertEqual(classic.protocol.output.queued_bytes, 0)  # dropped with it


class NoSendQueueLimitTests(ProtocolTestCase):
    config = {"max_sendq": 0}

    def test_zero_means_no_limit(self) -> None:
        slow, poster = self.client("slow"), self.client("poster")
        slow.transport.producer.pauseProducing()
        for _ in range(100):
            poster.send("msg", "x" * 2000)
        self.assertFalse(slow.transport.disconnected)


class ConnectionCapTests(SynchronousTestCase):
    def busy(self, client: FakeClient) -> bool:
        data = client.transport.value()
        if not data.endswith(b"\n"):
            return False
        [response] = decode_stream(data)
        return response["code"] == "server_busy" and bool(client.transport.disconnecting)

    def test_per_ip(self) -> None:
        factory = make_factory(max_per_ip=20)
        clients = [FakeClient(factory, host="10.0.0.1") for _ in range(20)]
        self.assertFalse(any(self.busy(client) for client in clients))
        extra = FakeClient(factory, host="10.0.0.1")
        self.assertTrue(self.busy(extra))
        other = FakeClient(factory, host="10.0.0.2")
        self.assertFalse(self.busy(other))
        clients[0].disconnect()
        again = FakeClient(factory, host="10.0.0.1")
        self.assertFalse(self.busy(again))
        again.login("bob")
        self.assertEqual(names_of(factory.hub), ["bob"])

    def test_loopback_is_not_exempt(self) -> None:
        factory = make_factory(max_per_ip=2)
        FakeClient(factory, host="127.0.0.1")
        FakeClient(factory, host="127.0.0.1")
        self.assertTrue(self.busy(FakeClient(factory, host="127.0.0.1")))

    def test_total(self) -> None:
        factory = make_factory(max_connections=3)
        clients = [FakeClient(factory, host=f"10.0.0.{i}") for i in range(3)]
        self.assertTrue(self.busy(FakeClient(factory, host="10.0.0.9")))
        clients[1].disconnect()
        self.assertFalse(self.busy(FakeClient(factory, host="10.0.0.9")))

    def test_zero_means_no_limit(self) -> None:
        factory = make_factory(max_per_ip=0, max_connections=0)
        clients = [FakeClient(factory, host="10.0.0.1") for _ in range(100)]
        self.assertFalse(any(self.busy(client) for client in clients))

    def test_counts_return_to_zero(self) -> None:
        factory = make_factory(max_per_ip=5)
        clients = [FakeClient(factory, host="10.0.0.1") for _ in range(5)]
        for client in clients:
            client.disconnect()
            client.disconnect()  # a second notice must not count twice
        self.assertEqual((factory.connections, factory.per_ip), (0, {}))


class IdleTimeoutTests(ProtocolTestCase):
    config = {"idle_timeout": 30.0}

    def test_idle_user_disconnected(self) -> None:
        client = self.client("bob")
        self.clock.advance(29.9)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)
        self.assertTrue(client.closed)
        self.assertIn("Idle", client.received()[-1]["content"])
        self.assertEqual(names_of(self.factory.hub), ["bob"])  # until the connection is gone
        client.disconnect()
        self.assertEqual(names_of(self.factory.hub), [])

    def test_activity_resets(self) -> None:
        client = self.client("bob")
        for _ in range(10):
            self.clock.advance(20)
            client.send("names")
        self.assertFalse(client.closed)

    def test_not_before_login(self) -> None:
        client = self.client()
        self.clock.advance(45)
        self.assertFalse(client.closed)  # the 60 s login timeout applies instead
        self.clock.advance(15)
        self.assertTrue(client.closed)

    def test_logout_cancels(self) -> None:
        client = self.client("bob")
        client.send("logout")
        self.clock.advance(59)
        self.assertFalse(client.closed)


class NoIdleTimeoutTests(ProtocolTestCase):
    def test_off_by_default(self) -> None:
        client = self.client("bob")
        self.clock.advance(100000)
        self.assertFalse(client.closed)


class HostileInputTests(ProtocolTestCase):
    """Each answered with an error; the connection stays usable."""

    def test_each_is_an_error_not_a_crash(self) -> None:
        client = self.client("bob")
        hostile = [
            b"[" * 5000 + b"]" * 5000 + b"\n",
            b'{"request": "msg", "content": ' + b"[" * 100 + b"]" * 100 + b"}\n",
            b'{"request": "msg", "content": ' + b"9" * 10000 + b"}\n",
            b'{"request": "msg", "content": 1e999999}\n',
            b'{"request": "msg", "content": "a\xff\xfeb"}\n',
            b'{"request": "msg", "content": "a\x00b"}\n',
            b"\x00\x00\x00\n",
            b'{"request": "login", "content": "\\u0000bob"}\n',
            b'{"request": "msg\\u0000", "content": "x"}\n',
            b'{"request": "msg", "content": {"a": {"b": {"c": 1}}}}\n',
        ]
        for data in hostile:
            client.send_raw(data)
            responses = client.received()
            self.assertTrue(responses, data[:40])
            self.assertEqual(responses[-1]["response"], "error", data[:40])
            self.assertFalse(client.closed, data[:40])
        client.send("msg", "still here")
        self.assertEqual(client.one()["content"], "still here")

    def test_escaped_nul_is_stripped(self) -> None:
        client = self.client("bob")
        client.send_raw(b'{"request": "msg", "content": "a\\u0000b"}\n')
        self.assertEqual(client.one()["content"], "ab")

    def test_huge_string_is_too_long(self) -> None:
        client = self.client("bob")
        client.send_raw(b'{"request": "msg", "content": "' + b"x" * 1_000_000 + b'"}\n')
        self.assertEqual(client.one()["code"], "too_long")
        self.assertTrue(client.closed)
        self.assertEqual(client.protocol.decoder.buffered, 0)

    def test_duplicate_keys_last_wins(self) -> None:
        client = self.client("bob")
        client.send_raw(b'{"request": "msg", "request": "names"}\n')
        self.assertEqual(client.one()["content"], "bob")

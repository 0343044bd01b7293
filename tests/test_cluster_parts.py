"""The cluster's parts in memory: nodes on one fake Redis, a Clock.

Each node is the one :class:`~chatd.core.hub.Hub` on
:class:`~chatd.cluster.names.RedisNames`,
:class:`~chatd.cluster.bus.RedisBus` and
:class:`~chatd.cluster.history.RedisHistory`, run by a
:class:`~chatd.cluster.node.ClusterService`, with JSON clients over
StringTransports; Redis is :class:`tests.cluster_fakes.FakeRedis`, and
each node's two links can be cut and restored.  The behaviours here were
only testable end to end before (tests/test_cluster.py keeps a few of
those, on a real redis-server).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from chatd.cluster.bus import READ_RETRY_MAX, RedisBus
from chatd.cluster.history import RedisHistory
from chatd.cluster.link import CALL_TIMEOUT, RedisLink
from chatd.cluster.names import HEARTBEAT, NAME_TTL_MS, RedisNames
from chatd.cluster.node import ClusterService, hub_on_links
from chatd.cluster.scripts import PUBLISH
from chatd.core.hub import DEFAULT_ROOM, Hub
from chatd.frontends.site import HealthResource, MetricsResource
from chatd.server import ChatFactory, ServerConfig
from chatd.stores.history import MemoryHistory
from chatd.tap import Options, makeService
from tests.cluster_fakes import FakeRedis, ReplyLost
from tests.support import FakeClient, fired
from tests.test_web import get

NAME_TTL = NAME_TTL_MS / 1000


class Node:
    """One chatd node on ``redis``: a clustered hub, its service, a factory."""

    def __init__(self, redis: FakeRedis, clock: Clock, label: str) -> None:
        self.clock = clock
        self.commands, self.reader = redis.link(), redis.link()
        self.hub = hub_on_links(clock, self.commands, self.reader, node=label)
        config = ServerConfig(msg_rate=0.0, request_rate=0.0, max_per_ip=0, login_timeout=0.0)
        self.factory = ChatFactory(self.hub, config, clock)
        self.service = ClusterService(self.hub, clock)

    @property
    def bus(self) -> RedisBus:
        assert isinstance(self.hub.bus, RedisBus)
        return self.hub.bus

    @property
    def names(self) -> RedisNames:
        assert isinstance(self.hub.registry, RedisNames)
        return self.hub.registry

    def start(self) -> Node:
        self.service.startService()
        self.clock.advance(0)
        return self

    def cut(self) -> None:
        """This node loses Redis (both links)."""
        self.commands.cut()
        self.reader.cut()

    def restore(self) -> None:
        self.commands.restore()
        self.reader.restore()

    def client(self, version: int = 1) -> FakeClient:
        client = FakeClient(self.factory)
        if version == 2:
            client.send("hello", {"protocol": 2})
            client.received()
        return client

    def login(self, name: str, version: int = 1) -> FakeClient:
        """A client logged in as ``name`` (its login responses read)."""
        client = self.client(version)
        responses = client.login(name)
        assert responses[0]["content"] == f"Login successful. You are now logged in as {name}", responses
        return client


def contents(responses: list[dict[str, Any]], kind: str = "message") -> list[Any]:
    return [response["content"] for response in responses if response["response"] == kind]


class ClusterCase(SynchronousTestCase):
    """A fake Redis, a clock and nodes on demand (stopped at cleanup)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.redis = FakeRedis(self.clock)

    def node(self, label: str, start: bool = True) -> Node:
        node = Node(self.redis, self.clock, label)
        if start:
            node.start()
            self.addCleanup(lambda: node.service.running and node.service.stopService())
        return node

    def names(self, node: Node) -> list[str]:
        return list(fired(node.hub.names()))


class NameLostTests(ClusterCase):
    def test_a_name_taken_elsewhere_while_cut_off_is_lost(self) -> None:
        a, b = self.node("a"), self.node("b")
        twin = a.login("twin")
        watchers = [node.login(f"watcher{node_name}") for node, node_name in ((a, "a"), (b, "b"))]
        for watcher in watchers:
            watcher.send("hello", {"protocol": 2})
        a.cut()
        self.clock.advance(NAME_TTL + 0.1)  # a's heartbeats cannot reach Redis: the name expires
        self.assertEqual(self.names(b), ["watcherb"])
        b.login("Twin")  # someone else takes it meanwhile
        a.restore()
        self.clock.advance(HEARTBEAT)  # a's heartbeat: the name is another node's now
        error = twin.received()[-1]
        self.assertEqual((error["response"], error["code"]), ("error", "name_taken"))
        self.assertTrue(twin.closed)
        self.assertEqual(a.names.held, ["watchera"])  # twin no longer ours: never refreshed nor released again
        twin.disconnect()  # the connection closes: the session leaves the hub
        self.assertIsNone(a.hub.session_named("twin"))
        self.assertEqual(a.hub.local_users, 1)  # watchera
        # Its logout did not release the other node's name.
        self.assertEqual(self.names(a), self.names(b))
        self.assertEqual(sorted(self.names(b)), ["Twin", "watchera", "watcherb"])
        self.assertEqual(self.redis.get("chatd:name:twin"), "b|Twin")
        # Nobody is told the name went offline: it is online, on b.
        self.clock.advance(1)
        for watcher in watchers:
            offline = [r for r in watcher.received() if r["response"] == "presence" and r["content"]["status"] == "offline"]
            self.assertEqual(offline, [])

    def test_a_name_expired_while_cut_off_is_taken_again(self) -> None:
        a, b = self.node("a"), self.node("b")
        bee = a.login("bee")
        a.cut()
        self.clock.advance(NAME_TTL + 0.1)
        self.assertEqual(self.names(b), [])
        a.restore()
        self.clock.advance(HEARTBEAT)
        self.assertEqual(self.names(b), ["bee"])
        self.assertFalse(bee.closed)

    def test_heartbeat_keeps_names(self) -> None:
        a = self.node("a")
        a.login("alice")
        for _ in range(3 * int(NAME_TTL)):
            self.clock.advance(1)
        self.assertEqual(self.names(a), ["alice"])

    def test_names_of_a_dead_node_vanish(self) -> None:
        a, b = self.node("a"), self.node("b")
        a.login("doomed")
        b.login("alive")
        a.service.stopService = lambda: succeed(None)  # type: ignore[method-assign]  # killed: nothing released
        a.cut()
        self.clock.advance(NAME_TTL + 0.1)
        self.assertEqual(self.names(b), ["alive"])
        self.assertNotIn("doomed", self.redis.zsets["chatd:users"])  # pruned from the login order


class PublishFailureTests(ClusterCase):
    def test_failed_publish_answers_server_busy_with_the_ref(self) -> None:
        a = self.node("a")
        alice, bob = a.login("alice"), a.login("bob")

        def refuse(args: tuple[str, ...]) -> None:
            if args[:2] == ("EVAL", PUBLISH):
                raise ConnectionError("Redis went away mid-call")

        self.redis.fault = refuse
        alice.send("msg", "lost", ref="r1")
        alice.send("ping", None)  # answered after the failure, in request order
        got = alice.received()
        self.assertEqual([(r["response"], r.get("code"), r.get("ref")) for r in got],
                         [("error", "server_busy", "r1"), ("pong", None, None)])
        self.assertEqual(contents(bob.received()), [])
        self.redis.fault = None
        alice.send("msg", "kept", ref="r2")
        echo = alice.one()
        self.assertEqual((echo["content"], echo["id"], echo["ref"]), ("kept", 1, "r2"))
        self.assertEqual(contents(bob.received()), ["kept"])

    def test_a_message_stored_though_its_publish_failed_still_arrives(self) -> None:
        # The script ran but its reply was lost: the sender hears
        # server_busy at once; the stream brings the message to everyone
        # later (the sender too, as anyone's: it no longer waits for it).
        a = self.node("a")
        alice, bob = a.login("alice"), a.login("bob")
        self.redis.fault = lambda args: ReplyLost if args[:2] == ("EVAL", PUBLISH) else None
        alice.send("msg", "maybe", ref="r1")
        got = alice.received()
        self.assertEqual([(r["response"], r.get("code"), r.get("ref")) for r in got],
                         [("error", "server_busy", "r1"), ("message", None, None)])
        self.assertEqual(contents(bob.received()), ["maybe"])
        self.assertEqual(a.bus.pending, 0)

    def test_post_while_cut_off_is_refused_at_once(self) -> None:
        a = self.node("a")
        alice = a.login("alice")
        a.cut()
        alice.send("msg", "hello?", ref=7)
        error = alice.one()
        self.assertEqual((error["code"], error["ref"]), ("server_busy", 7))

    def test_messages_accepted_counted_when_the_script_returns_ids(self) -> None:
        a = self.node("a")
        alice = a.login("alice")
        self.redis.fault = lambda args: ReplyLost if args[:2] == ("EVAL", PUBLISH) else None
        alice.send("msg", "lost reply")
        self.redis.fault = None
        alice.send("msg", "one")
        alice.send("msg", "two")
        self.assertEqual(a.hub.metrics.messages_accepted._value.get(), 2)


class ReconnectTests(ClusterCase):
    def test_reader_back_resumes_from_the_last_delivered_id(self) -> None:
        a, b = self.node("a"), self.node("b")
        talker, listener = a.login("talker"), b.login("listener")
        talker.send("msg", "before")
        self.assertEqual((contents(talker.received()), contents(listener.received())), (["before"], ["before"]))
        b.reader.cut()
        sent = [f"missed {n}" for n in range(20)]
        for text in sent:
            talker.send("msg", text)
            self.assertEqual(contents(talker.received()), [text])
        self.clock.advance(READ_RETRY_MAX)
        self.assertEqual(contents(listener.received()), [])
        calls_before = len(b.reader.calls)
        b.reader.restore()
        self.clock.advance(READ_RETRY_MAX)
        got = listener.received()
        self.assertEqual(contents(got), sent)  # all of them, in order, none twice
        self.assertEqual([m["id"] for m in got], list(range(2, 22)))
        resumed = [call for call in b.reader.calls[calls_before:] if call[0] == "XREAD"][0]
        self.assertEqual(resumed[-2], "1-1")  # the message stream, just past "before"
        listener.send("msg", "back")
        self.assertEqual(contents(listener.received()), ["back"])
        self.assertEqual(contents(talker.received()), ["back"])

    def test_node_cut_off_catches_up(self) -> None:
        a, b = self.node("a"), self.node("b")
        talker, listener = a.login("talker"), b.login("listener")
        b.cut()
        talker.send("msg", "while away")
        b.restore()
        self.clock.advance(READ_RETRY_MAX)
        self.assertEqual(contents(listener.received()), ["while away"])
        self.clock.advance(READ_RETRY_MAX)
        self.assertEqual(contents(listener.received()), [])


class LoginWhileDownTests(ClusterCase):
    def test_refused_within_the_call_timeout_before_the_node_is_ready(self) -> None:
        a = self.node("a", start=False)
        a.bus.start()  # Redis is down: the read loop cannot find its start
        client = a.client()
        client.send("login", "early")
        self.clock.advance(CALL_TIMEOUT - 0.1)
        self.assertEqual(client.received(), [])
        self.clock.advance(0.1)
        error = client.one()
        self.assertEqual(error["code"], "server_busy")
        self.assertEqual(self.redis.commands, [])
        a.bus.stop()

    def test_waits_for_the_start_then_logs_in(self) -> None:
        a = self.node("a", start=False)
        a.bus.start()
        client = a.client()
        client.send("login", "patient")
        self.clock.advance(1)
        a.commands.start()
        a.reader.start()
        self.clock.advance(0.2)
        self.assertTrue(a.bus.ready)
        self.assertEqual(client.received()[0]["content"], "Login successful. You are now logged in as patient")
        a.bus.stop()

    def test_refused_at_once_when_cut_off(self) -> None:
        a = self.node("a")
        a.cut()
        client = a.client()
        client.send("login", "newcomer")
        self.assertEqual(client.one()["code"], "server_busy")
        client.send("names")
        self.assertEqual(client.one()["code"], "not_logged_in")

    def test_names_and_history_while_cut_off(self) -> None:
        a = self.node("a")
        alice = a.login("alice", version=2)
        a.cut()
        alice.send("names")
        self.assertEqual(alice.one()["code"], "server_busy")
        alice.send("history", {"after": 0})
        self.assertEqual(alice.one()["code"], "server_busy")
        a.restore()
        alice.send("names")
        self.assertEqual(alice.one()["content"], "alice")


class DeliveryTests(ClusterCase):
    def test_one_order_and_the_echo_carries_the_ref(self) -> None:
        a, b = self.node("a"), self.node("b")
        alice, bob = a.login("alice", version=2), b.login("bob", version=2)
        alice.received(), bob.received()
        alice.send("msg", "one", ref="r1")
        bob.send("msg", "two", ref="r2")
        echo, seen = alice.received(), bob.received()
        self.assertEqual([(m["content"], m["id"], m.get("ref")) for m in echo], [("one", 1, "r1"), ("two", 2, None)])
        self.assertEqual([(m["content"], m["id"], m.get("ref")) for m in seen], [("one", 1, None), ("two", 2, "r2")])

    def test_presence_crosses_nodes_once(self) -> None:
        a, b = self.node("a"), self.node("b")
        watcher = a.login("watcher", version=2)
        b.login("visitor")
        local = a.login("neighbour")
        self.clock.advance(1)
        presence = [r["content"] for r in watcher.received() if r["response"] == "presence"]
        self.assertEqual(presence, [{"user": "visitor", "status": "online", "room": DEFAULT_ROOM},
                                    {"user": "neighbour", "status": "online", "room": DEFAULT_ROOM}])
        local.send("logout")
        self.clock.advance(1)
        presence = [r["content"] for r in watcher.received() if r["response"] == "presence"]
        self.assertEqual(presence, [{"user": "neighbour", "status": "offline", "room": DEFAULT_ROOM}])

    def test_history_is_the_stream(self) -> None:
        a, b = self.node("a"), self.node("b")
        writer = a.login("writer")
        for n in range(5):
            writer.send("msg", f"m{n}")
        reader = b.client(version=2)
        got = reader.login("reader")
        self.assertEqual([m["content"] for m in got[1]["content"]], [f"m{n}" for n in range(5)])
        reader.send("history", {"after": 2, "limit": 2})
        page = reader.one()
        self.assertEqual(([m["content"] for m in page["content"]], page["more"]), (["m2", "m3"], True))
        self.assertIsInstance(b.hub.history, RedisHistory)


class ServiceTests(ClusterCase):
    def test_stop_releases_names_and_disconnects(self) -> None:
        a = self.node("a")
        a.login("alice")
        self.assertEqual(self.redis.get("chatd:name:alice"), "a|alice")
        a.service.stopService()
        self.assertIsNone(self.redis.get("chatd:name:alice"))
        self.assertEqual(self.redis.zsets["chatd:users"], {})
        self.assertFalse(a.commands.connected or a.reader.connected)

    def test_health_and_metrics_with_a_cluster_hub(self) -> None:
        a = self.node("a")
        a.login("alice")
        FakeClient(a.factory)
        code, body, _ = get(HealthResource(a.factory))
        self.assertEqual((code, json.loads(body)),
                         (200, {"status": "ok", "connections": 2, "users": 1, "history": "redis"}))
        code, body, _ = get(MetricsResource(a.factory))
        self.assertEqual(code, 200)
        self.assertIn(b"chatd_users 1.0", body)
        a.cut()
        code, body, _ = get(HealthResource(a.factory))
        self.assertEqual((code, json.loads(body)["status"]), (503, "failing"))

    def test_tap_builds_a_clustered_hub(self) -> None:
        options = Options()
        options.parseOptions(["--port", "0", "--cluster", "redis://127.0.0.1:1/0"])
        top = makeService(options, reactor=MemoryReactorClock())
        services = [service for service in top if isinstance(service, ClusterService)]
        self.assertEqual(len(services), 1)
        self.assertIsInstance(services[0].bus.commands, RedisLink)
        self.assertIsInstance(services[0].names, RedisNames)

    def test_a_service_wants_a_clustered_hub(self) -> None:
        local = Hub.local(self.clock, MemoryHistory())
        self.assertRaises(TypeError, ClusterService, local, self.clock)

"""Accounts across a cluster (PROTOCOL.md sections 6.3 to 6.5 and 6.8).

First the parts, each scenario run twice: on
:class:`tests.cluster_fakes.FakeRedis` (in memory, a Clock) and on a
real redis-server (the Lua scripts themselves): the account store
(:class:`~chatd.cluster.accounts.RedisAccounts`), the throttle
(:class:`~chatd.cluster.accounts.RedisThrottle`) and an account's
sessions in the name registry
(:class:`~chatd.cluster.names.RedisNames`).  Then nodes on a fake Redis
with JSON clients (each node the one Hub with accounts on), then real
``twistd chatd --cluster --accounts optional`` nodes.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from chatd.accounts.passwords import Passwords
from chatd.accounts.records import AccountRecord, Restriction
from chatd.accounts.service import AccountService
from chatd.cluster.accounts import RedisAccounts, RedisThrottle
from chatd.cluster.link import RedisUnavailable
from chatd.cluster.bus import READ_RETRY_MAX, RedisBus
from chatd.cluster.names import HEARTBEAT, NAME_TTL_MS, RedisNames
from chatd.cluster.node import ClusterService, cluster_accounts, cluster_throttle, hub_on_links, use_cluster_accounts
from chatd.cluster.scripts import (
    ACCOUNT_LOG,
    DM_CONVS_PREFIX,
    DM_KEPT_PREFIX,
    DM_PUBLISH,
    ENTER_ROOM,
    SWEEP_NODES,
    members_key,
    node_key,
    node_members_key,
    presence_key,
)
from chatd.core.rooms import dm_key
from chatd.messages import ChatError
from chatd.server import ChatFactory, ServerConfig, ShutdownService
from chatd.tap import Options, makeService
from tests.accounts_support import CountingArgon, SyncPool, SyncReactor
from tests.cluster_fakes import FakeRedis, FakeRedisLink
from tests.e2e import DEADLINE, LinesClient, wait_for
from tests.support import FakeClient, fired
from tests.test_cluster import RedisTestCase
from tests.test_cluster_stream import Redis

TS = "2025-11-24T16:00:00.000Z"
PASSWORD = "correct horse"


def failure_of(deferred: Deferred[Any]) -> Any:
    """The exception a fired Deferred failed with (or an AssertionError)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results and hasattr(results[0], "value"), results
    return results[0].value


def code_of(deferred: Deferred[Any]) -> str:
    error = failure_of(deferred)
    assert isinstance(error, ChatError), error
    return error.code


# -- the parts, on a fake Redis and on a real one ---------------------------------


def _decoded(reply: Any) -> Any:
    """A reply as txredisapi gives it (``convertNumbers=False``): text as str."""
    if isinstance(reply, bytes):
        try:
            return reply.decode("utf-8")
        except UnicodeDecodeError:
            return reply
    if isinstance(reply, list):
        return [_decoded(item) for item in reply]
    return reply


class SyncRedisLink:
    """A link to a real redis-server that answers each call at once."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.connected = True

    def call(self, *args: str) -> Deferred[Any]:
        return succeed(_decoded(self.redis(*args)))

    def start(self) -> None:
        """Connected already."""

    def stop(self) -> Deferred[None]:
        return succeed(None)


if TYPE_CHECKING:
    _Case = SynchronousTestCase
else:
    _Case = object


class PartsScenarios(_Case):
    """The parts' scenarios; a subclass says where Redis is (and is the test case)."""

    clock: Clock

    # Supplied by the subclasses.
    def link(self) -> Any:
        raise NotImplementedError

    def command(self, *args: str) -> Any:
        """One command, answered at once (test set-up and inspection)."""
        return fired(self.link().call(*args))

    def later(self, seconds: float) -> None:
        """Time passes (for the scripts: they take their time from the caller)."""
        self.clock.advance(seconds)

    def alive(self, *nodes: str) -> None:
        """These nodes' keys exist (their heartbeat), as the rooms' keep them."""
        for node in nodes:
            self.command("SET", node_key(node), "1", "PX", "60000")

    def store(self, node: str = "a") -> RedisAccounts:
        store = RedisAccounts(self.link(), node)
        self.position = fired(store.start())
        return store

    def log_since(self, position: str) -> list[Any]:
        return list(self.command("XRANGE", ACCOUNT_LOG, f"({position}", "+"))

    # -- accounts ----------------------------------------------------------

    def test_accounts_created_once_and_known_everywhere(self) -> None:
        a = self.store("a")
        b = self.store("b")
        b_from = self.position
        record = AccountRecord("Alice", "$argon2id$v=19$m=8,t=1,p=1$x$y", TS)
        self.assertTrue(fired(a.create_account(record)))
        self.assertFalse(fired(a.create_account(AccountRecord("alice", "other", TS))))
        self.assertEqual(fired(a.load_account("ALICE")), record)
        self.assertIsNone(fired(a.load_account("bob")))
        self.assertEqual((a.account_name("alice"), a.is_account("aLiCe")), ("Alice", True))
        # b learns it from the log; a node started later, from the names.
        self.assertFalse(b.is_account("alice"))
        b.handle(self.log_since(b_from))
        self.assertEqual(b.account_name("alice"), "Alice")
        self.assertEqual(self.store("c").account_name("alice"), "Alice")
        # A new hash replaces the old one; nothing new goes to the log.
        before = len(self.log_since("0-0"))
        fired(b.save_account(record.with_hash("$argon2id$new")))
        self.assertEqual(fired(a.load_account("alice")).password_hash, "$argon2id$new")
        self.assertEqual(len(self.log_since("0-0")), before)
        fired(a.create_account(AccountRecord("bob", "h", TS)))
        self.assertEqual([r.name for r in fired(b.accounts())], ["Alice", "bob"])

    def test_bans_and_mutes_held_by_every_node(self) -> None:
        a = self.store("a")
        b = self.store("b")
        b_from = self.position
        told: list[str] = []
        a.on_change = lambda: told.append("a")
        b.on_change = lambda: told.append("b")
        ban = Restriction("#Dev", "Bob", 1_764_000_600.0, "alice", "spam", TS)
        fired(a.save_ban(ban))
        a.save_mute(Restriction("#Dev", "carol", None, "alice", "", TS))
        self.assertEqual(a.load_bans("#DEV"), [ban])  # at once here
        self.assertEqual(b.load_bans("#dev"), [])
        b.handle(self.log_since(b_from))
        self.assertEqual(b.load_bans("#dev"), [ban])
        self.assertEqual([m.name for m in b.load_mutes()], ["carol"])
        self.assertEqual(told, ["b", "b"])  # another node's changes only
        b_from = self.log_since("0-0")[-1][0]
        self.assertTrue(a.remove_ban("#dev", "bob"))
        self.assertFalse(a.remove_ban("#dev", "nobody"))
        self.assertEqual(a.load_bans(), [])
        a.handle(self.log_since(b_from))  # its own: nothing to tell
        b.handle(self.log_since(b_from))
        self.assertEqual(b.load_bans(), [])
        self.assertEqual(told, ["b", "b", "b", "b"])
        fired(a.save_ban(Restriction("#a", "z")))
        fired(a.save_ban(Restriction("#b", "y")))
        self.assertEqual([(r.room, r.name) for r in a.load_bans()], [("#a", "z"), ("#b", "y")])
        # A node started now (or loading again) has what holds.
        fired(b.start())
        self.assertEqual(told[-1], "b")
        c = self.store("c")
        self.assertEqual(([r.name for r in c.load_bans()], [m.key for m in c.load_mutes("#dev")]), (["z", "y"], ["carol"]))

    def test_memberships_keep_their_order(self) -> None:
        store = self.store()
        for room in ("#b", "#a", "#c", "#b"):
            fired(store.add_membership("Alice", room))
        fired(store.add_membership("bob", "#A"))
        self.assertEqual(fired(store.memberships("alice")), ["#b", "#a", "#c"])
        fired(store.remove_membership("alice", "#A"))
        self.assertEqual(fired(store.memberships("ALICE")), ["#b", "#c"])
        self.assertEqual(fired(store.room_accounts("#a")), ["bob"])
        self.assertEqual(fired(store.room_accounts("#b")), ["alice"])

    # -- kept DMs ------------------------------------------------------------

    def publish_dm(self, sender: str, to: str, text: str, owners: str, offline: str = "", notice: str = "") -> Any:
        """The DM script as the bus calls it, one message."""
        conversation = dm_key(sender, to)
        keys = ["chatd:dmseq", "chatd:dm", f"chatd:seq:{conversation}", f"chatd:name:{to.lower()}"]
        argv = ["100", DM_KEPT_PREFIX, DM_CONVS_PREFIX, "1000", sender, text, TS, "n", "1", conversation, owners, offline, notice]
        return self.command("EVAL", DM_PUBLISH, str(len(keys)), *keys, *argv)

    def test_kept_dms_paged_and_undelivered_taken_once(self) -> None:
        store = self.store()
        for n in range(5):
            self.assertEqual(self.publish_dm("alice", "Bob", f"m{n}", "alice bob", "Bob"), [n + 1, "Bob"])
        self.publish_dm("carol", "bob", "hi", "bob", "bob")
        self.publish_dm("dave", "bob", "not kept", "", "")  # a guest to a name nobody holds: refused
        conversation = dm_key("alice", "bob")
        found, more = fired(store.dm_page("bob", conversation, limit=2))
        self.assertEqual(([m.text for m in found], more), (["m3", "m4"], True))
        self.assertEqual((found[0].to, found[0].offline, found[0].room), ("Bob", True, conversation))
        found, more = fired(store.dm_page("alice", conversation, before=2))
        self.assertEqual(([m.id for m in found], more), ([1], False))
        found, more = fired(store.dm_page("alice", conversation, after=1, limit=3))
        self.assertEqual(([m.id for m in found], more), ([2, 3, 4], True))
        self.assertEqual(fired(store.dm_page("dave", dm_key("dave", "bob"))), ([], False))
        # bob got up to 2 live: the rest is taken at his login, once.
        fired(store.mark_delivered_many([("Bob", conversation, 2), ("bob", conversation, 1)]))
        self.assertEqual(fired(store.delivered("bob", conversation)), 2)
        taken = fired(store.undelivered("bob", limit=2))
        self.assertEqual(
            [(c, [m.text for m in kept], more) for c, kept, more in taken],
            [(conversation, ["m2", "m3"], True), (dm_key("bob", "carol"), ["hi"], False)],
        )
        self.assertEqual(fired(store.delivered("bob", conversation)), 4)
        taken = fired(self.store("b").undelivered("bob"))  # another node, later
        self.assertEqual([(c, [m.text for m in kept], more) for c, kept, more in taken], [(conversation, ["m4"], False)])
        self.assertEqual(fired(store.undelivered("bob")), [])
        self.assertEqual(fired(store.undelivered("alice"))[0][1][0].text, "m0")

    # -- the throttle -----------------------------------------------------------

    def test_login_throttle_per_address_and_per_account(self) -> None:
        a = RedisThrottle(self.link(), self.clock, "a")
        b = RedisThrottle(self.link(), self.clock, "b")
        for _ in range(4):
            fired(a.login_failed("192.0.2.1", "Alice"))
        self.assertTrue(fired(b.login_allowed("::ffff:192.0.2.1", "bob")))
        fired(b.login_failed("192.0.2.1", "alice"))
        # 5 from the address or for the account, on any node: refused.
        self.assertFalse(fired(a.login_allowed("192.0.2.1", "carol")))
        self.assertFalse(fired(b.login_allowed("198.51.100.7", "ALICE")))
        self.assertTrue(fired(b.login_allowed("198.51.100.7", "carol")))
        self.later(59)
        self.assertFalse(fired(a.login_allowed("192.0.2.1", "carol")))
        self.later(1.5)
        self.assertTrue(fired(a.login_allowed("192.0.2.1", "alice")))

    def test_registration_rate_per_address(self) -> None:
        a = RedisThrottle(self.link(), self.clock, "a", register_rate=2)
        b = RedisThrottle(self.link(), self.clock, "b", register_rate=2)
        self.assertTrue(fired(a.reserve_registration("192.0.2.1")))
        self.assertTrue(fired(b.reserve_registration("192.0.2.1")))
        self.assertFalse(fired(a.reserve_registration("192.0.2.1")))
        self.assertTrue(fired(a.reserve_registration("192.0.2.2")))
        fired(b.release_registration("192.0.2.1"))  # that one did not happen
        self.assertTrue(fired(a.reserve_registration("192.0.2.1")))
        self.assertFalse(fired(b.reserve_registration("192.0.2.1")))
        self.later(61)
        self.assertTrue(fired(b.reserve_registration("192.0.2.1")))
        unlimited = RedisThrottle(self.link(), self.clock, "c", register_rate=0)
        self.assertTrue(all(fired(unlimited.reserve_registration("192.0.2.1")) for _ in range(5)))

    # -- an account's sessions on several nodes --------------------------------

    def names(self, node: str) -> RedisNames:
        return RedisNames(self.link(), node)

    def test_account_sessions_shared_by_nodes(self) -> None:
        self.alive("a", "b")
        a, b = self.names("a"), self.names("b")
        self.assertTrue(fired(a.add_account_session("Alice", 3)))
        self.assertFalse(fired(b.add_account_session("Alice", 3)))
        self.assertFalse(fired(a.add_account_session("Alice", 3)))
        self.assertEqual(code_of(b.add_account_session("Alice", 3)), "forbidden")  # 3, counted on every node
        self.assertEqual(fired(a.names()), ["Alice"])
        self.assertEqual(code_of(b.claim("alice")), "name_taken")  # a guest cannot take it
        fired(b.claim("bob"))
        self.assertEqual(code_of(a.add_account_session("Bob", 3)), "name_taken")  # nor an account a guest's
        self.assertTrue(fired(a.held_anywhere("ALICE")))
        self.assertFalse(fired(a.held_anywhere("carol")))
        self.assertFalse(fired(a.drop_account_session("alice")))
        self.assertFalse(fired(a.drop_account_session("alice")))  # b still has one
        self.assertEqual(fired(a.names()), ["Alice", "bob"])
        self.assertTrue(fired(b.drop_account_session("alice")))
        self.assertEqual(fired(a.names()), ["bob"])
        self.assertFalse(fired(a.held_anywhere("alice")))

    def test_a_dead_nodes_sessions_do_not_count(self) -> None:
        self.alive("a", "b")
        a, b = self.names("a"), self.names("b")
        fired(a.add_account_session("alice", 2))
        fired(b.add_account_session("alice", 2))
        self.assertEqual(code_of(a.add_account_session("alice", 2)), "forbidden")
        self.command("DEL", node_key("b"))  # b died
        self.assertFalse(fired(a.add_account_session("alice", 2)))
        self.assertTrue(fired(a.drop_account_session("alice")) is False)
        self.assertTrue(fired(a.drop_account_session("alice")))  # b's do not count: the last

    def test_release_all_drops_every_session_here(self) -> None:
        self.alive("a", "b")
        a, b = self.names("a"), self.names("b")
        for _ in range(2):
            fired(a.add_account_session("alice", 8))
        fired(b.add_account_session("alice", 8))
        fired(a.release_all())
        self.assertEqual(a.held, [])
        self.assertEqual(fired(b.names()), ["alice"])
        self.assertTrue(fired(b.drop_account_session("alice")))


    def test_a_sweep_tells_the_room_only_of_names_gone_everywhere(self) -> None:
        self.alive("a", "b", "c")
        for node, name in (("a", "alice"), ("b", "alice"), ("b", "bob"), ("c", "carol")):
            keys = ["chatd:joinseq", members_key("#dev"), node_members_key(node), "chatd:nodes"]
            self.command("EVAL", ENTER_ROOM, "4", *keys, f"{node}|{name}", "#dev", node)
        prefixes = [node_key(""), node_members_key(""), members_key(""), presence_key("")]
        self.command("DEL", node_key("b"))
        removed = self.command("EVAL", SWEEP_NODES, "1", "chatd:nodes", *prefixes, "100")
        self.assertEqual(sorted(zip(removed[::2], removed[1::2])), [("#dev", "alice"), ("#dev", "bob")])
        told = [entry[1][1] for entry in self.command("XRANGE", presence_key("#dev"), "-", "+")]
        self.assertEqual(told, ["bob"])  # alice is still in #dev, through a
        self.command("DEL", node_key("a"))
        self.command("EVAL", SWEEP_NODES, "1", "chatd:nodes", *prefixes, "100")
        told = [entry[1][1] for entry in self.command("XRANGE", presence_key("#dev"), "-", "+")]
        self.assertEqual(told, ["bob", "alice"])
        self.assertEqual(self.command("ZRANGE", members_key("#dev"), "0", "-1"), ["c|carol"])


class FakeRedisPartsTests(PartsScenarios, SynchronousTestCase):
    """The scenarios on the fake Redis."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.redis = FakeRedis(self.clock)

    def link(self) -> FakeRedisLink:
        link = self.redis.link()
        link.start()
        return link

    def test_a_heartbeat_takes_the_name_back_and_recounts(self) -> None:
        self.alive("a")
        a = self.names("a")
        fired(a.add_account_session("alice", 8))
        fired(a.add_account_session("alice", 8))
        self.redis._del("chatd:name:alice", "chatd:sessions:alice", "chatd:users")  # expired while cut off
        a.heartbeat()
        self.assertEqual(self.redis.get("chatd:name:alice"), "*|alice")
        self.assertEqual(self.redis.hashes["chatd:sessions:alice"], {"a": "2"})
        self.assertEqual(fired(a.names()), ["alice"])

    def test_redis_away(self) -> None:
        link = self.link()
        names, store = RedisNames(link, "a"), RedisAccounts(link, "a")
        throttle = RedisThrottle(link, self.clock, "a")
        link.cut()
        for deferred in (
            names.add_account_session("alice", 8),
            store.load_account("alice"),
            store.memberships("alice"),
            store.undelivered("alice"),
            throttle.login_allowed("192.0.2.1", "alice"),
            throttle.reserve_registration("192.0.2.1"),
        ):
            self.assertEqual(code_of(deferred), "server_busy")
        self.assertTrue(fired(names.drop_account_session("alice")))  # nothing held here
        store.save_ban(Restriction("#dev", "bob"))  # logged; it holds here
        self.assertEqual([ban.name for ban in store.load_bans()], ["bob"])
        self.flushLoggedErrors(RedisUnavailable)


class RealRedisPartsTests(PartsScenarios, RedisTestCase):
    """The same scenarios on a real redis-server: the Lua scripts."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.clock.advance(time.time())
        self.cli = Redis(self.redis.port)
        self.addCleanup(self.cli.close)

    def link(self) -> SyncRedisLink:
        return SyncRedisLink(self.cli)


# -- nodes on a fake Redis, JSON clients --------------------------------------------


class AccountNode:
    """One chatd node with accounts on ``redis``: the clustered hub, its
    account store and throttle, a factory, the cluster service."""

    def __init__(self, redis: FakeRedis, clock: Clock, label: str, operators: frozenset[str] = frozenset(), max_sessions: int = 8) -> None:
        self.clock = clock
        self.commands, self.reader = redis.link(), redis.link()
        self.hub = hub_on_links(clock, self.commands, self.reader, node=label)
        self.store = cluster_accounts(self.hub)
        passwords = Passwords(SyncReactor(SyncPool()), argon=CountingArgon())
        self.accounts = AccountService(self.store, passwords, cluster_throttle(self.hub, clock, 3), clock, min_password=8)
        config = ServerConfig(msg_rate=0.0, request_rate=0.0, max_per_ip=0, login_timeout=0.0, accounts="optional", max_sessions=max_sessions)
        self.factory = ChatFactory(self.hub, config, clock, accounts=self.accounts, operators=operators)
        use_cluster_accounts(self.hub, self.store, operators, max_sessions)
        self.service = ClusterService(self.hub, clock)

    def client(self, host: str = "127.0.0.1") -> FakeClient:
        """A v2 connection."""
        client = FakeClient(self.factory, host=host)
        client.send("hello", {"protocol": 2})
        client.received()
        return client


def of(responses: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [response for response in responses if response["response"] == kind]


class AccountNodesCase(SynchronousTestCase):
    """A fake Redis, a clock, nodes on demand, accounts alice, bob, carol."""

    operators = frozenset({"root"})
    max_sessions = 8

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.redis = FakeRedis(self.clock)
        self.nodes: dict[str, AccountNode] = {}
        first = self.node("a")
        for index, name in enumerate(("alice", "bob", "carol", "root")):
            client = first.client(host=f"192.0.2.{100 + index}")  # 3 registrations per address and minute
            client.send("register", {"username": name, "password": PASSWORD})
            self.assertEqual(client.received()[0]["content"], f"Account {name} registered")
            client.disconnect()
        self.settle()

    def node(self, label: str) -> AccountNode:
        node = self.nodes.get(label)
        if node is None:
            node = self.nodes[label] = AccountNode(self.redis, self.clock, label, self.operators, self.max_sessions)
            node.service.startService()
            self.clock.advance(0)
            self.addCleanup(lambda: node.service.running and node.service.stopService())
        return node

    def settle(self) -> None:
        """Let every node read what is in the streams."""
        for _ in range(3):
            self.clock.advance(0)

    def session(self, label: str, name: str, password: str | None = PASSWORD, host: str = "127.0.0.1") -> tuple[FakeClient, list[dict[str, Any]]]:
        """A v2 session of ``name`` on node ``label`` and its login responses."""
        client = self.node(label).client(host)
        if password is None:
            client.send("login", name)
        else:
            client.send("login", name, password=password)
        self.settle()
        return client, client.received()

    def logged_in(self, label: str, name: str, password: str | None = PASSWORD) -> FakeClient:
        client, responses = self.session(label, name, password)
        self.assertEqual(responses[0]["content"], f"Login successful. You are now logged in as {name}", responses)
        return client

    def presence(self, client: FakeClient) -> list[tuple[str, str, str]]:
        self.settle()
        return [(p["content"]["user"], p["content"]["status"], p["content"]["room"]) for p in of(client.received(), "presence")]


class MultiSessionAcrossNodesTests(AccountNodesCase):
    def test_sessions_on_two_nodes_get_dms_and_echoes(self) -> None:
        one, two = self.logged_in("a", "alice"), self.logged_in("b", "alice")
        bob = self.logged_in("c", "bob")
        bob.send("msg", "hi alice", to="alice", ref=1)
        self.settle()
        for client in (one, two):
            dm = of(client.received(), "message")
            self.assertEqual([(m["content"], m["to"], m["sender"]) for m in dm], [("hi alice", "alice", "bob")])
        echo = of(bob.received(), "message")[0]
        self.assertEqual((echo["ref"], echo.get("offline")), (1, None))
        one.send("msg", "from a", to="bob", ref="x")
        self.settle()
        mine, other = of(one.received(), "message"), of(two.received(), "message")
        self.assertEqual((mine[0]["ref"], other[0]["content"]), ("x", "from a"))
        self.assertNotIn("ref", other[0])
        bob.send("names")
        self.settle()
        self.assertEqual(of(bob.received(), "info")[0]["content"], "alice, bob")
        # Both sides kept: alice's history with bob, from either node.
        two.send("history", {"with": "bob"})
        self.settle()
        page = of(two.received(), "history")[0]
        self.assertEqual(([m["content"] for m in page["content"]], page["with"]), (["hi alice", "from a"], "bob"))

    def test_presence_with_the_first_session_anywhere_and_after_the_last(self) -> None:
        watcher = self.logged_in("c", "carol")
        one = self.logged_in("a", "alice")
        self.assertEqual(self.presence(watcher), [("alice", "online", "#lobby")])
        one.send("join", "#dev")
        watcher.send("join", "#dev")
        self.settle()
        self.assertEqual(self.presence(watcher), [])
        two, responses = self.session("b", "alice")  # back in #dev too, without a word to the room
        self.assertEqual([r.get("room") for r in of(responses, "info")], [None, "#dev"])
        self.assertEqual(of(responses, "info")[1]["members"], ["alice", "carol"])
        self.assertEqual(self.presence(watcher), [])
        one.disconnect()
        self.assertEqual(self.presence(watcher), [])
        watcher.send("names", {"room": "#dev"})
        self.settle()
        self.assertEqual(of(watcher.received(), "info")[0]["content"], "carol, alice")
        two.send("msg", "still here", room="#dev")
        self.settle()
        self.assertEqual([m["content"] for m in of(watcher.received(), "message")], ["still here"])
        two.disconnect()
        self.assertEqual(sorted(self.presence(watcher)), [("alice", "offline", "#dev"), ("alice", "offline", "#lobby")])

    def test_a_dead_node_with_a_session_of_an_account_alive_elsewhere(self) -> None:
        watcher = self.logged_in("c", "carol")
        one, two = self.logged_in("a", "alice"), self.logged_in("b", "alice")
        for client in (watcher, one):
            client.send("join", "#dev")
            self.settle()
        self.presence(watcher)
        self.assertTrue(self.node("b").hub.in_room(two.protocol, "#dev"))
        b = self.node("b")
        b.commands.cut()  # b dies for the cluster: its node key expires, others sweep it
        b.reader.cut()
        self.clock.advance(NAME_TTL_MS / 1000 + 2 * HEARTBEAT)
        self.assertEqual(self.presence(watcher), [])
        self.assertEqual(fired(self.node("c").hub.names("#dev")), ["carol", "alice"])
        self.assertEqual(fired(self.node("c").hub.names()), ["carol", "alice"])
        one.disconnect()  # b's session no longer counts: that was the last
        self.assertEqual(sorted(self.presence(watcher)), [("alice", "offline", "#dev"), ("alice", "offline", "#lobby")])
        two.disconnect()

    def test_max_sessions_counted_on_every_node(self) -> None:
        self.max_sessions = 2
        for node in self.nodes.values():
            node.hub.max_sessions = 2
        self.logged_in("a", "alice")
        self.logged_in("b", "alice")
        for label in ("a", "c"):
            _client, responses = self.session(label, "alice")
            self.assertEqual(responses[0]["code"], "forbidden", responses)

    def test_part_and_join_apply_to_the_name_on_every_node(self) -> None:
        one, two = self.logged_in("a", "alice"), self.logged_in("b", "alice")
        one.send("join", "#dev", ref="j")
        self.settle()
        self.assertEqual([(r["response"], r.get("ref")) for r in one.received()], [("info", "j"), ("history", "j")])
        told = two.received()  # on b, which had no member there
        self.assertEqual([(r["response"], r.get("room"), "ref" in r) for r in told], [("info", "#dev", False), ("history", "#dev", False)])
        self.assertTrue(self.node("b").hub.in_room(two.protocol, "#dev"))
        self.assertEqual(fired(self.node("c").hub.names("#dev")), ["alice"])
        one.send("msg", "to both", room="#dev")
        self.settle()
        self.assertEqual([m["content"] for m in of(two.received(), "message")], ["to both"])
        two.send("join", "#dev")  # joined already: the info only
        self.settle()
        self.assertEqual([r["response"] for r in two.received()], ["info"])
        two.send("part", "#dev")
        self.settle()
        self.assertEqual([r["response"] for r in two.received()], ["info"])
        self.assertEqual(of(one.received(), "info")[0]["content"], "Left #dev")
        self.assertFalse(self.node("a").hub.in_room(one.protocol, "#dev"))
        self.assertEqual(fired(self.node("c").hub.names("#dev")), [])
        self.assertEqual(fired(self.node("c").store.memberships("alice")), [])

    def test_rooms_come_back_at_login_on_another_node(self) -> None:
        one = self.logged_in("a", "alice")
        for room in ("#b", "#a"):
            one.send("join", room)
        self.settle()
        one.disconnect()
        self.settle()
        _two, responses = self.session("b", "alice")
        self.assertEqual([r.get("room") for r in of(responses, "info")[1:]], ["#b", "#a"])
        self.assertEqual(fired(self.node("c").hub.names("#a")), ["alice"])


class OfflineDirectMessageTests(AccountNodesCase):
    def test_offline_dms_arrive_once_at_the_next_login_on_any_node(self) -> None:
        bob = self.logged_in("a", "bob")
        for n in range(3):
            bob.send("msg", f"while away {n}", to="ALICE", ref=n)
        self.settle()
        echoes = of(bob.received(), "message")
        self.assertEqual([(e["to"], e["offline"], e["ref"]) for e in echoes], [("alice", True, n) for n in range(3)])
        alice, responses = self.session("b", "alice")
        kept = of(responses, "history")[-1]
        self.assertEqual((kept["with"], kept["more"]), ("bob", False))
        self.assertEqual([m["content"] for m in kept["content"]], [f"while away {n}" for n in range(3)])
        self.settle()
        self.assertEqual(of(alice.received(), "message"), [])  # not live as well
        for label in ("a", "c"):
            _again, responses = self.session(label, "alice")
            self.assertEqual([h.get("with") for h in of(responses, "history")], [None])  # the lobby's only

    def test_dms_taken_at_login_do_not_come_live_again(self) -> None:
        b = self.node("b")
        bob = self.logged_in("a", "bob")
        b.reader.cut()  # b reads the DM stream late
        for n in range(3):
            bob.send("msg", f"m{n}", to="alice")
        self.settle()
        alice, responses = self.session("b", "alice")
        self.assertEqual([m["content"] for m in of(responses, "history")[-1]["content"]], ["m0", "m1", "m2"])
        b.reader.restore()
        self.clock.advance(READ_RETRY_MAX)
        self.settle()
        self.assertEqual(of(alice.received(), "message"), [])
        bob.send("msg", "live", to="alice")
        self.settle()
        self.assertEqual([m["content"] for m in of(alice.received(), "message")], ["live"])

    def test_two_logins_at_once_on_two_nodes_share_them_once(self) -> None:
        bob = self.logged_in("a", "bob")
        for n in range(3):
            bob.send("msg", f"m{n}", to="alice")
        self.settle()
        one, two = self.node("b").client(), self.node("c").client()
        for client in (one, two):
            client.send("login", "alice", password=PASSWORD)
        self.settle()
        got = [m["content"] for client in (one, two) for h in of(client.received(), "history") if h.get("with") for m in h["content"]]
        self.assertEqual(got, ["m0", "m1", "m2"])

    def test_guests_and_unknown_names(self) -> None:
        guest = self.logged_in("a", "dave", password=None)
        guest.send("msg", "hello?", to="alice")
        self.settle()
        self.assertEqual(of(guest.received(), "error")[0]["code"], "no_such_user")
        bob = self.logged_in("b", "bob")
        bob.send("msg", "x", to="nobody")
        self.settle()
        self.assertEqual(of(bob.received(), "error")[0]["code"], "no_such_user")


class AccountsAcrossNodesTests(AccountNodesCase):
    def test_registered_on_one_node_logs_in_on_another_at_once(self) -> None:
        client = self.node("a").client()
        client.send("register", {"username": "Zoe", "password": PASSWORD})
        self.assertEqual(client.received()[0]["content"], "Account Zoe registered")
        other = self.node("b").client()
        other.send("login", "zoe", password=PASSWORD)  # before b read the log
        self.assertEqual(other.received()[0]["content"], "Login successful. You are now logged in as Zoe")

    def test_names_taken_across_nodes(self) -> None:
        _guest, responses = self.session("b", "alice", password=None)
        self.assertEqual(responses[0]["code"], "auth_failed")
        self.logged_in("a", "erin", password=None)
        register = self.node("b").client()
        register.send("register", {"username": "Erin", "password": PASSWORD})
        self.settle()
        self.assertEqual(register.received()[0]["code"], "name_taken")

    def test_failed_logins_counted_on_every_node(self) -> None:
        for n in range(5):
            _client, responses = self.session("abc"[n % 3], "alice", password="wrong password")
            self.assertEqual(responses[0]["code"], "auth_failed")
        _client, responses = self.session("b", "alice")
        self.assertEqual(responses[0]["code"], "rate_limited")
        _client, responses = self.session("c", "bob", host="198.51.100.1")
        self.assertEqual(responses[0]["content"], "Login successful. You are now logged in as bob")


class ModerationAcrossNodesTests(AccountNodesCase):
    def room(self) -> tuple[FakeClient, FakeClient]:
        """alice (op) on a and bob on b, in #dev."""
        alice, bob = self.logged_in("a", "alice"), self.logged_in("b", "bob")
        alice.send("join", "#dev")
        self.settle()
        bob.send("join", "#dev")
        self.settle()
        alice.received(), bob.received()
        return alice, bob

    def test_a_ban_applies_on_every_node(self) -> None:
        alice, bob = self.room()
        alice.send("ban", {"room": "#dev", "user": "bob", "comment": "spam"})
        self.settle()
        told = of(bob.received(), "info")
        self.assertEqual(told[0]["content"], "You were banned from #dev by alice: spam")
        self.assertFalse(self.node("b").hub.in_room(bob.protocol, "#dev"))
        for label in ("b", "c"):
            client = self.logged_in(label, "bob") if label == "c" else bob
            client.send("join", "#dev")
            self.settle()
            self.assertEqual(of(client.received(), "error")[0]["code"], "banned")
        alice.send("unban", {"room": "#dev", "user": "bob"})
        self.settle()
        bob.send("join", "#dev")
        self.settle()
        self.assertEqual(of(bob.received(), "info")[0]["content"], "Joined #dev")

    def test_a_mute_applies_on_every_node(self) -> None:
        alice, bob = self.room()
        bob.send("msg", "first", room="#dev")
        self.settle()
        alice.send("mute", {"room": "#dev", "user": "bob"})
        self.settle()
        self.assertEqual(of(bob.received(), "info")[-1]["content"], "You were muted in #dev by alice")
        bob.send("msg", "second", room="#dev")
        self.settle()
        self.assertEqual(of(bob.received(), "error")[0]["code"], "muted")
        alice.send("unmute", {"room": "#dev", "user": "bob"})
        self.settle()
        self.assertEqual(of(bob.received(), "info")[-1]["content"], "You were unmuted in #dev by alice")
        bob.send("msg", "third", room="#dev")
        self.settle()
        self.assertEqual([m["content"] for m in of(alice.received(), "message")], ["first", "third"])

    def test_an_invitation_reaches_another_node(self) -> None:
        alice, bob = self.logged_in("a", "alice"), self.logged_in("b", "bob")
        alice.send("join", "#club")
        alice.send("mode", {"room": "#club", "invite_only": True})
        self.settle()
        alice.received()
        bob.send("join", "#club")
        self.settle()
        self.assertEqual(of(bob.received(), "error")[0]["code"], "invite_only")
        alice.send("invite", {"room": "#club", "user": "BOB"})
        alice.send("invite", {"room": "#club", "user": "nobody"})
        self.settle()
        answers = alice.received()
        self.assertEqual(of(answers, "info")[0]["content"], "Invited bob to #club")
        self.assertEqual(of(answers, "error")[0]["code"], "no_such_user")
        self.assertEqual([r["content"] for r in of(bob.received(), "invite")], [{"room": "#club", "by": "alice"}])
        bob.send("join", "#club")
        self.settle()
        self.assertEqual(of(bob.received(), "info")[0]["content"], "Joined #club")

    def test_a_kick_from_another_node(self) -> None:
        alice, bob = self.room()
        watcher = self.logged_in("c", "carol")
        watcher.send("join", "#dev")
        self.settle()
        watcher.received()
        alice.send("kick", {"room": "#dev", "user": "bob"})
        self.settle()
        self.assertEqual(of(bob.received(), "info")[0]["content"], "You were kicked from #dev by alice")
        gone = of(watcher.received(), "presence")
        self.assertEqual([(p["content"]["user"], p["content"]["reason"]) for p in gone], [("bob", "kicked")])
        self.assertEqual(fired(self.node("c").hub.names("#dev")), ["alice", "carol"])

    def test_a_server_operators_lobby_ban_closes_and_refuses_on_every_node(self) -> None:
        root = self.logged_in("a", "root")
        one, two = self.logged_in("b", "bob"), self.logged_in("c", "bob")
        root.send("ban", {"room": "#lobby", "user": "bob"})
        self.settle()
        for client in (one, two):
            self.assertTrue(client.transport.disconnecting)
        for label in ("a", "b"):
            _client, responses = self.session(label, "bob")
            self.assertEqual(responses[0]["code"], "banned")


class WiringTests(SynchronousTestCase):
    def test_tap_builds_accounts_in_redis_for_a_cluster(self) -> None:
        operators = self.mktemp()
        with open(operators, "w", encoding="utf-8") as handle:
            handle.write("Root\n")
        options = Options()
        options.parseOptions(
            ["--port", "0", "--cluster", "redis://127.0.0.1:1/0", "--accounts", "required", "--operators", operators,
             "--max-sessions", "3", "--register-rate", "5"]
        )
        top = makeService(options, reactor=MemoryReactorClock())
        factory = next(service for service in top if isinstance(service, ShutdownService)).factory
        hub = factory.hub
        assert factory.accounts is not None
        self.assertIsInstance(factory.accounts.store, RedisAccounts)
        self.assertIs(hub.memberships, factory.accounts.store)
        self.assertIs(hub.moderation.store, factory.accounts.store)
        self.assertIsInstance(factory.accounts.throttle, RedisThrottle)
        self.assertEqual(factory.accounts.throttle.register_rate, 5)  # type: ignore[attr-defined]
        self.assertIsInstance(hub.account_sessions, RedisNames)
        self.assertEqual((hub.max_sessions, hub.moderation.operators), (3, frozenset({"root"})))
        bus = hub.bus
        assert isinstance(bus, RedisBus)
        self.assertEqual([followed.key for followed in bus._followed], ["chatd:roomlog", ACCOUNT_LOG])


# -- real nodes ----------------------------------------------------------------------


class ClusterAccountsEndToEndTests(RedisTestCase):
    """Three ``twistd chatd --cluster --accounts optional`` nodes on a real redis-server."""

    def setUp(self) -> None:
        super().setUp()
        operators = os.path.join(self.base, "operators")
        with open(operators, "w", encoding="utf-8") as handle:
            handle.write("root\n")
        options = ("--msg-rate", "0", "--accounts", "optional", "--register-rate", "0", "--operators", operators)
        self.nodes = [self.start_node(f"node{index}", None, *options) for index in range(3)]
        client = self.connect(0)
        for name in ("alice", "bob", "root"):
            client.send("register", {"username": name, "password": PASSWORD})
            self.assertEqual(client.receive()["content"], f"Account {name} registered")

    def connect(self, index: int) -> LinesClient:
        client = LinesClient(self.nodes[index].port)
        self.addCleanup(client.close)
        client.send("hello", {"protocol": 2})
        self.assertEqual(client.receive()["response"], "hello")
        return client

    def session(self, index: int, name: str, password: str | None = PASSWORD) -> LinesClient:
        """A v2 session logged in on node ``index``, its lobby history read."""
        client = self.connect(index)
        if password is None:
            client.send("login", name)
        else:
            client.send("login", name, password=password)
        info = client.receive()
        self.assertEqual(info["content"], f"Login successful. You are now logged in as {name}", info)
        self.assertEqual(client.receive()["response"], "history")
        return client

    @staticmethod
    def next_of(client: LinesClient, kind: str, presence: bool = False) -> dict[str, Any]:
        while True:
            response = client.receive(presence=presence)
            if response["response"] == kind:
                return response

    @staticmethod
    def until_pong(client: LinesClient) -> list[dict[str, Any]]:
        """Everything ``client`` got before the answer to a ``ping``."""
        client.send("ping", "end")
        got: list[dict[str, Any]] = []
        while True:
            response = client.receive(presence=True)
            if response["response"] == "pong":
                return got
            got.append(response)

    def test_two_sessions_on_two_nodes_get_a_dm_and_offline_dms_come_once(self) -> None:
        one, two = self.session(0, "alice"), self.session(1, "alice")
        bob = self.session(2, "bob")
        bob.send("msg", "to every session", to="alice", ref="d")
        echo = self.next_of(bob, "message")
        self.assertEqual((echo["ref"], echo["to"]), ("d", "alice"))
        for client in (one, two):
            dm = self.next_of(client, "message")
            self.assertEqual((dm["content"], dm["sender"], dm["to"], dm["id"]), ("to every session", "bob", "alice", echo["id"]))
        one.send("logout")
        two.send("logout")
        self.next_of(one, "info")
        self.next_of(two, "info")

        def offline() -> bool:
            bob.send("names")
            return "alice" not in self.next_of(bob, "info")["content"]

        wait_for(offline, "alice to be offline everywhere")
        sent = [f"while away {n}" for n in range(3)]
        for text in sent:
            bob.send("msg", text, to="alice")
            self.assertEqual(self.next_of(bob, "message")["offline"], True)
        back = self.connect(1)
        back.send("login", "alice", password=PASSWORD)
        self.assertEqual(back.receive()["response"], "info")
        got = self.until_pong(back)
        kept = [response for response in got if response["response"] == "history" and response.get("with")]
        self.assertEqual([(h["with"], h["more"]) for h in kept], [("bob", False)])
        self.assertEqual([m["content"] for m in kept[0]["content"]], sent)
        self.assertEqual([r for r in got if r["response"] == "message"], [])  # not live as well
        again = self.connect(0)  # exactly once, whichever node
        again.send("login", "alice", password=PASSWORD)
        self.assertEqual(again.receive()["response"], "info")
        self.assertEqual([r.get("with") for r in self.until_pong(again) if r["response"] == "history"], [None])
        # Both kept them: history with, from any node.
        again.send("history", {"with": "bob", "limit": 3})
        page = self.next_of(again, "history")
        self.assertEqual([m["content"] for m in page["content"]], sent)

    def test_a_kick_and_a_ban_apply_on_every_node_within_a_second(self) -> None:
        alice = self.session(0, "alice")
        alice.send("join", "#dev")
        self.next_of(alice, "history")
        bobs = [self.session(index, "bob") for index in (1, 2)]
        bobs[0].send("join", "#dev")
        self.next_of(bobs[0], "history")
        for bob in bobs[1:]:  # joined with the name, on its own node
            self.next_of(bob, "history")
        alice.send("kick", {"room": "#dev", "user": "bob"})
        started = time.monotonic()
        for bob in bobs:
            self.assertEqual(self.next_of(bob, "info")["content"], "You were kicked from #dev by alice")
        self.assertLess(time.monotonic() - started, 1.0)
        bobs[1].send("join", "#dev")
        self.next_of(bobs[1], "history")
        self.next_of(bobs[0], "history")
        alice.send("ban", {"room": "#dev", "user": "bob", "comment": "enough"})
        started = time.monotonic()
        for bob in bobs:
            self.assertEqual(self.next_of(bob, "info")["content"], "You were banned from #dev by alice: enough")
        carol = self.session(2, "carol", password=None)  # a guest on the third node
        carol.send("join", "#dev")
        self.next_of(carol, "history")
        for bob in bobs:
            bob.send("join", "#dev")
            self.assertEqual(self.next_of(bob, "error")["code"], "banned")
        self.assertLess(time.monotonic() - started, 1.0)
        # A mute too, for the guest on its own node.
        alice.send("mute", {"room": "#dev", "user": "carol"})
        started = time.monotonic()
        self.assertEqual(self.next_of(carol, "info")["content"], "You were muted in #dev by alice")
        carol.send("msg", "can I?", room="#dev")
        self.assertEqual(self.next_of(carol, "error")["code"], "muted")
        self.assertLess(time.monotonic() - started, 1.0)

    def test_a_server_operators_lobby_ban_closes_sessions_on_every_node(self) -> None:
        root = self.session(0, "root")
        bobs = [self.session(index, "bob") for index in (1, 2)]
        root.send("ban", {"room": "#lobby", "user": "bob", "duration": 60})
        started = time.monotonic()
        for bob in bobs:
            self.assertEqual(self.next_of(bob, "info")["content"], "You were banned from #lobby by root")
            self.assertRaises(EOFError, self.until_pong, bob)
        self.assertLess(time.monotonic() - started, 1.0)
        refused = self.connect(1)
        refused.send("login", "bob", password=PASSWORD)
        self.assertEqual(refused.receive()["code"], "banned")

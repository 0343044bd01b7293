"""Several chatd nodes on one Redis: one name space, one order, one history.

End to end: a real ``redis-server`` (started here, on a free loopback
port, append-only file on) and real ``twistd chatd --cluster`` nodes.
Skipped when redis-server is missing, except under CI (``.ci/run``
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any


from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e import DEADLINE, LinesClient, ServerProcess, can_connect, free_port, wait_for


class RedisProcess:
    """``redis-server`` on a loopback port, with an append-only file."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        assert binary is not None
        log = open(os.path.join(self.workdir, "redis.log"), "ab")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: can_connect(self.port), "redis-server")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=DEADLINE)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def names_at(port: int) -> str:
    """The ``names`` answer of the node on ``port`` (asked by a probe user)."""
    client = LinesClient(port)
    try:
        client.send("login", f"probe{int(time.monotonic() * 1000) % 100000}")
        client.receive()
        client.receive()
        client.send("names")
        return str(client.receive()["content"])
    finally:
        client.close()


def login_at(case: SynchronousTestCase, port: int, name: str) -> LinesClient:
    """A client logged in as ``name`` on the node on ``port``, closed at cleanup."""
    client = LinesClient(port)
    case.addCleanup(client.close)
    client.send("login", name)
    info = client.receive()
    case.assertEqual(info["content"], f"Login successful. You are now logged in as {name}", info)
    client.receive()
    return client


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            raise AssertionError("redis-server is missing: .ci/run should install it")
        raise SkipTest("redis-server is not installed")


class RedisTestCase(SynchronousTestCase):
    """A scratch directory and a redis-server for each test; nodes on demand."""

    def setUp(self) -> None:
        _require_redis()
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.redis = RedisProcess(self.base).start()
        self.addCleanup(self.redis.stop)

    def start_node(self, label: str, url: str | None = None, *args: str) -> ServerProcess:
        workdir = os.path.join(self.base, label)
        os.makedirs(workdir, exist_ok=True)
        node = ServerProcess(workdir, "--cluster", url or self.redis.url, *args).start()
        self.addCleanup(node.kill)
        return node


class ClusterTests(RedisTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nodes = [self.start_node(f"node{i}", None, "--msg-rate", "0") for i in range(3)]

    def login(self, node: ServerProcess, name: str) -> LinesClient:
        return login_at(self, node.port, name)

    def serves(self, node: ServerProcess, name: str) -> bool:
        """Whether ``node`` accepts a login now (then logs out again)."""
        client = LinesClient(node.port)
        try:
            client.send("login", name)
            ok = client.receive()["response"] == "info"
            if ok:
                client.receive()
                client.send("logout")
                client.receive()
            else:
                time.sleep(0.5)
            return ok
        finally:
            client.close()

    def names(self, node: ServerProcess) -> str:
        return names_at(node.port)

    def test_users_on_different_nodes_see_one_order(self) -> None:
        users = [self.login(node, f"user{i}") for i, node in enumerate(self.nodes)]
        per_user = 30

        def send_all(index: int) -> None:
            for n in range(per_user):
                users[index].send("msg", f"{index}:{n}")

        threads = [threading.Thread(target=send_all, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        seen = []
        for user in users:
            got = []
            while len(got) < 3 * per_user:
                response = user.receive()
                if response["response"] == "message":
                    got.append((response["id"], response["sender"], response["content"], response["timestamp"]))
            seen.append(got)
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(seen[0], seen[2])
        ids = [item[0] for item in seen[0]]
        self.assertEqual(ids, sorted(set(ids)))
        for index in range(3):  # each sender's own messages in its order
            own = [content for _, sender, content, _ in seen[0] if sender == f"user{index}"]
            self.assertEqual(own, [f"{index}:{n}" for n in range(per_user)])

    def test_names_are_cluster_wide(self) -> None:
        self.login(self.nodes[0], "Alice")
        other = LinesClient(self.nodes[1].port)
        self.addCleanup(other.close)
        for name in ("alice", "ALICE"):
            other.send("login", name)
            response = other.receive()
            self.assertEqual(response["code"], "name_taken", response)
        self.login(self.nodes[2], "007")
        self.assertIn("Alice", self.names(self.nodes[1]))
        self.assertIn("007", self.names(self.nodes[1]))

    def test_strings_stay_strings(self) -> None:
        sender = self.login(self.nodes[0], "007")
        receiver = self.login(self.nodes[1], "reader")
        sender.send("msg", "0042")
        echo = sender.receive()
        seen = receiver.receive()
        self.assertEqual((seen["sender"], seen["content"]), ("007", "0042"))
        self.assertEqual(seen, echo)

    def test_name_free_again_after_close(self) -> None:
        first = self.login(self.nodes[0], "leaving")
        first.close()
        other = LinesClient(self.nodes[1].port)
        self.addCleanup(other.close)

        def taken_again() -> bool:
            other.send("login", "leaving")
            response = other.receive()
            if response["response"] == "info":
                other.receive()
                return True
            return False

        started = time.monotonic()
        wait_for(taken_again, "the name to be free", deadline=10)
        self.assertLess(time.monotonic() - started, 6)

    def test_dead_node_users_leave_names(self) -> None:
        self.login(self.nodes[1], "doomed")
        self.assertIn("doomed", self.names(self.nodes[0]))
        self.nodes[1].stop(signal.SIGKILL)
        started = time.monotonic()
        wait_for(lambda: "doomed" not in self.names(self.nodes[0]), "the dead node's user to leave", deadline=20)
        self.assertLess(time.monotonic() - started, 15)

    def test_history_is_shared(self) -> None:
        writer = self.login(self.nodes[0], "writer")
        for n in range(5):
            writer.send("msg", f"m{n}")
            writer.receive()
        reader = LinesClient(self.nodes[2].port)
        self.addCleanup(reader.close)
        reader.send("hello", {"protocol": 2})
        reader.receive()
        reader.send("login", "reader")
        reader.receive()
        history = reader.receive()["content"]
        self.assertEqual([m["content"] for m in history], [f"m{n}" for n in range(5)])
        reader.send("history", {"after": history[1]["id"], "limit": 2})
        page = reader.receive()
        self.assertEqual(([m["content"] for m in page["content"]], page["more"]), (["m2", "m3"], True))
        reader.send("history", {"before": history[1]["id"]})
        page = reader.receive()
        self.assertEqual(([m["content"] for m in page["content"]], page["more"]), (["m0"], False))

    def test_redis_restart(self) -> None:
        alice = self.login(self.nodes[0], "alice")
        bob = self.login(self.nodes[1], "bob")
        alice.send("msg", "before the restart")
        acknowledged = alice.receive()
        bob.receive()
        self.redis.stop()
        # New logins are refused quickly while Redis is away.
        newcomer = LinesClient(self.nodes[2].port)
        self.addCleanup(newcomer.close)
        started = time.monotonic()
        newcomer.send("login", "newcomer")
        self.assertEqual(newcomer.receive()["code"], "server_busy")
        self.assertLess(time.monotonic() - started, 5)
        self.redis.start()  # same port, same append-only file
        started = time.monotonic()

        def serving() -> bool:
            newcomer.send("login", "newcomer")
            response = newcomer.receive()
            if response["response"] == "info":
                newcomer.receive()
                return True
            time.sleep(0.5)
            return False

        wait_for(serving, "the cluster to serve again", deadline=30)
        for index, node in enumerate(self.nodes):  # every node is back
            wait_for(lambda: self.serves(node, f"probe{index}"), f"node {index} to serve again", deadline=30)
        self.assertLess(time.monotonic() - started, 20)
        # Connected users stayed connected and still chat.
        bob.send("msg", "after the restart")
        for client in (alice, bob, newcomer):
            message = client.receive()
            while message["response"] != "message":
                message = client.receive()
            self.assertEqual(message["content"], "after the restart")
            self.assertGreater(message["id"], acknowledged["id"])
        # The acknowledged message survived in history.
        newcomer.send("history", {"after": 0})
        contents = [json.loads(m)["content"] for m in newcomer.receive()["content"]]
        self.assertEqual(contents, ["before the restart", "after the restart"])




class DroppingProxy:
    """A TCP proxy to Redis that the test can cut: it drops every
    connection and refuses new ones while blocked. Loopback only; its
    threads are daemons and stop with ``close``."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.blocked = False
        self.closed = False
        self.pairs: list[tuple[Any, Any]] = []
        self.frozen: set[int] = set()  # ids of sockets whose data is dropped
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if id(source) not in self.frozen:
                    sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        import socket

        self.blocked = True
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass

    def restore(self) -> None:
        """Let connections through again."""
        self.blocked = False

    def freeze(self) -> None:
        """Blackhole every open connection: nothing passes and nothing
        closes, as when a network path dies without a word.  New
        connections pass."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        self.frozen.update(id(sock) for pair in pairs for sock in pair)

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


class ProxiedNodeTests(RedisTestCase):
    """A node whose way to Redis drops: it survives and catches up."""

    def setUp(self) -> None:
        super().setUp()
        self.proxy = DroppingProxy(self.redis.port)
        self.addCleanup(self.proxy.close)
        self.direct = self.start_node("direct", None, "--msg-rate", "0")
        self.proxied = self.start_node("proxied", f"redis://127.0.0.1:{self.proxy.port}/0", "--msg-rate", "0")

    def login(self, node: ServerProcess, name: str) -> LinesClient:
        return login_at(self, node.port, name)

    def names(self) -> str:
        return names_at(self.direct.port)

    def test_catches_up_in_order_after_losing_redis(self) -> None:
        talker = self.login(self.direct, "talker")
        listener = self.login(self.proxied, "listener")
        talker.send("msg", "before")
        talker.receive()
        self.assertEqual(listener.receive()["content"], "before")
        self.proxy.cut()
        # Cut off: new logins there are refused quickly, users stay.
        newcomer = LinesClient(self.proxied.port)
        self.addCleanup(newcomer.close)
        started = time.monotonic()
        newcomer.send("login", "newcomer")
        self.assertEqual(newcomer.receive()["code"], "server_busy")
        self.assertLess(time.monotonic() - started, 5)
        sent = [f"missed {n}" for n in range(20)]
        for text in sent:
            talker.send("msg", text)
            talker.receive()
        self.proxy.restore()
        got = []
        while len(got) < len(sent):
            response = listener.receive()
            if response["response"] == "message":
                got.append(response["content"])
        self.assertEqual(got, sent)  # all of them, in order, none twice
        listener.send("msg", "back")
        self.assertEqual(listener.receive()["content"], "back")
        self.assertEqual(talker.receive()["content"], "back")

    def test_name_taken_elsewhere_while_cut_off(self) -> None:
        cut_off = self.login(self.proxied, "twin")
        self.proxy.cut()
        wait_for(lambda: "twin" not in self.names(), "the name to expire while cut off", deadline=20)
        self.login(self.direct, "Twin")  # someone else takes it meanwhile
        self.proxy.restore()
        error = cut_off.receive()
        self.assertEqual(error["code"], "name_taken")
        self.assertRaises(EOFError, cut_off.receive)
        self.assertEqual(self.names().count("win"), 1)

    def test_history_before_the_first_id(self) -> None:
        client = self.login(self.direct, "pager")
        client.send("msg", "one")
        client.receive()
        for before in (0, 1):
            client.send("history", {"before": before})
            page = client.receive()
            self.assertEqual((page["response"], page["content"], page["more"]), ("history", [], False))

    def test_reader_on_a_dead_connection_reconnects(self) -> None:
        """A blackholed connection (no reply, no close) is dropped after
        the reply timeout and the node reads and delivers again."""
        talker = self.login(self.direct, "talker")
        listener = self.login(self.proxied, "listener")
        self.proxy.freeze()
        talker.send("msg", "through the dead link")
        talker.receive()
        started = time.monotonic()
        response = listener.receive()
        while response["response"] != "message":
            response = listener.receive()
        self.assertEqual(response["content"], "through the dead link")
        self.assertLess(time.monotonic() - started, 15)
        wait_for(lambda: self.posts(listener), "the proxied node to publish again", deadline=20)

    def posts(self, client: LinesClient) -> bool:
        """Whether a message from ``client`` comes back (not server_busy)."""
        client.send("msg", "echo?")
        while True:
            response = client.receive()
            if response["response"] == "message" and response["content"] == "echo?":
                return True
            if response.get("code") == "server_busy":
                return False

    def test_names_reasserted_after_they_expired(self) -> None:
        self.login(self.proxied, "bee")
        self.assertIn("bee", self.names())
        self.proxy.cut()
        wait_for(lambda: "bee" not in self.names(), "the name to expire while cut off", deadline=20)
        self.proxy.restore()
        wait_for(lambda: "bee" in self.names(), "the name to be taken again", deadline=20)


class ClusterPresenceTests(RedisTestCase):
    def test_presence_crosses_nodes(self) -> None:
        nodes = [self.start_node(f"node{index}") for index in range(2)]
        watcher = LinesClient(nodes[0].port)
        self.addCleanup(watcher.close)
        watcher.send("hello", {"protocol": 2})
        watcher.receive()
        watcher.send("login", "watcher")
        watcher.receive()
        watcher.receive()
        visitor = login_at(self, nodes[1].port, "visitor")
        online = watcher.receive(presence=True)
        self.assertEqual(online["content"], {"user": "visitor", "status": "online", "room": "#lobby"})
        visitor.send("logout")
        offline = watcher.receive(presence=True)
        self.assertEqual(offline["content"], {"user": "visitor", "status": "offline", "room": "#lobby"})

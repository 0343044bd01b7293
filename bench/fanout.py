"""Fan-out benchmark: chatd against InspIRCd, side by side.

    .venv/bin/python bench/fanout.py                 # both servers, both shapes, 3 repeats
    .venv/bin/python bench/fanout.py --servers chatd --repeats 1
    .venv/bin/python bench/fanout.py --servers chatd-base,chatd --base-checkout ../before  # before/after

InspIRCd comes from Debian (``apt-get install inspircd``); it is started
here with a generated config (flood protection off, large sendq/recvq,
many clients per IP, loopback port).  chatd is started as
``twistd -n --pidfile= chatd --msg-rate 0 --max-per-ip 0
--history-on-login 0`` with its default durable (SQLite) history.

Shapes (the load generator is this process: asyncio, one event loop):

- ``burst``: N clients join one room, S of them send M messages each, all
  at once.  Reported: deliveries per second of wall time, and deliveries
  per server CPU-second (CPU read from ``/proc/<pid>/task/*/schedstat``,
  nanoseconds, all threads, before and after).
- ``rate``: N clients, R messages per second in all, evenly spaced, for D
  seconds.  Reported: p50/p99/max latency from send to receipt over every
  delivery, and deliveries lost.

A delivery is a message line received by a client: chatd echoes to the
sender (N per message), IRC does not (N-1); both are counted as received.
The two servers run alternately, each repeat on a fresh process, and the
table shows medians.  The generator's own CPU is printed too: it must not
be the bottleneck.  Loopback only; every wait is bounded; only the
servers started here are stopped, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from common import free_port, twistd_command

WAIT = 60.0  # the longest any phase may take
LOGIN_BATCH = 50  # clients connecting at once


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds on CPU)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


# -- servers ---------------------------------------------------------------


class Server:
    """A server process under test."""

    name = "?"
    protocol = "?"

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    def start(self) -> None:
        log = open(os.path.join(self.workdir, f"{self.name}.log"), "wb")
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=self.environment()
        )
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def ports(self) -> list[int]:
        """Where clients connect (spread over these, round-robin)."""
        return [self.port]

    def cpu(self) -> float:
        """CPU seconds of every process of this server."""
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


class Chatd(Server):
    name = "chatd"
    protocol = "json"
    profile: str | None = None  # --profile: cProfile output of the server
    extra: list[str] = []  # more chatd options

    def command(self) -> list[str]:
        profiling = ["--profiler=cprofile", f"--profile={self.profile}", "--savestats"] if self.profile else []
        return [*twistd_command(), *profiling, "-n", "--pidfile=", "chatd", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--msg-rate", "0", "--request-rate", "0", "--max-per-ip", "0", "--history-on-login", "0", "--data-dir", self.workdir, *self.extra]


class ChatdBase(Chatd):
    """chatd from another checkout (``--base-checkout PATH``), e.g. the main
    before a change, run by this environment's twistd: the "before" of a
    before/after comparison in one run."""

    name = "chatd-base"
    checkout = ""

    def environment(self) -> dict[str, str] | None:
        return dict(os.environ, PYTHONPATH=self.checkout)

    def command(self) -> list[str]:
        command = super().command()
        if "--request-rate" in command and not self._knows_request_rate():
            at = command.index("--request-rate")
            del command[at : at + 2]
        return command

    def _knows_request_rate(self) -> bool:
        with open(os.path.join(self.checkout, "chatd", "tap.py")) as tap:
            return "request-rate" in tap.read()


INSPIRCD_CONF = """
<server name="bench.chatd.test" description="fan-out benchmark" network="bench">
<admin name="bench" nick="bench" email="bench@chatd.test">
<bind address="127.0.0.1" port="{port}" type="clients">
<connect name="bench" allow="127.0.0.1" timeout="60" pingfreq="600" hardsendq="67108864" softsendq="67108864"
         recvq="67108864" threshold="1000000" commandrate="100000000" fakelag="no" localmax="100000"
         globalmax="100000" limit="100000" maxchans="20" resolvehostnames="no" useident="no">
<pid file="{workdir}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{workdir}/inspircd-events.log">
<performance netbuffersize="65536" somaxconn="1024" softlimit="20000" clonesonconnect="no" quietbursts="yes">
<security hideserver="" announceinvites="none" hidekills="" hideulines="no" hidesplits="no" maxtargets="20"
          customversion="" operspywhois="no" restrictbannedusers="no" genericoper="no" userstats="Pu">
<limits maxnick="30" maxchan="64" maxmodes="20" maxident="10" maxhost="64" maxquit="255" maxtopic="307"
        maxkick="255" maxreal="128" maxgecos="128" maxaway="200">
<channels users="100" opers="100">
<options prefixquit="Quit: " suffixquit="" prefixpart="" suffixpart="" syntaxhints="no" cyclehosts="no"
         cyclehostsfromuser="no" announcets="no" allowmismatch="no" defaultbind="auto" hostintopic="yes"
         pingwarning="15" serverpingfreq="60" defaultmodes="nt" xlinemessage="banned" exemptchanops=""
         invitebypassmodes="yes" nosnoticestack="no">
"""


class ChatdCluster(Server):
    """N chatd nodes on one redis-server (``--cluster-nodes N``)."""

    name = "chatd-cluster"
    protocol = "json"
    nodes = 2

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.redis_port = free_port()
        self.members: list[Chatd] = []
        self.redis: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.redis = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for index in range(self.nodes):
            workdir = os.path.join(self.workdir, f"node{index}")
            os.makedirs(workdir)
            node = Chatd(workdir)
            node.extra = ["--cluster", f"redis://127.0.0.1:{self.redis_port}/0", "--max-sendq", "0"]
            node.start()
            self.members.append(node)
        time.sleep(1)  # let every node reach Redis

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.members]

    def cpu(self) -> float:
        assert self.redis is not None
        return sum(node.cpu() for node in self.members) + cpu_seconds(self.redis.pid)

    def stop(self) -> None:
        for node in self.members:
            node.stop()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            self.redis.wait(timeout=15)


class InspIRCd(Server):
    name = "inspircd"
    protocol = "irc"

    def command(self) -> list[str]:
        config = os.path.join(self.workdir, "inspircd.conf")
        with open(config, "w") as handle:
            handle.write(INSPIRCD_CONF.format(port=self.port, workdir=self.workdir))
        binary = shutil.which("inspircd") or "/usr/sbin/inspircd"
        return [binary, "--nofork", "--nopid", f"--config={config}", "--runasroot"]


# -- clients ---------------------------------------------------------------


TIMESTAMP = re.compile(rb"t=(\d+\.\d+)")


@dataclass
class Client:
    """One connection of the load generator."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: int = 0
    latencies: list[float] = field(default_factory=list)


class Dialect:
    """How to speak to a server: chatd's JSON lines or IRC."""

    marker = b""

    async def join(self, client: Client) -> None:
        raise NotImplementedError

    def message(self, text: str) -> bytes:
        raise NotImplementedError


class JsonDialect(Dialect):
    marker = b'"response": "message"'

    async def join(self, client: Client) -> None:
        client.writer.write(json.dumps({"request": "login", "content": f"u{client.index}"}).encode() + b"\n")
        for _ in range(2):  # info, history
            line = await asyncio.wait_for(client.reader.readline(), WAIT)
            if b"error" in line:
                raise RuntimeError(f"login failed: {line!r}")

    def message(self, text: str) -> bytes:
        return json.dumps({"request": "msg", "content": text}).encode() + b"\n"


class IrcDialect(Dialect):
    marker = b" PRIVMSG #bench :"

    async def join(self, client: Client) -> None:
        client.writer.write(f"NICK u{client.index}\r\nUSER u{client.index} 0 * :bench\r\n".encode())
        await self._until(client, b" 001 ")
        client.writer.write(b"JOIN #bench\r\n")
        await self._until(client, b" 366 ")

    @staticmethod
    async def _until(client: Client, code: bytes) -> None:
        while True:
            line = await asyncio.wait_for(client.reader.readline(), WAIT)
            if not line:
                raise RuntimeError("IRC server closed the connection")
            if line.startswith(b"PING"):
                client.writer.write(b"PONG" + line[4:])
            if code in line:
                return

    def message(self, text: str) -> bytes:
        return f"PRIVMSG #bench :{text}\r\n".encode()


async def connect_all(ports: list[int], dialect: Dialect, count: int) -> list[Client]:
    clients: list[Client] = []

    async def one(index: int) -> Client:
        port = ports[index % len(ports)]
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), WAIT)
        client = Client(index, reader, writer)
        await dialect.join(client)
        return client

    for start in range(0, count, LOGIN_BATCH):
        clients.extend(await asyncio.gather(*(one(i) for i in range(start, min(count, start + LOGIN_BATCH)))))
    return clients


async def count_deliveries(client: Client, dialect: Dialect, expected: int, timed: bool) -> None:
    """Read until ``expected`` messages arrived (or the connection ends).

    Reads in chunks and scans them with ``bytes.count`` and a regex, so
    the generator spends little CPU per delivery; with ``timed``, every
    message's send time (``t=...`` in its text) gives its latency at the
    moment its chunk arrived.
    """
    marker = dialect.marker
    pending = b""
    while client.received < expected:
        chunk = await client.reader.read(1 << 18)
        if not chunk:
            return
        now = time.perf_counter()
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        complete, pending = data[:cut], data[cut:]
        client.received += complete.count(marker)
        if timed:
            client.latencies.extend(now - float(sent) for sent in TIMESTAMP.findall(complete))
        if b"PING" in complete:
            for line in complete.split(b"\n"):
                if line.startswith(b"PING"):
                    client.writer.write(b"PONG" + line[4:] + b"\n")


def expected_per_client(server: Server, client: Client, senders: int, per_sender: int) -> int:
    """Messages a client will receive: IRC does not echo to the sender."""
    total = senders * per_sender
    if server.protocol == "irc" and client.index < senders:
        return total - per_sender
    return total


async def burst(server: Server, clients_n: int, senders: int, messages: int) -> dict[str, float]:
    dialect = JsonDialect() if server.protocol == "json" else IrcDialect()
    clients = await connect_all(server.ports, dialect, clients_n)
    await asyncio.sleep(0.5)  # let the joins settle
    readers = [asyncio.ensure_future(count_deliveries(c, dialect, expected_per_client(server, c, senders, messages), False))
               for c in clients]
    payloads = [b"".join(dialect.message(f"burst {s}.{n} " + "x" * 40) for n in range(messages)) for s in range(senders)]
    cpu_before, mine_before, started = server.cpu(), own_cpu(), time.perf_counter()
    for sender, payload in zip(clients[:senders], payloads):
        sender.writer.write(payload)
    try:
        await asyncio.wait_for(asyncio.gather(*readers), WAIT)
    except asyncio.TimeoutError:
        pass
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    mine = own_cpu() - mine_before
    delivered = sum(c.received for c in clients)
    expected = sum(expected_per_client(server, c, senders, messages) for c in clients)
    for c in clients:
        c.writer.close()
    return {"deliveries": delivered, "lost": expected - delivered, "wall": elapsed, "cpu": cpu,
            "per_cpu_s": delivered / cpu if cpu else 0.0, "per_s": delivered / elapsed, "generator_cpu": mine}


async def rate(server: Server, clients_n: int, senders: int, per_second: float, seconds: float) -> dict[str, float]:
    dialect = JsonDialect() if server.protocol == "json" else IrcDialect()
    clients = await connect_all(server.ports, dialect, clients_n)
    await asyncio.sleep(0.5)
    total = int(per_second * seconds)
    per_sender = total // senders
    total = per_sender * senders
    readers = [asyncio.ensure_future(count_deliveries(c, dialect, expected_per_client(server, c, senders, per_sender), True))
               for c in clients]
    cpu_before, mine_before, started = server.cpu(), own_cpu(), time.perf_counter()
    interval = 1.0 / per_second
    for n in range(total):
        due = started + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sender = clients[n % senders]
        sender.writer.write(dialect.message(f"t={time.perf_counter():.6f} n={n}"))
    try:
        await asyncio.wait_for(asyncio.gather(*readers), 10)
    except asyncio.TimeoutError:
        pass
    cpu = server.cpu() - cpu_before
    mine = own_cpu() - mine_before
    latencies = sorted(latency for c in clients for latency in c.latencies)
    expected = sum(expected_per_client(server, c, senders, per_sender) for c in clients)
    delivered = sum(c.received for c in clients)
    for c in clients:
        c.writer.close()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": 1000 * latencies[-1] if latencies else float("nan"),
            "lost": expected - delivered, "deliveries": delivered, "cpu": cpu, "generator_cpu": mine}


# -- driver ----------------------------------------------------------------


SERVERS = {"chatd": Chatd, "chatd-base": ChatdBase, "inspircd": InspIRCd, "chatd-cluster": ChatdCluster}


def run_one(kind: str, shape: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        server = SERVERS[kind](workdir)
        server.start()
        try:
            if shape == "burst":
                return asyncio.run(burst(server, args.clients, args.senders, args.messages))
            return asyncio.run(rate(server, args.rate_clients, args.rate_senders, args.rate, args.seconds))
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="inspircd,chatd")
    parser.add_argument("--shapes", default="burst,rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate-clients", type=int, default=200)
    parser.add_argument("--rate-senders", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cluster-nodes", type=int, default=2, help="nodes of the chatd-cluster server")
    parser.add_argument("--base-checkout", help="a chatd checkout to run as server chatd-base (before/after in one run)")
    parser.add_argument("--profile", help="write chatd's cProfile stats here (one run; prints the top functions)")
    args = parser.parse_args()
    if args.profile:
        Chatd.profile = os.path.abspath(args.profile)
    ChatdCluster.nodes = args.cluster_nodes
    if args.base_checkout:
        ChatdBase.checkout = os.path.abspath(args.base_checkout)
    servers = args.servers.split(",")
    shapes = args.shapes.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for shape in shapes:
            for kind in servers:  # alternate, so drift on a noisy machine hits both
                results.setdefault((kind, shape), []).append(run_one(kind, shape, args))

    def median(kind: str, shape: str, key: str) -> float:
        return statistics.median(run[key] for run in results[(kind, shape)])

    print(f"machine: {os.cpu_count()} CPUs; repeats={args.repeats}; medians of the repeats")
    if "burst" in shapes:
        print(f"\nburst: {args.clients} clients, {args.senders} senders x {args.messages} messages")
        print("| server | deliveries | lost | wall s | server CPU s | deliveries/s | deliveries/CPU-s | generator CPU s |")
        print("|---|---|---|---|---|---|---|---|")
        for kind in servers:
            print(f"| {kind} | {median(kind, 'burst', 'deliveries'):.0f} | {median(kind, 'burst', 'lost'):.0f} | "
                  f"{median(kind, 'burst', 'wall'):.3f} | {median(kind, 'burst', 'cpu'):.3f} | "
                  f"{median(kind, 'burst', 'per_s'):.0f} | {median(kind, 'burst', 'per_cpu_s'):.0f} | "
                  f"{median(kind, 'burst', 'generator_cpu'):.2f} |")
            runs = ", ".join(f"{run['per_cpu_s']:.0f}" for run in results[(kind, "burst")])
            print(f"|  ({kind} runs, deliveries/CPU-s) | {runs} |")
    if "rate" in shapes:
        print(f"\nrate: {args.rate_clients} clients, {args.rate:g} msg/s for {args.seconds:g} s from {args.rate_senders} senders")
        print("| server | p50 ms | p99 ms | max ms | lost | server CPU s | generator CPU s |")
        print("|---|---|---|---|---|---|---|")
        for kind in servers:
            print(f"| {kind} | {median(kind, 'rate', 'p50_ms'):.2f} | {median(kind, 'rate', 'p99_ms'):.2f} | "
                  f"{median(kind, 'rate', 'max_ms'):.2f} | {median(kind, 'rate', 'lost'):.0f} | "
                  f"{median(kind, 'rate', 'cpu'):.3f} | {median(kind, 'rate', 'generator_cpu'):.2f} |")
    if args.profile:
        import pstats

        print(f"\nchatd profile ({args.profile}), top functions by own time:")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)
    if set(servers) >= {"chatd", "chatd-base"}:
        print("\nratios (chatd / chatd-base):")
        if "burst" in shapes:
            ratio = median("chatd", "burst", "per_cpu_s") / median("chatd-base", "burst", "per_cpu_s")
            print(f"- deliveries per server CPU-second: {ratio:.2f}x")
        if "rate" in shapes:
            for key in ("p50_ms", "p99_ms", "cpu"):
                ratio = median("chatd", "rate", key) / median("chatd-base", "rate", key)
                print(f"- rate {key}: {ratio:.2f}x")
    if set(servers) >= {"chatd", "inspircd"}:
        print("\nratios (chatd / InspIRCd):")
        if "burst" in shapes:
            ratio = median("chatd", "burst", "per_cpu_s") / median("inspircd", "burst", "per_cpu_s")
            print(f"- deliveries per server CPU-second: {ratio:.2f}x (goal: >= 2x)")
        if "rate" in shapes:
            ratio = median("chatd", "rate", "p99_ms") / median("inspircd", "rate", "p99_ms")
            print(f"- p99 latency: {ratio:.2f}x (goal: <= 1x)")


if __name__ == "__main__":
    main()

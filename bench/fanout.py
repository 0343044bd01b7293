"""Fan-out benchmark: chatd against InspIRCd, side by side.

    .venv/bin/python bench/fanout.py                 # both servers, both shapes, 3 repeats
    .venv/bin/python bench/fanout.py --servers chatd --repeats 1
    .venv/bin/python bench/fanout.py --servers chatd-base,chatd --base-checkout ../before  # before/after

InspIRCd comes from Debian (``apt-get install inspircd``); it is started
here with a generated config (flood protection off, large sendq/recvq,
many clients per IP, loopback port).  chatd is started as
``twistd -n --pidfile= chatd --msg-rate 0 --max-per-ip 0
--history-on-login 0`` with its default durable (SQLite) history.

The load generator: the bulk clients run in this process (asyncio, one
event loop, in a thread at ``--nice``, default 10: nice is per thread on
Linux, so the servers and the probes, started from the main thread, keep
nice 0).  Bulk clients are cheap: once joined, asyncio stops reading them
and a private epoll polled from the loop does one ``readv`` of up to
1 MiB per ready socket and counts newlines (one per JSON or IRC line),
parsing nothing.

Shapes:

- ``burst``: N clients join one room, S of them send M messages each, all
  at once.  Reported: deliveries per second of wall time, deliveries per
  server CPU-second and server CPU per delivery (CPU read from
  ``/proc/<pid>/task/*/schedstat``, nanoseconds, all threads, before and
  after).
- ``rate``: N clients, R messages per second in all, evenly spaced, for D
  seconds.  ``--probes`` of the N (default 5) are latency probes in a
  process of their own (``bench/probe.py``): each message carries its send
  time (``t=<time.monotonic_ns()>``, CLOCK_MONOTONIC, one clock for every
  process of the machine) and the probes report receipt minus send for
  every message they get.  Reported: p50/p90/p99/max over the probes'
  deliveries, server CPU per delivery, deliveries lost.

A delivery is a message line received by a client: chatd echoes to the
sender (N per message), IRC does not (N-1); both are counted as received.
The servers run alternately, each repeat on a fresh process, and the
tables show medians.  The generator's CPU over each measured window (this
process, every thread, plus the probe process) is reported as a share of
one core; the run prints "generator-bound" and exits 2 instead of
trusting its figures when that share is above 70% in any run, or when
InspIRCd's median rate p99 is above 5 ms (then the generator, not the
servers, sets the tail).  With matplotlib importable, the rate latency
CDF of every server is written to ``bench/fanout-cdf.png``.  Loopback
only; every wait is bounded; only the processes started here are
stopped, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

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


RECV_BUFFER = bytearray(1 << 20)  # shared: every bulk read is handled before the next one


class Bulk(asyncio.BufferedProtocol):
    """A cheap bulk receiver: one ``recv`` of up to 1 MiB per wakeup.

    While joining it hands out lines (``readline``); once ``counting`` it
    only counts newlines (one per JSON line or IRC line), parsing nothing,
    so the generator spends almost no CPU per delivery.  Every message of
    the measured window is a line; the count is reset when the window
    opens, after the joins have settled.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.text = b""
        self.arrived = asyncio.Event()
        self.counting = False
        self.received = 0
        self.expected = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return RECV_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        if self.counting:
            self.received += RECV_BUFFER.count(b"\n", 0, nbytes)
            if self.received >= self.expected and not self.done.done():
                self.done.set_result(None)
            return
        self.text += bytes(RECV_BUFFER[:nbytes])
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.arrived.set()
        if not self.done.done():
            self.done.set_result(None)

    async def readline(self) -> bytes:
        """The next line while joining (b"" when the connection ended)."""
        while b"\n" not in self.text:
            if self.transport is None or self.transport.is_closing():
                return b""
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), WAIT)
        line, _, self.text = self.text.partition(b"\n")
        return line + b"\n"

    def count(self, expected: int, counter: "Counter") -> None:
        """Open the window: from now on ``counter`` reads this socket and counts lines up to ``expected``."""
        self.counting, self.received, self.expected, self.text = True, 0, expected, b""
        if expected <= 0:
            self.finish()
            return
        assert self.transport is not None
        self.transport.pause_reading()  # asyncio no longer reads it: the counter does
        counter.add(self)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def fileno(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("socket").fileno())

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Counter:
    """Reads every counting socket from a private epoll, polled from the event loop.

    asyncio costs some 10 us of Python per socket wakeup; at 200 msg/s to
    200 clients that alone is most of a core.  Here a wakeup is one
    ``readv`` of up to 1 MiB into a shared buffer and one ``count``; when
    nothing is ready the loop sleeps ``tick`` seconds (the probes, not
    these sockets, measure latency, and the kernel buffers what arrives).
    """

    def __init__(self, tick: float = 0.002) -> None:
        self.poll = select.epoll()
        self.links: dict[int, Bulk] = {}
        self.tick = tick

    def add(self, link: Bulk) -> None:
        fd = link.fileno()
        self.links[fd] = link
        self.poll.register(fd, select.EPOLLIN)

    def _drop(self, fd: int) -> None:
        self.poll.unregister(fd)
        self.links.pop(fd).finish()

    async def run(self, timeout: float) -> None:
        """Count until every socket has its lines (or ``timeout`` seconds pass)."""
        end = time.monotonic() + timeout
        buffers = [RECV_BUFFER]
        try:
            while self.links and time.monotonic() < end:
                events = self.poll.poll(0)
                if not events:
                    await asyncio.sleep(self.tick)
                    continue
                for fd, _ in events:
                    try:
                        nbytes = os.readv(fd, buffers)
                    except BlockingIOError:
                        continue
                    except OSError:
                        nbytes = 0
                    link = self.links[fd]
                    if nbytes == 0:
                        self._drop(fd)
                        continue
                    link.received += RECV_BUFFER.count(b"\n", 0, nbytes)
                    if link.received >= link.expected:
                        self._drop(fd)
                await asyncio.sleep(0)  # let the sender keep its schedule
        finally:
            self.poll.close()


@dataclass
class Client:
    """One bulk connection of the load generator."""

    index: int
    link: Bulk


class Dialect:
    """How to speak to a server: chatd's JSON lines or IRC."""

    async def join(self, client: Client) -> None:
        raise NotImplementedError

    def message(self, text: str) -> bytes:
        raise NotImplementedError


class JsonDialect(Dialect):
    async def join(self, client: Client) -> None:
        client.link.write(json.dumps({"request": "login", "content": f"u{client.index}"}).encode() + b"\n")
        for _ in range(2):  # info, history
            line = await client.link.readline()
            if b"error" in line or not line:
                raise RuntimeError(f"login failed: {line!r}")

    def message(self, text: str) -> bytes:
        return json.dumps({"request": "msg", "content": text}).encode() + b"\n"


class IrcDialect(Dialect):
    async def join(self, client: Client) -> None:
        client.link.write(f"NICK u{client.index}\r\nUSER u{client.index} 0 * :bench\r\n".encode())
        await self._until(client, b" 001 ")
        client.link.write(b"JOIN #bench\r\n")
        await self._until(client, b" 366 ")

    @staticmethod
    async def _until(client: Client, code: bytes) -> None:
        while True:
            line = await client.link.readline()
            if not line:
                raise RuntimeError("IRC server closed the connection")
            if line.startswith(b"PING"):  # while counting, none come: pingfreq is 600 s
                client.link.write(b"PONG" + line[4:])
            if code in line:
                return

    def message(self, text: str) -> bytes:
        return f"PRIVMSG #bench :{text}\r\n".encode()


def dialect_of(server: Server) -> Dialect:
    return JsonDialect() if server.protocol == "json" else IrcDialect()


async def connect_all(ports: list[int], dialect: Dialect, indices: list[int]) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []

    async def one(index: int) -> Client:
        port = ports[index % len(ports)]
        _, link = await asyncio.wait_for(loop.create_connection(Bulk, "127.0.0.1", port), WAIT)
        client = Client(index, link)
        await dialect.join(client)
        return client

    for start in range(0, len(indices), LOGIN_BATCH):
        clients.extend(await asyncio.gather(*(one(i) for i in indices[start : start + LOGIN_BATCH])))
    return clients


def expected_per_client(server: Server, index: int, senders: int, per_sender: int) -> int:
    """Messages client ``index`` will receive: IRC does not echo to the sender."""
    total = senders * per_sender
    if server.protocol == "irc" and index < senders:
        return total - per_sender
    return total


def generator_cpu() -> float:
    """CPU seconds of the bulk generator: this process, every thread (the probes add theirs)."""
    return cpu_seconds(os.getpid())


async def burst(server: Server, clients_n: int, senders: int, messages: int) -> dict[str, Any]:
    dialect = dialect_of(server)
    clients = await connect_all(server.ports, dialect, list(range(clients_n)))
    await asyncio.sleep(0.5)  # let the joins settle
    payloads = [b"".join(dialect.message(f"burst {s}.{n} " + "x" * 40) for n in range(messages)) for s in range(senders)]
    counter = Counter()
    for c in clients:
        c.link.count(expected_per_client(server, c.index, senders, messages), counter)
    cpu_before, mine_before, started = server.cpu(), generator_cpu(), time.perf_counter()
    for sender, payload in zip(clients[:senders], payloads):
        sender.link.write(payload)
    await counter.run(WAIT)
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    mine = generator_cpu() - mine_before
    delivered = sum(c.link.received for c in clients)
    expected = sum(c.link.expected for c in clients)
    for c in clients:
        c.link.close()
    return {"deliveries": delivered, "lost": expected - delivered, "wall": elapsed, "cpu": cpu,
            "per_cpu_s": delivered / cpu if cpu else 0.0, "per_s": delivered / elapsed,
            "us_per_delivery": 1e6 * cpu / delivered if delivered else float("nan"),
            "generator_cpu": mine, "generator_share": mine / elapsed}


def start_probes(server: Server, indices: list[int], expected: int, seconds: float) -> subprocess.Popen[bytes]:
    """The probe process (bench/probe.py), started from the main thread (so at nice 0)."""
    config = {"ports": server.ports, "protocol": server.protocol, "indices": indices,
              "expected": expected, "deadline_s": seconds + 2 * WAIT}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
    return subprocess.Popen([sys.executable, script, json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def join_probe(probe: subprocess.Popen[bytes]) -> None:
    """Have the probe process join its next client (and wait until it has)."""
    assert probe.stdin is not None and probe.stdout is not None
    probe.stdin.write(b"join\n")
    probe.stdin.flush()
    answer = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, probe.stdout.readline), WAIT)
    if answer.strip() != b"joined":
        raise RuntimeError(f"the probe process did not join: {answer!r}")


async def rate(server: Server, clients_n: int, senders: int, per_second: float, seconds: float,
               probe: subprocess.Popen[bytes] | None, probes_n: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    dialect = dialect_of(server)
    bulk = list(range(clients_n - probes_n))
    clients: list[Client] = []
    if probe is not None:  # probe j joins after (j + 1/2) / probes of the bulk clients: spread over the order
        for j in range(probes_n):
            upto = (2 * j + 1) * len(bulk) // (2 * probes_n)
            clients.extend(await connect_all(server.ports, dialect, bulk[len(clients) : upto]))
            await join_probe(probe)
    clients.extend(await connect_all(server.ports, dialect, bulk[len(clients) :]))
    await asyncio.sleep(0.5)
    total = int(per_second * seconds)
    per_sender = total // senders
    total = per_sender * senders
    counter = Counter(tick=0.02)  # a few messages per read: kernel buffers hold far more than 20 ms of them
    for c in clients:
        c.link.count(expected_per_client(server, c.index, senders, per_sender), counter)
    counting = asyncio.ensure_future(counter.run(seconds + 10))
    cpu_before, mine_before, started = server.cpu(), generator_cpu(), time.perf_counter()
    probe_before = cpu_seconds(probe.pid) if probe is not None else 0.0
    interval = 1.0 / per_second
    for n in range(total):
        due = started + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        clients[n % senders].link.write(dialect.message(f"t={time.monotonic_ns()} n={n}"))
    await counting
    report: dict[str, Any] = {"latencies_ns": [], "received": 0, "cpu_s": probe_before}
    if probe is not None:
        out, _ = await asyncio.wait_for(loop.run_in_executor(None, probe.communicate), 10 + WAIT)
        report = json.loads(out.decode().strip().splitlines()[-1])
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    # the probe has exited: its CPU in the window is its final figure minus the one at the start
    probe_cpu = float(report["cpu_s"]) - probe_before
    mine = generator_cpu() - mine_before + probe_cpu
    latencies: list[int] = sorted(report["latencies_ns"])
    expected = sum(c.link.expected for c in clients) + probes_n * total
    delivered = sum(c.link.received for c in clients) + int(report["received"])
    for c in clients:
        c.link.close()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1e6 if latencies else float("nan")

    return {"p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": latencies[-1] / 1e6 if latencies else float("nan"), "samples": len(latencies),
            "lost": expected - delivered, "deliveries": delivered, "cpu": cpu,
            "us_per_delivery": 1e6 * cpu / delivered if delivered else float("nan"),
            "generator_cpu": mine, "probe_cpu": probe_cpu, "generator_share": mine / elapsed, "latencies_ns": latencies}


# -- driver ----------------------------------------------------------------


SERVERS = {"chatd": Chatd, "chatd-base": ChatdBase, "inspircd": InspIRCd, "chatd-cluster": ChatdCluster}
GENERATOR_LIMIT = 0.70  # of one core, over the measured window
INSPIRCD_P99_LIMIT_MS = 5.0  # above this on this machine, the generator sets the tail
T = TypeVar("T")


def niced(nice: int, work: Callable[[], T]) -> T:
    """Run ``work`` in a thread at ``nice`` and return its result.

    On Linux nice is per thread, so the bulk generator yields the CPU to
    the server and the probes, which are started from the main thread and
    keep its priority.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            box["result"] = work()
        except BaseException as error:  # handed to the caller
            box["error"] = error

    thread = threading.Thread(target=body, name="generator")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def run_one(kind: str, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        server = SERVERS[kind](workdir)
        server.start()
        probe: subprocess.Popen[bytes] | None = None
        try:
            if shape == "burst":
                return niced(args.nice, lambda: asyncio.run(burst(server, args.clients, args.senders, args.messages)))
            probes = min(args.probes, args.rate_clients - args.rate_senders)
            total = int(args.rate * args.seconds) // args.rate_senders * args.rate_senders
            if probes > 0:
                probe = start_probes(server, list(range(args.rate_clients - probes, args.rate_clients)), total, args.seconds)
            return niced(args.nice, lambda: asyncio.run(
                rate(server, args.rate_clients, args.rate_senders, args.rate, args.seconds, probe, probes)))
        finally:
            if probe is not None and probe.poll() is None:
                probe.kill()
                probe.wait(timeout=15)
            server.stop()


def generator_bound(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """Why the figures measure the generator rather than the servers (empty: they do not)."""
    reasons = []
    for (kind, shape), runs in results.items():
        for number, run in enumerate(runs, 1):
            if run["generator_share"] > GENERATOR_LIMIT:
                reasons.append(f"{kind} {shape} run {number}: generator CPU {100 * run['generator_share']:.0f}% "
                               f"of a core (limit {100 * GENERATOR_LIMIT:.0f}%)")
    if ("inspircd", "rate") in results:
        p99 = statistics.median(run["p99_ms"] for run in results[("inspircd", "rate")])
        if not p99 <= INSPIRCD_P99_LIMIT_MS:
            reasons.append(f"InspIRCd rate p99 {p99:.2f} ms (limit {INSPIRCD_P99_LIMIT_MS:g} ms)")
    return reasons


def plot_cdf(results: dict[tuple[str, str], list[dict[str, Any]]], servers: list[str]) -> str | None:
    """Write the rate latency CDF beside RESULTS.md, if matplotlib is importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for kind in servers:
        latencies = sorted(x / 1e6 for run in results.get((kind, "rate"), []) for x in run["latencies_ns"])
        if latencies:
            axes.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], label=kind)
    axes.set_xscale("log")
    axes.set_xlabel("latency, send to receipt (ms, log)")
    axes.set_ylabel("fraction of probe deliveries")
    axes.set_title("fanout.py rate shape: latency CDF (all repeats)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fanout-cdf.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


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
    parser.add_argument("--probes", type=int, default=5, help="rate: latency probe clients, in a process of their own")
    parser.add_argument("--nice", type=int, default=10, help="nice of the bulk generator thread (servers and probes: 0)")
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
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for shape in shapes:
            for kind in servers:  # alternate, so drift on a noisy machine hits both
                results.setdefault((kind, shape), []).append(run_one(kind, shape, args))

    def median(kind: str, shape: str, key: str) -> float:
        return float(statistics.median(run[key] for run in results[(kind, shape)]))

    print(f"machine: {os.cpu_count()} CPUs; repeats={args.repeats}; medians of the repeats; "
          f"generator CPU = bulk generator (nice {args.nice}) + probe process, over the measured window")
    if "burst" in shapes:
        print(f"\nburst: {args.clients} clients, {args.senders} senders x {args.messages} messages")
        print("| server | deliveries | lost | wall s | server CPU s | deliveries/s | deliveries/CPU-s "
              "| server CPU us/delivery | generator CPU s | generator % of a core |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for kind in servers:
            print(f"| {kind} | {median(kind, 'burst', 'deliveries'):.0f} | {median(kind, 'burst', 'lost'):.0f} | "
                  f"{median(kind, 'burst', 'wall'):.3f} | {median(kind, 'burst', 'cpu'):.3f} | "
                  f"{median(kind, 'burst', 'per_s'):.0f} | {median(kind, 'burst', 'per_cpu_s'):.0f} | "
                  f"{median(kind, 'burst', 'us_per_delivery'):.2f} | {median(kind, 'burst', 'generator_cpu'):.2f} | "
                  f"{100 * median(kind, 'burst', 'generator_share'):.0f} |")
            runs = ", ".join(f"{run['per_cpu_s']:.0f}" for run in results[(kind, "burst")])
            print(f"|  ({kind} runs, deliveries/CPU-s) | {runs} |")
    if "rate" in shapes:
        print(f"\nrate: {args.rate_clients} clients ({args.probes} of them latency probes in their own process), "
              f"{args.rate:g} msg/s for {args.seconds:g} s from {args.rate_senders} senders")
        print("| server | p50 ms | p90 ms | p99 ms | max ms | samples | lost | server CPU s | server CPU us/delivery "
              "| generator CPU s (probes) | generator % of a core |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for kind in servers:
            print(f"| {kind} | {median(kind, 'rate', 'p50_ms'):.2f} | {median(kind, 'rate', 'p90_ms'):.2f} | "
                  f"{median(kind, 'rate', 'p99_ms'):.2f} | {median(kind, 'rate', 'max_ms'):.2f} | "
                  f"{median(kind, 'rate', 'samples'):.0f} | {median(kind, 'rate', 'lost'):.0f} | "
                  f"{median(kind, 'rate', 'cpu'):.3f} | {median(kind, 'rate', 'us_per_delivery'):.2f} | "
                  f"{median(kind, 'rate', 'generator_cpu'):.2f} ({median(kind, 'rate', 'probe_cpu'):.2f}) | "
                  f"{100 * median(kind, 'rate', 'generator_share'):.0f} |")
            runs = ", ".join(f"{run['p99_ms']:.2f}" for run in results[(kind, "rate")])
            print(f"|  ({kind} runs, p99 ms) | {runs} |")
        plot = plot_cdf(results, servers)
        if plot:
            print(f"\nlatency CDF: {plot}")
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
            for key in ("p50_ms", "p99_ms", "us_per_delivery"):
                ratio = median("chatd", "rate", key) / median("chatd-base", "rate", key)
                print(f"- rate {key}: {ratio:.2f}x")
    if set(servers) >= {"chatd", "inspircd"}:
        print("\nratios (chatd / InspIRCd):")
        if "burst" in shapes:
            ratio = median("chatd", "burst", "per_cpu_s") / median("inspircd", "burst", "per_cpu_s")
            print(f"- deliveries per server CPU-second: {ratio:.2f}x (goal: >= 2x)")
        if "rate" in shapes:
            for key, goal in (("p50_ms", "<= 1x"), ("p99_ms", "<= 1x"), ("us_per_delivery", "<= 1.5x")):
                ratio = median("chatd", "rate", key) / median("inspircd", "rate", key)
                print(f"- rate {key}: {ratio:.2f}x (goal: {goal})")
    reasons = generator_bound(results)
    if reasons:
        print("\ngenerator-bound: these figures measure the load generator, not the servers:")
        for reason in reasons:
            print(f"- {reason}")
        sys.exit(2)


if __name__ == "__main__":
    main()

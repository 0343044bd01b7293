"""Helpers shared by the benchmarks: ports, readiness, process figures,
and the fan-out machinery of ``fanout.py``, ``rooms.py`` and ``probe.py``
(the servers under test, the cheap bulk receivers, the wire dialects and
the probe process's plumbing)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, Sequence, TypeVar

WAIT = 60.0  # the longest any phase may take
LOGIN_BATCH = 50  # clients connecting at once
LOBBY = "#lobby"  # the room every chatd user is in; the IRC servers get a channel of that name
T = TypeVar("T")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, deadline: float = 20.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` (bounded)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {deadline:g} s")


def twistd_command() -> list[str]:
    """The ``twistd`` of the running interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "twisted.scripts.twistd"]


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB, from ``/proc``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


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


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has been busy since boot (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(field) for field in stat.readline().split()[1:]]
    ticks = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return ticks / os.sysconf("SC_CLK_TCK")


def generator_cpu() -> float:
    """CPU seconds of the bulk generator: this process, every thread (the probes add theirs)."""
    return cpu_seconds(os.getpid())


def percentile_ms(latencies_ns: Sequence[int], p: float) -> float:
    """The ``p`` quantile (0..1) of sorted nanosecond latencies, in ms (NaN when there are none)."""
    if not latencies_ns:
        return float("nan")
    return latencies_ns[min(len(latencies_ns) - 1, int(p * len(latencies_ns)))] / 1e6


def latency_figures(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max (ms) and the sample count of sorted nanosecond latencies."""
    return {"p50_ms": percentile_ms(latencies_ns, 0.50), "p90_ms": percentile_ms(latencies_ns, 0.90),
            "p99_ms": percentile_ms(latencies_ns, 0.99),
            "max_ms": latencies_ns[-1] / 1e6 if latencies_ns else float("nan"), "samples": len(latencies_ns)}


def raise_open_files() -> None:
    """Raise this process's soft limit of open files to the hard one (children inherit it):
    thousands of clients, and InspIRCd's ``softlimit``, need more than the usual 1024."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


# -- servers ---------------------------------------------------------------


class Priority:
    """The nice of the processes under measurement: the servers and the probe process
    (``--server-nice``; 0: as the caller's).  Negative on a machine shared with other work, so
    that its load does not starve them; the same for every server.

    With autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) a nice counts only
    against the processes of the same session: so each such process starts a session of its own
    (``popen_options``) and its session's autogroup gets the nice too.
    """

    nice = 0

    @classmethod
    def popen_options(cls, nice: int | None = None) -> dict[str, Any]:
        """``subprocess.Popen`` options that start a process at this priority (or ``nice``)."""
        nice = cls.nice if nice is None else nice
        if not nice:
            return {}

        def apply() -> None:  # in the child between fork and exec, after setsid
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            try:
                with open("/proc/self/autogroup", "w") as autogroup:
                    autogroup.write(str(nice))
            except OSError:  # no autogroups here: the process nice is all there is
                pass

        return {"start_new_session": True, "preexec_fn": apply}



class Server:
    """A server process under test."""

    name = "?"
    protocol = "?"

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    def start(self) -> None:
        """Start the server and wait (bounded) until it accepts connections."""
        log = open(os.path.join(self.workdir, f"{self.name}.log"), "wb")
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
            **Priority.popen_options(),
        )
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.process.poll() is not None:
                log.close()
                with open(log.name, "rb") as written:
                    tail = written.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"{self.name} exited at start; the end of its log:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    @property
    def ports(self) -> list[int]:
        """Where clients connect (spread over these, round-robin)."""
        return [self.port]

    def cpu(self) -> float:
        """CPU seconds of every process of this server."""
        return cpu_seconds(self.pid)

    stop_wait = 15.0  # seconds between SIGTERM and SIGKILL

    def wait_idle(self, timeout: float, quiet: float = 1.0) -> None:
        """Wait (at most ``timeout`` seconds) until the server spent under 1% of a core for
        ``quiet`` seconds: e.g. done with the clients that just left."""
        end = time.monotonic() + timeout
        before = self.cpu()
        while time.monotonic() < end:
            time.sleep(quiet)
            now = self.cpu()
            if now - before < 0.01 * quiet:
                return
            before = now

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_wait`` seconds)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


class Chatd(Server):
    """chatd, limits off, durable (SQLite) history: this environment's, or the one in
    ``checkout`` (``--chatd-checkout``, e.g. ``git archive`` of a commit: a tree that does not
    change while the benchmark runs) run by this environment's twistd."""

    name = "chatd"
    protocol = "json"
    profile: str | None = None  # --profile: cProfile output of the server
    extra: list[str] = []  # more chatd options
    checkout = ""

    def environment(self) -> dict[str, str] | None:
        return dict(os.environ, PYTHONPATH=self.checkout) if self.checkout else None

    def command(self) -> list[str]:
        profiling = ["--profiler=cprofile", f"--profile={self.profile}", "--savestats"] if self.profile else []
        return [*twistd_command(), *profiling, "-n", "--pidfile=", "chatd", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--msg-rate", "0", "--request-rate", "0", "--max-per-ip", "0", "--history-on-login", "0", "--data-dir", self.workdir, *self.extra]


class ChatdIrc(Chatd):
    """chatd as the ``chatd`` kind runs it, plus its IRC front-end (``--irc``) on a port of its
    own, with no autojoin (``--irc-autojoin ''``: the shape's JOIN puts users in rooms, as on the
    other IRC servers); the clients speak IRC to that port."""

    name = "chatd-irc"
    protocol = "irc"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.irc_port = free_port()
        if self.profile:  # beside the chatd kind's, not over it
            self.profile = f"{self.profile}-irc"

    def command(self) -> list[str]:
        return [*super().command(), "--irc", f"tcp:{self.irc_port}:interface=127.0.0.1", "--irc-autojoin", "",
                "--irc-server-name", "bench.chatd.test"]

    def start(self) -> None:
        super().start()
        wait_for_port(self.irc_port)

    @property
    def ports(self) -> list[int]:
        return [self.irc_port]


class ChatdBase(Chatd):
    """chatd from another checkout (``--base-checkout PATH``), e.g. the main
    before a change, run by this environment's twistd: the "before" of a
    before/after comparison in one run."""

    name = "chatd-base"
    checkout = ""

    def command(self) -> list[str]:
        command = super().command()
        if "--request-rate" in command and not self._knows_request_rate():
            at = command.index("--request-rate")
            del command[at : at + 2]
        return command

    def _knows_request_rate(self) -> bool:
        with open(os.path.join(self.checkout, "chatd", "tap.py")) as tap:
            return "request-rate" in tap.read()


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
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **Priority.popen_options(),
        )
        for index in range(self.nodes):
            workdir = os.path.join(self.workdir, f"node{index}")
            os.makedirs(workdir)
            node = Chatd(workdir)
            node.extra = [*Chatd.extra, "--cluster", f"redis://127.0.0.1:{self.redis_port}/0", "--max-sendq", "0"]
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


# Flood protection off, large sendq/recvq, many clients per IP and channels
# per client, loopback port; cap and echo-message loaded so that an IRC
# client can ask for its own messages back, as every chatd sender gets them.
INSPIRCD_CONF = """
<server name="bench.chatd.test" description="fan-out benchmark" network="bench">
<admin name="bench" nick="bench" email="bench@chatd.test">
<bind address="127.0.0.1" port="{port}" type="clients">
<connect name="bench" allow="127.0.0.1" timeout="60" pingfreq="600" hardsendq="67108864" softsendq="67108864"
         recvq="67108864" threshold="1000000" commandrate="100000000" fakelag="no" localmax="100000"
         globalmax="100000" limit="100000" maxchans="100" resolvehostnames="no" useident="no">
<pid file="{workdir}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{workdir}/inspircd-events.log">
<performance netbuffersize="65536" somaxconn="4096" softlimit="20000" clonesonconnect="no" quietbursts="yes">
<security hideserver="" announceinvites="none" hidekills="" hideulines="no" hidesplits="no" maxtargets="20"
          customversion="" operspywhois="no" restrictbannedusers="no" genericoper="no" userstats="Pu">
<limits maxnick="30" maxchan="64" maxmodes="20" maxident="10" maxhost="64" maxquit="255" maxtopic="307"
        maxkick="255" maxreal="128" maxgecos="128" maxaway="200">
<channels users="100" opers="100">
<options prefixquit="Quit: " suffixquit="" prefixpart="" suffixpart="" syntaxhints="no" cyclehosts="no"
         cyclehostsfromuser="no" announcets="no" allowmismatch="no" defaultbind="auto" hostintopic="yes"
         pingwarning="15" serverpingfreq="60" defaultmodes="nt" xlinemessage="banned" exemptchanops=""
         invitebypassmodes="yes" nosnoticestack="no">
<module name="cap">
<module name="ircv3_echomessage">
"""


class InspIRCd(Server):
    """InspIRCd from Debian (``apt-get install inspircd``), with ``INSPIRCD_CONF``."""

    name = "inspircd"
    protocol = "irc"

    def command(self) -> list[str]:
        config = os.path.join(self.workdir, "inspircd.conf")
        with open(config, "w") as handle:
            handle.write(INSPIRCD_CONF.format(port=self.port, workdir=self.workdir))
        binary = shutil.which("inspircd") or "/usr/sbin/inspircd"
        return [binary, "--nofork", "--nopid", f"--config={config}", "--runasroot"]


SERVERS: dict[str, type[Server]] = {"chatd": Chatd, "chatd-irc": ChatdIrc, "chatd-base": ChatdBase, "inspircd": InspIRCd,
                                    "chatd-cluster": ChatdCluster}  # and "ergo": ergo.py adds itself


# -- dialects --------------------------------------------------------------


class Link(Protocol):
    """A connection as the dialects see it while logging in and joining."""

    def readline(self) -> Awaitable[bytes]:
        """The next line (b"" when the connection ended)."""

    def write(self, data: bytes) -> None:
        """Send ``data``."""


class Dialect:
    """How to speak to a server: chatd's JSON lines or IRC.

    ``enter`` logs user ``u<index>`` in and makes it a member of ``rooms``
    (``LOBBY`` among them: for chatd every user is in it from login on);
    ``message`` is one message to ``room``.  ``echo``: senders receive their
    own messages (chatd always; IRC with the echo-message capability).
    """

    echo = True

    async def enter(self, link: Link, index: int, rooms: Sequence[str]) -> None:
        """Log in as ``u<index>`` and join ``rooms``; raises on an error answer."""
        await self.login(link, index)
        await self.join(link, rooms)

    async def login(self, link: Link, index: int) -> None:
        """Log in as ``u<index>`` (chatd: into ``#lobby``, protocol 1)."""
        raise NotImplementedError

    async def join(self, link: Link, rooms: Sequence[str]) -> None:
        """Join ``rooms`` (``LOBBY``: implicit on chatd)."""
        raise NotImplementedError

    def message(self, text: str, room: str) -> bytes:
        """The request that sends ``text`` to ``room``."""
        raise NotImplementedError


class JsonDialect(Dialect):
    """chatd's JSON lines: protocol 1 when only ``#lobby`` is wanted (as
    every earlier run of the benchmark), else login, ``hello`` (protocol 2)
    and a ``join`` per room, pipelined.

    ``hello`` comes after login on purpose: when every user logs in
    before any sends ``hello`` (``login_all``, then ``join_all``), the
    set-up has no presence storm (every v2 user hears every later login in
    ``#lobby``: n²/2 lines for n users), which the measured window does
    not contain anyway.
    """

    async def login(self, link: Link, index: int) -> None:
        link.write(json.dumps({"request": "login", "content": f"u{index}"}).encode() + b"\n")
        await self._until(link, 1)  # info, then the login history

    async def join(self, link: Link, rooms: Sequence[str]) -> None:
        joins = [room for room in rooms if room != LOBBY]
        if not joins:
            return
        requests = [{"request": "hello", "content": {"protocol": 2, "client": "bench"}}]
        requests += [{"request": "join", "content": room} for room in joins]
        link.write(b"".join(json.dumps(request).encode() + b"\n" for request in requests))
        await self._until(link, len(joins))  # each join: info, then the room's history

    @staticmethod
    async def _until(link: Link, histories: int) -> None:
        """Read until ``histories`` history responses came (other lines, e.g. presence, pass)."""
        while histories > 0:
            line = await link.readline()
            if not line:
                raise RuntimeError("chatd closed the connection while logging in")
            response = json.loads(line).get("response")
            if response == "error":
                raise RuntimeError(f"chatd refused: {line!r}")
            if response == "history":
                histories -= 1

    def message(self, text: str, room: str) -> bytes:
        request: dict[str, Any] = {"request": "msg", "content": text}
        if room != LOBBY:  # a lobby message carries no room: the protocol 1 request, byte for byte
            request["room"] = room
        return json.dumps(request).encode() + b"\n"


class IrcDialect(Dialect):
    """IRC: NICK/USER (with ``CAP REQ :echo-message`` when ``echo``), then one JOIN of every room."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo

    async def login(self, link: Link, index: int) -> None:
        cap = b"CAP REQ :echo-message\r\n" if self.echo else b""
        end = b"CAP END\r\n" if self.echo else b""
        link.write(cap + f"NICK u{index}\r\nUSER u{index} 0 * :bench\r\n".encode() + end)
        seen = await self._until(link, b" 001 ", 1)
        if self.echo and not any(b" ACK " in line and b"echo-message" in line for line in seen):
            raise RuntimeError(f"the IRC server did not grant echo-message: {seen!r}")

    async def join(self, link: Link, rooms: Sequence[str]) -> None:
        link.write(f"JOIN {','.join(rooms)}\r\n".encode())
        await self._until(link, b" 366 ", len(rooms))  # end of NAMES: one per channel joined

    @staticmethod
    async def _until(link: Link, code: bytes, count: int) -> list[bytes]:
        """Read IRC lines (answering PING) until ``count`` of them contain ``code``; return them all."""
        seen = []
        while count > 0:
            line = await link.readline()
            if not line:
                raise RuntimeError("IRC server closed the connection")
            seen.append(line)
            if line.startswith(b"PING"):  # while counting, none come: pingfreq is 600 s
                link.write(b"PONG" + line[4:])
            words = line.split(b" ", 2)
            command = words[0] if not line.startswith(b":") else words[1] if len(words) > 1 else b""
            if command in (b"ERROR", b"405", b"471", b"473", b"474", b"475"):  # closed; can't join the channel
                raise RuntimeError(f"IRC server refused: {line!r}")
            if command == code.strip():
                count -= 1
        return seen

    def message(self, text: str, room: str) -> bytes:
        return f"PRIVMSG {room} :{text}\r\n".encode()


def dialect_of(server: Server, irc_echo: bool) -> Dialect:
    """The dialect of ``server``'s protocol."""
    return JsonDialect() if server.protocol == "json" else IrcDialect(irc_echo)


# -- bulk receivers --------------------------------------------------------


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

    def park(self) -> None:
        """Joined: stop reading (the kernel and the server hold what comes until ``count``);
        nothing of the set-up is copied into ``text`` any more."""
        assert self.transport is not None
        self.transport.pause_reading()
        self.text = b""

    def finish(self) -> None:
        """Stop counting (the counter dropped this socket)."""
        if not self.done.done():
            self.done.set_result(None)

    def fileno(self) -> int:
        """The socket's file descriptor."""
        assert self.transport is not None
        return int(self.transport.get_extra_info("socket").fileno())

    def write(self, data: bytes) -> None:
        """Send ``data``."""
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection."""
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
        """Read and count ``link`` from now on."""
        fd = link.fileno()
        self.links[fd] = link
        self.poll.register(fd, select.EPOLLIN)

    def _drop(self, fd: int) -> None:
        self.poll.unregister(fd)
        self.links.pop(fd).finish()

    def _read(self, fd: int, buffers: list[bytearray]) -> int:
        """One read of ``fd``: lines counted (-1: the connection ended; 0 lines is possible)."""
        try:
            nbytes = os.readv(fd, buffers)
        except BlockingIOError:
            return 0
        except OSError:
            nbytes = 0
        if nbytes == 0:
            return -1
        return RECV_BUFFER.count(b"\n", 0, nbytes)

    async def settle(self, quiet: float, timeout: float, server_cpu: Callable[[], float] | None = None) -> int:
        """Read and throw away what the set-up left (joins, presence) until nothing came for
        ``quiet`` seconds (and, given ``server_cpu``, the server spent under 5% of a core in
        them: a server busy for longer than ``quiet`` before its next write, e.g. with a JOIN
        storm, is not done); return the lines thrown away.  A connection that ends is an error."""
        buffers = [RECV_BUFFER]
        end = time.monotonic() + timeout
        last = time.monotonic()
        cpu_at_last = server_cpu() if server_cpu is not None else 0.0
        lines = 0
        while True:
            if time.monotonic() > end:
                raise RuntimeError(f"the set-up traffic did not stop within {timeout:g} s")
            # Poll before judging the quiet: this thread (at nice 10) may itself have been off
            # the CPU for longer than ``quiet`` while data waited.
            events = self.poll.poll(0)
            if not events:
                if time.monotonic() - last >= quiet:
                    if server_cpu is None:
                        break
                    cpu = server_cpu()
                    if cpu - cpu_at_last < 0.05 * (time.monotonic() - last):
                        break
                    # Quiet sockets but a busy server (or the first check, whose CPU figure still
                    # holds the traffic before ``last``): measure one more quiet period.
                    last, cpu_at_last = time.monotonic(), cpu
                await asyncio.sleep(self.tick)
                continue
            last = time.monotonic()
            for fd, _ in events:
                got = self._read(fd, buffers)
                if got < 0:
                    raise RuntimeError(f"a client was disconnected during the set-up (fd {fd})")
                lines += got
            await asyncio.sleep(0)
        return lines

    def expect(self, link: Bulk, expected: int) -> None:
        """Open ``link``'s measured window (after ``settle``): count from 0 up to ``expected``."""
        link.received, link.expected = 0, expected
        if expected <= 0:
            self._drop(link.fileno())

    async def run(self, timeout: float) -> None:
        """Count until every socket has its lines (or ``timeout`` seconds pass)."""
        buffers = [RECV_BUFFER]
        end = time.monotonic() + timeout
        try:
            while self.links and time.monotonic() < end:
                events = self.poll.poll(0)
                if not events:
                    await asyncio.sleep(self.tick)
                    continue
                for fd, _ in events:
                    got = self._read(fd, buffers)
                    if got < 0:
                        self._drop(fd)
                        continue
                    link = self.links[fd]
                    link.received += got
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


async def open_all(ports: list[int], indices: list[int], batch: int,
                   step: Callable[[Bulk, int], Awaitable[None]]) -> list[Client]:
    """Connect ``indices`` (spread over ``ports``) and do ``step(link, index)`` on each, ``batch`` at a time."""
    loop = asyncio.get_running_loop()
    clients: list[Client] = []

    async def one(index: int) -> Client:
        _, link = await asyncio.wait_for(loop.create_connection(Bulk, "127.0.0.1", ports[index % len(ports)]), WAIT)
        await asyncio.wait_for(step(link, index), WAIT)
        return Client(index, link)

    for start in range(0, len(indices), batch):
        clients.extend(await asyncio.gather(*(one(i) for i in indices[start : start + batch])))
    return clients


async def connect_all(ports: list[int], dialect: Dialect, indices: list[int]) -> list[Client]:
    """Connect, log in and join ``LOBBY``: ``indices``, ``LOGIN_BATCH`` at a time."""
    return await open_all(ports, indices, LOGIN_BATCH, lambda link, index: dialect.enter(link, index, [LOBBY]))


async def login_all(ports: list[int], dialect: Dialect, indices: list[int], batch: int) -> list[Client]:
    """Connect and log in ``indices``, ``batch`` at a time (no room joined but chatd's ``#lobby``)."""
    return await open_all(ports, indices, batch, dialect.login)


async def join_all(clients: list[Client], dialect: Dialect, rooms_of: Callable[[int], Sequence[str]], batch: int) -> None:
    """Have logged-in ``clients`` join their rooms, ``batch`` at a time; each then stops
    reading (``Bulk.park``: the set-up traffic stays in the kernel until ``Counter.settle``)."""

    async def one(client: Client) -> None:
        await asyncio.wait_for(dialect.join(client.link, rooms_of(client.index)), WAIT)
        client.link.park()

    for start in range(0, len(clients), batch):
        await asyncio.gather(*(one(c) for c in clients[start : start + batch]))


# -- the probe process -------------------------------------------------------


def start_probes(server: Server, irc_echo: bool, probes: list[dict[str, Any]], seconds: float) -> subprocess.Popen[bytes]:
    """The probe process (bench/probe.py), started from the calling thread (the main one: nice 0).

    ``probes``: one ``{"index", "rooms", "expected"}`` per probe client, in join order.
    """
    config = {"ports": server.ports, "protocol": server.protocol, "irc_echo": irc_echo, "probes": probes,
              "deadline_s": seconds + 2 * WAIT}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")
    return subprocess.Popen([sys.executable, script, json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            **Priority.popen_options())


async def tell_probes(probe: subprocess.Popen[bytes], step: str, count: int) -> None:
    """Have the probe process do ``step`` (``enter``: log in and join; ``login``; ``join``) for
    its next ``count`` clients, at once, and wait until they have."""
    assert probe.stdin is not None and probe.stdout is not None
    probe.stdin.write(f"{step} {count}\n".encode())
    probe.stdin.flush()
    answer = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, probe.stdout.readline), WAIT)
    if answer.strip() != b"done":
        raise RuntimeError(f"the probe process did not {step}: {answer!r}")


async def probe_report(probe: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The probe process's final JSON line (it exits once every probe has its messages)."""
    assert probe.stdin is not None and probe.stdout is not None
    # Through the buffered reader that read the "done" answers: it may hold the report already.
    line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, probe.stdout.readline), 10 + WAIT)
    probe.stdin.close()  # the probe's cue to leave
    probe.wait(timeout=WAIT)
    if not line.strip():
        raise RuntimeError(f"the probe process reported nothing (exit {probe.returncode})")
    report: dict[str, Any] = json.loads(line)
    return report


async def paced_window(server: Server, probe: subprocess.Popen[bytes] | None, clients: list[Client], counter: Counter,
                       per_second: float, seconds: float, total: int, send: Callable[[int], None],
                       expected: int) -> dict[str, Any]:
    """The measured window of the rate and rooms shapes: ``send(n)`` for each
    of the ``total`` messages at ``per_second``, the bulk counts (for up to
    ``seconds`` + 10 s) and the probes' report awaited, then the figures
    (latency, loss, server, generator and other processes' CPU); the bulk
    links are closed."""
    counting = asyncio.ensure_future(counter.run(seconds + 10))
    cpu_before, mine_before, busy_before, started = server.cpu(), generator_cpu(), machine_busy(), time.perf_counter()
    probe_before = cpu_seconds(probe.pid) if probe is not None else 0.0
    interval = 1.0 / per_second
    for n in range(total):
        delay = started + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        send(n)
    await counting
    report: dict[str, Any] = {"latencies_ns": [], "received": 0, "cpu_s": probe_before}
    if probe is not None:
        report = await probe_report(probe)
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    others = machine_busy() - busy_before - cpu
    # the probe has exited: its CPU in the window is its final figure minus the one at the start
    probe_cpu = float(report["cpu_s"]) - probe_before
    mine = generator_cpu() - mine_before + probe_cpu
    latencies: list[int] = sorted(report["latencies_ns"])
    delivered = sum(c.link.received for c in clients) + int(report["received"])
    for c in clients:
        c.link.close()
    return {**latency_figures(latencies), "lost": expected - delivered, "deliveries": delivered, "messages": total,
            "cpu": cpu, "us_per_delivery": 1e6 * cpu / delivered if delivered else float("nan"),
            "us_per_message": 1e6 * cpu / total if total else float("nan"),
            "generator_cpu": mine, "probe_cpu": probe_cpu, "generator_share": mine / elapsed,
            "others_share": (others - mine) / elapsed, "latencies_ns": latencies}


def stop_probes(probe: subprocess.Popen[bytes] | None) -> None:
    """Kill the probe process if it is still running (it is ours: by pid)."""
    if probe is not None and probe.poll() is None:
        probe.kill()
        probe.wait(timeout=15)


def runs(order: list[int], probe_indices: set[int]) -> list[tuple[bool, list[int]]]:
    """``order`` cut into runs of bulk users and runs of probes: ``(is_probe_run, indices)``."""
    cut: list[tuple[bool, list[int]]] = []
    for index in order:
        probe = index in probe_indices
        if cut and cut[-1][0] == probe:
            cut[-1][1].append(index)
        else:
            cut.append((probe, [index]))
    return cut


async def connect_in_order(server: Server, dialect: Dialect, order: list[int], probe: subprocess.Popen[bytes] | None,
                           probe_indices: set[int]) -> list[Client]:
    """Connect, log in and join (``LOBBY``) every user of ``order`` in that order: the bulk ones
    here (``LOGIN_BATCH`` at a time), those of ``probe_indices`` in the probe process (in the order
    it was given them), so that the probes sit where ``order`` puts them in the room's join order."""
    clients: list[Client] = []
    for is_probe, indices in runs(order, probe_indices):
        if not is_probe:
            clients.extend(await connect_all(server.ports, dialect, indices))
        elif probe is None:
            raise RuntimeError("a probe index without a probe process")
        else:
            await tell_probes(probe, "enter", len(indices))
    return clients


async def enter_in_two_phases(server: Server, dialect: Dialect, login_order: list[int], join_order: list[int],
                              probe: subprocess.Popen[bytes] | None, probe_indices: set[int],
                              rooms_of: Callable[[int], Sequence[str]], batch: int) -> list[Client]:
    """Every user logs in (``login_order``), then every user joins its rooms (``join_order``):
    the bulk ones here (``batch`` at a time, parked once joined), the probes in the probe process
    (in the order it was given them, in both phases), where the orders put them."""
    clients: dict[int, Client] = {}
    for is_probe, indices in runs(login_order, probe_indices):
        if not is_probe:
            clients.update((c.index, c) for c in await login_all(server.ports, dialect, indices, batch))
        elif probe is None:
            raise RuntimeError("a probe index without a probe process")
        else:
            await tell_probes(probe, "login", len(indices))
    for is_probe, indices in runs(join_order, probe_indices):
        if not is_probe:
            await join_all([clients[index] for index in indices], dialect, rooms_of, batch)
        elif probe is not None:
            await tell_probes(probe, "join", len(indices))
    return list(clients.values())

"""Login storm benchmark (issue 18): N clients connect and log in at once after a
restart, each getting H messages of history.

    .venv/bin/python bench/storm.py                        # chatd, chatd-irc, InspIRCd, ergo; 5 repeats
    .venv/bin/python bench/storm.py --servers chatd,inspircd --clients 5000 --history 100 --repeats 5
    .venv/bin/python bench/storm.py --clients 300 --repeats 1 --others-limit 4 --retries 0   # a smoke run

Each run, on a fresh server:

- chatd (its JSON front-end, durable SQLite history, limits off, ``--history-on-login H``):
  a seeder logs in and sends ``--seed`` messages (default H + 20) to ``#lobby``; the server
  is then stopped (SIGTERM) and started again on the same data directory and port, so the
  history comes from SQLite on disk, not from a warm cache.  A storm client does what
  chatd's own client (``chatd-client``) does: ``hello`` (protocol 2) and ``login``
  pipelined; the login answer is ``info`` ("Login successful") followed by one ``history``
  response holding the newest H messages of ``#lobby`` (``--history-on-login``, the
  server's default of 100).  Login latency: connect to the ``info`` line; served: connect
  to the ``history`` line, which must hold H messages.  Being protocol 2, each client then
  hears a ``presence`` line for every later login, as an IRC client hears every later JOIN.
  ``--chatd-protocol 1`` leaves out ``hello`` (then the history is a list of strings and
  no presence comes).
- chatd-irc (chatd's IRC front-end, ``common.ChatdIrc``): seeded over IRC, restarted like
  chatd (the history comes from SQLite), its clients then do as ergo's below (JOIN, then
  ``CHATHISTORY LATEST #lobby * H``).
- InspIRCd 3 (Debian's): ``common.INSPIRCD_CONF`` plus the ``chanhistory`` module
  (``maxlines`` H).  After start a seeder registers, joins ``#lobby`` (and stays: an empty
  channel, and its history, would be gone), sets ``+H H:1d`` and sends the messages.  A storm
  client sends NICK/USER, waits for 001 (login latency), then sends JOIN ``#lobby``;
  chanhistory replays the history on join.  Served: the H-th ``PRIVMSG #lobby`` line.
- ergo (its history is in memory: "after a restart" is a fresh process seeded after start,
  as for InspIRCd): a storm client asks for ``batch server-time draft/chathistory``, registers,
  waits for 001, then sends JOIN ``#lobby`` and ``CHATHISTORY LATEST #lobby * H``.  Served: the
  H-th ``PRIVMSG #lobby`` line.  The server and its config are ``bench/ergo.py``'s (in-memory
  history, fakelag and IP limits off, 64 MiB sendq; binary ``--ergo``).

The storm clients run in ``--generators`` processes of their own (this script with
``--generate``, at nice ``--nice``), each a plain epoll loop over non-blocking sockets:
every connect is issued at once (in slices of 200 with the ready sockets handled between
them), login requests are written when a socket becomes writable, and until a client is
served its input is scanned with bytes searches (no JSON parsing, no per-line Python
work); once served it only is drained, every 20 ms.  Times are CLOCK_MONOTONIC, from the
moment the client's ``connect`` is issued.  The window opens when the generators are told
to go and closes when the last client is served (or failed, or ``--deadline`` passed);
over it: the server's CPU seconds (schedstat, every thread), the generators' CPU seconds
(their share of one core), and the other processes of the machine (``/proc/stat`` busy time
less the server's and generators'), as ``fanout.py`` does.  Peak RSS is the server's VmHWM
(the whole life of the process, which for chatd is since the restart).  A run whose
generators used more than ``--generator-limit`` (70%) of a core, or in whose window the
other processes used more than ``--others-limit`` (30%) of a core, is refused ("generator-
bound", exit 2) after ``--retries`` attempts, as in ``fanout.py``.  Servers alternate in
each repeat; the table shows medians and every run.  Loopback only; every wait is bounded;
only processes started here are stopped, by pid.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from common import (LOBBY, Chatd, ChatdIrc, InspIRCd, Priority, Server, cpu_seconds, latency_figures, machine_busy,
                    raise_open_files, rss_kib)

GENERATOR_LIMIT = 0.70  # of one core, over the storm window
OTHERS_LIMIT = 0.30  # of one core: other processes of the machine, over the storm window
CONNECT_SLICE = 200  # connects issued between two looks at the ready sockets
DRAIN_TICK = 0.020  # seconds between two drains of the served clients
READ_SIZE = 1 << 20

# -- what a storm client looks for ------------------------------------------------------

CHATD_LOGIN = b'"response": "info", "content": "Login successful'
CHATD_HISTORY = b'"response": "history"'
CHATD_ERROR = b'"response": "error"'
CHATD_MESSAGE_V2 = b'"response": "message"'  # one per message object of a v2 history
CHATD_MESSAGE_V1 = b'\\"response\\": \\"message\\"'  # v1: each message a JSON string
IRC_WELCOME = re.compile(rb"^(?:@\S+ )?:\S+ 001 ", re.M)
# closed, or refused: unknown command, nick in use, not registered, can't join...  (not 422, "no MOTD")
IRC_REFUSAL = re.compile(rb"^(?:@\S+ )?(?::\S+ )?(ERROR|FAIL|40[1-5]|421|43[2-6]|451|461|47[1-7]) [^\n]*", re.M)
IRC_PING = re.compile(rb"^PING( [^\r\n]*)", re.M)


class Progress:
    """One storm client's progress through what the server sends: complete lines only
    (a partial line waits in ``tail``), scanned with bytes searches."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.tail = b""
        self.login_ns = 0  # time of the login answer (0: not yet)
        self.served_ns = 0  # time of the H-th history message (0: not yet)
        self.seen = 0  # history messages seen so far
        self.error = ""

    @property
    def done(self) -> bool:
        """Served or failed: nothing more to look for."""
        return bool(self.served_ns or self.error)

    def feed(self, data: bytes, now_ns: int) -> bytes:
        """Take ``data`` received at ``now_ns``; return what to send in answer (may be b"")."""
        data = self.tail + data
        end = data.rfind(b"\n")
        if end < 0:
            self.tail = data
            return b""
        self.tail = data[end + 1 :]
        return self.lines(data[: end + 1], now_ns)

    def lines(self, block: bytes, now_ns: int) -> bytes:
        """Scan complete lines received at ``now_ns``."""
        raise NotImplementedError


class ChatdProgress(Progress):
    """chatd: the login's ``info``, then its ``history`` line, which must hold H messages."""

    def __init__(self, history: int, protocol: int) -> None:
        super().__init__(history)
        self.marker = CHATD_MESSAGE_V2 if protocol == 2 else CHATD_MESSAGE_V1

    def lines(self, block: bytes, now_ns: int) -> bytes:
        if CHATD_ERROR in block:
            at = block.find(CHATD_ERROR)
            self.error = block[block.rfind(b"\n", 0, at) + 1 : block.find(b"\n", at)].decode(errors="replace")
            return b""
        if not self.login_ns and CHATD_LOGIN in block:
            self.login_ns = now_ns
        at = block.find(CHATD_HISTORY)
        if at >= 0 and self.login_ns:
            line = block[block.rfind(b"\n", 0, at) + 1 : block.find(b"\n", at)]
            self.seen = line.count(self.marker)
            if self.seen >= self.history:
                self.served_ns = now_ns
            else:
                self.error = f"the login history held {self.seen} messages, not {self.history}"
        return b""


class IrcProgress(Progress):
    """IRC: 001 (then ``after_welcome`` is sent: JOIN, and CHATHISTORY for ergo), then H
    ``PRIVMSG #lobby`` lines: nobody sends during the storm, so every one is history."""

    def __init__(self, history: int, after_welcome: bytes) -> None:
        super().__init__(history)
        self.after_welcome = after_welcome
        self.marker = f" PRIVMSG {LOBBY} :".encode()

    def lines(self, block: bytes, now_ns: int) -> bytes:
        answer = b"".join(b"PONG" + match.group(1) + b"\r\n" for match in IRC_PING.finditer(block))
        refusal = IRC_REFUSAL.search(block)
        if refusal is not None:
            self.error = refusal.group(0).decode(errors="replace").strip()
            return answer
        if not self.login_ns:
            if IRC_WELCOME.search(block) is None:
                return answer
            self.login_ns = now_ns
            return answer + self.after_welcome  # the history comes after this: not in this block
        self.seen += block.count(self.marker)
        if self.seen >= self.history:
            self.served_ns = now_ns
        return answer


@dataclass
class Dialogue:
    """What a storm client of a server kind sends first and how it follows the answers."""

    greeting: Callable[[int], bytes]  # the first bytes of client ``index``
    progress: Callable[[], Progress]


def dialogue(protocol: str, history: int, chatd_protocol: int = 2, chathistory: bool = False) -> Dialogue:
    """The storm dialogue of a server speaking ``protocol`` ("json", "irc"; ``chathistory``:
    ask for history with CHATHISTORY, as on ergo, instead of relying on a replay on join)."""
    if protocol == "json":
        hello = b'{"request": "hello", "content": {"protocol": 2, "client": "storm"}}\n' if chatd_protocol == 2 else b""
        return Dialogue(lambda index: hello + b'{"request": "login", "content": "u%d"}\n' % index,
                        lambda: ChatdProgress(history, chatd_protocol))
    cap = b"CAP REQ :batch server-time draft/chathistory\r\n" if chathistory else b""
    end = b"CAP END\r\n" if chathistory else b""
    after = f"JOIN {LOBBY}\r\n".encode()
    if chathistory:
        after += f"CHATHISTORY LATEST {LOBBY} * {history}\r\n".encode()
    return Dialogue(lambda index: cap + b"NICK u%d\r\nUSER u%d 0 * :storm\r\n" % (index, index) + end,
                    lambda: IrcProgress(history, after))


# -- the generator process ---------------------------------------------------------------


@dataclass
class Conn:
    """One storm client in the generator."""

    index: int
    sock: socket.socket
    progress: Progress
    start_ns: int = 0
    connected: bool = False
    out: bytes = b""  # not yet written
    closed: bool = False


@dataclass
class StormOutcome:
    """What a generator reports: per client (index order) the login and served latencies
    in ns (0: never), the failures, its window and its CPU."""

    login_ns: list[int] = field(default_factory=list)
    served_ns: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    go_ns: int = 0
    end_ns: int = 0
    last_ns: int = 0  # when the last client was served (0: none was)
    cpu_s: float = 0.0

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(self.__dict__)


def storm(port: int, indices: list[int], talk: Dialogue, deadline: float) -> StormOutcome:
    """Open every client of ``indices`` at once and follow each until it is served (or
    fails, or ``deadline`` seconds pass); the served ones are drained every ``DRAIN_TICK``."""
    poll, drain = select.epoll(), select.epoll()
    conns: dict[int, Conn] = {}
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    outcome = StormOutcome(go_ns=time.monotonic_ns())
    cpu_before = cpu_seconds(os.getpid())
    pending = len(indices)
    end = time.monotonic() + deadline

    def finish(conn: Conn, error: str = "") -> None:
        nonlocal pending
        if error and not conn.progress.done:
            conn.progress.error = error
        pending -= 1
        poll.unregister(conn.sock.fileno())
        if conn.progress.served_ns and not conn.closed:
            drain.register(conn.sock.fileno(), select.EPOLLIN)

    def flush(conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            conn.closed = True
            finish(conn, f"write: {error}")
            return
        conn.out = conn.out[sent:]
        poll.modify(conn.sock.fileno(), select.EPOLLIN | (select.EPOLLOUT if conn.out else 0))

    def handle(fd: int, event: int) -> None:
        conn = conns[fd]
        if not conn.connected:
            status = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if status:
                conn.closed = True
                finish(conn, f"connect: {os.strerror(status)}")
                return
            conn.connected = True
            conn.out = talk.greeting(conn.index)
        if event & select.EPOLLIN:
            try:
                nbytes = conn.sock.recv_into(buffer)
            except BlockingIOError:
                nbytes = -1
            except OSError as error:
                conn.closed = True
                finish(conn, f"read: {error}")
                return
            if nbytes == 0:
                conn.closed = True
                finish(conn, "closed by the server" + (f" after {conn.progress.tail[-200:]!r}" if conn.progress.tail else ""))
                return
            if nbytes > 0:
                conn.out += conn.progress.feed(bytes(view[:nbytes]), time.monotonic_ns())
                if conn.progress.done:
                    finish(conn)
                    return
        if conn.out or event & select.EPOLLOUT:
            flush(conn)

    def look(timeout: float) -> None:
        for fd, event in poll.poll(timeout):
            handle(fd, event)

    for start in range(0, len(indices), CONNECT_SLICE):
        for index in indices[start : start + CONNECT_SLICE]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            conn = Conn(index, sock, talk.progress(), start_ns=time.monotonic_ns())
            status = sock.connect_ex(("127.0.0.1", port))
            conns[sock.fileno()] = conn
            poll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)
            if status not in (0, errno.EINPROGRESS):
                conn.closed = True
                finish(conn, f"connect: {os.strerror(status)}")
        look(0)
    last_drain = time.monotonic()
    while pending > 0 and time.monotonic() < end:
        look(DRAIN_TICK / 4)
        if time.monotonic() - last_drain >= DRAIN_TICK:
            last_drain = time.monotonic()
            for fd, _ in drain.poll(0):
                try:
                    if conns[fd].sock.recv_into(buffer) == 0:
                        drain.unregister(fd)
                except OSError:
                    drain.unregister(fd)
    outcome.end_ns = time.monotonic_ns()
    outcome.cpu_s = cpu_seconds(os.getpid()) - cpu_before
    outcome.last_ns = max((c.progress.served_ns for c in conns.values()), default=0)
    for conn in sorted(conns.values(), key=lambda c: c.index):
        p = conn.progress
        outcome.login_ns.append(p.login_ns - conn.start_ns if p.login_ns else 0)
        outcome.served_ns.append(p.served_ns - conn.start_ns if p.served_ns else 0)
        if not p.served_ns:
            outcome.errors.append(f"u{conn.index}: {p.error or 'not served before the deadline'}")
    # stay connected (and drained) until told to leave: the caller reads the server first
    poll.close()
    _hold(drain, conns, buffer)
    return outcome


def _hold(drain: select.epoll, conns: dict[int, Conn], buffer: bytearray) -> None:
    """Keep the served clients drained in a thread until the process ends."""

    def body() -> None:
        while True:
            try:
                events = drain.poll(0.2)
            except (OSError, ValueError):
                return
            for fd, _ in events:
                try:
                    if conns[fd].sock.recv_into(buffer) == 0:
                        drain.unregister(fd)
                except OSError:
                    try:
                        drain.unregister(fd)
                    except OSError:
                        pass

    threading.Thread(target=body, daemon=True).start()


def generate(config: dict[str, Any]) -> None:
    """The generator process: ``ready``, then on ``go`` the storm, ``served`` as soon as it is
    over and the outcome as one JSON line; it leaves when stdin closes."""
    raise_open_files()
    talk = dialogue(config["protocol"], config["history"], config["chatd_protocol"], config["chathistory"])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    outcome = storm(config["port"], config["indices"], talk, config["deadline"])
    print("served", flush=True)
    print(outcome.to_json(), flush=True)
    sys.stdin.read()  # until the caller closes it


# -- servers -----------------------------------------------------------------------------


class StormChatd(Chatd):
    """chatd as ``common.Chatd`` (limits off, SQLite history), with ``--history-on-login H``."""

    history = 100

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--history-on-login")
        command[at + 1] = str(self.history)
        return command


class StormInspIRCd(InspIRCd):
    """InspIRCd with ``common.INSPIRCD_CONF`` plus the ``chanhistory`` module (maxlines H)."""

    history = 100

    def command(self) -> list[str]:
        command = super().command()  # writes the config
        path = os.path.join(self.workdir, "inspircd.conf")
        with open(path) as handle:
            config = handle.read()
        # the channel's creator (the seeder) is made op, as InspIRCd's own example config does, so
        # that it can set +H; the storm clients join after it and get no op
        if 'defaultmodes="nt"' not in config:
            raise RuntimeError("common.INSPIRCD_CONF changed: no defaultmodes=\"nt\" to give the creator op")
        config = config.replace('defaultmodes="nt"', 'defaultmodes="not"')
        config += f'<module name="chanhistory">\n<chanhistory maxlines="{self.history}">\n'
        with open(path, "w") as handle:
            handle.write(config)
        return command


class StormChatdIrc(ChatdIrc):
    """chatd's IRC front-end (``common.ChatdIrc``): its clients ask for the
    history with CHATHISTORY, as on ergo; the server restarts after the
    seeding like the ``chatd`` kind, so the history comes from SQLite."""


def ergo_kind() -> type[Server]:
    """``bench-peers``'s ergo server kind (``bench/ergo.py``, which adds itself to ``common.SERVERS``)."""
    import common

    importlib.import_module("ergo")
    return common.SERVERS["ergo"]


def server_kinds() -> dict[str, Callable[[], type[Server]]]:
    """The servers this benchmark knows, by ``--servers`` name (a new one is one line here)."""
    return {"chatd": lambda: StormChatd, "chatd-irc": lambda: StormChatdIrc, "inspircd": lambda: StormInspIRCd,
            "ergo": ergo_kind}


#: Kinds whose clients ask for history with CHATHISTORY after the JOIN.
CHATHISTORY_KINDS = frozenset({"ergo", "chatd-irc"})


# -- seeding -----------------------------------------------------------------------------


class Seeder:
    """A blocking client that fills ``#lobby``'s history; for the IRC servers it stays in the
    channel through the storm (drained by a thread), so the channel and its history live."""

    def __init__(self, server: Server, history: int) -> None:
        self.server = server
        self.history = history
        self.sock = socket.create_connection(("127.0.0.1", server.ports[0]), timeout=30)
        self.buffer = b""
        self.drainer: threading.Thread | None = None

    def until(self, marker: bytes) -> bytes:
        """Read until ``marker`` arrived; return everything read up to it (bounded by the socket timeout)."""
        while marker not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError(f"{self.server.name} closed the seeder's connection: {self.buffer[-500:]!r}")
            self.buffer += chunk
            if b"PING " in chunk:
                for match in IRC_PING.finditer(chunk):
                    self.sock.sendall(b"PONG" + match.group(1) + b"\r\n")
        at = self.buffer.index(marker) + len(marker)
        seen, self.buffer = self.buffer[:at], self.buffer[at:]
        return seen

    def seed(self, messages: int) -> None:
        """Send ``messages`` messages to ``#lobby`` and wait until the server has them all."""
        if self.server.protocol == "json":
            self.sock.sendall(b'{"request": "login", "content": "seeder"}\n')
            self.until(CHATD_HISTORY)
            self.sock.sendall(b"".join(b'{"request": "msg", "content": "seed %d %s"}\n' % (n, b"x" * 60)
                                       for n in range(messages)))
            self.until(b'"content": "seed %d ' % (messages - 1))  # stored before it is sent
            return
        self.sock.sendall(b"NICK seeder\r\nUSER seeder 0 * :seeder\r\n")
        self.until(b" 001 ")
        self.sock.sendall(f"JOIN {LOBBY}\r\n".encode())
        self.until(b" 366 ")
        if isinstance(self.server, InspIRCd):  # chanhistory keeps history only for +H channels
            self.sock.sendall(f"MODE {LOBBY} +H {self.history}:1d\r\n".encode())
            self.until(b" +H ")
        self.sock.sendall(b"".join(f"PRIVMSG {LOBBY} :seed {n} {'x' * 60}\r\n".encode() for n in range(messages)))
        self.sock.sendall(b"PING :seeded\r\n")
        self.until(b"seeded")  # the PONG comes after every message was handled

    def stay(self) -> None:
        """Read and drop what comes (the storm's JOINs) in a thread, until the connection closes."""

        def body() -> None:
            try:
                while self.sock.recv(1 << 16):
                    pass
            except OSError:
                pass

        self.sock.settimeout(None)
        self.drainer = threading.Thread(target=body, daemon=True)
        self.drainer.start()

    def close(self) -> None:
        """Leave."""
        try:
            self.sock.close()
        except OSError:
            pass


# -- a run -------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    """The peak resident memory of ``pid`` (VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def start_generators(server: Server, args: argparse.Namespace, chathistory: bool) -> list[subprocess.Popen[str]]:
    """The generator processes (this script, ``--generate``), each with a share of the clients."""
    generators = []
    for number in range(args.generators):
        config = {"port": server.ports[0], "protocol": server.protocol, "history": args.history,
                  "chatd_protocol": args.chatd_protocol, "chathistory": chathistory, "deadline": args.deadline,
                  "indices": list(range(number, args.clients, args.generators))}
        nice = args.nice

        def lower() -> None:  # in the child: its own session (autogroup), at the generator's nice
            os.setsid()
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            try:
                with open("/proc/self/autogroup", "w") as autogroup:
                    autogroup.write(str(nice))
            except OSError:
                pass

        generators.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--generate", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=lower))
    for generator in generators:
        expect(generator, "ready", 30)
    return generators


def expect(generator: subprocess.Popen[str], word: str, timeout: float) -> str:
    """The generator's next line, which must be ``word`` (or, for ``word`` "", any line)."""
    assert generator.stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(generator.stdout.readline() if generator.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    if not box or (word and box[0].strip() != word) or not box[0]:
        raise RuntimeError(f"the generator said {box[:1]!r}, not {word or 'its outcome'!r} (exit {generator.poll()})")
    return box[0]


def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One storm on a fresh ``kind`` server: seed, restart (chatd), storm, measure."""
    with tempfile.TemporaryDirectory(prefix="storm-") as workdir:
        server = server_kinds()[kind]()(workdir)
        seeder: Seeder | None = None
        generators: list[subprocess.Popen[str]] = []
        try:
            server.start()
            seeder = Seeder(server, args.history)
            seeder.seed(args.seed)
            if isinstance(server, Chatd):  # durable history: restart, the storm reads it from disk
                seeder.close()
                seeder = None
                server.stop()
                server.start()
            else:
                seeder.stay()
            time.sleep(args.settle)
            generators = start_generators(server, args, chathistory=kind in CHATHISTORY_KINDS)
            cpu_before, busy_before, started = server.cpu(), machine_busy(), time.perf_counter()
            for generator in generators:
                assert generator.stdin is not None
                generator.stdin.write("go\n")
                generator.stdin.flush()
            for generator in generators:
                expect(generator, "served", args.deadline + 30)
            elapsed = time.perf_counter() - started
            cpu = server.cpu() - cpu_before
            busy = machine_busy() - busy_before
            rss_now, rss_peak = rss_kib(server.pid), peak_rss_kib(server.pid)
            outcomes = [StormOutcome(**json.loads(expect(generator, "", 30))) for generator in generators]
        finally:
            for generator in generators:
                if generator.stdin is not None:
                    try:
                        generator.stdin.close()
                    except OSError:
                        pass
                try:
                    generator.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    generator.kill()
                    generator.wait(timeout=15)
            if seeder is not None:
                seeder.close()
            server.stop()
    return summarise(outcomes, elapsed, cpu, busy, rss_now, rss_peak)


def summarise(outcomes: list[StormOutcome], elapsed: float, cpu: float, busy: float, rss_now: int,
              rss_peak: int) -> dict[str, Any]:
    """One run's figures from its generators' outcomes and the server's measures."""
    logins = sorted(x for o in outcomes for x in o.login_ns if x)
    served = sorted(x for o in outcomes for x in o.served_ns if x)
    clients = sum(len(o.served_ns) for o in outcomes)
    go = min(o.go_ns for o in outcomes)
    # the storm's span: from the go to the last client served (the generators' clock, not ours)
    last = max(o.last_ns for o in outcomes)
    generator = sum(o.cpu_s for o in outcomes)
    window = (max(o.end_ns for o in outcomes) - go) / 1e9
    login, serve = latency_figures(logins), latency_figures(served)
    errors = [e for o in outcomes for e in o.errors]
    return {"clients": clients, "served": len(served), "failed": clients - len(served), "errors": errors[:5],
            "all_served_s": (last - go) / 1e9 if len(served) == clients else float("nan"),
            "window_s": window, "wall_s": elapsed,
            "login_p50_ms": login["p50_ms"], "login_p90_ms": login["p90_ms"], "login_p99_ms": login["p99_ms"],
            "login_max_ms": login["max_ms"], "served_p50_ms": serve["p50_ms"], "served_p99_ms": serve["p99_ms"],
            "served_max_ms": serve["max_ms"], "cpu_s": cpu, "rss_peak_mib": rss_peak / 1024, "rss_mib": rss_now / 1024,
            "generator_cpu_s": generator, "generator_share": generator / window if window > 0 else float("inf"),
            "others_share": max(0.0, busy - cpu - generator) / elapsed if elapsed > 0 else 0.0}


def run_busy_aware(kind: str, args: argparse.Namespace, repeat: int, discarded: list[str]) -> dict[str, Any]:
    """``run_one``, done again (at most ``--retries`` times, after ``--retry-pause`` s) while the
    other processes of the machine used more than ``--others-limit`` of a core in its window."""
    for attempt in range(args.retries + 1):
        run = run_one(kind, args)
        print(f"{kind} repeat {repeat} attempt {attempt + 1}: all served {run['all_served_s']:.2f} s, "
              f"login p99 {run['login_p99_ms']:.1f} ms, served p99 {run['served_p99_ms']:.1f} ms, "
              f"server CPU {run['cpu_s']:.2f} s, failed {run['failed']}, generator "
              f"{100 * run['generator_share']:.0f}%, others {100 * run['others_share']:.0f}% of a core"
              + (f"; first errors: {run['errors']}" if run["errors"] else ""), file=sys.stderr, flush=True)
        if run["others_share"] <= args.others_limit or attempt == args.retries:
            return run
        discarded.append(f"{kind} repeat {repeat}: others {100 * run['others_share']:.0f}% of a core; all served "
                         f"{run['all_served_s']:.2f} s, login p99 {run['login_p99_ms']:.1f} ms")
        time.sleep(args.retry_pause)
    raise AssertionError("unreachable")


def refusals(results: dict[str, list[dict[str, Any]]], generator_limit: float, others_limit: float) -> list[str]:
    """Why the figures measure the generator or the machine rather than the servers (empty: they do not)."""
    reasons = []
    for kind, runs in results.items():
        for number, run in enumerate(runs, 1):
            if not run["generator_share"] <= generator_limit:
                reasons.append(f"{kind} run {number}: generator CPU {100 * run['generator_share']:.0f}% of a core "
                               f"(limit {100 * generator_limit:.0f}%)")
            if not run["others_share"] <= others_limit:
                reasons.append(f"{kind} run {number}: other processes used {100 * run['others_share']:.0f}% of a core "
                               f"(limit {100 * others_limit:.0f}%)")
    return reasons


COLUMNS = [("all_served_s", "all served s", "{:.2f}"), ("login_p50_ms", "login p50 ms", "{:.1f}"),
           ("login_p90_ms", "login p90 ms", "{:.1f}"), ("login_p99_ms", "login p99 ms", "{:.1f}"),
           ("login_max_ms", "login max ms", "{:.1f}"), ("served_p50_ms", "served p50 ms", "{:.1f}"),
           ("served_p99_ms", "served p99 ms", "{:.1f}"), ("cpu_s", "server CPU s", "{:.2f}"),
           ("rss_peak_mib", "peak RSS MiB", "{:.1f}"), ("failed", "failed", "{:.0f}"),
           ("generator_share", "generator % of a core", "{:.0%}"), ("others_share", "others % of a core", "{:.0%}")]
RATIO_KEYS = ["all_served_s", "login_p99_ms", "served_p99_ms", "cpu_s", "rss_peak_mib"]


def table(args: argparse.Namespace, servers: list[str], results: dict[str, list[dict[str, Any]]]) -> str:
    """The markdown report: medians, each run, and chatd's ratios to the peers."""

    def median(kind: str, key: str) -> float:
        return float(statistics.median(run[key] for run in results[kind]))

    out = [f"login storm: {args.clients} clients at once, {args.history} messages of history each "
           f"(chatd protocol {args.chatd_protocol}, restarted on its SQLite data; IRC servers seeded after start); "
           f"{args.generators} generator process(es) at nice {args.nice}; repeats={args.repeats}, medians; "
           f"{os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.2f}", "",
           "| server | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
    for kind in servers:
        out.append(f"| {kind} | " + " | ".join(form.format(median(kind, key)) for key, _, form in COLUMNS) + " |")
    for kind in servers:
        for key in ("all_served_s", "login_p99_ms"):
            runs = ", ".join(f"{run[key]:.2f}" for run in results[kind])
            out.append(f"|  ({kind} runs, {key}) | {runs} |")
    for peer, title in (("inspircd", "InspIRCd"), ("ergo", "ergo")):
        if "chatd" in servers and peer in servers:
            ratios = ", ".join(f"{key} {median('chatd', key) / median(peer, key):.2f}x" for key in RATIO_KEYS)
            out += ["", f"ratios (chatd / {title}): {ratios}"]
    return "\n".join(out)


def main() -> None:
    """Run the storms asked for, alternating servers, and print the table."""
    if len(sys.argv) == 3 and sys.argv[1] == "--generate":
        generate(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servers", default="chatd,chatd-irc,inspircd,ergo", help="chatd, chatd-irc, inspircd, ergo (comma-separated)")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--history", type=int, default=100, help="messages of history each client must get")
    parser.add_argument("--seed", type=int, default=None, help="messages sent to #lobby before the storm (default H + 20)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chatd-protocol", type=int, choices=(1, 2), default=2,
                        help="2: hello then login, as chatd-client does (presence follows); 1: login only")
    parser.add_argument("--generators", type=int, default=1, help="generator processes sharing the clients")
    parser.add_argument("--nice", type=int, default=10, help="nice of the generator processes")
    parser.add_argument("--server-nice", type=int, default=0, help="nice of the servers (as fanout.py's)")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds a storm may last")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between seeding/restart and the storm")
    parser.add_argument("--generator-limit", type=float, default=GENERATOR_LIMIT,
                        help="refuse when the generators used more than this share of a core")
    parser.add_argument("--others-limit", type=float, default=OTHERS_LIMIT,
                        help="refuse when other processes used more than this share of a core in a window")
    parser.add_argument("--retries", type=int, default=3, help="times a run is done again when the machine was busy")
    parser.add_argument("--retry-pause", type=float, default=15.0)
    parser.add_argument("--ergo", help="the ergo binary (default: bench/ergo.py's: $ERGO or /work/ergo/bin/ergo)")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = args.history + 20
    if args.seed < args.history:
        parser.error("--seed must be at least --history")
    servers = args.servers.split(",")
    kinds = server_kinds()
    unknown = [kind for kind in servers if kind not in kinds]
    if unknown:
        parser.error(f"unknown servers {unknown} (known: {', '.join(kinds)})")
    if "inspircd" in servers and not (shutil.which("inspircd") or os.path.exists("/usr/sbin/inspircd")):
        parser.error("InspIRCd is not installed (apt-get install inspircd)")
    StormChatd.history = StormInspIRCd.history = args.history
    if args.ergo:
        setattr(ergo_kind(), "binary", os.path.abspath(args.ergo))
    Priority.nice = args.server_nice
    raise_open_files()  # thousands of sockets in the servers (children inherit it)
    results: dict[str, list[dict[str, Any]]] = {}
    discarded: list[str] = []
    for repeat in range(1, args.repeats + 1):
        order = servers if repeat % 2 else servers[::-1]  # alternate, so drift hits every server alike
        for kind in order:
            results.setdefault(kind, []).append(run_busy_aware(kind, args, repeat, discarded))
    print(table(args, servers, results))
    if discarded:
        print("\nruns done again because the machine was busy:")
        print("\n".join(f"- {line}" for line in discarded))
    reasons = refusals(results, args.generator_limit, args.others_limit)
    if reasons:
        print("\ngenerator-bound: these figures measure the load generator or the machine, not the servers:")
        print("\n".join(f"- {reason}" for reason in reasons))
        sys.exit(2)


if __name__ == "__main__":
    main()

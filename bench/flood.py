"""Request flood: a victim's ping round trip while one connection floods.

    .venv/bin/python bench/flood.py [--checkout /work/main] [--seconds 8] [--phases baseline,ping,...]

For each phase a fresh ``twistd -n --pidfile= chatd`` is started from the
checkout given (default: the repository this script is in) with the
Python of this interpreter, ``PYTHONPATH`` and cwd set to the checkout so
that its ``chatd`` package and ``twisted/plugins`` are the ones used (the
server's first log line names the ``chatd`` it imported, and the run stops
if that is not the checkout's), on a free loopback port with ``--history
memory --max-per-ip 0`` (``--server-arg`` adds options).

A victim client logs in (lines framing, v2 ``hello``) and sends ``ping``
every 60 ms (within the default request budget of 20 a second),
measuring the round trip to its ``pong``.  One attacker
connection, in a separate process (this file in ``attack`` mode, so the
generator does not share the victim's loop), logs in too, then floods ONE
request type for ``--seconds``: the same requests pipelined in 60 KB
writes, as fast as the socket takes them, reading and discarding its input
in the same loop (or, for the ``/noread`` phases, never reading).  The
``history`` phases first seed 1,000 messages (50 short-lived senders of 20
each, inside the default rate limit).  The ``baseline`` phase has no
attacker.

Reported per phase: the victim's ping p50/p99/max (pings still unanswered
2 s after the flood count as lost; max is then at least the time they
waited), what the attacker sent and got back and whether (and when, and
how) it was disconnected, the server's RSS before the flood, its peak
during it and after it (1 s after both clients closed), the bytes of
responses other than ``pong`` the victim got, and exceptions in the
server log.

Loopback only; every wait is bounded; the server and the attacker are
stopped by pid at the end of each phase, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from common import free_port, rss_kib, wait_for_port

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CHECKOUT = os.path.dirname(HERE)
CHUNK = 60 * 1024  # bytes per attacker write
PING_EVERY = 0.060  # seconds between victim pings: under 20/s, within the default request budget
GRACE = 2.0  # seconds the victim waits for late pongs after the flood
SETTLE = 1.0  # seconds between the clients' close and the last RSS reading
STEP_TIMEOUT = 20.0  # the longest any single setup step may take
SEED_MESSAGES = 1000
SEED_BURST = 20  # messages per seeding connection: within the default burst

#: The request(s) each attack repeats, as sent on the wire.
ATTACKS: dict[str, bytes] = {
    "ping": b'{"request": "ping", "content": "x"}\n',
    "help": b'{"request": "help"}\n',
    "names": b'{"request": "names"}\n',
    "bad_request": b"{}\n",
    "history": b'{"request": "history", "content": {"limit": 500}}\n',
    "logout_login": b'{"request": "logout"}\n{"request": "login", "content": "attacker"}\n',
    "garbage": b"{" * CHUNK,
    "msg": b'{"request": "msg", "content": "flood"}\n',
}

DEFAULT_PHASES = (
    "baseline,ping,help,names,bad_request,history,logout_login,garbage,msg,ping/noread,history/noread"
)

#: The wrapper that runs twistd, after naming the chatd it imported.
BOOT = (
    "import sys, chatd.tap; "
    "print('flood.py: chatd code from', chatd.tap.__file__, flush=True); "
    "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)


# -- the attacker (a child process) -----------------------------------------


def request_line(request: str, content: Any = None) -> bytes:
    """One request object and a newline."""
    return json.dumps({"request": request, "content": content}).encode() + b"\n"


def read_until(sock: socket.socket, marker: bytes, timeout: float = STEP_TIMEOUT, count: int = 1) -> bytes:
    """Read from a blocking ``sock`` until ``marker`` arrived ``count``
    times (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    end = time.monotonic() + timeout
    while data.count(marker) < count:
        if time.monotonic() > end:
            raise RuntimeError(f"{data.count(marker)} of {count} {marker!r} within {timeout:g} s; got {data[-300:]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"server closed before {count} {marker!r}; got {data[-300:]!r}")
        data += chunk
    return data


def log_in(port: int, name: str) -> socket.socket:
    """A v2, lines-framed, logged-in connection (history on login read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    sock.sendall(request_line("hello", {"protocol": 2, "client": "flood.py"}) + request_line("login", name))
    data = read_until(sock, b"Login successful")
    tail = data.split(b"Login successful", 1)[1]
    if b'"response": "history"' not in tail:
        read_until(sock, b'"response": "history"')
    return sock


def attack(argv: list[str]) -> None:
    """Child mode: log in, say ``ready``, flood, print a JSON summary."""
    parser = argparse.ArgumentParser(prog="flood.py attack")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=sorted(ATTACKS), required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--no-read", action="store_true")
    args = parser.parse_args(argv)
    sock = log_in(args.port, "attacker")
    sock.setblocking(False)
    unit = ATTACKS[args.kind]
    payload = memoryview(unit * max(1, CHUNK // len(unit)))
    print("ready", flush=True)
    result = flood(sock, payload, args.seconds, read=not args.no_read)
    sock.close()
    print(json.dumps(result), flush=True)


def flood(sock: socket.socket, payload: memoryview, seconds: float, read: bool) -> dict[str, Any]:
    """Write ``payload`` over and over for ``seconds``; read and discard (or not)."""
    started = time.monotonic()
    end = started + seconds
    sent = received = responses = 0
    codes: dict[str, int] = {}
    offset = 0
    outcome: dict[str, Any] = {"disconnected_after": None, "how": None}
    code_pattern = re.compile(rb'"code": "([a-z_]+)"')
    while (now := time.monotonic()) < end:
        readable, writable, _ = select.select([sock] if read else [], [sock], [], min(0.1, end - now))
        try:
            if readable:
                data = sock.recv(1 << 20)
                if not data:
                    outcome = {"disconnected_after": time.monotonic() - started, "how": "EOF"}
                    break
                received += len(data)
                responses += data.count(b"\n")
                for code in code_pattern.findall(data):
                    codes[code.decode()] = codes.get(code.decode(), 0) + 1
            if writable:
                count = sock.send(payload[offset:])
                sent += count
                offset = (offset + count) % len(payload)
        except BlockingIOError:
            continue
        except OSError as problem:
            outcome = {"disconnected_after": time.monotonic() - started, "how": type(problem).__name__}
            break
    return {"sent": sent, "received": received, "responses": responses, "codes": codes, **outcome}


# -- the server --------------------------------------------------------------


class Server:
    """One chatd process from the checkout, stopped by pid."""

    def __init__(self, checkout: str, extra: list[str], workdir: str) -> None:
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"server-{self.port}.log")
        env = dict(os.environ, PYTHONPATH=checkout)
        command = [sys.executable, "-c", BOOT, "-n", "--pidfile=", "chatd",
                   "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                   "--history", "memory", "--data-dir", workdir, "--max-per-ip", "0", *extra]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.checkout = checkout

    def ready(self) -> str:
        """Wait until it listens; returns the chatd path it imported."""
        wait_for_port(self.port, STEP_TIMEOUT)
        match = re.search(r"chatd code from (\S+)", self.log())
        code = match.group(1) if match else "?"
        if not code.startswith(os.path.join(self.checkout, "chatd") + os.sep):
            raise RuntimeError(f"the server ran {code}, not the checkout {self.checkout}")
        return code

    def rss(self) -> int:
        """Resident memory in KiB (0 once it is gone)."""
        try:
            return rss_kib(self.process.pid)
        except OSError:
            return 0

    def log(self) -> str:
        """The server's log so far."""
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop within 10 s."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def seed(port: int, count: int) -> None:
    """Store ``count`` messages, from short-lived senders inside the rate limit."""
    for sender in range(0, count, SEED_BURST):
        sock = log_in(port, f"seed{sender}")
        number = min(SEED_BURST, count - sender)
        sock.sendall(b"".join(request_line("msg", f"seed message {sender + n}: " + "s" * 60) for n in range(number)))
        read_until(sock, b'"response": "message"', count=number)
        sock.close()


# -- the victim ---------------------------------------------------------------


@dataclass
class Victim:
    """Pings every PING_EVERY seconds and times each ``pong``; also samples the server's RSS."""

    sock: socket.socket
    server: Server
    sent: dict[int, float] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)
    other_bytes: int = 0
    rss_peak: int = 0
    closed: bool = False
    _buffer: bytes = b""
    _next: int = 0

    def run(self, seconds: float) -> None:
        """Ping for ``seconds``, then wait up to GRACE for the last pongs."""
        self.sock.setblocking(False)
        start = time.monotonic()
        next_ping = start
        next_sample = start
        stop_pinging = start + seconds
        end = stop_pinging + GRACE
        while not self.closed:
            now = time.monotonic()
            if now >= end or (now >= stop_pinging and not self.sent):
                return
            if now >= next_sample:
                self.rss_peak = max(self.rss_peak, self.server.rss())
                next_sample = now + 0.25
            if now < stop_pinging and now >= next_ping:
                self.ping(now)
                next_ping += PING_EVERY
            wake = min(next_ping if now < stop_pinging else end, next_sample, end)
            readable, _, _ = select.select([self.sock], [], [], max(0.0, wake - time.monotonic()))
            if readable:
                self.receive()

    def ping(self, now: float) -> None:
        self.sent[self._next] = now
        try:
            self.sock.send(request_line("ping", self._next))
        except BlockingIOError:
            pass  # counted as lost if never answered
        except OSError:
            self.closed = True
        self._next += 1

    def receive(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        now = time.monotonic()
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            response = json.loads(line)
            if response.get("response") == "pong" and response.get("content") in self.sent:
                self.rtts.append(now - self.sent.pop(response["content"]))
            else:
                self.other_bytes += len(line) + 1


# -- one phase -----------------------------------------------------------------


@dataclass
class Row:
    """What one phase measured."""

    phase: str
    code: str = ""
    rtts: list[float] = field(default_factory=list)
    lost: int = 0
    waited: float = 0.0
    victim_other: int = 0
    victim_closed: bool = False
    attacker: dict[str, Any] | None = None
    rss_before: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    closings: list[str] = field(default_factory=list)
    exceptions: int = 0


def start_attacker(port: int, kind: str, seconds: float, no_read: bool) -> subprocess.Popen[str]:
    command = [sys.executable, os.path.abspath(__file__), "attack", "--port", str(port), "--kind", kind,
               "--seconds", str(seconds)]
    if no_read:
        command.append("--no-read")
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def wait_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``process`` (bounded)."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    if not readable:
        raise RuntimeError(f"the attacker said nothing within {timeout:g} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the attacker exited (status {process.wait(timeout=5)})")
    return line.strip()


def run_phase(phase: str, args: argparse.Namespace, workdir: str) -> Row:
    """One phase on a fresh server."""
    kind, _, variant = phase.partition("/")
    row = Row(phase)
    server = Server(args.checkout, args.server_arg, workdir)
    attacker: subprocess.Popen[str] | None = None
    try:
        row.code = server.ready()
        if kind == "history":
            seed(server.port, SEED_MESSAGES)
        victim = Victim(log_in(server.port, "victim"), server)
        if kind != "baseline":
            attacker = start_attacker(server.port, kind, args.seconds, variant == "noread")
            if wait_line(attacker, STEP_TIMEOUT) != "ready":
                raise RuntimeError("the attacker did not get ready")
        row.rss_before = server.rss()
        victim.run(args.seconds)
        if attacker is not None:
            row.attacker = json.loads(wait_line(attacker, args.seconds + STEP_TIMEOUT))
            attacker.wait(timeout=STEP_TIMEOUT)
        row.rtts, row.victim_other, row.victim_closed = victim.rtts, victim.other_bytes, victim.closed
        row.lost = len(victim.sent)
        now = time.monotonic()
        row.waited = max((now - sent for sent in victim.sent.values()), default=0.0)
        row.rss_peak = max(victim.rss_peak, server.rss())
        victim.sock.close()
        time.sleep(SETTLE)  # the server notices both closes and frees their buffers
        row.rss_end = server.rss()
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait(timeout=10)
        server.stop()
    log = server.log()
    row.closings = sorted(set(re.findall(r"closing 127\.0\.0\.1:\d+ (.*)", log)))
    row.exceptions = sum(log.count(word) for word in ("Traceback", "Unhandled", "[ERROR]", "CRITICAL"))
    return row


# -- output -----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def attacker_outcome(row: Row, seconds: float) -> str:
    attacker = row.attacker
    if attacker is None:
        return "-"
    sent = f"sent {attacker['sent'] / 1e6:.1f} MB"
    if attacker["responses"] or attacker["received"]:
        sent += f", got {attacker['responses']} responses ({attacker['received'] / 1e6:.1f} MB)"
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(attacker["codes"].items()))
    if codes:
        sent += f" [{codes}]"
    if row.closings:
        sent += "; server log: " + "; ".join(row.closings)
    if attacker["disconnected_after"] is None:
        return f"still connected after {seconds:g} s; {sent}"
    return f"**disconnected after {attacker['disconnected_after']:.2f} s ({attacker['how']})**; {sent}"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"checkout={args.checkout} seconds={args.seconds:g} server args: --history memory --max-per-ip 0 "
          f"{' '.join(args.server_arg)}".rstrip())
    for code in sorted({row.code for row in rows}):
        print(f"chatd code: {code}")
    print("| phase | victim ping p50 ms | p99 ms | max ms | pings lost | attacker outcome "
          "| RSS before KiB | RSS peak delta KiB | RSS after delta KiB | victim other KB | server exceptions |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        rtts = sorted(row.rtts)
        p50 = ms(statistics.median(rtts)) if rtts else "-"
        p99 = ms(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]) if rtts else "-"
        worst = max(rtts, default=0.0)
        top = ms(worst) if not row.lost else f">= {ms(max(worst, row.waited))}"
        lost = f"{row.lost} of {row.lost + len(rtts)}" + (" (victim disconnected)" if row.victim_closed else "")
        print(f"| {row.phase} | {p50} | {p99} | {top} | {lost} | {attacker_outcome(row, args.seconds)} "
              f"| {row.rss_before} | {row.rss_peak - row.rss_before:+d} | {row.rss_end - row.rss_before:+d} "
              f"| {row.victim_other / 1e3:.0f} | {row.exceptions} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "attack":
        attack(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", default=DEFAULT_CHECKOUT, help="the chatd checkout to run [default: this repo]")
    parser.add_argument("--seconds", type=float, default=8.0, help="flood length per phase")
    parser.add_argument("--phases", default=DEFAULT_PHASES,
                        help=f"comma-separated; a request type, /noread for an attacker that never reads, or baseline "
                             f"[default: {DEFAULT_PHASES}]")
    parser.add_argument("--server-arg", action="append", default=[], help="extra chatd option (repeatable)")
    args = parser.parse_args()
    args.checkout = os.path.abspath(args.checkout)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for phase in phases:
        kind, _, variant = phase.partition("/")
        if (kind != "baseline" and kind not in ATTACKS) or variant not in ("", "noread"):
            parser.error(f"unknown phase {phase!r}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            for phase in phases:
                print(f"phase {phase} ...", file=sys.stderr, flush=True)
                rows.append(run_phase(phase, args, workdir))
        except KeyboardInterrupt:
            print("interrupted: the phases done so far", file=sys.stderr)
        finally:
            if rows:
                print_table(rows, args)


if __name__ == "__main__":
    main()

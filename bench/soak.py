"""Soak: hundreds of connections churn against one chatd; does it leak?

    .venv/bin/python bench/soak.py [--seconds 300] [--workers 300] [--warmup 30]

Starts ``twistd -n --pidfile= chatd`` (default settings except
``--max-per-ip 0``, since every client comes from 127.0.0.1) in a
scratch directory, then W workers loop for the given time: connect, log
in (most of them), chat a little, sometimes send garbage or an oversized
request, then vanish without logging out (close, or reset).  The
server's RSS and open file descriptors are sampled every 5 s from
``/proc``.  The baseline is taken after a warm-up of the same churn (so
the interpreter's allocator and SQLite's cache are warm); after the churn
stops and the server settles, RSS and fds must be back within 10% of it.
Server exceptions are counted from its log.

Loopback only; the run is bounded in time; only the child it started is
stopped, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import time

from common import free_port, rss_kib, twistd_command, wait_for_port


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Counters:
    """What the workers saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.logins = 0
        self.messages = 0
        self.garbage = 0
        self.unexpected: list[str] = []


async def worker(port: int, index: int, stop_at: float, counters: Counters) -> None:
    rng = random.Random(index)
    cycle = 0
    while time.monotonic() < stop_at:
        cycle += 1
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, asyncio.TimeoutError) as problem:
            counters.unexpected.append(f"connect: {problem!r}")
            await asyncio.sleep(0.5)
            continue
        counters.connections += 1
        try:
            if rng.random() < 0.85:
                writer.write(json.dumps({"request": "login", "content": f"w{index}c{cycle}"}).encode() + b"\n")
                line = await asyncio.wait_for(reader.readline(), 10)
                if b"Login successful" not in line:
                    counters.unexpected.append(f"login: {line[:100]!r}")
                else:
                    counters.logins += 1
                for n in range(rng.randint(0, 5)):
                    writer.write(json.dumps({"request": "msg", "content": f"soak {index}.{cycle}.{n}"}).encode() + b"\n")
                    counters.messages += 1
                    await asyncio.sleep(rng.uniform(0, 0.3))
            roll = rng.random()
            if roll < 0.1:
                writer.write(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
                counters.garbage += 1
            elif roll < 0.13:
                writer.write(b'{"request": "msg", "content": "' + b"x" * 20000)  # too_long
                counters.garbage += 1
            await writer.drain()
            await asyncio.sleep(rng.uniform(0, 0.5))
        except (OSError, asyncio.TimeoutError) as problem:
            if not isinstance(problem, ConnectionResetError):
                counters.unexpected.append(f"chat: {problem!r}")
        finally:
            if rng.random() < 0.3:
                # Vanish abruptly: a reset instead of a clean close.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()


async def churn(port: int, workers: int, seconds: float, counters: Counters) -> None:
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(worker(port, i, stop_at, counters) for i in range(workers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--workers", type=int, default=300)
    parser.add_argument("--warmup", type=float, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        log_path = os.path.join(workdir, "server.log")
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [*twistd_command(), "-n", "--pidfile=", "chatd", "--listen", f"tcp:{port}:interface=127.0.0.1", "--max-per-ip", "0"],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port)
            pid = server.pid
            samples: list[tuple[float, int, int, str]] = [(0.0, rss_kib(pid), fds(pid), "start")]
            started = time.monotonic()
            warm = Counters()
            asyncio.run(churn(port, args.workers, args.warmup, warm))
            time.sleep(5)
            baseline = (rss_kib(pid), fds(pid))
            samples.append((time.monotonic() - started, *baseline, "baseline after warm-up"))

            counters = Counters()

            async def run_with_sampling() -> None:
                task = asyncio.ensure_future(churn(port, args.workers, args.seconds, counters))
                while not task.done():
                    await asyncio.sleep(5)
                    samples.append((time.monotonic() - started, rss_kib(pid), fds(pid), "churn"))
                await task

            asyncio.run(run_with_sampling())
            time.sleep(10)  # let the server notice every close and settle
            final = (rss_kib(pid), fds(pid))
            samples.append((time.monotonic() - started, *final, "after churn, settled"))
        finally:
            server.send_signal(signal.SIGTERM)
            status = server.wait(timeout=30)
        with open(log_path, errors="replace") as handle:
            log_text = handle.read()

    exceptions = sum(log_text.count(word) for word in ("Traceback", "Unhandled", "[ERROR]", "CRITICAL"))
    print(f"workers={args.workers} warmup={args.warmup:g}s churn={args.seconds:g}s")
    print(f"churn: {counters.connections} connections, {counters.logins} logins, {counters.messages} messages, "
          f"{counters.garbage} garbage/oversized sends, {len(counters.unexpected)} unexpected client errors")
    print("| t (s) | RSS KiB | fds | phase |")
    print("|---|---|---|---|")
    for when, rss, fd_count, phase in samples:
        print(f"| {when:.0f} | {rss} | {fd_count} | {phase} |")
    rss_change = 100 * (final[0] - baseline[0]) / baseline[0]
    fd_change = 100 * (final[1] - baseline[1]) / baseline[1]
    print(f"RSS after churn vs baseline: {rss_change:+.1f}%; fds: {final[1]} vs {baseline[1]} ({fd_change:+.1f}%)")
    print(f"server exceptions in log: {exceptions}; server exit status: {status}")
    if counters.unexpected:
        print("first unexpected client errors:", counters.unexpected[:5])


if __name__ == "__main__":
    main()

"""Idle memory per connection: RSS of chatd with N idle, logged-in users.

    .venv/bin/python bench/memory.py [--connections 10000]

Starts ``twistd -n --pidfile= chatd`` (``--max-per-ip 0
--max-connections 0 --login-timeout 0``) on loopback, reads its RSS,
opens N connections that each log in and then stay idle, reads RSS again
and prints the difference per connection (goal: under 10 KiB).  Needs a
file descriptor limit above 2N+100 for this process and the server
(``ulimit -n``).  Bounded in time; stops only the server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import subprocess
import sys
import tempfile
import time

from common import free_port, rss_kib, twistd_command, wait_for_port


async def hold(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, count, 200):
        batch = []
        for i in range(start, min(count, start + 200)):
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            writer.write(b'{"request": "login", "content": "idle%d"}\n' % i)
            batch.append((reader, writer))
        for reader, writer in batch:
            await asyncio.wait_for(reader.readline(), 30)  # info
            await asyncio.wait_for(reader.readline(), 30)  # history
            writers.append(writer)
    return writers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 200
    if hard < needed:
        sys.exit(f"need a file descriptor limit of {needed}; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))  # inherited by the server
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "chatd", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--max-per-ip", "0", "--max-connections", "0", "--login-timeout", "0"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            time.sleep(1)
            before = rss_kib(server.pid)

            async def measure() -> int:
                writers = await hold(port, args.connections)
                await asyncio.sleep(3)
                after = rss_kib(server.pid)
                for writer in writers:
                    writer.close()
                return after

            after = asyncio.run(measure())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    per = (after - before) * 1024 / args.connections
    print(f"connections: {args.connections}; RSS before {before} KiB, after {after} KiB")
    print(f"idle memory per logged-in connection: {per / 1024:.2f} KiB ({per:.0f} bytes); goal < 10 KiB")


if __name__ == "__main__":
    main()

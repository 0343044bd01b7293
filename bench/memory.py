"""Idle memory per connection: RSS of chatd with N idle, logged-in users.

    .venv/bin/python bench/memory.py [--connections 10000] [--irc]

Starts ``twistd -n --pidfile= chatd`` (``--max-per-ip 0
--max-connections 0 --login-timeout 0``) on loopback, reads its RSS,
opens N connections that each log in and then stay idle, reads RSS again
and prints the difference per connection (goal: under 10 KiB).  With
``--irc`` the connections are IRC clients of ``--irc`` (registered with
NICK and USER, in no channel: ``--irc-autojoin ''``) instead of JSON ones.  Needs a
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


async def hold(port: int, count: int, irc: bool = False) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, count, 200):
        batch = []
        for i in range(start, min(count, start + 200)):
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            if irc:
                writer.write(b"NICK idle%d\r\nUSER idle%d 0 * :idle\r\n" % (i, i))
            else:
                writer.write(b'{"request": "login", "content": "idle%d"}\n' % i)
            batch.append((reader, writer))
        for reader, writer in batch:
            if irc:
                while True:  # the welcome ends with the MOTD (376) or its absence (422)
                    line = await asyncio.wait_for(reader.readline(), 30)
                    if not line or b" 376 " in line or b" 422 " in line:
                        break
            else:
                await asyncio.wait_for(reader.readline(), 30)  # info
                await asyncio.wait_for(reader.readline(), 30)  # history
            writers.append(writer)
    return writers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--irc", action="store_true", help="IRC clients of chatd's --irc instead of JSON ones")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 200
    if hard < needed:
        sys.exit(f"need a file descriptor limit of {needed}; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))  # inherited by the server
    port, irc_port = free_port(), free_port()
    irc = ["--irc", f"tcp:{irc_port}:interface=127.0.0.1", "--irc-autojoin", ""] if args.irc else []
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "chatd", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--max-per-ip", "0", "--max-connections", "0", "--login-timeout", "0", *irc],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            if args.irc:
                wait_for_port(irc_port)
            time.sleep(1)
            before = rss_kib(server.pid)

            async def measure() -> int:
                writers = await hold(irc_port if args.irc else port, args.connections, args.irc)
                await asyncio.sleep(3)
                after = rss_kib(server.pid)
                for writer in writers:
                    writer.close()
                return after

            after = asyncio.run(measure())
            # Printed before the server stops: 10,000 logouts take it a while.
            per = (after - before) * 1024 / args.connections
            kind = "IRC" if args.irc else "JSON"
            print(f"{kind} connections: {args.connections}; RSS before {before} KiB, after {after} KiB", flush=True)
            print(f"idle memory per logged-in connection: {per / 1024:.2f} KiB ({per:.0f} bytes); goal < 10 KiB", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=300)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()

"""Latency probes for bench/fanout.py, in a process of their own.

    python bench/probe.py '{"ports": [6667], "protocol": "irc", "irc_echo": true, "deadline_s": 60,
                            "probes": [{"index": 195, "rooms": ["#lobby"], "expected": 1000}]}'

Connects one client per probe (nick/login ``u<index>``, member of
``rooms``, with the dialects of ``common.py``) when told, on stdin, one
line per step: ``enter N`` (the next N probes connect, log in and join
their rooms, at once), or ``login N`` and later ``join N`` (the two
halves, for a set-up in two phases); each answered ``done`` on stdout.
So the caller can put the probes where it wants them in a room's join
order, which may be its fan-out order.  Then it reads until every probe has its ``expected`` messages or
``deadline_s`` seconds pass, and prints one JSON line: ``latencies_ns``
(receipt time minus the send time embedded in each message text as
``t=<monotonic_ns>``), ``received`` and ``cpu_s`` (this process's CPU
time so far, so that the caller can take the CPU spent in its measured
window).  Lines without a send time (joins, presence) are not counted.
It then stays connected until its stdin is closed, and exits.

Why a process of its own: the bulk load generator is busy exactly when
messages arrive, so latencies measured in it are its own queueing, not the
server's.  ``time.monotonic_ns()`` is CLOCK_MONOTONIC on Linux, one clock
for every process on the machine, so the sender's and the probe's readings
compare.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any

from common import WAIT, Dialect, IrcDialect, JsonDialect

TIMESTAMP = re.compile(rb"t=(\d+) ")


class StreamLink:
    """An asyncio stream pair as the dialects' ``Link``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def readline(self) -> bytes:
        """The next line (b"" at the end)."""
        return await asyncio.wait_for(self.reader.readline(), WAIT)

    def write(self, data: bytes) -> None:
        """Send ``data``."""
        self.writer.write(data)


async def connect(port: int) -> StreamLink:
    """A connection to the server."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), WAIT)
    return StreamLink(reader, writer)


async def measure(reader: asyncio.StreamReader, expected: int, latencies: list[int]) -> int:
    """Read until ``expected`` timestamped messages came; return how many did."""
    received = 0
    pending = b""
    while received < expected:
        chunk = await reader.read(1 << 20)
        if not chunk:
            break
        now = time.monotonic_ns()
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        complete, pending = data[:cut], data[cut:]
        stamps = TIMESTAMP.findall(complete)
        received += len(stamps)
        latencies.extend(now - int(sent) for sent in stamps)
    return received


async def main(config: dict[str, Any]) -> None:
    """Log in and join when told, measure, report."""
    ports = [int(port) for port in config["ports"]]
    dialect: Dialect = JsonDialect() if config["protocol"] == "json" else IrcDialect(bool(config["irc_echo"]))
    loop = asyncio.get_running_loop()
    probes = list(config["probes"])
    links: list[StreamLink] = []
    joined = 0

    async def one(step: str, number: int) -> None:
        probe = probes[number]
        index, rooms = int(probe["index"]), [str(room) for room in probe["rooms"]]
        if step in ("enter", "login"):
            await asyncio.wait_for(dialect.login(links[number], index), WAIT)
        if step in ("enter", "join"):
            await asyncio.wait_for(dialect.join(links[number], rooms), WAIT)

    while joined < len(probes):  # when told: the caller spreads the probes over the orders
        words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if len(words) != 2 or words[0] not in ("enter", "login", "join") or int(words[1]) < 1:
            raise RuntimeError(f"expected 'enter|login|join <count>', got {words!r}")
        step, count = words[0], int(words[1])
        first = len(links) if step != "join" else joined
        if first + count > len(probes) or (step == "join" and first + count > len(links)):
            raise RuntimeError(f"{step} {count}: not that many probes left")
        for number in range(first, first + count):  # connections in order, so links[number] is probe number's
            if step != "join":
                links.append(await connect(ports[int(probes[number]["index"]) % len(ports)]))
        await asyncio.gather(*(one(step, number) for number in range(first, first + count)))
        if step != "login":
            joined += count
        print("done", flush=True)
    clients = [(link, int(probe["expected"])) for link, probe in zip(links, probes)]
    latencies: list[int] = []
    readers = [measure(link.reader, expected, latencies) for link, expected in clients]
    try:
        counts = await asyncio.wait_for(asyncio.gather(*readers), float(config["deadline_s"]))
        received = sum(counts)
    except asyncio.TimeoutError:
        received = len(latencies)
    print(json.dumps({"latencies_ns": latencies, "received": received, "cpu_s": time.process_time()}), flush=True)
    # Stay connected until the caller closes stdin (once its own receivers have counted everything):
    # leaving earlier would send them a QUIT or presence line in the middle of their count.
    await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), float(config["deadline_s"]))
    for link, _ in clients:
        link.writer.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))

"""Latency probes for bench/fanout.py, in a process of their own.

    python bench/probe.py '{"ports": [6667], "protocol": "irc", "indices": [195, 196],
                            "expected": 1000, "deadline_s": 60}'

Connects one client per index (nick/login ``u<index>``, room/channel as
fanout.py uses), one each time a ``join`` line comes on stdin, answering
``joined`` on stdout (so the caller can spread the probes over the room's
join order, which may be its fan-out order), then reads until every probe has ``expected`` messages or ``deadline_s``
seconds pass, and prints one JSON line: ``latencies_ns`` (receipt time
minus the send time embedded in each message text as ``t=<monotonic_ns>``),
``received`` and ``cpu_s`` (this process's CPU time so far, so that the
caller can take the CPU spent in its measured window).

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

TIMESTAMP = re.compile(rb"t=(\d+) ")
JOIN_WAIT = 60.0


async def join(protocol: str, index: int, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect as ``u<index>`` and join the bench room."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), JOIN_WAIT)
    if protocol == "json":
        writer.write(json.dumps({"request": "login", "content": f"u{index}"}).encode() + b"\n")
        for _ in range(2):  # info, history
            line = await asyncio.wait_for(reader.readline(), JOIN_WAIT)
            if b"error" in line:
                raise RuntimeError(f"login failed: {line!r}")
        return reader, writer
    writer.write(f"NICK u{index}\r\nUSER u{index} 0 * :bench\r\n".encode())
    await until(reader, writer, b" 001 ")
    writer.write(b"JOIN #bench\r\n")
    await until(reader, writer, b" 366 ")
    return reader, writer


async def until(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: bytes) -> None:
    """Read IRC lines (answering PING) until one contains ``code``."""
    while True:
        line = await asyncio.wait_for(reader.readline(), JOIN_WAIT)
        if not line:
            raise RuntimeError("IRC server closed the connection")
        if line.startswith(b"PING"):
            writer.write(b"PONG" + line[4:])
        if code in line:
            return


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
    """Join, say ready, measure, report."""
    ports = [int(port) for port in config["ports"]]
    indices = [int(index) for index in config["indices"]]
    protocol = str(config["protocol"])
    expected = int(config["expected"])
    loop = asyncio.get_running_loop()
    clients = []
    for index in indices:  # one at a time, when told: the caller spreads the probes over the join order
        command = await loop.run_in_executor(None, sys.stdin.readline)
        if command.strip() != "join":
            raise RuntimeError(f"expected 'join', got {command!r}")
        clients.append(await join(protocol, index, ports[index % len(ports)]))
        print("joined", flush=True)
    latencies: list[int] = []
    readers = [measure(reader, expected, latencies) for reader, _ in clients]
    try:
        counts = await asyncio.wait_for(asyncio.gather(*readers), float(config["deadline_s"]))
        received = sum(counts)
    except asyncio.TimeoutError:
        received = len(latencies)
    for _, writer in clients:
        writer.close()
    print(json.dumps({"latencies_ns": latencies, "received": received, "cpu_s": time.process_time()}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))

"""Benchmark: message throughput with the SQLite store against the memory
store, and the longest reactor stall.

    .venv/bin/python bench/history.py [--clients 20] [--senders 10] [--messages 500] [--window 20] [--repeats 3]

For each store it starts a chatd server in a child process (this file in
``serve`` mode: the real service tree from ``chatd.tap``, rate limit and
per-address cap off, plus a
``LoopingCall`` heartbeat that records how late each beat is), then N
clients log in over loopback, S of them send M messages each as fast as
the server takes them (at most ``--window`` unechoed each), and the run ends when every client has received
every message.  Throughput is messages accepted per second; the stall is
the longest time the reactor did not get to run the heartbeat.

Loopback only; every wait is bounded; only the child it started is
stopped, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common import free_port, wait_for_port

HEARTBEAT = 0.005  # seconds between heartbeats in the server
DEADLINE = 120.0  # no run may take longer than this


def serve(argv: list[str]) -> None:
    """Child mode: run chatd with a heartbeat; write stall stats on SIGTERM."""
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from chatd.tap import Options, makeService

    stats_path = argv[0]
    options = Options()
    options.parseOptions(argv[1:])  # type: ignore[no-untyped-call]  # twisted.python.usage is untyped
    service = makeService(options, reactor=reactor)
    lateness: list[float] = []
    last = [reactor.seconds()]

    def beat() -> None:
        now = reactor.seconds()
        lateness.append(now - last[0] - HEARTBEAT)
        last[0] = now

    heartbeat = LoopingCall(beat)

    def write_stats() -> None:
        lateness.sort()
        with open(stats_path, "w") as handle:
            json.dump({"max_stall_ms": 1000 * lateness[-1] if lateness else 0.0,
                       "p99_stall_ms": 1000 * lateness[int(len(lateness) * 0.99)] if lateness else 0.0,
                       "beats": len(lateness)}, handle)

    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(heartbeat.start, HEARTBEAT, False)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", write_stats)
    reactor.run()


async def load(port: int, clients: int, senders: int, messages: int, window: int) -> float:
    """Run the load; returns seconds from the first send to the last receipt.

    Each sender keeps at most ``window`` of its messages unechoed: a
    sustained load, as fast as the server takes it, not one flood.
    """
    total = senders * messages
    credits = [asyncio.Semaphore(window) for _ in range(senders)]
    connections = []
    for i in range(clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json.dumps({"request": "login", "content": f"user{i}"}).encode() + b"\n")
        connections.append((reader, writer))
    for reader, _ in connections:  # info and history
        await reader.readline()
        await reader.readline()

    async def receive(reader: asyncio.StreamReader, index: int) -> None:
        seen = 0
        own = f'"sender": "user{index}"'.encode()
        while seen < total:
            line = await reader.readline()
            if not line:
                raise RuntimeError("server closed a connection")
            if b'"response": "message"' in line:
                seen += 1
                if index < senders and own in line:
                    credits[index].release()

    async def send(writer: asyncio.StreamWriter, index: int) -> None:
        for n in range(messages):
            await credits[index].acquire()
            writer.write(json.dumps({"request": "msg", "content": f"message {n} from {index}"}).encode() + b"\n")
        await writer.drain()

    started = time.perf_counter()
    receivers = [asyncio.ensure_future(receive(reader, i)) for i, (reader, _) in enumerate(connections)]
    await asyncio.gather(*(send(writer, i) for i, (_, writer) in enumerate(connections[:senders])))
    await asyncio.wait_for(asyncio.gather(*receivers), DEADLINE)
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return elapsed


def run_once(store: str, args: argparse.Namespace) -> tuple[float, float]:
    """One server, one load; returns (messages/s, max stall ms)."""
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        stats = os.path.join(data_dir, "stats.json")
        server_args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--history", store, "--data-dir", data_dir,
                       "--history-on-login", "0", "--msg-rate", "0", "--request-rate", "0", "--max-per-ip", "0", *args.server_arg]
        child = subprocess.Popen([sys.executable, __file__, "serve", stats, *server_args],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            elapsed = asyncio.run(
                asyncio.wait_for(load(port, args.clients, args.senders, args.messages, args.window), DEADLINE)
            )
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)
        with open(stats) as handle:
            stall = json.load(handle)["max_stall_ms"]
    return args.senders * args.messages / elapsed, stall


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--window", type=int, default=20, help="unechoed messages per sender")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-arg", action="append", default=[], help="extra chatd option (repeatable)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"memory": [], "sqlite": []}
    for _ in range(args.repeats):
        for store in results:  # alternate, so drift hits both alike
            results[store].append(run_once(store, args))
    print(f"clients={args.clients} senders={args.senders} messages/sender={args.messages} "
          f"window={args.window} repeats={args.repeats}")
    print("| store | messages/s (median) | runs | max reactor stall ms (worst run) |")
    print("|---|---|---|---|")
    medians = {}
    for store, runs in results.items():
        medians[store] = statistics.median(rate for rate, _ in runs)
        print(f"| {store} | {medians[store]:.0f} | {', '.join(f'{r:.0f}' for r, _ in runs)} | {max(s for _, s in runs):.1f} |")
    print(f"SQLite throughput cost vs memory: {100 * (1 - medians['sqlite'] / medians['memory']):.1f}%")


if __name__ == "__main__":
    main()

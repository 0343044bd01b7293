"""Fan-out benchmark: chatd against InspIRCd, side by side.

    .venv/bin/python bench/fanout.py                 # both servers, burst and rate, 3 repeats
    .venv/bin/python bench/fanout.py --shapes rate,rooms --repeats 5   # many rooms against one room
    .venv/bin/python bench/fanout.py --servers chatd --repeats 1
    .venv/bin/python bench/fanout.py --servers chatd-base,chatd --base-checkout ../before  # before/after
    git archive HEAD | tar -x -C /tmp/head && .venv/bin/python bench/fanout.py --chatd-checkout /tmp/head

InspIRCd comes from Debian (``apt-get install inspircd``); it is started
here with a generated config (flood protection off, large sendq/recvq,
many clients per IP, loopback port, ``cap`` and ``ircv3_echomessage``
loaded).  chatd is started as ``twistd -n --pidfile= chatd --msg-rate 0
--request-rate 0 --max-per-ip 0 --history-on-login 0`` with its default
durable (SQLite) history.  The servers, the dialects, the receivers and
the probe plumbing are in ``common.py``; the rooms shape in ``rooms.py``.

The load generator: the bulk clients run in this process (asyncio, one
event loop, in a thread at ``--nice``, default 10: nice is per thread on
Linux, so the servers and the probes, started from the main thread, keep
nice 0, or ``--server-nice``: on a machine shared with other work, a
negative nice keeps its load from starving the servers and probes, the
same for every server; each of them, and the generator at half that
nice, then runs in a session of its own, since with autogroup scheduling
a nice counts only within a session).  Bulk clients are cheap: once joined, asyncio
stops reading them and a private epoll polled from the loop does one
``readv`` of up to 1 MiB per ready socket and counts newlines (one per JSON or IRC line),
parsing nothing.

Shapes:

- ``burst``: N clients join one room, S of them send M messages each, all
  at once.  Reported: deliveries per second of wall time, deliveries per
  server CPU-second and server CPU per delivery (CPU read from
  ``/proc/<pid>/task/*/schedstat``, nanoseconds, all threads, before and
  after).
- ``rate``: N clients in one room, R messages per second in all, evenly
  spaced, for D seconds.  ``--probes`` of the N (default 5) are latency
  probes in a process of their own (``bench/probe.py``): each message
  carries its send time (``t=<time.monotonic_ns()>``, CLOCK_MONOTONIC,
  one clock for every process of the machine) and the probes report
  receipt minus send for every message they get.  Reported: p50/p90/p99/
  max over the probes' deliveries, server CPU per delivery, deliveries
  lost.
- ``rooms``: 2,000 users in 200 rooms of 10, everyone also in
  ``#lobby``, 1,000 msg/s spread over the rooms (``rooms.py`` says how);
  reported as ``rate`` is, plus server CPU per message.

A delivery is a message line received by a client.  chatd echoes to the
sender; IRC clients ask for ``echo-message`` (``--irc-echo on``, the
default), so a message to a room of S is S deliveries on both servers
(with ``--irc-echo off``, S-1 on IRC, as the runs before the rooms shape).
The servers run alternately, each repeat on a fresh process, and the
tables show medians.  The generator's CPU over each measured window (this
process, every thread, plus the probe process) is reported as a share of
one core; the run prints "generator-bound" and exits 2 instead of
trusting its figures when that share is above 70% in any run, or when
InspIRCd's median p99 of the rate or rooms shape is above 5 ms (then the
generator, not the servers, sets the tail).  It refuses the same way when
the other processes of the machine (its busy time in ``/proc/stat`` less
the server's and the generator's) used more than ``--others-limit`` of a
core (default 30%) in any window: on a shared machine they, not the
servers, would set the figures.  Such a run is first done again, up to
``--retries`` times (default 3) after a pause, and the runs thrown away
are listed.  With matplotlib importable,
the latency CDF of every server and shape is written to
``bench/fanout-cdf.png``.  Loopback only; every wait is bounded; only the
processes started here are stopped, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (LOBBY, SERVERS, Priority, WAIT, Chatd, ChatdBase, ChatdCluster, Counter, Server, connect_all,
                    connect_in_order, cpu_seconds, dialect_of, generator_cpu, latency_figures, machine_busy, niced,
                    probe_report, raise_open_files, start_probes, stop_probes)
from rooms import Layout, probe_plan, rooms_shape

GENERATOR_LIMIT = 0.70  # of one core, over the measured window
INSPIRCD_P99_LIMIT_MS = 5.0  # above this on this machine, the generator sets the tail
DEFAULT_MAX_ROOMS_PER_USER = 50  # chatd's default --max-rooms-per-user (PROTOCOL.md §6.7)


def expected_per_client(echo: bool, index: int, senders: int, per_sender: int) -> int:
    """Messages client ``index`` will receive (senders are clients 0..senders-1)."""
    total = senders * per_sender
    if not echo and index < senders:
        return total - per_sender
    return total


async def burst(server: Server, clients_n: int, senders: int, messages: int, irc_echo: bool) -> dict[str, Any]:
    """The burst shape (see the module docstring)."""
    dialect = dialect_of(server, irc_echo)
    clients = await connect_all(server.ports, dialect, list(range(clients_n)))
    await asyncio.sleep(0.5)  # let the joins settle
    payloads = [b"".join(dialect.message(f"burst {s}.{n} " + "x" * 40, LOBBY) for n in range(messages))
                for s in range(senders)]
    counter = Counter()
    for c in clients:
        c.link.count(expected_per_client(dialect.echo, c.index, senders, messages), counter)
    cpu_before, mine_before, busy_before, started = server.cpu(), generator_cpu(), machine_busy(), time.perf_counter()
    for sender, payload in zip(clients[:senders], payloads):
        sender.link.write(payload)
    await counter.run(WAIT)
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu_before
    others = machine_busy() - busy_before - cpu
    mine = generator_cpu() - mine_before
    delivered = sum(c.link.received for c in clients)
    expected = sum(c.link.expected for c in clients)
    for c in clients:
        c.link.close()
    return {"deliveries": delivered, "lost": expected - delivered, "wall": elapsed, "cpu": cpu,
            "per_cpu_s": delivered / cpu if cpu else 0.0, "per_s": delivered / elapsed,
            "us_per_delivery": 1e6 * cpu / delivered if delivered else float("nan"),
            "generator_cpu": mine, "generator_share": mine / elapsed,
            "others_share": (others - mine) / elapsed}


def rate_order(clients_n: int, probes_n: int) -> list[int]:
    """The rate shape's join order: the bulk clients 0..N-P-1, with probe j (client N-P+j)
    after (j + 1/2) / P of them, spread over the room's join order (which may be its fan-out order)."""
    bulk = list(range(clients_n - probes_n))
    order: list[int] = []
    for j in range(probes_n):
        upto = (2 * j + 1) * len(bulk) // (2 * probes_n)
        order.extend(bulk[len(order) - j : upto])
        order.append(clients_n - probes_n + j)
    order.extend(bulk[len(order) - probes_n :])
    return order


async def rate(server: Server, clients_n: int, senders: int, per_second: float, seconds: float, irc_echo: bool,
               probe: subprocess.Popen[bytes] | None, probes_n: int) -> dict[str, Any]:
    """The rate shape (see the module docstring)."""
    dialect = dialect_of(server, irc_echo)
    probe_indices = set(range(clients_n - probes_n, clients_n)) if probe is not None else set()
    order = rate_order(clients_n, probes_n if probe is not None else 0)
    clients = await connect_in_order(server, dialect, order, probe, probe_indices)
    await asyncio.sleep(0.5)
    total = int(per_second * seconds)
    per_sender = total // senders
    total = per_sender * senders
    counter = Counter(tick=0.02)  # a few messages per read: kernel buffers hold far more than 20 ms of them
    for c in clients:
        c.link.count(expected_per_client(dialect.echo, c.index, senders, per_sender), counter)
    by_index = {c.index: c for c in clients}
    counting = asyncio.ensure_future(counter.run(seconds + 10))
    cpu_before, mine_before, busy_before, started = server.cpu(), generator_cpu(), machine_busy(), time.perf_counter()
    probe_before = cpu_seconds(probe.pid) if probe is not None else 0.0
    interval = 1.0 / per_second
    for n in range(total):
        due = started + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        by_index[n % senders].link.write(dialect.message(f"t={time.monotonic_ns()} n={n}", LOBBY))
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
    expected = sum(c.link.expected for c in clients) + len(probe_indices) * total
    delivered = sum(c.link.received for c in clients) + int(report["received"])
    for c in clients:
        c.link.close()
    return {**latency_figures(latencies), "lost": expected - delivered, "deliveries": delivered, "messages": total,
            "cpu": cpu, "us_per_delivery": 1e6 * cpu / delivered if delivered else float("nan"),
            "us_per_message": 1e6 * cpu / total if total else float("nan"),
            "generator_cpu": mine, "probe_cpu": probe_cpu, "generator_share": mine / elapsed,
            "others_share": (others - mine) / elapsed, "latencies_ns": latencies}


# -- driver ----------------------------------------------------------------


def layout_of(args: argparse.Namespace) -> Layout:
    """The rooms shape's layout from the command line."""
    return Layout(args.room_users, args.rooms, args.room_size)


def run_one(kind: str, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``shape`` on a fresh ``kind`` server."""
    echo = args.irc_echo == "on"
    with tempfile.TemporaryDirectory() as workdir:
        server = SERVERS[kind](workdir)
        server.start()
        probe: subprocess.Popen[bytes] | None = None
        try:
            if shape == "burst":
                return niced(args.nice, lambda: asyncio.run(burst(server, args.clients, args.senders, args.messages, echo)))
            if shape == "rooms":
                layout = layout_of(args)
                users = layout.probes(args.room_probes)
                if users:
                    plan = probe_plan(layout, users, args.room_rate, args.room_seconds, args.lobby_share, echo,
                                      args.seed, server.protocol)
                    probe = start_probes(server, echo, plan, args.room_seconds)
                return niced(args.nice, lambda: asyncio.run(rooms_shape(
                    server, layout, args.room_rate, args.room_seconds, args.lobby_share, echo, args.seed, probe, users)))
            probes = min(args.probes, args.rate_clients - args.rate_senders)
            total = int(args.rate * args.seconds) // args.rate_senders * args.rate_senders
            if probes > 0:
                plan = [{"index": index, "rooms": [LOBBY], "expected": total}
                        for index in range(args.rate_clients - probes, args.rate_clients)]
                probe = start_probes(server, echo, plan, args.seconds)
            return niced(args.nice, lambda: asyncio.run(
                rate(server, args.rate_clients, args.rate_senders, args.rate, args.seconds, echo, probe, probes)))
        finally:
            stop_probes(probe)
            if Chatd.profile:  # the profile then holds the whole of what the clients' leaving costs, every run alike
                server.wait_idle(2 * WAIT)
            server.stop()


def run_busy_aware(kind: str, shape: str, args: argparse.Namespace, repeat: int, discarded: list[str]) -> dict[str, Any]:
    """``run_one``, done again (at most ``--retries`` times, after ``--retry-pause`` seconds) while
    other processes of the machine used more than ``--others-limit`` of a core in its window;
    each run thrown away is described in ``discarded``.  The last one is kept either way (and
    ``generator_bound`` refuses it if it was busy)."""
    for attempt in range(args.retries + 1):
        run = run_one(kind, shape, args)
        print(f"{kind} {shape} repeat {repeat} attempt {attempt + 1}: p50 {run.get('p50_ms', float('nan')):.2f} ms, "
              f"p99 {run.get('p99_ms', float('nan')):.2f} ms, {run['us_per_delivery']:.2f} us/delivery, "
              f"generator {100 * run['generator_share']:.0f}%, others {100 * run['others_share']:.0f}% of a core",
              file=sys.stderr, flush=True)  # progress: the tables come at the end
        if run["others_share"] <= args.others_limit or attempt == args.retries:
            return run
        discarded.append(f"{kind} {shape} repeat {repeat}: others {100 * run['others_share']:.0f}% of a core; "
                         f"p50 {run.get('p50_ms', float('nan')):.2f} ms, p99 {run.get('p99_ms', float('nan')):.2f} ms, "
                         f"{run['us_per_delivery']:.2f} us/delivery")
        time.sleep(args.retry_pause)
    raise AssertionError("unreachable")


LATENCY_SHAPES = ("rate", "rooms")


def generator_bound(results: dict[tuple[str, str], list[dict[str, Any]]], others_limit: float) -> list[str]:
    """Why the figures measure the generator (or the other processes of the machine) rather than
    the servers (empty: they do not)."""
    reasons = []
    for (kind, shape), runs in results.items():
        for number, run in enumerate(runs, 1):
            if run["generator_share"] > GENERATOR_LIMIT:
                reasons.append(f"{kind} {shape} run {number}: generator CPU {100 * run['generator_share']:.0f}% "
                               f"of a core (limit {100 * GENERATOR_LIMIT:.0f}%)")
            if run["others_share"] > others_limit:
                reasons.append(f"{kind} {shape} run {number}: the machine was busy: other processes used "
                               f"{100 * run['others_share']:.0f}% of a core (limit {100 * others_limit:.0f}%)")
    for shape in LATENCY_SHAPES:
        if ("inspircd", shape) in results:
            p99 = statistics.median(run["p99_ms"] for run in results[("inspircd", shape)])
            if not p99 <= INSPIRCD_P99_LIMIT_MS:
                reasons.append(f"InspIRCd {shape} p99 {p99:.2f} ms (limit {INSPIRCD_P99_LIMIT_MS:g} ms)")
    return reasons


def plot_cdf(results: dict[tuple[str, str], list[dict[str, Any]]], servers: list[str]) -> str | None:
    """Write the latency CDF of every server and shape beside RESULTS.md, if matplotlib is importable."""
    try:  # imported by name: optional, and without type stubs
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for shape in LATENCY_SHAPES:
        for kind in servers:
            latencies = sorted(x / 1e6 for run in results.get((kind, shape), []) for x in run["latencies_ns"])
            if latencies:
                axes.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], label=f"{kind} {shape}")
    axes.set_xscale("log")
    axes.set_xlabel("latency, send to receipt (ms, log)")
    axes.set_ylabel("fraction of probe deliveries")
    axes.set_title("fanout.py: latency CDF (all repeats)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fanout-cdf.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def main() -> None:
    """Run the servers and shapes asked for, alternating, and print the tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servers", default="inspircd,chatd")
    parser.add_argument("--shapes", default="burst,rate", help="burst, rate, rooms (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate-clients", type=int, default=200)
    parser.add_argument("--rate-senders", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--probes", type=int, default=5, help="rate: latency probe clients, in a process of their own")
    parser.add_argument("--room-users", type=int, default=2000, help="rooms: users, every one in #lobby")
    parser.add_argument("--rooms", type=int, default=200, help="rooms: rooms besides #lobby")
    parser.add_argument("--room-size", type=int, default=10, help="rooms: members per room")
    parser.add_argument("--room-rate", type=float, default=1000.0, help="rooms: messages per second in all")
    parser.add_argument("--room-seconds", type=float, default=10.0)
    parser.add_argument("--room-probes", type=int, default=40, help="rooms: latency probe users, one per room")
    parser.add_argument("--lobby-share", type=float, default=0.0, help="rooms: share of the messages sent to #lobby")
    parser.add_argument("--seed", type=int, default=1, help="rooms: seed of the schedule (same for every server)")
    parser.add_argument("--irc-echo", choices=("on", "off"), default="on",
                        help="IRC clients ask for echo-message (a sender gets its own message, as on chatd)")
    parser.add_argument("--others-limit", type=float, default=0.30,
                        help="refuse when other processes used more than this share of a core in a window")
    parser.add_argument("--retries", type=int, default=3,
                        help="times a run is done again when the machine was busy in its window")
    parser.add_argument("--retry-pause", type=float, default=15.0, help="seconds to wait before such a retry")
    parser.add_argument("--server-nice", type=int, default=0,
                        help="nice of the servers and the probe process (negative: ahead of other work on a shared machine)")
    parser.add_argument("--nice", type=int, default=10, help="nice of the bulk generator thread (servers and probes: 0)")
    parser.add_argument("--cluster-nodes", type=int, default=2, help="nodes of the chatd-cluster server")
    parser.add_argument("--base-checkout", help="a chatd checkout to run as server chatd-base (before/after in one run)")
    parser.add_argument("--chatd-checkout", help="run server chatd from this tree (e.g. git archive of a commit) "
                        "instead of this environment's, which may change while the benchmark runs")
    parser.add_argument("--profile", help="write chatd's cProfile stats here (one run; prints the top functions)")
    args = parser.parse_args()
    if args.server_nice and os.environ.get("FANOUT_OWN_SESSION") != "1":
        # The generator too gets a session (an autogroup) of its own, at half the servers' priority:
        # ahead of other work on the machine (so a message is written as soon as it is stamped),
        # behind the servers.  Run again as that child; its exit status is ours.
        child = subprocess.run([sys.executable, *sys.argv], env=dict(os.environ, FANOUT_OWN_SESSION="1"),
                               **Priority.popen_options(args.server_nice // 2))
        sys.exit(child.returncode)
    if args.profile:
        Chatd.profile = os.path.abspath(args.profile)
        Chatd.stop_wait = 120.0  # writing the profile of a long run takes a while
    ChatdCluster.nodes = args.cluster_nodes
    if args.base_checkout:
        ChatdBase.checkout = os.path.abspath(args.base_checkout)
    Priority.nice = args.server_nice
    if args.chatd_checkout:
        Chatd.checkout = os.path.abspath(args.chatd_checkout)
    servers = args.servers.split(",")
    shapes = args.shapes.split(",")
    if "rooms" in shapes:
        layout = layout_of(args)
        if layout.rooms_per_user() > DEFAULT_MAX_ROOMS_PER_USER:
            Chatd.extra = [*Chatd.extra, "--max-rooms-per-user", str(layout.rooms_per_user())]
    args.load_start = f"{os.getloadavg()[0]:.2f}"
    raise_open_files()  # thousands of sockets here, and in the servers (children inherit the limit)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    discarded: list[str] = []
    for repeat in range(1, args.repeats + 1):
        for shape in shapes:
            for kind in servers:  # alternate, so drift on a noisy machine hits both
                results.setdefault((kind, shape), []).append(run_busy_aware(kind, shape, args, repeat, discarded))
    report(args, servers, shapes, results)
    if discarded:
        print(f"\nruns done again because the machine was busy (other processes over "
              f"{100 * args.others_limit:.0f}% of a core in the window):")
        for line in discarded:
            print(f"- {line}")
    reasons = generator_bound(results, args.others_limit)
    if reasons:
        print("\ngenerator-bound: these figures measure the load generator or the machine, not the servers:")
        for reason in reasons:
            print(f"- {reason}")
        sys.exit(2)


def report(args: argparse.Namespace, servers: list[str], shapes: list[str],
           results: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """Print the tables (medians of the repeats, each run listed) and the ratios."""

    def median(kind: str, shape: str, key: str) -> float:
        return float(statistics.median(run[key] for run in results[(kind, shape)]))

    print(f"machine: {os.cpu_count()} CPUs; repeats={args.repeats}; medians of the repeats; "
          f"generator CPU = bulk generator (nice {args.nice}) + probe process, over the measured window; "
          f"servers and probes at nice {args.server_nice}, the generator's session at {args.server_nice // 2}; "
          f"IRC echo-message {args.irc_echo}; others = CPU of every other process of the machine over the window "
          f"(/proc/stat); load average at the start {args.load_start}, at the end {os.getloadavg()[0]:.2f}")
    if "burst" in shapes:
        print(f"\nburst: {args.clients} clients, {args.senders} senders x {args.messages} messages")
        print("| server | deliveries | lost | wall s | server CPU s | deliveries/s | deliveries/CPU-s "
              "| server CPU us/delivery | generator CPU s | generator % of a core | others % of a core |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for kind in servers:
            print(f"| {kind} | {median(kind, 'burst', 'deliveries'):.0f} | {median(kind, 'burst', 'lost'):.0f} | "
                  f"{median(kind, 'burst', 'wall'):.3f} | {median(kind, 'burst', 'cpu'):.3f} | "
                  f"{median(kind, 'burst', 'per_s'):.0f} | {median(kind, 'burst', 'per_cpu_s'):.0f} | "
                  f"{median(kind, 'burst', 'us_per_delivery'):.2f} | {median(kind, 'burst', 'generator_cpu'):.2f} | "
                  f"{100 * median(kind, 'burst', 'generator_share'):.0f} | {100 * median(kind, 'burst', 'others_share'):.0f} |")
            runs = ", ".join(f"{run['per_cpu_s']:.0f}" for run in results[(kind, "burst")])
            print(f"|  ({kind} runs, deliveries/CPU-s) | {runs} |")
    titles = {
        "rate": f"rate (one room): {args.rate_clients} clients ({args.probes} of them latency probes in their own "
                f"process), {args.rate:g} msg/s for {args.seconds:g} s from {args.rate_senders} senders",
        "rooms": f"rooms: {args.room_users} users in {args.rooms} rooms of {args.room_size}, all in #lobby; "
                 f"{args.room_rate:g} msg/s for {args.room_seconds:g} s to random rooms from random members "
                 f"({100 * args.lobby_share:g}% to #lobby), {args.room_probes} probe users (one per room) in their own process",
    }
    for shape in LATENCY_SHAPES:
        if shape not in shapes:
            continue
        print(f"\n{titles[shape]}")
        print("| server | p50 ms | p90 ms | p99 ms | max ms | samples | lost | server CPU s | server CPU us/delivery "
              "| server CPU us/message | generator CPU s (probes) | generator % of a core | others % of a core |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for kind in servers:
            print(f"| {kind} | {median(kind, shape, 'p50_ms'):.2f} | {median(kind, shape, 'p90_ms'):.2f} | "
                  f"{median(kind, shape, 'p99_ms'):.2f} | {median(kind, shape, 'max_ms'):.2f} | "
                  f"{median(kind, shape, 'samples'):.0f} | {median(kind, shape, 'lost'):.0f} | "
                  f"{median(kind, shape, 'cpu'):.3f} | {median(kind, shape, 'us_per_delivery'):.2f} | "
                  f"{median(kind, shape, 'us_per_message'):.1f} | "
                  f"{median(kind, shape, 'generator_cpu'):.2f} ({median(kind, shape, 'probe_cpu'):.2f}) | "
                  f"{100 * median(kind, shape, 'generator_share'):.0f} | {100 * median(kind, shape, 'others_share'):.0f} |")
            for key, label in (("p99_ms", "p99 ms"), ("us_per_delivery", "us/delivery")):
                runs = ", ".join(f"{run[key]:.2f}" for run in results[(kind, shape)])
                print(f"|  ({kind} runs, {label}) | {runs} |")
            if shape == "rooms":
                runs = ", ".join(f"{run['set_up_s']:.1f} s / {run['set_up_lines']}" for run in results[(kind, shape)])
                print(f"|  ({kind} runs, set-up time / set-up lines thrown away) | {runs} |")
    if any(shape in shapes for shape in LATENCY_SHAPES):
        plot = plot_cdf(results, servers)
        if plot:
            print(f"\nlatency CDF: {plot}")
    if args.profile:
        import pstats

        print(f"\nchatd profile ({args.profile}), top functions by own time:")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)
    latency_keys = (("p50_ms", "<= 1x"), ("p99_ms", "<= 1x"), ("us_per_delivery", "<= 1.5x"))
    if set(servers) >= {"chatd", "chatd-base"}:
        print("\nratios (chatd / chatd-base):")
        if "burst" in shapes:
            ratio = median("chatd", "burst", "per_cpu_s") / median("chatd-base", "burst", "per_cpu_s")
            print(f"- deliveries per server CPU-second: {ratio:.2f}x")
        for shape in (s for s in LATENCY_SHAPES if s in shapes):
            for key, _ in latency_keys:
                print(f"- {shape} {key}: {median('chatd', shape, key) / median('chatd-base', shape, key):.2f}x")
    if set(servers) >= {"chatd", "inspircd"}:
        print("\nratios (chatd / InspIRCd):")
        if "burst" in shapes:
            ratio = median("chatd", "burst", "per_cpu_s") / median("inspircd", "burst", "per_cpu_s")
            print(f"- deliveries per server CPU-second: {ratio:.2f}x (goal: >= 2x)")
        for shape in (s for s in LATENCY_SHAPES if s in shapes):
            for key, goal in latency_keys:
                goal_text = f" (issue 18's goal for one room: {goal})" if shape == "rate" else ""
                print(f"- {shape} {key}: {median('chatd', shape, key) / median('inspircd', shape, key):.2f}x{goal_text}")
    if {"rate", "rooms"} <= set(shapes):
        print("\nratios (rooms shape / one-room rate shape, same server):")
        for kind in servers:
            figures = ", ".join(f"{key} {median(kind, 'rooms', key) / median(kind, 'rate', key):.2f}x"
                                for key in ("p50_ms", "p99_ms", "us_per_delivery"))
            print(f"- {kind}: {figures}")


if __name__ == "__main__":
    main()

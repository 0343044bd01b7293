"""Tests of bench/fanout.py's peer servers: ergo's generated config, chatd's IRC front-end as
a server kind (a real chatd, spoken to with the benchmark's IRC dialect), the set-up settle of
the rooms shape, and the latency CDF plot (optional matplotlib)."""

from __future__ import annotations

import asyncio
import importlib
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from typing import Any
from unittest import mock

from twisted.trial import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import common  # noqa: E402  (bench/ is not a package: its scripts import each other by name)
import ergo  # noqa: E402
import fanout  # noqa: E402



def assert_both_got_the_message(case: unittest.TestCase, port: int) -> None:
    """The IRC dialect's conversation on ``port``: both members got u0's message."""
    got = asyncio.run(asyncio.wait_for(converse(port), 30))
    case.assertEqual(len(got), 2)
    for line in got:
        case.assertTrue(line.startswith(b":u0!"), line)
        case.assertIn(b"PRIVMSG #r1 :t=1 n=0 hello", line)

class StreamLink:
    """An asyncio stream pair as the dialects' ``Link`` (as bench/probe.py has one)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def readline(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 10)

    def write(self, data: bytes) -> None:
        self.writer.write(data)


async def converse(port: int) -> list[bytes]:
    """Two IRC users of the benchmark's dialect (echo-message on) join ``#lobby`` and a room;
    u0 sends to the room; return the PRIVMSG lines each of them got."""
    dialect = common.IrcDialect(echo=True)
    links = []
    for index in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        link = StreamLink(reader, writer)
        await dialect.login(link, index)  # raises unless 001 came and echo-message was granted
        await dialect.join(link, [common.LOBBY, "#r1"])  # raises unless a 366 came per channel
        links.append(link)
    links[0].write(dialect.message("t=1 n=0 hello", "#r1"))
    got = []
    for link in links:
        while True:
            line = await link.readline()
            if b" PRIVMSG " in line:
                got.append(line)
                break
    for link in links:
        link.writer.close()
    return got


class ErgoConfigTests(unittest.TestCase):
    """The config written for ergo, and its server kind."""

    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.workdir)

    def test_registered_kind(self) -> None:
        self.assertIs(common.SERVERS["ergo"], ergo.Ergo)
        self.assertEqual(ergo.Ergo.protocol, "irc")

    def test_config_is_loopback_plain_and_unthrottled(self) -> None:
        server = ergo.Ergo(self.workdir)
        text = server.config()
        self.assertIn(f'"127.0.0.1:{server.port}": {{}}', text)
        self.assertNotIn("tls", text)
        self.assertNotIn("websocket", text)
        self.assertIn(f'path: "{self.workdir}/ircd.db"', text)
        for block in ("fakelag:\n    enabled: false", "count: false", "throttle: false",
                      "login-throttling:\n        enabled: false", "history:\n    enabled: true"):
            self.assertIn(block, text)

    def test_command_writes_the_config(self) -> None:
        binary = os.path.join(self.workdir, "ergo")
        with open(binary, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(binary, 0o755)
        server = ergo.Ergo(self.workdir)
        server.binary = binary
        command = server.command()
        self.assertEqual(command[:3], [binary, "run", "--conf"])
        with open(command[3]) as written:
            self.assertEqual(written.read(), server.config())

    def test_missing_binary_is_a_clear_error(self) -> None:
        server = ergo.Ergo(self.workdir)
        server.binary = os.path.join(self.workdir, "absent")
        error = self.assertRaises(RuntimeError, server.command)
        self.assertIn("build-ergo", str(error))

    def test_real_ergo_login_join_echo(self) -> None:
        """With an ergo binary at hand: the dialect logs in (echo-message granted), joins, and
        a message reaches both members, the sender's own copy included."""
        if not os.access(ergo.Ergo.binary, os.X_OK):
            raise unittest.SkipTest(f"no ergo binary at {ergo.Ergo.binary}")
        server = ergo.Ergo(self.workdir)
        server.start()
        self.addCleanup(server.stop)
        assert_both_got_the_message(self, server.port)


class ChatdIrcTests(unittest.TestCase):
    """The chatd-irc kind: chatd's options plus its IRC front-end, clients on the IRC port."""

    def setUp(self) -> None:
        self.workdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.workdir)

    def test_command(self) -> None:
        server = common.ChatdIrc(self.workdir)
        command = server.command()
        chatd = common.Chatd(self.workdir).command()
        self.assertEqual(command[: command.index("--listen")], chatd[: chatd.index("--listen")])
        self.assertIn("--history-on-login", command)
        at = command.index("--irc")
        self.assertEqual(command[at + 1], f"tcp:{server.irc_port}:interface=127.0.0.1")
        self.assertEqual(command[command.index("--irc-autojoin") + 1], "")
        self.assertEqual(server.ports, [server.irc_port])
        self.assertNotEqual(server.irc_port, server.port)
        self.assertIs(common.SERVERS["chatd-irc"], common.ChatdIrc)
        self.assertEqual(common.ChatdIrc.protocol, "irc")

    def test_real_chatd_login_join_echo(self) -> None:
        """A real chatd: the benchmark's IRC dialect logs in, joins (no autojoin: the JOIN does
        it) and a message reaches both members, the sender's own copy included."""
        server = common.ChatdIrc(self.workdir)
        server.start()
        self.addCleanup(server.stop)
        assert_both_got_the_message(self, server.irc_port)


class SettleTests(unittest.TestCase):
    """``Counter.settle``: the rooms shape's end of the set-up."""

    def settle(self, quiet: float, server_cpu: Any, pending: bytes) -> tuple[int, float]:
        here, there = socket.socketpair()
        self.addCleanup(here.close)
        self.addCleanup(there.close)
        there.sendall(pending)
        here.setblocking(False)  # as the bulk receivers' sockets

        async def run() -> int:
            counter = common.Counter(tick=0.001)
            counter.poll.register(here.fileno(), select.EPOLLIN)  # as Counter.add does
            try:
                return await counter.settle(quiet, 10, server_cpu)
            finally:
                counter.poll.close()

        started = time.monotonic()
        lines = asyncio.run(run())
        return lines, time.monotonic() - started

    def test_pending_data_is_read_before_quiet_is_judged(self) -> None:
        lines, _ = self.settle(0.0, None, b"JOIN a\r\nJOIN b\r\n")
        self.assertEqual(lines, 2)

    def test_a_busy_server_is_not_settled(self) -> None:
        """Quiet sockets while the server's CPU keeps growing: not over until it stops."""
        readings = iter([0.0, 1.0, 2.0, 3.0])

        def cpu() -> float:
            return next(readings, 3.0)

        lines, elapsed = self.settle(0.05, cpu, b"")
        self.assertEqual(lines, 0)
        self.assertGreaterEqual(elapsed, 4 * 0.05)  # three busy periods, then a quiet one

    def test_an_idle_server_settles(self) -> None:
        lines, elapsed = self.settle(0.05, lambda: 0.0, b"x\n")
        self.assertEqual(lines, 1)
        self.assertLess(elapsed, 5.0)


class CdfTests(unittest.TestCase):
    """The latency CDF plot."""

    results = {("inspircd", "rate"): [{"latencies_ns": [3_000_000, 1_000_000]}, {"latencies_ns": [2_000_000]}],
               ("ergo", "rate"): [{"latencies_ns": [1_500_000]}],
               ("chatd", "rooms"): [{"latencies_ns": [4_000_000, 5_000_000]}]}

    def test_points(self) -> None:
        xs, ys = fanout.cdf_points([3_000_000, 1_000_000, 2_000_000, 4_000_000])
        self.assertEqual(xs, [1.0, 2.0, 3.0, 4.0])
        self.assertEqual(ys, [0.25, 0.5, 0.75, 1.0])

    def test_without_matplotlib_nothing_is_written(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "cdf.png")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        real = importlib.import_module

        def without(name: str, package: str | None = None) -> Any:
            if name.startswith("matplotlib"):
                raise ImportError(name)
            return real(name, package)

        with mock.patch.object(fanout.importlib, "import_module", without):
            self.assertIsNone(fanout.plot_cdf(self.results, ["inspircd", "ergo", "chatd"], path))
        self.assertFalse(os.path.exists(path))

    def test_no_latency_shape_no_plot(self) -> None:
        path = os.path.join(tempfile.mkdtemp(), "cdf.png")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        self.assertIsNone(fanout.plot_cdf({("chatd", "burst"): [{}]}, ["chatd"], path))
        self.assertFalse(os.path.exists(path))

    def test_with_matplotlib_a_png_is_written(self) -> None:
        if importlib.util.find_spec("matplotlib") is None:
            raise unittest.SkipTest("matplotlib is not installed (bench/requirements.txt)")
        path = os.path.join(tempfile.mkdtemp(), "cdf.png")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        self.assertEqual(fanout.plot_cdf(self.results, ["inspircd", "ergo", "chatd"], path), path)
        with open(path, "rb") as written:
            self.assertEqual(written.read(8), b"\x89PNG\r\n\x1a\n")

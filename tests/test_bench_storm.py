"""Unit tests of bench/storm.py's helpers: what a storm client looks for in the server's
output (chatd's JSON lines, IRC lines), and how a run's figures and refusals are made.
No server and no socket: bytes in, state out."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.trial import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import storm  # noqa: E402  (bench/ is not a package: its scripts import each other by name)


def chatd_history(count: int, protocol: int) -> bytes:
    """A chatd login history line of ``count`` messages, as protocol ``protocol`` sends it."""
    one = '{"timestamp": "t", "sender": "seeder", "response": "message", "content": "seed", "id": 1}'
    items = [one if protocol == 2 else '"' + one.replace('"', '\\"') + '"' for _ in range(count)]
    return ('{"timestamp": "t", "sender": "server", "response": "history", "content": [' + ", ".join(items) + "]}\n").encode()


LOGIN = b'{"timestamp": "t", "sender": "server", "response": "info", "content": "Login successful. You are now logged in as u1"}\n'


class ChatdProgressTests(unittest.TestCase):
    """The login answer, then a history line that must hold H messages."""

    def test_login_then_history_in_pieces(self) -> None:
        """Lines split across reads are taken whole; the times are those of the reads that completed them."""
        progress = storm.ChatdProgress(3, 2)
        data = LOGIN + chatd_history(3, 2)
        self.assertEqual(progress.feed(data[:30], 10), b"")
        self.assertEqual(progress.login_ns, 0)
        progress.feed(data[30 : len(LOGIN) + 5], 20)
        self.assertEqual((progress.login_ns, progress.served_ns), (20, 0))
        progress.feed(data[len(LOGIN) + 5 :], 30)
        self.assertEqual((progress.served_ns, progress.seen, progress.error), (30, 3, ""))
        self.assertTrue(progress.done)

    def test_v1_history_strings_counted(self) -> None:
        """A v1 history is a list of JSON strings: its messages are counted too."""
        progress = storm.ChatdProgress(5, 1)
        progress.feed(LOGIN + chatd_history(5, 1), 7)
        self.assertEqual((progress.login_ns, progress.served_ns, progress.seen), (7, 7, 5))

    def test_short_history_is_an_error(self) -> None:
        """Fewer messages than H: failed, not served."""
        progress = storm.ChatdProgress(100, 2)
        progress.feed(LOGIN + chatd_history(40, 2), 7)
        self.assertEqual(progress.served_ns, 0)
        self.assertIn("40 messages", progress.error)
        self.assertTrue(progress.done)

    def test_error_answer(self) -> None:
        """An error response (e.g. name_taken) fails the client with that line."""
        progress = storm.ChatdProgress(100, 2)
        progress.feed(b'{"response": "error", "code": "server_busy", "content": "busy"}\n', 7)
        self.assertIn("server_busy", progress.error)
        self.assertEqual(progress.login_ns, 0)


class IrcProgressTests(unittest.TestCase):
    """001, then the follow-up is sent, then H PRIVMSG lines to #lobby."""

    def test_welcome_then_history(self) -> None:
        """001 answers with the join; JOIN/NAMES/NOTICE lines are not history; PRIVMSGs are counted."""
        progress = storm.IrcProgress(2, b"JOIN #lobby\r\n")
        self.assertEqual(progress.feed(b":s 001 u1 :Welcome\r\n:s 422 u1 :MOTD File is missing\r\n", 5), b"JOIN #lobby\r\n")
        self.assertEqual((progress.login_ns, progress.error), (5, ""))
        progress.feed(b":u1!u@h JOIN :#lobby\r\n:s 353 u1 = #lobby :@seeder u1\r\n:s NOTICE #lobby :Replaying\r\n", 6)
        progress.feed(b"@time=x :seeder!s@h PRIVMSG #lobby :seed 1\r\n:seeder!s@h PRIVMSG #lob", 7)
        self.assertEqual((progress.seen, progress.served_ns), (1, 0))
        progress.feed(b"by :seed 2\r\n", 8)
        self.assertEqual((progress.seen, progress.served_ns), (2, 8))

    def test_ping_answered(self) -> None:
        """A PING is answered with its PONG."""
        progress = storm.IrcProgress(1, b"JOIN #lobby\r\n")
        self.assertEqual(progress.feed(b"PING :abc\r\n", 1), b"PONG :abc\r\n")

    def test_refusals(self) -> None:
        """ERROR, FAIL and refusing numerics fail the client; 422 (no MOTD) does not."""
        for line in (b"ERROR :Closing link\r\n", b":s 433 * u1 :Nickname is already in use\r\n",
                     b"FAIL CHATHISTORY INVALID_PARAMS :no\r\n", b":s 421 u1 CHATHISTORY :Unknown command\r\n"):
            progress = storm.IrcProgress(1, b"")
            progress.feed(line, 1)
            self.assertTrue(progress.error, line)
        progress = storm.IrcProgress(1, b"")
        progress.feed(b":s 422 u1 :MOTD File is missing\r\n", 1)
        self.assertEqual(progress.error, "")


class DialogueTests(unittest.TestCase):
    """What each kind of storm client sends first."""

    def test_greetings(self) -> None:
        """chatd v2: hello then login; IRC: NICK/USER, with CAP for ergo's CHATHISTORY."""
        self.assertEqual(storm.dialogue("json", 100, 2).greeting(7),
                         b'{"request": "hello", "content": {"protocol": 2, "client": "storm"}}\n'
                         b'{"request": "login", "content": "u7"}\n')
        self.assertEqual(storm.dialogue("json", 100, 1).greeting(7), b'{"request": "login", "content": "u7"}\n')
        self.assertEqual(storm.dialogue("irc", 100).greeting(3), b"NICK u3\r\nUSER u3 0 * :storm\r\n")
        ergo = storm.dialogue("irc", 50, chathistory=True)
        self.assertTrue(ergo.greeting(3).startswith(b"CAP REQ :batch server-time draft/chathistory\r\n"))
        progress = ergo.progress()
        self.assertEqual(progress.feed(b":s 001 u3 :hi\r\n", 1), b"JOIN #lobby\r\nCHATHISTORY LATEST #lobby * 50\r\n")


class FiguresTests(unittest.TestCase):
    """A run's figures from the generators' outcomes, and the refusals."""

    def test_summarise(self) -> None:
        """Latencies merge over generators; all-served spans go to the last served; failures counted."""
        a = storm.StormOutcome(login_ns=[1_000_000, 2_000_000], served_ns=[3_000_000, 4_000_000], go_ns=100,
                               end_ns=100 + 10_000_000, last_ns=100 + 5_000_000, cpu_s=0.001)
        b = storm.StormOutcome(login_ns=[0], served_ns=[0], errors=["u2: closed"], go_ns=200,
                               end_ns=200 + 10_000_000, last_ns=0, cpu_s=0.002)
        run = storm.summarise([a, b], elapsed=0.01, cpu=0.005, busy=0.009, rss_now=2048, rss_peak=4096)
        self.assertEqual((run["clients"], run["served"], run["failed"]), (3, 2, 1))
        self.assertNotEqual(run["all_served_s"], run["all_served_s"])  # NaN: not every client was served
        self.assertEqual(run["login_max_ms"], 2.0)
        self.assertEqual(run["served_p50_ms"], 4.0)
        self.assertAlmostEqual(run["generator_share"], 0.003 / ((200 + 10_000_000 - 100) / 1e9))  # first go to last end
        self.assertAlmostEqual(run["others_share"], (0.009 - 0.005 - 0.003) / 0.01)
        self.assertEqual((run["rss_peak_mib"], run["errors"]), (4.0, ["u2: closed"]))
        whole = storm.summarise([a], elapsed=0.01, cpu=0.005, busy=0.0, rss_now=0, rss_peak=0)
        self.assertAlmostEqual(whole["all_served_s"], 0.005)
        self.assertEqual(whole["others_share"], 0.0)

    def test_refusals(self) -> None:
        """Over either limit in any run: a reason naming the server and run."""
        ok: dict[str, Any] = {"generator_share": 0.5, "others_share": 0.1}
        self.assertEqual(storm.refusals({"chatd": [ok]}, 0.7, 0.3), [])
        reasons = storm.refusals({"chatd": [ok, {"generator_share": 0.9, "others_share": 0.4}]}, 0.7, 0.3)
        self.assertEqual(len(reasons), 2)
        self.assertTrue(all(reason.startswith("chatd run 2") for reason in reasons))

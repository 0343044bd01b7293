"""An IRC NOTICE reaches JSON users as a ``message`` with ``"notice":
true``, is stored so, and comes back over CHATHISTORY as a NOTICE
(PROTOCOL.md section 7.1), in memory."""

from __future__ import annotations

from tests.test_irc import IRCTestCase
from tests.test_irc_support import json_client


class NoticeTests(IRCTestCase):
    config = {"autojoin": ()}

    def test_a_notice_to_a_room_and_to_a_name(self) -> None:
        alice = self.client("alice", "draft/chathistory batch message-tags")
        alice.send("JOIN #r")
        carol = json_client(self.chat_factory, "carol")
        carol.send("join", "#r")
        carol.received()
        alice.lines()
        alice.send("NOTICE #r :heads up", "PRIVMSG #r :plain", "NOTICE carol :just you")
        got = [r for r in carol.received() if r["response"] == "message"]
        self.assertEqual([(r["content"], r.get("notice")) for r in got], [("heads up", True), ("plain", None), ("just you", True)])
        self.assertEqual(got[0]["room"], "#r")
        # JSON history shows it too.
        carol.send("history", {"room": "#r"})
        (history,) = [r for r in carol.received() if r["response"] == "history"]
        self.assertEqual([entry.get("notice") for entry in history["content"]], [True, None])
        # Over CHATHISTORY it is a NOTICE again.
        alice.send("CHATHISTORY LATEST #r * 10")
        lines = [line for line in alice.lines() if line.command in ("NOTICE", "PRIVMSG")]
        self.assertEqual([(line.command, line.params[-1]) for line in lines], [("NOTICE", "heads up"), ("PRIVMSG", "plain")])

    def test_a_json_message_is_never_a_notice(self) -> None:
        alice = self.client("alice")
        alice.send("JOIN #r")
        carol = json_client(self.chat_factory, "carol")
        carol.send("join", "#r")
        alice.lines()
        carol.send("msg", "from json", room="#r")
        (line,) = [line for line in alice.lines() if line.params[-1] == "from json"]
        self.assertEqual(line.command, "PRIVMSG")


class ClusterEntryTests(IRCTestCase):
    def test_the_stream_entry_carries_the_flag(self) -> None:
        from chatd.cluster.entries import parse_dm, parse_message

        ts = "2026-12-02T10:00:00.000Z"
        fields = ["sender", "bob", "text", "hi", "ts", ts, "node", "n", "token", "1"]
        message, _, _ = parse_message("#r", ["1-1", fields + ["notice", "1"]], 1000)
        self.assertTrue(message.notice)
        message, _, _ = parse_message("#r", ["2-1", fields], 1000)
        self.assertFalse(message.notice)
        dm = ["conv", "@alice bob", "id", "3", "sender", "bob", "text", "hi", "ts", ts, "to", "alice", "node", "n", "token", "2"]
        self.assertTrue(parse_dm(["4-1", dm + ["notice", "1"]], 1000)[0].notice)
        self.assertFalse(parse_dm(["5-1", dm], 1000)[0].notice)

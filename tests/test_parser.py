"""The client's parser: responses to printable lines, typed lines to requests."""

from __future__ import annotations

import json
import sys
import unicodedata

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.parser import (
    COMMANDS,
    MODERATION,
    ERROR,
    HELP,
    INFO,
    MESSAGE,
    NOTICE,
    Command,
    Line,
    MessageParser,
    command_word,
    conversation,
    duration_seconds,
    encode_request,
    fold,
    local_time,
    parse_input,
    safe,
    target_key,
)


def message(sender: str = "bob", content: str = "hi", id: int = 1, timestamp: str = "2026-11-25T19:34:22.123Z") -> dict[str, object]:
    return {"timestamp": timestamp, "sender": sender, "response": "message", "content": content, "id": id}


class ParserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.parser = MessageParser()

    def parse(self, obj: object) -> list[Line]:
        return self.parser.parse(json.dumps(obj))

    def test_message(self) -> None:
        [line] = self.parse(message())
        self.assertEqual(line.kind, MESSAGE)
        self.assertEqual(line.text, f"[{local_time('2026-11-25T19:34:22.123Z')}] bob: hi")
        self.assertRegex(line.text, r"^\[\d\d:\d\d:\d\d\] bob: hi$")

    def test_info_and_error(self) -> None:
        self.assertEqual(self.parse({"response": "info", "content": "Logout successful"}), [Line(INFO, "Logout successful")])
        self.assertEqual(self.parse({"response": "error", "content": "nope", "code": "x"}), [Line(ERROR, "nope")])

    def test_history_of_strings(self) -> None:
        history = {"response": "history", "content": [json.dumps(message(content="a")), json.dumps(message(content="b", id=2))]}
        lines = self.parse(history)
        self.assertEqual([line.text.split(": ", 1)[1] for line in lines], ["a", "b"])
        self.assertTrue(all(line.kind == MESSAGE for line in lines))

    def test_history_of_objects(self) -> None:
        lines = self.parse({"response": "history", "content": [message(content="a"), message(content="b")]})
        self.assertEqual([line.text.split(": ", 1)[1] for line in lines], ["a", "b"])

    def test_empty_and_malformed_history(self) -> None:
        self.assertEqual(self.parse({"response": "history", "content": []}), [])
        self.assertEqual(self.parse({"response": "history", "content": "x"})[0].kind, ERROR)
        [line] = self.parse({"response": "history", "content": ["not json"]})
        self.assertEqual(line.kind, ERROR)

    def test_v2_types(self) -> None:
        self.assertEqual(self.parse({"response": "pong", "content": 1}), [])
        [line] = self.parse({"response": "hello", "content": {"protocol": 2, "server": "chatd/1"}})
        self.assertIn("chatd/1", line.text)
        [line] = self.parse({"response": "presence", "content": {"user": "bob", "status": "online"}})
        self.assertEqual(line, Line(NOTICE, "bob is online"))

    def test_unknown_type(self) -> None:
        [line] = self.parse({"response": "weird", "content": "x"})
        self.assertEqual(line.kind, NOTICE)
        self.assertIn("weird", line.text)

    def test_garbage(self) -> None:
        for raw in ("not json", "{", "", "[1, 2]", "42", '"x"', "[" * 100000):
            [line] = self.parser.parse(raw)
            self.assertEqual(line.kind, ERROR, raw[:10])

    def test_missing_fields(self) -> None:
        [line] = self.parse({"response": "message"})
        self.assertEqual(line.text, "[--:--:--] ?: ")
        [line] = self.parse({"response": "message", "timestamp": "yesterday", "sender": 5, "content": None})
        self.assertEqual(line.text, "[--:--:--] 5: null")

    def test_escapes_cannot_reach_the_terminal(self) -> None:
        nasty = "a\x1b[2Jb\x07c\rd\x9be\x00f\u202eg"
        for obj in (
            message(content=nasty),
            message(sender=nasty),
            {"response": "info", "content": nasty},
            {"response": "error", "content": nasty},
            {"response": "history", "content": [json.dumps(message(content=nasty))]},
            {"response": nasty, "content": nasty},
        ):
            for line in self.parse(obj):
                for char in "\x1b\x07\r\x9b\x00\u202e":
                    self.assertNotIn(char, line.text)
                self.assertIn("\\x1b[2J", line.text)

    def test_newlines_are_indented(self) -> None:
        [line] = self.parse(message(content="one\ntwo"))
        self.assertTrue(line.text.endswith("one\n    two"))

    def test_safe_keeps_tabs_and_text(self) -> None:
        self.assertEqual(safe("a\tb \u00e9 \U0001f600"), "a\tb \u00e9 \U0001f600")

    def test_invisible_and_format_characters_escaped(self) -> None:
        for char, shown in (
            ("\u061c", "\\u061c"),  # Arabic letter mark
            ("\u200b", "\\u200b"),  # zero width space
            ("\ufeff", "\\ufeff"),  # byte order mark
            ("\u00ad", "\\xad"),  # soft hyphen
            ("\U000e0041", "\\U000e0041"),  # tag letter A
            ("\U000e0001", "\\U000e0001"),  # language tag
            ("\U000e007f", "\\U000e007f"),  # cancel tag
            ("\u2028", "\\u2028"),
            ("\ufdd0", "\\ufdd0"),  # noncharacters
            ("\U0010ffff", "\\U0010ffff"),
            ("\ud800", "\\ud800"),  # a lone surrogate (JSON "\ud800")
        ):
            self.assertEqual(safe(f"a{char}b"), f"a{shown}b")

    def test_whole_classes_escaped(self) -> None:
        # Every control, format character, surrogate, line or paragraph
        # separator and noncharacter, from the Unicode database.
        unsafe = [
            chr(code)
            for code in range(sys.maxunicode + 1)
            if (unicodedata.category(chr(code)) in ("Cc", "Cf", "Cs", "Zl", "Zp") and chr(code) not in "\t\n\u200c\u200d")
            or 0xFDD0 <= code <= 0xFDEF
            or code & 0xFFFE == 0xFFFE
        ]
        self.assertGreater(len(unsafe), 2000)
        shown = safe("".join(unsafe))
        self.assertTrue(shown.isascii() and shown.isprintable(), [char for char in shown if not char.isprintable()][:5])
        self.assertEqual(len(shown.split("\\")), len(unsafe) + 1)

    def test_visible_text_unchanged(self) -> None:
        text = "caf\u00e9 e\u0301 \U0001f468\u200d\U0001f469 \u0645\u06cc\u200c\u062e \u4e2d\u6587 \u0645\u0631\u062d\u0628\u0627 \U0001f600\ufe0f \u2764 \U0001d11e \ue000 \u00a0x"
        self.assertEqual(safe(text), text)

    def test_values_nested_too_deep_never_raise(self) -> None:
        deep: list[object] = []
        for _ in range(100_000):
            deep = [deep]
        self.assertEqual(safe(deep), "(unprintable)")
        for response in ({"response": deep}, {"response": "message", "content": deep, "sender": deep}, deep):
            [line] = self.parser.parse_response(response)
            self.assertIn("(unprintable)", line.text)
        [line] = self.parser.parse_response({"response": "history", "content": ["[" * 100_000]})
        self.assertEqual(line.kind, ERROR)

    def test_timestamps_out_of_range(self) -> None:
        for timestamp in (
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "9999-99-99T99:99:99Z",
            "0000-01-01T00:00:00Z",
            "2026-11-25T19:34:22+24:00",
            "x" * 100_000,
            10**30,
            -1.5,
            None,
            {"year": 9999},
        ):
            self.assertEqual(local_time(timestamp), "--:--:--", timestamp)
        self.assertRegex(local_time("9999-12-30T00:00:00Z"), r"^\d\d:\d\d:\d\d$")


class InputTests(SynchronousTestCase):
    def test_plain_line_is_a_message(self) -> None:
        self.assertEqual(parse_input("hello there\n"), Command("request", "msg", "hello there"))

    def test_commands(self) -> None:
        self.assertEqual(parse_input("/login bob"), Command("request", "login", "bob"))
        self.assertEqual(parse_input("/logout"), Command("request", "logout"))
        self.assertEqual(parse_input("/names"), Command("request", "names"))
        self.assertEqual(parse_input("/help"), Command("help"))
        self.assertEqual(parse_input("/msg bob hi  there "), Command("request", "msg", "hi  there", target="bob"))
        self.assertEqual(parse_input("/quit"), Command("quit"))
        self.assertEqual(parse_input("/QUIT\r\n"), Command("quit"))

    def test_double_slash_sends_a_slash(self) -> None:
        self.assertEqual(parse_input("//shrug"), Command("request", "msg", "/shrug"))

    def test_blank_lines_ignored(self) -> None:
        self.assertEqual(parse_input("   \n"), Command("none"))

    def test_unknown_command(self) -> None:
        command = parse_input("/frobnicate now")
        self.assertEqual(command.action, "error")
        self.assertIn("Unknown command /frobnicate", command.content)
        self.assertIn("/login NAME", command.content)

    def test_missing_argument(self) -> None:
        self.assertEqual(parse_input("/login").action, "error")
        self.assertEqual(parse_input("/msg  ").action, "error")
        self.assertEqual(parse_input("/msg bob").action, "error")
        self.assertEqual(parse_input("/msg bob   ").action, "error")
        self.assertEqual(parse_input("/join").action, "error")

    def test_requests_encoded_in_one_place(self) -> None:
        self.assertEqual(json.loads(encode_request("login", "bob")), {"request": "login", "content": "bob"})
        self.assertTrue(encode_request("names").endswith(b"}\n"))


class RoomInputTests(SynchronousTestCase):
    """The room and DM commands (PROTOCOL.md section 6)."""

    def test_join_part_names(self) -> None:
        self.assertEqual(parse_input("/join #dev"), Command("request", "join", "#dev"))
        self.assertEqual(parse_input("/JOIN dev"), Command("request", "join", "#dev"))  # "#" may be left out
        self.assertEqual(parse_input("/part"), Command("request", "part"))
        self.assertEqual(parse_input("/part #Dev"), Command("request", "part", "#Dev"))
        self.assertEqual(parse_input("/names"), Command("request", "names"))
        self.assertEqual(parse_input("/names #dev"), Command("request", "names", "#dev"))
        self.assertEqual(parse_input("/rooms"), Command("request", "rooms"))

    def test_bad_room_names_refused_here(self) -> None:
        for line in ("/join #a b", "/join #", "/join #" + "x" * 49, "/part #d\u00e9v", "/join #dev!", "/names #a.b"):
            command = parse_input(line)
            self.assertEqual(command.action, "error", line)
            self.assertIn("is not a room name", command.content)
        self.assertEqual(parse_input("/join #" + "x" * 48), Command("request", "join", "#" + "x" * 48))

    def test_topic(self) -> None:
        self.assertEqual(parse_input("/topic"), Command("request", "topic"))
        self.assertEqual(parse_input("/topic  Release 0.5 "), Command("request", "topic", "Release 0.5"))

    def test_msg_to_a_name_or_a_room(self) -> None:
        self.assertEqual(parse_input("/msg alice lunch?"), Command("request", "msg", "lunch?", target="alice"))
        self.assertEqual(parse_input("/msg #dev on it"), Command("request", "msg", "on it", target="#dev"))
        self.assertEqual(parse_input("/msg irc_nick-1 hi"), Command("request", "msg", "hi", target="irc_nick-1"))
        for line in ("/msg b\u00f6b hi", "/msg #a! hi", "/msg 1-x hi"):
            self.assertEqual(parse_input(line).action, "error", line)

    def test_switch(self) -> None:
        self.assertEqual(parse_input("/switch #dev"), Command("switch", content="#dev"))
        self.assertEqual(parse_input("/switch bob"), Command("switch", content="bob"))
        self.assertEqual(parse_input("/switch"), Command("switch"))
        self.assertEqual(parse_input("/switch a b").action, "error")

    def test_help_lists_every_command(self) -> None:
        listed = " ".join(command for command, _ in HELP)
        words = ("join", "part", "rooms", "switch", "msg", "topic", "names", "login", "logout", "help", "quit")
        accounts = ("register", "password", "whoami", "kick", "ban", "unban", "mute", "unmute", "op", "deop", "voice", "devoice", "mode", "invite")
        for word in words + accounts:
            self.assertIn(f"/{word}", listed)
            self.assertIn(f"/{word}", COMMANDS)
            self.assertNotEqual(parse_input(f"/{word} #x y").content, f"Unknown command /{word}. Commands: {COMMANDS}")

    def test_fold_is_ascii_only(self) -> None:
        self.assertEqual(fold("#DeV"), "#dev")
        self.assertEqual(fold("\u0130X"), "\u0130x")  # not str.lower(), which changes non-ASCII letters
        self.assertEqual(target_key("#Dev"), "#dev")
        self.assertEqual(target_key("Bob"), "@bob")


def room_message(room: str | None = None, to: str | None = None, sender: str = "bob", content: str = "hi", id: int = 1) -> dict[str, object]:
    response = message(sender=sender, content=content, id=id)
    if room is not None:
        response["room"] = room
    if to is not None:
        response["to"] = to
    return response


class RoomRenderingTests(SynchronousTestCase):
    """Messages show their room or their DM parties unless of the current target."""

    def setUp(self) -> None:
        self.parser = MessageParser()
        self.parser.me = "alice"
        self.when = local_time("2026-11-25T19:34:22.123Z")

    def text(self, response: dict[str, object]) -> str:
        [line] = self.parser.parse_response(response)
        self.assertEqual(line.kind, MESSAGE)
        prefix = f"[{self.when}] "
        self.assertTrue(line.text.startswith(prefix), line.text)
        return line.text[len(prefix):]

    def test_in_the_lobby(self) -> None:
        self.assertEqual(self.text(room_message()), "bob: hi")
        self.assertEqual(self.text(room_message("#Dev")), "[#Dev] bob: hi")
        self.assertEqual(self.text(room_message(to="alice")), "bob -> alice: hi")
        self.assertEqual(self.text(room_message(to="bob", sender="alice")), "alice -> bob: hi")

    def test_in_a_room(self) -> None:
        self.parser.target = "#dev"  # any case: rooms compare case-insensitively
        self.assertEqual(self.text(room_message("#Dev")), "bob: hi")
        self.assertEqual(self.text(room_message()), "[#lobby] bob: hi")
        self.assertEqual(self.text(room_message("#ops")), "[#ops] bob: hi")
        self.assertEqual(self.text(room_message(to="alice")), "bob -> alice: hi")

    def test_talking_to_a_name(self) -> None:
        self.parser.target = "Bob"
        self.assertEqual(self.text(room_message(to="alice")), "bob: hi")  # from bob
        self.assertEqual(self.text(room_message(to="bob", sender="Alice")), "Alice: hi")  # to bob (my echo)
        self.assertEqual(self.text(room_message(to="alice", sender="carol")), "carol -> alice: hi")
        self.assertEqual(self.text(room_message()), "[#lobby] bob: hi")
        self.assertEqual(self.text(room_message("#dev")), "[#dev] bob: hi")

    def test_offline_delivery_is_said(self) -> None:
        response = room_message(to="carol", sender="alice")
        response["offline"] = True
        self.assertEqual(self.text(response), "alice -> carol: hi (offline: delivered at their next login)")

    def test_conversation_keys(self) -> None:
        self.assertEqual(conversation(room_message(), "alice"), "#lobby")
        self.assertEqual(conversation(room_message("#DEV"), "alice"), "#dev")
        self.assertEqual(conversation(room_message(to="Alice"), "alice"), "@bob")
        self.assertEqual(conversation(room_message(to="bob", sender="ALICE"), "alice"), "@bob")
        self.assertEqual(conversation(room_message(to="alice", sender="alice"), "alice"), "@alice")
        self.assertEqual(conversation(room_message(to="x"), None), "@bob")

    def test_room_history_entries_take_the_room(self) -> None:
        history = {"response": "history", "room": "#Dev", "content": [message(content="a"), room_message("#Dev", content="b")]}
        lines = self.parser.parse_response(history)
        self.assertEqual([line.text.split("] ", 1)[1] for line in lines], ["[#Dev] bob: a", "[#Dev] bob: b"])

    def test_hostile_room_and_names_are_made_safe(self) -> None:
        nasty = "#a\x1b[2J\u202e"
        for response in (room_message(nasty), room_message(to=nasty), room_message(sender=nasty, to="bob")):
            text = self.text(response)
            self.assertNotIn("\x1b", text)
            self.assertNotIn("\u202e", text)
        # A room that is not a string counts as no room: #lobby.
        self.assertEqual(self.text(room_message(["#dev"])), "bob: hi")  # type: ignore[arg-type]
        self.parser.target = "#dev"
        self.assertEqual(self.text(room_message(["#dev"])), "[#lobby] bob: hi")  # type: ignore[arg-type]


class RoomResponseTests(SynchronousTestCase):
    """join info, topics, presence per room, invite and mode."""

    def setUp(self) -> None:
        self.parser = MessageParser()

    def texts(self, response: dict[str, object]) -> list[str]:
        return [line.text for line in self.parser.parse_response(response)]

    def test_join_info_shows_topic_and_members(self) -> None:
        info = {
            "response": "info", "content": "Joined #Dev", "room": "#Dev", "topic": "Release 0.5",
            "members": ["alice", "bob", "carol"], "ops": ["Alice"], "voiced": ["carol"], "modes": {},
        }
        self.assertEqual(self.texts(info), ["Joined #Dev", "Topic: Release 0.5", "Members: @alice, bob, +carol"])
        self.assertEqual(self.texts(dict(info, topic="", ops=None, voiced=5)), ["Joined #Dev", "Members: alice, bob, carol"])
        [first, *_] = self.parser.parse_response(info)
        self.assertEqual(first.kind, INFO)

    def test_topic_read(self) -> None:
        read = {"response": "info", "content": "whatever the server says", "room": "#Dev", "topic": "Release 0.5", "by": "alice", "set_at": "2026-12-02T10:00:00.000Z"}
        self.assertEqual(self.texts(read), ["Topic of #Dev: Release 0.5 (set by alice)"])
        self.assertEqual(self.texts(dict(read, topic="", by=None, set_at=None)), ["No topic in #Dev"])

    def test_other_infos_about_rooms_are_their_sentence(self) -> None:
        self.assertEqual(self.texts({"response": "info", "content": "Left #Dev", "room": "#Dev"}), ["Left #Dev"])
        self.assertEqual(self.texts({"response": "info", "content": "#Dev (2), #lobby (3)", "rooms": []}), ["#Dev (2), #lobby (3)"])

    def test_topic_changes(self) -> None:
        self.assertEqual(
            self.parser.parse_response({"response": "topic", "content": {"room": "#Dev", "topic": "Tag at noon", "by": "bob"}}),
            [Line(NOTICE, "bob set the topic of #Dev: Tag at noon")],
        )
        self.assertEqual(self.texts({"response": "topic", "content": {"room": "#Dev", "topic": "", "by": "bob"}}), ["bob cleared the topic of #Dev"])
        self.assertEqual(self.parser.parse_response({"response": "topic", "content": "x"})[0].kind, ERROR)

    def test_presence_per_room(self) -> None:
        def presence(**content: object) -> list[str]:
            return self.texts({"response": "presence", "content": dict({"user": "bob"}, **content)})

        self.assertEqual(presence(status="online", room="#lobby"), ["bob is online"])
        self.assertEqual(presence(status="offline"), ["bob is offline"])
        self.assertEqual(presence(status="online", room="#Dev"), ["bob joined #Dev"])
        self.assertEqual(presence(status="offline", room="#Dev"), ["bob left #Dev"])
        self.assertEqual(presence(status="offline", room="#Dev", comment="lunch"), ["bob left #Dev (lunch)"])
        self.assertEqual(presence(status="offline", room="#Dev", reason="kicked", by="alice", comment="spam"), ["bob was kicked from #Dev by alice: spam"])
        self.assertEqual(presence(status="offline", room="#Dev", reason="banned", by="alice"), ["bob was banned from #Dev by alice"])
        self.assertEqual(presence(status="away", room="#Dev"), ["bob is away in #Dev"])

    def test_invite_and_mode(self) -> None:
        self.assertEqual(self.texts({"response": "invite", "content": {"room": "#Dev", "by": "alice"}}), ["alice invites you to #Dev (/join #Dev)"])
        mode = {"response": "mode", "content": {"room": "#Dev", "by": "alice", "user": "bob", "op": True}}
        self.assertEqual(self.texts(mode), ["alice gave op to bob in #Dev"])
        mode = {"response": "mode", "content": {"room": "#Dev", "by": "alice", "user": "bob", "voice": False}}
        self.assertEqual(self.texts(mode), ["alice took voice from bob in #Dev"])
        mode = {"response": "mode", "content": {"room": "#Dev", "by": "alice", "modes": {"moderated": True, "secret": False}}}
        self.assertEqual(self.texts(mode), ["alice set the modes of #Dev: moderated on, secret off"])
        for kind in ("invite", "mode"):
            self.assertEqual(self.parser.parse_response({"response": kind, "content": None})[0].kind, ERROR)

    def test_escapes_in_room_responses(self) -> None:
        nasty = "a\x1b[2J\u202e"
        for response in (
            {"response": "info", "content": nasty, "room": nasty, "members": [nasty, 5], "ops": [nasty], "topic": nasty},
            {"response": "info", "content": nasty, "room": nasty, "topic": nasty, "by": nasty},
            {"response": "topic", "content": {"room": nasty, "topic": nasty, "by": nasty}},
            {"response": "presence", "content": {"user": nasty, "status": "offline", "room": nasty, "reason": "kicked", "by": nasty, "comment": nasty}},
            {"response": "invite", "content": {"room": nasty, "by": nasty}},
            {"response": "mode", "content": {"room": nasty, "by": nasty, "modes": {nasty: True}}},
        ):
            for line in self.parser.parse_response(response):
                self.assertNotIn("\x1b", line.text)
                self.assertNotIn("\u202e", line.text)


class AccountInputTests(SynchronousTestCase):
    """The account and moderation commands (PROTOCOL.md sections 6.4, 6.5)."""

    def test_account_commands(self) -> None:
        self.assertEqual(parse_input("/register alice"), Command("request", "register", "alice"))
        self.assertEqual(parse_input("/password"), Command("request", "password"))
        self.assertEqual(parse_input("/WHOAMI"), Command("whoami"))
        for line in ("/register", "/register a b", "/register b\u00f6b", "/password old new"):
            self.assertEqual(parse_input(line).action, "error", line)
        # Passwords are never typed on a command line: the error says so.
        self.assertIn("asked for", parse_input("/register alice hunter2").content)
        self.assertNotIn("hunter2", parse_input("/register alice hunter2").content)

    def test_command_word(self) -> None:
        self.assertEqual(command_word("/Login bob"), "login")
        self.assertEqual(command_word("/password\r\n"), "password")
        self.assertEqual(command_word("/register"), "register")
        self.assertIsNone(command_word("//login bob"))
        self.assertIsNone(command_word("login bob"))

    def test_kick_and_ban(self) -> None:
        self.assertEqual(parse_input("/kick bob"), Command("request", "kick", {"user": "bob"}))
        self.assertEqual(parse_input("/kick bob  spam,  again "), Command("request", "kick", {"user": "bob", "comment": "spam,  again"}))
        self.assertEqual(parse_input("/KICK #Dev bob x"), Command("request", "kick", {"user": "bob", "comment": "x"}, target="#Dev"))
        self.assertEqual(parse_input("/ban bob"), Command("request", "ban", {"user": "bob"}))
        self.assertEqual(parse_input("/ban bob 10m go away"), Command("request", "ban", {"user": "bob", "duration": 600, "comment": "go away"}))
        self.assertEqual(parse_input("/ban #dev bob 2h"), Command("request", "ban", {"user": "bob", "duration": 7200}, target="#dev"))
        self.assertEqual(parse_input("/ban bob spam 10m"), Command("request", "ban", {"user": "bob", "comment": "spam 10m"}))
        self.assertEqual(parse_input("/unban bob"), Command("request", "unban", {"user": "bob"}))

    def test_mute_op_voice_invite(self) -> None:
        self.assertEqual(parse_input("/mute bob 90"), Command("request", "mute", {"user": "bob", "duration": 90}))
        self.assertEqual(parse_input("/mute bob"), Command("request", "mute", {"user": "bob"}))
        for word in ("unmute", "op", "deop", "voice", "devoice"):
            self.assertEqual(parse_input(f"/{word} irc_nick-1"), Command("request", word, {"user": "irc_nick-1"}))
            self.assertEqual(parse_input(f"/{word} bob extra").action, "error")
        self.assertEqual(parse_input("/invite bob"), Command("request", "invite", {"user": "bob"}))
        self.assertEqual(parse_input("/invite bob #dev"), Command("request", "invite", {"user": "bob"}, target="#dev"))  # IRC's order
        self.assertEqual(parse_input("/invite #dev bob"), Command("request", "invite", {"user": "bob"}, target="#dev"))

    def test_moderation_errors(self) -> None:
        for word in MODERATION:
            self.assertIn("needs a NAME", parse_input(f"/{word}").content)
            self.assertIn("needs a NAME", parse_input(f"/{word} #dev").content)
            self.assertIn("is not a user name", parse_input(f"/{word} b!b").content)
            self.assertIn("is not a room name", parse_input(f"/{word} #a! bob").content)
        self.assertIn("1 second or more", parse_input("/ban bob 0").content)
        self.assertIn("1 second or more", parse_input("/mute bob 0m").content)
        self.assertEqual(parse_input("/mute bob soon").action, "error")

    def test_durations(self) -> None:
        cases = {"90": 90, "30s": 30, "10m": 600, "2h": 7200, "1d": 86400, "1w": 604800}
        for text, seconds in cases.items():
            self.assertEqual(duration_seconds(text), seconds, text)
        for text in ("", "m", "1.5h", "-1", "10x", "1234567890", "1H"):
            self.assertIsNone(duration_seconds(text), text)

    def test_mode(self) -> None:
        self.assertEqual(parse_input("/mode"), Command("request", "mode", {}))
        self.assertEqual(parse_input("/mode #dev"), Command("request", "mode", {}, target="#dev"))
        self.assertEqual(parse_input("/mode +im -s"), Command("request", "mode", {"invite_only": True, "moderated": True, "secret": False}))
        self.assertEqual(parse_input("/mode +i-n+t"), Command("request", "mode", {"invite_only": True, "no_external": False, "topic_ops": True}))
        self.assertEqual(
            parse_input("/mode #dev +moderated -invite-only -no_external"),
            Command("request", "mode", {"moderated": True, "invite_only": False, "no_external": False}, target="#dev"),
        )
        for line in ("/mode i", "/mode +x", "/mode +", "/mode moderated", "/mode #a! +m"):
            self.assertEqual(parse_input(line).action, "error", line)


class AccountResponseTests(SynchronousTestCase):
    """What accounts and moderation make the parser print."""

    def setUp(self) -> None:
        self.parser = MessageParser()
        self.parser.me = "alice"

    def lines(self, response: dict[str, object]) -> list[tuple[str, str]]:
        return [(line.kind, line.text) for line in self.parser.parse_response(response)]

    def test_what_others_did_to_us_is_a_notice(self) -> None:
        kicked = {"response": "info", "content": "You were kicked from #Dev by bob: spam", "room": "#Dev", "by": "bob", "comment": "spam"}
        self.assertEqual(self.lines(kicked), [(NOTICE, "You were kicked from #Dev by bob: spam")])
        muted = {"response": "info", "content": "You were muted in #Dev by bob", "room": "#Dev", "by": "bob"}
        self.assertEqual(self.lines(muted), [(NOTICE, "You were muted in #Dev by bob")])
        done = {"response": "info", "content": "Kicked carol from #Dev", "room": "#Dev", "user": "carol"}
        self.assertEqual(self.lines(done), [(INFO, "Kicked carol from #Dev")])

    def test_mode_read_and_unusual_modes_at_join(self) -> None:
        modes = {"invite_only": True, "topic_ops": True, "moderated": False, "secret": False, "no_external": True}
        read = {"response": "info", "content": "Modes of #Dev", "room": "#Dev", "modes": modes}
        self.assertEqual(self.lines(read), [
            (INFO, "Modes of #Dev"), (INFO, "Modes: invite_only on, topic_ops on, moderated off, secret off, no_external on"),
        ])
        join = {"response": "info", "content": "Joined #Dev", "room": "#Dev", "topic": "", "members": ["alice"], "ops": [], "voiced": []}
        self.assertEqual(self.lines(dict(join, modes=dict(modes, invite_only=False)))[1:], [(INFO, "Members: alice")])  # the defaults
        self.assertEqual(self.lines(dict(join, modes=dict(modes, topic_ops=False)))[2:], [(INFO, "Modes: invite_only on, topic_ops off")])

    def test_mode_events_about_us(self) -> None:
        mode = {"response": "mode", "content": {"room": "#Dev", "by": "bob", "user": "ALICE", "op": True}}
        self.assertEqual(self.lines(mode), [(NOTICE, "bob gave you op in #Dev")])
        mode = {"response": "mode", "content": {"room": "#Dev", "by": "bob", "user": "alice", "voice": False}}
        self.assertEqual(self.lines(mode), [(NOTICE, "bob took your voice in #Dev")])

    def test_offline_direct_messages(self) -> None:
        entries = [dict(message("bob", "while away 1", 1), to="alice", offline=True), dict(message("bob", "while away 2", 2), to="alice", offline=True)]
        page = {"response": "history", "content": entries, "with": "bob", "more": True}
        texts = [text.split("] ", 1)[-1] for _, text in self.lines(page)]
        self.assertEqual(texts, [
            "Direct messages from bob while you were away:",
            "bob -> alice: while away 1",
            "bob -> alice: while away 2",
            "More direct messages from bob are waiting: they come at your next login.",
        ])
        self.assertEqual(self.lines(dict(page, content=[])), [])
        # The note on an offline DM is for its sender's echo only.
        mine = dict(message("alice", "are you there?", 3), to="bob", offline=True)
        self.assertTrue(self.lines(mine)[0][1].endswith("alice -> bob: are you there? (offline: delivered at their next login)"))

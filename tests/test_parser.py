"""The client's parser: responses to printable lines, typed lines to requests."""

from __future__ import annotations

import json
import sys
import unicodedata

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.parser import (
    COMMANDS,
    ERROR,
    HELP,
    INFO,
    MESSAGE,
    NOTICE,
    Command,
    Line,
    MessageParser,
    conversation,
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
        for word in ("join", "part", "rooms", "switch", "msg", "topic", "names", "login", "logout", "help", "quit"):
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

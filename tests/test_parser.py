"""The client's parser: responses to printable lines, typed lines to requests."""

from __future__ import annotations

import json
import sys
import unicodedata

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.parser import ERROR, INFO, MESSAGE, NOTICE, Command, Line, MessageParser, encode_request, local_time, parse_input, safe


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
        self.assertEqual(parse_input("/help"), Command("request", "help"))
        self.assertEqual(parse_input("/msg hi  there"), Command("request", "msg", "hi  there"))
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

    def test_requests_encoded_in_one_place(self) -> None:
        self.assertEqual(json.loads(encode_request("login", "bob")), {"request": "login", "content": "bob"})
        self.assertTrue(encode_request("names").endswith(b"}\n"))

"""IRC lines (chatd.frontends.irc.lines): tags, parsing, framing, formatting."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.irc.encoding import conversation_key, split_text
from chatd.frontends.irc.lines import (
    BadLine,
    Line,
    LineSplitter,
    build,
    cut_utf8,
    escape_tag_value,
    format_params,
    format_tags,
    parse_line,
    parse_tags,
    unescape_tag_value,
)
from chatd.frontends.irc.sasl import PlainExchange, decode_plain


class TagTests(SynchronousTestCase):
    def test_escaping_round_trips(self) -> None:
        value = "a;b c\\d\r\ne"
        escaped = escape_tag_value(value)
        self.assertEqual(escaped, "a\\:b\\sc\\\\d\\r\\ne")
        self.assertEqual(unescape_tag_value(escaped), value)

    def test_unescape_drops_stray_backslashes(self) -> None:
        self.assertEqual(unescape_tag_value("a\\bc\\"), "abc")

    def test_parse_keeps_client_tags_and_skips_malformed(self) -> None:
        tags = parse_tags("+draft/reply=1;label=x;time;bad$key=1;=novalue;+example.com/thing=a\\sb;label=y")
        self.assertEqual(tags, {"+draft/reply": "1", "label": "y", "time": "", "+example.com/thing": "a b"})

    def test_format(self) -> None:
        self.assertEqual(format_tags({"a": "", "+b": "c d"}), "a;+b=c\\sd")

    @given(st.text())
    def test_any_value_round_trips(self, value: str) -> None:
        self.assertEqual(unescape_tag_value(escape_tag_value(value)), value)


class ParseTests(SynchronousTestCase):
    def test_a_full_line(self) -> None:
        line = parse_line(b"@label=1;+x=y :nick!u@h privmsg #a :hello there")
        assert isinstance(line, Line)
        self.assertEqual((line.command, line.params, line.prefix, line.label), ("PRIVMSG", ["#a", "hello there"], "nick!u@h", "1"))
        self.assertEqual(line.client_tags(), {"+x": "y"})

    def test_empty_trailing_and_spaces(self) -> None:
        line = parse_line(b"TOPIC   #a  :")
        assert isinstance(line, Line)
        self.assertEqual(line.params, ["#a", ""])

    def test_malformed(self) -> None:
        for raw in (b":onlyprefix", b"@a=b", b"@a=b :p", b"B@D", b"   ", b"1234"):
            result = parse_line(raw)
            self.assertIsInstance(result, BadLine, raw)

    def test_invalid_utf8_is_replaced(self) -> None:
        line = parse_line(b"PRIVMSG #a :\xff\xfeok")
        assert isinstance(line, Line)
        self.assertEqual(line.params[1], "\ufffd\ufffdok")

    @settings(max_examples=300)
    @given(st.binary(max_size=600))
    def test_any_bytes_parse_without_raising(self, raw: bytes) -> None:
        result = parse_line(raw.replace(b"\n", b""))
        self.assertIsInstance(result, (Line, BadLine))


class SplitterTests(SynchronousTestCase):
    def test_lines_and_partial_lines(self) -> None:
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"PING a\r\nPI"), [b"PING a"])
        self.assertEqual(splitter.feed(b"NG b\n\r\n"), [b"PING b"])
        self.assertEqual(splitter.buffered, 0)

    def test_a_long_line_is_reported_once_and_not_held(self) -> None:
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"x" * 511), [])
        self.assertEqual(splitter.feed(b"x"), [None])
        self.assertEqual(splitter.buffered, 0)
        self.assertEqual(splitter.feed(b"y" * 100_000), [])
        self.assertEqual(splitter.buffered, 0)
        self.assertEqual(splitter.feed(b"z\r\nok\r\n"), [b"ok"])

    def test_limits(self) -> None:
        splitter = LineSplitter()
        self.assertEqual(splitter.feed(b"a" * 510 + b"\r\n"), [b"a" * 510])
        self.assertEqual(splitter.feed(b"a" * 511 + b"\r\n"), [None])
        tags = b"@" + b"t" * 4094 + b" "  # 4096 with its '@' and space
        self.assertEqual(splitter.feed(tags + b"c" * 510 + b"\r\n"), [tags + b"c" * 510])
        self.assertEqual(splitter.feed(b"@" + b"t" * 4095 + b" C\r\n"), [None])

    @settings(max_examples=200)
    @given(st.lists(st.binary(max_size=3000), max_size=8))
    def test_never_holds_more_than_a_line(self, chunks: list[bytes]) -> None:
        splitter = LineSplitter()
        for chunk in chunks:
            for line in splitter.feed(chunk):
                self.assertTrue(line is None or len(line) <= 4096 + 510)
            self.assertLessEqual(splitter.buffered, LineSplitter.MAX_PARTIAL)


class FormatTests(SynchronousTestCase):
    def test_params(self) -> None:
        self.assertEqual(format_params(["#a", "hi there"]), "#a :hi there")
        self.assertEqual(format_params(["#a", ""]), "#a :")
        self.assertEqual(format_params(["#a", ":)"]), "#a ::)")
        self.assertEqual(format_params(["a b", "c"]), "a_b c")  # a middle parameter cannot hold a space
        self.assertEqual(format_params(["x\r\ny"]), ":x  y")

    def test_build(self) -> None:
        self.assertEqual(build("PONG", ["srv", "tok"], "srv", trailing=True), b":srv PONG srv :tok")

    def test_cut_utf8_at_character_boundaries(self) -> None:
        pieces = cut_utf8("é" * 10, 5)
        self.assertEqual(pieces, ["éé", "éé", "éé", "éé", "éé"])
        self.assertEqual("".join(cut_utf8("aé€😊" * 50, 7)), "aé€😊" * 50)

    def test_split_text(self) -> None:
        self.assertEqual(split_text("a\n\nb", 10), ["a", "b"])

    def test_conversation_keys(self) -> None:
        self.assertEqual(conversation_key("#Dev"), "#dev")
        self.assertEqual(conversation_key("@bob alice"), "dm:alice:bob")
        self.assertEqual(conversation_key("@bob"), "dm:bob:bob")


class PlainTests(SynchronousTestCase):
    def test_decode(self) -> None:
        import base64

        def encoded(raw: bytes) -> bytes:
            return base64.b64encode(raw)

        ok = decode_plain(encoded(b"\x00jilles\x00sesame"))
        assert ok is not None
        self.assertEqual((ok.authcid, ok.password), ("jilles", "sesame"))
        self.assertIsNotNone(decode_plain(encoded(b"Jilles\x00jilles\x00sesame")))
        for bad in (b"other\x00jilles\x00sesame", b"\x00\x00sesame", b"\x00jilles\x00", b"a\x00b", b"\x00a\x00b\x00c"):
            self.assertIsNone(decode_plain(encoded(bad)), bad)
        self.assertIsNone(decode_plain(b"!!!"))

    def test_chunks(self) -> None:
        exchange = PlainExchange()
        self.assertEqual(exchange.feed("A" * 400).kind, "more")
        self.assertEqual(exchange.feed("A" * 401).numeric, "905")
        exchange = PlainExchange()
        for _ in range(4):
            self.assertEqual(exchange.feed("A" * 400).kind, "more")
        self.assertEqual(exchange.feed("A" * 400).numeric, "904")  # over 1,600 bytes in all
        self.assertEqual(PlainExchange().feed("+").numeric, "904")  # an empty response

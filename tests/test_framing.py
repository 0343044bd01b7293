"""The stream decoder and the two output framings (PROTOCOL.md section 1)."""

from __future__ import annotations

import json
import re
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.json import framing
from chatd.frontends.json.framing import MAX_DEPTH, ClassicOutput, Decoded, LinesOutput, StreamDecoder

LOGIN = b'{"request": "login", "content": "bob"}'
LOGIN_OBJ = {"request": "login", "content": "bob"}


def requests(events: list[Decoded]) -> list[object]:
    """Events as request objects or error codes, for comparison."""
    return [event.request if event.error is None else event.error for event in events]


def feed_all(decoder: StreamDecoder, chunks: list[bytes]) -> list[object]:
    result: list[object] = []
    for chunk in chunks:
        result.extend(requests(decoder.feed(chunk)))
    return result


class DecoderInputTests(SynchronousTestCase):
    """Requests arrive bare, as lines, split anywhere, with whitespace."""

    def test_newline_delimited(self) -> None:
        decoder = StreamDecoder()
        events = decoder.feed(LOGIN + b"\n" + b'{"request": "names"}\n')
        self.assertEqual(requests(events), [LOGIN_OBJ, {"request": "names"}])
        self.assertTrue(all(event.newline_follows for event in events))

    def test_concatenated_without_newlines(self) -> None:
        decoder = StreamDecoder()
        events = decoder.feed(LOGIN + b'{"request": "names"}')
        self.assertEqual(requests(events), [LOGIN_OBJ, {"request": "names"}])
        self.assertFalse(any(event.newline_follows for event in events))

    def test_complete_object_is_not_held_for_a_newline(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(LOGIN)), [LOGIN_OBJ])

    def test_split_at_every_byte_position(self) -> None:
        stream = LOGIN + b"  \r\n" + '{"request": "msg", "content": "h\\u00e9 \u00e9\u20ac\U0001f600"}'.encode() + b"\t"
        expected = [LOGIN_OBJ, {"request": "msg", "content": "h\u00e9 \u00e9\u20ac\U0001f600"}]
        for cut in range(len(stream) + 1):
            decoder = StreamDecoder()
            self.assertEqual(feed_all(decoder, [stream[:cut], stream[cut:]]), expected, f"cut at {cut}")

    def test_one_byte_at_a_time(self) -> None:
        stream = LOGIN + b'\n{"request": "msg", "content": [1, 2.5e-3, true, false, null, {"a": "\\n"}]}'
        decoder = StreamDecoder()
        result = feed_all(decoder, [stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(result, [LOGIN_OBJ, json.loads(stream.split(b"\n")[1])])

    def test_utf8_split_across_reads(self) -> None:
        stream = '{"content": "\u00e9\u20ac\U0001f600"}'.encode()
        for cut in range(len(stream) + 1):
            decoder = StreamDecoder()
            self.assertEqual(feed_all(decoder, [stream[:cut], stream[cut:]]), [{"content": "\u00e9\u20ac\U0001f600"}])

    def test_whitespace_between_and_around(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b" \r\n\t" + LOGIN + b" \t \n\n  " + LOGIN + b"\r\n")), [LOGIN_OBJ] * 2)
        self.assertEqual(decoder.buffered, 0)

    def test_newline_follows_ignores_spaces_tabs_and_cr(self) -> None:
        decoder = StreamDecoder()
        [event] = decoder.feed(LOGIN + b" \t\r\n")
        self.assertTrue(event.newline_follows)

    def test_newline_in_a_later_read_is_not_lines(self) -> None:
        decoder = StreamDecoder()
        [event] = decoder.feed(LOGIN)
        self.assertFalse(event.newline_follows)
        self.assertEqual(decoder.feed(b"\n"), [])


class DecoderErrorTests(SynchronousTestCase):
    """Garbage, resynchronisation, non-objects, limits."""

    def test_garbage_then_resync_at_brace(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"hello there" + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_garbage_then_resync_at_newline(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'"abc" x y z\n' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_broken_object_resyncs_at_next_object(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'{"request": "msg" "content"}' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_unclosed_object_then_new_object(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'{"request" ' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_object_as_a_value_is_a_valid_prefix(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'{"request": ' + LOGIN)), [])
        self.assertEqual(requests(decoder.feed(b"}")), [{"request": LOGIN_OBJ}])

    def test_one_bad_json_per_chunk(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"a\nb\nc\n[1]\n42\n" + LOGIN)), ["bad_json", LOGIN_OBJ])
        self.assertEqual(requests(decoder.feed(b"x\n")), ["bad_json"])
        self.assertEqual(requests(decoder.feed(b"y\n")), ["bad_json"])

    def test_skipping_continues_into_the_next_read(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"garbage with no end")), ["bad_json"])
        self.assertEqual(requests(decoder.feed(b" more garbage\n" + LOGIN)), [LOGIN_OBJ])

    def test_object_after_skipped_garbage_in_a_later_read_is_not_held(self) -> None:
        # The skip found a ``{`` in the next read: the object behind it is
        # decoded in that read, not held until some later read arrives.
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"garbage with no end")), ["bad_json"])
        self.assertEqual(requests(decoder.feed(b"more garbage " + LOGIN)), [LOGIN_OBJ])
        self.assertEqual(decoder.buffered, 0)

    def test_rejected_at_the_same_point_whole_or_in_pieces(self) -> None:
        # Invalid UTF-8 in a string and nesting past MAX_DEPTH fail where
        # they occur, and decoding resumes from there, whether the value
        # came in one read or byte by byte (issue 13: the two used to differ).
        deep = b"[" * (MAX_DEPTH + 1) + LOGIN + b"]" * (MAX_DEPTH + 1)
        for stream in (b'["\xff", ' + LOGIN + b"]", b'"a\xff ' + LOGIN, deep):
            whole = requests(StreamDecoder().feed(stream))
            trickled = feed_all(StreamDecoder(), [stream[i : i + 1] for i in range(len(stream))])
            self.assertEqual(whole, ["bad_json", LOGIN_OBJ], stream)
            self.assertEqual([r for r in trickled if r != "bad_json"], [LOGIN_OBJ], stream)

    def test_deep_value_is_rejected_at_the_depth_limit_not_as_too_long(self) -> None:
        # The value is too deep long before it is too long.
        decoder = StreamDecoder(max_request=100)
        self.assertEqual(requests(decoder.feed(b"[" * 66 + b"]" * 66 + b"\n" + LOGIN)), ["bad_json", LOGIN_OBJ])
        self.assertFalse(decoder.stopped)

    def test_long_numbers(self) -> None:
        decoder = StreamDecoder(max_request=1 << 20)
        digits = b"1" * 50000
        self.assertEqual(requests(decoder.feed(b'{"a": ' + digits + b"}\n" + LOGIN)), ["bad_json", LOGIN_OBJ])
        self.assertEqual(requests(decoder.feed(b'{"a": 0.' + digits + b"e-" + digits + b"}\n")), [{"a": 0.0}])
        self.assertEqual(requests(decoder.feed(b'{"a": 1.5e+3, "b": -0, "c": 0.25E2}')), [{"a": 1500.0, "b": 0, "c": 25.0}])

    def test_top_level_numbers_end_where_json_ends_them(self) -> None:
        for stream in (b"12", b"1.", b"1e", b"01", b"-0.5E+2x"):
            decoder = StreamDecoder()
            self.assertEqual(requests(decoder.feed(stream + b"\n" + LOGIN)), ["bad_json", LOGIN_OBJ], stream)
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"-")), [])
        self.assertEqual(requests(decoder.feed(b"x" + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_garbage_runs_after_the_first_error(self) -> None:
        # Runs skipped in one step must end where the step-by-step
        # decoding would: at the next value that can start.
        decoder = StreamDecoder()
        stream = b"x{{{ {\n{x}]\n{\t{ " + LOGIN + b"{{{ [1]" + LOGIN + b"{{x"
        self.assertEqual(requests(decoder.feed(stream)), ["bad_json", LOGIN_OBJ, LOGIN_OBJ])
        self.assertEqual(requests(decoder.feed(b"}" + LOGIN)), [LOGIN_OBJ])  # still skipping
        # A ``{`` then more blanks than the limit allows is too_long, not skipped.
        decoder = StreamDecoder(max_request=64)
        self.assertEqual(requests(decoder.feed(b"x{" + b" " * 70 + b"x\n" + LOGIN)), ["bad_json", "too_long"])
        decoder = StreamDecoder(max_request=64)
        self.assertEqual(requests(decoder.feed(b"x{" + b" " * 60 + b"x\n" + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_non_object_values_consumed_whole(self) -> None:
        for value in (b"[1, 2]", b"42", b'"x"', b"true", b"null", b'[{"request": "login"}]'):
            decoder = StreamDecoder()
            self.assertEqual(requests(decoder.feed(value + b"\n" + LOGIN)), ["bad_json", LOGIN_OBJ], value)

    def test_non_object_split_across_reads(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"[1, {")), [])
        self.assertEqual(requests(decoder.feed(b'"a": 2}]' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_top_level_string_split_across_reads(self) -> None:
        # Found by the stateful test: a lone quote, then an object, made
        # the scanner close a top-level string and look for a container.
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'"')), [])
        self.assertEqual(requests(decoder.feed(LOGIN)), ["bad_json"])
        self.assertEqual(requests(decoder.feed(b"\n" + LOGIN)), [LOGIN_OBJ])
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'"ab')), [])
        self.assertEqual(requests(decoder.feed(b'c" ' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_prefixes_of_valid_json_wait(self) -> None:
        for prefix in (b"{", b'{"re', b'{"a": tr', b'{"a": -', b'{"a": 1.', b'{"a": 1e', b'{"a": 1e+', b'{"a": "\\', b'{"a": "\\u00', b"[", b"  {  "):
            decoder = StreamDecoder()
            self.assertEqual(decoder.feed(prefix), [], prefix)

    def test_impossible_prefixes_fail_at_once(self) -> None:
        for text in (b"}", b'{"a" 1', b'{"a": tx', b'{"a": 01', b'{"a": 1.e', b'{"a": "\\x', b'{"a": "\\u00g', b"{'a': 1", b"{a", b'{"a": NaN', b"\x0b"):
            decoder = StreamDecoder()
            self.assertEqual(requests(decoder.feed(text)), ["bad_json"], text)

    def test_raw_control_character_in_string(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'{"a": "x\ty"}\n' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_nan_and_infinity_are_not_json(self) -> None:
        for value in (b"NaN", b"Infinity", b"-Infinity"):
            decoder = StreamDecoder()
            self.assertEqual(requests(decoder.feed(b'{"content": ' + value + b"}\n")), ["bad_json"], value)

    def test_invalid_utf8_is_bad_json(self) -> None:
        for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"):
            decoder = StreamDecoder()
            stream = b'{"request": "msg", "content": "a' + bad + b'b"}\n' + LOGIN
            self.assertEqual(requests(decoder.feed(stream)), ["bad_json", LOGIN_OBJ], bad)

    def test_invalid_utf8_split_across_reads(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b'{"content": "a\xc3')), [])
        self.assertEqual(requests(decoder.feed(b'(b"}\n' + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_lone_surrogate_escapes_become_replacement_characters(self) -> None:
        decoder = StreamDecoder()
        [event] = decoder.feed(b'{"request": "msg", "content": "a\\ud800b\\udfffc", "\\udc00": 1}')
        self.assertEqual(event.request, {"request": "msg", "content": "a\ufffdb\ufffdc", "\ufffd": 1})

    def test_surrogate_pairs_stay_whole(self) -> None:
        decoder = StreamDecoder()
        [event] = decoder.feed(b'{"content": "\\ud83d\\ude00"}')
        self.assertEqual(event.request, {"content": "\U0001f600"})

    def test_deep_nesting_is_bad_json(self) -> None:
        deep = b'{"a": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}"
        self.assertEqual(requests(StreamDecoder().feed(deep + b"\n" + LOGIN)), ["bad_json", LOGIN_OBJ])
        # The same input trickling in must not be accepted either.
        decoder = StreamDecoder()
        self.assertIn("bad_json", feed_all(decoder, [deep[i : i + 7] for i in range(0, len(deep), 7)]))

    def test_nesting_within_the_limit_is_accepted(self) -> None:
        value = {"request": "names", "content": json.loads("[" * 10 + "]" * 10)}
        self.assertEqual(requests(StreamDecoder().feed(json.dumps(value).encode())), [value])

    def test_very_deep_nesting_within_size_limit(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"[" * 8000 + b"]" * 8000 + b"\n" + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_huge_integer_is_bad_json(self) -> None:
        decoder = StreamDecoder()
        huge = b'{"request": "msg", "content": ' + b"9" * 5000 + b"}\n"
        self.assertEqual(requests(decoder.feed(huge + LOGIN)), ["bad_json", LOGIN_OBJ])

    def test_huge_float_parses(self) -> None:
        [event] = StreamDecoder().feed(b'{"content": 1e999}')
        self.assertEqual(event.request, {"content": float("inf")})

    def test_nul_bytes(self) -> None:
        decoder = StreamDecoder()
        self.assertEqual(requests(decoder.feed(b"\x00\x00\n" + LOGIN)), ["bad_json", LOGIN_OBJ])
        self.assertEqual(requests(decoder.feed(b'{"content": "a\x00"}\n')), ["bad_json"])
        self.assertEqual(requests(decoder.feed(b'{"content": "a\\u0000"}\n')), [{"content": "a\x00"}])


class DecoderSizeLimitTests(SynchronousTestCase):
    """``too_long`` for a request over the limit, complete or not."""

    def test_complete_request_over_limit(self) -> None:
        decoder = StreamDecoder(max_request=100)
        body = json.dumps({"request": "msg", "content": "x" * 100}).encode()
        self.assertEqual(requests(decoder.feed(LOGIN + body + LOGIN)), [LOGIN_OBJ, "too_long"])
        self.assertTrue(decoder.stopped)
        self.assertEqual(decoder.feed(LOGIN), [])

    def test_request_exactly_at_limit(self) -> None:
        body = json.dumps({"content": "x" * 50}).encode()
        decoder = StreamDecoder(max_request=len(body))
        self.assertEqual(requests(decoder.feed(body)), [{"content": "x" * 50}])

    def test_limit_counts_encoded_bytes(self) -> None:
        body = json.dumps({"content": "\u00e9" * 40}, ensure_ascii=False).encode()
        self.assertGreater(len(body), 60)
        decoder = StreamDecoder(max_request=60)
        self.assertEqual(requests(decoder.feed(body)), ["too_long"])

    def test_incomplete_request_over_limit(self) -> None:
        decoder = StreamDecoder(max_request=100)
        self.assertEqual(decoder.feed(b'{"request": "msg", "content": "' + b"x" * 60), [])
        self.assertEqual(requests(decoder.feed(b"x" * 60)), ["too_long"])

    def test_trickled_request_over_limit(self) -> None:
        decoder = StreamDecoder(max_request=16384)
        decoder.feed(b'{"content": "')
        result: list[object] = []
        for _ in range(20000):
            result.extend(requests(decoder.feed(b"x")))
            if result:
                break
        self.assertEqual(result, ["too_long"])
        self.assertLessEqual(decoder.buffered, 0)

    def test_whitespace_does_not_count(self) -> None:
        decoder = StreamDecoder(max_request=len(LOGIN))
        self.assertEqual(requests(decoder.feed(b" " * 500 + LOGIN + b"\n" * 500 + LOGIN)), [LOGIN_OBJ] * 2)


class DecoderPropertyTests(SynchronousTestCase):
    """Any bytes in, no exception out; every complete object answered."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=12))
    def test_any_bytes_no_exception(self, chunks: list[bytes]) -> None:
        decoder = StreamDecoder(max_request=256)
        for chunk in chunks:
            for event in decoder.feed(chunk):
                self.assertTrue((event.request is None) != (event.error is None))
                if event.request is not None:
                    self.assertIsInstance(event.request, dict)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)), max_size=4),
            min_size=1,
            max_size=6,
        ),
        st.lists(st.integers(min_value=0, max_value=400), max_size=6),
        st.booleans(),
    )
    def test_every_complete_object_decoded(self, objects: list[dict[str, object]], cuts: list[int], newlines: bool) -> None:
        separator = b"\n" if newlines else b""
        stream = b"".join(json.dumps(obj).encode() + separator for obj in objects)
        bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
        expected = [{k: v.replace("\ud800", "") if isinstance(v, str) else v for k, v in obj.items()} for obj in objects]
        self.assertEqual(feed_all(StreamDecoder(), chunks), expected)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(list(b"}]:,xyz!@#\x00")), st.binary(max_size=40), st.booleans())
    def test_resync_after_garbage(self, first: int, rest: bytes, same_read: bool) -> None:
        garbage = bytes([first]) + rest.replace(b"{", b"").replace(b"\n", b"")
        decoder = StreamDecoder()
        if same_read:
            result = requests(decoder.feed(garbage + b"\n" + LOGIN))
        else:
            result = requests(decoder.feed(garbage)) + requests(decoder.feed(b"\n" + LOGIN))
        self.assertEqual(result, ["bad_json", LOGIN_OBJ])


_TOKENS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\n", b"\\", b"u", b"d8", b"0", b"1", b"-", b".", b"e",
           b"true", b"x", b"\xff", b"\xc3", b"\xa9", b'"a"', b'{"a": 1}', LOGIN, b"\t", b"\x01",
           b"[" * 66, b"]" * 66, b'{"a": ' * 33, b"}" * 33]


class DecoderSplitPropertyTests(SynchronousTestCase):
    """However a stream is split into reads, it yields the same requests."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(_TOKENS), max_size=30), st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
    def test_requests_do_not_depend_on_the_reads(self, tokens: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(tokens)
        bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]

        def objects(parts: list[bytes]) -> list[object]:
            decoder = StreamDecoder(max_request=1 << 20)
            return [r for part in parts for r in requests(decoder.feed(part)) if r != "bad_json"]

        self.assertEqual(objects(chunks), objects([stream]))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from(_TOKENS + [b"{{{", b"x{", b"{ \n", b"{\t{", b" " * 70, b"{" + b" " * 70]), max_size=30),
        st.lists(st.integers(min_value=0, max_value=4000), max_size=4),
        st.sampled_from([16384, 64, 63, 20]),
    )
    def test_garbage_shortcut_changes_nothing(self, tokens: list[bytes], cuts: list[int], max_request: int) -> None:
        # The one-step skip of garbage runs (after a read's first error)
        # must give exactly the events of judging each value in turn.
        stream = b"".join(tokens)
        bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]

        def events(parts: list[bytes]) -> list[list[Decoded]]:
            decoder = StreamDecoder(max_request=max_request)
            return [decoder.feed(part) for part in parts]

        with mock.patch.object(framing, "_GARBAGE_RUN", re.compile("(?!)")):
            step_by_step = events(chunks)
        self.assertEqual(events(chunks), step_by_step)


class LinesOutputTests(SynchronousTestCase):
    def test_each_response_is_a_line(self) -> None:
        written: list[bytes] = []
        output = LinesOutput(written.append)
        output.send(b'{"a": 1}')
        output.send(b'{"b": 2}')
        self.assertEqual(written, [b'{"a": 1}\n', b'{"b": 2}\n'])
        self.assertEqual(output.queued_bytes, 0)


class ClassicOutputTests(SynchronousTestCase):
    """Bare objects, one per write, at least ``pace`` apart, none dropped."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.written: list[bytes] = []
        self.output = ClassicOutput(self.written.append, self.clock, 0.025)

    def test_first_response_written_at_once(self) -> None:
        self.output.send(b'{"a": 1}')
        self.assertEqual(self.written, [b'{"a": 1}'])

    def test_queued_responses_are_paced(self) -> None:
        for i in range(3):
            self.output.send(b'{"n": %d}' % i)
        self.assertEqual(self.written, [b'{"n": 0}'])
        self.assertEqual(self.output.queued_bytes, 16)
        self.clock.advance(0.024)
        self.assertEqual(len(self.written), 1)
        self.clock.advance(0.001)
        self.assertEqual(self.written, [b'{"n": 0}', b'{"n": 1}'])
        self.clock.advance(0.025)
        self.assertEqual(self.written, [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}'])
        self.assertEqual(self.output.queued_bytes, 0)

    def test_send_after_quiet_period_is_immediate(self) -> None:
        self.output.send(b"{}")
        self.clock.advance(1)
        self.output.send(b'{"x": 1}')
        self.assertEqual(self.written, [b"{}", b'{"x": 1}'])

    def test_send_soon_after_waits_for_the_pace(self) -> None:
        self.output.send(b"{}")
        self.clock.advance(0.010)
        self.output.send(b'{"x": 1}')
        self.assertEqual(self.written, [b"{}"])
        self.clock.advance(0.015)
        self.assertEqual(self.written, [b"{}", b'{"x": 1}'])

    def test_when_drained_runs_after_the_queue(self) -> None:
        done: list[int] = []
        self.output.send(b"{}")
        self.output.send(b"{}")
        self.output.when_drained(lambda: done.append(len(self.written)))
        self.assertEqual(done, [])
        self.clock.advance(0.025)
        self.assertEqual(done, [2])

    def test_stop_cancels_the_timer(self) -> None:
        self.output.send(b"{}")
        self.output.send(b"{}")
        self.output.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.output.queued_bytes, 0)

    def test_clock_stepping_back_does_not_hold_responses(self) -> None:
        # Issue 13: a wall clock set back an hour held the next response
        # for an hour; it now waits at most ``pace``.
        self.output.send(b"{}")
        self.clock.rightNow -= 3600
        self.output.send(b'{"x": 1}')
        self.clock.advance(0.025)
        self.assertEqual(self.written, [b"{}", b'{"x": 1}'])
        self.output.send(b'{"y": 2}')
        self.clock.advance(0.024)
        self.assertEqual(len(self.written), 2)
        self.clock.advance(0.001)
        self.assertEqual(self.written[-1], b'{"y": 2}')

    def test_clock_stepping_back_while_queued(self) -> None:
        self.output.send(b"{}")
        self.output.send(b'{"x": 1}')
        self.clock.rightNow -= 3600
        self.clock.advance(0.025)  # the timer was set before the step: an hour out
        self.output.send(b'{"y": 2}')  # the next response pulls it back
        self.clock.advance(0.025)
        self.assertEqual(self.written, [b"{}", b'{"x": 1}'])
        self.clock.advance(0.025)
        self.assertEqual(self.written, [b"{}", b'{"x": 1}', b'{"y": 2}'])

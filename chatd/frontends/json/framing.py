"""Framing: the incremental request decoder and the two output framings.

Input (PROTOCOL.md section 1): a stream of JSON objects, bare and
concatenated (classic clients) or one per line (modern clients), split
anywhere across reads.  :class:`StreamDecoder` turns bytes into
:class:`Decoded` events: a request object, or an error code.

The common case - one or more complete objects per read - is parsed by
the C-accelerated ``json`` scanner.  Only when that fails does
:class:`_PrefixScanner` look at the text, character by character, to
tell "needs more bytes" from "can never become valid", and it keeps its
state across reads so a request trickling in byte by byte costs linear
time, not quadratic.  The scanner is the judge: a value is rejected at
the first character where it cannot become a valid request (bad JSON,
an invalid UTF-8 byte, nesting past :data:`MAX_DEPTH`) and decoding
resumes from there, however the value was split into reads.  Decoding
costs time linear in the input, whatever the bytes (see
:class:`StreamDecoder`).

Output: :class:`LinesOutput` writes each response as one line;
:class:`ClassicOutput` writes bare objects one per write, paced.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chatd.messages import BAD_JSON, TOO_LONG

LINES = "lines"
CLASSIC = "classic"

#: Depth of nesting accepted in a request; deeper input is ``bad_json``.
MAX_DEPTH = 64

_WHITESPACE = re.compile(r"[ \t\r\n]*")
_LINE_GAP = re.compile(r"[ \t\r]*")
_RESYNC = re.compile(r"[\n{]")
# Bytes that were not valid UTF-8 arrive as lone low surrogates
# (surrogateescape); in the source text they can only mean invalid input.
_RAW_INVALID = re.compile("[\udc80-\udcff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING_RUN = re.compile('[^"\\\\\x00-\x1f\udc80-\udcff]*')
_DIGITS = re.compile("[0-9]*")
#: What ``json`` reads as a number at the start of a value (the longest
#: such prefix): a top-level number is matched with this, never parsed.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_NUMBER_START = frozenset("-0123456789")
# First characters for which the C parser is worth trying.
_PARSE_START = frozenset('{["tfn')
_VALUE_START = _PARSE_START | _NUMBER_START
# A run of values that fail at once, each with the resynchronisation
# after it: a character that starts no value, or ``{`` with no key or
# ``}`` after it (whitespace allowed: too little to be ``too_long``),
# then up to the newline (consumed) or ``{`` that ends the skip.  Once a
# read has had its ``bad_json`` they need no event: skipped in one match.
# Possessive (``++``, ``*+``): each run is final once matched, so the
# engine keeps no backtracking state per run; a plain ``+`` over 64 KB of
# ``{`` held some 25 MB of it for the length of the match.
_GARBAGE_RUN = re.compile(
    r"""(?:[ \t\r\n]*+
           (?:[^ \t\r\n{\["tfn0-9-] | \{[ \t\r\n]{0,62}(?=[^ \t\r\n"}]))
           [^\n{]*+(?:\n|(?=\{))
        )++""",
    re.VERBOSE,
)
#: The longest value :data:`_GARBAGE_RUN` skips, in bytes.
_GARBAGE_UNIT = 63
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('"\\/bfnrtu')
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}

# The number grammar as a small automaton: (state, character class) ->
# next state; a pair missing from the table is invalid input.  Keeping a
# state instead of the digits read keeps a long number linear.
_NUMBER_CLASS = {"0": "0", ".": ".", "e": "e", "E": "e", "+": "+", "-": "+"}
_NUMBER_CLASS.update(dict.fromkeys("123456789", "1"))
_NUMBER_NEXT = {
    ("sign", "0"): "zero",
    ("sign", "1"): "int",
    ("zero", "."): "dot",
    ("zero", "e"): "exp_mark",
    ("int", "0"): "int",
    ("int", "1"): "int",
    ("int", "."): "dot",
    ("int", "e"): "exp_mark",
    ("dot", "0"): "frac",
    ("dot", "1"): "frac",
    ("frac", "0"): "frac",
    ("frac", "1"): "frac",
    ("frac", "e"): "exp_mark",
    ("exp_mark", "+"): "exp_sign",
    ("exp_mark", "0"): "exp",
    ("exp_mark", "1"): "exp",
    ("exp_sign", "0"): "exp",
    ("exp_sign", "1"): "exp",
    ("exp", "0"): "exp",
    ("exp", "1"): "exp",
}
_NUMBER_COMPLETE = frozenset({"zero", "int", "frac", "exp"})
_NUMBER_DIGIT_RUN = frozenset({"int", "frac", "exp"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class Decoded:
    """One event from the decoder: a request object or an error code.

    ``newline_follows`` says whether a ``\\n`` came right after the value
    (spaces, tabs and ``\\r`` aside) in the same read: the signal for
    lines framing.
    """

    request: dict[str, Any] | None
    error: str | None
    newline_follows: bool


class _PrefixScanner:
    """Checks whether text is a prefix of one JSON value, incrementally.

    :meth:`scan` reads from a position to the end of the text it is given
    and returns ``("more", len(text))``, ``("complete", end)`` or
    ``("invalid", position)``, positions being offsets in that text.
    After ``"more"``, the next call continues the same value with the
    *next* piece of text (not the same text again), so every character
    is examined once.  Nesting is an explicit stack, never recursion;
    deeper than :data:`MAX_DEPTH` is invalid.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []  # "{" or "["
        self.state = "value"
        self.literal = ""  # the rest of true/false/null still expected
        self.hex_left = 0
        self.number = ""  # state of the number automaton
        self._in_key = False

    def scan(self, text: str, pos: int = 0) -> tuple[str, int]:
        """Continue the value over ``text`` from ``pos``."""
        n = len(text)
        while pos < n:
            state = self.state
            ch = text[pos]
            if state == "string":
                run = _STRING_RUN.match(text, pos)
                assert run is not None
                pos = run.end()
                if pos >= n:
                    break
                ch = text[pos]
                if ch == '"':
                    self.state = "after_key" if self._in_key else "after_value"
                    if not self._in_key and not self.stack:
                        return ("complete", pos + 1)  # a whole top-level string
                elif ch == "\\":
                    self.state = "escape"
                else:
                    return ("invalid", pos)
                pos += 1
                continue
            if state == "escape":
                if ch not in _ESCAPES:
                    return ("invalid", pos)
                if ch == "u":
                    self.state, self.hex_left = "unicode", 4
                else:
                    self.state = "string"
                pos += 1
                continue
            if state == "unicode":
                if ch not in _HEX:
                    return ("invalid", pos)
                self.hex_left -= 1
                if self.hex_left == 0:
                    self.state = "string"
                pos += 1
                continue
            if state == "literal":
                if ch != self.literal[0]:
                    return ("invalid", pos)
                self.literal = self.literal[1:]
                pos += 1
                if not self.literal:
                    self.state = "after_value"
                    if not self.stack:
                        return ("complete", pos)
                continue
            if state == "number":
                kind = _NUMBER_CLASS.get(ch)
                if kind is not None:
                    step = _NUMBER_NEXT.get((self.number, kind))
                    if step is None:
                        return ("invalid", pos)
                    self.number = step
                    pos += 1
                    if step in _NUMBER_DIGIT_RUN:
                        pos = _DIGITS.match(text, pos).end()  # type: ignore[union-attr]  # "[0-9]*" always matches
                    continue
                if self.number not in _NUMBER_COMPLETE:
                    return ("invalid", pos)
                self.state = "after_value"
                if not self.stack:
                    return ("complete", pos)
                continue
            if ch in " \t\r\n":
                pos += 1
                continue
            if state == "value" or state == "array_first":
                if state == "array_first" and ch == "]":
                    self.stack.pop()
                    pos += 1
                    if self._closed():
                        return ("complete", pos)
                    continue
                if ch == "{" or ch == "[":
                    if len(self.stack) >= MAX_DEPTH:
                        return ("invalid", pos)
                    self.stack.append(ch)
                    self.state = "key_first" if ch == "{" else "array_first"
                elif ch == '"':
                    self.state, self._in_key = "string", False
                elif ch in _NUMBER_START:
                    self.state = "number"
                    self.number = "sign" if ch == "-" else "zero" if ch == "0" else "int"
                    if self.number == "int":
                        pos = _DIGITS.match(text, pos + 1).end() - 1  # type: ignore[union-attr]  # "[0-9]*" always matches
                elif ch in _LITERALS:
                    self.state, self.literal = "literal", _LITERALS[ch]
                else:
                    return ("invalid", pos)
                pos += 1
                continue
            if state == "key_first" or state == "key":
                if state == "key_first" and ch == "}":
                    self.stack.pop()
                    pos += 1
                    if self._closed():
                        return ("complete", pos)
                    continue
                if ch != '"':
                    return ("invalid", pos)
                self.state, self._in_key = "string", True
                pos += 1
                continue
            if state == "after_key":
                if ch != ":":
                    return ("invalid", pos)
                self.state = "value"
                pos += 1
                continue
            # state == "after_value", inside a container
            top = self.stack[-1]
            if ch == ",":
                self.state = "key" if top == "{" else "value"
                pos += 1
                continue
            if (top == "{" and ch == "}") or (top == "[" and ch == "]"):
                self.stack.pop()
                pos += 1
                if self._closed():
                    return ("complete", pos)
                continue
            return ("invalid", pos)
        return ("more", n)

    def _closed(self) -> bool:
        self.state = "after_value"
        return not self.stack


def _replace_lone_surrogates(value: Any) -> Any:
    """Replace lone surrogates (from ``\\ud800``-style escapes) by U+FFFD.

    Only called on values the scanner or the depth check has bounded to
    :data:`MAX_DEPTH` levels, so the recursion is shallow.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    return value


def _encoded_size(text: str, start: int, end: int) -> int:
    """Size in UTF-8 (invalid bytes counted as the one byte they were)."""
    if text.isascii():  # O(1) in CPython: a flag of the string
        return end - start
    return len(text[start:end].encode("utf-8", "surrogateescape"))


#: A verdict on the value at a position: ``(kind, request, end)`` with
#: kind "object" (request set), "other" (a complete value that is not a
#: usable object), "invalid" (end is where it went wrong) or "more".
_Verdict = tuple[str, Any, int]


class StreamDecoder:
    """Turns a byte stream into request objects and decode errors.

    ``max_request`` is the limit in encoded bytes for one value; a value
    over it, complete or not, yields ``too_long`` and the decoder stops
    (the connection is to be closed).

    Cost is linear in the input whatever the bytes (issue 13): each read
    is worked through with an offset, never re-sliced per value; a value
    split across reads is held as a list of pieces and scanned once; the
    C parser is tried only where a failure is cheap - it is given a
    position (``raw_decode(text, idx)``), and as the error it raises
    counts the lines before that position, it is not tried again in a
    read after it has failed once in it.
    """

    def __init__(self, max_request: int = 16384) -> None:
        self.max_request = max_request
        self.stopped = False
        self._text = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._skipping = False  # discarding input after an error
        # A value that is still incomplete at the end of a read.
        self._scanner: _PrefixScanner | None = None
        self._held: list[str] = []
        self._held_chars = 0
        self._held_bytes = 0
        # The read being worked through.
        self._buf = ""
        self._pos = 0
        self._events: list[Decoded] = []
        self._errored = False
        self._parse_first = True

    @property
    def buffered(self) -> int:
        """Characters held while waiting for the rest of a value."""
        return self._held_chars

    def feed(self, data: bytes) -> list[Decoded]:
        """Decode one received chunk; at most one ``bad_json`` per chunk."""
        if self.stopped:
            return []
        self._buf, self._pos = self._text.decode(data), 0
        self._events, self._errored, self._parse_first = [], False, True
        if self._scanner is None or self._continue_held():
            self._work_through()
        events, self._events, self._buf = self._events, [], ""
        return events

    def _work_through(self) -> None:
        """Decode the values of the current read from ``_pos`` on."""
        buf = self._buf
        while not self.stopped:
            if self._skipping:
                self._resync(self._pos)
                if self._skipping:  # no newline or ``{`` in the rest of the read
                    return
            if self._errored and self.max_request >= _GARBAGE_UNIT:
                garbage = _GARBAGE_RUN.match(buf, self._pos)
                if garbage is not None:
                    self._pos = garbage.end()
            start = self._pos = _WHITESPACE.match(buf, self._pos).end()  # type: ignore[union-attr]  # "...*" always matches
            if start >= len(buf):
                return
            kind, value, end = self._next_value(start)
            if kind == "more":
                self._hold(start)
                return
            if _encoded_size(buf, start, end) > self.max_request:
                self._too_long(_newline_follows(buf, end))
                return
            self._settle(kind, value, end)

    def _next_value(self, start: int) -> _Verdict:
        """Judge the value that begins at ``start`` in the current read."""
        buf = self._buf
        first = buf[start]
        if first in _NUMBER_START:
            # What json would read there; the scanner would wait for
            # more digits, json does not.  A number is never a request.
            number = _NUMBER.match(buf, start)
            if number is not None:
                return ("other", None, number.end())
        elif self._parse_first and first in _PARSE_START:
            try:
                value, end = _json_decoder.raw_decode(buf, start)
            except (ValueError, RecursionError):
                # Cost of the error grows with ``start``: not again in
                # this read.  The scanner gives the verdict.
                self._parse_first = False
            else:
                return self._checked(value, buf, start, end)
        stop = _obviously_invalid(buf, start)
        if stop is not None:
            return ("invalid", None, stop)
        scanner = _PrefixScanner()
        verdict, pos = scanner.scan(buf, start)
        if verdict == "more":
            self._scanner = scanner
            return ("more", None, len(buf))
        if verdict == "invalid":
            return ("invalid", None, pos)
        return self._parsed(buf, start, pos)

    def _hold(self, start: int) -> None:
        """Keep the incomplete value from ``start`` for the next read."""
        piece = self._buf[start:]
        self._held, self._held_chars = [piece], len(piece)
        self._held_bytes = _encoded_size(piece, 0, len(piece))
        self._pos = len(self._buf)
        if self._held_bytes > self.max_request:
            self._too_long(False)

    def _continue_held(self) -> bool:
        """Go on with the held value; True if the read has more to decode."""
        assert self._scanner is not None
        buf = self._buf
        verdict, end = self._scanner.scan(buf)
        size = self._held_bytes + _encoded_size(buf, 0, end)
        if verdict == "more":
            self._held.append(buf)
            self._held_chars += len(buf)
            self._held_bytes = size
            if size > self.max_request:
                self._too_long(False)
            return False
        self._scanner = None
        pieces, self._held, self._held_chars = self._held, [], 0
        if size > self.max_request:
            self._too_long(_newline_follows(buf, end))
            return False
        if verdict == "invalid":
            self._settle("invalid", None, end)
        else:
            text = "".join([*pieces, buf[:end]])
            kind, value, _ = self._parsed(text, 0, len(text))
            self._settle(kind, value, end)
        return not self.stopped

    def _settle(self, kind: str, value: Any, end: int) -> None:
        """Emit the event for a judged value and move past it."""
        if kind == "invalid":
            newline = self._resync(end)
            self._error(newline)
            return
        newline = _newline_follows(self._buf, end)
        self._pos = end
        if kind == "object":
            self._events.append(Decoded(value, None, newline))
        else:
            self._error(newline)

    def _error(self, newline: bool) -> None:
        if not self._errored:
            self._events.append(Decoded(None, BAD_JSON, newline))
            self._errored = True

    @staticmethod
    def _parsed(text: str, start: int, end: int) -> _Verdict:
        """Parse a value the scanner has found complete in ``text[start:end]``."""
        try:
            value, stop = _json_decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            # Valid JSON that Python will not hold (digits past the
            # int limit): consumed whole.
            return ("other", None, end)
        if stop != end or not isinstance(value, dict):
            return ("other", None, end)
        return ("object", _fix_surrogates(value, text, start, end), end)

    @staticmethod
    def _checked(value: Any, text: str, start: int, end: int) -> _Verdict:
        """Vet a value the C parser read from ``text[start:end]``.

        The parser accepts what the scanner does not (invalid UTF-8 in
        strings, nesting past :data:`MAX_DEPTH`); such a value is invalid
        at the scanner's point, as it is when it arrives in pieces.
        """
        suspect = not text.isascii() and _RAW_INVALID.search(text, start, end)
        if suspect or text.count("{", start, end) + text.count("[", start, end) > MAX_DEPTH:
            # Rare: only then is it worth scanning the value.
            verdict, pos = _PrefixScanner().scan(text, start)
            if verdict == "invalid":
                return ("invalid", None, pos)
        if not isinstance(value, dict):
            return ("other", None, end)
        return ("object", _fix_surrogates(value, text, start, end), end)

    def _resync(self, start: int) -> bool:
        """Skip to the next newline or ``{`` at or after ``start``.

        Returns True if a newline was found, False if a ``{`` was or if
        the rest of the read was discarded (skipping goes on in the next
        read: ``_skipping``).
        """
        match = _RESYNC.search(self._buf, start)
        if match is None:
            self._pos = len(self._buf)
            self._skipping = True
            return False
        self._skipping = False
        newline = match.group() == "\n"
        self._pos = match.end() if newline else match.start()
        return newline

    def _too_long(self, newline: bool) -> None:
        self.stopped = True
        self._held, self._held_chars, self._scanner = [], 0, None
        self._events.append(Decoded(None, TOO_LONG, newline))


def _obviously_invalid(text: str, start: int) -> int | None:
    """Where the value at ``start`` fails, for the commonest garbage.

    A character that starts no value, or ``{`` followed by something
    other than a key or ``}``, fails at once: no scanner is built for
    it (the same verdict as the scanner's, found cheaper).
    """
    first = text[start]
    if first not in _VALUE_START:
        return start
    if first == "{":
        after = _WHITESPACE.match(text, start + 1).end()  # type: ignore[union-attr]  # "...*" always matches
        if after < len(text) and text[after] not in '"}':
            return after
    return None


def _fix_surrogates(value: dict[str, Any], text: str, start: int, end: int) -> dict[str, Any]:
    """Lone surrogate escapes in ``text[start:end]`` become U+FFFD in ``value``."""
    if text.find("\\u", start, end) >= 0 and _ESCAPED_SURROGATE.search(text, start, end):
        return cast("dict[str, Any]", _replace_lone_surrogates(value))  # the same shape, strings mended
    return value


def _newline_follows(buf: str, end: int) -> bool:
    gap = _LINE_GAP.match(buf, end).end()  # type: ignore[union-attr]  # "...*" always matches
    return buf[gap : gap + 1] == "\n"


class UnpacedOutput:
    """An output framing that writes every response at once: nothing is
    held back, so there is never anything to drain, drop or hand over."""

    @property
    def queued_bytes(self) -> int:
        """Bytes held back by pacing: none."""
        return 0

    def when_drained(self, action: Callable[[], None]) -> None:
        """Everything sent so far is written already: run ``action`` now."""
        action()

    def stop(self) -> None:
        """Nothing to forget."""

    def take_queue(self) -> list[bytes]:
        """Nothing is ever queued."""
        return []


class LinesOutput(UnpacedOutput):
    """Lines framing: each response is its JSON and ``\\n``."""

    name = LINES

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def send(self, payload: bytes) -> None:
        """Write one encoded response as a line."""
        self._write(payload + b"\n")

    def send_block(self, lines: bytes) -> None:
        """Write several responses already framed as lines, in one write."""
        self._write(lines)


class ClassicOutput:
    """Classic framing: bare objects, one per write, at least ``pace`` apart.

    Responses are queued, never dropped or merged; the clock's
    ``callLater`` releases the next one when the pace allows.
    """

    name = CLASSIC

    def __init__(self, write: Callable[[bytes], None], clock: IReactorTime, pace: float) -> None:
        self._write = write
        self._clock = clock
        self._pace = pace
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._last_write: float | None = None
        self._timer: IDelayedCall | None = None
        self._drained: list[Callable[[], None]] = []

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for their turn to be written."""
        return self._queued_bytes

    def send(self, payload: bytes) -> None:
        """Queue one encoded response; write it now if the pace allows."""
        self._queue.append(payload)
        self._queued_bytes += len(payload)
        if self._clock_stepped_back() and self._timer is not None:
            # Scheduled before the step: it would fire that much later.
            self._timer.reset(self._pace)
        if self._timer is None:
            self._release()

    def when_drained(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the queue has been written out."""
        if self._queue:
            self._drained.append(action)
        else:
            action()

    def take_queue(self) -> list[bytes]:
        """Hand over the responses still queued and stop (framing changes)."""
        queued = list(self._queue)
        self.stop()
        return queued

    def stop(self) -> None:
        """Drop the queue and cancel the pacing timer."""
        self._queue.clear()
        self._queued_bytes = 0
        self._drained.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _clock_stepped_back(self) -> bool:
        """If the clock went back past the last write, count that write as now.

        Pacing reads the reactor's (wall) clock; a step back of an hour
        would otherwise hold responses for an hour.  After the clamp the
        wait is at most ``pace``.
        """
        now = self._clock.seconds()
        if self._last_write is None or now >= self._last_write:
            return False
        self._last_write = now
        return True

    def _release(self) -> None:
        self._timer = None
        if not self._queue:
            return
        self._clock_stepped_back()
        now = self._clock.seconds()
        # The tolerance keeps float rounding from rescheduling forever.
        if self._last_write is not None and now - self._last_write < self._pace - 1e-6:
            self._timer = self._clock.callLater(self._last_write + self._pace - now, self._release)
            return
        payload = self._queue.popleft()
        self._queued_bytes -= len(payload)
        self._last_write = now
        self._write(payload)
        if self._queue:
            self._timer = self._clock.callLater(self._pace, self._release)
        else:
            actions, self._drained = self._drained, []
            for action in actions:
                action()

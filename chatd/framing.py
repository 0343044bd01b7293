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
time, not quadratic.

Output: :class:`LinesOutput` writes each response as one line;
:class:`ClassicOutput` writes bare objects one per write, paced.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

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
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('"\\/bfnrtu')


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

    :meth:`scan` returns ``("more", len)``, ``("complete", end)`` or
    ``("invalid", position)``.  Positions are offsets in the text given.
    """

    def __init__(self) -> None:
        self.pos = 0
        self.stack: list[str] = []  # "{" or "["
        self.state = "value"
        self.literal = ""  # the rest of true/false/null still expected
        self.hex_left = 0

    def scan(self, text: str) -> tuple[str, int]:
        """Continue over ``text`` (the same text as before, maybe longer)."""
        n = len(text)
        pos = self.pos
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
                        return self._done(pos + 1)  # a whole top-level string
                elif ch == "\\":
                    self.state = "escape"
                else:
                    return self._fail(pos)
                pos += 1
                continue
            if state == "escape":
                if ch not in _ESCAPES:
                    return self._fail(pos)
                if ch == "u":
                    self.state, self.hex_left = "unicode", 4
                else:
                    self.state = "string"
                pos += 1
                continue
            if state == "unicode":
                if ch not in _HEX:
                    return self._fail(pos)
                self.hex_left -= 1
                if self.hex_left == 0:
                    self.state = "string"
                pos += 1
                continue
            if state == "literal":
                if ch != self.literal[0]:
                    return self._fail(pos)
                self.literal = self.literal[1:]
                pos += 1
                if not self.literal:
                    self.state = "after_value"
                    if not self.stack:
                        return self._done(pos)
                continue
            if state == "number":
                if ch in _NUMBER_CHARS:
                    self.number += ch
                    if not _NUMBER_PREFIX.fullmatch(self.number):
                        return self._fail(pos)
                    pos += 1
                    continue
                if not _NUMBER.fullmatch(self.number):
                    return self._fail(pos)
                self.state = "after_value"
                if not self.stack:
                    return self._done(pos)
                continue
            if ch in " \t\r\n":
                pos += 1
                continue
            if state == "value" or state == "array_first":
                if state == "array_first" and ch == "]":
                    self.stack.pop()
                    pos += 1
                    if self._closed():
                        return self._done(pos)
                    continue
                if ch == "{":
                    if len(self.stack) >= MAX_DEPTH:
                        return self._fail(pos)
                    self.stack.append("{")
                    self.state = "key_first"
                elif ch == "[":
                    if len(self.stack) >= MAX_DEPTH:
                        return self._fail(pos)
                    self.stack.append("[")
                    self.state = "array_first"
                elif ch == '"':
                    self.state, self._in_key = "string", False
                elif ch == "-" or ch.isdigit() and ch.isascii():
                    self.state, self.number = "number", ch
                elif ch in "tfn":
                    self.state = "literal"
                    self.literal = {"t": "rue", "f": "alse", "n": "ull"}[ch]
                else:
                    return self._fail(pos)
                pos += 1
                continue
            if state == "key_first" or state == "key":
                if state == "key_first" and ch == "}":
                    self.stack.pop()
                    pos += 1
                    if self._closed():
                        return self._done(pos)
                    continue
                if ch != '"':
                    return self._fail(pos)
                self.state, self._in_key = "string", True
                pos += 1
                continue
            if state == "after_key":
                if ch != ":":
                    return self._fail(pos)
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
                    return self._done(pos)
                continue
            return self._fail(pos)
        self.pos = pos
        return ("more", pos)

    _in_key = False
    number = ""

    def _closed(self) -> bool:
        self.state = "after_value"
        return not self.stack

    def _done(self, pos: int) -> tuple[str, int]:
        self.pos = pos
        return ("complete", pos)

    def _fail(self, pos: int) -> tuple[str, int]:
        self.pos = pos
        return ("invalid", pos)


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_PREFIX = re.compile(
    r"-?(?:(?:0|[1-9][0-9]*)(?:\.|\.[0-9]+(?:[eE][+-]?[0-9]*)?|[eE][+-]?[0-9]*)?)?"
)


def _replace_lone_surrogates(value: Any) -> Any:
    """Replace lone surrogates (from ``\\ud800``-style escapes) by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    return value


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogateescape"))


class StreamDecoder:
    """Turns a byte stream into request objects and decode errors.

    ``max_request`` is the limit in encoded bytes for one value; a value
    over it, complete or not, yields ``too_long`` and the decoder stops
    (the connection is to be closed).
    """

    def __init__(self, max_request: int = 16384) -> None:
        self.max_request = max_request
        self.stopped = False
        self._text = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._buf = ""
        self._scanner: _PrefixScanner | None = None
        self._skipping = False  # discarding input after an error

    @property
    def buffered(self) -> int:
        """Characters held while waiting for the rest of a value."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Decoded]:
        """Decode one received chunk; at most one ``bad_json`` per chunk."""
        if self.stopped:
            return []
        events: list[Decoded] = []
        self._buf += self._text.decode(data)
        errored = False
        while True:
            if self._skipping:
                if not self._resync(0):
                    break
            buf = self._buf = self._buf[_WHITESPACE.match(self._buf).end():]  # type: ignore[union-attr]
            if not buf:
                break
            kind, value, end = self._next_value(buf)
            if kind == "more":
                if _utf8_size(buf) > self.max_request:
                    return self._too_long(events)
                break
            if _utf8_size(buf[:end]) > self.max_request:
                return self._too_long(events, _newline_follows(buf, end))
            if kind == "invalid":
                newline = self._resync(end)
                if not errored:
                    events.append(Decoded(None, BAD_JSON, newline))
                    errored = True
                continue
            newline = _newline_follows(buf, end)
            self._buf = buf[end:]
            if kind == "object":
                events.append(Decoded(value, None, newline))
            elif not errored:
                events.append(Decoded(None, BAD_JSON, newline))
                errored = True
        return events

    def _next_value(self, buf: str) -> tuple[str, Any, int]:
        """Find the value at the start of ``buf``.

        Returns ``("object", obj, end)``, ``("other", None, end)`` for a
        complete value that is not a usable object, ``("invalid", None,
        pos)`` or ``("more", None, 0)``.
        """
        if self._scanner is None:
            try:
                value, end = _json_decoder.raw_decode(buf)
            except (ValueError, RecursionError):
                self._scanner = _PrefixScanner()
            else:
                return self._checked(value, buf, end)
        verdict, pos = self._scanner.scan(buf)
        if verdict == "more":
            return ("more", None, 0)
        self._scanner = None
        if verdict == "invalid":
            return ("invalid", None, pos)
        try:
            value, end = _json_decoder.raw_decode(buf[:pos])
        except (ValueError, RecursionError):
            # Valid JSON that Python will not hold (digits past the
            # int limit, nesting past the recursion limit): consumed whole.
            return ("other", None, pos)
        return self._checked(value, buf, end)

    @staticmethod
    def _checked(value: Any, buf: str, end: int) -> tuple[str, Any, int]:
        source = buf[:end]
        if not isinstance(value, dict):
            return ("other", None, end)
        if not source.isascii():
            if _RAW_INVALID.search(source):
                return ("other", None, end)
        if source.count("{") + source.count("[") > MAX_DEPTH:
            # Rare: only then is it worth scanning for the nesting depth.
            if _PrefixScanner().scan(source)[0] != "complete":
                return ("other", None, end)
        if "\\u" in source and _ESCAPED_SURROGATE.search(source):
            value = _replace_lone_surrogates(value)
        return ("object", value, end)

    def _resync(self, start: int) -> bool:
        """Discard up to the next newline or ``{`` at or after ``start``.

        Returns True if one was found (input may follow), False if the
        whole buffer was discarded and skipping goes on in the next read.
        """
        match = _RESYNC.search(self._buf, start)
        if match is None:
            self._buf = ""
            self._skipping = True
            return False
        self._skipping = False
        newline = match.group() == "\n"
        self._buf = self._buf[match.end() if newline else match.start():]
        return newline

    def _too_long(self, events: list[Decoded], newline: bool = False) -> list[Decoded]:
        self.stopped = True
        self._buf = ""
        self._scanner = None
        events.append(Decoded(None, TOO_LONG, newline))
        return events


def _newline_follows(buf: str, end: int) -> bool:
    gap = _LINE_GAP.match(buf, end).end()  # type: ignore[union-attr]
    return buf[gap : gap + 1] == "\n"


class LinesOutput:
    """Lines framing: each response is its JSON and ``\\n``."""

    name = LINES

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def send(self, payload: bytes, line: bytes | None = None) -> None:
        """Write one encoded response as a line (``line`` if pre-built)."""
        self._write(line if line is not None else payload + b"\n")

    def send_block(self, lines: bytes) -> None:
        """Write several responses already framed as lines, in one write."""
        self._write(lines)

    @property
    def queued_bytes(self) -> int:
        """Bytes held back by pacing: none in lines framing."""
        return 0

    def when_drained(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything sent so far has been written."""
        action()

    def stop(self) -> None:
        """Forget anything queued (the connection is gone)."""

    def take_queue(self) -> list[bytes]:
        """Nothing is ever queued in lines framing."""
        return []


class ClassicOutput:
    """Classic framing: bare objects, one per write, at least ``pace`` apart.

    Responses are queued, never dropped or merged; the clock's
    ``callLater`` releases the next one when the pace allows.
    """

    name = CLASSIC

    def __init__(self, write: Callable[[bytes], None], clock: Any, pace: float) -> None:
        self._write = write
        self._clock = clock
        self._pace = pace
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._last_write: float | None = None
        self._timer: Any = None
        self._drained: list[Callable[[], None]] = []

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for their turn to be written."""
        return self._queued_bytes

    def send(self, payload: bytes, line: bytes | None = None) -> None:
        """Queue one encoded response; write it now if the pace allows."""
        self._queue.append(payload)
        self._queued_bytes += len(payload)
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

    def _release(self) -> None:
        self._timer = None
        if not self._queue:
            return
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

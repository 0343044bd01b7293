"""The decoder's cost is linear in its input, whatever the bytes (issue 13).

No wall clock: a :class:`WorkMeter` counts the characters the decoder's
primitives go over - string slices, concatenations, encodes and searches
on the text it works on (a ``str`` subclass stands in for it), the text
the C JSON parser reads, the text the prefix scanner walks and the text
each regular expression covers.  Quadratic behaviour (re-slicing the
buffer per value, re-parsing a long prefix per position, an error that
counts the lines before a far position...) shows up as work that grows
fourfold when the input doubles.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from typing import Any, Callable, SupportsIndex

from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.json import framing
from chatd.frontends.json.framing import StreamDecoder

LOGIN = b'{"request": "login", "content": "bob"}'


class WorkMeter:
    """A running total of characters gone over; see the module docstring."""

    def __init__(self) -> None:
        self.work = 0

    def add(self, amount: int) -> None:
        self.work += max(amount, 0) + 1  # every call costs something


class _Metered(str):
    """Text whose copying and searching methods report to a meter."""

    meter: WorkMeter

    def _wrap(self, text: str) -> _Metered:
        result = _Metered(text)
        result.meter = self.meter
        self.meter.add(len(text))
        return result

    def __getitem__(self, key: SupportsIndex | slice) -> str:
        result = str.__getitem__(self, key)
        return self._wrap(result) if isinstance(key, slice) else result

    def __add__(self, other: str) -> _Metered:
        return self._wrap(str.__add__(self, other))

    def __radd__(self, other: str) -> _Metered:
        return self._wrap(str.__add__(other, self))

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        self.meter.add(len(self))
        return str.encode(self, encoding, errors)

    def _span(self, start: SupportsIndex | None, end: SupportsIndex | None) -> int:
        return len(range(*slice(start, end).indices(len(self))))

    def count(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        self.meter.add(self._span(start, end))
        return str.count(self, sub, start, end)

    def find(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        self.meter.add(self._span(start, end))
        return str.find(self, sub, start, end)

    def rfind(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        self.meter.add(self._span(start, end))
        return str.rfind(self, sub, start, end)


class _MeteredDecoder:
    """An incremental UTF-8 decoder handing out :class:`_Metered` text."""

    def __init__(self, meter: WorkMeter, errors: str) -> None:
        self._meter = meter
        self._inner = codecs.getincrementaldecoder("utf-8")(errors)

    def decode(self, data: bytes, final: bool = False) -> str:
        text = _Metered(self._inner.decode(data, final))
        text.meter = self._meter
        self._meter.add(len(text))
        return text


class _MeteredCodecs:
    """Stands in for the ``codecs`` module as the decoder sees it."""

    def __init__(self, meter: WorkMeter) -> None:
        self._meter = meter

    def getincrementaldecoder(self, encoding: str) -> Callable[[str], _MeteredDecoder]:
        assert encoding == "utf-8"

        def factory(errors: str = "strict") -> _MeteredDecoder:
            return _MeteredDecoder(self._meter, errors)

        return factory


class _MeteredParser:
    """The JSON parser, counting the text each call reads."""

    def __init__(self, meter: WorkMeter, inner: json.JSONDecoder) -> None:
        self._meter = meter
        self._inner = inner

    def raw_decode(self, text: str, idx: int = 0) -> tuple[Any, int]:
        try:
            value, end = self._inner.raw_decode(text, idx)
        except json.JSONDecodeError as error:
            self._meter.add(error.pos - idx)
            raise
        except (ValueError, RecursionError):
            self._meter.add(len(text) - idx)  # how far it went is unknown: all of it
            raise
        self._meter.add(end - idx)
        return value, end


class _MeteredPattern:
    """A compiled regular expression, counting the text each call covers."""

    def __init__(self, meter: WorkMeter, inner: re.Pattern[str]) -> None:
        self._meter = meter
        self._inner = inner

    def match(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        found = self._inner.match(text, pos, endpos)
        self._meter.add(found.end() - pos if found else 0)
        return found

    def fullmatch(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        self._meter.add(min(endpos, len(text)) - pos)
        return self._inner.fullmatch(text, pos, endpos)

    def search(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        found = self._inner.search(text, pos, endpos)
        self._meter.add((found.end() if found else min(endpos, len(text))) - pos)
        return found

    def sub(self, repl: str, text: str, count: int = 0) -> str:
        self._meter.add(len(text))
        return self._inner.sub(repl, text, count)


def _metered_scan(meter: WorkMeter, scan: Callable[..., tuple[str, int]]) -> Callable[..., tuple[str, int]]:
    """Wrap the prefix scanner's ``scan``: count the text it walks."""

    def wrapper(self: Any, text: str, *rest: int) -> tuple[str, int]:
        start = rest[0] if rest else getattr(self, "pos", 0)
        verdict, pos = scan(self, text, *rest)
        meter.add(pos - start)
        return verdict, pos

    return wrapper


class DecoderCostTests(SynchronousTestCase):
    """Doubling the input at most roughly doubles the decoder's work."""

    def measure(self, chunks: list[bytes], max_request: int) -> int:
        """The work of decoding ``chunks`` with a fresh decoder."""
        meter = WorkMeter()
        patches = [
            (framing, "codecs", _MeteredCodecs(meter)),
            (framing, "_json_decoder", _MeteredParser(meter, framing._json_decoder)),
            (framing._PrefixScanner, "scan", _metered_scan(meter, framing._PrefixScanner.scan)),
        ]
        patches += [(framing, name, _MeteredPattern(meter, value)) for name, value in vars(framing).items() if isinstance(value, re.Pattern)]
        originals = [(target, name, getattr(target, name)) for target, name, _ in patches]
        for target, name, value in patches:
            setattr(target, name, value)
        try:
            decoder = StreamDecoder(max_request)
            for chunk in chunks:
                decoder.feed(chunk)
        finally:
            for target, name, value in originals:
                setattr(target, name, value)
        return meter.work

    def assertLinear(self, make: Callable[[int], list[bytes]], n: int, max_request: int = 1 << 20) -> None:
        """Work for size ``2n`` is at most about twice that for ``n``."""
        small = self.measure(make(n), max_request)
        large = self.measure(make(2 * n), max_request)
        size = sum(map(len, make(2 * n)))
        self.assertLessEqual(large, 2.3 * small + 200, f"work {small} -> {large}: not linear")
        self.assertLessEqual(large, 40 * size, f"work {large} for {size} bytes")

    def test_braces(self) -> None:
        # 60 KB of "{" froze the server 0.85 s.
        self.assertLinear(lambda n: [b"{" * n], 30000)
        self.assertLinear(lambda n: [b"{" * n], 30000, max_request=16384)

    def test_many_small_objects_in_one_read(self) -> None:
        self.assertLinear(lambda n: [b"{}\n" * n], 10000)

    def test_alternating_garbage(self) -> None:
        self.assertLinear(lambda n: [b"x{" * n], 15000)
        self.assertLinear(lambda n: [b"{}{x" * n], 7500, max_request=16384)
        self.assertLinear(lambda n: [b"[x\n" * n], 5000, max_request=16384)

    def test_quotes_and_backslashes(self) -> None:
        self.assertLinear(lambda n: [b'"\\' * n], 15000)
        self.assertLinear(lambda n: [b'"\\\n' * n], 10000)

    def test_deep_nesting(self) -> None:
        self.assertLinear(lambda n: [b'{"a":' * n], 6000)
        self.assertLinear(lambda n: [b"[" * n], 30000)
        self.assertLinear(lambda n: [b"[" * n + b"]" * n], 15000)

    def test_invalid_utf8_before_deep_nesting(self) -> None:
        # The C parser accepts the bad byte and went ~1000 levels deep at
        # each object: 1.8 s for 60 KB.
        self.assertLinear(lambda n: [b'{"a":["\xff",' * n], 2500)

    def test_long_number(self) -> None:
        self.assertLinear(lambda n: [b'{"a": ' + b"1" * n + b"}"], 15000)

    def test_trickled_request(self) -> None:
        def trickle(n: int, filler: bytes) -> list[bytes]:
            data = b'{"request": "msg", "content": "' + filler * n + b'"}'
            return [data[i : i + 1] for i in range(len(data))]

        self.assertLinear(lambda n: trickle(n, b"x"), 8000, max_request=16384)
        self.assertLinear(lambda n: trickle(n, "\u00e9".encode()), 4000, max_request=16384)

    def test_requests_after_garbage_in_many_reads(self) -> None:
        self.assertLinear(lambda n: [b"{x" * 50 + LOGIN + b"\n"] * n, 100)


class DecoderMemoryTests(SynchronousTestCase):
    """Memory, like time, stays proportional to the read: a regular
    expression that backtracks per repetition held ~400 bytes per byte of
    ``{`` garbage (25 MB for one 64 KB read)."""

    def test_garbage_read_allocates_little(self) -> None:
        import tracemalloc

        for garbage in (b"{" * 65536, b"x\n" * 32768, b"xx{" * 21845, b"{ \n" * 21845):
            decoder = StreamDecoder(16384)
            decoder.feed(b"{x\n")  # the read's first bad_json: later runs are skipped in one match
            tracemalloc.start()
            try:
                decoder.feed(garbage)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            self.assertLess(peak, 16 * len(garbage), garbage[:6])

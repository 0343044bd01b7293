"""The terminal client's translator: server responses to printable lines,
typed lines to requests.

:class:`MessageParser` follows the seed's design: a dict from response
type to a ``parse_<type>`` method.  Everything a server sent is made safe
for a terminal before it is returned: control characters (ESC, BEL, CR,
C1 codes, ...) and every invisible or reordering character are shown as
visible escapes, so no one can repaint or retitle another user's terminal
or hide text in a line.  Nothing a server sends makes the parser raise:
malformed responses become error lines.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

#: Kinds of printed line; the client picks a colour for each.
MESSAGE, INFO, ERROR, NOTICE = "message", "info", "error", "notice"

COMMANDS = "/login NAME, /logout, /names, /help, /msg TEXT, /quit"

#: Unicode general categories shown escaped: controls (Cc), format
#: characters (Cf: bidi controls, zero-width spaces and joiners, soft
#: hyphen, BOM, Arabic letter mark, tag characters, ...), surrogates (Cs:
#: a lone one from a JSON ``\ud800`` cannot even be written as UTF-8) and
#: the line and paragraph separators (Zl, Zp).  Whole categories, not a
#: list, so a character nobody thought of is covered too.  The price: the
#: tags of subdivision flags show as escapes too (invisible characters can
#: make two names or texts look the same).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: Kept as they are: tab, newline (indented by :func:`safe`), and the
#: zero-width joiner and non-joiner (U+200D, U+200C), which emoji
#: sequences and Persian and Indic scripts need to be written correctly;
#: they reorder nothing.
_KEPT = frozenset("\t\n\u200c\u200d")

#: Shown as "--:--:--" when a timestamp cannot be read.
NO_TIME = "--:--:--"


def _is_noncharacter(code: int) -> bool:
    # Unicode's 66 noncharacters: U+FDD0..U+FDEF and the last two code
    # points of every plane (U+FFFE, U+FFFF, U+1FFFE, ..., U+10FFFF).
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _unsafe_class(first: int, last: int) -> re.Pattern[str]:
    """A regex class of every code point from ``first`` to ``last`` shown
    as an escape: those of :data:`UNSAFE_CATEGORIES` (but tab and
    newline) and the noncharacters, from the Unicode database."""
    category = unicodedata.category  # a tight loop: over a million code points past U+FFFF
    codes = [code for code in range(first, last + 1) if category(chr(code)) in UNSAFE_CATEGORIES or _is_noncharacter(code)]
    ranges: list[list[int]] = []
    for code in (code for code in codes if chr(code) not in _KEPT):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return re.compile("[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges) + "]")


# Two classes, for speed: one of code points below U+10000 compiles to a
# bitmap (one look-up a character, 10 ms a megabyte); past U+FFFF the
# ranges are tested in turn, so that class (built on first need, 0.1 s)
# only runs over text holding such characters (emoji, tag characters).
_UNSAFE_BMP = _unsafe_class(0, 0xFFFF)
_ASTRAL = re.compile("[\\U00010000-\\U0010ffff]")


@functools.cache
def _unsafe_astral() -> re.Pattern[str]:
    """The class of unsafe code points past U+FFFF, built once."""
    return _unsafe_class(0x10000, 0x10FFFF)


@dataclass(frozen=True)
class Line:
    """One printable line: its kind and its already-safe text."""

    kind: str
    text: str


def safe(text: Any) -> str:
    """``text`` as a string with every unsafe character escaped visibly.

    Newlines stay, indented so a multi-line message cannot pose as a new
    line from someone else.  A value that is not a string is shown as
    JSON (or as ``(unprintable)`` if even that fails, e.g. nested too
    deep to encode).
    """
    text = text if isinstance(text, str) else _dumps(text)
    escaped = _UNSAFE_BMP.sub(_escape, text)
    if _ASTRAL.search(escaped):
        escaped = _unsafe_astral().sub(_escape, escaped)
    return escaped.replace("\n", "\n    ")


def _dumps(value: Any) -> str:
    """``value`` as JSON, never raising (a hostile server controls it)."""
    try:
        return json.dumps(value)
    except (RecursionError, ValueError, TypeError):
        return "(unprintable)"


def _escape(match: re.Match[str]) -> str:
    # A fixed width for each form: \U000e0041 cannot be misread as \ue004 then "1".
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def local_time(timestamp: Any) -> str:
    """A protocol timestamp shown as local ``HH:MM:SS``; ``--:--:--`` if
    it is not a string, not ISO 8601, or out of the range local time can
    show (year 1 or 9999 near a time zone's edge, ...)."""
    if not isinstance(timestamp, str):
        return NO_TIME
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone().strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        # OverflowError: the conversion leaves datetime's years 1..9999;
        # OSError: the platform's localtime() refuses the moment.
        return NO_TIME


class MessageParser:
    """Turns server responses into :class:`Line` objects."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[dict[str, Any]], list[Line]]] = {
            "error": self.parse_error,
            "info": self.parse_info,
            "message": self.parse_message,
            "history": self.parse_history,
            "hello": self.parse_hello,
            "pong": self.parse_pong,
            "presence": self.parse_presence,
        }

    def parse(self, raw: bytes | str) -> list[Line]:
        """Parse one response as received (a JSON text)."""
        try:
            response = json.loads(raw)
        except (ValueError, RecursionError):
            return [Line(ERROR, f"invalid JSON from server: {safe(_shorten(raw))}")]
        return self.parse_response(response)

    def parse_response(self, response: Any) -> list[Line]:
        """Parse one decoded response object."""
        if not isinstance(response, dict):
            return [Line(ERROR, f"unexpected JSON from server: {_shown(response)}")]
        kind = response.get("response")
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return [Line(NOTICE, f"unknown response {_shown(kind)}: {_shown(response)}")]
        return handler(response)

    def parse_error(self, response: dict[str, Any]) -> list[Line]:
        """``error``: its sentence."""
        return [Line(ERROR, safe(response.get("content", "")))]

    def parse_info(self, response: dict[str, Any]) -> list[Line]:
        """``info``: its sentence."""
        return [Line(INFO, safe(response.get("content", "")))]

    def parse_message(self, response: dict[str, Any]) -> list[Line]:
        """``message``: ``[HH:MM:SS] NAME: text`` in local time."""
        when = local_time(response.get("timestamp"))
        sender = safe(response.get("sender", "?"))
        return [Line(MESSAGE, f"[{when}] {sender}: {safe(response.get('content', ''))}")]

    def parse_history(self, response: dict[str, Any]) -> list[Line]:
        """``history``: each entry as a message; entries are JSON strings (v1) or objects (v2)."""
        entries = response.get("content")
        if not isinstance(entries, list):
            return [Line(ERROR, "malformed history from server")]
        lines: list[Line] = []
        for entry in entries:
            lines.extend(self.parse(entry) if isinstance(entry, str) else self.parse_response(entry))
        return lines

    def parse_hello(self, response: dict[str, Any]) -> list[Line]:
        """``hello`` (v2): the server's name and protocol."""
        content = response.get("content")
        server = content.get("server", "?") if isinstance(content, dict) else "?"
        return [Line(NOTICE, f"connected to {safe(server)}")]

    def parse_pong(self, response: dict[str, Any]) -> list[Line]:
        """``pong`` (v2): nothing worth printing."""
        return []

    def parse_presence(self, response: dict[str, Any]) -> list[Line]:
        """``presence`` (v2): who came or went."""
        content = response.get("content")
        if not isinstance(content, dict):
            return [Line(ERROR, "malformed presence from server")]
        return [Line(NOTICE, f"{safe(content.get('user', '?'))} is {safe(content.get('status', '?'))}")]


def _shown(value: Any) -> str:
    """A value from the server, shortened and made safe, for an error line."""
    return safe(_shorten(value if isinstance(value, str) else _dumps(value)))


def _shorten(raw: Any, limit: int = 200) -> str:
    # Cut before decoding: a response can be megabytes long.
    text = raw[: limit * 4].decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text if len(text) <= limit else text[:limit] + "..."


def encode_request(request: str, content: Any = None, **extra: Any) -> bytes:
    """A request as the client sends it: one JSON object per line."""
    obj: dict[str, Any] = {"request": request, "content": content}
    obj.update(extra)
    return json.dumps(obj).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class Command:
    """What a typed line asks for.

    ``action`` is ``"request"`` (send ``request`` with ``content``),
    ``"quit"``, ``"error"`` (print ``content``) or ``"none"``.
    """

    action: str
    request: str = ""
    content: Any = None


def parse_input(line: str) -> Command:
    """Turn one typed line into a :class:`Command`."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return Command("none")
    if line.startswith("//"):
        return Command("request", "msg", line[1:])  # "//x" sends "/x"
    if not line.startswith("/"):
        return Command("request", "msg", line)
    word, _, argument = line[1:].partition(" ")
    word = word.lower()
    argument = argument.strip()
    if word == "quit":
        return Command("quit")
    if word in ("login", "msg"):
        if not argument:
            return Command("error", content=f"/{word} needs {'a NAME' if word == 'login' else 'a TEXT'}. Commands: {COMMANDS}")
        return Command("request", word, argument)
    if word in ("logout", "names", "help"):
        return Command("request", word)
    return Command("error", content=f"Unknown command /{safe(word)}. Commands: {COMMANDS}")

"""The terminal client's translator: server responses to printable lines,
typed lines to requests.

:class:`MessageParser` follows the seed's design: a dict from response
type to a ``parse_<type>`` method.  Everything a server sent is made safe
for a terminal before it is returned: control characters (ESC, BEL, CR,
C1 codes, ...) are shown as visible escapes, so no one can repaint or
retitle another user's terminal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

#: Kinds of printed line; the client picks a colour for each.
MESSAGE, INFO, ERROR, NOTICE = "message", "info", "error", "notice"

COMMANDS = "/login NAME, /logout, /names, /help, /msg TEXT, /quit"

# C0 and C1 controls (but tab and newline), DEL, and the Unicode
# format characters that reorder or hide text (bidi overrides, isolates).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@dataclass(frozen=True)
class Line:
    """One printable line: its kind and its already-safe text."""

    kind: str
    text: str


def safe(text: Any) -> str:
    """``text`` as a string with every unsafe character escaped visibly.

    Newlines stay, indented so a multi-line message cannot pose as a new
    line from someone else.
    """
    text = text if isinstance(text, str) else json.dumps(text)
    escaped = _UNSAFE.sub(lambda match: _escape(match.group()), text)
    return escaped.replace("\n", "\n    ")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def local_time(timestamp: Any) -> str:
    """A protocol timestamp shown as local ``HH:MM:SS``."""
    if not isinstance(timestamp, str):
        return "--:--:--"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "--:--:--"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%H:%M:%S")


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
            return [Line(ERROR, f"unexpected JSON from server: {safe(_shorten(json.dumps(response)))}")]
        kind = response.get("response")
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return [Line(NOTICE, f"unknown response {safe(kind)}: {safe(_shorten(json.dumps(response)))}")]
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


def _shorten(raw: Any, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
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

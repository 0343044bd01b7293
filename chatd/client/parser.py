"""The terminal client's translator: server responses to printable lines,
typed lines to commands.

:class:`MessageParser` follows the seed's design: a dict from response
type to a ``parse_<type>`` method.  It knows the client's current target
(a room, or a name for direct messages) and its own name, so that a
message of the current conversation prints plainly and any other shows
its room (``[#dev] bob: hi``) or its parties (``bob -> alice: hi``).  Everything a server sent is made safe
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

#: The default room: every JSON user is in it from login to logout.
LOBBY = "#lobby"

#: A room name (PROTOCOL.md section 6.2) and a name a ``to`` may give
#: (a JSON username or an IRC nick, section 6.4), matched whole.
ROOM_NAME = re.compile(r"#[A-Za-z0-9_-]{1,48}")
USER_NAME = re.compile(r"[A-Za-z0-9]{1,32}|[A-Za-z_][A-Za-z0-9_-]{0,31}")

#: Every command with what it does, as ``/help`` prints them.
HELP = (
    ("/join #ROOM", "join a room (created if new) and talk in it"),
    ("/part [#ROOM]", "leave a room (by default the current one)"),
    ("/rooms", "list the rooms and their member counts"),
    ("/switch #ROOM", "send plain lines to that room"),
    ("/switch NAME", "send plain lines to NAME, as direct messages"),
    ("/msg NAME TEXT", "send one direct message to NAME (/msg #ROOM TEXT: to a room)"),
    ("/topic [TEXT]", "show the current room's topic, or set it"),
    ("/names [#ROOM]", "who is in the current room (or that room)"),
    ("/login NAME", "log in as NAME"),
    ("/logout", "log out"),
    ("/help", "this list"),
    ("/quit", "log out and exit"),
    ("//TEXT", "send a line that starts with /"),
)

#: The commands in one line, for ``--help`` and error lines.
COMMANDS = "/join #ROOM, /part [#ROOM], /rooms, /switch #ROOM|NAME, /msg NAME TEXT, /topic [TEXT], /names, /login NAME, /logout, /help, /quit"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(name: str) -> str:
    """``name`` for comparing: names and rooms compare case-insensitively,
    ASCII only (PROTOCOL.md section 6)."""
    return name.translate(_ASCII_LOWER)


def target_key(target: str) -> str:
    """The conversation key of a target: a room's folded name, or ``@``
    and a user's folded name (a DM conversation)."""
    return fold(target) if target.startswith("#") else "@" + fold(target)


def conversation(message: dict[str, Any], me: str | None) -> str:
    """The conversation key of a ``message`` response, as :func:`target_key`
    gives it: ``#lobby`` for a message without ``room`` or ``to``, its room,
    or ``@`` and the other party of a DM (``me`` is the client's name)."""
    to, sender = message.get("to"), message.get("sender")
    if isinstance(to, str):
        mine = isinstance(sender, str) and me is not None and fold(sender) == fold(me)
        return "@" + fold(to if mine or not isinstance(sender, str) else sender)
    room = message.get("room")
    return fold(room) if isinstance(room, str) else LOBBY

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
    """Turns server responses into :class:`Line` objects.

    ``target`` is the current target (``#lobby``, another room, or a name
    for DMs) and ``me`` the client's name: the session keeps them up to
    date.  A message of the current target's conversation prints as
    ``[HH:MM:SS] bob: hi``; any other shows where it belongs.
    """

    def __init__(self) -> None:
        self.target = LOBBY
        self.me: str | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], list[Line]]] = {
            "error": self.parse_error,
            "info": self.parse_info,
            "message": self.parse_message,
            "history": self.parse_history,
            "hello": self.parse_hello,
            "pong": self.parse_pong,
            "presence": self.parse_presence,
            "topic": self.parse_topic,
            "invite": self.parse_invite,
            "mode": self.parse_mode,
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
        """``info``: its sentence; a ``join``'s also the room's topic and
        members, a topic read the topic and who set it."""
        room = response.get("room")
        if isinstance(room, str) and "topic" in response and "members" not in response:
            return [Line(INFO, _topic_read(room, response))]
        lines = [Line(INFO, safe(response.get("content", "")))]
        members = response.get("members")
        if isinstance(room, str) and isinstance(members, list):
            topic = response.get("topic")
            if isinstance(topic, str) and topic:
                lines.append(Line(INFO, f"Topic: {safe(topic)}"))
            lines.append(Line(INFO, f"Members: {_members(members, response.get('ops'), response.get('voiced'))}"))
        return lines

    def parse_message(self, response: dict[str, Any]) -> list[Line]:
        """``message``: ``[HH:MM:SS] NAME: text`` in local time, with
        ``[#room] `` before the name, or ``-> NAME`` after it for a DM,
        when not of the current target."""
        when = local_time(response.get("timestamp"))
        sender = safe(response.get("sender", "?"))
        text = safe(response.get("content", ""))
        if conversation(response, self.me) != target_key(self.target):
            to, room = response.get("to"), response.get("room")
            if isinstance(to, str):
                sender = f"{sender} -> {safe(to)}"
            else:
                sender = f"[{safe(room) if isinstance(room, str) else LOBBY}] {sender}"
        if response.get("offline") is True:
            text += " (offline: delivered at their next login)"
        return [Line(MESSAGE, f"[{when}] {sender}: {text}")]

    def parse_history(self, response: dict[str, Any]) -> list[Line]:
        """``history``: each entry as a message; entries are JSON strings (v1)
        or objects (v2).  An entry of a room's history without its own
        ``room`` is taken to be of that room."""
        entries = response.get("content")
        if not isinstance(entries, list):
            return [Line(ERROR, "malformed history from server")]
        room = response.get("room")
        lines: list[Line] = []
        for entry in entries:
            if isinstance(entry, str):
                lines.extend(self.parse(entry))
            else:
                if isinstance(room, str) and isinstance(entry, dict) and "room" not in entry and "to" not in entry:
                    entry = dict(entry, room=room)
                lines.extend(self.parse_response(entry))
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
        """``presence`` (v2): who came or went; in ``#lobby`` that is who
        logged in or out, in another room who joined or left it."""
        content = response.get("content")
        if not isinstance(content, dict):
            return [Line(ERROR, "malformed presence from server")]
        user, status, room = safe(content.get("user", "?")), content.get("status", "?"), content.get("room")
        if not isinstance(room, str) or fold(room) == LOBBY:
            return [Line(NOTICE, f"{user} is {safe(status)}")]
        where = safe(room)
        comment = content.get("comment")
        if status == "online":
            return [Line(NOTICE, f"{user} joined {where}")]
        if status != "offline":
            return [Line(NOTICE, f"{user} is {safe(status)} in {where}")]
        reason = content.get("reason")
        if reason in ("kicked", "banned"):
            text = f"{user} was {reason} from {where} by {safe(content.get('by', '?'))}"
            return [Line(NOTICE, text + (f": {safe(comment)}" if comment else ""))]
        return [Line(NOTICE, f"{user} left {where}" + (f" ({safe(comment)})" if comment else ""))]

    def parse_topic(self, response: dict[str, Any]) -> list[Line]:
        """``topic`` (v2): a room's topic was set or cleared."""
        content = response.get("content")
        if not isinstance(content, dict):
            return [Line(ERROR, "malformed topic from server")]
        who, room, topic = safe(content.get("by", "?")), safe(content.get("room", "?")), content.get("topic")
        if not topic:
            return [Line(NOTICE, f"{who} cleared the topic of {room}")]
        return [Line(NOTICE, f"{who} set the topic of {room}: {safe(topic)}")]

    def parse_invite(self, response: dict[str, Any]) -> list[Line]:
        """``invite`` (v2): someone invites us to a room."""
        content = response.get("content")
        if not isinstance(content, dict):
            return [Line(ERROR, "malformed invite from server")]
        room = safe(content.get("room", "?"))
        return [Line(NOTICE, f"{safe(content.get('by', '?'))} invites you to {room} (/join {room})")]

    def parse_mode(self, response: dict[str, Any]) -> list[Line]:
        """``mode`` (v2): a member's op or voice, or a room's modes, changed."""
        content = response.get("content")
        if not isinstance(content, dict):
            return [Line(ERROR, "malformed mode from server")]
        who, room = safe(content.get("by", "?")), safe(content.get("room", "?"))
        modes = content.get("modes")
        if isinstance(modes, dict):
            changed = ", ".join(f"{safe(flag)} {'on' if value is True else 'off'}" for flag, value in modes.items())
            return [Line(NOTICE, f"{who} set the modes of {room}: {changed}")]
        for flag in ("op", "voice"):
            if flag in content:
                given = content[flag] is True
                target = safe(content.get("user", "?"))
                return [Line(NOTICE, f"{who} {'gave' if given else 'took'} {flag} {'to' if given else 'from'} {target} in {room}")]
        return [Line(NOTICE, f"{who} changed the modes of {room}")]


def _topic_read(room: str, info: dict[str, Any]) -> str:
    """The answer to a topic read, from its keys (the sentence is the
    server's choice; the keys are the protocol's)."""
    topic, by = info.get("topic"), info.get("by")
    if not topic:
        return f"No topic in {safe(room)}"
    setter = f" (set by {safe(by)})" if isinstance(by, str) else ""
    return f"Topic of {safe(room)}: {safe(topic)}{setter}"


def _members(members: list[Any], ops: Any, voiced: Any) -> str:
    """A join's member list: ops marked ``@``, voiced members ``+``."""
    def folded(names: Any) -> set[str]:
        return {fold(name) for name in names if isinstance(name, str)} if isinstance(names, list) else set()

    opped, voices = folded(ops), folded(voiced)
    shown = []
    for member in members:
        mark = ""
        if isinstance(member, str):
            mark = "@" if fold(member) in opped else "+" if fold(member) in voices else ""
        shown.append(mark + safe(member))
    return ", ".join(shown)


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
    ``"switch"`` (make ``content`` the current target; ``None``: show
    it), ``"help"``, ``"quit"``, ``"error"`` (print ``content``) or
    ``"none"``.  The session turns a request into its wire form, since
    some depend on the current target: a ``msg`` goes to ``target`` (a
    room or a name; ``None``: the current target); a ``part``, ``names``
    or ``topic`` whose ``content`` is ``None`` is about the current room.
    For ``topic`` the content is the new topic, ``None`` to read it.
    """

    action: str
    request: str = ""
    content: Any = None
    target: str | None = None


def _room_argument(word: str, argument: str) -> Command | str:
    """The room a command names (``#`` added if left out), or an error."""
    room = argument if argument.startswith("#") else "#" + argument
    if ROOM_NAME.fullmatch(room) is None:
        return Command("error", content=f"/{word}: '{safe(argument)}' is not a room name (# and 1 to 48 letters, digits, _ or -).")
    return room


def _target_argument(word: str, target: str) -> Command | None:
    """An error if ``target`` is neither a room name nor a user name."""
    if target.startswith("#"):
        if ROOM_NAME.fullmatch(target) is None:
            return Command("error", content=f"/{word}: '{safe(target)}' is not a room name (# and 1 to 48 letters, digits, _ or -).")
    elif USER_NAME.fullmatch(target) is None:
        return Command("error", content=f"/{word}: '{safe(target)}' is not a user name.")
    return None


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
    if word == "help":
        return Command("help")
    if word == "login":
        if not argument:
            return Command("error", content=f"/login needs a NAME. Commands: {COMMANDS}")
        return Command("request", "login", argument)
    if word == "msg":
        target, _, text = argument.partition(" ")
        text = text.strip()
        if not target or not text:
            return Command("error", content=f"/msg needs a NAME (or a #ROOM) and a TEXT. Commands: {COMMANDS}")
        return _target_argument(word, target) or Command("request", "msg", text, target=target)
    if word == "switch":
        if not argument:
            return Command("switch")
        return _target_argument(word, argument) or Command("switch", content=argument)
    if word in ("join", "part", "names"):
        if not argument:
            if word == "join":
                return Command("error", content=f"/join needs a #ROOM. Commands: {COMMANDS}")
            return Command("request", word)
        room = _room_argument(word, argument)
        return room if isinstance(room, Command) else Command("request", word, room)
    if word == "topic":
        return Command("request", "topic", argument or None)
    if word in ("logout", "rooms"):
        return Command("request", word)
    return Command("error", content=f"Unknown command /{safe(word)}. Commands: {COMMANDS}")

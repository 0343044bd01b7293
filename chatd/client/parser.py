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
    ("/register NAME", "create the account NAME (asks for its password; does not log in)"),
    ("/login NAME", "log in as NAME (asks for the password if the server has accounts; Enter alone: as a guest)"),
    ("/password", "change your account's password (asks for the current and the new one)"),
    ("/whoami", "who you are logged in as: an account or a guest"),
    ("/logout", "log out"),
    ("/kick NAME [TEXT]", "put NAME out of the current room (room operators)"),
    ("/ban NAME [TIME] [TEXT]", "ban NAME from the current room; TIME like 90, 30s, 10m, 2h, 1d, 1w (none: until /unban)"),
    ("/unban NAME", "lift NAME's ban"),
    ("/mute NAME [TIME]", "stop NAME talking in the current room (none: until /unmute)"),
    ("/unmute NAME", "let NAME talk again"),
    ("/op NAME", "make NAME an operator of the current room"),
    ("/deop NAME", "take NAME's operator status away"),
    ("/voice NAME", "let NAME talk in the current room when it is moderated"),
    ("/devoice NAME", "take NAME's voice away"),
    ("/mode [+FLAG|-FLAG ...]", "show the current room's modes, or set them: invite_only (i), topic_ops (t), moderated (m), secret (s), no_external (n)"),
    ("/invite NAME", "invite NAME to the current room"),
    ("/kick #ROOM NAME ...", "each of /kick to /invite acts on #ROOM when it comes first"),
    ("/help", "this list"),
    ("/quit", "log out and exit"),
    ("//TEXT", "send a line that starts with /"),
)

#: The commands in one line, for ``--help`` and error lines.
COMMANDS = (
    "/join #ROOM, /part [#ROOM], /rooms, /switch #ROOM|NAME, /msg NAME TEXT, /topic [TEXT], /names, "
    "/register NAME, /login NAME, /password, /whoami, /logout, "
    "/kick, /ban, /unban, /mute, /unmute, /op, /deop, /voice, /devoice NAME, /mode [+FLAG|-FLAG], /invite NAME, "
    "/help, /quit"
)

#: The moderation requests (PROTOCOL.md section 6.5) that name a user,
#: each typed as ``/REQUEST [#ROOM] NAME ...``.
MODERATION = ("kick", "ban", "unban", "mute", "unmute", "op", "deop", "voice", "devoice", "invite")

#: A room's mode flags (section 6.2), with the letters ``/mode`` also takes.
MODE_FLAGS = {"i": "invite_only", "t": "topic_ops", "m": "moderated", "s": "secret", "n": "no_external"}

#: A ban's or a mute's length: a whole number, in seconds or with a unit.
DURATION = re.compile(r"([0-9]{1,9})([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

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
        """``info``: its sentence; a ``join``'s also the room's topic,
        members and any mode not at its default, a topic read the topic
        and who set it, a ``mode`` read the room's modes.  What others did
        to us (kicked, banned, muted: the keys ``room`` and ``by``) is a
        notice, so it stands out."""
        room = response.get("room")
        if isinstance(room, str) and "topic" in response and "members" not in response:
            return [Line(INFO, _topic_read(room, response))]
        kind = NOTICE if isinstance(room, str) and "by" in response else INFO
        lines = [Line(kind, safe(response.get("content", "")))]
        members, modes = response.get("members"), response.get("modes")
        if isinstance(room, str) and isinstance(members, list):
            topic = response.get("topic")
            if isinstance(topic, str) and topic:
                lines.append(Line(INFO, f"Topic: {safe(topic)}"))
            lines.append(Line(INFO, f"Members: {_members(members, response.get('ops'), response.get('voiced'))}"))
            unusual = {flag: value for flag, value in modes.items() if _MODE_DEFAULTS.get(flag) != value} if isinstance(modes, dict) else {}
            if unusual:
                lines.append(Line(INFO, f"Modes: {_modes(unusual)}"))
        elif isinstance(room, str) and isinstance(modes, dict):
            lines.append(Line(INFO, f"Modes: {_modes(modes) or 'none'}"))
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
        mine = self.me is not None and isinstance(response.get("sender"), str) and fold(response["sender"]) == fold(self.me)
        if response.get("offline") is True and mine:
            # Our own DM to an account with no session (its copy, in the
            # offline history it gets at login, carries the flag too).
            text += " (offline: delivered at their next login)"
        return [Line(MESSAGE, f"[{when}] {sender}: {text}")]

    def parse_history(self, response: dict[str, Any]) -> list[Line]:
        """``history``: each entry as a message; entries are JSON strings (v1)
        or objects (v2).  An entry of a room's history without its own
        ``room`` is taken to be of that room.  A page of direct messages
        (top-level ``with``: at login, those that came while we had no
        session) starts with a line saying so, and ends with one if more
        are waiting."""
        entries = response.get("content")
        if not isinstance(entries, list):
            return [Line(ERROR, "malformed history from server")]
        room, partner = response.get("room"), response.get("with")
        lines: list[Line] = []
        if isinstance(partner, str) and entries:
            lines.append(Line(NOTICE, f"Direct messages from {safe(partner)} while you were away:"))
        for entry in entries:
            if isinstance(entry, str):
                lines.extend(self.parse(entry))
            else:
                if isinstance(room, str) and isinstance(entry, dict) and "room" not in entry and "to" not in entry:
                    entry = dict(entry, room=room)
                lines.extend(self.parse_response(entry))
        if isinstance(partner, str) and entries and response.get("more") is True:
            lines.append(Line(NOTICE, f"More direct messages from {safe(partner)} are waiting: they come at your next login."))
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
            return [Line(NOTICE, f"{who} set the modes of {room}: {_modes(modes)}")]
        for flag in ("op", "voice"):
            if flag in content:
                given = content[flag] is True
                user = content.get("user", "?")
                if self.me is not None and isinstance(user, str) and fold(user) == fold(self.me):
                    return [Line(NOTICE, f"{who} {'gave you' if given else 'took your'} {flag} in {room}")]
                return [Line(NOTICE, f"{who} {'gave' if given else 'took'} {flag} {'to' if given else 'from'} {safe(user)} in {room}")]
        return [Line(NOTICE, f"{who} changed the modes of {room}")]


#: The modes of a new room (PROTOCOL.md section 6.2).
_MODE_DEFAULTS = {"invite_only": False, "topic_ops": True, "moderated": False, "secret": False, "no_external": True}


def _modes(modes: dict[Any, Any]) -> str:
    """Mode flags as ``moderated on, secret off``, in the server's order."""
    return ", ".join(f"{safe(flag)} {'on' if value is True else 'off'}" for flag, value in modes.items())


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
    it), ``"help"``, ``"whoami"``, ``"quit"``, ``"error"`` (print
    ``content``) or ``"none"``.  The session turns a request into its
    wire form, since some depend on the current target: a ``msg`` goes to
    ``target`` (a room or a name; ``None``: the current target); a
    ``part``, ``names`` or ``topic`` whose ``content`` is ``None`` is
    about the current room.  For ``topic`` the content is the new topic,
    ``None`` to read it.  A moderation request (:data:`MODERATION`, and
    ``mode``) has its content without ``room``, which is ``target`` or,
    if ``None``, the current room.  ``login`` and ``register`` carry the
    name; the session asks for passwords (they are never typed on a
    command line).
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


def _user_argument(word: str, user: str) -> Command | None:
    """An error if ``user`` is not a valid name (PROTOCOL.md section 6.4)."""
    if USER_NAME.fullmatch(user) is None:
        return Command("error", content=f"/{word}: '{safe(user)}' is not a user name.")
    return None


def _first_word(text: str) -> tuple[str, str]:
    """The first word of ``text`` and the rest, both stripped."""
    word, _, rest = text.strip().partition(" ")
    return word, rest.strip()


def duration_seconds(text: str) -> int | None:
    """A typed duration (``90``, ``30s``, ``10m``, ``2h``, ``1d``, ``1w``)
    in seconds, or None if ``text`` is not one."""
    match = DURATION.fullmatch(text)
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _moderation(word: str, argument: str) -> Command:
    """``/kick``, ``/ban``, ... : ``[#ROOM] NAME`` then, by command, a
    TIME and a comment (``/invite NAME #ROOM`` works too, as in IRC)."""
    room: str | None = None
    first, rest = _first_word(argument)
    if first.startswith("#"):
        room, (first, rest) = first, _first_word(rest)
    elif word == "invite":
        second, after = _first_word(rest)
        if second.startswith("#"):
            room, rest = second, after
    if room is not None:
        checked = _room_argument(word, room)
        if isinstance(checked, Command):
            return checked
    usage = {"kick": " [TEXT]", "ban": " [TIME] [TEXT]", "mute": " [TIME]"}.get(word, "")
    if not first:
        return Command("error", content=f"/{word} needs a NAME: /{word} [#ROOM] NAME{usage}")
    problem = _user_argument(word, first)
    if problem is not None:
        return problem
    content: dict[str, Any] = {"user": first}
    if word in ("ban", "mute") and rest:
        when, after = _first_word(rest)
        seconds = duration_seconds(when)
        if seconds is not None:
            if seconds < 1:
                return Command("error", content=f"/{word}: a TIME is 1 second or more.")
            content["duration"] = seconds
            rest = after
    if word in ("kick", "ban"):
        if rest:
            content["comment"] = rest
    elif rest:
        return Command("error", content=f"/{word} takes [#ROOM] NAME{usage}, not '{safe(rest)}'.")
    return Command("request", word, content, target=room)


def _mode(argument: str) -> Command:
    """``/mode [#ROOM] [+FLAG|-FLAG ...]``: a FLAG is a name (``+moderated``)
    or letters (``+im -s``, :data:`MODE_FLAGS`)."""
    room: str | None = None
    words = argument.split()
    if words and words[0].startswith("#"):
        checked = _room_argument("mode", words.pop(0))
        if isinstance(checked, Command):
            return checked
        room = checked
    flags: dict[str, bool] = {}
    names = set(MODE_FLAGS.values())
    for word in words:
        if word[:1] not in ("+", "-") or len(word) < 2:
            return Command("error", content=f"/mode: '{safe(word)}' is not +FLAG or -FLAG (flags: {', '.join(MODE_FLAGS.values())}).")
        if word[1:].replace("-", "_") in names:
            flags[word[1:].replace("-", "_")] = word[0] == "+"
            continue
        on = True
        for letter in word:
            if letter in "+-":
                on = letter == "+"
            elif letter in MODE_FLAGS:
                flags[MODE_FLAGS[letter]] = on
            else:
                return Command("error", content=f"/mode: no flag '{safe(letter)}' (i invite_only, t topic_ops, m moderated, s secret, n no_external).")
    return Command("request", "mode", flags, target=room)


def command_word(line: str) -> str | None:
    """The command a typed line starts with (``/Login x``: ``login``), or
    None for a message (a plain line, or ``//``)."""
    line = line.rstrip("\r\n")
    if not line.startswith("/") or line.startswith("//"):
        return None
    return line[1:].partition(" ")[0].lower()


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
    if word == "whoami":
        return Command("whoami")
    if word == "login":
        if not argument:
            return Command("error", content=f"/login needs a NAME. Commands: {COMMANDS}")
        return Command("request", "login", argument)
    if word == "register":
        if not argument:
            return Command("error", content="/register needs a NAME (the password is asked for).")
        if " " in argument:
            return Command("error", content="/register takes only a NAME: the password is asked for, never typed after it.")
        return _user_argument(word, argument) or Command("request", "register", argument)
    if word == "password":
        if argument:
            return Command("error", content="/password takes nothing: the passwords are asked for, never typed after it.")
        return Command("request", "password")
    if word in MODERATION:
        return _moderation(word, argument)
    if word == "mode":
        return _mode(argument)
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

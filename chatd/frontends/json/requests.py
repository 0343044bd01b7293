"""The shapes of the JSON requests of PROTOCOL.md sections 5 and 6.

Each ``parse_<type>`` checks a decoded request's fields (``bad_request``
for a field missing or of the wrong type, the first check after the
request type) and returns what the handler needs.  :func:`needs_v2` says
whether the parsed request is one a connection without ``hello`` may not
make (``forbidden``, section 6.1).  Nothing here knows rooms or users:
the hub checks names, rooms and permissions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatd import messages
from chatd.core.moderation import MAX_COMMENT
from chatd.core.rooms import LOBBY
from chatd.messages import ChatError



def bad_request(text: str) -> ChatError:
    """A ``bad_request`` error with ``text``."""
    return ChatError(messages.BAD_REQUEST, f"Bad request: {text}")


def _optional_string(request: dict[str, Any], key: str, where: str = "") -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{key}'{where} must be a string.")
    return value


def _room_object(request: dict[str, Any], also: str = "") -> tuple[dict[str, Any], str]:
    """A content that must be an object with a string ``room``: the
    object and the room (``bad_request`` otherwise)."""
    content = request.get("content")
    if not isinstance(content, dict):
        raise bad_request(f"the content of '{request.get('request')}' must be {also}an object with 'room'.")
    room = content.get("room")
    if not isinstance(room, str):
        raise bad_request("'room' must be a string.")
    return content, room


def _is_lobby(room: str | None) -> bool:
    return room is None or room.lower() == LOBBY


@dataclass(frozen=True)
class MsgRequest:
    """``msg``: the text, for a room or a name (neither: ``#lobby``)."""

    text: str
    room: str | None = None
    to: str | None = None

    @property
    def needs_v2(self) -> bool:
        """A DM, or a room other than ``#lobby``."""
        return self.to is not None or not _is_lobby(self.room)


def parse_msg(request: dict[str, Any]) -> MsgRequest:
    """``{"request": "msg", "content": text, "room"?: name, "to"?: name}``."""
    content = request.get("content")
    if not isinstance(content, str):
        raise bad_request("the content of 'msg' must be a string.")
    room = _optional_string(request, "room")
    to = _optional_string(request, "to")
    if room is not None and to is not None:
        raise bad_request("give 'room' or 'to', not both.")
    return MsgRequest(content, room, to)


@dataclass(frozen=True)
class RoomRequest:
    """``join``, ``part``: a room and, for ``part``, a comment; for
    ``join``, the room's key if it has one."""

    room: str
    comment: str | None = None
    key: str | None = None
    needs_v2 = True


def parse_room_request(request: dict[str, Any]) -> RoomRequest:
    """``"#dev"`` or ``{"room": "#dev", "comment"?: text}``."""
    if isinstance(request.get("content"), str):
        return RoomRequest(request["content"])
    content, room = _room_object(request, also="a room name or ")
    comment = _optional_string(content, "comment")
    key = _optional_string(content, "key")
    if key is not None and not valid_room_key(key):
        raise bad_request(f"'key' must be 1 to {MAX_ROOM_KEY} printable characters without spaces.")
    return RoomRequest(room, None if comment is None else comment[:MAX_COMMENT], key)


def valid_room_key(key: str) -> bool:
    """A room key (IRC ``+k``): 1 to :data:`MAX_ROOM_KEY` printable
    characters, no spaces or commas (IRC could not send it in a JOIN)."""
    return 0 < len(key) <= MAX_ROOM_KEY and key.isprintable() and not any(char in key for char in " ,")


@dataclass(frozen=True)
class NamesRequest:
    """``names``: of ``#lobby`` (no room given) or of a room."""

    room: str | None = None

    @property
    def needs_v2(self) -> bool:
        """A room other than ``#lobby``."""
        return not _is_lobby(self.room)


def parse_names(request: dict[str, Any]) -> NamesRequest:
    """Content ignored (section 2), or ``{"room": name}``."""
    content = request.get("content")
    if not isinstance(content, dict):
        return NamesRequest()
    return NamesRequest(_optional_string(content, "room"))


@dataclass(frozen=True)
class TopicRequest:
    """``topic``: read (``topic`` None) or set (``""`` clears)."""

    room: str
    topic: str | None = None
    needs_v2 = True


def parse_topic(request: dict[str, Any]) -> TopicRequest:
    """``{"room": name, "topic"?: text}``."""
    content, room = _room_object(request)
    return TopicRequest(room, _optional_string(content, "topic"))


@dataclass(frozen=True)
class HistoryRequest:
    """``history``: a page of a room or of a conversation."""

    room: str | None
    with_name: str | None
    before: int | None
    after: int | None
    limit: int | None

    @property
    def needs_v2(self) -> bool:
        """A conversation, or a room other than ``#lobby``."""
        return self.with_name is not None or not _is_lobby(self.room)


#: The largest message id (SQLite's INTEGER is 64-bit signed).
MAX_ID = 2**63 - 1


def _id_field(query: dict[str, Any], key: str) -> int | None:
    """An optional non-negative integer field of a ``history`` request."""
    value = query.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise bad_request(f"'{key}' must be a whole number from 0 to 2**63-1.")
    return value


def parse_history(request: dict[str, Any]) -> HistoryRequest:
    """``{"room"?, "with"?, "before"?, "after"?, "limit"?}`` or nothing."""
    content = request.get("content")
    if content is not None and not isinstance(content, dict):
        raise bad_request("the content of 'history' must be an object or null.")
    query = content or {}
    room = _optional_string(query, "room")
    with_name = _optional_string(query, "with")
    if room is not None and with_name is not None:
        raise bad_request("give 'room' or 'with', not both.")
    before, after = _id_field(query, "before"), _id_field(query, "after")
    if before is not None and after is not None:
        raise bad_request("give 'before' or 'after', not both.")
    return HistoryRequest(room, with_name, before, after, _id_field(query, "limit"))


@dataclass(frozen=True)
class PlainRequest:
    """A request of v2 only whose content is ignored (``rooms``)."""

    needs_v2 = True


def parse_rooms(request: dict[str, Any]) -> PlainRequest:
    """``rooms``: content ignored."""
    return PlainRequest()


@dataclass(frozen=True)
class LoginRequest:
    """``login``: a name (checked by the hub) and, for an account, a password."""

    name: Any
    password: str | None = None


def parse_login(request: dict[str, Any]) -> LoginRequest:
    """``{"request": "login", "content": name, "password"?: text}``."""
    return LoginRequest(request.get("content"), _optional_string(request, "password"))


@dataclass(frozen=True)
class RegisterRequest:
    """``register``: a new account's name and password."""

    username: str
    password: str


def parse_register(request: dict[str, Any]) -> RegisterRequest:
    """``{"username": name, "password": text}``."""
    content = request.get("content")
    if not isinstance(content, dict):
        raise bad_request("the content of 'register' must be an object with 'username' and 'password'.")
    username, password = content.get("username"), content.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise bad_request("'username' and 'password' must be strings.")
    return RegisterRequest(username, password)


@dataclass(frozen=True)
class PasswordRequest:
    """``password``: change the account's password."""

    old: str
    new: str
    needs_v2 = True


def parse_password(request: dict[str, Any]) -> PasswordRequest:
    """``{"old": text, "new": text}``."""
    content = request.get("content")
    if not isinstance(content, dict):
        raise bad_request("the content of 'password' must be an object with 'old' and 'new'.")
    old, new = content.get("old"), content.get("new")
    if not isinstance(old, str) or not isinstance(new, str):
        raise bad_request("'old' and 'new' must be strings.")
    return PasswordRequest(old, new)


#: The moderation requests of section 6.5, and the fields each takes
#: besides ``room``.
MODERATION: dict[str, tuple[str, ...]] = {
    "kick": ("user", "comment"),
    "ban": ("user", "comment", "duration"),
    "unban": ("user",),
    "mute": ("user", "duration"),
    "unmute": ("user",),
    "op": ("user",),
    "deop": ("user",),
    "voice": ("user",),
    "devoice": ("user",),
    "mode": (),
    "invite": ("user",),
}

#: The flags ``mode`` may set.
MODE_FLAGS = ("invite_only", "topic_ops", "moderated", "secret", "no_external")
#: The largest member limit a room may have (``mode`` ``limit``; IRC ``+l``).
MAX_ROOM_LIMIT = 1_000_000
#: The longest room key (``mode`` ``key``; IRC ``+k``).
MAX_ROOM_KEY = 32


@dataclass(frozen=True)
class ModerationRequest:
    """A section 6.5 request: its type and its checked fields."""

    kind: str
    fields: dict[str, Any]
    needs_v2 = True


def parse_moderation(request: dict[str, Any]) -> ModerationRequest:
    """``{"room", "user"?, "comment"?, "duration"?, <mode flags>?}``: every
    field the request takes present with its type (``bad_request``)."""
    kind = str(request.get("request"))
    content, room = _room_object(request)
    fields: dict[str, Any] = {"room": room}
    takes = MODERATION[kind]
    if "user" in takes:
        if not isinstance(content.get("user"), str):
            raise bad_request("'user' must be a string.")
        fields["user"] = content["user"]
    if "comment" in takes and content.get("comment") is not None:
        if not isinstance(content["comment"], str):
            raise bad_request("'comment' must be a string.")
        fields["comment"] = content["comment"]
    if "duration" in takes and content.get("duration") is not None:
        duration = content["duration"]
        if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= MAX_ID:
            raise bad_request("'duration' must be a whole number of seconds, 1 or more.")
        fields["duration"] = duration
    if kind == "mode":
        for flag in MODE_FLAGS:
            if flag in content:
                if not isinstance(content[flag], bool):
                    raise bad_request(f"'{flag}' must be true or false.")
                fields[flag] = content[flag]
        if "limit" in content:
            limit = content["limit"]
            if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_ROOM_LIMIT:
                raise bad_request(f"'limit' must be a whole number from 0 (none) to {MAX_ROOM_LIMIT}.")
            fields["limit"] = limit
        if "key" in content:
            key = content["key"]
            if not isinstance(key, str) or (key and not valid_room_key(key)):
                raise bad_request(f"'key' must be \"\" (none) or 1 to {MAX_ROOM_KEY} printable characters without spaces.")
            fields["key"] = key
    return ModerationRequest(kind, fields)


#: The parser of each request type that has one; the others are checked
#: by content type alone (``CONTENT_TYPES`` in the protocol).
PARSERS = {
    "msg": parse_msg,
    "join": parse_room_request,
    "part": parse_room_request,
    "names": parse_names,
    "topic": parse_topic,
    "history": parse_history,
    "rooms": parse_rooms,
    "login": parse_login,
    "register": parse_register,
    "password": parse_password,
    **{kind: parse_moderation for kind in MODERATION},
}

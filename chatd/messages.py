"""Responses of the chat protocol: building, encoding and the fixed texts.

Everything here is pure: no Twisted, no state. The hub and the protocol
build every response through these functions so that field order, the
timestamp format and the ASCII-only encoding are the same everywhere.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

# Error codes of PROTOCOL.md section 3, spelled once.
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
TOO_LONG = "too_long"
UNKNOWN_REQUEST = "unknown_request"
NOT_LOGGED_IN = "not_logged_in"
ALREADY_LOGGED_IN = "already_logged_in"
INVALID_USERNAME = "invalid_username"
NAME_TAKEN = "name_taken"
EMPTY_MESSAGE = "empty_message"
MESSAGE_TOO_LONG = "message_too_long"
RATE_LIMITED = "rate_limited"
SERVER_BUSY = "server_busy"
NO_SUCH_ROOM = "no_such_room"
NO_SUCH_USER = "no_such_user"
NOT_IN_ROOM = "not_in_room"
FORBIDDEN = "forbidden"
INVALID_ROOM = "invalid_room"
NOT_OP = "not_op"
MUTED = "muted"
AUTH_FAILED = "auth_failed"
WEAK_PASSWORD = "weak_password"
BANNED = "banned"
INVITE_ONLY = "invite_only"
ROOM_FULL = "room_full"
BAD_KEY = "bad_key"

SERVER_SENDER = "server"

HELP_TEXT = (
    "Requests (send one JSON object each: "
    '{"request": "<type>", "content": <value>}): '
    "login <username> - log in (1-32 letters A-Z, a-z or digits); "
    "logout - log out; "
    "msg <text> - send a message to everyone in the room; "
    "names - list the users logged in; "
    "help - show this text. "
    "For logout, names and help the content is ignored. "
    "Protocol 2 (opt in with hello {\"protocol\": 2}): "
    "ping <any> - answered with pong; "
    "history {\"room\"?, \"before\"|\"after\": id, \"limit\": n} - a page of a room's history; "
    "join <#room> - enter a room, created if new; "
    "part <#room> or {\"room\", \"comment\"?} - leave a room; "
    "rooms - list the rooms with their member counts; "
    "names {\"room\"} - list a room's members; "
    "topic {\"room\", \"topic\"?} - read a room's topic, or set it (\"\" clears); "
    "msg with top-level \"room\": \"#dev\" - send to a room; "
    "msg with top-level \"to\": \"name\" - a direct message; "
    "any request may carry \"ref\", echoed in its responses."
)

_encoder = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "))


class ChatError(Exception):
    """A request failed; ``code`` and ``text`` become an ``error`` response."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def format_timestamp(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``, from POSIX seconds."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def response(kind: str, content: Any, timestamp: str, sender: str = SERVER_SENDER, **extra: Any) -> dict[str, Any]:
    """A response object in the protocol's field order; ``extra`` keys last."""
    result: dict[str, Any] = {"timestamp": timestamp, "sender": sender, "response": kind, "content": content}
    result.update(extra)
    return result


def error(code: str, text: str, timestamp: str) -> dict[str, Any]:
    """An ``error`` response carrying its machine-readable ``code``."""
    return response("error", text, timestamp, code=code)


def info(text: str, timestamp: str, **extra: Any) -> dict[str, Any]:
    """An ``info`` response (``extra`` keys after ``content``)."""
    return response("info", text, timestamp, **extra)


def encode(obj: dict[str, Any]) -> bytes:
    """The JSON encoding the server sends: ASCII only, no trailing newline."""
    return _encoder.encode(obj).encode("ascii")

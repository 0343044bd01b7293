"""Reading stream entries that anyone with access to Redis may have written.

Only :data:`chatd.cluster.scripts.PUBLISH` (and ``DM_PUBLISH`` for the
direct messages' stream) gives message ids.  Anything
else in a stream (an entry added by hand, with a clock id like
``1764000000000-0``, without ``sender``, with text that is not UTF-8 or
longer than ``--max-message``) is :class:`BadEntry`: skipped by every
reader and by history, and logged once (:class:`SkipLog`).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from twisted.logger import Logger

from chatd.core.hub import clean_text, is_valid_name
from chatd.core.rooms import DM_PREFIX
from chatd.stores.history import StoredMessage

#: The largest id a stream entry may carry (15 digits): Lua formats and
#: compares such numbers exactly, and JavaScript clients read them exactly.
MAX_ID = 10**15 - 1
#: The longest value of a stream field other than ``text`` (characters).
MAX_FIELD = 200
#: The most fields a stream entry may have.
MAX_FIELDS = 16
#: How many skipped entries are remembered, so that each is logged once.
MAX_REPORTED = 1024


class BadEntry(ValueError):
    """A stream entry (or reply) that PUBLISH did not write as it writes entries."""


_SCRIPT_ID = re.compile(r"([1-9][0-9]{0,14})-1")
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_SEQUENCE = re.compile(r"[0-9]{1,15}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def script_id(stream_id: Any) -> int | None:
    """The message id of a stream id of PUBLISH's form ``<n>-1``, else None."""
    if not isinstance(stream_id, str):
        return None
    match = _SCRIPT_ID.fullmatch(stream_id)
    return int(match.group(1)) if match else None


def id_order(stream_id: Any) -> tuple[int, int] | None:
    """A stream id as a tuple that sorts like Redis sorts ids (None if not one)."""
    match = _STREAM_ID.fullmatch(stream_id) if isinstance(stream_id, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def entry_id(entry: Any) -> Any:
    """The first item of an entry that is a pair (its stream id if well formed), else None."""
    return entry[0] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def sequence(reply: Any) -> int:
    """The sequence the repair script returned (a string of digits)."""
    if isinstance(reply, str) and _SEQUENCE.fullmatch(reply):
        return int(reply)
    if isinstance(reply, int) and 0 <= reply <= MAX_ID:
        return reply
    raise BadEntry(f"the repair replied {reply!r:.60} instead of a sequence")


def entry_fields(entry: Any, long_fields: tuple[str, ...] = ("text",)) -> tuple[str, dict[str, str]]:
    """A stream entry ``[id, [field, value, ...]]`` as (id, fields).

    Raises :class:`BadEntry` for any other shape, a field that is not
    UTF-8 (the link gives it as bytes) or a field other than those in
    ``long_fields`` longer than :data:`MAX_FIELD`.
    """
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise BadEntry("not an [id, fields] pair")
    stream_id, raw = entry
    if not isinstance(stream_id, str) or len(stream_id) > 41:
        raise BadEntry("its id is not a stream id")
    if not isinstance(raw, (list, tuple)) or len(raw) % 2 or len(raw) > 2 * MAX_FIELDS:
        raise BadEntry("its fields are not field/value pairs")
    if not all(isinstance(item, str) for item in raw):
        raise BadEntry("a field is not UTF-8 text")
    fields = dict(zip(raw[::2], raw[1::2]))
    for name, value in fields.items():
        if len(name) > MAX_FIELD or (name not in long_fields and len(value) > MAX_FIELD):
            raise BadEntry(f"field {name[:20]!r} is too long")
    return stream_id, fields


def lenient_fields(entry: Any) -> dict[str, Any]:
    """The fields of an entry that may be bad in any way, read leniently
    (only its text-named fields; nothing raises)."""
    raw = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], (list, tuple)) else []
    return {name: value for name, value in zip(raw[::2], raw[1::2]) if isinstance(name, str)}


def _check_user(name: str, field: str) -> None:
    # A JSON username or an IRC nick (PROTOCOL.md section 6.4), not "server".
    if not is_valid_name(name):
        raise BadEntry(f"its {field} is not a valid user name")


def parse_message(room: str, entry: Any, max_text: int) -> tuple[StoredMessage, str, str]:
    """A stream entry as (message, publishing node, token).

    Raises :class:`BadEntry` unless the entry is one PUBLISH could have
    written: an id ``<n>-1``, a valid sender, a text of at most
    ``max_text`` characters, a protocol timestamp.
    """
    stream_id, fields = entry_fields(entry)
    message_id = script_id(stream_id)
    if message_id is None:
        raise BadEntry("its id is not of the form <n>-1 that the publishing script gives")
    sender, text, timestamp = fields.get("sender"), fields.get("text"), fields.get("ts")
    if sender is None or text is None or timestamp is None:
        raise BadEntry("sender, text or ts is missing")
    _check_user(sender, "sender")
    _check_text(text, max_text)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise BadEntry("its ts is not a protocol timestamp")
    message = StoredMessage(message_id, room, sender, text, timestamp, notice=fields.get("notice") == "1")
    return message, fields.get("node", ""), fields.get("token", "")


def _check_text(text: str, max_text: int) -> None:
    if not text.strip() or len(text) > max_text or clean_text(text) != text:
        raise BadEntry(f"its text is empty, has control characters or is over {max_text} characters")


def parse_dm(entry: Any, max_text: int) -> tuple[StoredMessage, str, str]:
    """A direct message's entry of the DM stream as (message, publishing
    node, token); the message's room is its conversation's key.

    Raises :class:`BadEntry` unless DM_PUBLISH could have written it: a
    stream id ``<n>-1``, a conversation key ``@<a> <b>`` of two valid
    lower-cased names in order, an id of at most 15 digits, a sender and
    a recipient that are the conversation's, a text as in a room.
    """
    stream_id, fields = entry_fields(entry)
    if script_id(stream_id) is None:
        raise BadEntry("its id is not of the form <n>-1 that the publishing script gives")
    conv, raw_id, sender = fields.get("conv"), fields.get("id"), fields.get("sender")
    text, timestamp, to = fields.get("text"), fields.get("ts"), fields.get("to")
    if conv is None or raw_id is None or sender is None or text is None or timestamp is None or to is None:
        raise BadEntry("conv, id, sender, text, ts or to is missing")
    parties = conv[len(DM_PREFIX):].split(" ") if conv.startswith(DM_PREFIX) else []
    if len(parties) != 2 or parties != sorted(parties) or not all(is_valid_name(p) and p == p.lower() for p in parties):
        raise BadEntry("its conv is not a conversation's key")
    if not _SEQUENCE.fullmatch(raw_id) or int(raw_id) < 1:
        raise BadEntry("its id is not a message id")
    if not is_valid_name(sender) or not is_valid_name(to) or {sender.lower(), to.lower()} != set(parties):
        raise BadEntry("its sender or recipient is not of the conversation")
    _check_text(text, max_text)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise BadEntry("its ts is not a protocol timestamp")
    # Sent to an account with no session: its sender's echo says so.
    message = StoredMessage(
        int(raw_id), conv, sender, text, timestamp, to=to, offline=fields.get("offline") == "1",
        notice=fields.get("notice") == "1",
    )
    return message, fields.get("node", ""), fields.get("token", "")


#: The longest content of a room event (characters of JSON).
MAX_EVENT = 8192
_EVENT_KIND = re.compile(r"[a-z_]{1,32}")


def is_event(entry: Any) -> bool:
    """Whether an entry of a presence stream is a room event (it has ``event``)."""
    return "event" in lenient_fields(entry)


def parse_event(entry: Any) -> tuple[str, dict[str, object], str]:
    """(kind, content, node) of a room event's entry, or :class:`BadEntry`."""
    _id, fields = entry_fields(entry, long_fields=("content",))
    kind, raw, node = fields.get("event", ""), fields.get("content", ""), fields.get("node", "")
    if not _EVENT_KIND.fullmatch(kind):
        raise BadEntry("its event is not an event's kind")
    if len(raw) > MAX_EVENT:
        raise BadEntry("its content is too long")
    try:
        content = json.loads(raw)
    except ValueError:
        raise BadEntry("its content is not JSON") from None
    if not isinstance(content, dict):
        raise BadEntry("its content is not a JSON object")
    return kind, content, node


def parse_presence(entry: Any) -> tuple[str, str, str]:
    """(user, status, node) of a presence entry, or :class:`BadEntry`."""
    _id, fields = entry_fields(entry)
    user, status, node = fields.get("user", ""), fields.get("status", ""), fields.get("node", "")
    _check_user(user, "user")
    if status not in ("online", "offline"):
        raise BadEntry("its status is neither online nor offline")
    return user, status, node


class SkipLog:
    """Logs each skipped entry once (the last :data:`MAX_REPORTED` are
    remembered), shared by a node's read loop and its history reads."""

    log = Logger()

    def __init__(self) -> None:
        self.reported: OrderedDict[str, None] = OrderedDict()

    def skip(self, stream: str, stream_id: Any, problem: Exception) -> None:
        """Log that entry ``stream_id`` of ``stream`` is skipped, unless it was already."""
        key = f"{stream} {stream_id!r:.60}"
        if key in self.reported:
            return
        self.reported[key] = None
        if len(self.reported) > MAX_REPORTED:
            self.reported.popitem(last=False)
        self.log.warn(
            "skipping entry {id} of {stream}: {problem}",
            id=f"{stream_id!r:.60}", stream=stream, problem=str(problem)[:200],
        )

    def __len__(self) -> int:
        return len(self.reported)

"""History stores: where accepted messages live, in id order per room.

:class:`HistoryStore` is the interface the hub relies on;
:class:`MemoryHistory` keeps everything in the process.  A store assigns
the message id, so ids are strictly increasing per room and never
reused for as long as the store lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from chatd import messages


@dataclass(frozen=True)
class StoredMessage:
    """One accepted message, with its id and acceptance timestamp.

    ``payload`` is the ``message`` response encoded once; fan-out writes
    these same bytes to every member, and v1 history sends them as strings.
    """

    id: int
    room: str
    sender: str
    text: str
    timestamp: str
    payload: bytes = field(init=False, repr=False, compare=False)
    line: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        payload = messages.encode(self.as_response())
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "line", payload + b"\n")

    def as_response(self) -> dict[str, object]:
        """The ``message`` response for this message."""
        return messages.response("message", self.text, self.timestamp, sender=self.sender, id=self.id)


class HistoryStore(Protocol):
    """What the hub needs from a history store."""

    def append(self, room: str, sender: str, text: str, timestamp: str) -> StoredMessage:
        """Store a message under the next id of ``room`` and return it."""

    def recent(self, room: str, limit: int | None) -> list[StoredMessage]:
        """The newest ``limit`` messages (all if None), oldest first."""


class MemoryHistory:
    """History kept in memory: fast, and gone when the process ends."""

    kind = "memory"

    def __init__(self) -> None:
        self._rooms: dict[str, list[StoredMessage]] = {}
        self._last_id: dict[str, int] = {}

    def append(self, room: str, sender: str, text: str, timestamp: str) -> StoredMessage:
        """Store a message under the next id of ``room`` and return it."""
        message_id = self._last_id.get(room, 0) + 1
        self._last_id[room] = message_id
        message = StoredMessage(message_id, room, sender, text, timestamp)
        self._rooms.setdefault(room, []).append(message)
        return message

    def recent(self, room: str, limit: int | None) -> list[StoredMessage]:
        """The newest ``limit`` messages (all if None), oldest first."""
        stored = self._rooms.get(room, [])
        if limit is None:
            return list(stored)
        if limit <= 0:
            return []
        return stored[-limit:]

"""What is kept of a room besides its messages: :class:`RoomRecord`.

A room is never deleted (PROTOCOL.md section 6.2): its spelling, topic,
modes, creation time and roles survive restarts, in the store that keeps
history (memory, SQLite, Redis).  The record is plain data; the hub
decides what changes it, the stores only keep it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

#: The modes of a room, in the order the protocol lists them, with a new
#: room's values.
DEFAULT_MODES: dict[str, bool] = {
    "invite_only": False,
    "topic_ops": True,
    "moderated": False,
    "secret": False,
    "no_external": True,
}


@dataclass(frozen=True)
class RoomRecord:
    """A room's lasting state.  ``ops`` and ``voiced`` hold lower-cased names."""

    name: str  # the canonical spelling (its creator's)
    created: str  # a protocol timestamp
    topic: str = ""
    topic_by: str | None = None
    topic_set_at: str | None = None
    modes: dict[str, bool] = field(default_factory=lambda: dict(DEFAULT_MODES))
    ops: tuple[str, ...] = ()
    voiced: tuple[str, ...] = ()
    #: The most members the room takes (IRC's ``+l``); None: no limit.
    limit: int | None = None
    #: The key a join must give (IRC's ``+k``); None: none.
    join_key: str | None = None

    @property
    def key(self) -> str:
        """The room's name compared case-insensitively."""
        return self.name.lower()

    @property
    def public(self) -> bool:
        """Neither secret nor invite-only: anyone may read its names, topic, modes."""
        return not self.modes.get("secret") and not self.modes.get("invite_only")

    def with_op(self, lower: str, op: bool = True) -> RoomRecord:
        """The record with ``lower`` op (or no longer op)."""
        ops = tuple(name for name in self.ops if name != lower)
        return replace(self, ops=ops + (lower,) if op else ops)

    def with_voice(self, lower: str, voiced: bool = True) -> RoomRecord:
        """The record with ``lower`` voiced (or no longer)."""
        names = tuple(name for name in self.voiced if name != lower)
        return replace(self, voiced=names + (lower,) if voiced else names)

    def with_modes(self, changes: dict[str, bool]) -> RoomRecord:
        """The record with the modes in ``changes`` set (unknown ones ignored)."""
        modes = dict(self.modes)
        modes.update({flag: value for flag, value in changes.items() if flag in DEFAULT_MODES})
        return replace(self, modes=modes)

    def with_limit(self, limit: int | None) -> RoomRecord:
        """The record with a member limit (None or 0: none)."""
        return replace(self, limit=limit or None)

    def with_join_key(self, join_key: str | None) -> RoomRecord:
        """The record with a key to join (None or ``""``: none)."""
        return replace(self, join_key=join_key or None)

    def with_topic(self, topic: str, by: str | None, at: str | None) -> RoomRecord:
        """The record with a new topic (``""``, None, None: cleared)."""
        return replace(self, topic=topic, topic_by=by, topic_set_at=at)

    def to_json(self) -> str:
        """The record as one JSON text (Redis and SQLite keep it so)."""
        return json.dumps(
            {
                "name": self.name,
                "created": self.created,
                "topic": self.topic,
                "topic_by": self.topic_by,
                "topic_set_at": self.topic_set_at,
                "modes": self.modes,
                "ops": list(self.ops),
                "voiced": list(self.voiced),
                "limit": self.limit,
                "join_key": self.join_key,
            },
            ensure_ascii=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> RoomRecord:
        """A record from :meth:`to_json`'s text; ``ValueError`` if malformed."""
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a room record must be a JSON object")
        name, created = data.get("name"), data.get("created")
        if not isinstance(name, str) or not isinstance(created, str):
            raise ValueError("a room record needs a name and a creation time")
        topic = data.get("topic", "")
        by, at = data.get("topic_by"), data.get("topic_set_at")
        limit, join_key = data.get("limit"), data.get("join_key")
        modes = dict(DEFAULT_MODES)
        stored = data.get("modes")
        if isinstance(stored, dict):
            modes.update({key: value for key, value in stored.items() if key in DEFAULT_MODES and isinstance(value, bool)})
        return cls(
            name=name,
            created=created,
            topic=topic if isinstance(topic, str) else "",
            topic_by=by if isinstance(by, str) else None,
            topic_set_at=at if isinstance(at, str) else None,
            modes=modes,
            ops=_names(data.get("ops")),
            voiced=_names(data.get("voiced")),
            limit=limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None,
            join_key=join_key if isinstance(join_key, str) and join_key else None,
        )


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(name.lower() for name in value if isinstance(name, str))

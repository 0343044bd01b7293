"""IRC ban masks (PROTOCOL.md section 7.3), beside the core's moderation.

The core (:mod:`chatd.core.moderation`) does kicks, bans of names,
modes, roles and invitations for every front-end; the IRC commands call
it (:meth:`~chatd.core.moderation.Moderation.request`).  What is IRC's
own is here: ``+b`` masks (a nick glob, or a nick glob with ``!*@*``),
which hold the names they match without removing a present member, kept
in memory per room and checked at an IRC JOIN and an IRC message.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from chatd.core.hub import DEFAULT_ROOM, Hub
from chatd.stores.roomstate import RoomRecord

#: A ban mask of section 7.3: a nick glob, or a nick glob with ``!*@*``.
_MASK = re.compile(r"([A-Za-z0-9_*?\[\]{}|^`\\-]{1,64})(?:!\*@\*)?")

#: Mode letters and the flags they set.
FLAG_LETTERS = {"i": "invite_only", "t": "topic_ops", "m": "moderated", "s": "secret", "n": "no_external"}


def mask_of(text: str) -> str | None:
    """``text`` as a canonical ban mask ``glob!*@*``, or None (696)."""
    match = _MASK.fullmatch(text)
    if match is None:
        return None
    return match.group(1) + "!*@*"


def mask_matches(mask: str, name: str) -> bool:
    """Whether the ban mask holds ``name`` (case-insensitively)."""
    glob = mask.split("!", 1)[0].lower()
    return fnmatch.fnmatchcase(name.lower(), glob.replace("[", "[[]"))


@dataclass(frozen=True)
class Ban:
    """A ``+b`` mask, who set it and when (POSIX seconds)."""

    mask: str
    by: str
    at: int


class Masks:
    """The ``+b`` masks of every room (in memory), oldest first."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._bans: dict[str, list[Ban]] = {}

    def bans(self, key: str) -> list[Ban]:
        """The room's ``+b`` masks, oldest first."""
        return list(self._bans.get(key, ()))

    def add_ban(self, by: str, record: RoomRecord, mask: str, at: int) -> bool:
        """Add a mask (announced as ``mode``); False if it was there."""
        bans = self._bans.setdefault(record.key, [])
        if any(ban.mask.lower() == mask.lower() for ban in bans):
            return False
        bans.append(Ban(mask, by, at))
        self.hub.room_event(record.name, "mode", {"room": record.name, "by": by, "ban": mask})
        return True

    def remove_ban(self, by: str, record: RoomRecord, mask: str) -> bool:
        """Remove a mask (announced as ``mode``); False if it was not there."""
        bans = self._bans.get(record.key, [])
        kept = [ban for ban in bans if ban.mask.lower() != mask.lower()]
        if len(kept) == len(bans):
            return False
        self._bans[record.key] = kept
        self.hub.room_event(record.name, "mode", {"room": record.name, "by": by, "ban": mask, "removed": True})
        return True

    def banned(self, key: str, name: str) -> bool:
        """Whether a mask of the room holds ``name``."""
        return any(mask_matches(ban.mask, name) for ban in self._bans.get(key, ()))


def is_lobby(record: RoomRecord) -> bool:
    """Whether the record is ``#lobby``'s (its modes are fixed)."""
    return record.key == DEFAULT_ROOM

"""WHOWAS: who recently held a nick on this node's IRC front-end.

A bounded log, newest last: an IRC session's nick is recorded when the
session ends or renames.  It is per node and in memory (a restart
forgets it); JSON users are not recorded (they have no user or realname
of their own to show).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Entries kept in all (the oldest go first).
WHOWAS_ENTRIES = 2_000
#: Entries one WHOWAS answers at most, whatever count it asks for.
WHOWAS_REPLIES = 16


@dataclass(frozen=True)
class Departed:
    """One nick as it was when its holder left it."""

    nick: str
    ident: str
    realname: str
    when: float


class WhowasLog:
    """The recent departures, searched newest first."""

    def __init__(self, size: int = WHOWAS_ENTRIES) -> None:
        self._entries: deque[Departed] = deque(maxlen=size)

    def record(self, nick: str, ident: str, realname: str, when: float) -> None:
        """``nick`` (held by ``ident``, ``realname``) was left at ``when``."""
        self._entries.append(Departed(nick, ident, realname, when))

    def find(self, nick: str, count: int) -> list[Departed]:
        """The newest entries of ``nick`` (case-insensitive): at most
        ``count`` if it is positive, else all (capped at
        :data:`WHOWAS_REPLIES`)."""
        wanted = nick.lower()
        limit = min(count, WHOWAS_REPLIES) if count > 0 else WHOWAS_REPLIES
        found: list[Departed] = []
        for entry in reversed(self._entries):
            if entry.nick.lower() == wanted:
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

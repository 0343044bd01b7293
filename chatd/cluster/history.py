"""A room's history in a cluster: its Redis stream (:class:`RedisHistory`),
under the room's key (its name lower-cased).

The stream is capped with ``MAXLEN ~`` as messages are published, so
``--history-retention`` does not apply, and there is nothing to open,
prune or close here.  Entries PUBLISH did not write are skipped (and
logged once, with the read loop's :class:`~chatd.cluster.entries.SkipLog`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatd.cluster.entries import BadEntry, SkipLog, entry_id, parse_message
from chatd.cluster.link import Link, busy_unless_chat_error
from chatd.cluster.scripts import stream_key
from chatd.interfaces import IHistory
from chatd.stores.history import MAX_PAGE, HistoryError, StoredMessage


@implementer(IHistory)
class RedisHistory:
    """Reads of the rooms' streams (failures: ``server_busy``)."""

    kind = "redis"

    def __init__(self, link: Link, max_message: int, skips: SkipLog | None = None) -> None:
        self.link = link
        self.max_message = max_message
        self.skips = skips if skips is not None else SkipLog()

    def recent(self, room: str, limit: int | None) -> Deferred[list[StoredMessage]]:
        """The newest ``limit`` messages of ``room`` (all if None), oldest first."""
        if limit is not None and limit <= 0:
            return succeed([])
        count = ["COUNT", str(limit)] if limit is not None else []
        d = self.link.call("XREVRANGE", stream_key(room.lower()), "+", "-", *count)
        d.addCallback(lambda entries: self._messages(room, entries)[::-1])
        return d.addErrback(busy_unless_chat_error)

    def page(self, room: str, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A page of ``room`` and whether more lie beyond it (see
        :meth:`chatd.interfaces.IHistory.page`)."""
        limit = max(1, min(MAX_PAGE, limit))
        if before is not None and before <= 1:
            return succeed(([], False))  # no id below 1 (and Redis refuses "(0-0")
        count = str(limit + 1)
        d: Deferred[Any]
        if after is not None:
            d = self.link.call("XRANGE", stream_key(room.lower()), f"({after}-1", "+", "COUNT", count)
            d.addCallback(lambda entries: (self._messages(room, entries[:limit]), len(entries) > limit))
        else:
            top = "+" if before is None else f"({before}-0"
            d = self.link.call("XREVRANGE", stream_key(room.lower()), top, "-", "COUNT", count)
            d.addCallback(lambda entries: (self._messages(room, entries[:limit])[::-1], len(entries) > limit))
        return d.addErrback(busy_unless_chat_error)

    def _messages(self, room: str, entries: Any) -> list[StoredMessage]:
        """The messages among history entries, in their order; the rest skipped."""
        if not isinstance(entries, list):
            raise BadEntry(f"the history read replied a {type(entries).__name__}")
        kept = []
        for entry in entries:
            try:
                kept.append(parse_message(room, entry, self.max_message)[0])
            except BadEntry as problem:
                self.skips.skip(stream_key(room.lower()), entry_id(entry), problem)
        return kept

    def check(self) -> None:
        """For /health: raise :class:`HistoryError` unless Redis is connected."""
        if not self.link.connected:
            raise HistoryError("Redis is not connected")

    def open(self) -> None:
        """Nothing to open: the links are started by the cluster service."""

    def prune(self, retention: object, now: float) -> int:
        """Retention is the stream's MAXLEN: nothing to drop here."""
        return 0

    def close(self) -> None:
        """Nothing held locally."""

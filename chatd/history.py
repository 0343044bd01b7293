"""History stores: where accepted messages live, in id order per room.

Every store has the same shape (:class:`HistoryStore`):

- :meth:`~HistoryStore.append` gives a message the next id of its room
  and holds it in a pending batch; ids are strictly increasing per room
  and never reused, also across restarts (the durable store keeps each
  room's last id apart from the messages, so pruning frees no id);
- :meth:`~HistoryStore.commit` writes the pending batch in one
  transaction.  The hub commits once per reactor turn and only then sends
  the batch to anyone, so a message a client has seen is stored;
- :meth:`~HistoryStore.recent` and :meth:`~HistoryStore.page` read
  committed messages only.

:class:`MemoryHistory` keeps messages in the process;
:class:`SQLiteHistory` in an SQLite database (WAL), the default.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable

from twisted.logger import Logger

from chatd import messages

#: The largest page a ``history`` request may ask for.
MAX_PAGE = 500


class HistoryError(Exception):
    """The history store cannot be opened, read or written."""


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

    def as_response(self, **extra: Any) -> dict[str, Any]:
        """The ``message`` response for this message (``extra`` keys last)."""
        return messages.response("message", self.text, self.timestamp, sender=self.sender, id=self.id, **extra)


@dataclass(frozen=True)
class Retention:
    """How much history to keep: at most ``count`` messages per room
    and/or none older than ``days``; None means no limit."""

    count: int | None = None
    days: float | None = None

    @classmethod
    def parse(cls, text: str) -> Retention:
        """``30d`` keeps 30 days; a bare number keeps that many messages."""
        value = text.strip().lower()
        try:
            if value.endswith("d"):
                days = float(value[:-1])
                if days <= 0:
                    raise ValueError(value)
                return cls(days=days)
            count = int(value)
            if count <= 0:
                raise ValueError(value)
            return cls(count=count)
        except ValueError:
            raise ValueError(f"history retention must be a number of messages or of days like 30d, not {text!r}") from None

    def cutoff(self, now: float) -> str | None:
        """The oldest timestamp kept, as a protocol timestamp."""
        return None if self.days is None else messages.format_timestamp(now - self.days * 86400)


class HistoryStore:
    """The id sequence and pending batch shared by every store.

    Subclasses implement the ``_load_last_id``, ``_write``, ``_newest``,
    ``_after``, ``_before`` and ``_prune`` primitives.
    """

    kind = "abstract"

    def __init__(self) -> None:
        self._last_ids: dict[str, int] = {}
        self._committed_ids: dict[str, int] = {}
        self._pending: list[StoredMessage] = []

    # -- writing ---------------------------------------------------------

    def append(self, room: str, sender: str, text: str, timestamp: str) -> StoredMessage:
        """Give a message the next id of ``room``; pending until :meth:`commit`."""
        if room not in self._last_ids:
            self._last_ids[room] = self._committed_ids[room] = self._load_last_id(room)
        message = StoredMessage(self._last_ids[room] + 1, room, sender, text, timestamp)
        self._last_ids[room] = message.id
        self._pending.append(message)
        return message

    @property
    def pending(self) -> int:
        """Messages appended but not yet committed."""
        return len(self._pending)

    def commit(self) -> list[StoredMessage]:
        """Write the pending batch in one transaction and return it.

        On failure nothing of the batch is kept, its ids are handed out
        again (nobody has seen them) and :class:`HistoryError` is raised.
        """
        batch, self._pending = self._pending, []
        if not batch:
            return batch
        try:
            self._write(batch)
        except HistoryError:
            self._last_ids.update(self._committed_ids)
            raise
        for message in batch:
            self._committed_ids[message.room] = message.id
        return batch

    def prune(self, retention: Retention, now: float) -> int:
        """Drop what ``retention`` no longer keeps; returns how many."""
        if retention.count is None and retention.days is None:
            return 0
        return self._prune(retention.count, retention.cutoff(now))

    def close(self) -> None:
        """Release the store's resources (pending messages are committed)."""
        self.commit()

    # -- reading ---------------------------------------------------------

    def recent(self, room: str, limit: int | None) -> list[StoredMessage]:
        """The newest ``limit`` committed messages (all if None), oldest first."""
        if limit is not None and limit <= 0:
            return []
        return self._newest(room, limit)

    def page(self, room: str, before: int | None = None, after: int | None = None, limit: int = 100) -> tuple[list[StoredMessage], bool]:
        """A page of history, oldest first, and whether more lie beyond it.

        With ``after``: the oldest ``limit`` messages with a greater id
        (``more``: newer ones exist).  With ``before``: the newest
        ``limit`` with a smaller id (``more``: older ones exist).  With
        neither: the newest ``limit``.
        """
        if before is not None and after is not None:
            raise ValueError("before and after together")
        limit = max(1, min(MAX_PAGE, limit))
        if after is not None:
            found = self._after(room, after, limit + 1)
            return found[:limit], len(found) > limit
        found = self._newest(room, limit + 1) if before is None else self._before(room, before, limit + 1)
        return found[-limit:], len(found) > limit

    def last_id(self, room: str) -> int:
        """The id of the newest committed message of ``room`` (0: none yet)."""
        if room not in self._committed_ids:
            self._last_ids[room] = self._committed_ids[room] = self._load_last_id(room)
        return self._committed_ids[room]

    # -- primitives ------------------------------------------------------

    def _load_last_id(self, room: str) -> int:
        raise NotImplementedError

    def _write(self, batch: list[StoredMessage]) -> None:
        raise NotImplementedError

    def _newest(self, room: str, limit: int | None) -> list[StoredMessage]:
        raise NotImplementedError

    def _after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        raise NotImplementedError

    def _before(self, room: str, before: int, limit: int) -> list[StoredMessage]:
        raise NotImplementedError

    def _prune(self, count: int | None, cutoff: str | None) -> int:
        raise NotImplementedError


class MemoryHistory(HistoryStore):
    """History kept in memory: fast, and gone when the process ends."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._rooms: dict[str, list[StoredMessage]] = {}

    def _load_last_id(self, room: str) -> int:
        stored = self._rooms.get(room)
        return stored[-1].id if stored else 0

    def _write(self, batch: list[StoredMessage]) -> None:
        for message in batch:
            self._rooms.setdefault(message.room, []).append(message)

    def _newest(self, room: str, limit: int | None) -> list[StoredMessage]:
        stored = self._rooms.get(room, [])
        return list(stored) if limit is None else stored[-limit:]

    def _after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        stored = self._rooms.get(room, [])
        start = _first_index_above(stored, after)
        return stored[start : start + limit]

    def _before(self, room: str, before: int, limit: int) -> list[StoredMessage]:
        stored = self._rooms.get(room, [])
        end = _first_index_above(stored, before - 1)
        return stored[max(0, end - limit) : end]

    def _prune(self, count: int | None, cutoff: str | None) -> int:
        dropped = 0
        for room, stored in self._rooms.items():
            keep = stored
            if cutoff is not None:
                keep = [message for message in keep if message.timestamp >= cutoff]
            if count is not None:
                keep = keep[-count:]
            dropped += len(stored) - len(keep)
            self._rooms[room] = keep
        return dropped


def _first_index_above(stored: list[StoredMessage], message_id: int) -> int:
    """Index of the first message whose id is greater (ids are sorted)."""
    low, high = 0, len(stored)
    while low < high:
        middle = (low + high) // 2
        if stored[middle].id <= message_id:
            low = middle + 1
        else:
            high = middle
    return low


SCHEMA_VERSION = 1

#: Each entry upgrades the schema from the version before it.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE messages (room TEXT NOT NULL, id INTEGER NOT NULL, sender TEXT NOT NULL,"
        " text TEXT NOT NULL, timestamp TEXT NOT NULL, PRIMARY KEY (room, id)) WITHOUT ROWID",
        # Each room's last id, kept apart so that pruning never frees an id.
        "CREATE TABLE rooms (room TEXT PRIMARY KEY, last_id INTEGER NOT NULL) WITHOUT ROWID",
    ],
}


class SQLiteHistory(HistoryStore):
    """History in an SQLite database: WAL journal, one transaction per batch.

    With ``fsync`` false (``synchronous=NORMAL``) a committed batch is in
    the WAL file, in the operating system's cache: it survives the process
    being killed, not a power cut.  With ``fsync`` true
    (``synchronous=FULL``) each commit is on disk before anyone sees it.
    """

    kind = "sqlite"
    log = Logger()

    def __init__(self, path: str, fsync: bool = False) -> None:
        super().__init__()
        self.path = path
        self.fsync = fsync
        self._db: sqlite3.Connection | None = None
        self.open()

    def open(self) -> None:
        """Open (or reopen) the database, creating or migrating its schema.

        twistd opens the store before it daemonizes; the service reopens
        it afterwards, since an SQLite connection must not cross a fork.
        """
        if self._db is not None:
            return
        path = self.path
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot open history database {path}: {problem}") from None
        self._db = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            db.execute("PRAGMA busy_timeout=1000")
            self._migrate()
            if not os.access(path, os.W_OK):
                raise HistoryError(f"history database {path} is not writable")
            db.execute("BEGIN IMMEDIATE")  # proves we can write
            db.execute("COMMIT")
        except sqlite3.Error as problem:
            self._db = None
            db.close()
            raise HistoryError(f"cannot use history database {path}: {problem}") from None
        except HistoryError:
            self._db = None
            db.close()
            raise
        # Ids are read again from the database when next needed.
        self._last_ids.clear()
        self._committed_ids.clear()

    def _migrate(self) -> None:
        db = self._connection()
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history database {self.path} has schema version {version}; this chatd knows up to {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target]:
                    db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
                db.execute("COMMIT")
            except sqlite3.Error:
                db.execute("ROLLBACK")
                raise
            self.log.info("history database {path} migrated to schema version {version}", path=self.path, version=target)

    def close(self) -> None:
        """Commit what is pending and close the database."""
        if self._db is None:
            return
        try:
            super().close()
        finally:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise HistoryError(f"history database {self.path} is closed")
        return self._db

    def _load_last_id(self, room: str) -> int:
        row = self._query("SELECT last_id FROM rooms WHERE room = ?", (room,))
        return int(row[0][0]) if row else 0

    def _write(self, batch: list[StoredMessage]) -> None:
        last_ids: dict[str, int] = {}
        for message in batch:
            last_ids[message.room] = message.id
        db = self._connection()
        try:
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT INTO messages (room, id, sender, text, timestamp) VALUES (?, ?, ?, ?, ?)",
                    [(m.room, m.id, m.sender, m.text, m.timestamp) for m in batch],
                )
                db.executemany(
                    "INSERT INTO rooms (room, last_id) VALUES (?, ?)"
                    " ON CONFLICT (room) DO UPDATE SET last_id = excluded.last_id",
                    list(last_ids.items()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot write to history database {self.path}: {problem}") from None

    def _newest(self, room: str, limit: int | None) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, sender, text, timestamp FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, -1 if limit is None else limit),
        )
        return self._messages(room, reversed(rows))

    def _after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, sender, text, timestamp FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
            (room, after, limit),
        )
        return self._messages(room, rows)

    def _before(self, room: str, before: int, limit: int) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, sender, text, timestamp FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (room, before, limit),
        )
        return self._messages(room, reversed(rows))

    def _prune(self, count: int | None, cutoff: str | None) -> int:
        dropped = 0
        try:
            if cutoff is not None:
                dropped += self._connection().execute("DELETE FROM messages WHERE timestamp < ?", (cutoff,)).rowcount
            if count is not None:
                dropped += self._connection().execute(
                    "DELETE FROM messages WHERE id <= (SELECT last_id FROM rooms WHERE rooms.room = messages.room) - ?",
                    (count,),
                ).rowcount
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot prune history database {self.path}: {problem}") from None
        return dropped

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot read history database {self.path}: {problem}") from None

    @staticmethod
    def _messages(room: str, rows: Iterable[Any]) -> list[StoredMessage]:
        return [StoredMessage(row[0], room, row[1], row[2], row[3]) for row in rows]

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
  committed messages only;
- :meth:`~HistoryStore.check` says whether the store can read and write
  now (``/health``).

Every failure of a store is a :class:`HistoryError` (never an
``sqlite3`` exception); :class:`HistoryBusy` when another process holds
the database locked, which passes: the hub then keeps the batch pending
and commits it again a little later, without blocking the reactor.

:class:`MemoryHistory` keeps messages in the process;
:class:`SQLiteHistory` in an SQLite database (WAL), the default.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, TypeVar

from twisted.logger import Logger

from chatd import messages
from chatd.accounts.records import AccountRecord, Restriction
from chatd.stores.roomstate import RoomRecord

#: The largest page a ``history`` request may ask for.
MAX_PAGE = 500


class HistoryError(Exception):
    """The history store cannot be opened, read or written."""


class HistoryBusy(HistoryError):
    """Another connection holds the database locked: try again later."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One accepted message, with its id and acceptance timestamp.

    Plain data: each front-end encodes it in its own wire format (the JSON
    one in :mod:`chatd.frontends.json.encoding`, once per batch).
    """

    id: int
    room: str  # the room's canonical name, or a conversation's key (see chatd.core.rooms.dm_key)
    sender: str
    text: str
    timestamp: str
    to: str | None = None  # a direct message's recipient, as the sender's server spelled it
    # Not stored: the DM went to an account with no session (its sender's
    # echo says so, section 6.3).
    offline: bool = False
    # An IRC NOTICE (section 7.1): JSON users see "notice": true.
    notice: bool = False


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
        # Pending messages that take an id but are not kept (DMs between
        # guests): their ids are written, their text is not.
        self._unkept: set[int] = set()
        # Pending DMs kept for accounts: the owners of each (by identity).
        self._dm_owners: dict[int, tuple[str, ...]] = {}
        # Why the last commit failed; None once a write succeeds again.
        self._write_failure: str | None = None

    # -- writing ---------------------------------------------------------

    def append(
        self,
        room: str,
        sender: str,
        text: str,
        timestamp: str,
        to: str | None = None,
        keep: bool = True,
        owners: tuple[str, ...] = (),
        offline: bool = False,
        notice: bool = False,
    ) -> StoredMessage:
        """Give a message the next id of ``room``; pending until :meth:`commit`.

        ``keep`` false: only the id is stored (the room's last id moves
        on at the commit, so it is never reused), not the message.  A DM
        is kept for its ``owners`` (its sides that are accounts) in the
        same commit.
        """
        if room not in self._last_ids:
            self._last_ids[room] = self._committed_ids[room] = self._load_last_id(room)
        message = StoredMessage(self._last_ids[room] + 1, room, sender, text, timestamp, to, offline, notice)
        self._last_ids[room] = message.id
        self._pending.append(message)
        if not keep:
            self._unkept.add(id(message))
        if owners:
            self._dm_owners[id(message)] = owners
        return message

    def _owned_dms(self, batch: list[StoredMessage]) -> list[tuple[str, StoredMessage]]:
        """The DMs of ``batch`` to keep, with each owner."""
        if not self._dm_owners:
            return []
        return [(owner.lower(), message) for message in batch for owner in self._dm_owners.get(id(message), ())]

    def _kept(self, batch: list[StoredMessage]) -> list[StoredMessage]:
        """The messages of ``batch`` whose text is stored."""
        if not self._unkept:
            return batch
        return [message for message in batch if id(message) not in self._unkept]

    @property
    def pending(self) -> int:
        """Messages appended but not yet committed."""
        return len(self._pending)

    def commit(self, retry: bool = False) -> list[StoredMessage]:
        """Write the pending batch in one transaction and return it.

        On failure nothing of the batch is kept, its ids are handed out
        again (nobody has seen them) and :class:`HistoryError` is raised.
        With ``retry``, a batch refused only because the database is
        locked (:class:`HistoryBusy`) stays pending instead, ids and all,
        for a later ``commit`` to write; messages appended meanwhile join
        it after those already there.
        """
        batch, self._pending = self._pending, []
        if not batch:
            return batch
        try:
            self._write(batch)
        except HistoryBusy:
            if retry:
                self._pending = batch + self._pending
                raise
            self._batch_failed("the database is locked by another process")
            raise
        except HistoryError as problem:
            self._batch_failed(str(problem))
            raise
        finally:
            if not self._pending:
                self._unkept.clear()
                self._dm_owners.clear()
        self._write_failure = None
        for message in batch:
            self._committed_ids[message.room] = message.id
        return batch

    def _batch_failed(self, problem: str) -> None:
        """The pending batch is dropped: its ids are free again."""
        self._last_ids.update(self._committed_ids)
        self._write_failure = problem

    def check(self) -> None:
        """Raise :class:`HistoryError` unless the store can read and write now.

        It fails while the last commit failed, until a write succeeds
        again: when a commit failed, each check tries a small write of its
        own (rolled back in effect), so the store reports healthy again as
        soon as it can write, without waiting for a message (a load
        balancer that stops sending users to an unhealthy server would
        otherwise keep it unhealthy for ever).  The SQLite store also
        fails when its database file is gone and cannot be put back, or
        when a read fails.
        """
        self._verify()
        if self._write_failure is None:
            return
        try:
            self._probe()
        except HistoryError as problem:
            raise HistoryError(f"history cannot be written: {problem}") from None
        self._write_failure = None

    def prune(self, retention: Retention, now: float) -> int:
        """Drop what ``retention`` no longer keeps; returns how many."""
        if retention.count is None and retention.days is None:
            return 0
        return self._prune(retention.count, retention.cutoff(now))

    def close(self) -> None:
        """Release the store's resources (pending messages are committed)."""
        self.commit()

    # -- rooms -----------------------------------------------------------

    def load_rooms(self) -> list[RoomRecord]:
        """Every room's lasting state (the hub reads them at start)."""
        raise NotImplementedError

    def save_room(self, record: RoomRecord) -> None:
        """Keep ``record`` (a new room, or a room whose state changed)."""
        raise NotImplementedError

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

    def _verify(self) -> None:
        """Raise :class:`HistoryError` if the store cannot be read now."""

    def _probe(self) -> None:
        """A write that stores nothing; raises as a failing commit would."""
        self._write([])

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

    # == accounts and moderation (issue 16) ================================
    # Accounts, bans and mutes, the rooms each account is in, the DMs kept
    # for accounts and how far each account has been given them.  Names,
    # rooms and owners are compared lower-cased (the methods lower them);
    # a conversation is a chatd.core.rooms.dm_key.  Every write is done at
    # once, in a transaction of its own (not with the pending batch).

    def load_account(self, key: str) -> AccountRecord | None:
        """The account named ``key`` (any case), or None."""
        raise NotImplementedError

    def save_account(self, record: AccountRecord) -> None:
        """Keep ``record``: a new account, or a new password hash for one."""
        raise NotImplementedError

    def create_account(self, record: AccountRecord) -> bool:
        """Keep ``record`` unless its name is an account already; whether it was kept."""
        raise NotImplementedError

    def accounts(self) -> list[AccountRecord]:
        """Every account, by key."""
        raise NotImplementedError

    def load_bans(self, room: str | None = None) -> list[Restriction]:
        """The bans of ``room`` (every room's if None), expired ones too, by room then name."""
        return self._load_restrictions(_BAN, None if room is None else room.lower())

    def save_ban(self, ban: Restriction) -> None:
        """Keep ``ban``, replacing one of the same name in the same room."""
        self._save_restriction(_BAN, ban)

    def remove_ban(self, room: str, name: str) -> bool:
        """Lift the ban of ``name`` in ``room``; whether there was one."""
        return self._remove_restriction(_BAN, room.lower(), name.lower())

    def load_mutes(self, room: str | None = None) -> list[Restriction]:
        """The mutes of ``room`` (every room's if None), as :meth:`load_bans`."""
        return self._load_restrictions(_MUTE, None if room is None else room.lower())

    def save_mute(self, mute: Restriction) -> None:
        """Keep ``mute``, replacing one of the same name in the same room."""
        self._save_restriction(_MUTE, mute)

    def remove_mute(self, room: str, name: str) -> bool:
        """Lift the mute of ``name`` in ``room``; whether there was one."""
        return self._remove_restriction(_MUTE, room.lower(), name.lower())

    def prune_restrictions(self, now: float) -> int:
        """Drop the bans and mutes that ended before ``now`` (POSIX seconds); how many."""
        raise NotImplementedError

    def add_membership(self, account: str, room: str) -> None:
        """``account`` is in ``room`` (already in it: its place stays)."""
        raise NotImplementedError

    def remove_membership(self, account: str, room: str) -> None:
        """``account`` left ``room`` (not in it: nothing changes)."""
        raise NotImplementedError

    def memberships(self, account: str) -> list[str]:
        """The rooms (keys) ``account`` is in, in the order it joined them."""
        raise NotImplementedError

    def room_accounts(self, room: str) -> list[str]:
        """The accounts (keys) in ``room``, by key."""
        raise NotImplementedError

    def store_dms(self, entries: Iterable[tuple[str, StoredMessage]]) -> None:
        """Keep each DM for its owner: ``(owner, message)``, ``message.room``
        the conversation and ``message.to`` the recipient.

        Call it for each side that is an account once the message has its
        id (after :meth:`commit`).  A DM already kept for that owner is
        not kept twice.
        """
        raise NotImplementedError

    def dm_recent(self, owner: str, conversation: str, limit: int | None) -> list[StoredMessage]:
        """The newest ``limit`` DMs of ``conversation`` kept for ``owner`` (all if None), oldest first."""
        if limit is not None and limit <= 0:
            return []
        return self._dm_newest(owner.lower(), conversation, limit)

    def dm_page(
        self, owner: str, conversation: str, before: int | None = None, after: int | None = None, limit: int = 100
    ) -> tuple[list[StoredMessage], bool]:
        """A page of the DMs kept for ``owner``, as :meth:`page` pages a room."""
        if before is not None and after is not None:
            raise ValueError("before and after together")
        owner = owner.lower()
        limit = max(1, min(MAX_PAGE, limit))
        if after is not None:
            found = self._dm_after(owner, conversation, after, limit + 1)
            return found[:limit], len(found) > limit
        if before is None:
            found = self._dm_newest(owner, conversation, limit + 1)
        else:
            found = self._dm_before(owner, conversation, before, limit + 1)
        return found[-limit:], len(found) > limit

    def delivered(self, owner: str, conversation: str) -> int:
        """The newest id of ``conversation`` given to a session of ``owner`` (0: none)."""
        return self._marks(owner.lower()).get(conversation, 0)

    def mark_delivered(self, owner: str, conversation: str, last_id: int) -> None:
        """Ids up to ``last_id`` of ``conversation`` were given to ``owner`` (a mark never goes back)."""
        self.mark_delivered_many([(owner, conversation, last_id)])

    def mark_delivered_many(self, marks: Iterable[tuple[str, str, int]]) -> None:
        """:meth:`mark_delivered` for each ``(owner, conversation, last_id)``, in one write."""
        raise NotImplementedError

    def undelivered(self, owner: str, limit: int = 100) -> list[tuple[str, list[StoredMessage], bool]]:
        """The DMs kept for ``owner`` above its marks: per conversation
        ``(conversation, the oldest limit of them, whether more follow)``,
        by conversation.  Marking them is the caller's (once sent)."""
        owner = owner.lower()
        marks = self._marks(owner)
        found = []
        for conversation, newest in sorted(self._dm_conversations(owner).items()):
            mark = marks.get(conversation, 0)
            if newest > mark:
                page = self._dm_after(owner, conversation, mark, limit + 1)
                found.append((conversation, page[:limit], len(page) > limit))
        return found

    def prune_dms(self, retention: Retention, now: float) -> int:
        """Drop the kept DMs ``retention`` no longer keeps (per owner and conversation); how many."""
        if retention.count is None and retention.days is None:
            return 0
        return self._prune_dms(retention.count, retention.cutoff(now))

    # -- accounts and moderation: primitives ---------------------------------

    def _load_restrictions(self, kind: str, room: str | None) -> list[Restriction]:
        raise NotImplementedError

    def _save_restriction(self, kind: str, restriction: Restriction) -> None:
        raise NotImplementedError

    def _remove_restriction(self, kind: str, room: str, name: str) -> bool:
        raise NotImplementedError

    def _dm_newest(self, owner: str, conversation: str, limit: int | None) -> list[StoredMessage]:
        raise NotImplementedError

    def _dm_after(self, owner: str, conversation: str, after: int, limit: int) -> list[StoredMessage]:
        raise NotImplementedError

    def _dm_before(self, owner: str, conversation: str, before: int, limit: int) -> list[StoredMessage]:
        raise NotImplementedError

    def _dm_conversations(self, owner: str) -> dict[str, int]:
        """Each conversation with DMs kept for ``owner``, with its newest kept id."""
        raise NotImplementedError

    def _marks(self, owner: str) -> dict[str, int]:
        """``owner``'s delivery marks, per conversation."""
        raise NotImplementedError

    def _prune_dms(self, count: int | None, cutoff: str | None) -> int:
        raise NotImplementedError

    # == end of accounts and moderation ====================================


class MemoryHistory(HistoryStore):
    """History kept in memory: fast, and gone when the process ends."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._rooms: dict[str, list[StoredMessage]] = {}
        self._written_ids: dict[str, int] = {}
        self._records: dict[str, RoomRecord] = {}

    def load_rooms(self) -> list[RoomRecord]:
        """Every room kept in this process."""
        return list(self._records.values())

    def save_room(self, record: RoomRecord) -> None:
        """Keep ``record`` in this process."""
        self._records[record.key] = record

    def _load_last_id(self, room: str) -> int:
        return self._written_ids.get(room, 0)

    def _write(self, batch: list[StoredMessage]) -> None:
        for message in self._kept(batch):
            self._rooms.setdefault(message.room, []).append(message)
        for message in batch:
            self._written_ids[message.room] = message.id
        owned = self._owned_dms(batch)
        if owned:
            self.store_dms(owned)

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

    # == accounts and moderation (issue 16) ================================

    @cached_property
    def _account_data(self) -> _MemoryAccountData:
        return _MemoryAccountData()

    def load_account(self, key: str) -> AccountRecord | None:
        """The account named ``key`` (any case), or None."""
        return self._account_data.accounts.get(key.lower())

    def save_account(self, record: AccountRecord) -> None:
        """Keep ``record`` in this process."""
        self._account_data.accounts[record.key] = record

    def create_account(self, record: AccountRecord) -> bool:
        """Keep ``record`` unless its name is an account already."""
        if record.key in self._account_data.accounts:
            return False
        self._account_data.accounts[record.key] = record
        return True

    def accounts(self) -> list[AccountRecord]:
        """Every account, by key."""
        return [record for _key, record in sorted(self._account_data.accounts.items())]

    def prune_restrictions(self, now: float) -> int:
        """Drop the bans and mutes that ended before ``now``; how many."""
        dropped = 0
        for held in self._account_data.restrictions.values():
            for place in [place for place, restriction in held.items() if not restriction.active(now)]:
                del held[place]
                dropped += 1
        return dropped

    def add_membership(self, account: str, room: str) -> None:
        """``account`` is in ``room`` (its place stays if it was)."""
        self._account_data.memberships.setdefault(account.lower(), {}).setdefault(room.lower(), None)

    def remove_membership(self, account: str, room: str) -> None:
        """``account`` left ``room``."""
        rooms = self._account_data.memberships.get(account.lower())
        if rooms is not None:
            rooms.pop(room.lower(), None)
            if not rooms:
                del self._account_data.memberships[account.lower()]

    def memberships(self, account: str) -> list[str]:
        """The rooms ``account`` is in, in the order it joined them."""
        return list(self._account_data.memberships.get(account.lower(), {}))

    def room_accounts(self, room: str) -> list[str]:
        """The accounts in ``room``, by key."""
        key = room.lower()
        return sorted(account for account, rooms in self._account_data.memberships.items() if key in rooms)

    def store_dms(self, entries: Iterable[tuple[str, StoredMessage]]) -> None:
        """Keep each DM for its owner, once."""
        for owner, message in entries:
            kept = self._account_data.dms.setdefault((owner.lower(), message.room), [])
            place = _first_index_above(kept, message.id - 1)
            if place < len(kept) and kept[place].id == message.id:
                continue
            kept.insert(place, message)

    def mark_delivered_many(self, marks: Iterable[tuple[str, str, int]]) -> None:
        """Raise each ``(owner, conversation)`` mark to ``last_id``."""
        held = self._account_data.marks
        for owner, conversation, last_id in marks:
            place = (owner.lower(), conversation)
            held[place] = max(held.get(place, 0), last_id)

    def _load_restrictions(self, kind: str, room: str | None) -> list[Restriction]:
        held = self._account_data.restrictions.get(kind, {})
        return [restriction for place, restriction in sorted(held.items()) if room is None or place[0] == room]

    def _save_restriction(self, kind: str, restriction: Restriction) -> None:
        self._account_data.restrictions.setdefault(kind, {})[(restriction.room_key, restriction.key)] = restriction

    def _remove_restriction(self, kind: str, room: str, name: str) -> bool:
        return self._account_data.restrictions.get(kind, {}).pop((room, name), None) is not None

    def _dm_newest(self, owner: str, conversation: str, limit: int | None) -> list[StoredMessage]:
        kept = self._account_data.dms.get((owner, conversation), [])
        return list(kept) if limit is None else kept[-limit:]

    def _dm_after(self, owner: str, conversation: str, after: int, limit: int) -> list[StoredMessage]:
        kept = self._account_data.dms.get((owner, conversation), [])
        start = _first_index_above(kept, after)
        return kept[start : start + limit]

    def _dm_before(self, owner: str, conversation: str, before: int, limit: int) -> list[StoredMessage]:
        kept = self._account_data.dms.get((owner, conversation), [])
        end = _first_index_above(kept, before - 1)
        return kept[max(0, end - limit) : end]

    def _dm_conversations(self, owner: str) -> dict[str, int]:
        return {conversation: kept[-1].id for (who, conversation), kept in self._account_data.dms.items() if who == owner and kept}

    def _marks(self, owner: str) -> dict[str, int]:
        return {conversation: mark for (who, conversation), mark in self._account_data.marks.items() if who == owner}

    def _prune_dms(self, count: int | None, cutoff: str | None) -> int:
        dropped = 0
        for place, kept in self._account_data.dms.items():
            keep = kept
            if cutoff is not None:
                keep = [message for message in keep if message.timestamp >= cutoff]
            if count is not None:
                keep = keep[-count:]
            dropped += len(kept) - len(keep)
            self._account_data.dms[place] = keep
        return dropped

    # == end of accounts and moderation ====================================


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


# == accounts and moderation (issue 16) ====================================

#: The kinds of :class:`~chatd.accounts.records.Restriction` a store keeps.
_BAN = "ban"
_MUTE = "mute"


@dataclass
class _MemoryAccountData:
    """What :class:`MemoryHistory` keeps of accounts and moderation."""

    accounts: dict[str, AccountRecord] = field(default_factory=dict)
    # kind -> (room key, name key) -> the ban or mute
    restrictions: dict[str, dict[tuple[str, str], Restriction]] = field(default_factory=dict)
    # account -> its rooms, in the order joined (the values are unused)
    memberships: dict[str, dict[str, None]] = field(default_factory=dict)
    # (owner, conversation) -> the DMs kept for it, in id order
    dms: dict[tuple[str, str], list[StoredMessage]] = field(default_factory=dict)
    # (owner, conversation) -> the newest id delivered
    marks: dict[tuple[str, str], int] = field(default_factory=dict)

#: The columns a DM is read from (SQLite).
_DM_COLUMNS = "id, sender, recipient, text, timestamp, notice"

# == end of accounts and moderation ========================================


SCHEMA_VERSION = 4

#: Each entry upgrades the schema from the version before it.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE messages (room TEXT NOT NULL, id INTEGER NOT NULL, sender TEXT NOT NULL,"
        " text TEXT NOT NULL, timestamp TEXT NOT NULL, PRIMARY KEY (room, id)) WITHOUT ROWID",
        # Each room's last id, kept apart so that pruning never frees an id.
        "CREATE TABLE rooms (room TEXT PRIMARY KEY, last_id INTEGER NOT NULL) WITHOUT ROWID",
    ],
    # Many rooms (issue 15): each room's lasting state (spelling, topic,
    # modes, roles) as one JSON record, keyed by the lower-cased name.
    # ``rooms`` keeps holding last ids only (of conversations too).
    2: [
        "CREATE TABLE room_state (key TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID",
    ],
    # Accounts and moderation (issue 16): accounts (PHC hashes only), bans
    # and mutes, the rooms each account is in, the DMs kept for each
    # account side and how far each account has been given them.
    3: [
        "CREATE TABLE accounts (key TEXT PRIMARY KEY, name TEXT NOT NULL, password_hash TEXT NOT NULL,"
        " created TEXT NOT NULL) WITHOUT ROWID",
        "CREATE TABLE restrictions (kind TEXT NOT NULL, room TEXT NOT NULL, name TEXT NOT NULL,"
        " room_name TEXT NOT NULL, user_name TEXT NOT NULL, expires REAL, set_by TEXT, comment TEXT NOT NULL,"
        " created TEXT, PRIMARY KEY (kind, room, name)) WITHOUT ROWID",
        "CREATE TABLE memberships (account TEXT NOT NULL, room TEXT NOT NULL, seq INTEGER NOT NULL,"
        " PRIMARY KEY (account, room)) WITHOUT ROWID",
        "CREATE INDEX memberships_by_room ON memberships (room, account)",
        "CREATE TABLE dm_messages (owner TEXT NOT NULL, conversation TEXT NOT NULL, id INTEGER NOT NULL,"
        " sender TEXT NOT NULL, recipient TEXT NOT NULL, text TEXT NOT NULL, timestamp TEXT NOT NULL,"
        " PRIMARY KEY (owner, conversation, id)) WITHOUT ROWID",
        "CREATE TABLE delivery_marks (owner TEXT NOT NULL, conversation TEXT NOT NULL, last_id INTEGER NOT NULL,"
        " PRIMARY KEY (owner, conversation)) WITHOUT ROWID",
    ],
    # The IRC front-end (issue 17): a message sent as a NOTICE says so.
    4: [
        "ALTER TABLE messages ADD COLUMN notice INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE dm_messages ADD COLUMN notice INTEGER NOT NULL DEFAULT 0",
    ],
}

#: How long, in milliseconds, a statement waits for a lock another
#: process holds.  Statements run on the reactor thread: waiting there
#: freezes every user, so a lock held longer makes a commit fail at once
#: with :class:`HistoryBusy`, and the hub tries again later.
BUSY_TIMEOUT_MS = 5

#: The same while opening the database at startup, when nobody is being
#: served yet and waiting a little is better than refusing to start.
OPEN_BUSY_TIMEOUT_MS = 1000

#: How long the checkpoint's own connection waits for a lock, in ms (it
#: runs in a thread: waiting there freezes nobody).
CHECKPOINT_BUSY_TIMEOUT_MS = 2000

#: The WAL is truncated to this size when it is reset after a checkpoint.
WAL_SIZE_LIMIT = 64 * 1024 * 1024

# SQLite's primary result codes for "someone else holds the lock".
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

#: The files SQLite keeps beside a WAL database.
_JOURNAL_SUFFIXES = ("-wal", "-shm")

#: The room of the health probe's row: real rooms start with ``#``.
_PROBE_ROOM = ""

_T = TypeVar("_T")


def _is_busy(problem: sqlite3.Error) -> bool:
    """Whether ``problem`` means the database is locked by another connection."""
    code = getattr(problem, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(problem)


class SQLiteHistory(HistoryStore):
    """History in an SQLite database: WAL journal, one transaction per batch.

    With ``fsync`` false (``synchronous=NORMAL``) a committed batch is in
    the WAL file, in the operating system's cache: it survives the process
    being killed, not a power cut.  With ``fsync`` true
    (``synchronous=FULL``) each commit is on disk before anyone sees it.

    Before each write the store checks, with one ``stat``, that its path
    still names the file it has open.  If the file was deleted, the
    history the open connection still reads is copied to a new file put
    at the path (nothing is lost, ids continue).  If another file was put
    there, chatd goes on in that file with ids continuing after every id
    it handed out, and keeps the history it had in a copy beside it.
    Either way an error names the file in the log.
    """

    kind = "sqlite"
    log = Logger()

    def __init__(self, path: str, fsync: bool = False) -> None:
        super().__init__()
        self.path = path
        self.fsync = fsync
        self._db: sqlite3.Connection | None = None
        # (device, inode) of the database file the connection has open,
        # and of its "-wal" and "-shm" files.
        self._identity: tuple[int, int] | None = None
        self._journal: dict[str, tuple[int, int]] = {}
        # What happened to the file while it is not fully put back yet.
        self._lost: str | None = None
        self.open()

    def open(self) -> None:
        """Open (or reopen) the database, creating or migrating its schema.

        twistd opens the store before it daemonizes; the service reopens
        it afterwards, since an SQLite connection must not cross a fork.
        """
        if self._db is not None:
            return
        if self._lost is not None:
            self._reattach()
            return
        self._attach(OPEN_BUSY_TIMEOUT_MS)
        # Ids are read again from the database when next needed.
        self._last_ids.clear()
        self._committed_ids.clear()

    def _attach(self, wait_ms: int) -> None:
        """Connect to the database at the path, set it up, note which file it is."""
        path = self.path
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot open history database {path}: {problem}") from None
        self._db = db
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                self.log.warn("history database {path} is in {mode} journal mode, not WAL", path=path, mode=mode)
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            # No checkpoint on the reactor thread: SQLite's automatic one
            # runs inside a commit every 1,000 pages and fsyncs the
            # database file, which froze every user for 100-300 ms at
            # 1,000 msg/s (the p99 of the rooms benchmark).  The history
            # service runs checkpoint_wal() in a thread instead.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.execute(f"PRAGMA busy_timeout={wait_ms}")
            self._migrate()
            if not os.access(path, os.W_OK):
                raise HistoryError(f"history database {path} is not writable")
            db.execute("BEGIN IMMEDIATE")  # proves we can write
            db.execute("COMMIT")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            info = os.stat(path)
        except (sqlite3.Error, OSError) as problem:
            self._db = None
            self._close_quietly(db)
            raise HistoryError(f"cannot use history database {path}: {problem}") from None
        except HistoryError:
            self._db = None
            self._close_quietly(db)
            raise
        self._identity = (info.st_dev, info.st_ino)
        self._journal = {}
        for suffix in _JOURNAL_SUFFIXES:
            journal = _identity(path + suffix)
            if journal is not None:
                self._journal[suffix] = journal

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
            # All of one version's statements or none: DDL is transactional.
            self._transaction(db, lambda db: self._apply(db, target), "migrate")
            self.log.info("history database {path} migrated to schema version {version}", path=self.path, version=target)

    @staticmethod
    def _apply(db: sqlite3.Connection, target: int) -> None:
        for statement in MIGRATIONS[target]:
            db.execute(statement)
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))

    def close(self) -> None:
        """Commit what is pending and close the database.

        A database file deleted meanwhile is put back first, so that a
        restart finds the history and continues its ids.
        """
        if self._db is None:
            return
        try:
            self._writable()
            super().close()
        finally:
            db, self._db = self._db, None
            self._identity = None
            if db is not None:
                self._close_quietly(db)

    def _close_quietly(self, db: sqlite3.Connection) -> None:
        """Close ``db``; a failure is logged (nothing pending is left in it)."""
        try:
            db.close()
        except sqlite3.Error as problem:
            self.log.warn("closing history database {path} failed: {problem}", path=self.path, problem=str(problem))

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            if self._lost is not None:
                raise HistoryError(f"{self._lost} and could not be put back yet")
            raise HistoryError(f"history database {self.path} is closed")
        return self._db

    # -- the file under the connection -------------------------------------

    def _writable(self) -> sqlite3.Connection:
        """The connection, once sure the path still names its database file.

        One ``stat``: it runs before each write (a reactor turn with
        messages), and in :meth:`check`.
        """
        if self._lost is not None:
            self._reattach()
        db = self._connection()
        change = self._file_change()
        if change is not None:
            self._recover(db, change)
        return self._connection()

    def _file_change(self) -> str | None:
        """How the path stopped naming the open file ("deleted", "replaced"), or None."""
        try:
            info = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return "deleted"
        except OSError as problem:
            raise HistoryError(f"cannot check history database {self.path}: {problem}") from None
        return None if (info.st_dev, info.st_ino) == self._identity else "replaced"

    def _recover(self, old: sqlite3.Connection, change: str) -> None:
        """Put the history ``old`` still reads at the path, then write there.

        Until this succeeds nothing is written (writes into a deleted
        file would vanish at the next start, with their ids).
        """
        path = self.path
        self.log.error(
            "history database {path} was {change} while chatd was running: putting the history chatd has back in place",
            path=path,
            change=change,
        )
        saved = self._save_copy(old, change)
        self._remember_last_ids(old)
        self._lost = f"history database {path} was {change} while chatd was running"
        self._db = None
        self._identity = None
        self._close_quietly(old)
        self._remove_own_journal()
        restored = change == "deleted" and self._put_back(saved)
        self._reattach()
        if restored:
            self.log.error("history database {path} recreated from the copy chatd had open: no history lost", path=path)
        else:
            self.log.error(
                "history database {path} was {change}: chatd now writes to the file there, with ids continuing"
                " after those it handed out; the history it had is saved in {saved}",
                path=path,
                change=change,
                saved=saved,
            )

    def _save_copy(self, old: sqlite3.Connection, change: str) -> str:
        """Copy the database ``old`` reads to a new file beside the path."""
        directory = os.path.dirname(os.path.abspath(self.path))
        saved = None
        try:
            size = old.execute("PRAGMA page_count").fetchone()[0] * old.execute("PRAGMA page_size").fetchone()[0]
            space = os.statvfs(directory)
            if space.f_bavail * space.f_frsize < size:
                raise OSError(f"{size} bytes needed, less free in {directory}")
            handle, saved = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".saved", dir=directory)
            os.close(handle)
            copy = sqlite3.connect(saved)
            try:
                old.backup(copy)
            finally:
                copy.close()
        except (OSError, sqlite3.Error) as problem:
            if saved is not None:
                _remove_quietly(saved)
            raise HistoryError(
                f"history database {self.path} was {change} while chatd was running and cannot be put back"
                f" ({problem}): messages are refused until it can"
            ) from None
        return saved

    def wal_bytes(self) -> int:
        """The size of the WAL file (0 if there is none)."""
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    def checkpoint_wal(self) -> None:
        """Copy the WAL into the database (``PRAGMA wal_checkpoint(PASSIVE)``)
        on a connection of its own: blocking, for a thread.  It never
        creates a database (``mode=rw``) and never blocks writers; what it
        cannot copy now is copied next time.  :class:`HistoryError` if it
        fails."""
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=rw"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=CHECKPOINT_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot checkpoint history database {self.path}: {problem}") from None
        try:
            db.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as problem:
            raise HistoryError(f"cannot checkpoint history database {self.path}: {problem}") from None
        finally:
            self._close_quietly(db)

    def _remove_own_journal(self) -> None:
        """Remove the closed database's "-wal" and "-shm" files, if still there.

        SQLite does not checkpoint nor remove the WAL of a database file
        that was deleted or replaced; left at the path, it would be
        replayed into whatever file is there next.  The saved copy holds
        its history.  A journal that came with a replacing file stays.
        """
        for suffix, known in self._journal.items():
            if _identity(self.path + suffix) == known:
                _remove_quietly(self.path + suffix)
        self._journal = {}

    def _put_back(self, saved: str) -> bool:
        """Give the copy the database's name, unless a file took it meanwhile."""
        if os.path.lexists(self.path):
            return False
        # No database is at the path: a journal left there belongs to no
        # file (and would be replayed into the copy).
        for suffix in _JOURNAL_SUFFIXES:
            _remove_quietly(self.path + suffix)
        try:
            os.link(saved, self.path)
        except OSError as problem:
            self.log.error("cannot link {saved} to {path}: {problem}", saved=saved, path=self.path, problem=str(problem))
            return False
        _remove_quietly(saved)
        return True

    def _remember_last_ids(self, old: sqlite3.Connection) -> None:
        """Learn every room's last id from ``old``, loaded or not this run."""
        try:
            rows = old.execute("SELECT room, last_id FROM rooms").fetchall()
        except sqlite3.Error as problem:
            self.log.warn("cannot read room ids from {path}: {problem}", path=self.path, problem=str(problem))
            return
        for room, last in rows:
            if isinstance(last, int) and last > self._committed_ids.get(room, 0):
                self._committed_ids[room] = last
                self._last_ids[room] = max(self._last_ids.get(room, 0), last)

    def _reattach(self) -> None:
        """Use the file at the path again, knowing every id handed out."""
        if self._db is None:
            self._attach(BUSY_TIMEOUT_MS)
        self._restore_last_ids()
        self._lost = None

    def _restore_last_ids(self) -> None:
        """Raise each room's last id in the file to what chatd handed out.

        A file put there by someone else may be ahead of chatd instead:
        then chatd takes its ids, and the pending batch (numbered before)
        is refused.
        """
        rows: list[Any] = self._transaction(self._connection(), self._merge_last_ids)
        ahead = []
        for room, last in rows:
            if room in self._committed_ids and isinstance(last, int) and last > self._committed_ids[room]:
                self._committed_ids[room] = self._last_ids[room] = last
                ahead.append(room)
        if ahead:
            raise HistoryError(f"history database {self.path} has newer ids than chatd for {', '.join(ahead)}")

    def _merge_last_ids(self, db: sqlite3.Connection) -> list[Any]:
        db.executemany(
            "INSERT INTO rooms (room, last_id) VALUES (?, ?)"
            " ON CONFLICT (room) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
            list(self._committed_ids.items()),
        )
        return db.execute("SELECT room, last_id FROM rooms").fetchall()

    # -- transactions ------------------------------------------------------

    def _transaction(self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T], action: str = "write to") -> _T:
        """Run ``work`` in one write transaction; SQLite errors become HistoryError.

        ``BEGIN IMMEDIATE`` takes the write lock first, so a lock held by
        another process shows at once, as :class:`HistoryBusy`.
        """
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise
        except sqlite3.Error as problem:
            raise self._failure(action, problem) from None
        return result

    def _rollback(self, db: sqlite3.Connection) -> None:
        """Roll back, without letting a failure hide the error that led here."""
        # After some errors (SQLITE_FULL, SQLITE_IOERR, ...) SQLite has
        # rolled back already; a ROLLBACK then fails with "no transaction
        # is active", which used to replace the real error in every log.
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as problem:
            self.log.warn("rolling back on history database {path} failed too: {problem}", path=self.path, problem=str(problem))

    def _failure(self, action: str, problem: sqlite3.Error) -> HistoryError:
        text = f"cannot {action} history database {self.path}: {problem}"
        return HistoryBusy(text) if _is_busy(problem) else HistoryError(text)

    # -- primitives ----------------------------------------------------------

    def _verify(self) -> None:
        self._writable()
        self._query("SELECT room, last_id FROM rooms", ())
        self._query("SELECT room, id FROM messages ORDER BY room DESC, id DESC LIMIT 1", ())

    def _probe(self) -> None:
        # A message-sized row written and deleted in one transaction: it
        # needs the room on disk a message needs, and leaves nothing.
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO messages (room, id, sender, text, timestamp) VALUES (?, 0, '', ?, '')",
                (_PROBE_ROOM, "x" * 1000),
            )
            db.execute("DELETE FROM messages WHERE room = ?", (_PROBE_ROOM,))

        self._transaction(self._writable(), work)

    def _load_last_id(self, room: str) -> int:
        rows = self._query("SELECT last_id FROM rooms WHERE room = ?", (room,))
        if not rows:
            return 0
        last = rows[0][0]
        if type(last) is not int:
            raise HistoryError(f"history database {self.path} holds a malformed last id for {room}: {last!r}")
        return last

    def load_rooms(self) -> list[RoomRecord]:
        """Every room's record; a malformed one is logged and left out."""
        records = []
        for key, text in self._query("SELECT key, record FROM room_state", ()):
            try:
                records.append(RoomRecord.from_json(text))
            except (ValueError, TypeError) as problem:
                self.log.error("history database {path}: room {key!r} is malformed: {problem}", path=self.path, key=key, problem=str(problem))
        return records

    def save_room(self, record: RoomRecord) -> None:
        """Write ``record`` at once, in a transaction of its own."""

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO room_state (key, record) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET record = excluded.record",
                (record.key, record.to_json()),
            )

        self._transaction(self._writable(), work)

    def _write(self, batch: list[StoredMessage]) -> None:
        last_ids: dict[str, int] = {}
        for message in batch:
            last_ids[message.room] = message.id
        kept = self._kept(batch)
        owned = self._owned_dms(batch)

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO messages (room, id, sender, text, timestamp, notice) VALUES (?, ?, ?, ?, ?, ?)",
                [(m.room, m.id, m.sender, m.text, m.timestamp, int(m.notice)) for m in kept],
            )
            if owned:
                self._insert_dms(db, owned)
            db.executemany(
                "INSERT INTO rooms (room, last_id) VALUES (?, ?)"
                " ON CONFLICT (room) DO UPDATE SET last_id = excluded.last_id",
                list(last_ids.items()),
            )

        self._transaction(self._writable(), work)

    def _newest(self, room: str, limit: int | None) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, sender, text, timestamp, notice FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, -1 if limit is None else limit),
        )
        return self._messages(room, reversed(rows))

    def _after(self, room: str, after: int, limit: int) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, sender, text, timestamp, notice FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
            (room, after, limit),
        )
        return self._messages(room, rows)

    def _before(self, room: str, before: int, limit: int) -> list[StoredMessage]:
        rows = self._query(
            "SELECT id, sender, text, timestamp, notice FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (room, before, limit),
        )
        return self._messages(room, reversed(rows))

    def _prune(self, count: int | None, cutoff: str | None) -> int:
        def work(db: sqlite3.Connection) -> int:
            dropped = 0
            if cutoff is not None:
                dropped += db.execute("DELETE FROM messages WHERE timestamp < ?", (cutoff,)).rowcount
            if count is not None:
                dropped += db.execute(
                    "DELETE FROM messages WHERE id <= (SELECT last_id FROM rooms WHERE rooms.room = messages.room) - ?",
                    (count,),
                ).rowcount
            return dropped

        return self._transaction(self._writable(), work, "prune")

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as problem:
            raise self._failure("read", problem) from None

    def _messages(self, room: str, rows: Iterable[Any]) -> list[StoredMessage]:
        found = []
        for message_id, sender, text, timestamp, notice in rows:
            # SQLite keeps any type in any column: a damaged or foreign
            # file must not crash the encoder further on.
            if type(message_id) is not int or not all(isinstance(value, str) for value in (sender, text, timestamp)):
                raise HistoryError(f"history database {self.path} holds a malformed message in {room}: id {message_id!r}")
            found.append(StoredMessage(message_id, room, sender, text, timestamp, notice=notice == 1))
        return found

    # == accounts and moderation (issue 16) ================================

    def load_account(self, key: str) -> AccountRecord | None:
        """The account named ``key`` (any case), or None."""
        rows = self._query("SELECT name, password_hash, created FROM accounts WHERE key = ?", (key.lower(),))
        return self._account(rows[0]) if rows else None

    def save_account(self, record: AccountRecord) -> None:
        """Write ``record`` at once (a new account, or its new hash)."""

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO accounts (key, name, password_hash, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET name = excluded.name, password_hash = excluded.password_hash,"
                " created = excluded.created",
                (record.key, record.name, record.password_hash, record.created),
            )

        self._transaction(self._writable(), work)

    def create_account(self, record: AccountRecord) -> bool:
        """Write ``record`` at once unless its name is an account already."""

        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO accounts (key, name, password_hash, created) VALUES (?, ?, ?, ?)",
                (record.key, record.name, record.password_hash, record.created),
            )
            return cursor.rowcount > 0

        return self._transaction(self._writable(), work)

    def accounts(self) -> list[AccountRecord]:
        """Every account, by key."""
        return [self._account(row) for row in self._query("SELECT name, password_hash, created FROM accounts ORDER BY key", ())]

    def _account(self, row: Any) -> AccountRecord:
        name, password_hash, created = row
        if not all(isinstance(value, str) for value in row):
            raise HistoryError(f"history database {self.path} holds a malformed account: {name!r}")
        return AccountRecord(name, password_hash, created)

    def prune_restrictions(self, now: float) -> int:
        """Drop the bans and mutes that ended before ``now``; how many."""

        def work(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM restrictions WHERE expires IS NOT NULL AND expires <= ?", (now,)).rowcount

        return self._transaction(self._writable(), work, "prune")

    def add_membership(self, account: str, room: str) -> None:
        """``account`` is in ``room`` (its place stays if it was)."""

        def work(db: sqlite3.Connection) -> None:
            # seq counts per account: the order in which it joined its rooms.
            db.execute(
                "INSERT OR IGNORE INTO memberships (account, room, seq)"
                " SELECT ?1, ?2, coalesce(max(seq), 0) + 1 FROM memberships WHERE account = ?1",
                (account.lower(), room.lower()),
            )

        self._transaction(self._writable(), work)

    def remove_membership(self, account: str, room: str) -> None:
        """``account`` left ``room``."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM memberships WHERE account = ? AND room = ?", (account.lower(), room.lower()))

        self._transaction(self._writable(), work)

    def memberships(self, account: str) -> list[str]:
        """The rooms ``account`` is in, in the order it joined them."""
        rows = self._query("SELECT room FROM memberships WHERE account = ? ORDER BY seq", (account.lower(),))
        return [self._text(row[0], "membership") for row in rows]

    def room_accounts(self, room: str) -> list[str]:
        """The accounts in ``room``, by key."""
        rows = self._query("SELECT account FROM memberships WHERE room = ? ORDER BY account", (room.lower(),))
        return [self._text(row[0], "membership") for row in rows]

    def store_dms(self, entries: Iterable[tuple[str, StoredMessage]]) -> None:
        """Write each DM for its owner at once, in one transaction; one kept already stays as it is."""
        rows = [(owner.lower(), message) for owner, message in entries]
        if rows:
            self._transaction(self._writable(), lambda db: self._insert_dms(db, rows))

    @staticmethod
    def _insert_dms(db: sqlite3.Connection, rows: list[tuple[str, StoredMessage]]) -> None:
        """Insert DMs kept for their owners (inside a transaction: a batch's
        commit could call it too, to keep them with their ids)."""
        db.executemany(
            "INSERT OR IGNORE INTO dm_messages (owner, conversation, id, sender, recipient, text, timestamp, notice)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(owner, m.room, m.id, m.sender, m.to or "", m.text, m.timestamp, int(m.notice)) for owner, m in rows],
        )

    def mark_delivered_many(self, marks: Iterable[tuple[str, str, int]]) -> None:
        """Raise each ``(owner, conversation)`` mark to ``last_id``, in one transaction."""
        rows = [(owner.lower(), conversation, last_id) for owner, conversation, last_id in marks]
        if not rows:
            return

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO delivery_marks (owner, conversation, last_id) VALUES (?, ?, ?)"
                " ON CONFLICT (owner, conversation) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
                rows,
            )

        self._transaction(self._writable(), work)

    def _load_restrictions(self, kind: str, room: str | None) -> list[Restriction]:
        columns = "room_name, user_name, expires, set_by, comment, created"
        if room is None:
            rows = self._query(f"SELECT {columns} FROM restrictions WHERE kind = ? ORDER BY room, name", (kind,))
        else:
            rows = self._query(f"SELECT {columns} FROM restrictions WHERE kind = ? AND room = ? ORDER BY name", (kind, room))
        found = []
        for room_name, user_name, expires, by, comment, created in rows:
            if (
                not isinstance(room_name, str)
                or not isinstance(user_name, str)
                or not isinstance(comment, str)
                or not (expires is None or type(expires) in (int, float))
                or not (by is None or isinstance(by, str))
                or not (created is None or isinstance(created, str))
            ):
                raise HistoryError(f"history database {self.path} holds a malformed {kind} in {room_name!r}")
            found.append(Restriction(room_name, user_name, None if expires is None else float(expires), by, comment, created))
        return found

    def _save_restriction(self, kind: str, restriction: Restriction) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO restrictions"
                " (kind, room, name, room_name, user_name, expires, set_by, comment, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    restriction.room_key,
                    restriction.key,
                    restriction.room,
                    restriction.name,
                    restriction.expires,
                    restriction.by,
                    restriction.comment,
                    restriction.created,
                ),
            )

        self._transaction(self._writable(), work)

    def _remove_restriction(self, kind: str, room: str, name: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute("DELETE FROM restrictions WHERE kind = ? AND room = ? AND name = ?", (kind, room, name))
            return cursor.rowcount > 0

        return self._transaction(self._writable(), work)

    def _dm_newest(self, owner: str, conversation: str, limit: int | None) -> list[StoredMessage]:
        rows = self._query(
            f"SELECT {_DM_COLUMNS} FROM dm_messages WHERE owner = ? AND conversation = ? ORDER BY id DESC LIMIT ?",
            (owner, conversation, -1 if limit is None else limit),
        )
        return self._dms(conversation, reversed(rows))

    def _dm_after(self, owner: str, conversation: str, after: int, limit: int) -> list[StoredMessage]:
        rows = self._query(
            f"SELECT {_DM_COLUMNS} FROM dm_messages WHERE owner = ? AND conversation = ? AND id > ? ORDER BY id LIMIT ?",
            (owner, conversation, after, limit),
        )
        return self._dms(conversation, rows)

    def _dm_before(self, owner: str, conversation: str, before: int, limit: int) -> list[StoredMessage]:
        rows = self._query(
            f"SELECT {_DM_COLUMNS} FROM dm_messages WHERE owner = ? AND conversation = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (owner, conversation, before, limit),
        )
        return self._dms(conversation, reversed(rows))

    def _dm_conversations(self, owner: str) -> dict[str, int]:
        rows = self._query("SELECT conversation, max(id) FROM dm_messages WHERE owner = ? GROUP BY conversation", (owner,))
        return {self._text(conversation, "DM"): self._number(newest, "DM") for conversation, newest in rows}

    def _marks(self, owner: str) -> dict[str, int]:
        rows = self._query("SELECT conversation, last_id FROM delivery_marks WHERE owner = ?", (owner,))
        return {self._text(conversation, "delivery mark"): self._number(mark, "delivery mark") for conversation, mark in rows}

    def _prune_dms(self, count: int | None, cutoff: str | None) -> int:
        def work(db: sqlite3.Connection) -> int:
            dropped = 0
            if cutoff is not None:
                dropped += db.execute("DELETE FROM dm_messages WHERE timestamp < ?", (cutoff,)).rowcount
            if count is not None:
                # As rooms are pruned: by the conversation's last id.
                dropped += db.execute(
                    "DELETE FROM dm_messages WHERE id <= (SELECT last_id FROM rooms WHERE rooms.room = dm_messages.conversation) - ?",
                    (count,),
                ).rowcount
            return dropped

        return self._transaction(self._writable(), work, "prune")

    def _dms(self, conversation: str, rows: Iterable[Any]) -> list[StoredMessage]:
        found = []
        for message_id, sender, recipient, text, timestamp, notice in rows:
            if type(message_id) is not int or not all(isinstance(value, str) for value in (sender, recipient, text, timestamp)):
                raise HistoryError(f"history database {self.path} holds a malformed DM in {conversation}: id {message_id!r}")
            found.append(StoredMessage(message_id, conversation, sender, text, timestamp, recipient or None, notice=notice == 1))
        return found

    def _text(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise HistoryError(f"history database {self.path} holds a malformed {what}: {value!r}")
        return value

    def _number(self, value: Any, what: str) -> int:
        if type(value) is not int:
            raise HistoryError(f"history database {self.path} holds a malformed {what}: {value!r}")
        return value

    # == end of accounts and moderation ====================================


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _remove_quietly(path: str) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass

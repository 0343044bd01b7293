"""The parts of a single node: names in memory, a bus over a local store.

:class:`LocalNames` holds the names of this process; :class:`LocalBus`
gives a message its id from the :class:`~chatd.stores.history.HistoryStore`
(memory or SQLite), commits each reactor turn's batch in one transaction
and only then delivers it; :class:`LocalHistory` reads that store.  The
cluster's counterparts live in :mod:`chatd.cluster`.

When another process holds the database locked, the commit fails at
once instead of waiting (waiting would freeze every user): the batch
stays pending and the commit is tried again a little later, messages
accepted meanwhile joining the batch.  Nothing of it is delivered before
it is stored, or has failed after ``RETRY_FOR`` seconds of tries (then
its drafts fail and their senders get ``server_busy``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd import messages
from chatd.core.rooms import Delivery, Draft, is_dm
from chatd.interfaces import IHistory, IMessageBus, INameRegistry, IReceiver, IRoomDirectory
from chatd.messages import ChatError
from chatd.metrics import Metrics
from chatd.stores.history import HistoryBusy, HistoryError, HistoryStore, Retention, StoredMessage
from chatd.stores.roomstate import RoomRecord

#: Commits the database refused as locked are tried again after
#: ``RETRY_FIRST`` seconds, each wait doubling up to ``RETRY_MAX``; after
#: ``RETRY_FOR`` seconds of tries the batch fails.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
RETRY_FOR = 5.0


@implementer(INameRegistry)
class LocalNames:
    """The names held in this process, in login order."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}  # lower-cased -> as given

    def claim(self, name: str, on_lost: Any = None) -> Deferred[None]:
        """Take ``name`` unless it is held (a local name is never lost)."""
        key = name.lower()
        if key in self._held:
            return fail(ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken."))
        self._held[key] = name
        return succeed(None)

    def release(self, name: str) -> None:
        """The name is free at once."""
        self._held.pop(name.lower(), None)

    def names(self) -> Deferred[list[str]]:
        """Every name held, in login order."""
        return succeed(list(self._held.values()))


@implementer(IRoomDirectory)
class LocalRooms:
    """Rooms kept in the local store; members are this process's sessions.

    Every record is read from the store when first needed (twistd opens
    the store, closes it and reopens it after it forks) and written back
    when it changes.  Roles held by guests end with their sessions, so none
    survives a restart: they are dropped as the records are read (the
    accounts' roles, once there are accounts, stay).
    """

    def __init__(self, store: HistoryStore, is_account: Callable[[str], bool] = lambda name: False) -> None:
        self.store = store
        self.is_account = is_account
        self._loaded: dict[str, RoomRecord] | None = None
        self._members: dict[str, dict[str, str]] = {}  # key -> lower name -> name, in entry order

    @property
    def _records(self) -> dict[str, RoomRecord]:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def _load(self) -> dict[str, RoomRecord]:
        """Every room's record from the store, guests' roles dropped."""
        records = {}
        for record in self.store.load_rooms():
            ops = tuple(name for name in record.ops if self.is_account(name))
            voiced = tuple(name for name in record.voiced if self.is_account(name))
            records[record.key] = RoomRecord(
                record.name, record.created, record.topic, record.topic_by, record.topic_set_at,
                dict(record.modes), ops, voiced,
            )
        return records

    def get(self, key: str) -> RoomRecord | None:
        """The room's record, if it exists."""
        return self._records.get(key)

    def records(self) -> list[RoomRecord]:
        """Every room's record."""
        return list(self._records.values())

    def create(self, name: str, created: str) -> Deferred[RoomRecord]:
        """The room, created (and stored) with ``name``'s spelling if new."""
        record = self._records.get(name.lower())
        if record is not None:
            return succeed(record)
        return self._keep(RoomRecord(name, created))

    def update(self, key: str, change: Callable[[RoomRecord], RoomRecord]) -> Deferred[RoomRecord]:
        """Change the room's record and store it."""
        return self._keep(change(self._records[key]))

    def _keep(self, record: RoomRecord) -> Deferred[RoomRecord]:
        try:
            self.store.save_room(record)
        except HistoryError:
            return fail()
        self._records[record.key] = record
        return succeed(record)

    def enter(self, key: str, name: str) -> Deferred[None]:
        """``name`` entered the room."""
        self._members.setdefault(key, {})[name.lower()] = name
        return succeed(None)

    def leave(self, key: str, name: str) -> None:
        """``name`` left the room."""
        members = self._members.get(key)
        if members is not None:
            members.pop(name.lower(), None)
            if not members:
                del self._members[key]

    def members(self, key: str) -> Deferred[list[str]]:
        """The room's members now, in entry order."""
        return succeed(list(self._members.get(key, {}).values()))

    def counts(self) -> Deferred[dict[str, int]]:
        """Members now, per room that has any."""
        return succeed({key: len(members) for key, members in self._members.items()})


@implementer(IHistory)
class LocalHistory:
    """Reads of a local store, as the core's asynchronous contract."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    @property
    def kind(self) -> str:
        """``memory`` or ``sqlite``."""
        return self.store.kind

    def recent(self, room: str, limit: int | None) -> Deferred[list[StoredMessage]]:
        """The newest ``limit`` messages, oldest first (fails: HistoryError)."""
        try:
            return succeed(self.store.recent(room, limit))
        except HistoryError:
            return fail()

    def page(self, room: str, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A page and whether more lie beyond it (fails: HistoryError)."""
        try:
            return succeed(self.store.page(room, before=before, after=after, limit=limit))
        except HistoryError:
            return fail()

    def check(self) -> None:
        """Raise ``HistoryError`` unless the store can read and write."""
        self.store.check()

    def open(self) -> None:
        """Open (or reopen) the store, if it has anything to open."""
        reopen = getattr(self.store, "open", None)
        if reopen is not None:
            reopen()

    def prune(self, retention: Retention, now: float) -> int:
        """Drop what ``retention`` no longer keeps."""
        return self.store.prune(retention, now)

    def close(self) -> None:
        """Commit what is pending and close the store."""
        self.store.close()


@implementer(IMessageBus)
class LocalBus:
    """Ids and storage from a local store; delivery right after the commit.

    Messages published in one reactor turn are committed in one
    transaction (``callLater(0)``), then delivered, then their drafts'
    drafts are settled: a sender waiting on them sees its own echo first.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, store: HistoryStore, metrics: Metrics | None = None) -> None:
        self.clock = clock
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self._receiver: IReceiver | None = None
        self._batch: list[tuple[StoredMessage, Draft]] = []
        self._flush_call: Any = None
        self._busy_since: float | None = None
        self._retry_delay = RETRY_FIRST

    #: One node: every session is in this process.
    remote = False

    def subscribe(self, receiver: IReceiver) -> None:
        """Stored batches go to ``receiver``."""
        self._receiver = receiver

    def announce(self, user: str, status: str, room: str) -> None:
        """A single node has no other node to tell."""

    def announce_event(self, room: str, kind: str, content: dict[str, object]) -> None:
        """A single node has no other node to tell."""

    def watch(self, room: str) -> Deferred[int]:
        """Every room is delivered here: its newest committed id.

        Messages appended and not yet committed are delivered at their
        commit, to whoever is a member then; history reads committed ones.
        """
        try:
            return succeed(self.store.last_id(room))
        except HistoryError:
            return fail()

    def unwatch(self, room: str) -> None:
        """Nothing to stop: a single node delivers every room."""

    def publish(self, draft: Draft) -> None:
        """Give ``draft`` the next id of its room; commit with this turn's batch."""
        try:
            # A DM's text is kept only for its sides that are accounts
            # (section 6.3), apart from rooms' history; its id always.
            message = self.store.append(
                draft.room,
                draft.sender,
                draft.text,
                draft.timestamp,
                to=draft.to,
                keep=not is_dm(draft.room),
                owners=draft.owners,
                offline=draft.offline,
                notice=draft.notice,
            )
        except HistoryError as problem:
            draft.settle(problem)
            return
        self._batch.append((message, draft))
        # While a retry is scheduled, new messages join its batch.
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._scheduled_flush)

    @property
    def pending(self) -> int:
        """Messages published and not yet stored."""
        return len(self._batch)

    def flush(self) -> None:
        """Store the pending batch now: at shutdown, one last quick try (a
        batch the database still refuses fails at once)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._commit(last_try=True)

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self._commit(last_try=False)

    def _commit(self, last_try: bool) -> None:
        """Commit the pending batch; deliver it, fail it or try again later."""
        retry = not last_try and not self._retries_exhausted()
        started = time.perf_counter()
        try:
            self.store.commit(retry=retry)
        except HistoryBusy as problem:
            if retry:
                self._retry_later(str(problem))
                return
            self._finish(failure=problem)
        except HistoryError as problem:
            self._finish(failure=problem)
        else:
            self._finish(seconds=time.perf_counter() - started)

    def _finish(self, failure: HistoryError | None = None, seconds: float = 0.0) -> None:
        """The batch is stored (deliver it) or lost; then settle its drafts."""
        batch, self._batch = self._batch, []
        if self._busy_since is not None:
            waited = self.clock.seconds() - self._busy_since
            self._busy_since = None
            if failure is None:
                self.log.info("history database free again: {count} messages stored after {waited:.2f} s", count=len(batch), waited=waited)
        if failure is not None:
            if batch:
                self.log.error("could not store {count} messages: {problem}", count=len(batch), problem=str(failure))
            for _message, draft in batch:
                draft.settle(failure)
            return
        if not batch:
            return
        self.metrics.history_write_seconds.observe(seconds)
        self.metrics.messages_accepted.inc(len(batch))
        try:
            if self._receiver is not None:
                for delivery in _by_room(batch):
                    self._receiver.receive(delivery)
        finally:
            # Stored: every sender gets its answer, whatever delivery did.
            for message, draft in batch:
                draft.settle(message)

    def _retries_exhausted(self) -> bool:
        return self._busy_since is not None and self.clock.seconds() - self._busy_since >= RETRY_FOR

    def _retry_later(self, problem: str) -> None:
        """Keep the batch pending and try its commit again a little later."""
        now = self.clock.seconds()
        if self._busy_since is None:
            self._busy_since = now
            self._retry_delay = RETRY_FIRST
            self.log.warn("history database busy, {count} messages wait: {problem}", count=len(self._batch), problem=problem)
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        # The last try falls on the bound, not up to RETRY_MAX after it.
        delay = min(self._retry_delay, max(0.0, self._busy_since + RETRY_FOR - now))
        self._flush_call = self.clock.callLater(delay, self._scheduled_flush)


def _by_room(batch: list[tuple[StoredMessage, Draft]]) -> list[Delivery]:
    """The batch as deliveries of one room each, in the batch's order:
    each run of messages to the same room is one delivery, so a sender
    sees its echoes in the order it sent them (a burst to one room is
    still one delivery)."""
    deliveries: list[Delivery] = []
    stored: list[StoredMessage] = []
    drafts: list[Draft | None] = []
    for message, draft in batch:
        if stored and message.room != stored[0].room:
            deliveries.append(Delivery(stored[0].room, stored, drafts))
            stored, drafts = [], []
        stored.append(message)
        drafts.append(draft)
    if stored:
        deliveries.append(Delivery(stored[0].room, stored, drafts))
    return deliveries

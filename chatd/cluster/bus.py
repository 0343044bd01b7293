"""The cluster's message bus: ids, order and storage in Redis streams
(:class:`RedisBus`).

**Publishing**: the drafts a node accepts in one reactor turn go to
Redis in one script call per room (:data:`~chatd.cluster.scripts.PUBLISH`):
it takes each message's id from ``INCR chatd:seq:<room>`` and appends it
under the stream id ``<id>-1`` atomically, so ids are integers, strictly
increasing across all nodes.  Each entry carries the publishing node and
a token; the publisher does *not* deliver.

**Reading**: every node, the publisher included, reads the streams
(``XREAD BLOCK``) and hands each reply's messages of a room to the core
as one :class:`~chatd.core.rooms.Delivery`, so every user sees one order.
A message this node published (its node and token) carries its
:class:`~chatd.core.rooms.Draft` there (the sender finds its own echo),
and its draft's ``stored`` fires after the delivery.  A node that loses
Redis resumes reading from the last stream id it delivered: nothing is
skipped, nothing repeated.  Before the first read a node finds where it
starts (:meth:`RedisBus.when_ready`): just past the newest message the
script gave.

**Presence** of this node's users goes to ``chatd:presence:<room>``,
read in the same ``XREAD``; the other nodes' entries go to the core.

Entries PUBLISH did not write are skipped and logged once
(:mod:`chatd.cluster.entries`); the script deletes stray entries beyond
its sequence (so its next ``XADD`` still fits), and a reader that meets
one asks for that same repair instead of moving its read position past
it.  The read loop survives anything: whatever goes wrong with one reply
is logged, and reading goes on after a growing delay.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.cluster.entries import (
    BadEntry,
    SkipLog,
    entry_id,
    id_order,
    lenient_fields,
    parse_message,
    parse_presence,
    script_id,
    sequence,
)
from chatd.cluster.link import CALL_TIMEOUT, READ_BLOCK, Link, RedisUnavailable, cluster_busy
from chatd.cluster.scripts import PUBLISH, REPAIR, presence_key, seq_key, stream_key
from chatd.core.hub import DEFAULT_ROOM
from chatd.core.rooms import Delivery, Draft
from chatd.interfaces import IMessageBus, IReceiver
from chatd.metrics import Metrics
from chatd.stores.history import HistoryError, StoredMessage

#: Messages kept per room stream (approximately).
STREAM_MAXLEN = 100_000
#: Entries kept per presence stream (approximately).
PRESENCE_MAXLEN = 1000
#: Delays between attempts of a failing read loop (s): doubled each time.
READ_RETRY = 0.5
READ_RETRY_MAX = 5.0
#: How long the loop waits for both links to be up before looking again (s).
LINK_WAIT = 0.2
#: Entries one XREAD may return, and how long it blocks (ms).
READ_COUNT = "500"
READ_BLOCK_MS = str(int(READ_BLOCK * 1000))


class _Room:
    """Where this node is in one room's two streams."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.stream = stream_key(room)
        self.seq = seq_key(room)
        self.presence = presence_key(room)
        # The stream id read up to (None: the start is not found yet); it
        # may be a stray entry's id, once the repair made that final.
        self.position: str | None = None
        self.presence_position = "0-0"
        self.last_delivered = 0  # the greatest message id delivered


@implementer(IMessageBus)
class RedisBus:
    """Publishes this node's drafts to Redis and delivers every node's
    messages, in stream order, to the receiver (the hub)."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        commands: Link,
        reader: Link,
        node: str,
        max_message: int = 2000,
        metrics: Metrics | None = None,
        skips: SkipLog | None = None,
        rooms: Iterable[str] = (DEFAULT_ROOM,),
    ) -> None:
        self.clock = clock
        self.commands = commands
        self.reader = reader
        self.node = node
        self.max_message = max_message
        self.metrics = metrics if metrics is not None else Metrics()
        self.skips = skips if skips is not None else SkipLog()
        self._rooms = {room: _Room(room) for room in rooms}
        # Stream key -> (its room, whether it is the presence stream).
        self._keys = {key: (room, key == room.presence) for room in self._rooms.values() for key in (room.stream, room.presence)}
        self._receiver: IReceiver | None = None
        self._tokens = itertools.count(1)
        self._outbox: list[Draft] = []
        self._publish_call: IDelayedCall | None = None
        self._pending: dict[str, Draft] = {}  # token -> our draft not yet read back
        self._ready = False
        self._ready_waiters: list[tuple[Deferred[None], IDelayedCall]] = []
        self._retry = READ_RETRY
        self._stopped = True

    # -- the bus contract ------------------------------------------------------

    def subscribe(self, receiver: IReceiver) -> None:
        """Stored batches and other nodes' presence go to ``receiver``."""
        self._receiver = receiver

    def publish(self, draft: Draft) -> None:
        """Queue ``draft`` for this turn's script call; it is settled once
        it was read back and delivered here (or could not be stored)."""
        if draft.room not in self._rooms:
            draft.settle(HistoryError(f"no stream for the room {draft.room!r}"))
        elif not self.commands.connected:
            draft.settle(cluster_busy())
        else:
            # Published in one EVAL per reactor turn, like the single
            # node's one transaction per turn.
            self._outbox.append(draft)
            if self._publish_call is None:
                self._publish_call = self.clock.callLater(0, self._publish)

    def announce(self, user: str, status: str, room: str) -> None:
        """Tell the other nodes that ``user`` came or went in ``room``."""
        target = self._rooms.get(room)
        if target is None:
            return
        d = self.commands.call(
            "XADD", target.presence, "MAXLEN", "~", str(PRESENCE_MAXLEN), "*",
            "user", user, "status", status, "node", self.node,
        )
        d.addErrback(self._log_failure, "announcing presence")

    #: Other nodes may hold sessions.
    remote = True

    def announce_event(self, room: str, kind: str, content: dict[str, object]) -> None:
        """Room events do not cross nodes yet (rooms other than #lobby are
        not clustered yet)."""

    def watch(self, room: str) -> Deferred[int]:
        """Only the rooms this bus was built with are read."""
        if room not in self._rooms:
            return fail(HistoryError(f"no stream for the room {room!r}"))
        return succeed(self._rooms[room].last_delivered)

    def unwatch(self, room: str) -> None:
        """Nothing to stop: only fixed rooms are read."""

    def flush(self) -> None:
        """Publish what this turn accepted now (at shutdown)."""
        if self._publish_call is not None and self._publish_call.active():
            self._publish_call.cancel()
            self._publish()

    # -- life --------------------------------------------------------------------

    def start(self) -> None:
        """Start the read loop (it finds its start first, then reads)."""
        if self._stopped:
            self._stopped = False
            self._read()

    def stop(self) -> None:
        """Publish what is pending and stop reading."""
        self.flush()
        self._stopped = True

    @property
    def ready(self) -> bool:
        """Whether this node knows where it reads every stream from."""
        return self._ready

    def when_ready(self) -> Deferred[None]:
        """Fires once this node knows where in the streams it starts reading.

        Until then nobody may log in here: a message posted earlier would
        lie before the start position and never be delivered here.  Fails
        with :class:`RedisUnavailable` after :data:`CALL_TIMEOUT` seconds.
        """
        if self._ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def too_late() -> None:
            self._ready_waiters = [pair for pair in self._ready_waiters if pair[0] is not waiter]
            waiter.errback(RedisUnavailable("this node does not know its place in the streams yet"))

        self._ready_waiters.append((waiter, self.clock.callLater(CALL_TIMEOUT, too_late)))
        return waiter

    def last_delivered(self, room: str = DEFAULT_ROOM) -> int:
        """The greatest message id of ``room`` delivered on this node."""
        return self._rooms[room].last_delivered

    def position(self, room: str = DEFAULT_ROOM) -> str | None:
        """The stream id of ``room`` read up to (None before the start is known)."""
        return self._rooms[room].position

    @property
    def pending(self) -> int:
        """Our messages published and not yet read back."""
        return len(self._pending) + len(self._outbox)

    # -- publishing ----------------------------------------------------------------

    def _publish(self) -> None:
        self._publish_call = None
        outbox, self._outbox = self._outbox, []
        by_room: dict[str, list[Draft]] = {}
        for draft in outbox:
            by_room.setdefault(draft.room, []).append(draft)
        for room, drafts in by_room.items():
            self._publish_room(self._rooms[room], drafts)

    def _publish_room(self, room: _Room, drafts: list[Draft]) -> None:
        fields: list[str] = []
        tokens: list[str] = []
        for draft in drafts:
            token = str(next(self._tokens))
            self._pending[token] = draft
            tokens.append(token)
            fields += [draft.sender, draft.text, draft.timestamp, self.node, token]
        d = self.commands.call("EVAL", PUBLISH, "2", room.seq, room.stream, str(STREAM_MAXLEN), *fields)
        d.addCallbacks(self._published, self._publish_failed, errbackArgs=(tokens,))

    def _published(self, ids: Any) -> None:
        if isinstance(ids, list):
            self.metrics.messages_accepted.inc(len(ids))

    def _publish_failed(self, failure: Failure, tokens: list[str]) -> None:
        # Those the stream brought already were delivered; the rest fail
        # now (if Redis stored them after all, they arrive later as
        # anyone's messages).
        self.log.warn("publishing failed: {problem}", problem=str(failure.value))
        for token in tokens:
            draft = self._pending.pop(token, None)
            if draft is not None:
                draft.settle(HistoryError(f"publishing failed: {failure.value}"))

    # -- the read loop ---------------------------------------------------------------

    def _read(self) -> None:
        """One turn of the read loop; each turn schedules exactly one next.

        Whatever goes wrong in a turn (Redis away, a reply of a shape we
        do not expect, a bug) is logged and the next turn comes after a
        delay that doubles up to :data:`READ_RETRY_MAX`: reading never
        stops while the node runs.
        """
        if self._stopped:
            return
        if not self.reader.connected or not self.commands.connected:
            self.clock.callLater(LINK_WAIT, self._read)
            return
        d = maybeDeferred(self._read_once)
        d.addCallbacks(self._read_done, self._read_failed)

    def _read_once(self) -> Deferred[Any]:
        if not self._ready:
            return self._find_start()
        rooms = list(self._rooms.values())
        keys = [key for room in rooms for key in (room.stream, room.presence)]
        positions = [position for room in rooms for position in (room.position or "0-0", room.presence_position)]
        d = self.reader.call("XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", *keys, *positions)
        return d.addCallback(self._got_entries)

    def _read_done(self, _: object) -> None:
        self._retry = READ_RETRY
        self.clock.callLater(0, self._read)

    def _read_failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        kind = failure.type.__name__ if failure.type is not None else "Error"
        problem = f"{kind}: {failure.getErrorMessage()}"[:300]
        self.log.warn("reading the stream failed ({problem}); trying again in {delay}s", problem=problem, delay=self._retry)
        self.clock.callLater(self._retry, self._read)
        self._retry = min(self._retry * 2, READ_RETRY_MAX)

    # -- the start ---------------------------------------------------------------------

    def _find_start(self) -> Deferred[None]:
        """Start each room just past the newest message the script gave.

        That is the repaired sequence, not the stream's newest entry: a
        stray entry there (a clock id, say) must not become our position.
        """
        d: Deferred[Any] = succeed(None)
        for room in self._rooms.values():
            if room.position is None:
                d.addCallback(self._find_room_start, room)
        return d.addCallback(self._became_ready)

    def _find_room_start(self, _: object, room: _Room) -> Deferred[None]:
        d = self.commands.call("EVAL", REPAIR, "2", room.seq, room.stream)
        return d.addCallback(self._find_presence_start, room)

    def _find_presence_start(self, seq: Any, room: _Room) -> Deferred[None]:
        start = sequence(seq)
        d = self.commands.call("XREVRANGE", room.presence, "+", "-", "COUNT", "1")
        return d.addCallback(self._start_at, room, start)

    @staticmethod
    def _start_at(newest: Any, room: _Room, start: int) -> None:
        if newest:
            top = newest[0][0] if isinstance(newest, list) and isinstance(newest[0], list) and newest[0] else None
            if not isinstance(top, str) or id_order(top) is None:
                raise BadEntry(f"the newest presence entry has no stream id: {top!r:.60}")
            room.presence_position = top
        room.position = f"{start}-1" if start else "0-0"
        room.last_delivered = start

    def _became_ready(self, _: object) -> None:
        self._ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter, timeout in waiters:
            timeout.cancel()
            waiter.callback(None)

    # -- a reply -----------------------------------------------------------------------

    def _got_entries(self, reply: Any) -> Deferred[Any] | None:
        """Deliver one ``XREAD`` reply (None: the block timed out).

        A reply of another shape raises (the loop logs it and retries).
        If stray entries hold a position back, the stream is repaired
        before the next read.
        """
        if reply is None:
            return None
        if not isinstance(reply, list):
            raise BadEntry(f"XREAD replied a {type(reply).__name__}")
        held: list[tuple[_Room, str]] = []
        for item in reply:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
                raise BadEntry("the XREAD reply is not [stream, entries] pairs")
            key, entries = item
            found = self._keys.get(key) if isinstance(key, str) else None
            if found is None:
                continue
            room, is_presence = found
            if is_presence:
                self._presence(room, entries)
                continue
            stray = self._stream_entries(room, entries)
            if stray is not None:
                held.append((room, stray))
        if not held:
            return None
        d: Deferred[Any] = succeed(None)
        for room, stray in held:
            d.addCallback(self._repair, room, stray)
        return d

    def _stream_entries(self, room: _Room, entries: list[Any]) -> str | None:
        """Deliver the messages among ``entries``; skip the rest.

        Returns the id of a stray entry the position could not move past
        (its id is not of the script's form, so a message may come later
        with a smaller id), or None.
        """
        stored: list[StoredMessage] = []
        drafts: list[Draft | None] = []
        held: str | None = None
        for entry in entries:
            stream_id = entry_id(entry)
            try:
                message, node, token = parse_message(room.room, entry, self.max_message)
            except BadEntry as problem:
                self.skips.skip(room.stream, stream_id, problem)
                self._fail_skipped(entry)
                if script_id(stream_id) is not None:
                    room.position, held = stream_id, None
                elif id_order(stream_id) is not None:
                    held = stream_id
                continue
            room.position, held = stream_id, None
            if message.id <= room.last_delivered:
                continue  # delivered already (read again after a failure)
            room.last_delivered = message.id
            stored.append(message)
            drafts.append(self._pending.pop(token, None) if node == self.node else None)
        if stored:
            self._deliver(Delivery(room.room, stored, drafts))
        return held

    def _deliver(self, delivery: Delivery) -> None:
        """Hand ``delivery`` to the core, then settle our drafts in it
        (whatever happened: their senders must get their answers)."""
        try:
            if self._receiver is not None:
                self._receiver.receive(delivery)
        finally:
            for message, draft in zip(delivery.messages, delivery.drafts):
                if draft is not None:
                    draft.settle(message)

    def _fail_skipped(self, entry: Any) -> None:
        """A skipped entry of ours: its draft fails (its sender waits no more)."""
        fields = lenient_fields(entry)
        token = fields.get("token")
        if fields.get("node") != self.node or not isinstance(token, str):
            return
        draft = self._pending.pop(token, None)
        if draft is not None:
            draft.settle(HistoryError("the message was stored in a form that cannot be read"))

    def _repair(self, _: object, room: _Room, held: str) -> Deferred[None]:
        """Have the script clear the stray entries beyond its sequence."""
        d = self.commands.call("EVAL", REPAIR, "2", room.seq, room.stream)
        return d.addCallback(self._repaired, room, held)

    @staticmethod
    def _repaired(seq: Any, room: _Room, held: str) -> None:
        # Every entry at or below "<seq>-1" is final (later messages get
        # greater ids): a stray entry there may be passed.  One above was
        # deleted: read again from where we are.
        held_order, position = id_order(held), id_order(room.position)
        if held_order is not None and position is not None and position < held_order <= (sequence(seq), 1):
            room.position = held

    def _presence(self, room: _Room, entries: list[Any]) -> None:
        """Other nodes' presence entries to the core (ours: the core told
        this node's sessions already)."""
        for entry in entries:
            stream_id = entry_id(entry)
            try:
                user, status, node = parse_presence(entry)
            except BadEntry as problem:
                self.skips.skip(room.presence, stream_id, problem)
                user = None
            if id_order(stream_id) is not None:
                room.presence_position = stream_id  # first: a failure below must not repeat it
            if user is not None and node != self.node and self._receiver is not None:
                self._receiver.receive_presence(user, status, room.room)

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))

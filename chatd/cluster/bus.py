"""The cluster's message bus: ids, order and storage in Redis streams
(:class:`RedisBus`).

**Publishing**: the drafts a node accepts in one reactor turn go to
Redis in one script call per room (:data:`~chatd.cluster.scripts.PUBLISH`):
it takes each message's id from ``INCR chatd:seq:<room>`` and appends it
under the stream id ``<id>-1`` atomically, so ids are integers, strictly
increasing across all nodes.  Each entry carries the publishing node and
a token.  The publisher delivers its own messages from the ids the
script returns, not from the stream (:meth:`RedisBus._deliver_own`): at
once when they come next in the room's order here, i.e. the id before
the first is delivered already; otherwise as soon as the read loop has
delivered the other nodes' messages before them.  The loop knows them by
their ids and skips them without decoding their fields.  Direct messages go, in one
call per turn, to the one stream every node reads
(:data:`~chatd.cluster.scripts.DM_PUBLISH`): the script takes each id
from the conversation's own sequence, refuses a message whose
recipient's name nobody holds (``no_such_user``) unless it is an
account's that may be offline (its entry then says ``offline``), and
keeps the message for each side that is an account, in the same step.

**Reading**: every node, the publisher included, reads the streams of
the rooms it *watches* (those with a member on this node, and
``#lobby``), and the direct messages' stream, with one ``XREAD BLOCK``,
and hands each reply's messages of a room to the core as one
:class:`~chatd.core.rooms.Delivery`, so every user sees one order: a
room's messages go out in id order, each once, whichever path brings
it.  A message this node published carries its
:class:`~chatd.core.rooms.Draft` there (the sender finds its own echo),
and its draft is settled after the delivery; one the stream brings
before the script's reply (its node and token) is delivered from the
stream.  A node that loses Redis
resumes reading from the last stream id it delivered: nothing is
skipped, nothing repeated.  Before the first read a node finds where it
starts (:meth:`RedisBus.when_ready`): just past the newest message the
script gave.

**Watching a room** (:meth:`RedisBus.watch`, when its first member here
joins) finds its start the same way, and fires with that id: the joiner
reads history up to it, and delivery takes over after it.  A blocking
read already under way does not know the room: a tiny entry in this
node's wake stream (``chatd:wake:<node>``, part of every read) ends it at
once, and the next read includes the room.  A room watched already
answers at once with the id delivered up to now.  A message posted to a
room this node does not watch (by a non-member, where ``no_external`` is
off) is answered from the script's ids: the core echoes it to its sender.

**Presence** of this node's users, and room events (``topic``, ...), go
to ``chatd:presence:<room>``, read with the room; the other nodes'
entries go to the core.  Other parts may *follow* a stream of their own
in the same read (:meth:`RedisBus.follow`: the rooms' records do).

Entries the scripts did not write are skipped and logged once
(:mod:`chatd.cluster.entries`); the script deletes stray entries beyond
its sequence (so its next ``XADD`` still fits), and a reader that meets
one asks for that same repair instead of moving its read position past
it.  The read loop survives anything: whatever goes wrong with one reply
is logged, and reading goes on after a growing delay.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd import messages
from chatd.cluster.entries import (
    BadEntry,
    SkipLog,
    entry_id,
    id_order,
    is_event,
    lenient_fields,
    parse_dm,
    parse_event,
    parse_message,
    parse_presence,
    script_id,
    sequence,
)
from chatd.cluster.link import CALL_TIMEOUT, READ_BLOCK, Link, RedisUnavailable, cluster_busy
from chatd.cluster.scripts import (
    DM_CONVS_PREFIX,
    DM_KEPT_PREFIX,
    DM_PUBLISH,
    DM_SEQ,
    DM_STREAM,
    PUBLISH,
    REPAIR,
    name_key,
    presence_key,
    seq_key,
    stream_key,
    wake_key,
)
from chatd.core.hub import DEFAULT_ROOM
from chatd.core.rooms import Delivery, Draft, is_dm
from chatd.interfaces import IMessageBus, IReceiver
from chatd.messages import ChatError
from chatd.metrics import Metrics
from chatd.stores.history import HistoryError, StoredMessage

#: Messages kept per room stream (approximately).
STREAM_MAXLEN = 100_000
#: Direct messages kept in their stream (approximately): it carries them
#: to every node (a node cut off catches up from it); nobody reads them
#: as history.
DM_MAXLEN = 10_000
#: DMs kept per account and conversation (the oldest go beyond).
DM_KEEP = 100_000
#: Entries kept per presence stream (approximately).
PRESENCE_MAXLEN = 1000
#: Entries kept in a node's wake stream, and how long it outlives its last use (ms).
WAKE_MAXLEN = 10
WAKE_TTL_MS = 60_000
#: Delays between attempts of a failing read loop (s): doubled each time.
READ_RETRY = 0.5
READ_RETRY_MAX = 5.0
#: How long the loop waits for both links to be up before looking again (s).
LINK_WAIT = 0.2
#: Entries one XREAD may return, and how long it blocks (ms).
READ_COUNT = "500"
#: Entries per stream of the read that follows a reply that held nothing
#: but our own messages, delivered already from the script's ids: the
#: blocking read then brings one of each batch we publish, and the read
#: after it starts past the rest (their ids are delivered), instead of
#: bringing every message of ours back.  Anything else in a reply (another
#: node's message, presence, a record) makes the next read take
#: READ_COUNT again.
READ_COUNT_OWN = "1"
READ_BLOCK_MS = str(int(READ_BLOCK * 1000))


class _Room:
    """Where this node is in one room's two streams (or in the direct
    messages' stream, which has no presence stream)."""

    def __init__(self, room: str, key: str | None = None, seq: str | None = None, presence: bool = True) -> None:
        self.room = room  # the canonical name (the DM stream: its key)
        self.key = room.lower()
        self.stream = key if key is not None else stream_key(self.key)
        self.seq = seq if seq is not None else seq_key(self.key)
        self.presence: str | None = presence_key(self.key) if presence else None
        # The stream id read up to (None: the start is not found yet); it
        # may be a stray entry's id, once the repair made that final.
        self.position: str | None = None
        self.presence_position = "0-0"
        self.last_delivered = 0  # the greatest stream sequence delivered (a room's: its message id)
        # Our messages to this room whose ids the script gave and that are
        # not delivered here yet, by id: each goes out as soon as every
        # id before it is delivered (see RedisBus._deliver_own).
        self.own: dict[int, _Pending] = {}
        # Joins waiting for the start (None once it is found).
        self.waiters: list[Deferred[int]] = []


class _Followed:
    """A stream another part reads through this bus (see :meth:`RedisBus.follow`)."""

    def __init__(self, key: str, start: Callable[[], Deferred[str]], handle: Callable[[list[Any]], object]) -> None:
        self.key = key
        self.start = start
        self.handle = handle
        self.position: str | None = None  # None: to be (re)started before the next read


@dataclass(eq=False)
class _Pending:
    """A draft of ours on its way: its room's key, and its message once
    the script gave its id."""

    draft: Draft
    key: str
    token: str = ""
    message: StoredMessage | None = None


#: What an XREAD's stream key stands for in its reply.
_Reader = Union[_Room, _Followed, tuple[_Room, str], str]


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
        # Rooms read from the start (never unwatched), and every room read
        # now, by key.
        self._fixed = {room.lower() for room in rooms}
        self._rooms = {room.lower(): _Room(room) for room in rooms}
        self._dm = _Room(DM_STREAM, key=DM_STREAM, seq=DM_SEQ, presence=False)
        self._followed: list[_Followed] = []
        self._wake = wake_key(node)
        self._wake_position = "0-0"
        self._reading: dict[str, _Reader] | None = None  # what the XREAD under way reads
        self._count = READ_COUNT  # entries per stream the next XREAD takes
        self._foreign = False  # whether the reply being handled held more than our delivered messages
        self._receiver: IReceiver | None = None
        self._tokens = itertools.count(1)
        self._outbox: list[Draft] = []
        self._publish_call: IDelayedCall | None = None
        self._pending: dict[str, _Pending] = {}  # token -> our draft not yet delivered
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
        if not self.commands.connected:
            draft.settle(cluster_busy())
        else:
            # Published in one EVAL per room and reactor turn, like the
            # single node's one transaction per turn.
            self._outbox.append(draft)
            if self._publish_call is None:
                self._publish_call = self.clock.callLater(0, self._publish)

    def announce(self, user: str, status: str, room: str) -> None:
        """Tell the other nodes that ``user`` came or went in ``room``."""
        d = self.commands.call(
            "XADD", presence_key(room.lower()), "MAXLEN", "~", str(PRESENCE_MAXLEN), "*",
            "user", user, "status", status, "node", self.node,
        )
        d.addErrback(self._log_failure, "announcing presence")

    def announce_event(self, room: str, kind: str, content: dict[str, object]) -> None:
        """Tell the other nodes' members of ``room`` of an event there."""
        encoded = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        d = self.commands.call(
            "XADD", presence_key(room.lower()), "MAXLEN", "~", str(PRESENCE_MAXLEN), "*",
            "event", kind, "content", encoded, "node", self.node,
        )
        d.addErrback(self._log_failure, f"announcing {kind}")

    #: Other nodes may hold sessions.
    remote = True

    def watch(self, room: str) -> Deferred[int]:
        """Read ``room`` from now on; fires with the id of its newest
        message that will not be delivered here (history has it).

        A room read already answers at once, with the id delivered up to
        now: whoever joins in this turn gets every later message.  Until
        its start is found, every join waits for the same start.
        """
        key = room.lower()
        target = self._rooms.get(key)
        if target is not None and target.position is not None:
            return succeed(target.last_delivered)
        waiter: Deferred[int] = Deferred()
        if target is not None:
            target.waiters.append(waiter)
            return waiter
        if not self.commands.connected:
            return fail(cluster_busy())
        target = self._rooms[key] = _Room(room)
        target.waiters.append(waiter)
        d = self._locate(target)
        d.addCallbacks(self._located, self._locate_failed, callbackArgs=(target,), errbackArgs=(target,))
        return waiter

    def unwatch(self, room: str) -> None:
        """Stop reading ``room`` (its last member here left).

        Ignored while joins wait for its start (each join that finds its
        session gone asks again), and for the rooms read from the start.
        Our messages to it that the stream has not brought back yet are
        answered from the script's ids.
        """
        key = room.lower()
        target = self._rooms.get(key)
        if target is None or key in self._fixed or target.waiters:
            return
        del self._rooms[key]
        self._echo_unread(key)

    def follow(self, key: str, start: Callable[[], Deferred[str]], handle: Callable[[list[Any]], object]) -> None:
        """Read the stream ``key`` too, from the position ``start()``
        gives, handing each reply's entries to ``handle``.

        ``start`` runs before this node is ready, and again after any
        failed read (entries may have been trimmed meanwhile: it must
        bring its reader up to date itself).
        """
        self._followed.append(_Followed(key, start, handle))

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

    def watching(self, room: str) -> bool:
        """Whether ``room`` is read here now."""
        return room.lower() in self._rooms

    def last_delivered(self, room: str = DEFAULT_ROOM) -> int:
        """The greatest message id of ``room`` delivered on this node."""
        return self._rooms[room.lower()].last_delivered

    def position(self, room: str = DEFAULT_ROOM) -> str | None:
        """The stream id of ``room`` read up to (None before the start is known)."""
        return self._rooms[room.lower()].position

    @property
    def pending(self) -> int:
        """Our messages published and not yet read back."""
        return len(self._pending) + len(self._outbox)

    # -- publishing ----------------------------------------------------------------

    def _publish(self) -> None:
        self._publish_call = None
        outbox, self._outbox = self._outbox, []
        by_room: dict[str, list[Draft]] = {}
        direct: list[Draft] = []
        for draft in outbox:
            if is_dm(draft.room):
                direct.append(draft)
            else:
                by_room.setdefault(draft.room.lower(), []).append(draft)
        for key, drafts in by_room.items():
            self._publish_room(key, drafts)
        if direct:
            self._publish_direct(direct)

    def _publish_room(self, key: str, drafts: list[Draft]) -> None:
        fields: list[str] = []
        tokens: list[str] = []
        for draft in drafts:
            token = str(next(self._tokens))
            self._pending[token] = _Pending(draft, key, token)
            tokens.append(token)
            fields += [draft.sender, draft.text, draft.timestamp, self.node, token, "1" if draft.notice else ""]
        d = self.commands.call("EVAL", PUBLISH, "2", seq_key(key), stream_key(key), str(STREAM_MAXLEN), *fields)
        d.addCallbacks(self._published, self._publish_failed, callbackArgs=(key, tokens), errbackArgs=(tokens,))

    def _published(self, ids: Any, key: str, tokens: list[str]) -> None:
        """The script's ids: our messages are delivered from them, not
        read back from the stream.

        To a room this node reads, each goes out as soon as every id
        before it is delivered here (:meth:`_deliver_own`): at once when
        nobody else posted in between, else once the stream brought the
        other nodes' messages before it.  To a room this node does not
        read (or whose start was found after them, so the stream will
        not bring them), they go out now, to their senders.
        """
        if not isinstance(ids, list):
            return
        self.metrics.messages_accepted.inc(len(ids))
        target = self._rooms.get(key)
        # A room whose start was found before this reply was started
        # before this publish (one connection, answered in order): the
        # stream would bring these messages.
        read = target is not None and target.position is not None
        unread: list[_Pending] = []
        for token, raw in zip(tokens, ids):
            pending = self._pending.get(token)
            if pending is None or not isinstance(raw, int) or raw < 1:
                continue  # delivered already: the stream was faster
            draft = pending.draft
            pending.message = StoredMessage(raw, draft.room, draft.sender, draft.text, draft.timestamp, notice=draft.notice)
            if not read:
                unread.append(self._pending.pop(token))
            elif target is not None and raw <= target.last_delivered:
                # An id delivered here already: Redis lost what it held
                # (restarted without persistence).  Nobody here will see
                # it; its sender is told instead of waiting for ever.
                del self._pending[token]
                draft.settle(HistoryError(f"Redis gave id {raw} again: it lost messages"))
            elif target is not None:
                target.own[raw] = pending
        self._deliver_unread(unread)
        if read and target is not None:
            self._deliver_own(target)

    def _deliver_own(self, room: _Room) -> None:
        """Deliver our messages to ``room`` that come next in its order.

        Ids of a room are consecutive (each is an ``INCR``): ours whose id
        is one past the last delivered here can go now, in one batch,
        without waiting for the stream to bring them back; the read loop
        skips them then (their ids are delivered).  One after a gap waits
        for the stream to deliver what lies before it (another node's
        message, or a gap the repair left); the loop delivers it then,
        from here, without decoding its entry.
        """
        own = room.own
        following = room.last_delivered + 1
        if following not in own:
            return
        batch: list[_Pending] = []
        while following in own:
            pending = own.pop(following)
            self._pending.pop(pending.token, None)
            batch.append(pending)
            following += 1
        room.last_delivered = following - 1
        self._deliver(Delivery(
            room.room,
            [pending.message for pending in batch if pending.message is not None],
            [pending.draft for pending in batch],
        ))

    def _echo_unread(self, key: str) -> None:
        """Our messages to ``key`` that have their ids but will not be read
        back (the room is no longer read): answered now."""
        unread = [pending for pending in self._pending.values() if pending.key == key and pending.message is not None]
        for pending in unread:
            self._pending = {token: other for token, other in self._pending.items() if other is not pending}
        self._deliver_unread(unread)

    def _deliver_unread(self, unread: list[_Pending]) -> None:
        if not unread:
            return
        messages = [pending.message for pending in unread if pending.message is not None]
        drafts: list[Draft | None] = [pending.draft for pending in unread]
        self._deliver(Delivery(unread[0].draft.room, messages, drafts))

    def _publish_direct(self, drafts: list[Draft]) -> None:
        keys: list[str] = []
        fields: list[str] = []
        tokens: list[str] = []
        for draft in drafts:
            token = str(next(self._tokens))
            self._pending[token] = _Pending(draft, draft.room, token)
            tokens.append(token)
            keys += [seq_key(draft.room), name_key(str(draft.to).lower())]
            # Kept for its sides that are accounts; to an account that may
            # be offline, accepted even if nobody holds its name.
            owners = " ".join(owner.lower() for owner in draft.owners)
            offline = str(draft.to) if draft.offline else ""
            fields += [draft.sender, draft.text, draft.timestamp, self.node, token, draft.room, owners, offline,
                       "1" if draft.notice else ""]
        d = self.commands.call(
            "EVAL", DM_PUBLISH, str(2 + len(keys)), DM_SEQ, DM_STREAM, *keys,
            str(DM_MAXLEN), DM_KEPT_PREFIX, DM_CONVS_PREFIX, str(DM_KEEP), *fields,
        )
        d.addCallbacks(self._published_direct, self._publish_failed, callbackArgs=(tokens,), errbackArgs=(tokens,))

    def _published_direct(self, reply: Any, tokens: list[str]) -> None:
        """Refuse the messages whose recipient nobody holds (the others
        come back through the stream)."""
        if not isinstance(reply, list) or len(reply) != 2 * len(tokens):
            return
        for token, raw in zip(tokens, reply[::2]):
            if raw == 0 or raw == "0":
                pending = self._pending.pop(token, None)
                if pending is not None:
                    to = pending.draft.to
                    pending.draft.settle(ChatError(messages.NO_SUCH_USER, f"No such user: {to} is not online."))
            else:
                self.metrics.messages_accepted.inc()

    def _publish_failed(self, failure: Failure, tokens: list[str]) -> None:
        # Those the stream brought already were delivered; the rest fail
        # now (if Redis stored them after all, they arrive later as
        # anyone's messages).
        self.log.warn("publishing failed: {problem}", problem=str(failure.value))
        for token in tokens:
            pending = self._pending.pop(token, None)
            if pending is not None:
                pending.draft.settle(HistoryError(f"publishing failed: {failure.value}"))

    # -- watching a room --------------------------------------------------------------

    def _locate(self, room: _Room) -> Deferred[None]:
        """Find where ``room``'s streams start: just past the newest
        message the script gave, and the newest presence entry.

        That is the repaired sequence, not the stream's newest entry: a
        stray entry there (a clock id, say) must not become our position.
        Presence is looked up first: an entry added between the two
        calls is read (a duplicate at worst), never missed.  Both calls
        leave together (one round trip): Redis runs them in the order
        sent on the one connection.
        """
        if room.presence is None:
            d = self.commands.call("EVAL", REPAIR, "2", room.seq, room.stream)
            return d.addCallback(lambda seq: self._start_at([], room, sequence(seq)))
        presence = self.commands.call("XREVRANGE", room.presence, "+", "-", "COUNT", "1")
        repaired = self.commands.call("EVAL", REPAIR, "2", room.seq, room.stream)
        both: Deferred[list[Any]] = gatherResults([presence, repaired], consumeErrors=True)
        both.addErrback(self._first_error)
        return both.addCallback(lambda replies: self._start_at(replies[0], room, sequence(replies[1])))

    @staticmethod
    def _first_error(failure: Failure) -> Failure:
        """The failure of the first of several calls that failed."""
        if isinstance(failure.value, FirstError):
            inner: Failure = failure.value.subFailure
            return inner
        return failure

    def _located(self, _: object, room: _Room) -> None:
        """The start of a newly watched room: its joins go on, and a
        blocking read that does not include it is woken."""
        waiters = room.waiters
        # Each join's callback runs now, before anything of the room is
        # delivered; one may unwatch (its session went), which waits
        # while others are still to come.
        while waiters:
            waiters.pop(0).callback(room.last_delivered)
        if self._rooms.get(room.key) is room and self._reading is not None and self._reading.get(room.stream) is not room:
            self._wake_reader()

    def _locate_failed(self, failure: Failure, room: _Room) -> None:
        self.log.warn("finding the start of {room} failed: {problem}", room=room.room, problem=str(failure.value))
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]
        waiters, room.waiters = room.waiters, []
        for waiter in waiters:
            waiter.errback(cluster_busy())

    def _wake_reader(self) -> None:
        """End the blocking read under way: the next one has every room."""
        # Both calls leave together, in this order (one round trip).
        d = self.commands.call("XADD", self._wake, "MAXLEN", "~", str(WAKE_MAXLEN), "*", "wake", "1")
        d.addErrback(self._log_failure, "waking the reader")
        expire = self.commands.call("PEXPIRE", self._wake, str(WAKE_TTL_MS))
        expire.addErrback(self._log_failure, "waking the reader")

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
        if any(followed.position is None for followed in self._followed):
            # Started again after a failure, then read in the same turn (a
            # turn that only restarted them must not reset the back-off).
            return self._start_followed(None).addCallback(self._xread)
        return self._xread(None)

    def _xread(self, _: object) -> Deferred[Any]:
        readers: dict[str, _Reader] = {}
        keys: list[str] = []
        positions: list[str] = []

        def read(key: str, position: str, reader: _Reader) -> None:
            keys.append(key)
            positions.append(position)
            readers[key] = reader

        # The rooms' records first: a reply's events are read after the
        # changes they announce.
        for followed in self._followed:
            read(followed.key, followed.position or "0-0", followed)
        read(self._wake, self._wake_position, "wake")
        for room in [self._dm, *self._rooms.values()]:
            if room.position is None:
                continue  # its start is being found
            if room is not self._dm and room.last_delivered:
                # Every id up to the last delivered is delivered: ours,
                # delivered from the script's ids, need not come back.
                order = id_order(room.position)
                if order is not None and order < (room.last_delivered, 1):
                    room.position = f"{room.last_delivered}-1"
            read(room.stream, room.position, room)
            if room.presence is not None:
                read(room.presence, room.presence_position, (room, "presence"))
        self._reading = readers
        d = self.reader.call("XREAD", "COUNT", self._count, "BLOCK", READ_BLOCK_MS, "STREAMS", *keys, *positions)
        d.addBoth(self._read_over)
        return d.addCallback(self._got_entries, readers)

    def _read_over(self, result: Any) -> Any:
        self._reading = None
        return result

    def _read_done(self, _: object) -> None:
        self._retry = READ_RETRY
        self.clock.callLater(0, self._read)

    def _read_failed(self, failure: Failure) -> None:
        self._count = READ_COUNT
        if self._stopped:
            return
        kind = failure.type.__name__ if failure.type is not None else "Error"
        problem = f"{kind}: {failure.getErrorMessage()}"[:300]
        self.log.warn("reading the stream failed ({problem}); trying again in {delay}s", problem=problem, delay=self._retry)
        # What others follow may have moved on (or been trimmed) meanwhile:
        # they start again, from what Redis holds then.
        for followed in self._followed:
            followed.position = None
        self.clock.callLater(self._retry, self._read)
        self._retry = min(self._retry * 2, READ_RETRY_MAX)

    # -- the start ---------------------------------------------------------------------

    def _find_start(self) -> Deferred[None]:
        """Start each room read from the start, and the direct messages'
        stream, just past the newest message the script gave; then the
        followed streams; then this node is ready."""
        d: Deferred[Any] = succeed(None)
        for key in sorted(self._fixed):
            room = self._rooms[key]
            if room.position is None:
                d.addCallback(self._locate_next, room)
        if self._dm.position is None:
            d.addCallback(self._locate_next, self._dm)
        d.addCallback(self._start_followed)
        return d.addCallback(self._became_ready)

    def _start_followed(self, _: object) -> Deferred[None]:
        d: Deferred[Any] = succeed(None)
        for followed in self._followed:
            if followed.position is None:
                d.addCallback(self._start_next, followed)
        return d

    def _locate_next(self, _: object, room: _Room) -> Deferred[None]:
        return self._locate(room)

    def _start_next(self, _: object, followed: _Followed) -> Deferred[None]:
        return followed.start().addCallback(self._followed_at, followed)

    @staticmethod
    def _followed_at(position: Any, followed: _Followed) -> None:
        if id_order(position) is None:
            raise BadEntry(f"the start of {followed.key} is not a stream id: {position!r:.60}")
        followed.position = position

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

    def _got_entries(self, reply: Any, readers: dict[str, _Reader]) -> Deferred[Any] | None:
        """Deliver one ``XREAD`` reply (None: the block timed out).

        A reply of another shape raises (the loop logs it and retries).
        Entries of a room no longer read (or read anew since) are left.
        If stray entries hold a position back, the stream is repaired
        before the next read.
        """
        if reply is None:
            return None
        # Until the reply proves to hold only our delivered messages, the
        # next read takes a full count (a reply of a bad shape too).
        self._count = READ_COUNT
        if not isinstance(reply, list):
            raise BadEntry(f"XREAD replied a {type(reply).__name__}")
        held: list[tuple[_Room, str]] = []
        self._foreign = False
        for item in reply:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
                raise BadEntry("the XREAD reply is not [stream, entries] pairs")
            key, entries = item
            reader = readers.get(key) if isinstance(key, str) else None
            if reader is None:
                continue
            if not isinstance(reader, _Room) or reader is self._dm:
                self._foreign = True
            if isinstance(reader, _Followed):
                self._followed_entries(reader, entries)
            elif reader == "wake":
                self._woken(entries)
            elif isinstance(reader, tuple):
                if self._current(reader[0]):
                    self._presence(reader[0], entries)
            elif isinstance(reader, _Room) and self._current(reader):
                stray = self._stream_entries(reader, entries)
                if stray is not None:
                    held.append((reader, stray))
        if not self._foreign:
            self._count = READ_COUNT_OWN
        if not held:
            return None
        d: Deferred[Any] = succeed(None)
        for room, stray in held:
            d.addCallback(self._repair, room, stray)
        return d

    def _current(self, room: _Room) -> bool:
        """Whether ``room`` is still read (not unwatched, nor watched anew)."""
        return room is self._dm or self._rooms.get(room.key) is room

    def _followed_entries(self, followed: _Followed, entries: list[Any]) -> None:
        last = entry_id(entries[-1]) if entries else None
        try:
            followed.handle(entries)
        finally:
            if isinstance(last, str) and id_order(last) is not None:
                followed.position = last

    def _woken(self, entries: list[Any]) -> None:
        last = entry_id(entries[-1]) if entries else None
        if isinstance(last, str) and id_order(last) is not None:
            self._wake_position = last

    def _stream_entries(self, room: _Room, entries: list[Any]) -> str | None:
        """Deliver the messages among ``entries``; skip the rest.

        Returns the id of a stray entry the position could not move past
        (its id is not of the script's form, so a message may come later
        with a smaller id), or None.  The direct messages' stream gives
        one delivery per run of a conversation's messages.
        """
        batches: list[tuple[str, list[StoredMessage], list[Draft | None]]] = []
        held: str | None = None
        own = room.own if room is not self._dm else None
        for entry in entries:
            stream_id = entry_id(entry)
            if own is not None:
                # Ours, delivered already from the script's ids, or
                # waiting for what came before it (now delivered): known
                # by its id alone, its fields need no decoding.
                number = script_id(stream_id)
                if number is not None:
                    if number <= room.last_delivered:
                        room.position, held = stream_id, None
                        continue
                    mine = own.pop(number, None)
                    if mine is not None and mine.message is not None:
                        # (Not _foreign: the next read may start past
                        # the rest of its batch.)
                        self._pending.pop(mine.token, None)
                        room.position, held = stream_id, None
                        room.last_delivered = number
                        if not batches or batches[-1][0] != room.room:
                            batches.append((room.room, [], []))
                        batches[-1][1].append(mine.message)
                        batches[-1][2].append(mine.draft)
                        continue
            self._foreign = True
            try:
                if room is self._dm:
                    message, node, token = parse_dm(entry, self.max_message)
                else:
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
            number = script_id(stream_id) or 0
            if number <= room.last_delivered:
                continue  # delivered already (read again after a failure)
            room.last_delivered = number
            pending = self._pending.pop(token, None) if node == self.node else None
            if not batches or batches[-1][0] != message.room:
                batches.append((message.room, [], []))
            batches[-1][1].append(message)
            batches[-1][2].append(pending.draft if pending is not None else None)
        for name, stored, drafts in batches:
            self._deliver(Delivery(name, stored, drafts))
        if own:
            self._deliver_own(room)  # ours that waited for these
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
        pending = self._pending.pop(token, None)
        if pending is not None:
            pending.draft.settle(HistoryError("the message was stored in a form that cannot be read"))

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
        """Other nodes' presence entries and room events to the core
        (ours: the core told this node's sessions already)."""
        assert room.presence is not None
        for entry in entries:
            stream_id = entry_id(entry)
            event: tuple[str, dict[str, object], str] | None = None
            user: str | None = None
            status = node = ""
            try:
                if is_event(entry):
                    event = parse_event(entry)
                else:
                    user, status, node = parse_presence(entry)
            except BadEntry as problem:
                self.skips.skip(room.presence, stream_id, problem)
            if id_order(stream_id) is not None:
                room.presence_position = stream_id  # first: a failure below must not repeat it
            if self._receiver is None:
                continue
            if event is not None and event[2] != self.node:
                self._receiver.receive_event(room.room, event[0], event[1])
            elif user is not None and node != self.node:
                self._receiver.receive_presence(user, status, room.room)

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))

"""Rooms' lasting state and members across a cluster (:class:`RedisRooms`).

**Records** (spelling, topic, modes, roles) are JSON
(:meth:`~chatd.stores.roomstate.RoomRecord.to_json`) in the hash
``chatd:rooms``.  Every change is one script call that writes the record
and appends it to ``chatd:roomlog``, a stream every node reads through
its bus (:meth:`~chatd.cluster.bus.RedisBus.follow`); the entry's id is
the record's revision (kept in ``chatd:roomrev``).  So each node holds
every record, synchronously readable, and applies a change only if it
is newer than the one it holds.  A node loads them all before it is
ready, and again after any failed read (the log may have been trimmed
meanwhile).  A creation is ``HSETNX``-like: two nodes creating ``#Dev``
and ``#dev`` at once agree on the first.  An update is a compare-and-set
on the revision, made again from the newer record when another node's
change came first: no change is lost.

**Members** of a room, every node's, are the sorted set
``chatd:members:<key>`` of ``<node>|<Name>`` by a cluster-wide join
sequence, so ``names`` lists them in the order they joined.  Each node
refreshes ``chatd:node:<node>`` with its heartbeat; a node whose key
expired (it died, or lost Redis) is *swept* by any other: its members
leave their rooms, the rooms hear ``offline``, and guests' roles end.
A node that was only cut off puts its members back, at their old
places, when its heartbeat finds its key gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.cluster.bus import PRESENCE_MAXLEN
from chatd.cluster.entries import BadEntry, entry_fields, entry_id, id_order
from chatd.cluster.link import Link, busy_unless_chat_error, cluster_busy
from chatd.cluster.names import NAME_TTL_MS
from chatd.cluster.scripts import (
    COUNT_MEMBERS,
    CREATE_ROOM,
    ENTER_ROOM,
    JOIN_SEQ_KEY,
    LEAVE_ROOM,
    LOAD_ROOMS,
    NODE_BEAT,
    NODES_KEY,
    REASSERT_MEMBERS,
    ROOM_LOG,
    ROOM_REVS_KEY,
    ROOMS_KEY,
    SWEEP_NODES,
    UPDATE_ROOM,
    members_key,
    node_key,
    node_members_key,
    presence_key,
)
from chatd.interfaces import IRoomDirectory
from chatd.stores.history import HistoryError
from chatd.stores.roomstate import RoomRecord

#: A node's key lives this long without a heartbeat (ms): as a name's.
NODE_TTL_MS = NAME_TTL_MS
#: Changes kept in the rooms' log (approximately).
ROOM_LOG_MAXLEN = 10_000
#: How many times an update is made again after other nodes' changes came first.
UPDATE_TRIES = 10


@dataclass(eq=False)
class _Membership:
    """A member this node put in a room: its entry, and its join
    sequence once Redis gave it."""

    key: str
    name: str
    member: str
    seq: str | None = None
    entering: bool = False


def _without_roles(lower: str) -> Callable[[RoomRecord], RoomRecord]:
    """A change that ends ``lower``'s op and voice."""

    def change(record: RoomRecord) -> RoomRecord:
        return record.with_op(lower, False).with_voice(lower, False)

    return change


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadEntry(f"Redis replied {value!r:.60} instead of text")
    return value


@implementer(IRoomDirectory)
class RedisRooms:
    """Every room's record, kept fresh from Redis; members in Redis.

    :meth:`start` and :meth:`handle` are the bus's (``follow``);
    :meth:`heartbeat` and :meth:`sweep` the cluster service's timer.
    """

    log = Logger()

    def __init__(self, link: Link, node: str, is_account: Callable[[str], bool] = lambda name: False) -> None:
        self.link = link
        self.node = node
        self.is_account = is_account
        self._records: dict[str, RoomRecord] = {}
        self._revs: dict[str, str] = {}  # key -> the revision held (a log entry's id)
        self._entered: dict[tuple[str, str], _Membership] = {}  # (room key, lower name) -> ours
        self._leaving: dict[tuple[str, str], None] = {}  # (room key, member) whose removal failed

    # -- keeping every record ------------------------------------------------------

    def start(self) -> Deferred[str]:
        """Mark this node alive, load every record; fires with the log's
        position to read from (the bus's ``follow``)."""
        d = self._beat()
        d.addCallback(lambda _: self.link.call("EVAL", LOAD_ROOMS, "3", ROOMS_KEY, ROOM_REVS_KEY, ROOM_LOG))
        return d.addCallback(self._loaded)

    def _loaded(self, reply: Any) -> str:
        if not isinstance(reply, list) or len(reply) != 3 or not isinstance(reply[1], list) or not isinstance(reply[2], list):
            raise BadEntry(f"loading the rooms replied {reply!r:.60}")
        position = _text(reply[0])
        records, revs = reply[1], reply[2]
        rev_of = dict(zip(revs[::2], revs[1::2]))
        for key, text in zip(records[::2], records[1::2]):
            if isinstance(key, str):
                self._apply(key, text, rev_of.get(key, "0-0"))
        return position

    def handle(self, entries: list[Any]) -> None:
        """Changes from the log, in order (the bus's ``follow``)."""
        for entry in entries:
            try:
                _id, fields = entry_fields(entry, long_fields=("record",))
            except BadEntry as problem:
                self.log.warn("skipping entry {id} of the rooms' log: {problem}", id=f"{entry_id(entry)!r:.60}", problem=str(problem))
                continue
            key, text = fields.get("key"), fields.get("record")
            if key is not None and text is not None:
                self._apply(key, text, _id)

    def _apply(self, key: str, text: Any, rev: Any) -> RoomRecord | None:
        """Hold ``text`` as ``key``'s record unless what we hold is as new;
        returns what we hold then."""
        order = id_order(rev) or (0, 0)
        held = self._revs.get(key)
        if held is not None and order <= (id_order(held) or (0, 0)):
            return self._records.get(key)
        try:
            record = RoomRecord.from_json(_text(text))
            if record.key != key:
                raise ValueError(f"its name {record.name!r:.60} is not of the key")
        except (ValueError, BadEntry) as problem:
            self.log.warn("skipping the record of {key}: {problem}", key=key[:60], problem=str(problem)[:200])
            return self._records.get(key)
        self._records[key] = record
        self._revs[key] = rev if isinstance(rev, str) else "0-0"
        return record

    def get(self, key: str) -> RoomRecord | None:
        """The room's record, if it exists (as this node holds it now)."""
        return self._records.get(key)

    def records(self) -> list[RoomRecord]:
        """Every room's record."""
        return list(self._records.values())

    def create(self, name: str, created: str) -> Deferred[RoomRecord]:
        """The room, created with ``name``'s spelling unless any node
        created it first."""
        key = name.lower()
        record = self._records.get(key)
        if record is not None:
            return succeed(record)
        fresh = RoomRecord(name, created)
        d = self.link.call("EVAL", CREATE_ROOM, "3", ROOMS_KEY, ROOM_REVS_KEY, ROOM_LOG, key, fresh.to_json(), str(ROOM_LOG_MAXLEN))
        d.addCallback(self._created, key)
        return d.addErrback(busy_unless_chat_error)

    def _created(self, reply: Any, key: str) -> RoomRecord:
        if not isinstance(reply, list) or len(reply) != 2:
            raise BadEntry(f"creating a room replied {reply!r:.60}")
        record = self._apply(key, reply[0], reply[1])
        if record is None:
            raise BadEntry(f"the record of {key[:60]} cannot be read")
        return record

    def update(self, key: str, change: Callable[[RoomRecord], RoomRecord]) -> Deferred[RoomRecord]:
        """Apply ``change`` to the newest record and keep the result (made
        again from a newer record if another node changed it first)."""
        record = self._records.get(key)
        if record is None:
            # Not read from the log yet: a compare-and-set that cannot match
            # (no revision is empty) brings the record, then the change is made.
            d = self.link.call("EVAL", UPDATE_ROOM, "3", ROOMS_KEY, ROOM_REVS_KEY, ROOM_LOG, key, "", "", str(ROOM_LOG_MAXLEN))
            d.addCallback(self._updated, key, change, UPDATE_TRIES + 1)
        else:
            d = self._try_update(key, record, self._revs.get(key, "0-0"), change, UPDATE_TRIES)
        return d.addErrback(busy_unless_chat_error)

    def _try_update(
        self, key: str, record: RoomRecord, rev: str, change: Callable[[RoomRecord], RoomRecord], tries: int
    ) -> Deferred[RoomRecord]:
        try:
            new = change(record)
        except Exception:
            return fail()
        d = self.link.call(
            "EVAL", UPDATE_ROOM, "3", ROOMS_KEY, ROOM_REVS_KEY, ROOM_LOG, key, rev, new.to_json(), str(ROOM_LOG_MAXLEN)
        )
        return d.addCallback(self._updated, key, change, tries)

    def _updated(
        self, reply: Any, key: str, change: Callable[[RoomRecord], RoomRecord], tries: int
    ) -> RoomRecord | Deferred[RoomRecord]:
        code = reply[0] if isinstance(reply, list) and reply else None
        if code in (1, "1", 2, "2") and len(reply) == 3:
            held = self._apply(key, reply[1], reply[2])
            if code in (1, "1"):
                if held is None:
                    raise BadEntry(f"the record of {key[:60]} cannot be read")
                return held
            if tries <= 1:
                raise cluster_busy()
            current = RoomRecord.from_json(_text(reply[1]))
            return self._try_update(key, current, _text(reply[2]), change, tries - 1)
        if code in (0, "0"):
            raise HistoryError(f"no record of the room {key[:60]}")
        raise BadEntry(f"updating a room replied {reply!r:.60}")

    # -- members ---------------------------------------------------------------------

    def enter(self, key: str, name: str) -> Deferred[None]:
        """``name`` (a session of this node) is a member of the room from
        now, after those already in it, on every node."""
        membership = _Membership(key, name, f"{self.node}|{name}")
        self._entered[(key, name.lower())] = membership
        self._leaving.pop((key, membership.member), None)
        return self._enter(membership).addErrback(busy_unless_chat_error)

    def _enter(self, membership: _Membership) -> Deferred[None]:
        membership.entering = True
        d = self.link.call(
            "EVAL", ENTER_ROOM, "4", JOIN_SEQ_KEY, members_key(membership.key), node_members_key(self.node), NODES_KEY,
            membership.member, membership.key, self.node,
        )

        def entered(seq: Any) -> None:
            membership.seq = str(int(seq))

        def over(result: Any) -> Any:
            membership.entering = False
            return result

        return d.addCallback(entered).addBoth(over)

    def leave(self, key: str, name: str) -> None:
        """``name`` is no longer a member (retried by the heartbeat if Redis
        cannot be told now)."""
        membership = self._entered.pop((key, name.lower()), None)
        member = membership.member if membership is not None else f"{self.node}|{name}"
        self._leave(key, member)

    def _leave(self, key: str, member: str) -> None:
        self._leaving[(key, member)] = None
        d = self.link.call("EVAL", LEAVE_ROOM, "2", members_key(key), node_members_key(self.node), member, key)

        def left(_: object) -> None:
            self._leaving.pop((key, member), None)

        d.addCallbacks(left, self._log_failure, errbackArgs=("leaving a room",))

    def members(self, key: str) -> Deferred[list[str]]:
        """The room's members on every node, in the order they joined."""
        d = self.link.call("ZRANGE", members_key(key), "0", "-1").addCallback(self._names)
        return d.addErrback(busy_unless_chat_error)

    @staticmethod
    def _names(entries: Any) -> list[str]:
        names: list[str] = []
        seen: set[str] = set()
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, str) and "|" in entry:
                name = entry.split("|", 1)[1]
                if name.lower() not in seen:
                    seen.add(name.lower())
                    names.append(name)
        return names

    def counts(self) -> Deferred[dict[str, int]]:
        """Members now, per room that has any."""
        keys = list(self._records)
        if not keys:
            return succeed({})
        d = self.link.call("EVAL", COUNT_MEMBERS, str(len(keys)), *[members_key(key) for key in keys])

        def counted(reply: Any) -> dict[str, int]:
            if not isinstance(reply, list) or len(reply) != len(keys):
                raise BadEntry(f"counting members replied {reply!r:.60}")
            return {key: int(count) for key, count in zip(keys, reply) if int(count) > 0}

        return d.addCallback(counted).addErrback(busy_unless_chat_error)

    # -- life: heartbeat, sweep ------------------------------------------------------

    def heartbeat(self) -> None:
        """Keep this node alive in Redis; put our members back if our key
        had expired; retry what Redis could not be told.  Never raises."""
        if not self.link.connected:
            return
        self._beat().addErrback(self._log_failure, "the rooms' heartbeat")
        for membership in list(self._entered.values()):
            if membership.seq is None and not membership.entering:
                self._enter(membership).addErrback(self._log_failure, "entering a room")
        for key, member in list(self._leaving):
            self._leave(key, member)

    def _beat(self) -> Deferred[None]:
        d = self.link.call("EVAL", NODE_BEAT, "2", node_key(self.node), NODES_KEY, str(NODE_TTL_MS), self.node)
        return d.addCallback(self._beaten)

    def _beaten(self, alive: Any) -> Deferred[Any] | None:
        if alive in (1, "1"):
            return None
        # Our key had expired: another node may have swept our members.
        return self._reassert()

    def _reassert(self) -> Deferred[Any] | None:
        held = [membership for membership in self._entered.values() if membership.seq is not None]
        if not held:
            return None
        keys = [node_members_key(self.node)]
        args = [self.node, str(PRESENCE_MAXLEN)]
        for membership in held:
            keys += [members_key(membership.key), presence_key(membership.key)]
            args += [membership.key, membership.member, str(membership.seq), membership.name]
        return self.link.call("EVAL", REASSERT_MEMBERS, str(len(keys)), *keys, *args)

    def sweep(self) -> Deferred[None]:
        """Remove dead nodes' members from their rooms (the rooms hear
        ``offline``) and end the guests' roles among them.  Never fails."""
        if not self.link.connected:
            return succeed(None)
        prefixes = [node_key(""), node_members_key(""), members_key(""), presence_key("")]
        d = self.link.call("EVAL", SWEEP_NODES, "1", NODES_KEY, *prefixes, str(PRESENCE_MAXLEN))
        d.addCallback(self._swept)
        return d.addErrback(self._log_failure, "sweeping dead nodes")

    def _swept(self, removed: Any) -> None:
        if not isinstance(removed, list):
            return
        for key, name in zip(removed[::2], removed[1::2]):
            if not isinstance(key, str) or not isinstance(name, str):
                continue
            lower = name.lower()
            record = self._records.get(key)
            if record is None or self.is_account(lower) or (lower not in record.ops and lower not in record.voiced):
                continue
            d = self.update(key, _without_roles(lower))
            d.addErrback(self._log_failure, "ending a swept guest's roles")

    def retire(self) -> Deferred[None]:
        """This node stops: its key goes, and its members that are left
        (if any) are swept at once."""
        if not self.link.connected:
            return succeed(None)
        d = self.link.call("DEL", node_key(self.node))
        d.addCallback(lambda _: self.sweep())
        return d.addErrback(self._log_failure, "retiring the node")

    @property
    def entered(self) -> list[tuple[str, str]]:
        """This node's memberships: (room key, name)."""
        return [(membership.key, membership.name) for membership in self._entered.values()]

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))

"""In-memory stand-ins for the cluster's Redis links (no redis-server).

:class:`FakeLink` answers each call with what a test function returns
(every reply crafted, well-formed or not).  :class:`FakeRedis` is one
small Redis shared by several nodes: it runs the commands and the Lua
scripts chatd sends (by what they do, not by interpreting Lua), expires
names on a :class:`~twisted.internet.task.Clock`, and blocks ``XREAD``
until an entry arrives or the block times out; :class:`FakeRedisLink`
is one node's connection to it, which a test can cut and restore.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatd.cluster.link import RedisUnavailable
from chatd.cluster.scripts import (
    CLAIM_NAME,
    COUNT_MEMBERS,
    CREATE_ROOM,
    DM_PUBLISH,
    ENTER_ROOM,
    LEAVE_ROOM,
    LOAD_ROOMS,
    NODE_BEAT,
    PUBLISH,
    REASSERT_MEMBERS,
    REFRESH_NAMES,
    RELEASE_NAME,
    REPAIR,
    SWEEP_NODES,
    UPDATE_ROOM,
)

#: What an answer function returns for an XREAD that should block forever.
WAIT = object()


class FakeLink:
    """A Redis link whose replies come from ``answer`` (or wait, for WAIT)."""

    def __init__(self, answer: Callable[[tuple[Any, ...]], Any]) -> None:
        self.connected = True
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []
        self.waiting: list[Deferred[Any]] = []
        self.started = self.stopped = 0

    def call(self, *args: Any) -> Deferred[Any]:
        self.calls.append(args)
        reply = self.answer(args)
        if reply is WAIT:
            d: Deferred[Any] = Deferred()
            self.waiting.append(d)
            return d
        if isinstance(reply, Exception):
            return fail(reply)
        return succeed(reply)

    def start(self) -> None:
        self.started += 1

    def stop(self) -> Deferred[None]:
        self.stopped += 1
        return succeed(None)


class ReplyLost(Exception):
    """The command ran, but its reply never came (a reply timeout)."""


class FakeRedis:
    """One Redis in memory, for the commands and scripts chatd uses."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.strings: dict[str, str] = {}
        self.expires: dict[str, float] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.sets: dict[str, dict[str, None]] = {}  # ordered, for repeatable sweeps
        self.streams: dict[str, list[tuple[str, list[str]]]] = {}
        self.blocked: list[tuple[Deferred[Any], list[str], list[str], FakeRedisLink]] = []
        #: A function of the command that may raise (to fail it) or return
        #: ReplyLost (to run it and fail the reply), or None.
        self.fault: Callable[[tuple[str, ...]], Any] | None = None
        self.commands: list[tuple[str, ...]] = []

    def link(self) -> FakeRedisLink:
        """A new connection to this Redis."""
        return FakeRedisLink(self)

    # -- keys ------------------------------------------------------------

    def get(self, key: str) -> str | None:
        expires = self.expires.get(key)
        if expires is not None and expires <= self.clock.seconds():
            self.strings.pop(key, None)
            self.expires.pop(key, None)
        return self.strings.get(key)

    def set(self, key: str, value: str, px: str | None = None) -> None:
        self.strings[key] = value
        if px is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = self.clock.seconds() + int(px) / 1000

    def incr(self, key: str) -> int:
        value = int(self.get(key) or 0) + 1
        self.strings[key] = str(value)
        return value

    def xadd(self, key: str, stream_id: str, fields: list[str]) -> str:
        entries = self.streams.setdefault(key, [])
        if stream_id == "*":
            stream_id = f"{int(self.clock.seconds() * 1000)}-{len(entries)}"
        entries.append((stream_id, list(fields)))
        # Blocked readers get their reply in a later turn, as from a socket.
        self.clock.callLater(0, self._wake)
        return stream_id

    # -- commands --------------------------------------------------------

    def execute(self, args: tuple[str, ...], link: FakeRedisLink) -> Deferred[Any]:
        self.commands.append(args)
        lost = False
        if self.fault is not None:
            try:
                lost = self.fault(args) is ReplyLost
            except Exception as problem:
                return fail(problem)
        if args[0] == "XREAD":
            d = self._xread(args, link)
        else:
            d = succeed(getattr(self, "_" + args[0].lower())(*args[1:]))
        if lost:
            d.addCallback(lambda _: fail(ReplyLost("no reply in time")))
        return d

    def _eval(self, script: str, count: str, *rest: str) -> Any:
        keys, argv = list(rest[: int(count)]), list(rest[int(count):])
        if script == CLAIM_NAME:
            if self.get(keys[0]) is not None:
                return 0
            self.set(keys[0], argv[0], argv[1])
            seq = self.incr(keys[1])
            self.zsets.setdefault(keys[2], {})[argv[2]] = seq
            return seq
        if script == REFRESH_NAMES:
            lost = []
            for index, key in enumerate(keys[1:]):
                value, lower, login = argv[1 + 3 * index: 4 + 3 * index]
                if self.get(key) in (None, value):
                    self.set(key, value, argv[0])
                    self.zsets.setdefault(keys[0], {}).setdefault(lower, float(login))
                else:
                    lost.append(lower)
            return lost
        if script == RELEASE_NAME:
            if self.get(keys[0]) == argv[0]:
                self.strings.pop(keys[0], None)
                self.expires.pop(keys[0], None)
            self.zsets.get(keys[1], {}).pop(argv[1], None)
            return 1
        if script == PUBLISH:
            ids = []
            for index in range(1, len(argv), 5):
                sender, text, ts, node, token = argv[index: index + 5]
                n = self.incr(keys[0])
                self.xadd(keys[1], f"{n}-1", ["sender", sender, "text", text, "ts", ts, "node", node, "token", token])
                ids.append(n)
            return ids
        if script == REPAIR:
            return self.get(keys[0]) or "0"
        if script == DM_PUBLISH:
            return self._dm_publish(keys, argv)
        if script in (LOAD_ROOMS, CREATE_ROOM, UPDATE_ROOM):
            return self._rooms_script(script, keys, argv)
        if script in (ENTER_ROOM, LEAVE_ROOM, COUNT_MEMBERS, NODE_BEAT, REASSERT_MEMBERS, SWEEP_NODES):
            return self._members_script(script, keys, argv)
        raise AssertionError("an unknown script")

    def _dm_publish(self, keys: list[str], argv: list[str]) -> list[Any]:
        out: list[Any] = []
        for m in range((len(argv) - 1) // 6):
            sender, text, ts, node, token, conv = argv[1 + 6 * m: 7 + 6 * m]
            holder = self.get(keys[3 + 2 * m])
            if holder is None or "|" not in holder:
                out += [0, ""]
                continue
            to = holder.split("|", 1)[1]
            message_id = self.incr(keys[2 + 2 * m])
            n = self.incr(keys[0])
            self.xadd(keys[1], f"{n}-1", ["conv", conv, "id", str(message_id), "sender", sender, "text", text,
                                          "ts", ts, "to", to, "node", node, "token", token])
            out += [message_id, to]
        return out

    def _rooms_script(self, script: str, keys: list[str], argv: list[str]) -> Any:
        records, revs = self.hashes.setdefault(keys[0], {}), self.hashes.setdefault(keys[1], {})
        if script == LOAD_ROOMS:
            log = self.streams.get(keys[2], [])
            flat = [item for pair in records.items() for item in pair]
            return [log[-1][0] if log else "0-0", flat, [item for pair in revs.items() for item in pair]]
        key = argv[0]
        if script == CREATE_ROOM:
            if key in records:
                return [records[key], revs.get(key, "0-0")]
            text = argv[1]
        else:
            if key not in records:
                return [0]
            if revs.get(key, "0-0") != argv[1]:
                return [2, records[key], revs.get(key, "0-0")]
            text = argv[2]
        rev = self.xadd(keys[2], "*", ["key", key, "record", text])
        records[key], revs[key] = text, rev
        return [text, rev] if script == CREATE_ROOM else [1, text, rev]

    def _members_script(self, script: str, keys: list[str], argv: list[str]) -> Any:
        if script == ENTER_ROOM:
            members = self.zsets.setdefault(keys[1], {})
            if argv[0] not in members:
                members[argv[0]] = self.incr(keys[0])
            self.sets.setdefault(keys[2], {})[f"{argv[1]} {argv[0]}"] = None
            self.sets.setdefault(keys[3], {})[argv[2]] = None
            return str(int(members[argv[0]]))
        if script == LEAVE_ROOM:
            self.zsets.get(keys[0], {}).pop(argv[0], None)
            self.sets.get(keys[1], {}).pop(f"{argv[1]} {argv[0]}", None)
            return 1
        if script == COUNT_MEMBERS:
            return [len(self.zsets.get(key, {})) for key in keys]
        if script == NODE_BEAT:
            alive = self.get(keys[0]) is not None
            self.set(keys[0], "1", argv[0])
            self.sets.setdefault(keys[1], {})[argv[1]] = None
            return 1 if alive else 0
        if script == REASSERT_MEMBERS:
            back = 0
            for i in range((len(argv) - 2) // 4):
                room, member, seq, name = argv[2 + 4 * i: 6 + 4 * i]
                members = self.zsets.setdefault(keys[1 + 2 * i], {})
                if member not in members:
                    members[member] = float(seq)
                    back += 1
                    self.xadd(keys[2 + 2 * i], "*", ["user", name, "status", "online", "node", argv[0]])
                self.sets.setdefault(keys[0], {})[f"{room} {member}"] = None
            return back
        # SWEEP_NODES
        node_prefix, set_prefix, members_prefix, presence_prefix = argv[:4]
        removed: list[str] = []
        for node in list(self.sets.get(keys[0], {})):
            if self.get(node_prefix + node) is not None:
                continue
            for entry in list(self.sets.pop(set_prefix + node, {})):
                room, _, member = entry.partition(" ")
                if self.zsets.get(members_prefix + room, {}).pop(member, None) is not None:
                    name = member.split("|", 1)[1]
                    self.xadd(presence_prefix + room, "*", ["user", name, "status", "offline", "node", node])
                    removed += [room, name]
            self.sets[keys[0]].pop(node, None)
        return removed

    def _pexpire(self, key: str, ms: str) -> int:
        return 1  # streams never expire here: a test runs for seconds

    def _del(self, *keys: str) -> int:
        found = 0
        for key in keys:
            for store in (self.strings, self.zsets, self.hashes, self.sets, self.streams):
                if key in store:
                    del store[key]
                    found = 1
            self.expires.pop(key, None)
        return found

    def _xadd(self, key: str, *args: str) -> str:
        rest = list(args)
        if rest[0] == "MAXLEN":
            rest = rest[3:]
        return self.xadd(key, rest[0], rest[1:])

    def _xrange(self, key: str, low: str, high: str, *count: str) -> list[Any]:
        entries = [[i, list(f)] for i, f in self.streams.get(key, []) if _above(i, low) and _below(i, high)]
        return entries[: int(count[1])] if count else entries

    def _xrevrange(self, key: str, high: str, low: str, *count: str) -> list[Any]:
        entries = self._xrange(key, low, high)[::-1]
        return entries[: int(count[1])] if count else entries

    def _zrange(self, key: str, start: str, stop: str) -> list[str]:
        return [member for member, _ in sorted(self.zsets.get(key, {}).items(), key=lambda item: item[1])]

    def _zrem(self, key: str, member: str) -> int:
        return 1 if self.zsets.get(key, {}).pop(member, None) is not None else 0

    def _mget(self, *keys: str) -> list[str | None]:
        return [self.get(key) for key in keys]

    def _xread(self, args: tuple[str, ...], link: FakeRedisLink) -> Deferred[Any]:
        streams = list(args[args.index("STREAMS") + 1:])
        keys, ids = streams[: len(streams) // 2], streams[len(streams) // 2:]
        reply = self._read(keys, ids)
        if reply:
            return succeed(reply)
        d: Deferred[Any] = Deferred()
        entry = (d, keys, ids, link)
        self.blocked.append(entry)
        timeout = self.clock.callLater(int(args[args.index("BLOCK") + 1]) / 1000, self._unblock, entry, None)

        def settled(result: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            return result

        return d.addBoth(settled)

    def _read(self, keys: list[str], ids: list[str]) -> list[Any]:
        reply = []
        for key, after in zip(keys, ids):
            entries = [[i, list(f)] for i, f in self.streams.get(key, []) if _order(i) > _order(after)]
            if entries:
                reply.append([key, entries])
        return reply

    def _wake(self) -> None:
        for entry in list(self.blocked):
            reply = self._read(entry[1], entry[2])
            if reply:
                self._unblock(entry, reply)

    def _unblock(self, entry: tuple[Deferred[Any], list[str], list[str], FakeRedisLink], reply: Any) -> None:
        if entry in self.blocked:
            self.blocked.remove(entry)
            entry[0].callback(reply)

    def drop(self, link: FakeRedisLink) -> None:
        """``link``'s connection drops: its blocked reads fail."""
        for entry in [entry for entry in self.blocked if entry[3] is link]:
            self.blocked.remove(entry)
            entry[0].errback(ConnectionError("connection lost"))


def _order(stream_id: str) -> tuple[int, int]:
    high, _, low = stream_id.partition("-")
    return int(high), int(low or 0)


def _above(stream_id: str, low: str) -> bool:
    if low == "-":
        return True
    if low.startswith("("):
        return _order(stream_id) > _order(low[1:])
    return _order(stream_id) >= _order(low)


def _below(stream_id: str, high: str) -> bool:
    if high == "+":
        return True
    if high.startswith("("):
        return _order(stream_id) < _order(high[1:])
    return _order(stream_id) <= _order(high)


class FakeRedisLink:
    """One node's connection to a :class:`FakeRedis`; ``cut`` and ``restore`` it."""

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.connected = False
        self.calls: list[tuple[str, ...]] = []

    def call(self, *args: str) -> Deferred[Any]:
        self.calls.append(args)
        if not self.connected:
            return fail(RedisUnavailable("Redis is not connected"))
        return self.redis.execute(args, self)

    def start(self) -> None:
        self.connected = True

    def stop(self) -> Deferred[None]:
        self.cut()
        return succeed(None)

    def cut(self) -> None:
        """The connection drops (and stays down until ``restore``)."""
        self.connected = False
        self.redis.drop(self)

    def restore(self) -> None:
        """The connection is back."""
        self.connected = True


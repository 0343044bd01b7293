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

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatd.cluster.link import RedisUnavailable
from chatd.cluster.scripts import (
    ADD_MEMBERSHIP,
    ADD_SESSION,
    CLAIM_NAME,
    COUNT_MEMBERS,
    CREATE_ROOM,
    DM_PUBLISH,
    DROP_SESSION,
    ENTER_ROOM,
    LEAVE_ROOM,
    LOAD_ACCOUNTS,
    LOAD_ROOMS,
    LOGIN_ALLOWED,
    LOGIN_FAILED,
    MARK_DELIVERED,
    NODE_BEAT,
    PUBLISH,
    REASSERT_MEMBERS,
    REFRESH_ACCOUNTS,
    REFRESH_NAMES,
    RELEASE_NAME,
    REMOVE_MEMBERSHIP,
    REPAIR,
    RESERVE_REGISTRATION,
    SAVE_ACCOUNT,
    SET_RESTRICTION,
    SWEEP_NODES,
    TAKE_UNDELIVERED,
    UPDATE_ROOM,
)

#: The account scripts, run by :meth:`FakeRedis._account_script`.
ACCOUNT_SCRIPTS = (
    LOAD_ACCOUNTS, SAVE_ACCOUNT, SET_RESTRICTION, ADD_MEMBERSHIP, REMOVE_MEMBERSHIP, TAKE_UNDELIVERED, MARK_DELIVERED,
    ADD_SESSION, DROP_SESSION, REFRESH_ACCOUNTS, LOGIN_ALLOWED, LOGIN_FAILED, RESERVE_REGISTRATION,
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
            for index in range(1, len(argv), 6):
                sender, text, ts, node, token, notice = argv[index: index + 6]
                n = self.incr(keys[0])
                fields = ["sender", sender, "text", text, "ts", ts, "node", node, "token", token]
                self.xadd(keys[1], f"{n}-1", fields + (["notice", "1"] if notice == "1" else []))
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
        if script in ACCOUNT_SCRIPTS:
            return self._account_script(script, keys, argv)
        raise AssertionError("an unknown script")

    def _dm_publish(self, keys: list[str], argv: list[str]) -> list[Any]:
        out: list[Any] = []
        kept_prefix, convs_prefix, keep = argv[1], argv[2], int(argv[3])
        for m in range((len(argv) - 4) // 9):
            sender, text, ts, node, token, conv, owners, offline_to, notice = argv[4 + 9 * m: 13 + 9 * m]
            holder = self.get(keys[3 + 2 * m])
            if holder is not None and "|" in holder:
                to, offline = holder.split("|", 1)[1], False
            elif offline_to:
                to, offline = offline_to, True
            else:
                out += [0, ""]
                continue
            message_id = self.incr(keys[2 + 2 * m])
            n = self.incr(keys[0])
            fields = ["conv", conv, "id", str(message_id), "sender", sender, "text", text, "ts", ts, "to", to,
                      "node", node, "token", token]
            self.xadd(keys[1], f"{n}-1", fields + (["offline", "1"] if offline else []) + (["notice", "1"] if notice == "1" else []))
            kept = json.dumps({"id": str(message_id), "sender": sender, "to": to, "text": text, "ts": ts, "offline": offline,
                               "notice": notice == "1"})
            for owner in owners.split():
                place = self.zsets.setdefault(f"{kept_prefix}{owner}:{conv}", {})
                place[kept] = message_id
                for old in sorted(place, key=place.__getitem__)[: max(0, len(place) - keep)]:
                    del place[old]
                self.hashes.setdefault(convs_prefix + owner, {})[conv] = str(message_id)
            out += [message_id, to]
        return out

    def _live_sessions(self, key: str, node: str, prefix: str) -> int:
        counts = self.hashes.get(key, {})
        for other in [other for other in counts if other != node and self.get(prefix + other) is None]:
            del counts[other]
        return sum(int(count) for count in counts.values())

    def _account_script(self, script: str, keys: list[str], argv: list[str]) -> Any:
        if script == LOAD_ACCOUNTS:
            log = self.streams.get(keys[2], [])
            flat = [[item for pair in self.hashes.get(key, {}).items() for item in pair] for key in keys[:2]]
            return [log[-1][0] if log else "0-0", *flat]
        if script == SAVE_ACCOUNT:
            lower, text, name, _cap, node, refuse = argv
            accounts = self.hashes.setdefault(keys[0], {})
            exists = lower in accounts
            if exists and refuse == "1":
                return 0
            accounts[lower] = text
            if not exists:
                self.hashes.setdefault(keys[1], {})[lower] = name
                self.xadd(keys[2], "*", ["kind", "account", "key", lower, "name", name, "node", node])
            return 1
        if script == SET_RESTRICTION:
            field, record, _cap, kind, room, name, by, node = argv
            held = self.hashes.setdefault(keys[0], {})
            changed = 1
            if record:
                held[field] = record
            else:
                changed = 1 if held.pop(field, None) is not None else 0
            self.xadd(keys[1], "*", ["kind", kind, "room", room, "name", name, "record", record, "by", by, "node", node])
            return changed
        if script == ADD_MEMBERSHIP:
            rooms = self.zsets.setdefault(keys[0], {})
            if argv[0] not in rooms:
                rooms[argv[0]] = self.incr(keys[2])
            self.sets.setdefault(keys[1], {})[argv[1]] = None
            return 1
        if script == REMOVE_MEMBERSHIP:
            self.zsets.get(keys[0], {}).pop(argv[0], None)
            self.sets.get(keys[1], {}).pop(argv[1], None)
            return 1
        if script == TAKE_UNDELIVERED:
            limit = int(argv[1])
            marks = self.hashes.setdefault(keys[1], {})
            out: list[Any] = []
            for conv, newest in list(self.hashes.get(keys[0], {}).items()):
                mark = int(marks.get(conv, "0"))
                if int(newest) <= mark:
                    continue
                kept = self.zsets.get(argv[0] + conv, {})
                page = [member for member, score in sorted(kept.items(), key=lambda item: item[1]) if score > mark][: limit + 1]
                more = 1 if len(page) > limit else 0
                page = page[:limit]
                if page:
                    marks[conv] = str(int(kept[page[-1]]))
                    out += [conv, more, page]
            return out
        if script == MARK_DELIVERED:
            for index in range(1, len(argv), 3):
                owner, conv, last = argv[index: index + 3]
                marks = self.hashes.setdefault(argv[0] + owner, {})
                if int(last) > int(marks.get(conv, "0")):
                    marks[conv] = last
            return 1
        if script == ADD_SESSION:
            value, ttl, lower, node, most, prefix = argv
            holder = self.get(keys[0])
            if holder is not None and holder != value:
                return [-1]
            total = self._live_sessions(keys[3], node, prefix)
            if total >= int(most):
                return [-2]
            counts = self.hashes.setdefault(keys[3], {})
            counts[node] = str(int(counts.get(node, "0")) + 1)
            self.set(keys[0], value, ttl)
            users = self.zsets.setdefault(keys[2], {})
            if lower not in users:
                users[lower] = self.incr(keys[1])
            return [1 if total == 0 else 0, int(users[lower])]
        if script == DROP_SESSION:
            value, lower, node, count, prefix = argv
            counts = self.hashes.setdefault(keys[2], {})
            left = 0 if count == "all" else int(counts.get(node, "0")) - 1
            if left <= 0:
                counts.pop(node, None)
            else:
                counts[node] = str(left)
            if self._live_sessions(keys[2], node, prefix) > 0:
                return 0
            self.hashes.pop(keys[2], None)
            if self.get(keys[0]) == value:
                self._del(keys[0])
            self.zsets.get(keys[1], {}).pop(lower, None)
            return 1
        if script == REFRESH_ACCOUNTS:
            lost = []
            ttl, node = argv[0], argv[1]
            for index in range((len(keys) - 1) // 2):
                name_key, sessions = keys[1 + 2 * index: 3 + 2 * index]
                value, lower, login, count = argv[2 + 4 * index: 6 + 4 * index]
                if self.get(name_key) in (None, value):
                    self.set(name_key, value, ttl)
                    self.zsets.setdefault(keys[0], {}).setdefault(lower, float(login))
                    self.hashes.setdefault(sessions, {})[node] = count
                else:
                    lost.append(lower)
            return lost
        now, = argv[:1]
        if script == LOGIN_ALLOWED:
            window, limit = float(argv[1]), int(argv[2])
            return 0 if any(self._in_window(key, float(now), window) >= limit for key in keys) else 1
        if script == LOGIN_FAILED:
            member, remembered = argv[2], int(argv[3])
            for key in keys:
                events = self.zsets.setdefault(key, {})
                events[member] = float(now)
                for old in sorted(events, key=events.__getitem__)[: max(0, len(events) - remembered)]:
                    del events[old]
            return 1
        # RESERVE_REGISTRATION
        window, rate, member = float(argv[1]), int(argv[2]), argv[3]
        if self._in_window(keys[0], float(now), window) >= rate:
            return 0
        self.zsets.setdefault(keys[0], {})[member] = float(now)
        return 1

    def _in_window(self, key: str, now: float, window: float) -> int:
        events = self.zsets.setdefault(key, {})
        for member in [member for member, moment in events.items() if moment <= now - window]:
            del events[member]
        return len(events)

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
        nodes = list(self.sets.get(keys[0], {}))
        for node in nodes:
            if self.get(node_prefix + node) is not None:
                continue
            for entry in list(self.sets.pop(set_prefix + node, {})):
                room, _, member = entry.partition(" ")
                members = self.zsets.get(members_prefix + room, {})
                if members.pop(member, None) is not None:
                    name = member.split("|", 1)[1]
                    elsewhere = any(
                        other != node and self.get(node_prefix + other) is not None and f"{other}|{name}" in members
                        for other in nodes
                    )
                    if not elsewhere:
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

    def _set(self, key: str, value: str, *options: str) -> str:
        self.set(key, value, options[1] if options[:1] == ("PX",) else None)
        return "OK"

    def _get(self, key: str) -> str | None:
        return self.get(key)

    def _hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    def _hgetall(self, key: str) -> list[str]:
        return [item for pair in self.hashes.get(key, {}).items() for item in pair]

    def _smembers(self, key: str) -> list[str]:
        return list(self.sets.get(key, {}))

    def _zrangebyscore(self, key: str, low: str, high: str, *limit: str) -> list[str]:
        found = [member for member, score in sorted(self.zsets.get(key, {}).items(), key=lambda item: item[1])
                 if _score_above(score, low) and _score_below(score, high)]
        return found[int(limit[1]): int(limit[1]) + int(limit[2])] if limit else found

    def _zrevrangebyscore(self, key: str, high: str, low: str, *limit: str) -> list[str]:
        found = self._zrangebyscore(key, low, high)[::-1]
        return found[int(limit[1]): int(limit[1]) + int(limit[2])] if limit else found

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


def _score_above(score: float, low: str) -> bool:
    if low == "-inf":
        return True
    return score > float(low[1:]) if low.startswith("(") else score >= float(low)


def _score_below(score: float, high: str) -> bool:
    if high == "+inf":
        return True
    return score < float(high[1:]) if high.startswith("(") else score <= float(high)


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


"""Several chatd nodes as one chat, through Redis (``--cluster redis://...``).

What Redis holds, and how every node uses it:

- **Messages and their order**: one stream per room
  (``chatd:stream:<room>``).  A Lua script takes the next integer id
  (``INCR chatd:seq:<room>``) and appends the message under the stream id
  ``<id>-1`` atomically (one script call per reactor turn carries all the
  messages the node accepted in it), so ids are integers, strictly increasing across
  all nodes.  The publishing node does *not* deliver: every node, the
  publisher included, reads the stream (``XREAD BLOCK``) and fans out to
  its own connections, so every user sees one order, the sender's echo
  included.  A node that loses Redis resumes reading from the last stream
  id it delivered: nothing is skipped.
- **History**: the stream itself (``XRANGE``/``XREVRANGE``), capped with
  ``MAXLEN ~``.
- **Presence**: a second, short stream (``chatd:presence:<room>``), read
  in the same ``XREAD``: users on every node hear who came and went.
- **Names**: ``chatd:name:<lower>`` set with ``NX`` and a short expiry,
  refreshed by the owning node's heartbeat (and re-asserted if it
  expired while Redis was away); a dead node's names vanish within the
  expiry.  ``chatd:users`` (a sorted set by login sequence) keeps the
  cluster-wide login order for ``names``.

txredisapi 1.6 notes: ``convertNumbers=False`` (so "007" stays "007");
every call checks the pool is connected first and has a reply timeout
(calls made while disconnected would otherwise wait forever); ``XREAD
BLOCK`` runs on its own single connection with no reply timeout.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any
from urllib.parse import urlparse

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatd import messages
from chatd.history import MAX_PAGE, StoredMessage
from chatd.hub import LOBBY, Hub, Member
from chatd.messages import ChatError

#: A name's key lives this long without a heartbeat (ms).
NAME_TTL_MS = 10_000
#: How often a node refreshes its names and its own key (s).
HEARTBEAT = 2.0
#: Reply timeout of ordinary Redis calls (s).
CALL_TIMEOUT = 3.0
#: Messages kept per room stream (approximately).
STREAM_MAXLEN = 100_000

# A batch of messages: ARGV[1] is the stream cap, then five fields per
# message (sender, text, timestamp, node, token), in order.
PUBLISH = """
local ids = {}
for i = 2, #ARGV, 5 do
  local id = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-1', 'sender', ARGV[i], 'text', ARGV[i + 1],
             'ts', ARGV[i + 2], 'node', ARGV[i + 3], 'token', ARGV[i + 4])
  ids[#ids + 1] = id
end
return ids
"""

CLAIM_NAME = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[3])
return seq
"""

# Refresh our names; re-take any that expired while we were away (and put
# them back in the login order, which `names` may have pruned meanwhile);
# return those another node took meanwhile.
# KEYS: the users set, then one name key per name; ARGV: the expiry, then
# (value, lower-cased name, login sequence) for each name.
REFRESH_NAMES = """
local lost = {}
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 3
  local value = redis.call('GET', KEYS[i])
  if value == false or value == ARGV[base] then
    redis.call('SET', KEYS[i], ARGV[base], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], 'NX', ARGV[base + 2], ARGV[base + 1])
  else
    table.insert(lost, ARGV[base + 1])
  end
end
return lost
"""

RELEASE_NAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


class RedisUnavailable(Exception):
    """Redis cannot be reached right now."""


def parse_url(url: str) -> tuple[str, int, int]:
    """``redis://HOST:PORT/DB`` as (host, port, db)."""
    parsed = urlparse(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        raise ValueError(f"--cluster wants redis://HOST:PORT/DB, not {url!r}")
    db = int(parsed.path.strip("/") or 0)
    return parsed.hostname, parsed.port or 6379, db


class RedisLink:
    """A txredisapi pool that fails fast when disconnected."""

    def __init__(self, reactor: Any, host: str, port: int, db: int, poolsize: int, timeout: float | None) -> None:
        import txredisapi

        self.factory = txredisapi.RedisFactory(
            f"{host}:{port}", db or None, poolsize, isLazy=True, convertNumbers=False, replyTimeout=timeout
        )
        self.factory.maxDelay = 2  # back within seconds of Redis's return
        self.factory.deferred.addErrback(lambda failure: None)  # reported by each call instead
        self.endpoint = HostnameEndpoint(reactor, host, port, timeout=5)

    def start(self) -> None:
        """Connect (and keep reconnecting)."""
        self.factory.startConnecting(self.endpoint)

    def stop(self) -> Deferred[Any]:
        """Disconnect for good."""
        return self.factory.disconnect()

    @property
    def connected(self) -> bool:
        """Whether at least one connection of the pool is up."""
        return bool(self.factory.size)

    def call(self, *args: Any) -> Deferred[Any]:
        """One Redis command; fails at once with RedisUnavailable if down."""
        if not self.connected:
            return fail(RedisUnavailable("Redis is not connected"))
        return self.factory.handler.execute_command(*args)


def _message(room: str, entry: list[Any]) -> tuple[StoredMessage, str, str]:
    """A stream entry as (message, publishing node, token)."""
    stream_id, raw = entry
    fields = dict(zip(raw[::2], raw[1::2]))
    message_id = int(stream_id.split("-")[0])
    message = StoredMessage(message_id, room, fields["sender"], fields["text"], fields["ts"])
    return message, fields.get("node", ""), fields.get("token", "")


class RedisHistory:
    """The history facade of a clustered hub (the stream is the history)."""

    kind = "redis"

    def __init__(self, cluster: ClusterHub) -> None:
        self.cluster = cluster

    def last_id(self, room: str) -> int:
        """For /health: fails when Redis is away."""
        if not self.cluster.commands.connected:
            raise RedisUnavailable("Redis is not connected")
        return self.cluster.last_delivered

    def commit(self) -> list[StoredMessage]:
        """Nothing to commit: Redis stores each message as it is published."""
        return []

    def prune(self, retention: Any, now: float) -> int:
        """Retention is the stream's MAXLEN."""
        return 0

    def close(self) -> None:
        """Nothing held locally."""


class ClusterHub(Hub):
    """A hub whose registry, order and history live in Redis.

    Local connections are still tracked here (for fan-out); every
    cluster-wide answer is a Deferred.
    """

    log = Logger()

    def __init__(self, reactor: Any, url: str, max_message: int = 2000) -> None:
        host, port, db = parse_url(url)
        super().__init__(reactor, None, max_message=max_message)  # type: ignore[arg-type]
        self.history = RedisHistory(self)  # type: ignore[assignment]
        self.node = uuid.uuid4().hex[:12]
        # One connection: Redis runs its commands in the order sent, so
        # a sender's messages get ids in the order it sent them.
        self.commands = RedisLink(reactor, host, port, db, 1, CALL_TIMEOUT)
        self.reader = RedisLink(reactor, host, port, db, 1, None)
        self.stream_key = f"chatd:stream:{LOBBY}"
        self.last_delivered = 0
        self.presence_key = f"chatd:presence:{LOBBY}"
        self._last_stream_id: str | None = None
        self._start_stream_id = "0-0"
        self._last_presence_id = "0-0"
        self._tokens = itertools.count(1)
        self._outbox: list[str] = []
        self._publish_call: Any = None
        self._pending: dict[str, tuple[Member, Any]] = {}
        self._waiting: dict[int, int] = {}  # id(member) -> messages not yet back
        self._waiters: dict[int, list[Any]] = {}
        # id(member) -> (name key, its value, lower-cased name, login sequence)
        self._values: dict[int, tuple[str, str, str, str]] = {}
        self._ready_waiters: list[Deferred[None]] = []
        self._stopped = False

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Connect, then start reading the stream."""
        self.commands.start()
        self.reader.start()
        self._read()

    def stop(self) -> Deferred[Any]:
        """Release our names and disconnect."""
        self._stopped = True
        releases = DeferredList([self._release(member) for member in list(self._members.values())], consumeErrors=True)
        releases.addBoth(lambda _: self.commands.stop())
        releases.addBoth(lambda _: self.reader.stop())
        return releases.addErrback(lambda failure: None)

    def heartbeat(self) -> None:
        """Refresh our names (re-take expired ones)."""
        names = list(self._values.values())
        if not names or not self.commands.connected:
            return
        keys = ["chatd:users"] + [key for key, _value, _lower, _seq in names]
        args = [str(NAME_TTL_MS)]
        for _key, value, lower, seq in names:
            args += [value, lower, seq]
        d = self.commands.call("EVAL", REFRESH_NAMES, str(len(keys)), *keys, *args)
        d.addCallback(self._refreshed).addErrback(self._log_failure, "refreshing names")

    def _refreshed(self, lost: list[str]) -> None:
        # Names another node took while we were cut off: theirs now. Our
        # users of those names must go, or a name would exist twice.
        for lower in lost or ():
            member = self._members.get(lower)
            if member is None:
                continue
            self.log.warn("{user} lost its name to another node while Redis was away", user=member.name)
            self._values.pop(id(member), None)
            member.name_lost()

    def _log_failure(self, failure: Any, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))

    # -- names -------------------------------------------------------------

    def _when_ready(self) -> Deferred[None]:
        """Fires once this node knows where in the stream it starts reading.

        Until then nobody may log in here: a message posted earlier would
        lie before the start position and never be delivered here.
        """
        if self._last_stream_id is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.append(waiter)

        def too_late() -> None:
            if not waiter.called:
                self._ready_waiters.remove(waiter)
                waiter.errback(RedisUnavailable("not ready"))

        self.clock.callLater(CALL_TIMEOUT, too_late)
        return waiter

    def login(self, member: Member, name: Any) -> Deferred[str]:  # type: ignore[override]
        self.check_name(name)
        return self._when_ready().addCallback(lambda _: self._claim(member, name)).addErrback(
            self._busy_unless_chat_error
        )

    def _claim(self, member: Member, name: str) -> Deferred[str]:
        if not self.commands.connected:
            raise ChatError(messages.SERVER_BUSY, "The server cannot reach its cluster; try again soon.")
        lower = name.lower()
        value = f"{self.node}|{name}"
        key = f"chatd:name:{lower}"
        d = self.commands.call("EVAL", CLAIM_NAME, "3", key, "chatd:loginseq", "chatd:users", value, str(NAME_TTL_MS), lower)

        def claimed(seq: Any) -> str:
            if not int(seq):
                raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")
            self._members[lower] = member
            self._values[id(member)] = (key, value, lower, str(seq))
            self._announce(name, "online", member)
            return name

        return d.addCallback(claimed).addErrback(self._busy_unless_chat_error)

    @staticmethod
    def _busy_unless_chat_error(failure: Any) -> Any:
        if failure.check(ChatError):
            return failure
        raise ChatError(messages.SERVER_BUSY, "The server cannot reach its cluster; try again soon.")

    def logout(self, member: Member) -> None:
        if self.is_member(member):
            self._release(member).addErrback(self._log_failure, "releasing a name")
        super().logout(member)

    def _release(self, member: Member) -> Deferred[Any]:
        key, value, _lower, _seq = self._values.pop(id(member), (None, None, None, None))
        if key is None or member.name is None:
            return succeed(None)
        return self.commands.call("EVAL", RELEASE_NAME, "2", key, "chatd:users", value, member.name.lower())

    def names(self) -> Deferred[list[str]]:  # type: ignore[override]
        def listed(lowers: list[str]) -> Any:
            if not lowers:
                return []
            keys = [f"chatd:name:{lower}" for lower in lowers]
            return self.commands.call("MGET", *keys).addCallback(present, lowers)

        def present(values: list[Any], lowers: list[str]) -> list[str]:
            names = []
            for lower, value in zip(lowers, values):
                if value is None:
                    self.commands.call("ZREM", "chatd:users", lower).addErrback(lambda failure: None)
                else:
                    names.append(value.split("|", 1)[1])
            return names

        return self.commands.call("ZRANGE", "chatd:users", "0", "-1").addCallback(listed).addErrback(
            self._busy_unless_chat_error
        )

    # -- messages ----------------------------------------------------------

    def post(self, member: Member, text: str, ref: Any = None) -> StoredMessage | None:  # type: ignore[override]
        assert member.name is not None
        text = self.checked_text(text)
        if not self.commands.connected:
            raise ChatError(messages.SERVER_BUSY, "The server cannot reach its cluster; try again soon.")
        token = f"{next(self._tokens)}"
        self._pending[token] = (member, ref)
        self._waiting[id(member)] = self._waiting.get(id(member), 0) + 1
        # Published in one EVAL per reactor turn, like the single node's
        # one transaction per turn.
        self._outbox += [member.name, text, self.now(), self.node, token]
        if self._publish_call is None:
            self._publish_call = self.clock.callLater(0, self._publish)
        return None

    def _publish(self) -> None:
        self._publish_call = None
        fields, self._outbox = self._outbox, []
        tokens = fields[4::5]
        d = self.commands.call("EVAL", PUBLISH, "2", f"chatd:seq:{LOBBY}", self.stream_key, str(STREAM_MAXLEN), *fields)
        d.addCallbacks(
            lambda ids: self.metrics.messages_accepted.inc(len(ids)), self._publish_failed, errbackArgs=(tokens,)
        )

    def _publish_failed(self, failure: Any, tokens: list[str]) -> None:
        # If Redis stored them after all, the stream brings them: waiters
        # are released then. Otherwise tell the senders now.
        self.log.warn("publishing failed: {problem}", problem=str(failure.value))
        for token in tokens:
            pending = self._pending.pop(token, None)
            if pending is None:
                continue
            member, ref = pending
            member.message_failed(None, ref)  # type: ignore[arg-type]
            self._done(member)

    def after_flush(self, action: Any, member: Member | None = None) -> None:
        """Run ``action`` once ``member``'s messages came back through the stream."""
        if member is None or not self._waiting.get(id(member)):
            action()
            return
        self._waiters.setdefault(id(member), []).append(action)

    def flush(self) -> None:
        """Publish what this turn accepted now (at shutdown)."""
        if self._publish_call is not None and self._publish_call.active():
            self._publish_call.cancel()
            self._publish()

    def _done(self, member: Member) -> None:
        left = self._waiting.get(id(member), 1) - 1
        if left > 0:
            self._waiting[id(member)] = left
            return
        self._waiting.pop(id(member), None)
        for action in self._waiters.pop(id(member), []):
            action()

    # -- the stream --------------------------------------------------------

    def _read(self) -> None:
        if self._stopped:
            return
        if not self.reader.connected or not self.commands.connected:
            self.clock.callLater(0.2, self._read)
            return
        if self._last_stream_id is None:
            d = self.commands.call("XREVRANGE", self.stream_key, "+", "-", "COUNT", "1")
            d.addCallback(self._start_position)
            d.addCallback(lambda _: self.commands.call("XREVRANGE", self.presence_key, "+", "-", "COUNT", "1"))
            d.addCallbacks(self._presence_position, self._read_failed)
            return
        d = self.reader.call(
            "XREAD", "COUNT", "500", "BLOCK", "1000", "STREAMS",
            self.stream_key, self.presence_key, self._last_stream_id, self._last_presence_id,
        )
        d.addCallbacks(self._got_entries, self._read_failed)

    def _start_position(self, newest: list[Any]) -> None:
        self._start_stream_id = newest[0][0] if newest else "0-0"

    def _presence_position(self, newest: list[Any]) -> None:
        self._last_presence_id = newest[0][0] if newest else "0-0"
        self._last_stream_id = self._start_stream_id
        if self._last_stream_id != "0-0":
            self.last_delivered = int(self._last_stream_id.split("-")[0])
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._read()

    def _read_failed(self, failure: Any) -> None:
        if not self._stopped:
            self.log.warn("reading the stream failed: {problem}", problem=str(failure.value))
            self.clock.callLater(1.0, self._read)

    def _got_entries(self, reply: Any) -> None:
        for stream, entries in reply or ():
            if stream == self.presence_key:
                self._presence(entries)
                self._last_presence_id = entries[-1][0]
            else:
                self._deliver([_message(LOBBY, entry) for entry in entries])
                self._last_stream_id = entries[-1][0]
        self.clock.callLater(0, self._read)

    def _announce(self, name: str, status: str, subject: Member) -> None:
        """Presence goes through Redis, so users on every node hear of it."""
        d = self.commands.call(
            "XADD", self.presence_key, "MAXLEN", "~", "1000", "*", "user", name, "status", status, "node", self.node
        )
        d.addErrback(self._log_failure, "announcing presence")

    def _presence(self, entries: list[Any]) -> None:
        for _id, raw in entries:
            fields = dict(zip(raw[::2], raw[1::2]))
            user, status, node = fields.get("user", ""), fields.get("status", ""), fields.get("node", "")
            for member in list(self._members.values()):
                if node == self.node and member.name is not None and member.name.lower() == user.lower():
                    continue  # nobody is told of themselves
                member.presence(user, status, LOBBY)

    def _deliver(self, entries: list[tuple[StoredMessage, str, str]]) -> None:
        batch: list[tuple[StoredMessage, Member, Any]] = []
        origins = []
        for message, node, token in entries:
            if message.id <= self.last_delivered:
                continue
            self.last_delivered = message.id
            origin, ref = self._pending.pop(token, (None, None)) if node == self.node else (None, None)
            batch.append((message, origin, ref))  # type: ignore[arg-type]
            if origin is not None:
                origins.append(origin)
        if batch:
            self._fan_out(batch)
        for origin in origins:
            self._done(origin)

    # -- history -----------------------------------------------------------

    def recent(self, limit: int | None) -> Deferred[list[StoredMessage]]:  # type: ignore[override]
        if limit is not None and limit <= 0:
            return succeed([])
        count = ["COUNT", str(limit)] if limit is not None else []
        d = self.commands.call("XREVRANGE", self.stream_key, "+", "-", *count)
        return d.addCallback(lambda entries: [_message(LOBBY, e)[0] for e in reversed(entries)]).addErrback(
            self._busy_unless_chat_error
        )

    def page(self, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:  # type: ignore[override]
        limit = max(1, min(MAX_PAGE, limit))
        count = str(limit + 1)
        if after is not None:
            d = self.commands.call("XRANGE", self.stream_key, f"({after}-1", "+", "COUNT", count)
            d.addCallback(lambda entries: ([_message(LOBBY, e)[0] for e in entries[:limit]], len(entries) > limit))
        else:
            top = "+" if before is None else f"({before}-0"
            d = self.commands.call("XREVRANGE", self.stream_key, top, "-", "COUNT", count)
            d.addCallback(
                lambda entries: ([_message(LOBBY, e)[0] for e in reversed(entries[:limit])], len(entries) > limit)
            )
        return d.addErrback(self._busy_unless_chat_error)


class ClusterService(Service):
    """Starts the clustered hub's Redis links and its heartbeat."""

    def __init__(self, hub: ClusterHub, clock: Any) -> None:
        self.hub = hub
        self.clock = clock
        self._beat: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self.hub.start()
        self._beat = LoopingCall(self.hub.heartbeat)
        self._beat.clock = self.clock
        self._beat.start(HEARTBEAT, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        return self.hub.stop()

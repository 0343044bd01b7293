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

Only the script gives ids.  Anything else in a stream (an entry added
by hand, with a clock id like ``1764000000000-0``, without ``sender``,
with text that is not UTF-8 or longer than ``--max-message``) is skipped
by every reader and by ``history``, and logged once; the script deletes
stray entries that lie beyond its sequence (so its next ``XADD`` still
fits), and a reader that meets one asks for that same repair instead of
moving its read position past it.  The read loop survives anything:
whatever goes wrong with one reply is logged, and reading goes on after
a growing delay.

txredisapi 1.6 notes: ``convertNumbers=False`` (so "007" stays "007");
every call checks the pool is connected first and has a reply timeout
(calls made while disconnected would otherwise wait forever); ``XREAD
BLOCK`` runs on its own single connection with no reply timeout.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections import OrderedDict
from typing import Any
from urllib.parse import urlparse

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatd import messages
from chatd.stores.history import MAX_PAGE, HistoryError, StoredMessage
from chatd.core.hub import LOBBY, Hub, Member, clean_text
from chatd.messages import ChatError

#: A name's key lives this long without a heartbeat (ms).
NAME_TTL_MS = 10_000
#: How often a node refreshes its names and its own key (s).
HEARTBEAT = 2.0
#: Reply timeout of ordinary Redis calls (s).
CALL_TIMEOUT = 3.0
#: Messages kept per room stream (approximately).
STREAM_MAXLEN = 100_000

#: The largest id a stream entry may carry (15 digits): Lua formats and
#: compares such numbers exactly, and JavaScript clients read them exactly.
MAX_ID = 10**15 - 1
#: The longest value of a stream field other than ``text`` (characters).
MAX_FIELD = 200
#: The most fields a stream entry may have.
MAX_FIELDS = 16
#: How many skipped entries are remembered, so that each is logged once.
MAX_REPORTED = 1024
#: Delays between attempts of a failing read loop (s): doubled each time.
READ_RETRY = 0.5
READ_RETRY_MAX = 5.0

# Shared by the scripts below (KEYS[1] the sequence, KEYS[2] the stream):
# entries beyond the sequence were not added by PUBLISH.  One with an id
# of PUBLISH's form (<n>-1, n of at most 15 digits) may have been
# delivered by readers already: the sequence moves past it.  Any other
# (a clock id, say) is deleted: no reader moves past it, and the
# stream's last id is set back to the sequence, so the next XADD fits.
REPAIR_FUNCTIONS = """
local function reset_last_id(stream, seq)
  if redis.call('EXISTS', stream) == 0 then return end
  local id = seq .. '-1'
  local done = redis.pcall('XSETID', stream, id)
  if type(done) == 'table' and done.err then
    redis.pcall('XSETID', stream, id, 'ENTRIESADDED', redis.call('XLEN', stream), 'MAXDELETEDID', id)
  end
end

local function repair(seq_key, stream, force)
  local seq = redis.call('GET', seq_key)
  if not seq or not string.match(seq, '^%d+$') or #seq > 15 then
    seq = '0'
    redis.call('SET', seq_key, seq)
  end
  local deleted = false
  for _ = 1, 1000 do
    local above = redis.call('XREVRANGE', stream, '+', '(' .. seq .. '-1', 'COUNT', 1)
    if #above == 0 then break end
    local id = above[1][1]
    local n = string.match(id, '^([1-9]%d*)%-1$')
    if n and #n <= 15 then
      seq = n
      redis.call('SET', seq_key, n)
    else
      redis.call('XDEL', stream, id)
      deleted = true
    end
  end
  if deleted or force then reset_last_id(stream, seq) end
  return seq
end
"""

# A batch of messages: ARGV[1] is the stream cap, then five fields per
# message (sender, text, timestamp, node, token), in order.  An XADD
# refused because something not ours lies beyond the sequence repairs
# the stream and tries once more, with the same id unless the repair
# moved the sequence; a sequence that is not a number is repaired first.
PUBLISH = REPAIR_FUNCTIONS + """
local seq = redis.call('GET', KEYS[1])
if seq and not (string.match(seq, '^%d+$') and #seq <= 15) then repair(KEYS[1], KEYS[2], true) end
local ids = {}
for i = 2, #ARGV, 5 do
  local fields = {'sender', ARGV[i], 'text', ARGV[i + 1], 'ts', ARGV[i + 2], 'node', ARGV[i + 3], 'token', ARGV[i + 4]}
  local id = redis.call('INCR', KEYS[1])
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', id), unpack(fields))
  if type(added) == 'table' and added.err then
    redis.call('SET', KEYS[1], string.format('%d', id - 1))
    repair(KEYS[1], KEYS[2], true)
    id = redis.call('INCR', KEYS[1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], string.format('%d-1', id), unpack(fields))
  end
  ids[#ids + 1] = id
end
return ids
"""

# The repair alone: returns the sequence (a string), every entry at or
# below "<sequence>-1" is final.
REPAIR = REPAIR_FUNCTIONS + """
return repair(KEYS[1], KEYS[2], false)
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


class BadEntry(ValueError):
    """A stream entry that PUBLISH did not write as it writes entries."""


_SCRIPT_ID = re.compile(r"([1-9][0-9]{0,14})-1")
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_SEQUENCE = re.compile(r"[0-9]{1,15}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def script_id(stream_id: Any) -> int | None:
    """The message id of a stream id of PUBLISH's form ``<n>-1``, else None."""
    if not isinstance(stream_id, str):
        return None
    match = _SCRIPT_ID.fullmatch(stream_id)
    return int(match.group(1)) if match else None


def id_order(stream_id: Any) -> tuple[int, int] | None:
    """A stream id as a tuple that sorts like Redis sorts ids (None if not one)."""
    match = _STREAM_ID.fullmatch(stream_id) if isinstance(stream_id, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def entry_id(entry: Any) -> Any:
    """The first item of an entry that is a pair (its stream id if well formed), else None."""
    return entry[0] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def entry_fields(entry: Any) -> tuple[str, dict[str, str]]:
    """A stream entry ``[id, [field, value, ...]]`` as (id, fields).

    Raises :class:`BadEntry` for any other shape, a field that is not
    UTF-8 (txredisapi gives it as bytes) or a field other than ``text``
    longer than :data:`MAX_FIELD`.
    """
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise BadEntry("not an [id, fields] pair")
    stream_id, raw = entry
    if not isinstance(stream_id, str) or len(stream_id) > 41:
        raise BadEntry("its id is not a stream id")
    if not isinstance(raw, (list, tuple)) or len(raw) % 2 or len(raw) > 2 * MAX_FIELDS:
        raise BadEntry("its fields are not field/value pairs")
    if not all(isinstance(item, str) for item in raw):
        raise BadEntry("a field is not UTF-8 text")
    fields = dict(zip(raw[::2], raw[1::2]))
    for name, value in fields.items():
        if len(name) > MAX_FIELD or (name != "text" and len(value) > MAX_FIELD):
            raise BadEntry(f"field {name[:20]!r} is too long")
    return stream_id, fields


def parse_message(room: str, entry: Any, max_text: int) -> tuple[StoredMessage, str, str]:
    """A stream entry as (message, publishing node, token).

    Raises :class:`BadEntry` unless the entry is one PUBLISH could have
    written: an id ``<n>-1``, a valid sender, a text of at most
    ``max_text`` characters, a protocol timestamp.
    """
    stream_id, fields = entry_fields(entry)
    message_id = script_id(stream_id)
    if message_id is None:
        raise BadEntry("its id is not of the form <n>-1 that the publishing script gives")
    sender, text, timestamp = fields.get("sender"), fields.get("text"), fields.get("ts")
    if sender is None or text is None or timestamp is None:
        raise BadEntry("sender, text or ts is missing")
    try:
        Hub.check_name(sender)
    except ChatError:
        raise BadEntry("its sender is not a valid user name") from None
    if not text.strip() or len(text) > max_text or clean_text(text) != text:
        raise BadEntry(f"its text is empty, has control characters or is over {max_text} characters")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise BadEntry("its ts is not a protocol timestamp")
    message = StoredMessage(message_id, room, sender, text, timestamp)
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

    def check(self) -> None:
        """For /health: raise :class:`HistoryError` unless Redis is connected."""
        if not self.cluster.commands.connected:
            raise HistoryError("Redis is not connected")

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
        self.seq_key = f"chatd:seq:{LOBBY}"
        self.last_delivered = 0
        self.presence_key = f"chatd:presence:{LOBBY}"
        self._last_stream_id: str | None = None
        self._start_seq = 0
        self._last_presence_id = "0-0"
        self._retry = READ_RETRY
        # Skipped entries already logged (bounded: oldest forgotten first).
        self._reported: OrderedDict[str, None] = OrderedDict()
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
        d = self.commands.call("EVAL", PUBLISH, "2", self.seq_key, self.stream_key, str(STREAM_MAXLEN), *fields)
        d.addCallbacks(self._published, self._publish_failed, errbackArgs=(tokens,))

    def _published(self, ids: Any) -> None:
        if isinstance(ids, list):
            self.metrics.messages_accepted.inc(len(ids))

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
        """One turn of the read loop; each turn schedules exactly one next.

        Whatever goes wrong in a turn (Redis away, a reply of a shape we
        do not expect, a bug) is logged and the next turn comes after a
        delay that doubles up to :data:`READ_RETRY_MAX`: reading never
        stops while the node runs.
        """
        if self._stopped:
            return
        if not self.reader.connected or not self.commands.connected:
            self.clock.callLater(0.2, self._read)
            return
        d = maybeDeferred(self._read_once)
        d.addCallbacks(self._read_done, self._read_failed)

    def _read_once(self) -> Deferred[Any]:
        if self._last_stream_id is None:
            return self._find_start()
        d = self.reader.call(
            "XREAD", "COUNT", "500", "BLOCK", "1000", "STREAMS",
            self.stream_key, self.presence_key, self._last_stream_id, self._last_presence_id,
        )
        return d.addCallback(self._got_entries)

    def _read_done(self, _: Any) -> None:
        self._retry = READ_RETRY
        self.clock.callLater(0, self._read)

    def _read_failed(self, failure: Any) -> None:
        if self._stopped:
            return
        problem = f"{failure.type.__name__}: {failure.getErrorMessage()}"[:300]
        self.log.warn(
            "reading the stream failed ({problem}); trying again in {delay}s", problem=problem, delay=self._retry
        )
        self.clock.callLater(self._retry, self._read)
        self._retry = min(self._retry * 2, READ_RETRY_MAX)

    def _find_start(self) -> Deferred[Any]:
        """Start just past the newest message the script gave.

        That is the repaired sequence, not the stream's newest entry: a
        stray entry there (a clock id, say) must not become our position.
        """
        d = self.commands.call("EVAL", REPAIR, "2", self.seq_key, self.stream_key)
        d.addCallback(self._start_position)
        d.addCallback(lambda _: self.commands.call("XREVRANGE", self.presence_key, "+", "-", "COUNT", "1"))
        return d.addCallback(self._presence_position)

    def _start_position(self, seq: Any) -> None:
        self._start_seq = _sequence(seq)

    def _presence_position(self, newest: Any) -> None:
        if newest:
            top = newest[0][0] if isinstance(newest, list) and isinstance(newest[0], list) and newest[0] else None
            if id_order(top) is None:
                raise BadEntry(f"the newest presence entry has no stream id: {top!r:.60}")
            self._last_presence_id = top
        self._last_stream_id = f"{self._start_seq}-1" if self._start_seq else "0-0"
        self.last_delivered = self._start_seq
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _got_entries(self, reply: Any) -> Deferred[Any] | None:
        """Deliver one ``XREAD`` reply (None: the block timed out).

        A reply of another shape raises (the loop logs it and retries).
        If a stray entry holds our position back, the stream is repaired
        before the next read.
        """
        if reply is None:
            return None
        if not isinstance(reply, list):
            raise BadEntry(f"XREAD replied a {type(reply).__name__}")
        held = None
        for item in reply:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
                raise BadEntry("the XREAD reply is not [stream, entries] pairs")
            stream, entries = item
            if stream == self.presence_key:
                self._presence(entries)
            elif stream == self.stream_key:
                held = self._stream_entries(entries)
        return None if held is None else self._repair(held)

    def _skip(self, stream: str, stream_id: Any, problem: Exception) -> None:
        """Log a skipped entry, once (the last few hundred are remembered)."""
        key = f"{stream} {stream_id!r:.60}"
        if key in self._reported:
            return
        self._reported[key] = None
        if len(self._reported) > MAX_REPORTED:
            self._reported.popitem(last=False)
        self.log.warn(
            "skipping entry {id} of {stream}: {problem}",
            id=f"{stream_id!r:.60}", stream=stream, problem=str(problem)[:200],
        )

    def _stream_entries(self, entries: list[Any]) -> str | None:
        """Deliver the messages among ``entries``; skip the rest.

        Returns the id of a stray entry our position could not move past
        (its id is not of the script's form, so a message may come later
        with a smaller id), or None.
        """
        batch: list[tuple[StoredMessage, Member, Any]] = []
        origins: list[Member] = []
        held = None
        for entry in entries:
            stream_id = entry_id(entry)
            try:
                message, node, token = parse_message(LOBBY, entry, self.max_message)
            except BadEntry as problem:
                self._skip(self.stream_key, stream_id, problem)
                self._release_skipped(entry)
                if script_id(stream_id) is not None:
                    self._last_stream_id, held = stream_id, None
                elif id_order(stream_id) is not None:
                    held = stream_id
                continue
            self._last_stream_id, held = stream_id, None
            if message.id <= self.last_delivered:
                continue
            self.last_delivered = message.id
            origin, ref = self._pending.pop(token, (None, None)) if node == self.node else (None, None)
            batch.append((message, origin, ref))  # type: ignore[arg-type]
            if origin is not None:
                origins.append(origin)
        try:
            if batch:
                self._fan_out(batch)
        finally:
            for origin in origins:  # senders get their answers whatever happened
                self._done(origin)
        return held

    def _release_skipped(self, entry: Any) -> None:
        """A skipped entry of ours: its sender hears it failed, and waits no more."""
        raw = entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list) else []
        # Read leniently: the entry may be bad in any other way.
        fields = {name: value for name, value in zip(raw[::2], raw[1::2]) if isinstance(name, str)}
        token = fields.get("token")
        if fields.get("node") != self.node or not isinstance(token, str):
            return
        pending = self._pending.pop(token, None)
        if pending is not None:
            member, ref = pending
            member.message_failed(None, ref)  # type: ignore[arg-type]
            self._done(member)

    def _repair(self, held: str) -> Deferred[Any]:
        """Have the script clear the stray entries beyond its sequence."""
        d = self.commands.call("EVAL", REPAIR, "2", self.seq_key, self.stream_key)
        return d.addCallback(self._repaired, held)

    def _repaired(self, seq: Any, held: str) -> None:
        # Every entry at or below "<seq>-1" is final (later messages get
        # greater ids): a stray entry there may be passed.  One above was
        # deleted: read again from where we are.
        held_order, position = id_order(held), id_order(self._last_stream_id)
        if held_order is not None and position is not None and position < held_order <= (_sequence(seq), 1):
            self._last_stream_id = held

    def _announce(self, name: str, status: str, subject: Member) -> None:
        """Presence goes through Redis, so users on every node hear of it."""
        d = self.commands.call(
            "XADD", self.presence_key, "MAXLEN", "~", "1000", "*", "user", name, "status", status, "node", self.node
        )
        d.addErrback(self._log_failure, "announcing presence")

    def _presence(self, entries: list[Any]) -> None:
        for entry in entries:
            stream_id = entry_id(entry)
            try:
                user, status, node = self._presence_fields(entry)
            except BadEntry as problem:
                self._skip(self.presence_key, stream_id, problem)
                user = None
            if id_order(stream_id) is not None:
                self._last_presence_id = stream_id  # first: a failure below must not repeat it
            if user is not None:
                self._tell_presence(user, status, node)

    @staticmethod
    def _presence_fields(entry: Any) -> tuple[str, str, str]:
        """(user, status, node) of a presence entry, or :class:`BadEntry`."""
        _id, fields = entry_fields(entry)
        user, status, node = fields.get("user", ""), fields.get("status", ""), fields.get("node", "")
        try:
            Hub.check_name(user)
        except ChatError:
            raise BadEntry("its user is not a valid user name") from None
        if status not in ("online", "offline"):
            raise BadEntry("its status is neither online nor offline")
        return user, status, node

    def _tell_presence(self, user: str, status: str, node: str) -> None:
        for member in list(self._members.values()):
            if node == self.node and member.name is not None and member.name.lower() == user.lower():
                continue  # nobody is told of themselves
            member.presence(user, status, LOBBY)

    # -- history -----------------------------------------------------------

    def recent(self, limit: int | None) -> Deferred[list[StoredMessage]]:  # type: ignore[override]
        if limit is not None and limit <= 0:
            return succeed([])
        count = ["COUNT", str(limit)] if limit is not None else []
        d = self.commands.call("XREVRANGE", self.stream_key, "+", "-", *count)
        return d.addCallback(lambda entries: self._messages(entries)[::-1]).addErrback(self._busy_unless_chat_error)

    def page(self, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:  # type: ignore[override]
        limit = max(1, min(MAX_PAGE, limit))
        count = str(limit + 1)
        if after is not None:
            d = self.commands.call("XRANGE", self.stream_key, f"({after}-1", "+", "COUNT", count)
            d.addCallback(lambda entries: (self._messages(entries[:limit]), len(entries) > limit))
        else:
            top = "+" if before is None else f"({before}-0"
            d = self.commands.call("XREVRANGE", self.stream_key, top, "-", "COUNT", count)
            d.addCallback(lambda entries: (self._messages(entries[:limit])[::-1], len(entries) > limit))
        return d.addErrback(self._busy_unless_chat_error)

    def _messages(self, entries: Any) -> list[StoredMessage]:
        """The messages among history entries, in their order; the rest skipped."""
        if not isinstance(entries, list):
            raise BadEntry(f"the history read replied a {type(entries).__name__}")
        kept = []
        for entry in entries:
            try:
                kept.append(parse_message(LOBBY, entry, self.max_message)[0])
            except BadEntry as problem:
                self._skip(self.stream_key, entry_id(entry), problem)
        return kept


def _sequence(reply: Any) -> int:
    """The sequence the repair script returned (a string of digits)."""
    if isinstance(reply, str) and _SEQUENCE.fullmatch(reply):
        return int(reply)
    if isinstance(reply, int) and 0 <= reply <= MAX_ID:
        return reply
    raise BadEntry(f"the repair replied {reply!r:.60} instead of a sequence")


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

"""Accounts across a cluster, in Redis (PROTOCOL.md sections 6.3 to 6.5 and 6.8).

:class:`RedisAccounts` is the cluster's account store, the counterpart
of the local store's "accounts and moderation" section
(:class:`chatd.stores.history.HistoryStore`):

- **Accounts** (``chatd:accounts``, the record's JSON by lower-cased
  name) are read from Redis whenever a login or a registration needs one,
  so an account registered on one node logs in on any other once
  ``register`` is answered.  The hub also asks, synchronously and often
  (every DM, every join), whether a name is an account and how it was
  registered: every node keeps the set of account names
  (``chatd:accountnames``), loaded before the node is ready and kept
  fresh from ``chatd:accountlog``, a stream it follows with its bus (as
  the rooms' records).  That copy can only lag a new registration by a
  read of the stream (milliseconds), accounts are never deleted, and the
  node that loads an account for a login learns it at once: so a name
  newer than a few milliseconds may pass for a guest's on another node
  (its DMs not kept there), never the reverse.
- **Bans and mutes** (``chatd:restrictions``) are checked on every join
  and message, synchronously: every node holds them all, loaded with the
  accounts and kept fresh from the same log.  A ban or mute set on one
  node is in that node's copy at once and in the others' after one read
  of the log, well within the second PROTOCOL.md section 6.8 allows;
  ``on_change`` tells the hub when another node's came, or all were
  loaded again (its moderation caches mutes).
- **Memberships** of accounts (``chatd:memberships:<account>``, rooms by
  join order) are read at login, asynchronously.
- **Kept DMs** are written by the DM script itself
  (:data:`~chatd.cluster.scripts.DM_PUBLISH`), for each side that is an
  account, with its conversation's newest id; **delivery marks** say how
  far each account's sessions got them.  :meth:`RedisAccounts.undelivered`
  *takes* the undelivered ones (the marks move in the same script), so
  two logins at once, on any nodes, never get the same DM.

:class:`RedisThrottle` is :class:`~chatd.accounts.throttle.IAuthThrottle`
on sorted sets with an expiry: failed logins per address and per account,
registrations per address, shared by every node.

Failures to reach Redis are ``server_busy`` for what a user waits on,
and logged for what is written on the side (a membership, a mark).
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.accounts.records import AccountRecord, Restriction
from chatd.accounts.throttle import DEFAULT_REGISTER_RATE, LOGIN_FAILURES, WINDOW, IAuthThrottle, address_key
from chatd.cluster.entries import BadEntry, entry_fields, entry_id
from chatd.cluster.link import Link, busy_unless_chat_error
from chatd.cluster.scripts import (
    ACCOUNT_LOG,
    ACCOUNT_NAMES_KEY,
    ACCOUNTS_KEY,
    ADD_MEMBERSHIP,
    DM_CONVS_PREFIX,
    DM_KEPT_PREFIX,
    DM_MARKS_PREFIX,
    LOAD_ACCOUNTS,
    LOGIN_FAILED,
    LOGIN_ALLOWED,
    MARK_DELIVERED,
    MEMBERSHIP_SEQ_KEY,
    REMOVE_MEMBERSHIP,
    RESERVE_REGISTRATION,
    RESTRICTIONS_KEY,
    SAVE_ACCOUNT,
    SET_RESTRICTION,
    TAKE_UNDELIVERED,
    memberships_key,
    room_accounts_key,
    throttle_key,
)
from chatd.stores.history import MAX_PAGE, StoredMessage

#: Entries kept in the accounts' log (approximately).
ACCOUNT_LOG_MAXLEN = 10_000
#: Undelivered DMs given per conversation at a login (PROTOCOL.md section 6.3).
UNDELIVERED_PAGE = 100

_BAN = "ban"
_MUTE = "mute"



def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadEntry(f"Redis replied {value!r:.60} instead of text")
    return value


def account_json(record: AccountRecord) -> str:
    """An account as kept in Redis."""
    return json.dumps({"name": record.name, "hash": record.password_hash, "created": record.created}, separators=(",", ":"))


def account_from_json(text: Any) -> AccountRecord:
    """An account read back (:class:`BadEntry` if it is not one)."""
    try:
        data = json.loads(_text(text))
        record = AccountRecord(str(data["name"]), str(data["hash"]), str(data["created"]))
    except (ValueError, KeyError, TypeError) as problem:
        raise BadEntry(f"an account's record cannot be read: {problem}") from None
    return record


def restriction_json(restriction: Restriction) -> str:
    """A ban or mute as kept in Redis."""
    return json.dumps(
        {
            "room": restriction.room,
            "name": restriction.name,
            "expires": restriction.expires,
            "by": restriction.by,
            "comment": restriction.comment,
            "created": restriction.created,
        },
        separators=(",", ":"),
    )


def restriction_from_json(text: Any) -> Restriction:
    """A ban or mute read back (:class:`BadEntry` if it is not one)."""
    try:
        data = json.loads(_text(text))
        expires = data.get("expires")
        by, created = data.get("by"), data.get("created")
        return Restriction(
            str(data["room"]),
            str(data["name"]),
            None if expires is None else float(expires),
            None if by is None else str(by),
            str(data.get("comment") or ""),
            None if created is None else str(created),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as problem:
        raise BadEntry(f"a ban or mute cannot be read: {problem}") from None


def kept_dm(conversation: str, text: Any) -> StoredMessage:
    """A kept DM (the script's JSON) as a message of ``conversation``."""
    try:
        data = json.loads(_text(text))
        return StoredMessage(
            int(data["id"]), conversation, str(data["sender"]), str(data["text"]), str(data["ts"]),
            to=str(data["to"]), offline=data.get("offline") is True, notice=data.get("notice") is True,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as problem:
        raise BadEntry(f"a kept DM cannot be read: {problem}") from None


def _field(kind: str, room: str, name: str) -> str:
    return f"{kind} {room.lower()} {name.lower()}"


class RedisAccounts:
    """Accounts, bans, mutes, memberships, kept DMs and delivery marks in
    Redis; names, bans and mutes cached on this node (see the module).

    :meth:`start` and :meth:`handle` are the bus's (``follow`` of
    :data:`~chatd.cluster.scripts.ACCOUNT_LOG`).
    """

    log = Logger()

    def __init__(self, link: Link, node: str) -> None:
        self.link = link
        self.node = node
        self._names: dict[str, str] = {}  # lower-cased -> as registered
        # kind -> room key -> name key -> the ban or mute (checked per room, on every message)
        self._restrictions: dict[str, dict[str, dict[str, Restriction]]] = {_BAN: {}, _MUTE: {}}
        #: Called when bans or mutes changed on another node, or were loaded again.
        self.on_change: Callable[[], object] | None = None

    # -- the cache: loaded, then kept fresh from the log -----------------------

    def start(self) -> Deferred[str]:
        """Load every account name, ban and mute; fires with the log's
        position to read from (the bus's ``follow``)."""
        d = self.link.call("EVAL", LOAD_ACCOUNTS, "3", ACCOUNT_NAMES_KEY, RESTRICTIONS_KEY, ACCOUNT_LOG)
        return d.addCallback(self._loaded)

    def _loaded(self, reply: Any) -> str:
        if not isinstance(reply, list) or len(reply) != 3 or not isinstance(reply[1], list) or not isinstance(reply[2], list):
            raise BadEntry(f"loading the accounts replied {reply!r:.60}")
        position = _text(reply[0])
        names = reply[1]
        for lower, name in zip(names[::2], names[1::2]):
            if isinstance(lower, str) and isinstance(name, str) and name.lower() == lower:
                self._names[lower] = name
        held: dict[str, dict[str, dict[str, Restriction]]] = {_BAN: {}, _MUTE: {}}
        restrictions = reply[2]
        for field, text in zip(restrictions[::2], restrictions[1::2]):
            kind = field.split(" ", 1)[0] if isinstance(field, str) else ""
            if kind not in held:
                continue
            try:
                restriction = restriction_from_json(text)
            except BadEntry as problem:
                self.log.warn("skipping the {kind} {field}: {problem}", kind=kind, field=str(field)[:80], problem=str(problem))
                continue
            held[kind].setdefault(restriction.room_key, {})[restriction.key] = restriction
        # What the log brought before a reload was read again from Redis.
        self._restrictions = held
        self._changed()
        return position

    def handle(self, entries: list[Any]) -> None:
        """Accounts, bans and mutes from the log, in order (the bus's ``follow``)."""
        for entry in entries:
            try:
                _id, fields = entry_fields(entry, long_fields=("record",))
                self._apply(fields)
            except BadEntry as problem:
                self.log.warn("skipping entry {id} of the accounts' log: {problem}", id=f"{entry_id(entry)!r:.60}", problem=str(problem))

    def _apply(self, fields: dict[str, str]) -> None:
        kind = fields.get("kind")
        if kind == "account":
            lower, name = fields.get("key", ""), fields.get("name", "")
            if name and name.lower() == lower:
                self._names[lower] = name
            return
        if kind not in (_BAN, _MUTE):
            raise BadEntry(f"its kind {str(kind)[:20]!r} is not one of the log's")
        record = fields.get("record", "")
        if record:
            self._hold(kind, restriction_from_json(record))
        else:
            self._drop(kind, fields.get("room", "").lower(), fields.get("name", "").lower())
        if fields.get("node") != self.node:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                self.log.failure("telling of changed bans and mutes")

    # -- accounts ----------------------------------------------------------------

    def account_name(self, lower: str) -> str | None:
        """The account ``lower`` names, as registered (None: not an account,
        as far as this node knows yet)."""
        return self._names.get(lower.lower())

    def is_account(self, lower: str) -> bool:
        """Whether ``lower`` names an account (from this node's copy)."""
        return lower.lower() in self._names

    def load_account(self, key: str) -> Deferred[AccountRecord | None]:
        """The account named ``key`` (any case), or None, read from Redis."""
        d = self.link.call("HGET", ACCOUNTS_KEY, key.lower()).addCallback(self._record)
        return d.addErrback(busy_unless_chat_error)

    def _record(self, text: Any) -> AccountRecord | None:
        if text is None:
            return None
        record = account_from_json(text)
        self._names[record.key] = record.name
        return record

    def save_account(self, record: AccountRecord) -> Deferred[None]:
        """Keep ``record``: a new account, or a new password hash for one."""
        return self._save(record, refuse_existing=False).addCallback(lambda _: None)

    def create_account(self, record: AccountRecord) -> Deferred[bool]:
        """Keep ``record`` unless its name is an account already; whether it was kept."""
        return self._save(record, refuse_existing=True)

    def _save(self, record: AccountRecord, refuse_existing: bool) -> Deferred[bool]:
        d = self.link.call(
            "EVAL", SAVE_ACCOUNT, "3", ACCOUNTS_KEY, ACCOUNT_NAMES_KEY, ACCOUNT_LOG,
            record.key, account_json(record), record.name, str(ACCOUNT_LOG_MAXLEN), self.node, "1" if refuse_existing else "0",
        )

        def saved(kept: Any) -> bool:
            if kept in (1, "1"):
                self._names[record.key] = record.name
                return True
            return False

        return d.addCallback(saved).addErrback(busy_unless_chat_error)

    def accounts(self) -> Deferred[list[AccountRecord]]:
        """Every account, by key."""
        d = self.link.call("HGETALL", ACCOUNTS_KEY)

        def read(flat: Any) -> list[AccountRecord]:
            found = []
            for key, text in zip(flat[::2], flat[1::2]) if isinstance(flat, list) else ():
                try:
                    found.append((str(key), account_from_json(text)))
                except BadEntry as problem:
                    self.log.warn("skipping the account {key}: {problem}", key=str(key)[:40], problem=str(problem))
            return [record for _key, record in sorted(found)]

        return d.addCallback(read).addErrback(busy_unless_chat_error)

    # -- bans and mutes: read here, written here and in Redis ---------------------

    def load_bans(self, room: str | None = None) -> list[Restriction]:
        """The bans of ``room`` (every room's if None), by room then name."""
        return self._load(_BAN, room)

    def load_mutes(self, room: str | None = None) -> list[Restriction]:
        """The mutes of ``room`` (every room's if None), by room then name."""
        return self._load(_MUTE, room)

    def _load(self, kind: str, room: str | None) -> list[Restriction]:
        held = self._restrictions[kind]
        rooms = sorted(held) if room is None else [room.lower()]
        return [held[key][name] for key in rooms for name in sorted(held.get(key, {}))]

    def _hold(self, kind: str, restriction: Restriction) -> None:
        self._restrictions[kind].setdefault(restriction.room_key, {})[restriction.key] = restriction

    def _drop(self, kind: str, room_key: str, name_key: str) -> bool:
        held = self._restrictions[kind].get(room_key)
        if held is None or held.pop(name_key, None) is None:
            return False
        if not held:
            del self._restrictions[kind][room_key]
        return True

    def save_ban(self, ban: Restriction) -> Deferred[None]:
        """Keep ``ban`` (it holds here at once, on other nodes after a read of the log)."""
        return self._set(_BAN, ban)

    def save_mute(self, mute: Restriction) -> Deferred[None]:
        """Keep ``mute``, as :meth:`save_ban`."""
        return self._set(_MUTE, mute)

    def remove_ban(self, room: str, name: str, by: str = "") -> bool:
        """Lift the ban of ``name`` in ``room``; whether this node knew one."""
        return self._lift(_BAN, room, name, by)

    def remove_mute(self, room: str, name: str, by: str = "") -> bool:
        """Lift the mute of ``name`` in ``room``; whether this node knew one."""
        return self._lift(_MUTE, room, name, by)

    def _set(self, kind: str, restriction: Restriction) -> Deferred[None]:
        self._hold(kind, restriction)
        return self._log(kind, restriction.room, restriction.name, restriction_json(restriction), restriction.by or "")

    def _lift(self, kind: str, room: str, name: str, by: str) -> bool:
        known = self._drop(kind, room.lower(), name.lower())
        self._log(kind, room, name, "", by)
        return known

    def _log(self, kind: str, room: str, name: str, record: str, by: str) -> Deferred[None]:
        d = self.link.call(
            "EVAL", SET_RESTRICTION, "2", RESTRICTIONS_KEY, ACCOUNT_LOG,
            _field(kind, room, name), record, str(ACCOUNT_LOG_MAXLEN), kind, room, name, by, self.node,
        )
        # The moderator was answered already: a failure is logged (the
        # change then holds on this node only, until a reload).
        return d.addCallbacks(lambda _: None, self._log_failure, errbackArgs=(f"keeping a {kind}",))

    # -- memberships ---------------------------------------------------------------

    def add_membership(self, account: str, room: str) -> Deferred[None]:
        """``account`` is in ``room`` (already in it: its place stays)."""
        account, room = account.lower(), room.lower()
        d = self.link.call(
            "EVAL", ADD_MEMBERSHIP, "3", memberships_key(account), room_accounts_key(room), MEMBERSHIP_SEQ_KEY, room, account,
        )
        return d.addCallbacks(lambda _: None, self._log_failure, errbackArgs=("keeping a membership",))

    def remove_membership(self, account: str, room: str) -> Deferred[None]:
        """``account`` left ``room``."""
        account, room = account.lower(), room.lower()
        d = self.link.call("EVAL", REMOVE_MEMBERSHIP, "2", memberships_key(account), room_accounts_key(room), room, account)
        return d.addCallbacks(lambda _: None, self._log_failure, errbackArgs=("ending a membership",))

    def memberships(self, account: str) -> Deferred[list[str]]:
        """The rooms (keys) ``account`` is in, in the order it joined them."""
        d = self.link.call("ZRANGE", memberships_key(account.lower()), "0", "-1")
        d.addCallback(lambda rooms: [room for room in rooms if isinstance(room, str)] if isinstance(rooms, list) else [])
        return d.addErrback(busy_unless_chat_error)

    def room_accounts(self, room: str) -> Deferred[list[str]]:
        """The accounts (keys) in ``room``, by key."""
        d = self.link.call("SMEMBERS", room_accounts_key(room.lower()))
        d.addCallback(lambda names: sorted(name for name in names if isinstance(name, str)) if isinstance(names, list) else [])
        return d.addErrback(busy_unless_chat_error)

    # -- kept DMs and delivery marks ----------------------------------------------

    def dm_page(
        self, owner: str, conversation: str, before: int | None = None, after: int | None = None, limit: int = 100
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A page of the DMs kept for ``owner``, as a room's history pages."""
        if before is not None and after is not None:
            raise ValueError("before and after together")
        limit = max(1, min(MAX_PAGE, limit))
        place = f"{DM_KEPT_PREFIX}{owner.lower()}:{conversation}"
        count = str(limit + 1)
        d: Deferred[Any]
        if after is not None:
            d = self.link.call("ZRANGEBYSCORE", place, f"({after}", "+inf", "LIMIT", "0", count)
            d.addCallback(lambda found: (self._kept(conversation, found[:limit]), len(found) > limit))
        else:
            top = "+inf" if before is None else f"({before}"
            d = self.link.call("ZREVRANGEBYSCORE", place, top, "-inf", "LIMIT", "0", count)
            d.addCallback(lambda found: (self._kept(conversation, found[:limit])[::-1], len(found) > limit))
        return d.addErrback(busy_unless_chat_error)

    def _kept(self, conversation: str, found: Any) -> list[StoredMessage]:
        if not isinstance(found, list):
            raise BadEntry(f"reading kept DMs replied a {type(found).__name__}")
        kept = []
        for text in found:
            try:
                kept.append(kept_dm(conversation, text))
            except BadEntry as problem:
                self.log.warn("skipping a kept DM of {conversation}: {problem}", conversation=conversation, problem=str(problem))
        return kept

    def mark_delivered_many(self, marks: Iterable[tuple[str, str, int]]) -> Deferred[None]:
        """Raise each ``(owner, conversation)`` mark to its id (never back)."""
        args: list[str] = []
        for owner, conversation, last_id in marks:
            args += [owner.lower(), conversation, str(last_id)]
        if not args:
            return succeed(None)
        d = self.link.call("EVAL", MARK_DELIVERED, "0", DM_MARKS_PREFIX, *args)
        return d.addCallbacks(lambda _: None, self._log_failure, errbackArgs=("keeping delivery marks",))

    def mark_delivered(self, owner: str, conversation: str, last_id: int) -> Deferred[None]:
        """Ids up to ``last_id`` of ``conversation`` were given to ``owner``."""
        return self.mark_delivered_many([(owner, conversation, last_id)])

    def delivered(self, owner: str, conversation: str) -> Deferred[int]:
        """The newest id of ``conversation`` given to a session of ``owner`` (0: none)."""
        d = self.link.call("HGET", DM_MARKS_PREFIX + owner.lower(), conversation)
        return d.addCallback(lambda mark: int(mark) if isinstance(mark, (str, int)) else 0).addErrback(busy_unless_chat_error)

    def undelivered(self, owner: str, limit: int = UNDELIVERED_PAGE) -> Deferred[list[tuple[str, list[StoredMessage], bool]]]:
        """The DMs kept for ``owner`` above its marks, *taken*: per
        conversation ``(conversation, the oldest limit of them, whether
        more follow)``, by conversation.  Their marks move past them in
        the same step (marking them again is harmless)."""
        owner = owner.lower()
        d = self.link.call(
            "EVAL", TAKE_UNDELIVERED, "2", DM_CONVS_PREFIX + owner, DM_MARKS_PREFIX + owner,
            f"{DM_KEPT_PREFIX}{owner}:", str(limit),
        )
        return d.addCallback(self._taken).addErrback(busy_unless_chat_error)

    def _taken(self, reply: Any) -> list[tuple[str, list[StoredMessage], bool]]:
        if not isinstance(reply, list) or len(reply) % 3:
            raise BadEntry(f"taking undelivered DMs replied {reply!r:.60}")
        found = []
        for conversation, more, page in zip(reply[::3], reply[1::3], reply[2::3]):
            if isinstance(conversation, str):
                found.append((conversation, self._kept(conversation, page), more in (1, "1")))
        return sorted(found, key=lambda item: item[0])

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))


@implementer(IAuthThrottle)
class RedisThrottle:
    """The login throttle and registration rate of PROTOCOL.md section
    6.4, cluster-wide: per key a sorted set of event times (this node's
    clock) that expires a window after its newest event.

    ``register_rate`` 0 means no registration limit.  A registration
    reserved here and not made is given back by the member this node
    added for it.
    """

    def __init__(
        self,
        link: Link,
        clock: IReactorTime,
        node: str,
        register_rate: int = DEFAULT_REGISTER_RATE,
        failures: int = LOGIN_FAILURES,
        window: float = WINDOW,
    ) -> None:
        if register_rate < 0:
            raise ValueError("register_rate must be 0 or more")
        self.link = link
        self.clock = clock
        self.node = node
        self.register_rate = register_rate
        self.failures = failures
        self.window = window
        self._events = itertools.count(1)
        # Our reservations of the window, oldest first: member -> (address, time).
        self._reserved: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _member(self) -> str:
        return f"{self.clock.seconds()!r}:{self.node}:{next(self._events)}"

    def _keys(self, address: str, account: str) -> tuple[str, str]:
        return throttle_key("address", address_key(address)), throttle_key("account", account.lower())

    def login_allowed(self, address: str, account: str) -> Deferred[bool]:
        """False once ``failures`` failures came from ``address`` or for
        ``account`` in the window (``server_busy`` without Redis)."""
        d = self.link.call(
            "EVAL", LOGIN_ALLOWED, "2", *self._keys(address, account),
            repr(float(self.clock.seconds())), repr(float(self.window)), str(self.failures),
        )
        return d.addCallback(lambda allowed: allowed in (1, "1")).addErrback(busy_unless_chat_error)

    def login_failed(self, address: str, account: str) -> Deferred[None]:
        """Count a failure for the address and for the account name."""
        d = self.link.call(
            "EVAL", LOGIN_FAILED, "2", *self._keys(address, account),
            repr(float(self.clock.seconds())), str(int(self.window * 1000)), self._member(), str(self.failures),
        )
        return d.addCallback(lambda _: None).addErrback(busy_unless_chat_error)

    def reserve_registration(self, address: str) -> Deferred[bool]:
        """Take a registration of ``address``'s window, if one is left."""
        if not self.register_rate:
            return succeed(True)
        key = address_key(address)
        member = self._member()
        d = self.link.call(
            "EVAL", RESERVE_REGISTRATION, "1", throttle_key("register", key),
            repr(float(self.clock.seconds())), repr(float(self.window)), str(self.register_rate), member,
            str(int(self.window * 1000)),
        )

        def reserved(taken: Any) -> bool:
            if taken in (1, "1"):
                self._forget_old()
                self._reserved[member] = (key, float(self.clock.seconds()))
                return True
            return False

        return d.addCallback(reserved).addErrback(busy_unless_chat_error)

    def _forget_old(self) -> None:
        """Reservations older than the window left it in Redis too."""
        oldest = float(self.clock.seconds()) - self.window
        while self._reserved:
            member, (_address, moment) = next(iter(self._reserved.items()))
            if moment > oldest:
                return
            del self._reserved[member]

    def release_registration(self, address: str) -> Deferred[None]:
        """Give back the newest reservation this node made for ``address``."""
        self._forget_old()
        key = address_key(address)
        mine = [member for member, (held, _moment) in self._reserved.items() if held == key]
        if not mine:
            return succeed(None)
        del self._reserved[mine[-1]]
        d = self.link.call("ZREM", throttle_key("register", key), mine[-1])
        return d.addCallback(lambda _: None).addErrback(busy_unless_chat_error)

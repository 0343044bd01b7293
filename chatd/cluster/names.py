"""Names held across the cluster, in Redis (:class:`RedisNames`).

A name is ``chatd:name:<lower>``, set with ``NX`` and a short expiry
(:data:`NAME_TTL_MS`) to ``<node>|<Name>``; the owning node's heartbeat
refreshes its names every :data:`HEARTBEAT` seconds, so a dead node's
names vanish within the expiry.  A node cut off from Redis re-takes its
names when it is back, unless another node took one meanwhile: that
name's ``on_lost`` is called (its session must end), and the name is no
longer ours (releasing it later must not touch the other node's).
``chatd:users`` keeps the cluster-wide login order.

An account's sessions may be on several nodes (PROTOCOL.md sections 6.4
and 6.8): its name key holds ``*|<Name>``, which no node owns and every
node with a session of it refreshes, and ``chatd:sessions:<lower>``
counts its sessions per node, so ``--max-sessions`` holds cluster-wide
(a dead node's count is dropped once its node key, the rooms' heartbeat,
expired).  Adding a session says whether it is the account's first
anywhere, dropping one whether it was the last: presence ``online`` and
``offline`` follow those answers.  A guest cannot take an account's
name, nor an account a guest's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd import messages
from chatd.cluster.link import Link, RedisUnavailable, busy_unless_chat_error, cluster_busy
from chatd.cluster.scripts import (
    ACCOUNT_HOLDER,
    ADD_SESSION,
    CLAIM_NAME,
    DROP_SESSION,
    LOGIN_SEQ_KEY,
    REFRESH_ACCOUNTS,
    REFRESH_NAMES,
    RELEASE_NAME,
    USERS_KEY,
    name_key,
    node_key,
    sessions_key,
)
from chatd.interfaces import INameRegistry
from chatd.messages import ChatError

#: A name's key lives this long without a heartbeat (ms).
NAME_TTL_MS = 10_000
#: How often a node refreshes its names (s).
HEARTBEAT = 2.0


@dataclass(eq=False)
class _Held:
    """A name this node holds: its key, its value, its login sequence;
    for an account, how many of its sessions are here."""

    name: str
    lower: str
    key: str
    value: str
    seq: str
    on_lost: Callable[[], object] | None
    account: bool = False
    sessions: int = 0


def _held_name(value: Any) -> str | None:
    """The name in a name key's value (``<holder>|<Name>``), if any."""
    if isinstance(value, str) and "|" in value:
        return value.split("|", 1)[1]
    return None


def _nothing_yet() -> Deferred[None]:
    return succeed(None)


@implementer(INameRegistry)
class RedisNames:
    """The cluster's names, claimed and refreshed by this node in Redis.

    ``when_ready`` is waited for before each claim: the bus's readiness
    (a node must know where it starts reading the streams before anyone
    logs in there, or a message posted at once could be missed).
    """

    log = Logger()

    def __init__(self, link: Link, node: str, when_ready: Callable[[], Deferred[None]] = _nothing_yet) -> None:
        self.link = link
        self.node = node
        self.when_ready = when_ready
        self._held: dict[str, _Held] = {}  # lower-cased -> ours

    def claim(self, name: str, on_lost: Callable[[], object] | None = None) -> Deferred[None]:
        """Take ``name`` cluster-wide (``name_taken``; ``server_busy`` when
        Redis is away or the node not ready within the call timeout)."""
        claimed = self.when_ready().addCallback(lambda _: self._claim(name, on_lost))
        return claimed.addErrback(busy_unless_chat_error)

    def _claim(self, name: str, on_lost: Callable[[], object] | None) -> Deferred[None]:
        if not self.link.connected:
            raise cluster_busy()
        lower = name.lower()
        value, key = f"{self.node}|{name}", name_key(lower)
        d = self.link.call("EVAL", CLAIM_NAME, "3", key, LOGIN_SEQ_KEY, USERS_KEY, value, str(NAME_TTL_MS), lower)

        def claimed(seq: Any) -> None:
            if not int(seq):
                raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")
            self._held[lower] = _Held(name, lower, key, value, str(seq), on_lost)

        return d.addCallback(claimed)

    def release(self, name: str) -> None:
        """Give ``name`` up (if it is still ours); a failure is logged
        (the name then expires within :data:`NAME_TTL_MS`)."""
        self._release(name.lower()).addErrback(self._log_failure, "releasing a name")

    def _release(self, lower: str) -> Deferred[Any]:
        held = self._held.pop(lower, None)
        if held is None:
            return succeed(None)
        if held.account:
            return self._drop(held, "all")
        return self.link.call("EVAL", RELEASE_NAME, "2", held.key, USERS_KEY, held.value, lower)

    # -- accounts: sessions on several nodes -------------------------------

    def add_account_session(self, name: str, max_sessions: int, on_lost: Callable[[], object] | None = None) -> Deferred[bool]:
        """One more session of the account ``name`` (as registered) here.

        Fires with whether it is the account's first session anywhere;
        fails with ``name_taken`` (a guest holds the name), ``forbidden``
        (the account has ``max_sessions`` sessions, counted on every
        node) or ``server_busy``.
        """
        added = self.when_ready().addCallback(lambda _: self._add_session(name, max_sessions, on_lost))
        return added.addErrback(busy_unless_chat_error)

    def _add_session(self, name: str, max_sessions: int, on_lost: Callable[[], object] | None) -> Deferred[bool]:
        if not self.link.connected:
            raise cluster_busy()
        lower = name.lower()
        value = f"{ACCOUNT_HOLDER}|{name}"
        held = self._held.get(lower)
        if held is not None and not held.account:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")  # a guest here has it
        if held is None:
            held = _Held(name, lower, name_key(lower), value, "0", on_lost, account=True)
            self._held[lower] = held
        # Counted at once: a heartbeat sent meanwhile must not count less
        # than Redis will (an extra session would then fit).
        held.sessions += 1
        d = self.link.call(
            "EVAL", ADD_SESSION, "4", held.key, LOGIN_SEQ_KEY, USERS_KEY, sessions_key(lower),
            value, str(NAME_TTL_MS), lower, self.node, str(max_sessions), node_key(""),
        )

        def added(reply: Any) -> bool:
            code = reply[0] if isinstance(reply, list) and reply else None
            if code in (0, 1) and len(reply) == 2:
                held.seq = str(reply[1])
                return bool(code)
            self._uncount(held)
            if code == -1:
                raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")
            if code == -2:
                raise ChatError(
                    messages.FORBIDDEN, f"{name} has {max_sessions} sessions already, the most one account may have."
                )
            raise ValueError(f"adding a session replied {reply!r:.60}")

        def failed(failure: Failure) -> Failure:
            if not failure.check(ChatError):
                self._uncount(held)
            return failure

        return d.addCallbacks(added, failed)

    def _uncount(self, held: _Held) -> None:
        """A session of ``held``'s account that Redis did not count."""
        held.sessions -= 1
        if held.sessions <= 0 and self._held.get(held.lower) is held:
            del self._held[held.lower]

    def drop_account_session(self, name: str) -> Deferred[bool]:
        """A session of the account ``name`` here ended; fires with whether
        it was the account's last anywhere (then its name is free).  When
        Redis cannot tell, it fires with True: presence says ``offline``
        rather than never (the name expires within :data:`NAME_TTL_MS`)."""
        held = self._held.get(name.lower())
        if held is None or not held.account:
            return succeed(True)
        self._uncount(held)
        d = self._drop(held, "1")

        def unknown(failure: Failure) -> bool:
            self._log_failure(failure, "ending an account's session")
            return True

        return d.addCallback(lambda last: last in (1, "1")).addErrback(unknown)

    def _drop(self, held: _Held, count: str) -> Deferred[Any]:
        if not self.link.connected:
            return fail(RedisUnavailable("Redis is not connected"))
        return self.link.call(
            "EVAL", DROP_SESSION, "3", held.key, USERS_KEY, sessions_key(held.lower),
            held.value, held.lower, self.node, count, node_key(""),
        )

    def holder(self, name: str) -> Deferred[str | None]:
        """``name`` as its holder logged in, if a session holds it now on any node."""
        d = self.link.call("GET", name_key(name.lower())).addCallback(_held_name)
        return d.addErrback(busy_unless_chat_error)

    def held_anywhere(self, name: str) -> Deferred[bool]:
        """Whether a session holds ``name`` now, on any node."""
        return self.holder(name).addCallback(lambda held: held is not None)

    def release_all(self) -> Deferred[Any]:
        """Give up every name we hold (at shutdown); fires when Redis answered."""
        releases = [self._release(lower) for lower in list(self._held)]
        return DeferredList(releases, consumeErrors=True).addErrback(lambda failure: None)

    @property
    def held(self) -> list[str]:
        """The names this node holds, as given."""
        return [held.name for held in self._held.values()]

    def names(self) -> Deferred[list[str]]:
        """Every name held in the cluster, in login order (expired ones
        are pruned from the order as they are met)."""
        d = self.link.call("ZRANGE", USERS_KEY, "0", "-1").addCallback(self._values_of)
        return d.addErrback(busy_unless_chat_error)

    def _values_of(self, lowers: Any) -> Deferred[list[str]] | list[str]:
        if not lowers:
            return []
        keys = [name_key(lower) for lower in lowers]
        return self.link.call("MGET", *keys).addCallback(self._present, lowers)

    def _present(self, values: list[Any], lowers: list[str]) -> list[str]:
        names = []
        for lower, value in zip(lowers, values):
            if value is None:
                # Expired (its node died): out of the login order too.
                self.link.call("ZREM", USERS_KEY, lower).addErrback(lambda failure: None)
            elif isinstance(value, str) and "|" in value:
                names.append(value.split("|", 1)[1])
        return names

    def heartbeat(self) -> None:
        """Refresh our names (re-take expired ones) and our count of each
        account's sessions; names another node took while we were cut off
        are lost.  Never raises (a timer calls it)."""
        if not self._held or not self.link.connected:
            return
        guests = [entry for entry in self._held.values() if not entry.account]
        accounts = [entry for entry in self._held.values() if entry.account]
        if guests:
            keys = [USERS_KEY] + [entry.key for entry in guests]
            args = [str(NAME_TTL_MS)]
            for entry in guests:
                args += [entry.value, entry.lower, entry.seq]
            d = self.link.call("EVAL", REFRESH_NAMES, str(len(keys)), *keys, *args)
            d.addCallback(self._refreshed, {entry.lower: entry for entry in guests})
            d.addErrback(self._log_failure, "refreshing names")
        if accounts:
            keys = [USERS_KEY]
            args = [str(NAME_TTL_MS), self.node]
            for entry in accounts:
                keys += [entry.key, sessions_key(entry.lower)]
                args += [entry.value, entry.lower, entry.seq, str(entry.sessions)]
            d = self.link.call("EVAL", REFRESH_ACCOUNTS, str(len(keys)), *keys, *args)
            d.addCallback(self._refreshed, {entry.lower: entry for entry in accounts})
            d.addErrback(self._log_failure, "refreshing accounts' names")

    def _refreshed(self, lost: Any, asked: dict[str, _Held]) -> None:
        # Names another node took while we were cut off: theirs now. Our
        # sessions of those names must go, or a name would exist twice.
        for lower in lost if isinstance(lost, list) else ():
            held = asked.get(lower) if isinstance(lower, str) else None
            if held is None or self._held.get(lower) is not held:
                continue  # released (or taken again) since we asked
            del self._held[lower]
            self.log.warn("{user} lost its name to another node while Redis was away", user=held.name)
            if held.on_lost is None:
                continue
            try:
                held.on_lost()
            except Exception:
                # One session failing to end must not keep the others.
                self.log.failure("telling {user} its name was lost", user=held.name)

    def _log_failure(self, failure: Failure, doing: str) -> None:
        self.log.warn("{doing} failed: {problem}", doing=doing, problem=str(failure.value))

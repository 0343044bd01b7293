"""Moderation (PROTOCOL.md section 6.5): room operators, voice, kicks,
bans, mutes, modes and invitations, and the checks they feed.

:class:`Moderation` belongs to one hub.  Its requests (``kick``, ``ban``,
``unban``, ``mute``, ``unmute``, ``op``, ``deop``, ``voice``,
``devoice``, ``mode``, ``invite``) check in the protocol's order and
answer with a :class:`Done` (the actor's ``info``), after which
:meth:`Done.apply` causes the events, so the actor's answer always comes
first.  The hub asks it at ``join`` (``banned``, ``invite_only``), at
``msg`` (``muted``) and at login (a ``#lobby`` ban).

Bans and mutes are kept in the history store (they survive restarts;
``chatd-admin`` lists and lifts bans, also while the server runs, so
bans are read from the store when checked); mutes are checked on every
message and so are also held in memory.  Invitations live in memory and
lapse when the invitee's last session ends.  Server operators (the
``--operators`` accounts) are op everywhere and exempt from bans, mutes,
``invite_only`` and ``moderated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from chatd import messages
from chatd.accounts.records import Restriction
from chatd.core.rooms import LOBBY
from chatd.messages import ChatError
from chatd.stores.roomstate import DEFAULT_MODES, RoomRecord

if TYPE_CHECKING:
    from chatd.core.hub import Hub
    from chatd.interfaces import ISession

#: A comment (a kick's, a ban's) is cut to this many code points.
MAX_COMMENT = 390

#: Requests that change who is op or voiced, and what they set.
ROLE_CHANGES: dict[str, tuple[str, bool]] = {
    "op": ("op", True),
    "deop": ("op", False),
    "voice": ("voice", True),
    "devoice": ("voice", False),
}

#: Requests whose target must be a listed member of the room.
TARGET_IS_MEMBER = frozenset({"kick", "mute", "op", "deop", "voice", "devoice"})


class RestrictionStore(Protocol):
    """Where bans and mutes are kept: the history store, or a cluster's
    (:class:`chatd.cluster.accounts.RedisAccounts`); reads answer at once."""

    def load_bans(self, room: str | None = None) -> list[Restriction]:
        """The bans of ``room`` (every room's if None)."""

    def save_ban(self, ban: Restriction) -> object:
        """Keep ``ban``."""

    def remove_ban(self, room: str, name: str) -> object:
        """Lift the ban of ``name`` in ``room``."""

    def load_mutes(self, room: str | None = None) -> list[Restriction]:
        """The mutes of ``room`` (every room's if None)."""

    def save_mute(self, mute: Restriction) -> object:
        """Keep ``mute``."""

    def remove_mute(self, room: str, name: str) -> object:
        """Lift the mute of ``name`` in ``room``."""


@dataclass
class Done:
    """A moderation request that passed its checks: the actor's ``info``
    (``text`` and its extra keys), then :meth:`apply` for the events."""

    text: str
    extra: dict[str, Any]
    effects: list[Callable[[], None]] = field(default_factory=list)

    def apply(self) -> None:
        """Cause the request's events (after the actor was answered)."""
        for effect in self.effects:
            effect()


class Moderation:
    """The section 6.5 rules of one hub."""

    log = Logger()

    def __init__(self, hub: Hub, store: RestrictionStore | None = None, operators: frozenset[str] = frozenset()) -> None:
        self.hub = hub
        self.store = store
        self.operators = operators
        self._mutes: dict[str, dict[str, Restriction]] | None = None  # room key -> name key -> mute
        self._memory_bans: dict[str, dict[str, Restriction]] = {}  # without a store
        self._invited: dict[str, set[str]] = {}  # name key -> room keys
        self._members: list[str] = []  # the room's listed members, while a request is checked
        self._elsewhere: str | None = None  # an invitee on another node, while an invite is checked

    # -- who is who --------------------------------------------------------

    def is_operator(self, name: str | None) -> bool:
        """Whether ``name`` is a server operator: listed in ``--operators``
        *and* an account (a guest under a listed name that nobody
        registered yet is nobody special)."""
        return name is not None and name.lower() in self.operators and self.hub.is_account(name.lower())

    def lobby_muted(self, name: str) -> bool:
        """Whether ``name`` is muted in ``#lobby`` (asked for every lobby
        message: a dictionary lookup unless someone was ever muted there)."""
        mutes = self._mutes_of(LOBBY)
        if not mutes:
            return False
        mute = mutes.get(name.lower())
        return mute is not None and mute.active(self.now()) and not self.is_operator(name)

    def is_op(self, record: RoomRecord, name: str | None) -> bool:
        """Whether ``name`` is op of the room (server operators are, everywhere)."""
        if name is None:
            return False
        return self.is_operator(name) or (record.key != LOBBY and name.lower() in record.ops)

    def now(self) -> float:
        """The hub's clock, in POSIX seconds."""
        return float(self.hub.clock.seconds())

    # -- checks the hub asks -------------------------------------------------

    def ban_of(self, room_key: str, name: str) -> Restriction | None:
        """The active ban of ``name`` in the room, if any (server operators have none)."""
        if self.is_operator(name):
            return None
        now = self.now()
        for ban in self._bans(room_key):
            if ban.key == name.lower() and ban.active(now):
                return ban
        return None

    def check_join(self, session: ISession, record: RoomRecord, member: bool = False, join_key: str | None = None) -> None:
        """``banned``, then ``invite_only``, then ``bad_key``, for a
        ``join`` of ``record``'s room (``member``: an account coming back
        to a room it is in, which needs no invitation nor key;
        ``join_key``: the key the join gave)."""
        name = session.name or ""
        if self.ban_of(record.key, name) is not None:
            raise ChatError(messages.BANNED, f"You are banned from {record.name}.")
        if member or self.is_operator(name):
            return
        invited = record.key in self._invited.get(name.lower(), set())
        if record.modes.get("invite_only") and not invited:
            raise ChatError(messages.INVITE_ONLY, f"{record.name} is invite-only: an operator must invite you.")
        if record.join_key is not None and join_key != record.join_key and not invited:
            raise ChatError(messages.BAD_KEY, f"{record.name} needs a key to join: ask one of its members.")

    def check_limit(self, session: ISession, record: RoomRecord, members: list[str]) -> None:
        """``room_full``: the room has its limit of ``members`` (an
        invitation or a server operator passes it, as on IRC)."""
        name = session.name or ""
        if record.limit is None or len(members) < record.limit or self.is_operator(name):
            return
        if record.key in self._invited.get(name.lower(), set()):
            return
        raise ChatError(messages.ROOM_FULL, f"{record.name} is full: it takes {record.limit} members.")

    def joined(self, name: str, room_key: str) -> None:
        """``name`` joined: its invitation to the room is used up."""
        rooms = self._invited.get(name.lower())
        if rooms is not None:
            rooms.discard(room_key)
            if not rooms:
                del self._invited[name.lower()]

    def check_post(self, session: ISession, record: RoomRecord) -> None:
        """``muted``: the sender is muted or banned in the room, or the room
        is ``moderated`` and the sender neither op nor voiced."""
        name = session.name or ""
        if self.is_operator(name):
            return
        mute = self._mutes_of(record.key).get(name.lower())
        if mute is not None and mute.active(self.now()):
            raise ChatError(messages.MUTED, f"You are muted in {record.name}.")
        if record.key != LOBBY and self.ban_of(record.key, name) is not None:
            raise ChatError(messages.MUTED, f"You are banned from {record.name}: you cannot talk there.")
        if record.modes.get("moderated"):
            lower = name.lower()
            if lower not in record.ops and lower not in record.voiced:
                raise ChatError(messages.MUTED, f"{record.name} is moderated: only its operators and voiced users may talk.")

    def check_login(self, name: str) -> None:
        """``banned``: a ``#lobby`` ban refuses the name's logins until it ends."""
        ban = self.ban_of(LOBBY, name)
        if ban is not None:
            raise ChatError(messages.BANNED, f"{name} is banned from this server.")

    def invited_elsewhere(self, content: dict[str, object]) -> None:
        """An invitation made on another node: the invitee's v2 sessions
        here are told, and its next join here passes ``invite_only``."""
        user, room, by = str(content.get("user", "")), str(content.get("room", "")), content.get("by")
        sessions = [s for s in self.hub.sessions_of(user) if getattr(s, "version", 1) >= 2]
        if not sessions:
            return
        self._invited.setdefault(user.lower(), set()).add(room.lower())
        for invitee in sessions:
            invitee.notify("invite", {"room": room, "by": by})

    def restrictions_changed(self) -> None:
        """Bans or mutes changed elsewhere (another node of a cluster):
        mutes are read from the store again at the next check."""
        self._mutes = None

    def last_session_ended(self, name: str) -> None:
        """The name has no session left: its invitations lapse."""
        self._invited.pop(name.lower(), None)

    # -- requests ---------------------------------------------------------------

    def request(self, session: ISession, kind: str, content: dict[str, Any]) -> Deferred[Done]:
        """Check and prepare ``kind`` (a section 6.5 request) from ``session``.

        ``content`` has passed :func:`chatd.frontends.json.requests.parse_moderation`
        (its shape).  Fails with ``ChatError`` in the protocol's order.
        """
        try:
            record = self.hub.record(content["room"])
        except ChatError:
            return fail()
        d = self.hub.names(record.name)
        if kind == "invite":
            d.addCallback(self._find_invitee, content["user"])
        return d.addCallback(self._checked, session, kind, content, record)

    def _find_invitee(self, members: list[str], user: str) -> list[str] | Deferred[list[str]]:
        """An invitee with no session here may have one on another node of
        a cluster (then its name as it logged in is ``_elsewhere``)."""
        self._elsewhere = None
        shared = self.hub.account_sessions
        if shared is None or not _valid_name(user) or self.hub.sessions_of(user):
            return members

        def found(holder: str | None) -> list[str]:
            self._elsewhere = holder
            return members

        return shared.holder(user).addCallback(found)

    def _checked(self, members: list[str], session: ISession, kind: str, content: dict[str, Any], record: RoomRecord) -> Done:
        self._members = members
        actor = session.name or ""
        key = record.key
        flags = {flag: content[flag] for flag in DEFAULT_MODES if flag in content}
        reading_modes = kind == "mode" and not _changes_settings(content)
        member = self.hub.in_room(session, key)
        operator = self.is_operator(actor)
        if not member and not operator:
            if not reading_modes or not record.public:
                raise ChatError(messages.NOT_IN_ROOM, f"You are not in {record.name}.")
        needs_op = not reading_modes and not (kind == "invite" and not record.modes.get("invite_only"))
        if needs_op and not self.is_op(record, actor):
            raise ChatError(messages.NOT_OP, f"You are not an operator of {record.name}.")
        if key == LOBBY and (kind in ROLE_CHANGES or (kind == "mode" and not reading_modes)):
            raise ChatError(messages.FORBIDDEN, "The modes and roles of #lobby are fixed: only server operators moderate it.")
        if kind == "deop" and self.is_operator(content["user"]):
            raise ChatError(messages.FORBIDDEN, f"{content['user']} is a server operator: op everywhere.")
        handler = getattr(self, "_" + kind)
        done: Done = handler(session, record, content, flags)
        return done

    def _target(self, record: RoomRecord, user: str, kind: str) -> str:
        """The canonical name of a listed member ``user`` (``no_such_user``)."""
        for name in self._members:
            if name.lower() == user.lower():
                return name
        if kind in TARGET_IS_MEMBER:
            raise ChatError(messages.NO_SUCH_USER, f"No such user: {user} is not in {record.name}.")
        return user

    def _kick(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        target = self._target(record, content["user"], "kick")
        comment = _comment(content)
        done = Done(f"Kicked {target} from {record.name}", {"room": record.name, "user": target})
        done.effects.append(lambda: self.remove(record, target, "kicked", session.name or "", comment))
        return done

    def _ban(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        user = content["user"]
        if not _valid_name(user):
            raise ChatError(messages.NO_SUCH_USER, f"No such user: {user[:40]!r} is not a valid name.")
        target = self._target(record, user, "ban")
        comment = _comment(content)
        duration = content.get("duration")
        by = session.name or ""
        ban = Restriction(
            record.name,
            target,
            None if duration is None else self.now() + duration,
            by,
            comment,
            self.hub.now(),
        )
        self._save_ban(ban)
        done = Done(f"Banned {target} from {record.name}", {"room": record.name, "user": target})
        if any(name.lower() == target.lower() for name in self._members):
            done.effects.append(lambda: self.remove(record, target, "banned", by, comment))
        return done

    def _unban(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        user = content["user"]
        self._remove_ban(record.key, user)
        return Done(f"Unbanned {user} from {record.name}", {"room": record.name, "user": user})

    def _mute(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        target = self._target(record, content["user"], "mute")
        duration = content.get("duration")
        by = session.name or ""
        mute = Restriction(record.name, target, None if duration is None else self.now() + duration, by, "", self.hub.now())
        self._mutes_of(record.key)[mute.key] = mute
        if self.store is not None:
            self.store.save_mute(mute)
        done = Done(f"Muted {target} in {record.name}", {"room": record.name, "user": target})
        done.effects.append(lambda: self._tell(target, f"You were muted in {record.name} by {by}", record, by))
        return done

    def _unmute(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        user = content["user"]
        self._mutes_of(record.key).pop(user.lower(), None)
        if self.store is not None:
            self.store.remove_mute(record.key, user)
        by = session.name or ""
        done = Done(f"Unmuted {user} in {record.name}", {"room": record.name, "user": user})
        done.effects.append(lambda: self._tell(user, f"You were unmuted in {record.name} by {by}", record, by))
        return done

    def _role(self, session: ISession, record: RoomRecord, content: dict[str, Any], kind: str) -> Done:
        target = self._target(record, content["user"], kind)
        role, value = ROLE_CHANGES[kind]
        lower = target.lower()
        by = session.name or ""

        def change(current: RoomRecord) -> RoomRecord:
            return current.with_op(lower, value) if role == "op" else current.with_voice(lower, value)

        verb = {"op": "Opped", "deop": "Deopped", "voice": "Voiced", "devoice": "Devoiced"}[kind]
        done = Done(f"{verb} {target} in {record.name}", {"room": record.name, "user": target})
        event = {"room": record.name, "by": by, "user": target, role: value}

        def apply() -> None:
            d = self.hub.directory.update(record.key, change)
            d.addCallback(lambda _: self.hub.room_event(record.name, "mode", event))
            d.addErrback(lambda failure: self.log.failure("changing roles in {room} failed", failure, room=record.name))

        done.effects.append(apply)
        return done

    def _op(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        return self._role(session, record, content, "op")

    def _deop(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        return self._role(session, record, content, "deop")

    def _voice(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        return self._role(session, record, content, "voice")

    def _devoice(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        return self._role(session, record, content, "devoice")

    def _mode(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        if not _changes_settings(content):
            return Done(f"Modes of {record.name}", {"room": record.name, "modes": self.hub.modes_of(record)})
        limit, join_key = content.get("limit"), content.get("key")
        changed: dict[str, object] = {flag: value for flag, value in flags.items() if record.modes.get(flag) != value}
        if isinstance(limit, int) and (limit or None) != record.limit:
            changed["limit"] = limit
        if isinstance(join_key, str) and (join_key or None) != record.join_key:
            changed["key"] = join_key
        by = session.name or ""
        done = Done(f"Modes of {record.name} set", {"room": record.name})

        def change(current: RoomRecord) -> RoomRecord:
            updated = current.with_modes(flags)
            if isinstance(join_key, str):
                updated = updated.with_join_key(join_key)
            return updated.with_limit(limit) if isinstance(limit, int) else updated

        def apply() -> None:
            d = self.hub.directory.update(record.key, change)
            if changed:
                d.addCallback(lambda _: self.hub.room_event(record.name, "mode", {"room": record.name, "by": by, "modes": changed}))
            d.addErrback(lambda failure: self.log.failure("changing modes of {room} failed", failure, room=record.name))

        done.effects.append(apply)
        return done

    def _invite(self, session: ISession, record: RoomRecord, content: dict[str, Any], flags: dict[str, bool]) -> Done:
        user = content["user"]
        sessions = [s for s in self.hub.sessions_of(user) if getattr(s, "version", 1) >= 2] if _valid_name(user) else []
        elsewhere, self._elsewhere = self._elsewhere, None
        if not sessions and elsewhere is None:
            raise ChatError(messages.NO_SUCH_USER, f"No such user: {user} is not online.")
        target = (sessions[0].name or user) if sessions else str(elsewhere)
        done = Done(f"Invited {target} to {record.name}", {"room": record.name, "user": target})
        if any(name.lower() == target.lower() for name in self._members):
            return done  # a member: the info only
        by = session.name or ""
        if sessions:
            self._invited.setdefault(target.lower(), set()).add(record.key)

        def apply() -> None:
            for invitee in self.hub.sessions_of(target):
                invitee.notify("invite", {"room": record.name, "by": by})
            # Its sessions on other nodes (every node reads #lobby's events).
            self.hub.bus.announce_event(LOBBY, "invited", {"user": target, "room": record.name, "by": by})

        done.effects.append(apply)
        return done

    # -- effects ------------------------------------------------------------------

    def remove(self, record: RoomRecord, target: str, reason: str, by: str, comment: str) -> None:
        """``target`` leaves the room, kicked or banned, on every node (see
        :meth:`chatd.core.hub.Hub.remove_member`)."""
        event: dict[str, object] = {"user": target, "status": "offline", "room": record.name, "reason": reason, "by": by}
        if comment:
            event["comment"] = comment
        self.hub.room_event(record.name, "kick", event)

    def _tell(self, target: str, text: str, record: RoomRecord, by: str) -> None:
        # Every session of the target, on every node (section 6.5).
        self.hub.tell_everywhere(target, record.name, {"text": text, "room": record.name, "by": by})

    # -- storage ------------------------------------------------------------------

    def _bans(self, room_key: str) -> list[Restriction]:
        if self.store is None:
            return list(self._memory_bans.get(room_key, {}).values())
        return self.store.load_bans(room_key)

    def _save_ban(self, ban: Restriction) -> None:
        if self.store is None:
            self._memory_bans.setdefault(ban.room_key, {})[ban.key] = ban
        else:
            self.store.save_ban(ban)

    def _remove_ban(self, room_key: str, name: str) -> None:
        if self.store is None:
            self._memory_bans.get(room_key, {}).pop(name.lower(), None)
        else:
            self.store.remove_ban(room_key, name)

    def _mutes_of(self, room_key: str) -> dict[str, Restriction]:
        if self._mutes is None:
            self._mutes = {}
            for mute in self.store.load_mutes() if self.store is not None else []:
                self._mutes.setdefault(mute.room_key, {})[mute.key] = mute
        return self._mutes.setdefault(room_key, {})


def _comment(content: dict[str, Any]) -> str:
    from chatd.core.hub import clean_topic

    comment = content.get("comment")
    return clean_topic(comment).strip()[:MAX_COMMENT] if isinstance(comment, str) else ""


def _changes_settings(content: dict[str, Any]) -> bool:
    """Whether a ``mode`` request sets something (a flag, the member
    limit, the key) rather than reading the modes."""
    return any(setting in content for setting in (*DEFAULT_MODES, "limit", "key"))


def _valid_name(name: str) -> bool:
    from chatd.core.hub import is_valid_name

    return is_valid_name(name)

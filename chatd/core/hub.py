"""The hub: the chat core, built from parts; the one place that knows
every session and room.

It validates logins and messages and keeps this node's sessions and its
rooms (:mod:`chatd.core.rooms`); what may span nodes comes from parts it
is given (:mod:`chatd.interfaces`): who holds which name
(:class:`~chatd.interfaces.INameRegistry`), ids, order and storage of
messages (:class:`~chatd.interfaces.IMessageBus`, which hands stored
batches back to :meth:`Hub.receive`), and reading history
(:class:`~chatd.interfaces.IHistory`).  :meth:`Hub.local` builds a single
node's hub (:mod:`chatd.core.local`); :mod:`chatd.cluster` gives the
Redis parts.  Every call that may need another node answers with a
Deferred, already fired locally.

Rooms (PROTOCOL.md section 6.2): every session is in ``#lobby`` from
login to logout; a v2 session joins and parts others.  A room's lasting
state (spelling, topic, modes, roles) and its members on every node come
from an :class:`~chatd.interfaces.IRoomDirectory`; :class:`Room` holds
this node's member sessions, for fan-out.  Direct messages (section 6.3)
have ids per conversation (:func:`~chatd.core.rooms.dm_key`) and go to
the v2 sessions of both names.

Fan-out: a stored batch is handed to each member of its room once
(:meth:`Room.deliver <chatd.core.rooms.Room.deliver>`); front-ends encode
it once per wire format.  Nothing here is module-level: a test may build
as many hubs as it likes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd import messages
from chatd.core.moderation import Moderation
from chatd.core.rooms import LOBBY, ROOM_NAME, Delivery, Draft, Room, dm_key, dm_parties, is_dm
from chatd.interfaces import IChatCore, IHistory, IMessageBus, INameRegistry, IReceiver, IRoomDirectory, ISession
from chatd.messages import ChatError
from chatd.metrics import Metrics
from chatd.stores.history import MAX_PAGE, HistoryStore, StoredMessage
from chatd.stores.roomstate import RoomRecord

#: The room every session enters at login.
DEFAULT_ROOM = LOBBY

#: The longest topic, in code points (PROTOCOL.md section 6.2).
MAX_TOPIC = 390

#: Rooms a name may be in, ``#lobby`` not counted (``--max-rooms-per-user``).
MAX_ROOMS_PER_USER = 50

_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
#: A name a ``to`` or ``with`` may give: a JSON username or an IRC nick (section 6.4).
_VALID_NAME = re.compile(r"[A-Za-z0-9]{1,32}|[A-Za-z_][A-Za-z0-9_-]{0,31}")
#: An IRC nick (section 7.2): what an IRC session logs in or renames with.
_NICK = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")
# Unicode category Cc except \t (U+0009) and \n (U+000A).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

#: What ``#lobby``'s record says (it is never stored: its state is fixed).
_LOBBY_CREATED = "1970-01-01T00:00:00.000Z"


def clean_text(text: str) -> str:
    """Remove control characters other than newline and tab."""
    return _CONTROL.sub("", text)


def clean_topic(text: str) -> str:
    """A topic as section 6.2 cleans it: control characters removed,
    newlines and tabs turned into spaces."""
    return clean_text(text).replace("\n", " ").replace("\t", " ")


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is a name a user may have (section 6.4)."""
    return isinstance(name, str) and _VALID_NAME.fullmatch(name) is not None and name.lower() != messages.SERVER_SENDER


def not_in_room(record: RoomRecord) -> ChatError:
    """``not_in_room`` for ``record``'s room."""
    return ChatError(messages.NOT_IN_ROOM, f"You are not in {record.name}.")


class SharedSessions(Protocol):
    """An account's sessions counted on every node of a cluster (its
    name registry, :class:`chatd.cluster.names.RedisNames`): a single
    node counts its own."""

    def add_account_session(self, name: str, max_sessions: int, on_lost: Callable[[], object] | None = None) -> Deferred[bool]:
        """One more session of the account here; fires with whether it
        is its first anywhere (``name_taken``, ``forbidden``: too many)."""

    def drop_account_session(self, name: str) -> Deferred[bool]:
        """A session of the account here ended; fires with whether it was its last anywhere."""

    def holder(self, name: str) -> Deferred[str | None]:
        """``name`` as its holder logged in, if a session holds it now on any node."""


@dataclass
class Joined:
    """What a ``join`` gives the front-end to answer with."""

    record: RoomRecord
    members: list[str]
    history: list[StoredMessage] | None  # None: the room was joined already (the info alone)


@implementer(IChatCore, IReceiver)
class Hub:
    """Sessions, rooms and messages, over a name registry, a bus, history
    and a room directory."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        history: IHistory,
        names: INameRegistry,
        bus: IMessageBus,
        max_message: int = 2000,
        metrics: Metrics | None = None,
        directory: IRoomDirectory | None = None,
        max_rooms_per_user: int = MAX_ROOMS_PER_USER,
        history_on_join: int | None = 100,
    ) -> None:
        self.clock = clock
        self.history = history
        self.registry = names
        self.bus = bus
        self.max_message = max_message
        self.metrics = metrics if metrics is not None else Metrics()
        if directory is None:
            from chatd.core.local import LocalRooms
            from chatd.stores.history import MemoryHistory

            directory = LocalRooms(MemoryHistory())
        self.directory = directory
        self.max_rooms_per_user = max_rooms_per_user
        self.history_on_join = history_on_join
        # This node's sessions, keyed by the lower-cased name.
        self._sessions: dict[str, ISession] = {}
        # Rooms with members on this node, keyed by the lower-cased name.
        self.rooms: dict[str, Room] = {DEFAULT_ROOM: Room(DEFAULT_ROOM)}
        # The rooms (keys) each session joined, #lobby not counted, in order.
        self._joined: dict[ISession, dict[str, None]] = {}
        # Names (lower-cased) of this node's sessions that are not in #lobby
        # (IRC sessions, section 7.1): left out of #lobby's names.
        self._outside_lobby: set[str] = set()
        # Names (lower-cased) whose last session is ending right now, with
        # a number for that logout: the rooms' presence comes per room, and
        # an IRC member turns it into one QUIT per logout (section 7.1).
        self.departing: dict[str, int] = {}
        self._departures = 0
        # Further sessions of an account logged in here (the first is in
        # _sessions), and which names are accounts' (section 6.4).
        self._extra: dict[str, list[ISession]] = {}
        self._account_names: set[str] = set()
        #: Whether a (lower-cased) name is an account; set where accounts are on.
        self.is_account: Callable[[str], bool] = lambda lower: False
        #: ``--max-sessions``: sessions one account may have at once.
        self.max_sessions = 8
        #: Keeps an account's rooms across sessions (a HistoryStore), if accounts are on.
        self.memberships: Any = None
        #: An account's name as registered, or None (set with accounts).
        self._spelling: Callable[[str], str | None] = lambda lower: None
        #: Where an account's sessions may be on several nodes (a cluster
        #: sets it): its sessions are counted there, and its presence
        #: follows its first and last session anywhere.
        self.account_sessions: SharedSessions | None = None
        # DMs given to a session at its login, per conversation: the same
        # ones coming live afterwards (a cluster's stream) are not given twice.
        self._given: dict[ISession, dict[str, int]] = {}
        self.moderation = Moderation(self)
        self._now_millisecond: int | None = None
        self._now_text = ""
        self.metrics.watch_rooms(self.room_count)
        bus.subscribe(self)

    @classmethod
    def local(
        cls, clock: IReactorTime, store: HistoryStore, max_message: int = 2000, metrics: Metrics | None = None, **options: Any
    ) -> Hub:
        """A single node's hub: names in memory, messages and rooms in ``store``."""
        from chatd.core.local import LocalBus, LocalHistory, LocalNames, LocalRooms

        metrics = metrics if metrics is not None else Metrics()
        bus = LocalBus(clock, store, metrics)
        directory = LocalRooms(store)
        hub = cls(clock, LocalHistory(store), LocalNames(), bus, max_message=max_message, metrics=metrics, directory=directory, **options)
        hub.moderation.store = store  # bans and mutes are kept with history
        return hub

    def use_accounts(
        self,
        store: Any,
        operators: frozenset[str] = frozenset(),
        max_sessions: int = 8,
        spelling: Callable[[str], str | None] | None = None,
    ) -> None:
        """Accounts are on (section 6.4): ``store`` knows them and keeps
        their rooms; ``operators`` are the server operators' names.

        ``spelling(lower)``, an account's name as registered or None,
        answers at once where ``store`` answers later (a cluster's, from
        its copy of the names); by default the store is asked.
        """
        if spelling is None:

            def spelling(lower: str) -> str | None:
                record = store.load_account(lower)
                return None if record is None else str(record.name)

        known = spelling
        self._spelling = known
        self.is_account = lambda lower: known(lower) is not None
        self.memberships = store
        self.max_sessions = max_sessions
        self.moderation.operators = operators
        if hasattr(self.directory, "is_account"):
            self.directory.is_account = self.is_account

    @property
    def lobby(self) -> Room:
        """The default room."""
        return self.rooms[DEFAULT_ROOM]

    def now(self) -> str:
        """The reactor's current time as a protocol timestamp, formatted
        once per millisecond (its resolution): a fan-out asks for it per
        recipient, and the real clock moves between any two calls."""
        seconds = self.clock.seconds()
        millisecond = int(seconds * 1000)
        if millisecond != self._now_millisecond:
            self._now_millisecond, self._now_text = millisecond, messages.format_timestamp(seconds)
        return self._now_text

    def room_count(self) -> int:
        """Rooms that exist, ``#lobby`` included (the ``chatd_rooms`` gauge)."""
        return 1 + sum(1 for record in self.directory.records() if record.key != DEFAULT_ROOM)

    @staticmethod
    def check_name(name: Any, nick: bool = False) -> None:
        """``invalid_username`` or ``name_taken`` (reserved) for a bad name
        (with ``nick``, an IRC nick's rule, section 7.2)."""
        if nick:
            if not isinstance(name, str) or not _NICK.fullmatch(name):
                raise ChatError(
                    messages.INVALID_USERNAME,
                    "Invalid nick: a letter or _ first, then letters, digits, _ or -, up to 32 in all.",
                )
        elif not isinstance(name, str) or not _USERNAME.fullmatch(name):
            raise ChatError(
                messages.INVALID_USERNAME,
                "Invalid username: use 1 to 32 characters, each a letter A-Z or a-z or a digit 0-9.",
            )
        if name.lower() == messages.SERVER_SENDER:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is reserved.")

    # -- sessions ----------------------------------------------------------

    def login(
        self, session: ISession, name: Any, nick: bool = False, lobby: bool = True, account: bool = False
    ) -> Deferred[str]:
        """Register ``session`` under ``name`` and enter the default room.

        An IRC session logs in with ``nick`` (the nick rule, section 7.2)
        and without ``lobby``: it enters ``#lobby`` only by joining it
        (section 7.1).
        """
        try:
            if not account:  # an account's name was checked at its registration
                self.check_name(name, nick)
            self.moderation.check_login(name)
            lower = name.lower()
            if account and self.account_sessions is not None:
                return self._login_counted(self.account_sessions, session, name, lobby)
            if account and lower in self._account_names:
                return succeed(self._attach(session, name, lobby))
        except ChatError:
            return fail()
        claimed = self.registry.claim(name, lambda: self._lost(session))
        return claimed.addCallback(lambda _: self._entered(session, name, lobby, account))

    def _login_counted(self, shared: SharedSessions, session: ISession, name: str, lobby_too: bool) -> Deferred[str]:
        """An account's session where its sessions may be on several nodes:
        ``--max-sessions`` counts them all, and ``presence`` ``online``
        comes only with its first session anywhere."""
        d = shared.add_account_session(name, self.max_sessions, lambda: self._lost(session))

        def added(first: bool) -> str:
            try:
                if name.lower() in self._account_names:  # a session here came first meanwhile
                    return self._attach(session, name, lobby_too)
                return self._entered(session, name, lobby_too, account=True, announce=first)
            except BaseException:
                shared.drop_account_session(name)
                raise

        return d.addCallback(added)

    def _attach(self, session: ISession, name: str, lobby_too: bool) -> str:
        """A further session of an account logged in here: it joins the
        name's rooms without a word to anyone (section 6.4)."""
        lower = name.lower()
        sessions = self.sessions_of(lower)
        if len(sessions) >= self.max_sessions:
            raise ChatError(
                messages.FORBIDDEN, f"{name} has {self.max_sessions} sessions already, the most one account may have."
            )
        self._extra.setdefault(lower, []).append(session)
        canonical = str(sessions[0].name)
        if lobby_too:
            self.lobby.add(session)
        if getattr(session, "version", 1) >= 2:
            joined = self._joined.get(sessions[0], {})
            for key in joined:
                room = self.rooms.get(key)
                if room is not None:
                    room.add(session)
            self._joined[session] = dict(joined)
        return canonical

    def sessions_of(self, name: str) -> list[ISession]:
        """This node's sessions of ``name`` (any case), the first first."""
        lower = name.lower()
        first = self._sessions.get(lower)
        if first is None:
            return []
        extra = self._extra.get(lower)
        return [first, *extra] if extra else [first]

    def _lost(self, session: ISession) -> None:
        """The name went to a session elsewhere: ``session`` leaves without
        a word to anyone (the name is online, elsewhere), then ends."""
        if self.is_member(session):
            assert session.name is not None
            del self._sessions[session.name.lower()]
            for key in list(self._joined.pop(session, {})):
                self._leave_room(session, key, announce=False)
            self.lobby.remove(session)
            self._outside_lobby.discard(session.name.lower())
        session.name_lost()

    def _entered(self, session: ISession, name: str, lobby_too: bool = True, account: bool = False, announce: bool = True) -> str:
        """``session`` holds ``name`` here now; the lobby hears it came,
        unless not to ``announce`` (the account is online on another node)."""
        self._sessions[name.lower()] = session
        if account:
            self._account_names.add(name.lower())
        if not lobby_too:
            self._outside_lobby.add(name.lower())
            return name
        lobby = self.lobby
        lobby.add(session)
        if announce:
            lobby.announce(name, "online", session)
            self.bus.announce(name, "online", lobby.name)
        return name

    def logout(self, session: ISession, comment: str | None = None) -> None:
        """Remove ``session``: its name is free at once, its rooms told
        (their ``presence`` carries ``comment``, a quit text, if given)."""
        if not self.is_member(session):
            return
        name = session.name
        assert name is not None
        lower = name.lower()
        self._given.pop(session, None)
        shared = self.account_sessions if lower in self._account_names else None
        if self._detach(session, lower):
            if shared is not None:
                shared.drop_account_session(name)
            return  # the name has other sessions: nobody is told
        del self._sessions[lower]
        self._account_names.discard(lower)
        self._outside_lobby.discard(lower)
        if shared is not None:
            self._last_here(shared, session, name, comment)
            return
        self.registry.release(name)
        self.moderation.last_session_ended(name)
        comment = clean_topic(comment).strip() if comment else None
        self._departures += 1
        self.departing[lower] = self._departures
        try:
            for key in list(self._joined.pop(session, {})):
                self._leave_room(session, key, comment=comment)
            lobby = self.lobby
            if session in lobby:
                lobby.remove(session)
                self._announce_leaving(lobby, session, name, comment)
        finally:
            self.departing.pop(lower, None)

    def _last_here(self, shared: SharedSessions, session: ISession, name: str, comment: str | None) -> None:
        """An account's last session on this node ended: it leaves this
        node's rooms now, and the rooms hear it went once the cluster
        says that was its last session anywhere."""
        self.moderation.last_session_ended(name)
        comment = clean_topic(comment).strip() if comment else None
        rooms = [self.rooms[key].name for key in self._joined.get(session, {}) if key in self.rooms]
        for key in list(self._joined.pop(session, {})):
            self._leave_room(session, key, announce=False)
        in_lobby = session in self.lobby
        if in_lobby:
            self.lobby.remove(session)
            rooms.append(DEFAULT_ROOM)
        d = shared.drop_account_session(name)
        d.addCallback(self._gone_everywhere, session, name, rooms, comment)
        d.addErrback(lambda failure: self.log.failure("announcing that {user} left", failure, user=name))

    def _gone_everywhere(self, last: bool, session: ISession, name: str, rooms: list[str], comment: str | None) -> None:
        if not last:
            return  # sessions of it are on other nodes: nobody is told
        lower = name.lower()
        self._departures += 1
        self.departing[lower] = self._departures
        try:
            for room in rooms:
                self._announce_leaving(self.rooms.get(room.lower()) or Room(room), session, name, comment)
        finally:
            self.departing.pop(lower, None)

    def rename(self, session: ISession, new: Any) -> Deferred[str]:
        """A logged-in guest's ``session`` takes the name ``new`` (an IRC
        ``NICK``, section 7.3): ``invalid_username``, ``name_taken``.

        Its rooms keep it, in the same place for the session and at the
        end for the room's order; its roles go with it.  Members that can
        show a rename (a ``renamed(old, new)`` method: IRC) are told once;
        the others get ``presence`` ``offline`` for the old name and
        ``online`` for the new one, in each room they share.
        """
        try:
            self.check_name(new, nick=True)
        except ChatError:
            return fail()
        old = session.name
        if old is None or not self.is_member(session):
            return fail(ChatError(messages.NOT_LOGGED_IN, "You are not logged in."))
        if new == old:
            return succeed(old)
        case_only = new.lower() == old.lower()
        if case_only:
            self.registry.release(old)
        claimed = self.registry.claim(new, lambda: self._lost(session))
        return claimed.addCallback(lambda _: self._renamed(session, old, new, case_only))

    def _renamed(self, session: ISession, old: str, new: str, case_only: bool) -> str:
        if not self.is_member(session) or session.name != old:
            self.registry.release(new)  # gone (or renamed) meanwhile
            raise ChatError(messages.NOT_LOGGED_IN, "You are not logged in.")
        if not case_only:
            self.registry.release(old)
        old_lower, new_lower = old.lower(), new.lower()
        del self._sessions[old_lower]
        self._sessions[new_lower] = session
        session.name = new
        if old_lower in self._outside_lobby:
            self._outside_lobby.discard(old_lower)
            self._outside_lobby.add(new_lower)
        rooms = [self.lobby] if session in self.lobby else []
        rooms += [self.rooms[key] for key in self._joined.get(session, {}) if key in self.rooms]
        for room in rooms:
            if room.key != DEFAULT_ROOM:
                self._move_member(room.key, old, new)
        told: set[int] = set()
        for room in rooms:
            for member in room.members():
                if member is session:
                    continue
                renamed = getattr(member, "renamed", None)
                if renamed is None:
                    member.presence(old, "offline", room.name)
                    member.presence(new, "online", room.name)
                elif id(member) not in told:
                    told.add(id(member))
                    renamed(old, new)
            self.bus.announce(old, "offline", room.name)
            self.bus.announce(new, "online", room.name)
        return new

    def _move_member(self, key: str, old: str, new: str) -> None:
        """The room's member ``old`` is now ``new``, roles included."""
        self.directory.leave(key, old)
        self.directory.enter(key, new)
        record = self.directory.get(key)
        old_lower, new_lower = old.lower(), new.lower()
        if record is not None and (old_lower in record.ops or old_lower in record.voiced):
            op, voiced = old_lower in record.ops, old_lower in record.voiced

            def moved(current: RoomRecord) -> RoomRecord:
                current = current.with_op(old_lower, False).with_voice(old_lower, False)
                if op:
                    current = current.with_op(new_lower)
                return current.with_voice(new_lower) if voiced else current

            d = self.directory.update(key, moved)
            d.addErrback(lambda failure: self.log.failure("moving {user}'s roles in {room} failed", failure, user=new, room=key))

    def _detach(self, session: ISession, lower: str) -> bool:
        """``session`` ends while its name has others: it leaves its rooms
        silently (the first session's place goes to the next).  False if
        it is the name's last session."""
        extra = self._extra.get(lower)
        if not extra:
            return False
        if self._sessions.get(lower) is session:
            self._sessions[lower] = extra.pop(0)
        else:
            extra.remove(session)
        if not extra:
            del self._extra[lower]
        for key in list(self._joined.pop(session, {})):
            room = self.rooms.get(key)
            if room is not None:
                room.remove(session)
        self.lobby.remove(session)
        return True

    def is_member(self, session: ISession) -> bool:
        """Whether ``session`` is logged in on this node."""
        name = session.name
        if name is None:
            return False
        lower = name.lower()
        return self._sessions.get(lower) is session or session in self._extra.get(lower, ())

    def session_named(self, name: str) -> ISession | None:
        """This node's session holding ``name`` (any case), if any."""
        return self._sessions.get(name.lower())

    @property
    def local_users(self) -> int:
        """Sessions logged in on this node."""
        return len(self._sessions)

    def names(self, room: str = DEFAULT_ROOM) -> Deferred[list[str]]:
        """The names in ``room`` (a canonical name or key), in the order
        they entered (every node's)."""
        if room.lower() == DEFAULT_ROOM:
            names = self.registry.names()
            if self._outside_lobby:
                # IRC sessions of this node that are not in #lobby.
                names.addCallback(lambda found: [name for name in found if name.lower() not in self._outside_lobby])
            return names
        return self.directory.members(room.lower())

    # -- rooms -------------------------------------------------------------

    def lobby_record(self) -> RoomRecord:
        """``#lobby``'s state: fixed modes, no stored topic (section 6.5)."""
        return self.directory.get(DEFAULT_ROOM) or RoomRecord(DEFAULT_ROOM, _LOBBY_CREATED)

    @staticmethod
    def room_key(name: Any) -> str:
        """The key of the room ``name``; ``invalid_room`` unless it is one."""
        if not isinstance(name, str) or ROOM_NAME.fullmatch(name) is None:
            shown = name if isinstance(name, str) and len(name) <= 60 else "that"
            raise ChatError(
                messages.INVALID_ROOM,
                f"Invalid room name {shown!r}: use # and 1 to 48 letters, digits, '_' or '-'.",
            )
        return name.lower()

    def record(self, name: Any) -> RoomRecord:
        """The existing room ``name``: ``invalid_room``, ``no_such_room``."""
        key = self.room_key(name)
        if key == DEFAULT_ROOM:
            return self.lobby_record()
        record = self.directory.get(key)
        if record is None:
            raise ChatError(messages.NO_SUCH_ROOM, f"No such room: {name}.")
        return record

    def in_room(self, session: ISession, key: str) -> bool:
        """Whether ``session`` is a member of the room ``key``."""
        room = self.rooms.get(key)
        return room is not None and session in room

    def readable(self, session: ISession, name: Any) -> RoomRecord:
        """A room whose names and topic ``session`` may read: public, or
        one it is in (``invalid_room``, ``no_such_room``, ``not_in_room``)."""
        record = self.record(name)
        if not record.public and not self.in_room(session, record.key):
            raise not_in_room(record)
        return record

    def joined_rooms(self, session: ISession) -> list[str]:
        """The canonical names of the rooms ``session`` joined, in order."""
        return [self.rooms[key].name for key in self._joined.get(session, {})]

    def forget_room(self, name: str, key: str) -> None:
        """An account is no longer in the room ``key`` (banned while away)."""
        if self.memberships is not None and self._is_account(name.lower()):
            self.memberships.remove_membership(name.lower(), key)

    def account_rooms(self, name: str) -> Deferred[list[str]]:
        """The keys of the rooms an account is in, in the order joined."""
        if self.memberships is None or not self._is_account(name.lower()):
            return succeed([])
        return maybeDeferred(self.memberships.memberships, name.lower()).addCallback(list)

    def join(self, session: ISession, name: Any, rejoin: bool = False, join_key: str | None = None) -> Deferred[Joined]:
        """``session`` enters the room ``name``, created if new (with
        ``join_key``, the key it gave for a room that has one).

        Fires with what the answer needs: the record, the members and the
        history up to where delivery starts (None if already a member;
        with ``rejoin``, an account's session coming back, the history
        then too).
        """
        if rejoin and self.in_room(session, str(name).lower()):
            record = self.directory.get(str(name).lower())
            if record is not None:
                return self._rejoined(record)
        try:
            key = self.room_key(name)
            if key == DEFAULT_ROOM and self.is_member(session) and session not in self.lobby:
                return self._enter_lobby(session)
            if key == DEFAULT_ROOM or self.in_room(session, key):
                record = self.record(name)
                return self.names(record.name).addCallback(lambda members: Joined(record, members, None))
            existing = self.directory.get(key)
            if existing is not None:
                self.moderation.check_join(session, existing, member=rejoin, join_key=join_key)
            if len(self._joined.get(session, {})) >= self.max_rooms_per_user:
                raise ChatError(
                    messages.FORBIDDEN,
                    f"You are in {self.max_rooms_per_user} rooms already, the most one name may be in.",
                )
        except ChatError:
            return fail()
        d: Deferred[object] = succeed(None)
        if existing is not None and existing.limit is not None and not rejoin:
            # A member limit (IRC's +l) needs the members now.
            limited = existing
            d = self.directory.members(key).addCallback(lambda members: self.moderation.check_limit(session, limited, members))
        d2 = d.addCallback(lambda _: self.directory.create(name, self.now()))
        return d2.addCallback(self._watch_room, session).addCallback(self._joined_everywhere, session, rejoin)

    def _joined_everywhere(self, joined: Joined, session: ISession, rejoin: bool) -> Joined:
        """An account joined: its sessions on other nodes join too (every
        node reads ``#lobby``'s events; a session coming back at its
        login joins rooms they are in already)."""
        name = str(session.name)
        if rejoin or joined.history is None or self.account_sessions is None:
            return joined
        if self._is_account(name.lower()):
            self.bus.announce_event(DEFAULT_ROOM, "name_joined", {"user": name, "room": joined.record.name})
        return joined

    def _joined_elsewhere(self, content: dict[str, object]) -> None:
        """An account joined a room on another node: its v2 sessions here
        join it too (it passed the room's checks there), each told as a
        session that did not ask."""
        user, room = str(content.get("user", "")), str(content.get("room", ""))
        record = self.directory.get(room.lower())
        sessions = [s for s in self.sessions_of(user) if getattr(s, "version", 1) >= 2 and not self.in_room(s, room.lower())]
        if record is None or not sessions:
            return
        first = sessions[0]

        def tell(joined: Joined) -> None:
            if joined.history is not None:
                first.notify("joined", {"joined": joined})

        d = self._watch_room(record, first).addCallback(tell)
        d.addErrback(lambda failure: self.log.failure("joining {user}'s sessions to {room}", failure, user=user, room=room))

    def _rejoined(self, record: RoomRecord) -> Deferred[Joined]:
        """A room a further session of an account is in already: its info
        and newest messages."""
        d = self.directory.members(record.key)

        def with_history(members: list[str]) -> Deferred[Joined]:
            recent = self.history.recent(record.name, self.history_on_join)
            return recent.addCallback(lambda history: Joined(record, members, history))

        return d.addCallback(with_history)

    def _enter_lobby(self, session: ISession) -> Deferred[Joined]:
        """An IRC session that is not in ``#lobby`` joins it (section 7.1)."""
        name = session.name
        assert name is not None
        lobby = self.lobby
        lobby.add(session)
        self._outside_lobby.discard(name.lower())
        lobby.announce(name, "online", session)
        self.bus.announce(name, "online", lobby.name)
        record = self.lobby_record()
        return self.names().addCallback(lambda members: Joined(record, members, []))

    def _watch_room(self, record: RoomRecord, session: ISession) -> Deferred[Joined]:
        d = self.bus.watch(record.name)
        return d.addCallback(self._enter_room, session, record)

    def _enter_room(self, start: int, session: ISession, record: RoomRecord) -> Deferred[Joined]:
        key = record.key
        if not self.is_member(session) or self.in_room(session, key):
            # Gone meanwhile, or a second join that overtook this one.
            self._unwatch_if_empty(key, record.name)
            return self.names(record.name).addCallback(lambda members: Joined(record, members, None))
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(record.name)
        name = session.name
        assert name is not None
        # Membership belongs to the name: its other v2 sessions join too.
        others = [other for other in self.sessions_of(name) if other is not session and getattr(other, "version", 1) >= 2]
        for member in [session, *others]:
            room.add(member)
            self._joined.setdefault(member, {})[key] = None
        self.moderation.joined(name, key)
        if self._is_account(name.lower()) and self.memberships is not None:
            self.memberships.add_membership(name.lower(), key)
        d: Deferred[Any] = self.directory.members(key)
        d.addCallback(self._arrive, room, session, key, name)
        d.addCallback(lambda _: self._history_until(record.name, start))
        d.addCallback(self._joined_answer, key)
        return d.addCallback(self._tell_other_sessions, others)

    def _arrive(self, members: list[str], room: Room, session: ISession, key: str, name: str) -> Deferred[None]:
        """``name`` enters the room's members; the room hears it came unless
        it was a member already (its sessions on another node)."""
        present = name.lower() in {member.lower() for member in members}
        d: Deferred[Any] = maybeDeferred(self._take_op_if_none, members, key, name)
        d.addCallback(lambda _: self.directory.enter(key, name))
        if not present:
            d.addCallback(lambda _: self._announce_entry(room, session, name))
        return d

    def _tell_other_sessions(self, joined: Joined, others: list[ISession]) -> Joined:
        """The name's other sessions get the same answer, without ``ref``."""
        for other in others:
            other.notify("joined", {"joined": joined})
        return joined

    def _take_op_if_none(self, members: list[str], key: str, name: str) -> Deferred[RoomRecord] | None:
        """Whenever a name joins a room where no member is op (and, with
        accounts, no account holds op), the joiner becomes op."""
        record = self.directory.get(key)
        if record is None:
            return None
        present = {member.lower() for member in members}
        if any(op in present or self._is_account(op) for op in record.ops):
            return None
        lower = name.lower()
        return self.directory.update(key, lambda current: current.with_op(lower))

    def _is_account(self, lower: str) -> bool:
        """Whether ``lower`` names an account."""
        return self.is_account(lower)

    def _announce_entry(self, room: Room, session: ISession, name: str) -> None:
        room.announce(name, "online", session)
        self.bus.announce(name, "online", room.name)

    def _history_until(self, room: str, start: int) -> Deferred[list[StoredMessage]]:
        """The newest messages of ``room`` up to ``start``, where delivery
        takes over."""
        limit = self.history_on_join
        if limit is not None and limit <= 0:
            return succeed([])
        if limit is None:
            d = self.history.recent(room, None)
            return d.addCallback(lambda found: [message for message in found if message.id <= start])
        page = self.history.page(room, start + 1, None, min(limit, MAX_PAGE))
        return page.addCallback(lambda found: found[0])

    def _joined_answer(self, history: list[StoredMessage], key: str) -> Deferred[Joined]:
        record = self.directory.get(key)
        assert record is not None
        return self.directory.members(key).addCallback(lambda members: Joined(record, members, history))

    def part(
        self, session: ISession, name: Any, comment: str | None = None, lobby: bool = False, announce: bool = True
    ) -> RoomRecord:
        """``session`` leaves the room ``name`` (``invalid_room``,
        ``forbidden`` for ``#lobby``, ``no_such_room``, ``not_in_room``);
        the members' ``presence`` carries ``comment``, cleaned like a topic.

        With ``lobby`` (an IRC session, section 7.1) ``#lobby`` may be left
        too.  Without ``announce`` the members are told nothing (the
        caller told them already, e.g. of a kick).
        """
        key = self.room_key(name)
        if key == DEFAULT_ROOM and not lobby:
            raise ChatError(messages.FORBIDDEN, "Everyone stays in #lobby: it cannot be left.")
        record = self.record(name)
        if not self.in_room(session, key):
            raise not_in_room(record)
        comment = clean_topic(comment).strip() if comment else None
        if key == DEFAULT_ROOM:
            lobby_room = self.lobby
            lobby_room.remove(session)
            self._outside_lobby.add(str(session.name).lower())
            if announce:
                self._announce_leaving(lobby_room, session, str(session.name), comment)
            return record
        self._joined.get(session, {}).pop(key, None)
        # Membership belongs to the name: its other sessions leave too,
        # before the room is left (which stops watching a room nobody
        # here is in any more).
        parted = []
        for other in self.sessions_of(str(session.name)):
            if other is not session and key in self._joined.get(other, {}):
                self._joined[other].pop(key, None)
                room = self.rooms.get(key)
                if room is not None:
                    room.remove(other)
                parted.append(other)
        self._leave_room(session, key, announce=announce, comment=comment, parted=True)
        for other in parted:
            other.notify("parted", {"room": record.name})
        if self.account_sessions is not None and self._is_account(str(session.name).lower()):
            # ... and so do those on other nodes.
            self.bus.announce_event(record.name, "name_parted", {"user": str(session.name), "room": record.name})
        return record

    def _announce_leaving(self, room: Room, session: ISession, name: str, comment: str | None) -> None:
        """``presence`` ``offline`` of ``name`` to the room's members (with
        ``comment``, if any), here and on the other nodes."""
        if comment:
            content: dict[str, object] = {"user": name, "status": "offline", "room": room.name, "comment": comment}
            room.notify("presence", content, skip_name=name)
            self.bus.announce_event(room.name, "presence", content)
        else:
            room.announce(name, "offline", session)
            self.bus.announce(name, "offline", room.name)

    def _leave_room(
        self, session: ISession, key: str, announce: bool = True, comment: str | None = None, parted: bool = False
    ) -> None:
        """``session`` leaves the room ``key``: presence, membership, a
        guest's roles; the bus stops delivering a room nobody here is in."""
        room = self.rooms.get(key)
        name = session.name
        if room is None or name is None or session not in room:
            return
        room.remove(session)
        self._forget_membership(key, name, parted)
        if announce:
            self._announce_leaving(room, session, name, comment)
        self._unwatch_if_empty(key, room.name)

    def _unwatch_if_empty(self, key: str, name: str) -> None:
        room = self.rooms.get(key)
        if key != DEFAULT_ROOM and (room is None or not len(room)):
            self.rooms.pop(key, None)
            self.bus.unwatch(name)

    def room_list(self, session: ISession) -> Deferred[list[tuple[RoomRecord, int]]]:
        """The rooms ``session`` may see that have members, with their
        member counts, by name case-insensitively."""
        d = self.directory.counts()
        return d.addCallback(self._visible_rooms, session)

    def _visible_rooms(self, counts: dict[str, int], session: ISession) -> Deferred[list[tuple[RoomRecord, int]]]:
        listed = []
        for record in self.directory.records():
            count = counts.get(record.key, 0)
            if record.key != DEFAULT_ROOM and count and (record.public or self.in_room(session, record.key)):
                listed.append((record, count))
        lobby = self.lobby_record()

        def with_lobby(names: list[str]) -> list[tuple[RoomRecord, int]]:
            rooms = listed + [(lobby, len(names))]
            return sorted(rooms, key=lambda pair: pair[0].key)

        return self.names().addCallback(with_lobby)

    def topic(
        self, session: ISession, name: Any, text: Any, on_set: Callable[[RoomRecord], object] | None = None
    ) -> Deferred[RoomRecord]:
        """Set the topic of ``name`` to ``text`` (``""`` clears it), as
        section 6.2 checks it; ``on_set(record)`` (the setter's answer)
        runs before the members are told."""
        try:
            record = self.record(name)
            if not self.in_room(session, record.key):
                raise not_in_room(record)
            lower = (session.name or "").lower()
            if record.key == DEFAULT_ROOM or (record.modes.get("topic_ops") and lower not in record.ops):
                raise ChatError(messages.NOT_OP, f"You are not an operator of {record.name}.")
            topic = clean_topic(text)
            if len(topic) > MAX_TOPIC:
                raise ChatError(
                    messages.MESSAGE_TOO_LONG, f"Topic too long: {len(topic)} characters, the limit is {MAX_TOPIC}."
                )
        except ChatError:
            return fail()
        by = str(session.name)
        at = self.now()
        if topic:
            d = self.directory.update(record.key, lambda current: current.with_topic(topic, by, at))
        else:
            d = self.directory.update(record.key, lambda current: current.with_topic("", None, None))
        return d.addCallback(self._topic_set, by, on_set)

    def _topic_set(self, record: RoomRecord, by: str, on_set: Callable[[RoomRecord], object] | None) -> RoomRecord:
        if on_set is not None:
            on_set(record)
        content: dict[str, object] = {"room": record.name, "topic": record.topic, "by": by}
        self.receive_event(record.name, "topic", content)
        self.bus.announce_event(record.name, "topic", content)
        return record

    # -- history -----------------------------------------------------------

    def recent(self, room: str, limit: int | None) -> Deferred[list[StoredMessage]]:
        """The newest ``limit`` stored messages of ``room``, oldest first."""
        return self.history.recent(room, limit)

    def page(self, room: str, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A page of ``room``'s history (see :meth:`IHistory.page`)."""
        return self.history.page(room, before, after, limit)

    # -- messages ----------------------------------------------------------

    def post(
        self, session: ISession, text: str, room: str | None = None, to: str | None = None, notice: bool = False
    ) -> Draft:
        """Validate ``text`` from ``session`` for ``room`` (default
        ``#lobby``) or for the name ``to``, and have it stored, then
        delivered.  Raises ``ChatError`` with the section 6 codes, in
        their order, then section 4's.  ``notice``: an IRC NOTICE
        (section 7.1), marked so on its draft."""
        sender = session.name
        assert sender is not None
        if to is not None:
            recipient, offline = self._recipient(to, sender)
            draft = Draft(dm_key(sender, recipient), sender, self.checked_text(text), self.now(), session, to=recipient)
            draft.offline = offline
            draft.owners = tuple(lower for lower in sorted({sender.lower(), recipient.lower()}) if self._is_account(lower))
        else:
            if room is None:
                if self.moderation.lobby_muted(sender):
                    raise ChatError(messages.MUTED, "You are muted in #lobby.")
                target = DEFAULT_ROOM
            else:
                target = self._postable(session, room)
            draft = Draft(target, sender, self.checked_text(text), self.now(), session)
        if notice:
            draft.notice = True
        self.bus.publish(draft)
        return draft

    def _postable(self, session: ISession, name: str) -> str:
        """The canonical name of a room ``session`` may post to."""
        record = self.record(name)
        if record.key == DEFAULT_ROOM:
            if session not in self.lobby:
                raise not_in_room(record)  # an IRC session that left #lobby (section 7.1)
            self.moderation.check_post(session, record)
            return DEFAULT_ROOM
        member = self.in_room(session, record.key)
        if not member and record.modes.get("no_external", True):
            raise not_in_room(record)
        self.moderation.check_post(session, record)
        return record.name

    def _recipient(self, to: str, sender: str) -> tuple[str, bool]:
        """The canonical name of a DM's recipient, and whether it is an
        account with no session (``no_such_user``, section 6.3)."""
        if not is_valid_name(to):
            raise ChatError(messages.NO_SUCH_USER, f"No such user: {to[:40]!r} is not a valid name.")
        holders = self.sessions_of(to)
        if any(getattr(holder, "version", 1) >= 2 for holder in holders):
            return str(holders[0].name), False
        if self._is_account(to.lower()) and self._is_account(sender.lower()):
            # No v2 session here (none at all, or v1 ones only): kept for
            # the account, delivered at its next v2 login.
            return self.account_name(to), True
        if not holders and self.bus.remote:
            return str(to), False  # perhaps on another node: the bus finds out
        raise ChatError(messages.NO_SUCH_USER, f"No such user: {to} is not online.")

    def account_name(self, name: str) -> str:
        """An account's name as registered (``name`` if it is none)."""
        return self._spelling(name.lower()) or name

    def checked_text(self, text: str) -> str:
        """The message text cleaned, or ``empty_message``/``message_too_long``."""
        text = clean_text(text)
        if not text.strip():
            raise ChatError(messages.EMPTY_MESSAGE, "Message is empty.")
        if len(text) > self.max_message:
            raise ChatError(
                messages.MESSAGE_TOO_LONG,
                f"Message too long: {len(text)} characters, the limit is {self.max_message}.",
            )
        return text

    def flush(self) -> None:
        """Store and deliver what is pending now (at shutdown)."""
        self.bus.flush()

    # -- from the bus --------------------------------------------------------

    def receive(self, delivery: Delivery) -> None:
        """A stored batch: to every member of its room, or to both sides
        of a conversation."""
        if is_dm(delivery.room):
            self._deliver_dm(delivery)
            return
        key = delivery.room.lower()
        room = self.rooms.get(key)
        if room is not None:
            self.metrics.deliveries.inc(room.deliver(delivery))
        if key != DEFAULT_ROOM:
            self._echo_outsiders(delivery, room)

    def _echo_outsiders(self, delivery: Delivery, room: Room | None) -> None:
        """A sender that is not a member (a room without ``no_external``)
        still gets its own message."""
        for message, draft in zip(delivery.messages, delivery.drafts):
            origin = draft.origin if draft is not None else None
            if origin is not None and (room is None or origin not in room):
                origin.deliver(Delivery(delivery.room, [message], [draft]))
                self.metrics.deliveries.inc()
    def _deliver_dm(self, delivery: Delivery) -> None:
        """A conversation's batch: to the v2 sessions of both names here."""
        delivered = 0
        marks = []
        for lower in dm_parties(delivery.room):
            reached = False
            for session in self.sessions_of(lower):
                if getattr(session, "version", 1) < 2:
                    continue
                given = self._given.get(session, {}).get(delivery.room)
                if given is not None and delivery.messages[-1].id <= given:
                    continue  # it had them at its login
                try:
                    fresh = delivery if given is None or delivery.messages[0].id > given else _after(delivery, given)
                    session.deliver(fresh)
                    reached = True
                except Exception:
                    self.log.failure("delivering a direct message to {user} failed", user=session.name)
                delivered += len(delivery.messages)
            if reached and self._is_account(lower):
                marks.append((lower, delivery.room, delivery.messages[-1].id))
        if marks and self.memberships is not None:
            self.mark_delivered(marks)
        self.metrics.deliveries.inc(delivered)

    def mark_delivered(self, marks: list[tuple[str, str, int]]) -> None:
        """Accounts' DMs reached a session of theirs: not delivered again
        at a later login (a store that fails is logged: they would come
        again, never get lost)."""
        try:
            self.memberships.mark_delivered_many(marks)
        except Exception:
            self.log.failure("keeping DM delivery marks failed")

    def undelivered(self, name: str, session: ISession | None = None) -> Deferred[list[tuple[str, list[StoredMessage], bool]]]:
        """An account's DMs kept and not yet given to any session of it:
        per conversation (the other name), the oldest 100, and whether more
        wait.  They count as delivered now; ``session``, which gets them,
        will not get them again should they come live too (a cluster's
        stream may bring them after the login)."""
        lower = name.lower()
        if self.memberships is None or not self._is_account(lower):
            return succeed([])
        d = maybeDeferred(self.memberships.undelivered, lower)
        return d.addCallback(self._undelivered, lower, session)

    def _undelivered(
        self, pages: list[tuple[str, list[StoredMessage], bool]], lower: str, session: ISession | None
    ) -> list[tuple[str, list[StoredMessage], bool]]:
        found = []
        marks = []
        for conversation, kept, more in pages:
            if not kept:
                continue
            first = kept[0]
            other = first.to if first.sender.lower() == lower and first.to is not None else first.sender
            if other.lower() == lower and len(dm_parties(conversation)) > 1:
                other = next(party for party in dm_parties(conversation) if party != lower)
            found.append((other, kept, more))
            marks.append((lower, conversation, kept[-1].id))
        if marks:
            self.mark_delivered(marks)
            if session is not None and self.is_member(session):
                self._given[session] = {conversation: last for _owner, conversation, last in marks}
        return found

    def dm_page(
        self, session: ISession, with_name: Any, before: int | None, after: int | None, limit: int
    ) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A page of the DMs kept for ``session``'s account with ``with_name``
        (``forbidden`` for a guest, ``no_such_user`` for a bad name)."""
        name = str(session.name)
        if self.memberships is None or not self._is_account(name.lower()):
            return fail(ChatError(messages.FORBIDDEN, "Only accounts have stored direct messages; guests' are live only."))
        if not is_valid_name(with_name):
            return fail(ChatError(messages.NO_SUCH_USER, f"No such user: {str(with_name)[:40]!r} is not a valid name."))
        return maybeDeferred(self.memberships.dm_page, name.lower(), dm_key(name, with_name), before, after, limit)

    def dm_partners(self, session: ISession) -> Deferred[list[str]]:
        """The names (lower-cased) ``session``'s account has DMs kept with,
        for IRC's ``CHATHISTORY TARGETS`` (section 7.4); none for a guest."""
        name = str(session.name).lower()
        store = self.memberships
        # The stores list an account's conversations only privately so far.
        listing = getattr(store, "dm_conversations", None) or getattr(store, "_dm_conversations", None)
        if listing is None or not self._is_account(name):
            return succeed([])

        def partners(conversations: dict[str, int]) -> list[str]:
            found = []
            for conversation in conversations:
                parties = dm_parties(conversation)
                found.append(next((party for party in parties if party != name), name))
            return found

        return maybeDeferred(listing, name).addCallback(partners)

    def name_held(self, name: str) -> Deferred[bool]:
        """Whether a session holds ``name`` now, on any node."""
        if self.account_sessions is not None:
            return self.account_sessions.holder(name).addCallback(lambda held: held is not None)
        return succeed(self.session_named(name) is not None)

    def receive_presence(self, user: str, status: str, room: str) -> None:
        """Another node's user came or went."""
        target = self.rooms.get(room.lower())
        if target is not None:
            target.announce(user, status)

    def receive_event(self, room: str, kind: str, content: dict[str, object]) -> None:
        """A room event (here or from another node): to this node's members.

        ``kick`` (a kick or ban, section 6.5): the target's sessions here
        are told and leave the room (``#lobby``: they close), then the
        remaining members get ``presence`` ``offline`` with the reason.
        From another node of a cluster, about an account's sessions or a
        user's, for this node's sessions of ``user`` only: ``name_parted``
        and ``name_joined`` (``#lobby``'s, read by every node: a part or
        join applies to the name), ``invited`` (``#lobby``'s), ``told``
        (an ``info`` to the user, e.g. a mute).
        """
        if kind == "kick":
            self._removed(room, content)
            return
        if kind == "name_parted":
            self._parted_elsewhere(room, content)
            return
        if kind == "name_joined":
            self._joined_elsewhere(content)
            return
        if kind == "invited":
            self.moderation.invited_elsewhere(content)
            return
        if kind == "told":
            self.tell(str(content.get("user", "")), {key: value for key, value in content.items() if key != "user"})
            return
        target = self.rooms.get(room.lower())
        if target is not None:
            target.notify(kind, content)

    def _parted_elsewhere(self, room: str, content: dict[str, object]) -> None:
        """An account parted the room on another node: its sessions here
        leave it too, without a word to the members (who were told)."""
        key = room.lower()
        target = self.rooms.get(key)
        user = str(content.get("user", ""))
        leaving = [session for session in self.sessions_of(user) if target is not None and session in target]
        if target is None or not leaving:
            return
        for session in leaving:
            target.remove(session)
            self._joined.get(session, {}).pop(key, None)
            session.notify("parted", {"room": target.name})
        self.directory.leave(key, user)
        self._unwatch_if_empty(key, target.name)

    def tell(self, user: str, info: dict[str, object]) -> None:
        """An ``info`` (``text`` and its keys) to this node's sessions of ``user``."""
        for session in self.sessions_of(user):
            session.notify("info", info)

    def tell_everywhere(self, user: str, room: str, info: dict[str, object]) -> None:
        """An ``info`` to every session of ``user``, on every node that
        reads ``room`` (one the user is in)."""
        self.tell(user, info)
        self.bus.announce_event(room, "told", {"user": user, **info})

    def room_event(self, room: str, kind: str, content: dict[str, object]) -> None:
        """A room event caused here: this node's members, then the others'."""
        self.receive_event(room, kind, content)
        self.bus.announce_event(room, kind, content)

    def modes_of(self, record: RoomRecord) -> dict[str, bool]:
        """The room's modes as the protocol shows them."""
        return record_modes(record, record.key)

    def _removed(self, room: str, event: dict[str, object]) -> None:
        key = room.lower()
        target = str(event.get("user", ""))
        reason, by, comment = event.get("reason"), event.get("by"), event.get("comment") or ""
        verb = "kicked from" if reason == "kicked" else "banned from"
        text = f"You were {verb} {room} by {by}" + (f": {comment}" if comment else "")
        sessions = self.sessions_of(target)
        for session in sessions:
            session.notify("info", {"text": text, "room": room, "by": by, "comment": comment})
        if key == DEFAULT_ROOM:
            for session in sessions:
                self.lobby.remove(session)  # no second offline when it closes
                close = getattr(session, "close_after_output", None)
                if close is not None:
                    close()
            members = self.lobby
        else:
            for session in sessions:
                self._joined.get(session, {}).pop(key, None)
            members_room = self.rooms.get(key)
            if members_room is not None:
                for session in sessions:
                    members_room.remove(session)
            if sessions:
                self._forget_membership(key, target)
            members = members_room if members_room is not None else Room(room)
        members.notify("presence", event)
        if key != DEFAULT_ROOM:
            self._unwatch_if_empty(key, room)

    def _forget_membership(self, key: str, name: str, parted: bool = True) -> None:
        """``name`` is no longer a listed member: the directory, a guest's
        roles, and an account's kept rooms if it ``parted`` (or was
        removed; not when its last session ended)."""
        self.directory.leave(key, name)
        lower = name.lower()
        record = self.directory.get(key)
        if self._is_account(lower):
            if parted and self.memberships is not None:
                self.memberships.remove_membership(lower, key)
        elif record is not None and (lower in record.ops or lower in record.voiced):
            d = self.directory.update(key, lambda current: current.with_op(lower, False).with_voice(lower, False))
            d.addErrback(lambda failure: self.log.failure("dropping {user}'s roles in {room} failed", failure, user=name, room=key))


def _after(delivery: Delivery, given: int) -> Delivery:
    """``delivery`` without its messages up to id ``given``."""
    kept = [(message, draft) for message, draft in zip(delivery.messages, delivery.drafts) if message.id > given]
    return Delivery(delivery.room, [message for message, _ in kept], [draft for _, draft in kept])


def record_modes(record: RoomRecord, key: str) -> dict[str, bool]:
    """The room's modes as the protocol shows them (``#lobby``'s are fixed)."""
    if key == DEFAULT_ROOM:
        return {"invite_only": False, "topic_ops": True, "moderated": False, "secret": False, "no_external": True}
    return dict(record.modes)


__all__ = ["DEFAULT_ROOM", "Hub", "Joined", "clean_text", "clean_topic", "is_valid_name", "record_modes"]



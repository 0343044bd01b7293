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
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd import messages
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
        return cls(clock, LocalHistory(store), LocalNames(), bus, max_message=max_message, metrics=metrics, directory=directory, **options)

    @property
    def lobby(self) -> Room:
        """The default room."""
        return self.rooms[DEFAULT_ROOM]

    def now(self) -> str:
        """The reactor's current time as a protocol timestamp."""
        return messages.format_timestamp(self.clock.seconds())

    def room_count(self) -> int:
        """Rooms that exist, ``#lobby`` included (the ``chatd_rooms`` gauge)."""
        return 1 + sum(1 for record in self.directory.records() if record.key != DEFAULT_ROOM)

    @staticmethod
    def check_name(name: Any) -> None:
        """``invalid_username`` or ``name_taken`` (reserved) for a bad name."""
        if not isinstance(name, str) or not _USERNAME.fullmatch(name):
            raise ChatError(
                messages.INVALID_USERNAME,
                "Invalid username: use 1 to 32 characters, each a letter A-Z or a-z or a digit 0-9.",
            )
        if name.lower() == messages.SERVER_SENDER:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is reserved.")

    # -- sessions ----------------------------------------------------------

    def login(self, session: ISession, name: Any) -> Deferred[str]:
        """Register ``session`` under ``name`` and enter the default room."""
        try:
            self.check_name(name)
        except ChatError:
            return fail()
        claimed = self.registry.claim(name, lambda: self._lost(session))
        return claimed.addCallback(lambda _: self._entered(session, name))

    def _lost(self, session: ISession) -> None:
        """The name went to a session elsewhere: ``session`` leaves without
        a word to anyone (the name is online, elsewhere), then ends."""
        if self.is_member(session):
            assert session.name is not None
            del self._sessions[session.name.lower()]
            for key in list(self._joined.pop(session, {})):
                self._leave_room(session, key, announce=False)
            self.lobby.remove(session)
        session.name_lost()

    def _entered(self, session: ISession, name: str) -> str:
        self._sessions[name.lower()] = session
        lobby = self.lobby
        lobby.add(session)
        lobby.announce(name, "online", session)
        self.bus.announce(name, "online", lobby.name)
        return name

    def logout(self, session: ISession) -> None:
        """Remove ``session``: its name is free at once, its rooms told."""
        if not self.is_member(session):
            return
        name = session.name
        assert name is not None
        del self._sessions[name.lower()]
        self.registry.release(name)
        for key in list(self._joined.pop(session, {})):
            self._leave_room(session, key)
        lobby = self.lobby
        if session in lobby:
            lobby.remove(session)
            lobby.announce(name, "offline", session)
            self.bus.announce(name, "offline", lobby.name)

    def is_member(self, session: ISession) -> bool:
        """Whether ``session`` is logged in on this node."""
        name = session.name
        return name is not None and self._sessions.get(name.lower()) is session

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
            return self.registry.names()
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

    def join(self, session: ISession, name: Any) -> Deferred[Joined]:
        """``session`` enters the room ``name``, created if new.

        Fires with what the answer needs: the record, the members and the
        history up to where delivery starts (None if already a member).
        """
        try:
            key = self.room_key(name)
            if key == DEFAULT_ROOM or self.in_room(session, key):
                record = self.record(name)
                return self.names(record.name).addCallback(lambda members: Joined(record, members, None))
            if len(self._joined.get(session, {})) >= self.max_rooms_per_user:
                raise ChatError(
                    messages.FORBIDDEN,
                    f"You are in {self.max_rooms_per_user} rooms already, the most one name may be in.",
                )
        except ChatError:
            return fail()
        d = self.directory.create(name, self.now())
        return d.addCallback(self._watch_room, session)

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
        room.add(session)
        self._joined.setdefault(session, {})[key] = None
        name = session.name
        assert name is not None
        d: Deferred[Any] = self.directory.members(key)
        d.addCallback(self._take_op_if_none, key, name)
        d.addCallback(lambda _: self.directory.enter(key, name))
        d.addCallback(lambda _: self._announce_entry(room, session, name))
        d.addCallback(lambda _: self._history_until(record.name, start))
        return d.addCallback(self._joined_answer, key)

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
        """Whether ``lower`` names an account (none yet: guests only)."""
        return False

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

    def part(self, session: ISession, name: Any, comment: str | None = None) -> RoomRecord:
        """``session`` leaves the room ``name`` (``invalid_room``,
        ``forbidden`` for ``#lobby``, ``no_such_room``, ``not_in_room``);
        the members' ``presence`` carries ``comment``, cleaned like a topic."""
        key = self.room_key(name)
        if key == DEFAULT_ROOM:
            raise ChatError(messages.FORBIDDEN, "Everyone stays in #lobby: it cannot be left.")
        record = self.record(name)
        if not self.in_room(session, key):
            raise not_in_room(record)
        self._joined.get(session, {}).pop(key, None)
        self._leave_room(session, key, comment=clean_topic(comment).strip() if comment else None)
        return record

    def _leave_room(self, session: ISession, key: str, announce: bool = True, comment: str | None = None) -> None:
        """``session`` leaves the room ``key``: presence, membership, a
        guest's roles; the bus stops delivering a room nobody here is in."""
        room = self.rooms.get(key)
        name = session.name
        if room is None or name is None or session not in room:
            return
        room.remove(session)
        self.directory.leave(key, name)
        lower = name.lower()
        record = self.directory.get(key)
        if record is not None and not self._is_account(lower) and (lower in record.ops or lower in record.voiced):
            d = self.directory.update(key, lambda current: current.with_op(lower, False).with_voice(lower, False))
            d.addErrback(lambda failure: self.log.failure("dropping {user}'s roles in {room} failed", failure, user=name, room=key))
        if announce and comment:
            content: dict[str, object] = {"user": name, "status": "offline", "room": room.name, "comment": comment}
            room.notify("presence", content)
            self.bus.announce_event(room.name, "presence", content)
        elif announce:
            room.announce(name, "offline", session)
            self.bus.announce(name, "offline", room.name)
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

        return self.registry.names().addCallback(with_lobby)

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

    def post(self, session: ISession, text: str, room: str | None = None, to: str | None = None) -> Draft:
        """Validate ``text`` from ``session`` for ``room`` (default
        ``#lobby``) or for the name ``to``, and have it stored, then
        delivered.  Raises ``ChatError`` with the section 6 codes, in
        their order, then section 4's."""
        sender = session.name
        assert sender is not None
        if to is not None:
            recipient = self._recipient(to)
            draft = Draft(dm_key(sender, recipient), sender, self.checked_text(text), self.now(), session, to=recipient)
        else:
            target = DEFAULT_ROOM if room is None else self._postable(session, room)
            draft = Draft(target, sender, self.checked_text(text), self.now(), session)
        self.bus.publish(draft)
        return draft

    def _postable(self, session: ISession, name: str) -> str:
        """The canonical name of a room ``session`` may post to."""
        record = self.record(name)
        if record.key == DEFAULT_ROOM:
            return DEFAULT_ROOM
        member = self.in_room(session, record.key)
        if not member and record.modes.get("no_external", True):
            raise not_in_room(record)
        if record.modes.get("moderated"):
            lower = (session.name or "").lower()
            if lower not in record.ops and lower not in record.voiced:
                raise ChatError(messages.MUTED, f"{record.name} is moderated: only its operators and voiced users may talk.")
        return record.name

    def _recipient(self, to: str) -> str:
        """The canonical name of a DM's recipient (``no_such_user``)."""
        if not is_valid_name(to):
            raise ChatError(messages.NO_SUCH_USER, f"No such user: {to[:40]!r} is not a valid name.")
        holder = self._sessions.get(to.lower())
        if holder is not None and getattr(holder, "version", 1) >= 2:
            return str(holder.name)
        if holder is None and self.bus.remote:
            return str(to)  # perhaps on another node: the bus finds out
        raise ChatError(messages.NO_SUCH_USER, f"No such user: {to} is not online.")

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
        for lower in dm_parties(delivery.room):
            session = self._sessions.get(lower)
            if session is None or getattr(session, "version", 1) < 2:
                continue
            try:
                session.deliver(delivery)
            except Exception:
                self.log.failure("delivering a direct message to {user} failed", user=session.name)
            delivered += len(delivery.messages)
        self.metrics.deliveries.inc(delivered)

    def receive_presence(self, user: str, status: str, room: str) -> None:
        """Another node's user came or went."""
        target = self.rooms.get(room.lower())
        if target is not None:
            target.announce(user, status)

    def receive_event(self, room: str, kind: str, content: dict[str, object]) -> None:
        """A room event (here or from another node): to this node's members."""
        target = self.rooms.get(room.lower())
        if target is not None:
            target.notify(kind, content)


def record_modes(record: RoomRecord, key: str) -> dict[str, bool]:
    """The room's modes as the protocol shows them (``#lobby``'s are fixed)."""
    if key == DEFAULT_ROOM:
        return {"invite_only": False, "topic_ops": True, "moderated": False, "secret": False, "no_external": True}
    return dict(record.modes)


__all__ = ["DEFAULT_ROOM", "Hub", "Joined", "clean_text", "clean_topic", "is_valid_name", "record_modes"]



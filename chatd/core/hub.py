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

Fan-out: a stored batch is handed to each member of its room once
(:meth:`Room.deliver <chatd.core.rooms.Room.deliver>`); front-ends encode
it once per wire format.  Nothing here is module-level: a test may build
as many hubs as it likes.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd import messages
from chatd.core.rooms import LOBBY, Delivery, Draft, Room
from chatd.interfaces import IChatCore, IHistory, IMessageBus, INameRegistry, IReceiver, ISession
from chatd.messages import ChatError
from chatd.metrics import Metrics
from chatd.stores.history import HistoryStore, StoredMessage

#: The room every session enters at login.
DEFAULT_ROOM = LOBBY

_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
# Unicode category Cc except \t (U+0009) and \n (U+000A).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """Remove control characters other than newline and tab."""
    return _CONTROL.sub("", text)


@implementer(IChatCore, IReceiver)
class Hub:
    """Sessions, rooms and messages, over a name registry, a bus and history."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        history: IHistory,
        names: INameRegistry,
        bus: IMessageBus,
        max_message: int = 2000,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock
        self.history = history
        self.registry = names
        self.bus = bus
        self.max_message = max_message
        self.metrics = metrics if metrics is not None else Metrics()
        # This node's sessions, keyed by the lower-cased name.
        self._sessions: dict[str, ISession] = {}
        self.rooms: dict[str, Room] = {DEFAULT_ROOM: Room(DEFAULT_ROOM)}
        bus.subscribe(self)

    @classmethod
    def local(cls, clock: IReactorTime, store: HistoryStore, max_message: int = 2000, metrics: Metrics | None = None) -> Hub:
        """A single node's hub: names in memory, messages in ``store``."""
        from chatd.core.local import LocalBus, LocalHistory, LocalNames

        metrics = metrics if metrics is not None else Metrics()
        bus = LocalBus(clock, store, metrics)
        return cls(clock, LocalHistory(store), LocalNames(), bus, max_message=max_message, metrics=metrics)

    @property
    def lobby(self) -> Room:
        """The default room."""
        return self.rooms[DEFAULT_ROOM]

    def now(self) -> str:
        """The reactor's current time as a protocol timestamp."""
        return messages.format_timestamp(self.clock.seconds())

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
            for room in self.rooms.values():
                room.remove(session)
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
        for room in self.rooms.values():
            if session in room:
                room.remove(session)
                room.announce(name, "offline", session)
                self.bus.announce(name, "offline", room.name)

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
        """The names in the default room, in login order (every node's)."""
        return self.registry.names()

    # -- history -----------------------------------------------------------

    def recent(self, room: str, limit: int | None) -> Deferred[list[StoredMessage]]:
        """The newest ``limit`` stored messages of ``room``, oldest first."""
        return self.history.recent(room, limit)

    def page(self, room: str, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A page of ``room``'s history (see :meth:`IHistory.page`)."""
        return self.history.page(room, before, after, limit)

    # -- messages ----------------------------------------------------------

    def post(self, session: ISession, text: str) -> Draft:
        """Validate ``text`` from ``session`` and have it stored, then delivered."""
        assert session.name is not None
        draft = Draft(DEFAULT_ROOM, session.name, self.checked_text(text), self.now(), session)
        self.bus.publish(draft)
        return draft

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
        """A stored batch: to every member of its room."""
        room = self.rooms.get(delivery.room)
        if room is not None:
            self.metrics.deliveries.inc(room.deliver(delivery))

    def receive_presence(self, user: str, status: str, room: str) -> None:
        """Another node's user came or went."""
        target = self.rooms.get(room)
        if target is not None:
            target.announce(user, status)

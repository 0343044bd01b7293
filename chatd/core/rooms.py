"""Rooms, like twisted.words' ``Group``: ordered members, presence, fan-out.

A :class:`Draft` is a message accepted from a session and not yet stored;
the bus stores it and hands the core a :class:`Delivery`: one batch of a
room's stored messages in id order, with the draft each came from (None
for messages posted on another node).  :class:`Room` writes a delivery to
each member once; the members (front-ends) encode it once per wire format
and keep their own correlation (a JSON ``ref``) by draft.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from chatd.interfaces import ISession
    from chatd.stores.history import StoredMessage

#: The room every session is in from login to logout; the only place it
#: is named (the default room is chosen in :class:`chatd.core.hub.Hub`).
LOBBY = "#lobby"

#: A room name (PROTOCOL.md section 6.2), matched whole.
ROOM_NAME = re.compile(r"#[A-Za-z0-9_-]{1,48}")
ROOM_NAME_LENGTH = 48

#: A conversation's key starts with this (room names start with ``#``).
DM_PREFIX = "@"


def dm_key(first: str, second: str) -> str:
    """The key of the conversation between two names, in either order:
    ids count per key, and history is kept under it."""
    return DM_PREFIX + " ".join(sorted((first.lower(), second.lower())))


def dm_parties(key: str) -> list[str]:
    """The lower-cased names of a conversation's key (one, to oneself)."""
    return sorted(set(key[len(DM_PREFIX):].split(" ")))


def is_dm(room: str) -> bool:
    """Whether ``room`` is a conversation's key."""
    return room.startswith(DM_PREFIX)


@dataclass(eq=False)
class Draft:
    """A message accepted from ``origin`` for ``room``, on its way to be
    stored.

    The bus settles it (:meth:`settle`) once it has been delivered on
    this node, or could not be stored; the origin session is told
    directly (``draft_settled``), and :attr:`stored` offers the same as a
    Deferred to whoever asks (made only then: a burst of messages needs
    no Deferred each).
    """

    room: str  # a room's canonical name, or a conversation's key (dm_key)
    sender: str
    text: str
    timestamp: str
    origin: Any = None  # the ISession that posted it
    to: str | None = None  # a direct message's recipient
    owners: tuple[str, ...] = ()  # a DM's sides that are accounts: kept for them
    offline: bool = False  # a DM to an account with no session
    notice: bool = False  # an IRC NOTICE (PROTOCOL.md section 7.1)
    awaited: bool = False  # the origin waits for it (set by the session)
    settled: bool = False
    result: Any = field(default=None, repr=False)  # the StoredMessage, or a Failure
    _stored: Deferred[StoredMessage] | None = field(default=None, repr=False)

    @property
    def stored(self) -> Deferred[StoredMessage]:
        """Fires with the stored message once delivered on this node, or
        fails if it could not be stored."""
        if self._stored is None:
            self._stored = Deferred()
            if self.settled:
                self._fire()
        return self._stored

    def settle(self, result: StoredMessage | Failure | BaseException) -> None:
        """The bus is done with it: stored (``result`` the message) or not
        (a failure)."""
        if self.settled:
            return
        self.settled = True
        self.result = Failure(result) if isinstance(result, BaseException) else result
        notify = getattr(self.origin, "draft_settled", None)
        if notify is not None:
            notify(self)
        if self._stored is not None:
            self._fire()

    def _fire(self) -> None:
        assert self._stored is not None
        if isinstance(self.result, Failure):
            self._stored.errback(self.result)
        else:
            self._stored.callback(self.result)


class Delivery:
    """One stored batch of a room: messages in id order, and the draft
    each came from on this node (None: posted elsewhere).

    Front-ends encode a batch once and write the same bytes to each of
    their members: :meth:`encoded` keeps each encoding by name.
    """

    __slots__ = ("room", "messages", "drafts", "cached", "_posters")

    def __init__(self, room: str, messages: list[StoredMessage], drafts: list[Draft | None]) -> None:
        self.room = room
        self.messages = messages
        self.drafts = drafts
        self.cached: dict[str, Any] = {}
        self._posters = {id(draft.origin) for draft in drafts if draft is not None}

    def posted_by(self, session: object) -> bool:
        """Whether ``session`` posted any message of this batch."""
        return id(session) in self._posters

    def encoded(self, name: str, encode: Callable[[list[StoredMessage]], Any]) -> Any:
        """``encode(messages)``, computed once per batch under ``name``."""
        try:
            return self.cached[name]
        except KeyError:
            value = self.cached[name] = encode(self.messages)
            return value


class Room:
    """A room's members, in the order they entered, and its fan-out."""

    log = Logger()

    def __init__(self, name: str) -> None:
        self.name = name
        # Keyed by identity; dict order is the order they entered.
        self._members: dict[int, ISession] = {}

    @property
    def key(self) -> str:
        """The name compared case-insensitively."""
        return self.name.lower()

    def add(self, session: ISession) -> None:
        """``session`` enters the room."""
        self._members[id(session)] = session

    def remove(self, session: ISession) -> None:
        """``session`` leaves the room (nothing if it was not in it)."""
        self._members.pop(id(session), None)

    def __contains__(self, session: object) -> bool:
        return id(session) in self._members

    def __len__(self) -> int:
        return len(self._members)

    def members(self) -> list[ISession]:
        """The members now, in the order they entered."""
        return list(self._members.values())

    def deliver(self, delivery: Delivery) -> int:
        """Hand ``delivery`` to every member; how many messages went out.

        One member that fails (a bug, a transport in a state nobody
        foresaw) is logged and skipped: every other member still gets the
        batch, and the bus still settles its drafts.
        """
        # A member may leave while we deliver: iterate over a snapshot.
        recipients = list(self._members.values())
        for session in recipients:
            try:
                session.deliver(delivery)
            except Exception:
                self.log.failure("delivering to {user} in {room} failed", user=session.name, room=self.name)
        return len(delivery.messages) * len(recipients)

    def announce(self, user: str, status: str, subject: object = None) -> None:
        """Tell every member but ``subject`` (and the other sessions of
        ``user``'s name) that ``user`` came or went."""
        lower = user.lower()
        for session in list(self._members.values()):
            if session is not subject and (session.name or "").lower() != lower:
                session.presence(user, status, self.name)

    def notify(self, kind: str, content: dict[str, Any], skip_name: str | None = None) -> None:
        """Tell every member an event of the room (``topic``, ...), but
        the sessions of ``skip_name`` (a presence about that name)."""
        skip = skip_name.lower() if skip_name is not None else None
        for session in list(self._members.values()):
            if skip is not None and (session.name or "").lower() == skip:
                continue
            try:
                session.notify(kind, content)
            except Exception:
                self.log.failure("telling {user} of {kind} in {room} failed", user=session.name, kind=kind, room=self.name)

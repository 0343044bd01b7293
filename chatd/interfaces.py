"""The contracts between chatd's layers, written down.

In the spirit of ``twisted/words/iwords.py``: front-ends (JSON over TCP,
TLS and WebSocket; IRC later) talk to the chat core (:class:`IChatCore`)
on behalf of sessions (:class:`ISession`); the core is built from parts
that exist locally (memory, SQLite) or in Redis (a cluster):
:class:`IHistory`, :class:`INameRegistry` and :class:`IMessageBus`.

Async-ness is part of each contract: every core call that may need
another node answers with a ``Deferred``, locally an already-fired one
(``succeed()``), so a front-end is written once for both.  Errors meant
for the user arrive as :class:`chatd.messages.ChatError` failures; a
store or cluster that cannot answer as :class:`chatd.stores.history.HistoryError`
(or a ``ChatError`` with code ``server_busy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from chatd.core.rooms import Delivery, Draft
    from chatd.stores.history import Retention, StoredMessage
    from chatd.stores.roomstate import RoomRecord


class ISession(Interface):
    """A logged-in connection, as the core sees it (any front-end).

    The core calls these to hand a session what it must send; the
    session encodes it in its own wire format.
    """

    name = Attribute("The name it logged in with (str), or None.")
    version = Attribute(
        "The protocol version it speaks (int): 1 sessions are in #lobby only and get no DM or room event."
    )

    def deliver(delivery: Delivery) -> None:
        """Messages stored and ordered for a room this session is in.

        ``delivery`` is a :class:`chatd.core.rooms.Delivery`: the
        messages of one batch, in id order, and for each the local
        session that posted it (or None), so a front-end can encode the
        batch once and answer its own messages specially.
        """

    def presence(user: str, status: str, room: str) -> None:
        """``user`` came (``online``) or went (``offline``) in ``room``."""

    def notify(kind: str, content: dict[str, object]) -> None:
        """An event of a room this session is in: ``kind`` is ``topic``
        (content ``room``, ``topic``, ``by``); more come with moderation."""

    def name_lost() -> None:
        """The name went to a session elsewhere (a cluster node that was cut
        off): the session must end."""

    def draft_settled(draft: Draft) -> None:
        """A message this session posted was stored and delivered on this
        node (``draft.result`` is the stored message), or could not be
        stored (a Failure)."""


class IChatCore(Interface):
    """The chat: sessions, rooms and messages.  Knows no wire format."""

    def login(session: ISession, name: object) -> Deferred[str]:
        """Register ``session`` under ``name`` and enter the default room.

        A Deferred firing with the name as given, or failing with a
        ``ChatError`` (``invalid_username``, ``name_taken``,
        ``server_busy``).
        """

    def logout(session: ISession) -> None:
        """Remove ``session``: its name is free at once, its rooms told."""

    def names(room: str) -> Deferred[list[str]]:
        """A Deferred: the names in ``room``, in the order they entered it
        (every node's, when clustered)."""

    def post(session: ISession, text: str) -> Draft:
        """Accept ``text`` from ``session`` for the default room.

        Raises ``ChatError`` at once for a text that is not acceptable.
        Otherwise returns the :class:`chatd.core.rooms.Draft`, settled
        once the message is stored *and* delivered to this node's sessions
        (the poster's own copy included: it finds the draft in that
        delivery), or could not be stored (``HistoryError``,
        ``ChatError``): the session hears it through
        :meth:`ISession.draft_settled`; ``draft.stored`` gives the same as
        a Deferred.
        """

    def recent(room: str, limit: int | None) -> Deferred[list[StoredMessage]]:
        """A Deferred: the newest ``limit`` messages of ``room`` (all if
        None), oldest first."""

    def page(room: str, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A Deferred: ``(messages, more)``, a page of ``room``'s history
        (see :meth:`IHistory.page`)."""

    def flush() -> None:
        """Store and deliver what is pending now (at shutdown)."""


class IHistory(Interface):
    """Reading history, and the store's life (open, prune, close)."""

    kind = Attribute("What keeps it, for /health: 'memory', 'sqlite', 'redis'.")

    def recent(room: str, limit: int | None) -> Deferred[list[StoredMessage]]:
        """A Deferred: the newest ``limit`` stored messages, oldest first."""

    def page(room: str, before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
        """A Deferred: ``(messages, more)``.  With ``after``: the oldest
        ``limit`` with a greater id (``more``: newer exist); with
        ``before``: the newest ``limit`` with a smaller id (``more``: older
        exist); with neither, the newest ``limit``."""

    def check() -> None:
        """Raise ``HistoryError`` unless the store can read and write now."""

    def open() -> None:
        """Open (or reopen, after twistd forked) the store."""

    def prune(retention: Retention, now: float) -> int:
        """Drop what ``retention`` no longer keeps; how many were dropped."""

    def close() -> None:
        """Release the store (what is pending is stored first)."""


class INameRegistry(Interface):
    """Who holds which name: unique case-insensitively, in login order."""

    def claim(name: str, on_lost: Callable[[], None]) -> Deferred[None]:
        """A Deferred that fires once ``name`` is ours, or fails with
        ``ChatError`` (``name_taken``, ``server_busy``).  ``on_lost()`` is
        called if the name is later taken from us (a cluster node that
        was cut off)."""

    def release(name: str) -> None:
        """Give ``name`` up (at once locally; as soon as possible remotely)."""

    def names() -> Deferred[list[str]]:
        """A Deferred: every name held, in login order."""


class IMessageBus(Interface):
    """Gives messages their ids and order, stores them, and hands them to
    every node's core for delivery."""

    def subscribe(receiver: IReceiver) -> None:
        """Hand stored messages and presence to ``receiver`` from now on."""

    def publish(draft: Draft) -> None:
        """Store a :class:`chatd.core.rooms.Draft` and have it delivered.

        The draft is settled (:meth:`Draft.settle <chatd.core.rooms.Draft.settle>`)
        with the stored message once it has been delivered on this node
        (``receiver.receive`` returned), or with a failure
        (``HistoryError``, ``ChatError``) if it could not be stored.
        Messages published in one reactor turn form one batch.
        """

    def announce(user: str, status: str, room: str) -> None:
        """Tell the *other* nodes' sessions in ``room`` that ``user`` came or
        went (the core tells this node's own; a single node has no others)."""

    def announce_event(room: str, kind: str, content: dict[str, object]) -> None:
        """Tell the *other* nodes' sessions in ``room`` of a room event."""

    def watch(room: str) -> Deferred[int]:
        """This node has a member in ``room`` (a canonical name) from now:
        deliver its messages.  Fires with the id of the newest message
        that will *not* be delivered (history up to it is read instead),
        so a joiner misses nothing and sees nothing twice."""

    def unwatch(room: str) -> None:
        """This node has no member left in ``room``: stop delivering it."""

    remote = Attribute(
        "Whether other nodes may hold sessions (bool): then a direct message to a name not held here is"
        " published, and the bus refuses it (no_such_user) if nobody holds the name."
    )

    def flush() -> None:
        """Publish what is pending now (at shutdown)."""


class IRoomDirectory(Interface):
    """Rooms' lasting state and who is in them (every node's members).

    Reads of records are synchronous, from what this node holds (every
    room's record: rooms are few and their records small); changes and
    membership may need another node, so they answer with Deferreds.
    """

    def get(key: str) -> RoomRecord | None:
        """The record of the room named ``key`` (lower-cased), if it exists."""

    def records() -> list[RoomRecord]:
        """Every room's record."""

    def create(name: str, created: str) -> Deferred[RoomRecord]:
        """The room named ``name``, created with that spelling if it is new
        (if another creation won, its record)."""

    def update(key: str, change: Callable[[RoomRecord], RoomRecord]) -> Deferred[RoomRecord]:
        """Apply ``change`` to the room's record and keep the result."""

    def enter(key: str, name: str) -> Deferred[None]:
        """``name`` is now a member of the room (after those already in)."""

    def leave(key: str, name: str) -> None:
        """``name`` is no longer a member."""

    def members(key: str) -> Deferred[list[str]]:
        """The room's members with a session now, in the order they entered."""

    def counts() -> Deferred[dict[str, int]]:
        """Members with a session now, per room key (rooms without any left out)."""


class IReceiver(Interface):
    """What a bus hands its messages to: the core."""

    def receive(delivery: Delivery) -> None:
        """A stored batch (a :class:`chatd.core.rooms.Delivery`) to fan out."""

    def receive_presence(user: str, status: str, room: str) -> None:
        """Presence announced by another node."""

    def receive_event(room: str, kind: str, content: dict[str, object]) -> None:
        """A room event announced by another node (see :meth:`ISession.notify`)."""

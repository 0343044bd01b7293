"""The model of rooms and direct messages for tests/test_stateful.py.

PROTOCOL.md sections 6.1-6.3 restated, written from the spec and not from
the server (the model must be able to disagree with it): room and user
name rules, topic cleaning, token buckets, ``history`` paging; the
requests the state machine sends (good names from a small pool in mixed
case, bad names, wrong types); the model of a connection (:class:`Peer`)
and of a room (:class:`RoomModel`); and :class:`RoomPlans`, which plans a
section 6 request: its outcome, in section 6.7's order of checks, applied
to the model, and what each connection gets for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.task import Clock

from tests.support import FakeClient

LOBBY = "#lobby"
#: ``--max-message`` in the machine.
MAX_MESSAGE = 50
#: A room name (section 6.2), matched whole.
ROOM_NAME = re.compile(r"#[A-Za-z0-9_-]{1,48}")
#: A name a ``to`` may give: a JSON username or an IRC nick (section 6.4).
VALID_NAME = re.compile(r"[A-Za-z0-9]{1,32}|[A-Za-z_][A-Za-z0-9_-]{0,31}")
#: Unicode category Cc but ``\t`` and ``\n``.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MAX_TOPIC = 390
#: ``--max-rooms-per-user`` in the machine: small, so the limit is reached.
MAX_ROOMS = 3
#: ``--history-on-login``, which a ``join`` also sends.
HISTORY_ON_JOIN = 100
#: A new room's modes (section 6.2).
NEW_MODES = {"invite_only": False, "topic_ops": True, "moderated": False, "secret": False, "no_external": True}
NEEDS_HELLO = "Send hello first: this request needs protocol 2."

#: Four rooms in mixed spellings (one more than MAX_ROOMS), the longest name included.
ROOMS = ["#dev", "#Dev", "#DEV", "#ops", "#Ops", "#a_b-9", "#A_B-9", "#" + "z" * 48]
LOBBY_SPELLINGS = ["#lobby", "#Lobby", "#LOBBY"]
#: Strings that are no room name.
BAD_ROOMS = ["dev", "#", "", "#" + "a" * 49, "#dev\n", "#de v", "#d\u00e9v", " #dev", "#dev#", "lobby"]
#: Room names for a join: good ones mostly.
JOIN_TARGETS = ROOMS * 3 + LOBBY_SPELLINGS[:2] + BAD_ROOMS[:5]
#: Room names for the other requests: also a room nobody ever creates.
TARGETS = ROOMS * 2 + LOBBY_SPELLINGS + ["#nowhere"] + BAD_ROOMS
#: Recipients of a direct message: the names the machine logs in with (in
#: other cases too), names nobody has, names no user may have.  SELF is
#: the sender's own name, in another case.
SELF = "<self>"
RECIPIENTS = ["alice", "ALICE", "bob", "Carol", "dave", "ann", "Ben", "cat", "a_b-c", "zed",
              "server", "bad name", "", "x" * 33, "d\u00e9j\u00e0", SELF, SELF]
TOPICS = ["Release 0.5", "", "multi\nline\ttab", "\x07", "   ", "x" * MAX_TOPIC, "x" * (MAX_TOPIC + 1),
          "\t" * (MAX_TOPIC + 1), "y" * (MAX_TOPIC - 1) + "\x07\x07", "\u00e9\U0001f600"]

#: Requests whose shape is wrong (section 6.7: ``bad_request`` before
#: anything else, logged in or not): request, content, top-level keys.
BAD_SHAPES: list[tuple[str, Any, dict[str, Any]]] = [
    ("join", None, {}), ("join", 5, {}), ("join", ["#dev"], {}), ("join", {"room": 5}, {}), ("join", {}, {}),
    ("join", True, {}), ("join", {"room": None}, {}),
    ("part", None, {}), ("part", {"room": None}, {}), ("part", {"room": "#dev", "comment": 5}, {}), ("part", [], {}),
    ("topic", "#dev", {}), ("topic", None, {}), ("topic", {"room": 5}, {}), ("topic", {"topic": "x"}, {}),
    ("topic", {"room": "#dev", "topic": 5}, {}), ("topic", {"room": "#lobby", "topic": ["x"]}, {}),
    ("names", {"room": 3}, {}), ("names", {"room": ["#dev"]}, {}),
    ("msg", "hi", {"room": 5}), ("msg", "hi", {"room": ["#dev"]}), ("msg", "hi", {"to": 5}), ("msg", "hi", {"to": ["bob"]}),
    ("msg", "hi", {"room": "#dev", "to": "bob"}), ("msg", "hi", {"room": "#lobby", "to": "ann"}),
    ("msg", 5, {"room": "#dev"}), ("msg", None, {"to": "ann"}),
    ("history", {"room": 5}, {}), ("history", {"with": 5}, {}), ("history", {"room": "#dev", "with": "ann"}, {}),
    ("history", {"room": "#dev", "before": 1, "after": 2}, {}), ("history", {"with": "ann", "limit": "3"}, {}),
]
#: Requests of protocol 2 only, well formed: ``forbidden`` from a logged-in
#: connection that never sent hello (section 6.1), whatever they name.
V2_ONLY: list[tuple[str, Any, dict[str, Any]]] = [
    ("join", "#dev", {}), ("join", {"room": "#lobby"}, {}), ("join", "bad", {}), ("part", "#dev", {}),
    ("part", "#lobby", {}), ("rooms", None, {}), ("topic", {"room": "#lobby"}, {}),
    ("topic", {"room": "#dev", "topic": "t"}, {}), ("msg", "hi", {"room": "#dev"}), ("msg", "", {"room": "bad"}),
    ("msg", "hi", {"to": "ann"}), ("msg", "hi", {"to": "nobody here"}), ("names", {"room": "#dev"}, {}),
    ("names", {"room": "dev"}, {}), ("history", {"room": "#dev"}, {}), ("history", {"room": "#nowhere", "after": 1}, {}),
    ("history", {"with": "ann"}, {}), ("history", {"with": "ann", "before": 5}, {}),
]


#: What a response is, for counting (see test_stateful.signature).
Signature = tuple[Any, ...]


def is_room_name(name: str) -> bool:
    """Whether ``name`` is a room name."""
    return ROOM_NAME.fullmatch(name) is not None


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a name a user may have (``to``)."""
    return VALID_NAME.fullmatch(name) is not None and name.lower() != "server"


def clean_text(text: str) -> str:
    """``msg`` text as section 4 cleans it."""
    return CONTROL.sub("", text)


def clean_topic(text: str) -> str:
    """A topic as section 6.2 cleans it."""
    return clean_text(text).replace("\n", " ").replace("\t", " ")


def thread(response: dict[str, Any]) -> str:
    """Where a ``message`` belongs: its room's key, or its conversation."""
    if "to" in response:
        return conversation(response["sender"], response["to"])
    return str(response.get("room", LOBBY)).lower()


def conversation(first: str, second: str) -> str:
    """The model's key of the conversation between two names, in either order."""
    return "@" + " ".join(sorted((first.lower(), second.lower())))


def page_of(ids: list[int], before: int | None, after: int | None, limit: int | None) -> tuple[list[int], bool]:
    """A ``history`` page of ``ids`` (section 5) and its ``more``."""
    size = max(1, min(500, 100 if limit is None else limit))
    if after is not None:
        newer = [i for i in ids if i > after]
        return newer[:size], len(newer) > size
    older = ids if before is None else [i for i in ids if i < before]
    return older[-size:], len(older) > size


class Bucket:
    """A token bucket as section 4 gives it: ``burst`` tokens, refilled at
    ``rate`` per second; a request that finds a token and is accepted
    takes it, a refused one takes none.

    The clock runs at epoch values, where 0.1 s elapsed comes out as
    0.09999999 s: the server accepts a token short by up to
    :data:`TOLERANCE`, and the model does the same sums in the same order
    (refilled whenever a request looks, as the server does), so that the
    rounding falls the same way on both sides.
    """

    TOLERANCE = 1e-6

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def available(self, now: float) -> bool:
        """Whether a request now finds a token (it takes none)."""
        self._refill(now)
        return self.tokens >= 1 - self.TOLERANCE

    def take(self, now: float) -> None:
        """An accepted request takes its token."""
        self._refill(now)
        self.tokens -= 1


@dataclass(eq=False)
class RoomModel:
    """A room other than ``#lobby``: it is never deleted."""

    name: str  # its creator's spelling
    members: list[Peer] = field(default_factory=list)  # in join order
    ops: set[str] = field(default_factory=set)  # lower-cased names
    topic: str = ""
    topic_by: str | None = None
    stored: list[int] = field(default_factory=list)  # ids of its messages

    def names(self) -> list[str]:
        """The members' names, in join order."""
        return [str(member.name) for member in self.members]

    def op_names(self) -> list[str]:
        """The names of the members that are op, in join order."""
        return [name for name in self.names() if name.lower() in self.ops]

    def has_op(self) -> bool:
        """Whether a member is op (else the next joiner becomes op)."""
        return any(str(member.name).lower() in self.ops for member in self.members)

    def leave(self, peer: Peer) -> None:
        """``peer`` leaves: a guest's op ends with it."""
        self.members.remove(peer)
        self.ops.discard(str(peer.name).lower())


@dataclass(eq=False)
class Peer:
    """The model of one connection."""

    client: FakeClient
    host: str
    timer_from: float  # when the login timeout started (connect, logout)
    rate: Bucket  # msg
    churn: Bucket  # join, part, a topic that sets
    name: str | None = None
    v2: bool = False
    paused: bool = False
    rooms: list[str] = field(default_factory=list)  # keys of the rooms joined, in order (#lobby not counted)
    seen: dict[str, list[int]] = field(default_factory=dict)  # message ids received, per room or conversation


@dataclass(eq=False)
class Planned:
    """A request whose outcome the model has applied: what to send, what
    each connection gets for it, and a check of the sender's answers."""

    kind: str
    content: Any
    extra: dict[str, Any]  # top-level keys besides request and content
    expected: dict[Peer, list[Signature]]
    error: str | None = None  # the error code it gets, if any
    check: Callable[[list[dict[str, Any]]], None] | None = None  # given the sender's answers to it
    # A message stored at the end of a turn (together): who gets it then.
    audience: Callable[[], dict[Peer, list[Signature]]] | None = None


def in_request_order(turns: list[int], answers: list[dict[str, Any]]) -> bool:
    """Whether answers come in the order of their requests (``turns``:
    the request each answers), echoes of messages to different rooms and
    DMs in one stored batch included (core/session.py promises request
    order; the bus delivers a batch in runs of one room, in order)."""
    return turns == sorted(turns)


def affirm(condition: bool, detail: object) -> None:
    """``assert``, as an expression (for a lambda)."""
    assert condition, detail


def history_ids(response: dict[str, Any]) -> list[int]:
    """Message ids of a ``history`` response (v1: JSON strings, v2: objects)."""
    return [entry_of(entry)["id"] for entry in response["content"]]


def entry_of(entry: Any) -> dict[str, Any]:
    """A ``history`` entry as an object (v1 sends each as a JSON string)."""
    return json.loads(entry) if isinstance(entry, str) else dict(entry)


class RoomPlans:
    """Plans section 6 requests against the model (mixed into the state
    machine, whose state these are), to be sent by its ``run``.

    Planning checks a request as section 6.7 orders the checks, applies
    its outcome to the model and says what each connection gets.  What an
    answer says is taken when it is planned: a slow reader dropped during
    the step leaves only after the answer was written.
    """

    rooms: dict[str, RoomModel]  # rooms but #lobby, by key: never deleted
    order: list[Peer]  # logged in, in login order
    stored: list[int]  # ids of #lobby's messages
    dms: dict[str, list[int]]  # ids of each conversation (conversation())
    clock: Clock
    # While requests of one reactor turn are planned (the together rule):
    # the ids of each room or conversation not stored yet, by key.
    _pending: dict[str, list[int]] | None = None

    def gate(self, peer: Peer, v2_only: bool) -> str | None:
        """The checks every well-formed request passes first (section 6.7):
        ``not_logged_in``, then ``forbidden`` for protocol 2 without hello."""
        if peer.name is None:
            return "not_logged_in"
        if v2_only and not peer.v2:
            return "forbidden"
        return None

    def bucket_error(self, peer: Peer, bucket: Bucket) -> str | None:
        """``rate_limited`` if ``bucket`` (``peer.rate``: msg; ``peer.churn``:
        join, part, a topic that sets) has no token now."""
        return None if bucket.available(self.clock.seconds()) else "rate_limited"

    def room_error(self, peer: Peer, room: str, member: bool) -> str | None:
        """A room's own errors (section 6.2): ``invalid_room``,
        ``no_such_room``, and ``not_in_room`` where membership is needed
        (every logged-in session is in ``#lobby``)."""
        if not is_room_name(room):
            return "invalid_room"
        key = room.lower()
        if key == LOBBY:
            return None
        existing = self.rooms.get(key)
        if existing is None:
            return "no_such_room"
        if member and peer not in existing.members:
            return "not_in_room"
        return None

    def recipient(self, peer: Peer, to: str) -> str:
        """A ``to`` or ``with`` of RECIPIENTS: SELF is the sender's own name,
        in other cases."""
        return (peer.name or "ann").swapcase() if to == SELF else to

    def refusal(self, peer: Peer, kind: str, content: Any, extra: dict[str, Any], code: str) -> Planned:
        """A request that gets the error ``code``, and nothing else happens."""
        return Planned(kind, content, extra, {peer: [("error", code)]}, error=code)

    def plan_join(self, peer: Peer, room: str, as_object: bool) -> Planned:
        content = {"room": room} if as_object else room
        key = room.lower()
        existing = self.rooms.get(key)
        already = key == LOBBY or (existing is not None and peer in existing.members)
        error = self.gate(peer, v2_only=True) or self.bucket_error(peer, peer.churn)
        if error is None and not is_room_name(room):
            error = "invalid_room"
        if error is None and not already and len(peer.rooms) >= MAX_ROOMS:
            error = "forbidden"
        if error is not None:
            return self.refusal(peer, "join", content, {}, error)
        assert peer.name is not None
        peer.churn.take(self.clock.seconds())
        if key == LOBBY:
            # Everyone is in #lobby: the info alone, its modes fixed, no op.
            names = [str(p.name) for p in self.order]
            return Planned(
                "join", content, {}, {peer: [("info", "join", LOBBY)]},
                check=lambda answers: self.check_join_info(answers[0], LOBBY, names, [], ""),
            )
        if already:
            assert existing is not None
            name, names, ops, topic = existing.name, existing.names(), existing.op_names(), existing.topic
            return Planned(
                "join", content, {}, {peer: [("info", "join", name)]},
                check=lambda answers: self.check_join_info(answers[0], name, names, ops, topic),
            )
        if existing is None:
            existing = self.rooms[key] = RoomModel(room)  # the creator's spelling
        if not existing.has_op():
            existing.ops.add(peer.name.lower())
        expected: dict[Peer, list[Signature]] = {
            member: [("presence", peer.name, "online", existing.name)] for member in existing.members if member.v2
        }
        existing.members.append(peer)
        peer.rooms.append(key)
        name, names, ops, topic = existing.name, existing.names(), existing.op_names(), existing.topic
        history = self.committed(key, existing.stored)[-HISTORY_ON_JOIN:]
        expected[peer] = [("info", "join", name), ("history", name)]

        def check(answers: list[dict[str, Any]]) -> None:
            info, page = answers
            self.check_join_info(info, name, names, ops, topic)
            assert history_ids(page) == history, (page, history)
            assert all(entry["room"] == name for entry in page["content"]), page

        return Planned("join", content, {}, expected, check=check)

    def check_join_info(self, info: dict[str, Any], room: str, members: list[str], ops: list[str], topic: str) -> None:
        assert info["content"] == f"Joined {room}", info
        assert (info["room"], info["members"], info["ops"], info["voiced"]) == (room, members, ops, []), (info, members, ops)
        assert (info["topic"], info["modes"]) == (topic, NEW_MODES), (info, topic)

    def plan_part(self, peer: Peer, room: str, form: str) -> Planned:
        content: Any = room if form == "name" else {"room": room} if form == "object" else {"room": room, "comment": "bye"}
        key = room.lower()
        error = self.gate(peer, v2_only=True) or self.bucket_error(peer, peer.churn)
        if error is None and is_room_name(room) and key == LOBBY:
            error = "forbidden"  # after invalid_room, before no_such_room
        error = error or self.room_error(peer, room, member=True)
        if error is not None:
            return self.refusal(peer, "part", content, {}, error)
        peer.churn.take(self.clock.seconds())
        existing = self.rooms[key]
        existing.leave(peer)
        peer.rooms.remove(key)
        expected: dict[Peer, list[Signature]] = {
            member: [("presence", peer.name, "offline", existing.name)] for member in existing.members if member.v2
        }
        expected[peer] = [("info", "part", existing.name)]
        return Planned("part", content, {}, expected)

    def plan_rooms(self, peer: Peer, content: Any) -> Planned:
        error = self.gate(peer, v2_only=True)
        if error is not None:
            return self.refusal(peer, "rooms", content, {}, error)
        # Every room is public here: those with members, and #lobby.
        listed = [(LOBBY, len(self.order), "")] + [
            (room.name, len(room.members), room.topic) for room in self.rooms.values() if room.members
        ]
        listed.sort(key=lambda entry: entry[0].lower())
        text = ", ".join(f"{name} ({count})" for name, count, _ in listed)
        rooms = [
            {"room": name, "members": count, "topic": topic, "invite_only": False, "secret": False}
            for name, count, topic in listed
        ]

        def check(answers: list[dict[str, Any]]) -> None:
            assert (answers[0]["content"], answers[0]["rooms"]) == (text, rooms), (answers, listed)

        return Planned("rooms", content, {}, {peer: [("info", "rooms")]}, check=check)

    def plan_names(self, peer: Peer, room: str) -> Planned:
        lobby = room.lower() == LOBBY
        error = self.gate(peer, v2_only=not lobby) or self.room_error(peer, room, member=False)
        if error is not None:
            return self.refusal(peer, "names", {"room": room}, {}, error)
        name = LOBBY if lobby else self.rooms[room.lower()].name
        names = ", ".join(str(p.name) for p in self.order) if lobby else ", ".join(self.rooms[room.lower()].names())
        return Planned(
            "names", {"room": room}, {}, {peer: [("info", "names", name)]},
            check=lambda answers: affirm(answers[0]["content"] == names, (answers, names)),
        )

    def plan_topic(self, peer: Peer, room: str, text: str | None) -> Planned:
        key = room.lower()
        if text is None:
            read: dict[str, Any] = {"room": room}
            error = self.gate(peer, v2_only=True) or self.room_error(peer, room, member=False)
            if error is not None:
                return self.refusal(peer, "topic", read, {}, error)
            existing = self.rooms.get(key)
            name, topic, by = (existing.name, existing.topic, existing.topic_by) if existing else (LOBBY, "", None)

            def check(answers: list[dict[str, Any]]) -> None:
                info = answers[0]
                assert (info["topic"], info["by"], info["set_at"] is None) == (topic, by, by is None), (info, topic, by)

            return Planned("topic", read, {}, {peer: [("info", "topic", name)]}, check=check)
        content = {"room": room, "topic": text}
        cleaned = clean_topic(text)
        error = self.gate(peer, v2_only=True) or self.bucket_error(peer, peer.churn) or self.room_error(peer, room, member=True)
        if error is None and (key == LOBBY or str(peer.name).lower() not in self.rooms[key].ops):
            error = "not_op"  # every room here is topic_ops; #lobby's ops are server operators
        if error is None and len(cleaned) > MAX_TOPIC:
            error = "message_too_long"
        if error is not None:
            return self.refusal(peer, "topic", content, {}, error)
        peer.churn.take(self.clock.seconds())
        existing = self.rooms[key]
        existing.topic, existing.topic_by = cleaned, (peer.name if cleaned else None)
        event = ("topic", existing.name, cleaned, peer.name)
        expected: dict[Peer, list[Signature]] = {member: [event] for member in existing.members if member.v2}
        expected[peer].append(("info", "topic_set", existing.name))
        return Planned("topic", content, {}, expected)

    def plan_post(self, peer: Peer, text: str, room: str | None = None, to: str | None = None) -> Planned:
        """``msg`` to ``#lobby`` (no room), a room or a name."""
        extra = {key: value for key, value in (("room", room), ("to", to)) if value is not None}
        lobby = to is None and (room is None or room.lower() == LOBBY)
        error = self.gate(peer, v2_only=not lobby) or self.bucket_error(peer, peer.rate)
        recipient = next((p for p in self.order if to is not None and str(p.name).lower() == to.lower()), None)
        if error is None and to is not None and (not is_valid_name(to) or recipient is None or not recipient.v2):
            error = "no_such_user"  # not a name, offline, or only v1 sessions
        if error is None and room is not None:
            error = self.room_error(peer, room, member=True)
        cleaned = clean_text(text)
        if error is None and not cleaned.strip():
            error = "empty_message"
        if error is None and len(cleaned) > MAX_MESSAGE:
            error = "message_too_long"
        if error is not None:
            # rate_limited may come with a close (flooding): see gather.
            return self.refusal(peer, "msg", text, extra, error)
        assert peer.name is not None
        peer.rate.take(self.clock.seconds())
        # Stored with the next id of its room or conversation (no gaps),
        # then sent to each of its audience (the sender included) once.
        sent: Signature
        if recipient is not None:
            key = conversation(peer.name, str(recipient.name))
            ids = self.dms.setdefault(key, [])
            sent = ("dm", peer.name, recipient.name, (ids[-1] if ids else 0) + 1)
        elif lobby:
            key, ids = LOBBY, self.stored
            sent = ("message", None, (ids[-1] if ids else 0) + 1)
        else:
            assert room is not None
            key = room.lower()
            ids = self.rooms[key].stored
            sent = ("message", self.rooms[key].name, (ids[-1] if ids else 0) + 1)
        ids.append(sent[-1])
        sender = peer.name

        def check(answers: list[dict[str, Any]]) -> None:
            assert (answers[0]["sender"], answers[0]["content"]) == (sender, cleaned), (answers, cleaned)

        plan = Planned("msg", text, extra, {}, check=check)
        if self._pending is None:
            plan.expected = {member: [sent] for member in self.audience(key, peer, recipient)}
        else:
            # Stored at the end of the turn: for the members of then.
            self._pending.setdefault(key, []).append(sent[-1])
            plan.audience = lambda: {member: [sent] for member in self.audience(key, peer, recipient)}
        return plan

    def audience(self, key: str, sender: Peer, recipient: Peer | None) -> list[Peer]:
        """Who gets a message of ``key`` (a room's, or a conversation's)
        now: the room's members, or both sides (the sender included)."""
        if recipient is not None:
            return [sender, recipient]
        if key == LOBBY:
            return list(self.order)
        return list(self.rooms[key].members)

    def committed(self, key: str, ids: list[int]) -> list[int]:
        """``ids`` of ``key`` but those not stored yet (see together)."""
        pending = (self._pending or {}).get(key, [])
        return [i for i in ids if i not in pending]

    def plan_room_history(self, peer: Peer, room: str, before: int | None, after: int | None, limit: int | None) -> Planned:
        query: dict[str, Any] = {"room": room}
        query.update({key: value for key, value in (("before", before), ("after", after), ("limit", limit)) if value is not None})
        lobby = room.lower() == LOBBY
        error = self.gate(peer, v2_only=not lobby) or self.room_error(peer, room, member=True)
        if error is not None:
            return self.refusal(peer, "history", query, {}, error)
        name, ids = (None, self.stored) if lobby else (self.rooms[room.lower()].name, self.rooms[room.lower()].stored)
        page, more = page_of(self.committed(room.lower(), ids), before, after, limit)

        def check(answers: list[dict[str, Any]]) -> None:
            response = answers[0]
            assert history_ids(response) == page and response["more"] is more, (query, page, response)
            assert all(entry_of(entry).get("room") == name for entry in response["content"]), response

        return Planned("history", query, {}, {peer: [("history", name)]}, check=check)

    def plan_history_with(self, peer: Peer, name: str) -> Planned:
        # Stored DMs are accounts' (section 6.3): a guest asking is
        # forbidden, and so is a connection without hello (section 6.1).
        code = self.gate(peer, v2_only=True) or "forbidden"
        return self.refusal(peer, "history", {"with": name}, {}, code)

    def plan_kind(
        self, peer: Peer, kind: str, n: int, room: str, text: str, to: str | None = None, exact: bool = False
    ) -> Planned:
        """A request of ``kind`` (PIPELINED) naming ``room`` (a ``join``: a
        room of JOIN_TARGETS half the time, unless ``exact``), its details
        chosen by ``n``; a ``msg_to`` goes to ``to`` if given."""
        if kind == "join":
            return self.plan_join(peer, room if exact or n % 2 else JOIN_TARGETS[n % len(JOIN_TARGETS)], bool(n % 3))
        if kind == "part":
            return self.plan_part(peer, room, "name")
        if kind == "topic":
            return self.plan_topic(peer, room, None if n % 4 == 0 else TOPICS[n % len(TOPICS)])
        if kind == "msg_room":
            return self.plan_post(peer, text, room=room)
        if kind == "msg_to":
            return self.plan_post(peer, text, to=to or self.recipient(peer, RECIPIENTS[n % len(RECIPIENTS)]))
        if kind == "msg":
            return self.plan_post(peer, text)
        if kind == "names":
            return self.plan_names(peer, room)
        if kind == "history":
            return self.plan_room_history(peer, room, None, n % 4 or None, None)
        return self.plan_rooms(peer, None)

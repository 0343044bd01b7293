"""A hypothesis state machine drives one hub through many connections.

Random sequences of every request (``login``, ``logout``, ``msg``,
``names``, ``help``, ``ping``, ``hello``, ``history``, and protocol 2's
rooms and direct messages: ``join``, ``part``, ``rooms``, ``names`` and
``history`` of a room, ``topic``, ``msg`` to a room or a name, ``history``
with a name), unknown requests, content of the wrong type, non-object
JSON, garbage bytes, disconnects, slow readers and the passing of time;
section 6's requests also several in one read (``pipelined``, ``burst``)
and from two connections in one reactor turn (``together``), most with a
``ref``.  The machine keeps a model of the chat (who is logged in, in
which order, who said ``hello``; each room's spelling, members in join
order, ops and topic; each connection's rooms and token buckets; the ids
of each room and conversation; tests/stateful_rooms.py) and after every
step checks that each connection got *exactly* the responses PROTOCOL.md
gives for what happened - counted, not just seen - and that:

- the registry holds exactly the logged-in, still-open connections, in
  login order; names are unique case-insensitively;
- every message of a room reached each member of that moment once and
  nobody else, each connection's ids of a room or conversation rise
  strictly, and a room's or conversation's ids follow each other without
  gaps;
- a connection without ``hello`` gets ``#lobby``'s messages only (no
  ``room``, no ``to``) and no ``presence`` or ``topic``;
- every bad request gets one error, its code the first of section 6.7's
  order (the token buckets modelled: a refused request takes no token),
  and changes nothing: the server's rooms (spelling, topic, ops, members,
  each connection's rooms; in the SQLite file too) and stored ids equal
  the model's, guests' direct messages are never stored;
- each answer carries its request's ``ref`` and comes in request order
  (see in_request_order), events and others' copies carry none;
- the server closed a connection only for a reason the spec gives (a cap,
  flooding, a slow reader, the login timeout);
- nothing was logged as an error (no exception in the server).

A connection whose output the server sees as not being read (the
``stop_reading`` rule) still receives fan-out and may be dropped for it,
but sends no more requests: the server may hold a slow reader's requests
until it reads again (issue 13), so their answers are not due at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from chatd.core.rooms import dm_key
from chatd.messages import HELP_TEXT
from chatd.stores.history import SQLiteHistory
from tests.stateful_rooms import (
    BAD_SHAPES,
    JOIN_TARGETS,
    LOBBY,
    MAX_MESSAGE,
    MAX_ROOMS,
    MAX_TOPIC,
    NEEDS_HELLO,
    NEW_MODES,
    RECIPIENTS,
    ROOMS,
    SELF,
    TARGETS,
    TOPICS,
    V2_ONLY,
    Bucket,
    Peer,
    Planned,
    RoomModel,
    RoomPlans,
    Signature,
    affirm,
    conversation,
    entry_of,
    history_ids,
    in_request_order,
    page_of,
    thread,
)
from tests.support import FakeClient, fired, make_factory, names_of, rebuild_hub, stored

NAMES = ["alice", "Alice", "bob", "BOB", "carol", "server", "", "bad name", "x" * 33, "d\u00e9j\u00e0", 7, None]
TEXTS = ["hi", "", "   ", "x" * 60, "\x1b[2J", "multi\nline", "\u00e9\U0001f600", "\x00\x07"]
HOSTS = ["10.0.0.1", "10.0.0.2", "127.0.0.1"]
PING_CONTENTS = [None, "", "x", 0, 42, ["a", 1], {"k": "v"}, "\u00e9\U0001f600"]
BAD_IDS = [-1, "3", True, 1.5, [1]]
#: The largest id SQLite stores (64-bit signed), and integers past it.
MAX_ID = 2**63 - 1
HUGE_IDS = [MAX_ID, MAX_ID + 1, 2**64]
#: Requests that do not exist (the type is matched exactly).
UNKNOWN = ["bogus", "LOGIN", "Help", "", "request_login", "__init__", "msg "]
#: Content of the wrong type for a request that checks it.
BAD_CONTENT = [("msg", 5), ("msg", None), ("msg", ["x"]), ("msg", {"a": 1}), ("hello", "x"), ("hello", None),
               ("hello", [2]), ("history", "x"), ("history", 5), ("history", [])]
#: Requests that are no request: a bad or missing type, or not an object.
MALFORMED: list[tuple[Any, str]] = [({"request": 5}, "bad_request"), ({"content": "x"}, "bad_request"),
                                   ({"request": None}, "bad_request"), ({}, "bad_request"),
                                   ([1, 2], "bad_json"), (42, "bad_json"), ("x", "bad_json")]
#: After garbage: a newline ends any skipping, then an impossible string
#: (a raw NUL) fails whatever was pending, and the last newline resyncs.
FLUSH = b'\n"\x00\n'

MAX_PER_IP = 4
MAX_CONNECTIONS = 8
LOGIN_TIMEOUT = 60.0
HISTORY_ON_LOGIN = 100
#: --msg-rate and --msg-burst: the message bucket, and the join/part/topic one.
MSG_RATE = 10.0
MSG_BURST = 3.0
_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
#: Responses a connection without hello never gets (section 6.1).
V2_EVENTS = {"presence", "topic", "mode", "invite"}
#: Section 6 rules: mostly from a logged-in v2 connection (see pick_talker).
ANYONE = st.sampled_from([False, False, True])
#: The same, with a room of the sender's often (see pick_member).
MEMBER = st.sampled_from(["member", "member", "talker", "anyone"])
#: What the pipelined rule sends several of in one read.
PIPELINED = ["join", "part", "topic", "msg_room", "msg_room", "msg_to", "msg", "msg", "names", "history", "rooms"]
#: What the together rule has two connections send in one turn.
TOGETHER = ["msg_room", "msg_room", "msg_room", "join", "part", "history", "topic", "msg_to", "msg"]

def signature(response: dict[str, Any]) -> Signature:
    """What a response is, for counting: type plus the detail that matters.

    ``#lobby``'s messages and history carry no ``room`` (section 6.1):
    their room in the signature is None.
    """
    kind = response["response"]
    if kind == "error":
        return ("error", response.get("code"))
    if kind == "message":
        if "to" in response:
            return ("dm", response["sender"], response["to"], response["id"])
        return ("message", response.get("room"), response["id"])
    if kind == "presence":
        content = response["content"]
        return ("presence", content["user"], content["status"], content["room"])
    if kind == "topic":
        content = response["content"]
        return ("topic", content["room"], content["topic"], content["by"])
    if kind == "history":
        return ("history", response.get("room"))
    if kind == "info":
        return info_signature(response)
    return (kind,)


def info_signature(response: dict[str, Any]) -> Signature:
    """An ``info``: which answer it is, told by its keys (section 6.2)."""
    text = response["content"]
    room = response.get("room")
    if "members" in response:
        return ("info", "join", room)
    if "set_at" in response:
        return ("info", "topic", room)
    if "rooms" in response:
        return ("info", "rooms")
    if room is not None:
        if text == f"Left {room}":
            return ("info", "part", room)
        if text == f"Topic of {room} set":
            return ("info", "topic_set", room)
        return ("info", "names", room)
    if text.startswith("Login successful"):
        return ("info", "login")
    if text == "Logout successful":
        return ("info", "logout")
    return ("info", "help" if text == HELP_TEXT else "names")


def direct_answers(responses: list[dict[str, Any]]) -> list[Signature]:
    """Signatures of ``responses`` but presence (never an answer to a request)."""
    return [signature(r) for r in responses if r["response"] != "presence"]


def only(got: dict[Peer, list[dict[str, Any]]], peer: Peer, kind: str) -> dict[str, Any]:
    """The one response of type ``kind`` that ``peer`` got."""
    found = [r for r in got.get(peer, []) if r["response"] == kind]
    assert len(found) == 1, (kind, got.get(peer))
    return found[0]


def check_v1_output(response: dict[str, Any]) -> None:
    """What a connection without hello may get: no v2 event, and of
    messages only ``#lobby``'s, without ``room`` or ``to`` (section 6.1)."""
    assert response["response"] not in V2_EVENTS, response
    if response["response"] == "message":
        assert "room" not in response and "to" not in response, response
    if response["response"] == "history":
        assert "room" not in response, response
        for entry in response["content"]:
            assert isinstance(entry, str), response
            assert "room" not in entry_of(entry) and "to" not in entry_of(entry), response


class ChatMachine(RoomPlans, RuleBasedStateMachine):
    """The chat over the memory history store."""

    def __init__(self) -> None:
        super().__init__()
        self.factory = make_factory(
            msg_rate=MSG_RATE, msg_burst=MSG_BURST, max_per_ip=MAX_PER_IP, max_connections=MAX_CONNECTIONS,
            max_sendq=20_000, max_message=MAX_MESSAGE, hub_options={"max_rooms_per_user": MAX_ROOMS},
        )
        self.hub = self.factory.hub
        self.use_store()
        clock = self.factory.clock
        assert isinstance(clock, Clock)  # make_factory's: tests move its time
        self.clock = clock
        self.peers: list[Peer] = []
        self.order: list[Peer] = []  # logged in, in login order
        self.stored: list[int] = []  # ids of #lobby's accepted messages, in order
        self.rooms: dict[str, RoomModel] = {}  # rooms but #lobby, by key: never deleted
        self.dms: dict[str, list[int]] = {}  # ids of each conversation (conversation())
        self._requests = 0  # requests sent by run(), for their refs
        self.failures: list[dict[str, Any]] = []
        # Responses a step implies beyond the rule's own: the offline
        # presence of connections the server closed (see gather).
        self._implied: dict[Peer, list[Signature]] = {}
        self._dropped: set[Peer] = set()  # slow readers the server dropped in this step
        globalLogPublisher.addObserver(self._observe)  # type: ignore[arg-type]

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            self.failures.append(event)

    def use_store(self) -> None:
        """Give the hub the history store under test (here: the memory one)."""

    def stored_rows(self) -> dict[str, list[int]] | None:
        """Every message row the store holds, as room -> ids, if the test
        can read the store's file (the SQLite variant); else None."""
        return None

    def stored_room_state(self) -> dict[str, dict[str, Any]] | None:
        """Every room's state as the store's file holds it (the SQLite
        variant), by key; else None."""
        return None

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observe)  # type: ignore[arg-type]

    def pick(self, index: int) -> Peer:
        """A connection that may send requests (see the module docstring)."""
        ready = [peer for peer in self.peers if not peer.paused]
        return ready[index % len(ready)]

    def pick_talker(self, index: int, anyone: bool) -> Peer:
        """A logged-in v2 connection that may send requests, unless
        ``anyone`` (or there is none): then any that may send."""
        if not anyone:
            ready = [peer for peer in self.order if not peer.paused and peer.v2]
            if ready:
                return ready[index % len(ready)]
        return self.pick(index)

    def pick_member(self, index: int, who: str) -> tuple[Peer, str | None]:
        """A connection that may send requests and, for ``op`` and
        ``member``, a room it is op or member of, spelled in other cases
        than the room's spelling; ``talker`` and ``anyone``: as
        :meth:`pick_talker` gives (no room).  Each falls back to the next
        when there is none."""
        if who in ("op", "member"):
            pairs = [
                (peer, self.rooms[key]) for peer in self.order if not peer.paused for key in peer.rooms
                if who == "member" or str(peer.name).lower() in self.rooms[key].ops
            ]
            if pairs:
                peer, room = pairs[index % len(pairs)]
                return peer, room.name.swapcase()
            if who == "op":
                return self.pick_member(index, "member")
        return self.pick_talker(index, who == "anyone"), None

    def any_peer(self, index: int) -> Peer:
        return self.peers[index % len(self.peers)]

    def others_v2(self, peer: Peer) -> list[Peer]:
        """Logged-in v2 connections other than ``peer``: they get its presence."""
        return [other for other in self.order if other is not peer and other.v2]

    # -- rules -------------------------------------------------------------

    @initialize(
        newline=st.booleans(),
        v2=st.sampled_from([(True, True, False), (True, True, True), (True, False, False)]),
        room=st.sampled_from([None, "#Dev", "#a_b-9"]),
    )
    def three_members(self, newline: bool, v2: tuple[bool, bool, bool], room: str | None) -> None:
        """Start from a room with members, so fan-out is exercised at once:
        mostly two of protocol 2 (rooms, DMs) and one without hello, and
        often the v2 ones in a room of their own (ann first: op)."""
        for index, name in enumerate(["ann", "ben", "cat"]):
            self.connect(HOSTS[index], newline)
            if v2[index]:
                self.do_hello(self.peers[-1], 2)
            self.do_login(self.peers[-1], name)
        for index, peer in enumerate(self.peers):
            if room is not None and peer.v2:
                self.run(peer, [self.plan_join(peer, room if index == 0 else room.swapcase(), as_object=index == 1)])

    @rule(host=st.sampled_from(HOSTS), newline=st.booleans())
    def connect(self, host: str, newline: bool) -> None:
        busy = sum(p.host == host for p in self.peers) >= MAX_PER_IP or len(self.peers) >= MAX_CONNECTIONS
        now = self.clock.seconds()
        client = FakeClient(self.factory, newline=newline, host=host)
        peer = Peer(client, host, now, Bucket(MSG_RATE, MSG_BURST, now), Bucket(MSG_RATE, MSG_BURST, now))
        self.peers.append(peer)
        got = self.gather(busy_refused={peer} if busy else set())
        self.expect(got, {peer: [("error", "server_busy")]} if busy else {})

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), name=st.sampled_from(NAMES))
    def login(self, index: int, name: Any) -> None:
        self.do_login(self.pick(index), name)

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), name=st.sampled_from(["alice", "bob", "carol", "dave"]))
    def login_valid(self, index: int, name: str) -> None:
        # Valid names often, so that rooms of several members are common.
        self.do_login(self.pick(index), name)

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), name=st.sampled_from(["alice", "bob", "Dave", "ann"]))
    def logout_then_login(self, index: int, name: str) -> None:
        peer = self.pick(index)
        self.do_logout(peer)
        if peer in self.peers:
            self.do_login(peer, name)

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50))
    def logout(self, index: int) -> None:
        self.do_logout(self.pick(index))

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), text=st.sampled_from(TEXTS), count=st.integers(1, 6))
    def msg(self, index: int, text: str, count: int) -> None:
        peer = self.pick(index)
        for _ in range(count):
            if peer not in self.peers:
                return  # closed for flooding
            self.run1(peer, self.plan_post(peer, text))

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), content=st.sampled_from(PING_CONTENTS))
    def ping(self, index: int, content: Any) -> None:
        peer = self.pick(index)
        peer.client.send("ping", content)
        got = self.gather()
        self.expect(got, {peer: [("pong",)]})
        assert got[peer][0]["content"] == content, got[peer]

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), content=st.sampled_from([None, "", "None"]))
    def help(self, index: int, content: Any) -> None:
        peer = self.pick(index)
        peer.client.send("help", content)
        self.expect(self.gather(), {peer: [("info", "help")]})

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), content=st.sampled_from([None, "", "None", {}]))
    def names(self, index: int, content: Any) -> None:
        # No room named: #lobby's names, as section 4 gives them.
        peer = self.pick(index)
        names = ", ".join(p.name or "" for p in self.order)
        peer.client.send("names", content)
        got = self.gather()
        if peer.name is None:
            self.expect(got, {peer: [("error", "not_logged_in")]})
            return
        self.expect(got, {peer: [("info", "names")]})
        assert got[peer][0]["content"] == names, got[peer]

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), version=st.sampled_from([2, 2, 3, 1, 0, "2", None, True]))
    def hello(self, index: int, version: Any) -> None:
        self.do_hello(self.pick(index), version)

    def do_hello(self, peer: Peer, version: Any) -> None:
        content = {"client": "stateful"} if version is None else {"protocol": version, "client": "stateful"}
        peer.client.send("hello", content)
        got = self.gather()
        if not isinstance(version, int) or isinstance(version, bool) or version < 2:
            self.expect(got, {peer: [("error", "bad_request")]})
            return
        self.expect(got, {peer: [("hello",)]})
        answer = got[peer][0]["content"]
        assert answer["protocol"] == 2 and "ping" in answer["features"] and "history" in answer["features"], answer
        assert {"rooms", "dm", "topic"} <= set(answer["features"]), answer
        assert answer["limits"]["rooms_per_user"] == MAX_ROOMS and answer["limits"]["topic"] == MAX_TOPIC, answer
        peer.v2 = True

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(
        index=st.integers(0, 50),
        before=st.one_of(st.none(), st.integers(0, 30), st.sampled_from(BAD_IDS + HUGE_IDS)),
        after=st.one_of(st.none(), st.integers(0, 30), st.sampled_from(BAD_IDS + HUGE_IDS)),
        limit=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 5, 600]), st.sampled_from(BAD_IDS + HUGE_IDS)),
        wrap=st.booleans(),
    )
    def history(self, index: int, before: Any, after: Any, limit: Any, wrap: bool) -> None:
        peer = self.pick(index)
        query = {key: value for key, value in (("before", before), ("after", after), ("limit", limit)) if value is not None}
        # An empty query may also be sent as null content.
        peer.client.send("history", query if query or wrap else None)
        got = self.gather()
        # The request's shape is checked before login (PROTOCOL.md 6.7).
        valid = all(v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID) for v in (before, after, limit))
        if not valid or (before is not None and after is not None):
            self.expect(got, {peer: [("error", "bad_request")]})
            return
        if peer.name is None:
            self.expect(got, {peer: [("error", "not_logged_in")]})
            return
        self.expect(got, {peer: [("history", None)]})
        page, more = page_of(self.stored, before, after, limit)
        response = only(got, peer, "history")
        assert history_ids(response) == page and response["more"] is more, (query, self.stored, response)

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), kind=st.sampled_from(UNKNOWN))
    def unknown_request(self, index: int, kind: str) -> None:
        # Unknown is answered before not_logged_in (PROTOCOL.md section 2).
        peer = self.pick(index)
        peer.client.send(kind, "x")
        self.expect(self.gather(), {peer: [("error", "unknown_request")]})

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), request=st.sampled_from(BAD_CONTENT))
    def bad_content(self, index: int, request: tuple[str, Any]) -> None:
        # A content of the wrong type is bad_request, before not_logged_in.
        peer = self.pick(index)
        peer.client.send(*request)
        self.expect(self.gather(), {peer: [("error", "bad_request")]})

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), request=st.sampled_from(MALFORMED))
    def malformed(self, index: int, request: tuple[Any, str]) -> None:
        peer = self.pick(index)
        value, code = request
        peer.client.send_obj(value)
        self.expect(self.gather(), {peer: [("error", code)]})

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), data=st.binary(max_size=40))
    def garbage(self, index: int, data: bytes) -> None:
        peer = self.pick(index)
        peer.client.send_raw(data)
        got = self.gather()
        # Random bytes: at most one bad_json for the chunk, and nothing but
        # errors (the bytes may hold an object such as {}: bad_request).
        answers = direct_answers(got.get(peer, []))
        assert set(answers) <= {("error", "bad_json"), ("error", "bad_request")}, answers
        assert answers.count(("error", "bad_json")) <= 1, answers
        self.expect(got, {peer: answers})
        if peer in self.peers:
            # Whatever the garbage left pending fails: exactly one bad_json,
            # and the stream is in step again for the next request.
            peer.client.send_raw(FLUSH)
            self.expect(self.gather(), {peer: [("error", "bad_json")]})

    @precondition(lambda self: self.peers)
    @rule(index=st.integers(0, 50))
    def disconnect(self, index: int) -> None:
        peer = self.any_peer(index)
        expected = self.leave_everything(peer)
        peer.client.disconnect()
        self.peers.remove(peer)
        self.expect(self.gather(), expected)

    @precondition(lambda self: self.peers)
    @rule(index=st.integers(0, 50))
    def stop_reading(self, index: int) -> None:
        peer = self.any_peer(index)
        producer = peer.client.transport.producer
        if producer is not None:
            producer.pauseProducing()
            peer.paused = True
        self.expect(self.gather(), {})

    @rule(seconds=st.sampled_from([0.01, 0.1, 1.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.expect(self.gather(), {})

    # -- rules of rooms and direct messages (section 6) -----------------
    #
    # ``anyone`` false picks a logged-in v2 connection when there is one
    # (the requests that do something); true, any connection (logged out
    # or v1: not_logged_in, forbidden).  ``who`` picks a member or op of a
    # room and names that room, or a sender as ``anyone`` (pick_member).

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), anyone=ANYONE, room=st.sampled_from(JOIN_TARGETS), as_object=st.booleans())
    def join(self, index: int, anyone: bool, room: str, as_object: bool) -> None:
        peer = self.pick_talker(index, anyone)
        self.run(peer, [self.plan_join(peer, room, as_object)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), room=st.sampled_from(ROOMS), as_object=st.booleans())
    def join_valid(self, index: int, room: str, as_object: bool) -> None:
        # Good names often, so that rooms of several members are common.
        peer = self.pick_talker(index, False)
        self.run(peer, [self.plan_join(peer, room, as_object)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(
        index=st.integers(0, 50), who=MEMBER, room=st.sampled_from(TARGETS), form=st.sampled_from(["name", "object", "comment"]),
    )
    def part(self, index: int, who: str, room: str, form: str) -> None:
        peer, mine = self.pick_member(index, who)
        self.run(peer, [self.plan_part(peer, mine or room, form)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), anyone=ANYONE, content=st.sampled_from([None, "", "None", {"x": 1}]))
    def rooms_list(self, index: int, anyone: bool, content: Any) -> None:
        peer = self.pick_talker(index, anyone)
        self.run(peer, [self.plan_rooms(peer, content)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), anyone=ANYONE, room=st.sampled_from(TARGETS))
    def names_of_room(self, index: int, anyone: bool, room: str) -> None:
        peer = self.pick_talker(index, anyone)
        self.run(peer, [self.plan_names(peer, room)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(
        index=st.integers(0, 50), who=st.sampled_from(["op", "op", "member", "talker", "anyone"]),
        room=st.sampled_from(TARGETS), text=st.one_of(st.none(), st.sampled_from(TOPICS)),
    )
    def topic(self, index: int, who: str, room: str, text: str | None) -> None:
        peer, mine = self.pick_member(index, who)
        self.run(peer, [self.plan_topic(peer, mine or room, text)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(
        index=st.integers(0, 50), who=MEMBER, room=st.sampled_from(TARGETS), text=st.sampled_from(TEXTS),
        count=st.integers(1, 4),
    )
    def msg_room(self, index: int, who: str, room: str, text: str, count: int) -> None:
        peer, mine = self.pick_member(index, who)
        for _ in range(count):
            if peer not in self.peers:
                return  # closed for flooding
            if self.run1(peer, self.plan_post(peer, text, room=mine or room)) not in (None, "rate_limited"):
                return  # refused: once is enough

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(
        index=st.integers(0, 50), anyone=ANYONE, to=st.sampled_from(RECIPIENTS), text=st.sampled_from(TEXTS),
        count=st.integers(1, 3),
    )
    def msg_to(self, index: int, anyone: bool, to: str, text: str, count: int) -> None:
        peer = self.pick_talker(index, anyone)
        for _ in range(count):
            if peer not in self.peers:
                return  # closed for flooding
            if self.run1(peer, self.plan_post(peer, text, to=self.recipient(peer, to))) not in (None, "rate_limited"):
                return  # refused: once is enough

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(
        index=st.integers(0, 50), who=MEMBER, room=st.sampled_from(TARGETS),
        direction=st.sampled_from([None, "before", "after"]), at=st.integers(0, 12),
        limit=st.one_of(st.none(), st.sampled_from([0, 1, 2, 3, 600])),
    )
    def room_history(self, index: int, who: str, room: str, direction: str | None, at: int, limit: int | None) -> None:
        peer, mine = self.pick_member(index, who)
        before, after = (at if direction == "before" else None), (at if direction == "after" else None)
        self.run(peer, [self.plan_room_history(peer, mine or room, before, after, limit)])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), anyone=ANYONE, name=st.sampled_from(RECIPIENTS))
    def history_with(self, index: int, anyone: bool, name: str) -> None:
        peer = self.pick_talker(index, anyone)
        self.run(peer, [self.plan_history_with(peer, self.recipient(peer, name))])

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), request=st.sampled_from(BAD_SHAPES))
    def bad_shape(self, index: int, request: tuple[str, Any, dict[str, Any]]) -> None:
        # A field missing or of the wrong type: bad_request, before
        # not_logged_in and forbidden (section 6.7).
        kind, content, extra = request
        peer = self.pick(index)
        self.run(peer, [self.refusal(peer, kind, content, extra, "bad_request")])

    @precondition(lambda self: any(not p.paused and not p.v2 for p in self.order))
    @rule(index=st.integers(0, 50), request=st.sampled_from(V2_ONLY))
    def v1_asks_v2(self, index: int, request: tuple[str, Any, dict[str, Any]]) -> None:
        # Every request of protocol 2 from a logged-in connection without
        # hello: forbidden, with its sentence, whatever it names (6.1).
        v1 = [peer for peer in self.order if not peer.paused and not peer.v2]
        peer = v1[index % len(v1)]
        kind, content, extra = request
        plan = self.refusal(peer, kind, content, extra, "forbidden")
        plan.check = lambda answers: affirm(answers[0]["content"] == NEEDS_HELLO, answers)
        self.run(peer, [plan])

    @precondition(lambda self: any(not p.paused and p.v2 for p in self.order))
    @rule(
        index=st.integers(0, 50),
        steps=st.lists(
            st.tuples(st.sampled_from(PIPELINED), st.integers(0, 50), st.sampled_from(TARGETS), st.sampled_from(TEXTS)),
            min_size=2, max_size=5,
        ),
    )
    def pipelined(self, index: int, steps: list[tuple[str, int, str, str]]) -> None:
        """Several requests in one read: each is answered as if alone, in
        order (a ``msg`` waits to be stored, and what follows waits behind
        it), and nothing is lost or doubled."""
        peer = self.pick_talker(index, False)
        plans: list[Planned] = []
        for kind, n, room, text in steps:
            mine = self.rooms[peer.rooms[n % len(peer.rooms)]].name.swapcase() if peer.rooms and n % 3 else None
            plans.append(self.plan_kind(peer, kind, n, mine or room, text))
            if plans[-1].kind == "msg" and plans[-1].error == "rate_limited":
                break  # it may close the connection (flooding): nothing after it is read
        self.run(peer, plans)

    @precondition(lambda self: sum(not p.paused and p.v2 for p in self.order) >= 2)
    @rule(
        index=st.integers(0, 50), first=st.sampled_from(TOGETHER), second=st.sampled_from(TOGETHER),
        n=st.integers(0, 50), text=st.sampled_from(["hi", "hi", "   "]),
    )
    def together(self, index: int, first: str, second: str, n: int, text: str) -> None:
        """Two connections' requests in one reactor turn, the same room
        named: the second is answered before the first's message is
        stored, so that message is not in a history or a join's history
        the second gets; it goes to whoever is a member when it is
        stored, once (none missing or twice, section 6.8's rule on one
        node)."""
        talkers = [peer for peer in self.order if not peer.paused and peer.v2]
        one, two = talkers[index % len(talkers)], talkers[(index + 1) % len(talkers)]
        # Mostly a room of the first's, which the second may be in or not.
        keys = one.rooms or two.rooms
        room = self.rooms[keys[n % len(keys)]].name.swapcase() if keys and n % 4 else TARGETS[n % len(TARGETS)]
        self._pending = {}
        try:
            turn = [(one, self.plan_kind(one, first, n, room, text, to=two.name, exact=True)),
                    (two, self.plan_kind(two, second, n + 1, room, text, to=one.name, exact=True))]
        finally:
            self._pending = None
        # A refused msg may close its connection (flooding), which then
        # gets nothing more: it is not sent (the model did not change).
        self.run_turn([(peer, [plan]) for peer, plan in turn if not (plan.kind == "msg" and plan.error == "rate_limited")])

    @precondition(lambda self: any(not p.paused and p.v2 for p in self.order))
    @rule(
        index=st.integers(0, 50),
        places=st.lists(st.sampled_from([LOBBY, "own", "self"]), min_size=2, max_size=4),
        text=st.sampled_from(["hi", "hi", "hi", "   "]),
    )
    def burst(self, index: int, places: list[str], text: str) -> None:
        """Messages to ``#lobby``, a room of the sender's and the sender
        itself in one read: one stored batch, each message stored once
        under its own room or conversation and echoed once."""
        peer, mine = self.pick_member(index, "member")
        plans: list[Planned] = []
        for place in places:
            if place == "self":
                plan = self.plan_post(peer, text, to=self.recipient(peer, SELF))
            else:
                plan = self.plan_post(peer, text, room=mine if place == "own" and mine else LOBBY)
            plans.append(plan)
            if plan.error == "rate_limited":
                break  # it may close the connection (flooding): nothing after it is read
        self.run(peer, plans)

    # -- requests with an outcome the model decides ---------------------

    def login_error(self, peer: Peer, name: Any) -> str | None:
        """The error code the spec gives for this login, or None: success."""
        taken = {p.name.lower() for p in self.order if p.name is not None}
        if peer.name is not None:
            return "already_logged_in"
        if not isinstance(name, str) or not _USERNAME.fullmatch(name):
            return "invalid_username"
        if name.lower() == "server" or name.lower() in taken:
            return "name_taken"
        return None

    def do_login(self, peer: Peer, name: Any) -> None:
        error = self.login_error(peer, name)
        if error is not None:
            peer.client.send("login", name)
            self.expect(self.gather(), {peer: [("error", error)]})
            return
        # The model changes before the step: a slow reader dropped during
        # it is announced to the members of that moment, this one included.
        expected: dict[Peer, list[Signature]] = {
            other: [("presence", name, "online", LOBBY)] for other in self.others_v2(peer)
        }
        expected[peer] = [("info", "login"), ("history", None)]
        peer.name = name
        self.order.append(peer)
        peer.client.send("login", name)
        got = self.gather()
        self.expect(got, expected)
        info, history = [r for r in got[peer] if r["response"] != "presence"]
        assert info["content"] == f"Login successful. You are now logged in as {name}", info
        newest = self.stored[-HISTORY_ON_LOGIN:]
        ids = history_ids(history)
        output = getattr(peer.client.protocol, "output", None)
        if peer.v2 or (output is not None and output.name == "lines"):
            assert ids == newest, (ids, newest)
        else:  # classic v1: trimmed to what fits one 4096-byte read
            assert ids == newest[len(newest) - len(ids):], (ids, newest)

    def do_logout(self, peer: Peer) -> None:
        if peer.name is None:
            peer.client.send("logout")
            self.expect(self.gather(), {peer: [("error", "not_logged_in")]})
            return
        expected = self.leave_everything(peer)
        expected[peer] = [("info", "logout")]
        peer.name = None
        peer.timer_from = self.clock.seconds()
        peer.client.send("logout")
        self.expect(self.gather(), expected)

    def leave_everything(self, peer: Peer) -> dict[Peer, list[Signature]]:
        """``peer`` logs out or its connection ends: it leaves its rooms,
        then ``#lobby``; the presence the others get for it."""
        told: dict[Peer, list[Signature]] = {}
        for key in peer.rooms:
            room = self.rooms[key]
            room.leave(peer)
            for member in room.members:
                if member.v2:
                    told.setdefault(member, []).append(("presence", peer.name, "offline", room.name))
        peer.rooms = []
        if peer in self.order:
            self.order.remove(peer)
            for other in self.others_v2(peer):
                told.setdefault(other, []).append(("presence", peer.name, "offline", LOBBY))
        return told

    def run1(self, peer: Peer, plan: Planned) -> str | None:
        """Send one planned request; the error it got, if any."""
        self.run(peer, [plan])
        return plan.error

    def run(self, peer: Peer, plans: list[Planned]) -> dict[Peer, list[dict[str, Any]]]:
        """Send the planned requests in one read (see run_turn)."""
        return self.run_turn([(peer, plans)])

    def run_turn(self, turn: list[tuple[Peer, list[Planned]]]) -> dict[Peer, list[dict[str, Any]]]:
        """Send each connection's planned requests in one read, all in one
        reactor turn, and check that each connection got exactly what they
        give, each sender its answers in their order.

        From a v2 connection requests carry a ``ref`` (section 2), but
        every third one alone: each answer has its request's; events and
        the copies of a message that others get have none.  Several
        requests in one read each carry their own, which tells their
        answers apart.
        """
        expected: dict[Peer, list[Signature]] = {}
        for _, plans in turn:
            for plan in plans:
                # The model holds the end of the turn now: the members of
                # when its messages are stored.
                outcome = plan.audience() if plan.audience is not None else plan.expected
                for member, signatures in outcome.items():
                    expected.setdefault(member, []).extend(signatures)
        refs: dict[Peer, list[Any]] = {}
        for peer, plans in turn:
            data = b""
            for plan in plans:
                self._requests += 1
                count = self._requests
                ref = (count if count % 2 else f"r{count}") if peer.v2 and (len(plans) > 1 or count % 3) else None
                request = {"request": plan.kind, "content": plan.content, **plan.extra}
                if ref is not None:
                    request["ref"] = ref
                refs.setdefault(peer, []).append(ref)
                data += json.dumps(request).encode() + (b"\n" if peer.client.newline else b"")
            peer.client.protocol.dataReceived(data)  # the clock stands still: nothing is stored yet
        got = self.gather()
        self.expect(got, expected)
        answers: dict[Peer, list[dict[str, Any]]] = {}
        for other, responses in got.items():
            for response in responses:
                copy = response["response"] == "message" and response["sender"] != other.name
                if other in refs and response["response"] not in V2_EVENTS and not copy:
                    answers.setdefault(other, []).append(response)
                else:
                    assert "ref" not in response, (other.name, response)
        for peer, plans in turn:
            mine = answers.get(peer, [])
            turns = [refs[peer].index(r.get("ref")) if r.get("ref") in refs[peer] else -1 for r in mine]
            assert -1 not in turns and in_request_order(turns, mine), (refs[peer], mine)
            for index, plan in enumerate(plans):
                if plan.check is not None:
                    plan.check([answer for answer, of in zip(mine, turns) if of == index])
        return got

    # -- bookkeeping -----------------------------------------------------

    def gather(self, busy_refused: set[Peer] = frozenset()) -> dict[Peer, list[dict[str, Any]]]:  # type: ignore[assignment]
        """Flush the hub, read every connection, end those the server closed.

        Returns what each connection received in this step.  A close by the
        server must have a reason the spec gives; the offline presence it
        causes is expected here (``self._implied``), for :meth:`expect`.
        """
        self.clock.advance(0)
        got: dict[Peer, list[dict[str, Any]]] = {}
        self._implied = {}
        self._dropped = set()
        while True:
            for peer in self.peers:
                for response in peer.client.received():
                    got.setdefault(peer, []).append(response)
                    if not peer.v2:
                        check_v1_output(response)
                    if response["response"] == "message":
                        # #lobby's messages carry no room (section 6.1).
                        assert str(response.get("room", "")).lower() != LOBBY, response
                        peer.seen.setdefault(thread(response), []).append(response["id"])
            closed = next((peer for peer in self.peers if peer.client.closed), None)
            if closed is None:
                return got
            if self.check_close_reason(closed, got.get(closed, []), busy_refused):
                self._dropped.add(closed)
            closed.client.disconnect()
            self.peers.remove(closed)
            for other, told in self.leave_everything(closed).items():
                self._implied.setdefault(other, []).extend(told)

    def check_close_reason(self, peer: Peer, responses: list[dict[str, Any]], busy_refused: set[Peer]) -> bool:
        """Assert the server had a reason to close ``peer``; True if it was
        dropped as a slow reader (its output then may be cut short)."""
        flooded = any(r.get("code") == "rate_limited" and r["content"].startswith("Flooding") for r in responses)
        timed_out = peer.name is None and self.clock.seconds() - peer.timer_from >= LOGIN_TIMEOUT
        assert peer in busy_refused or flooded or timed_out or peer.paused, (peer, responses)
        return peer.paused and peer not in busy_refused and not flooded and not timed_out

    def expect(self, got: dict[Peer, list[dict[str, Any]]], expected: dict[Peer, list[Signature]]) -> None:
        """Every connection received exactly the responses expected, counted."""
        everyone = set(got) | set(expected) | set(self._implied)
        for peer in everyone:
            want = Counter(expected.get(peer, [])) + Counter(self._implied.get(peer, []))
            have = Counter(signature(r) for r in got.get(peer, []))
            if peer in self._dropped:
                # A slow reader dropped in this step: what was still queued
                # for it (classic pacing) went with it, but nothing else came.
                assert not have - want, (peer.name, peer.host, have, want, got.get(peer))
            else:
                assert have == want, (peer.name, peer.host, have, want, got.get(peer))

    # -- invariants --------------------------------------------------------

    @invariant()
    def chat_is_consistent(self) -> None:
        assert names_of(self.hub) == [peer.name for peer in self.order], (names_of(self.hub), self.order)
        names = names_of(self.hub)
        assert len({name.lower() for name in names}) == len(names), names
        for peer in self.peers:
            assert peer.client.protocol is not None
            assert getattr(peer.client.protocol, "name", None) == peer.name, (peer, peer.client.protocol)
            assert self.hub.is_member(peer.client.protocol) is (peer in self.order)  # type: ignore[arg-type]
            for ids in peer.seen.values():
                assert ids == sorted(set(ids)), peer.seen  # once each, in id order
        assert [m.id for m in stored(self.hub)] == self.stored
        assert not self.failures, self.failures

    @invariant()
    def rooms_are_consistent(self) -> None:
        """The server's rooms are the model's: nothing a request did not
        do changed, nothing was stored twice or lost."""
        directory = self.hub.directory
        records = {record.key: record for record in directory.records() if record.key != LOBBY}
        assert sorted(records) == sorted(self.rooms), (sorted(records), sorted(self.rooms))
        for key, room in self.rooms.items():
            record = records[key]
            assert (record.name, record.topic, record.topic_by) == (room.name, room.topic, room.topic_by), (record, room)
            assert (record.topic_set_at is None) is (room.topic_by is None), record
            assert (set(record.ops), record.voiced, record.modes) == (room.ops, (), NEW_MODES), (record, room.ops)
            assert fired(directory.members(key)) == room.names(), (key, room.names())
            assert [m.id for m in fired(self.hub.recent(room.name, None))] == room.stored, (key, room.stored)
        for peer in self.peers:
            joined = self.hub.joined_rooms(peer.client.protocol)  # type: ignore[arg-type]
            assert joined == [self.rooms[key].name for key in peer.rooms], (peer.name, joined, peer.rooms)
        for key in self.dms:
            # Guests' DMs are live only (section 6.3): nothing of them is
            # stored, though their ids count on (checked as they are sent).
            first, second = key[1:].split(" ")
            assert fired(self.hub.recent(dm_key(first, second), None)) == [], key
        state = self.stored_room_state()
        if state is not None:
            # What a restart would find: each change was written at once.
            kept_state = {
                key: (record["name"], record["topic"], record["topic_by"], set(record["ops"])) for key, record in state.items()
            }
            model = {key: (room.name, room.topic, room.topic_by, room.ops) for key, room in self.rooms.items()}
            assert kept_state == model, (kept_state, model)
        rows = self.stored_rows()
        if rows is not None:
            kept = {room.name: room.stored for room in self.rooms.values() if room.stored}
            if self.stored:
                kept[LOBBY] = self.stored
            assert rows == kept, (rows, kept)


class SQLiteChatMachine(ChatMachine):
    """The same chat over the SQLite store (a file per example).

    Ids travel to SQLite as 64-bit integers: a ``history`` id past that
    must be answered, not crash the request (it raised OverflowError).
    """

    def use_store(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chatd-stateful-")
        self.path = os.path.join(self.directory, "chat.sqlite3")
        rebuild_hub(self.hub, SQLiteHistory(self.path))
        # A reader of our own: what is in the file, not what the store says.
        self.reader = sqlite3.connect(self.path, isolation_level=None)

    def stored_rows(self) -> dict[str, list[int]] | None:
        rows: dict[str, list[int]] = {}
        for room, message_id in self.reader.execute("SELECT room, id FROM messages ORDER BY room, id"):
            rows.setdefault(room, []).append(message_id)
        return rows

    def stored_room_state(self) -> dict[str, dict[str, Any]] | None:
        rows = self.reader.execute("SELECT key, record FROM room_state")
        return {key: json.loads(record) for key, record in rows if key != LOBBY}

    def teardown(self) -> None:
        super().teardown()
        self.reader.close()
        self.hub.history.close()
        shutil.rmtree(self.directory, ignore_errors=True)


ChatMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SQLiteChatMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class StatefulChatTests(ChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc,valid-type]
    """Run the state machine (bounded examples) under trial and pytest."""

    def test_machine(self) -> None:
        """The machine's runs (trial collects ``test_`` methods only, not
        hypothesis' ``runTest``; pytest then runs this one alone)."""
        self.runTest()  # type: ignore[no-untyped-call]  # hypothesis leaves it unannotated


class StatefulSQLiteChatTests(SQLiteChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc,valid-type]
    """The state machine over the SQLite store (fewer examples: file I/O)."""

    def test_machine(self) -> None:
        """As :meth:`StatefulChatTests.test_machine`."""
        self.runTest()  # type: ignore[no-untyped-call]  # hypothesis leaves it unannotated

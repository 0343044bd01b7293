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

A second machine, :class:`AccountsChatMachine` (over memory and over
SQLite), runs a server with ``--accounts optional`` and a server operator
against the model of tests/stateful_accounts.py (PROTOCOL.md sections
6.3-6.5, issue 16): ``register`` (names, weak passwords, taken names, the
registration rate), ``login`` with a password (right, wrong, unknown, the
throttle of 5 failures in 60 s per address or account, decided before
any hashing), several sessions of an account up to ``--max-sessions``,
logouts of one of them and of the last, ``join`` and ``part`` applying to
the name, DMs to every v2 session, DMs to an offline account delivered
once at its next login, ``password``, and every moderation request from
ops, members, outsiders and root (kicks and bans from ``#lobby`` close
the target's sessions; bans and mutes with and without a duration while
time passes).  Each request's answers, events and closes are checked
exactly, as are the server's names, sessions, rooms (members, ops,
voiced, modes), accounts' rooms, kept DMs and delivery marks, bans and
mutes after every step.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections import Counter
from typing import Any, cast

from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from chatd.accounts.passwords import Passwords
from chatd.accounts.service import AccountService
from chatd.accounts.throttle import LocalThrottle
from chatd.core.rooms import dm_key, dm_parties
from chatd.messages import HELP_TEXT
from chatd.server import ChatFactory
from chatd.stores.history import HistoryStore, MemoryHistory, SQLiteHistory
from tests.accounts_support import CountingArgon, SyncPool, SyncReactor
from tests.stateful_accounts import (
    LOGIN_TIMEOUT as ACCOUNT_LOGIN_TIMEOUT,
    MAX_MESSAGE as MAX_ACCOUNT_MESSAGE,
    MAX_ROOMS as ACCOUNT_MAX_ROOMS,
    MAX_SESSIONS,
    MIN_PASSWORD,
    MODE_FLAGS,
    MODERATION,
    OPERATOR,
    REGISTER_RATE,
    Account,
    AccountWorld,
    Conn,
    Step,
    account_signature,
)
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
    is_valid_name,
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



def _holds_a_request(data: bytes) -> bool:
    """Whether some line of ``data`` is a JSON object naming a request
    type the server knows."""
    from chatd.frontends.json.protocol import ChatProtocol

    known = {name[len("request_") :] for name in dir(ChatProtocol) if name.startswith("request_")}
    for piece in data.split(b"\n"):
        try:
            value = json.loads(piece)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("request") in known:
            return True
    return False

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
        # Hypothesis may assemble a real request from the strings it finds
        # here (e.g. {"request":"help","":null}, which help answers): that
        # is no garbage.
        assume(not _holds_a_request(data))
        peer = self.pick(index)
        peer.client.send_raw(data)
        got = self.gather()
        # Random bytes: at most one bad_json for the chunk, and nothing but
        # errors (the bytes may hold an object such as {}: bad_request, or
        # {"request": ""}: a request type nobody knows, unknown_request).
        answers = direct_answers(got.get(peer, []))
        assert set(answers) <= {("error", "bad_json"), ("error", "bad_request"), ("error", "unknown_request")}, answers
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


# -- accounts, sessions and moderation (issue 16) ---------------------------

#: Where the accounts machine's clients connect from: the third is the
#: first one mapped into IPv6, which counts as the same address.
ACCOUNT_HOSTS = ["10.0.0.1", "10.0.0.2", "::ffff:10.0.0.1"]
#: Where password guesses come from (its throttle leaves the others be).
GUESS_HOST = "10.0.0.9"
#: Open connections at most (each rule but connect works on these).
ACCOUNT_CONNECTIONS = 10
#: Names a ``register`` tries: new ones, taken ones in other cases, an
#: IRC nick, a name as long as a password, bad names and a non-string.
REGISTER_NAMES: list[Any] = ["carol", "Carol", "dave", "a_b-c", "Mallory8", "_x", "alice", "ROOT", "bad name", "",
                             "x" * 33, "server", 7]
#: Passwords a ``register`` tries: good, too short, too long, with U+0000,
#: equal to Mallory8, non-ASCII (10 bytes, 8 code points), not a string.
REGISTER_PASSWORDS: list[Any] = ["correct horse", "correct horse", "battery staple", "short", "", "x" * 1025,
                                 "nul\x00password", "mallory8", "p\u00e4ssw\u00f6rd", 5]
#: Names a login with a password gives: accounts (some in other cases),
#: names that are none, names no account may have.
LOGIN_NAMES: list[Any] = ["alice", "ALICE", "bob", "bob", "root", "carol", "dave", "a_b-c", "Mallory8", "_x", "nobody",
                          "bad name", "server", 7]
#: What password a login gives: the account's, a wrong one, one over
#: 1024 bytes (never hashed), the right one in other case, the one it had
#: before its last change, a non-string.
PASSWORD_KINDS = ["right", "right", "right", "right", "right", "wrong", "long", "case", "previous", "not_string"]
GUEST_NAMES: list[Any] = ["ann", "Ben", "zed", "alice", "Bob", "carol", "root", "server", "bad name", "", 7]
ACCOUNT_ROOMS = ["#dev", "#Dev", "#ops", "#OPS", "#a_b", "#zz", "#lobby", "#Lobby", "dev", "#"]
#: A moderation request's room: mostly the actor's own (``<mine>``).
MODERATION_ROOMS = ["<mine>"] * 6 + ["#lobby", "#Lobby", "#dev", "#ops", "#nowhere", "dev"]
#: A moderation request's user: a member of the room, the actor, names.
MODERATION_USERS = ["<member>"] * 5 + ["<self>", "alice", "Bob", "ann", "root", "carol", "zed", "bad name", ""]
DURATIONS: list[Any] = [None, None, None, None, 5, 5, 60, 0, "5", 1.5]
COMMENTS: list[Any] = [None, None, None, "spam", "multi\nline\tand tab", "   ", 5]
ACCOUNT_DM_TO = ["alice", "BOB", "root", "ann", "carol", "dave", "zed", "a_b-c", "bad name", "server", "<self>", "<self>"]
ACCOUNT_TEXTS = ["hi", "hi", "hi", "  ", "x" * (MAX_ACCOUNT_MESSAGE + 1)]
#: A moderation request of the wrong shape now and then.
SHAPES = ["ok"] * 12 + ["no_room", "user_int", "content_str"]


class AccountClient(FakeClient):
    """A FakeClient whose (made-up) ports come round again: the accounts
    machine opens many connections, more than FakeClient's range holds
    over a long run."""

    _ports = itertools.cycle(range(20000, 40000))


def accounts_factory(store: HistoryStore) -> tuple[ChatFactory, CountingArgon]:
    """A chat server over ``store`` with ``--accounts optional``, root a
    server operator, and Argon2 cheap, counted and synchronous
    (tests/accounts_support.py)."""
    base = make_factory(
        store=store, max_message=MAX_ACCOUNT_MESSAGE, accounts="optional", max_sessions=MAX_SESSIONS,
        hub_options={"max_rooms_per_user": ACCOUNT_MAX_ROOMS},
    )
    argon = CountingArgon()
    # The two reactor methods the pool uses, synchronous (IReactorThreads in shape).
    passwords = Passwords(cast(IReactorThreads, SyncReactor(SyncPool())), argon=argon)
    throttle = LocalThrottle(base.clock, register_rate=REGISTER_RATE)
    service = AccountService(store, passwords, throttle, base.clock, min_password=MIN_PASSWORD)
    operators = frozenset({OPERATOR})
    factory = ChatFactory(base.hub, base.config, base.clock, accounts=service, operators=operators)
    base.hub.use_accounts(store, operators, max_sessions=MAX_SESSIONS)
    return factory, argon


class AccountsChatMachine(RuleBasedStateMachine):
    """Accounts, several sessions of a name, kept DMs and moderation
    (PROTOCOL.md sections 6.3-6.5, issue 16), against the model of
    tests/stateful_accounts.py.

    Each step sends one request (v2 connections with a ``ref``) and checks
    that every connection got exactly what the model says, the sender's
    answers in request order and before the events they cause; that the
    server closed exactly the connections the model says (kicked or banned
    from ``#lobby``, or past the login timeout); and that the Argon2 calls
    are the model's (none for a throttled login, an unknown account, a
    password over 1024 bytes or a weak one).  The invariants compare the
    server's state with the model's: names and sessions, rooms (listed
    members, ops, voiced, modes, messages), accounts and their kept rooms,
    kept DMs and delivery marks (guests' sides never kept), bans, mutes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.factory, self.argon = accounts_factory(self.store)
        self.hub = self.factory.hub
        clock = self.factory.clock
        assert isinstance(clock, Clock)  # make_factory's: the rules move its time
        self.clock = clock
        self.world = AccountWorld(clock)
        self.conns: list[Conn] = []
        self._refs = 0
        self._registered = 0  # names register_many made up
        self.failures: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)  # type: ignore[arg-type]

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            self.failures.append(event)

    def teardown(self) -> None:
        """Stop watching the log."""
        globalLogPublisher.removeObserver(self._observe)  # type: ignore[arg-type]

    def make_store(self) -> HistoryStore:
        """The store under test (here: memory)."""
        return MemoryHistory()

    # -- picking ----------------------------------------------------------

    def pick(self, index: int, want: str = "any") -> Conn:
        """A connection: ``in`` logged in, ``v2`` logged in with hello
        (either falls back to any); ``out``: a logged-out one, often a new
        one (see :meth:`fresh`)."""
        if want == "out":
            return self.fresh(index)
        if want == "in":
            fitting = [conn for conn in self.conns if conn.name is not None]
        elif want == "v2":
            fitting = [conn for conn in self.conns if conn.name is not None and conn.v2] or [
                conn for conn in self.conns if conn.name is not None]
        else:
            fitting = []
        chosen = fitting or self.conns
        return chosen[index % len(chosen)]

    def fresh(self, index: int) -> Conn:
        """A logged-out connection: an open one, or a new one (mostly v2,
        from one of the hosts) while there is room for it."""
        out = [conn for conn in self.conns if conn.name is None]
        room = len(self.conns) < ACCOUNT_CONNECTIONS
        if out and (index % 3 or not room):
            return out[index % len(out)]
        if room:
            return self.open(ACCOUNT_HOSTS[index % len(ACCOUNT_HOSTS)], v2=index % 4 != 3)
        return self.conns[index % len(self.conns)]

    def pick_actor(self, index: int, who: str) -> tuple[Conn, str | None]:
        """A moderator and a room of its, spelled in another case: ``op``
        of the room, ``member``, ``root`` (the server operator, and a room
        of its if any); ``anyone``, or when there is none such: any
        connection, no room."""
        world = self.world
        pairs: list[tuple[Conn, str | None]] = []
        for conn in self.conns:
            if conn.name is None or not conn.v2:
                continue
            lower = conn.name.lower()
            mine = [room for room in world.rooms.values() if lower in room.listed]
            if who == "op":
                pairs += [(conn, room.name.swapcase()) for room in mine if lower in room.ops]
            elif who == "member":
                pairs += [(conn, room.name.swapcase()) for room in mine]
            elif who == "root" and lower == OPERATOR:
                pairs += [(conn, room.name) for room in mine] or [(conn, None)]
        if pairs:
            return pairs[index % len(pairs)]
        return self.pick(index, "any" if who == "anyone" else "v2"), None

    def root_session(self, index: int) -> Conn | None:
        """A v2 session of root, the server operator: one of its, or a new
        one logged in now (None if there is no room for it or it may not)."""
        sessions = self.world.v2_sessions(OPERATOR)  # a guest's, unless guest_operator is avoided
        if sessions:
            return sessions[index % len(sessions)]
        if OPERATOR not in self.world.accounts:
            return None  # not registered (yet): nobody is server operator
        if len(self.conns) >= ACCOUNT_CONNECTIONS or len(self.world.sessions(OPERATOR)) >= MAX_SESSIONS:
            return None
        conn = self.open(ACCOUNT_HOSTS[index % len(ACCOUNT_HOSTS)], v2=True)
        self.log_in(conn, OPERATOR, self.world.accounts[OPERATOR].password)
        return conn if conn.name is not None else None

    def resolve(self, conn: Conn, name: str) -> str:
        """``<self>``: the sender's own name, in another case."""
        return (conn.name or "ann").swapcase() if name == "<self>" else name

    # -- sending and checking ------------------------------------------------

    def run(self, step: Step) -> dict[Conn, list[dict[str, Any]]]:
        """Send the planned request; check what everyone got, what closed
        and what was hashed."""
        request = dict(step.request)
        ref: Any = None
        if step.ref:
            self._refs += 1
            ref = self._refs if self._refs % 2 else f"r{self._refs}"
            request["ref"] = ref
        hashed = self.argon.calls
        step.sender.client.protocol.dataReceived(json.dumps(request).encode() + b"\n")
        got = self.gather(step.closes)
        assert self.argon.calls - hashed == step.hashes, (request, self.argon.calls - hashed, step.hashes)
        self.compare(step, got, ref)
        return got

    def gather(self, closes: set[Conn]) -> dict[Conn, list[dict[str, Any]]]:
        """Let the hub flush, read every connection, end those the server
        closed: exactly ``closes``."""
        self.clock.advance(0)
        got: dict[Conn, list[dict[str, Any]]] = {}
        ended: set[Conn] = set()
        while True:
            for conn in self.conns:
                for response in conn.client.received():
                    got.setdefault(conn, []).append(response)
                    if not conn.v2:
                        check_v1_output(response)
            closed = next((conn for conn in self.conns if conn.client.closed), None)
            if closed is None:
                break
            assert closed in closes, (closed.name, closed.host, got.get(closed))
            ended.add(closed)
            closed.client.disconnect()
            self.conns.remove(closed)
        assert ended == closes, [(conn.host, got.get(conn)) for conn in closes - ended]
        return got

    def compare(self, step: Step, got: dict[Conn, list[dict[str, Any]]], ref: Any) -> None:
        """Everyone got exactly what the step says, counted; only the
        sender's answers carry its ref, in order (a login's undelivered DM
        histories come last, in any order), the first before any event."""
        for conn in set(got) | set(step.expected):
            have = Counter(account_signature(response) for response in got.get(conn, []))
            want = Counter(step.expected.get(conn, []))
            assert have == want, (conn.name, conn.host, step.request, have - want, want - have, got.get(conn))
        for conn, responses in got.items():
            for response in responses:
                assert "ref" not in response or (conn is step.sender and response["ref"] == ref), (conn.name, response)
        mine = [account_signature(response) for response in got.get(step.sender, [])]
        answers = [signature for signature in mine if signature[-1]]
        wanted = [signature for signature in step.expected.get(step.sender, []) if signature[-1]]
        kept_dms = [signature for signature in answers if signature[0] == "history_with"]
        if step.request["request"] == "login":
            assert answers[len(answers) - len(kept_dms):] == kept_dms, answers  # last
        else:
            assert len(kept_dms) <= 1, answers
        in_order = [signature for signature in answers if signature[0] != "history_with"]
        assert in_order == [signature for signature in wanted if signature[0] != "history_with"], (answers, wanted)
        if wanted:
            assert mine[0] == wanted[0], (mine, wanted)

    # -- rules: connections, accounts, sessions ---------------------------------

    def register_directly(self, name: str, password: str) -> None:
        """An account made beside the protocol (an admin's: no registration rate)."""
        fired(self.factory.accounts.register(name, password, "192.0.2.9", exempt=True))  # type: ignore[union-attr]
        self.world.accounts[name.lower()] = Account(name, password)
        self.world.saw(password)

    @initialize(
        root=st.booleans(), registered=st.sampled_from([True, True, True, False]),
        room=st.sampled_from([None, "#Dev", "#Dev"]), classic=st.booleans(),
    )
    def start(self, root: bool, registered: bool, room: str | None, classic: bool) -> None:
        """alice and bob (accounts) and ann (a guest, often v1) logged in,
        root (the server operator) often too; often alice's room with bob
        and ann in it (alice is its op).  Now and then root's account is
        not registered yet (a register rule may make it)."""
        for name in ("alice", "bob", OPERATOR) if registered else ("alice", "bob"):
            self.register_directly(name, f"{name} password")
        logins = [("alice", True, True), ("bob", True, True), ("ann", not classic, False)]
        if root and registered:
            logins.append((OPERATOR, True, True))
        for index, (name, v2, account) in enumerate(logins):
            conn = self.open(ACCOUNT_HOSTS[index % 2], v2)
            self.run(self.world.plan_login(conn, name, f"{name} password", with_password=account))
        if room is not None:
            for index, conn in enumerate(self.conns[:3]):
                if conn.v2:
                    self.run(self.world.plan_join(conn, room if index == 0 else room.swapcase(), as_object=index == 1))

    @precondition(lambda self: len(self.conns) < ACCOUNT_CONNECTIONS)
    @rule(host=st.sampled_from(ACCOUNT_HOSTS), v2=st.sampled_from([True, True, True, False]))
    def connect(self, host: str, v2: bool) -> None:
        """A new connection (mostly with hello)."""
        self.open(host, v2)

    def open(self, host: str, v2: bool) -> Conn:
        """A new connection from ``host``; with ``v2``, hello first."""
        conn = Conn(AccountClient(self.factory, host=host), host, v2, timer_from=self.world.now())
        self.conns.append(conn)
        if v2:
            conn.client.send_raw(json.dumps({"request": "hello", "content": {"protocol": 2}}).encode() + b"\n")
            got = self.gather(set())
            assert [r["response"] for r in got.get(conn, [])] == ["hello"], got
            hello = got[conn][0]["content"]
            assert {"accounts", "moderation", "multisession"} <= set(hello["features"]), hello
            assert hello["limits"]["max_sessions"] == MAX_SESSIONS, hello
        return conn

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), name=st.sampled_from(REGISTER_NAMES), password=st.sampled_from(REGISTER_PASSWORDS))
    def register(self, index: int, name: Any, password: Any) -> None:
        """``register`` from any connection, logged in or not."""
        self.run(self.world.plan_register(self.pick(index), name, password))

    @rule(index=st.integers(0, 50), name=st.sampled_from(LOGIN_NAMES), kind=st.sampled_from(PASSWORD_KINDS),
          anyone=st.sampled_from([False, False, False, True]))
    def login(self, index: int, name: Any, kind: str, anyone: bool) -> None:
        """A login with a password, from a logged-out connection (or,
        ``anyone``, any: already_logged_in)."""
        conn = self.pick(index, "any" if anyone and self.conns else "out")
        account = self.world.accounts.get(name.lower()) if isinstance(name, str) else None
        right = account.password if account is not None else "whatever password"
        previous = account.previous if account is not None and account.previous is not None else "wrong password"
        password: Any = {"right": right, "wrong": "wrong password", "long": right + "y" * 1025, "case": right.upper(),
                         "previous": previous, "not_string": 5}[kind]
        self.log_in(conn, name, password)

    def log_in(self, conn: Conn, name: Any, password: Any) -> None:
        """``conn`` logs in as ``name`` with ``password`` (unless that runs
        into v1_first_rejoin)."""
        if self.world.avoids("v1_first_rejoin") and conn.v2 and conn.name is None and isinstance(name, str):
            sessions = self.world.sessions(name.lower())
            if sessions and not sessions[0].v2 and any(other.v2 for other in sessions):
                return
        self.run(self.world.plan_login(conn, name, password, with_password=True))

    @rule(index=st.integers(0, 50), name=st.sampled_from(GUEST_NAMES))
    def login_guest(self, index: int, name: Any) -> None:
        """A login without a password."""
        self.guest_log_in(self.pick(index, "out"), name)

    def guest_log_in(self, conn: Conn, name: Any) -> None:
        """``conn`` logs in as a guest (unless that runs into guest_operator)."""
        if self.world.avoids("guest_operator") and name == OPERATOR and OPERATOR not in self.world.accounts:
            return
        self.run(self.world.plan_login(conn, name))

    @rule(index=st.integers(0, 50))
    def another_session(self, index: int) -> None:
        """An account online logs in once more (up to --max-sessions, then
        forbidden), from a new connection mostly."""
        online = [holder.name for holder in self.world.online.values() if holder.account]
        name = online[index % len(online)] if online else "alice"
        password = self.world.accounts[name.lower()].password
        self.log_in(self.pick(index, "out"), name.swapcase() if index % 2 else name, password)

    @rule(index=st.integers(0, 50))
    def come_back(self, index: int) -> None:
        """An account that is not online logs in (its rooms and the DMs it
        missed come back), from a logged-out v2 connection mostly."""
        away = [account for key, account in self.world.accounts.items() if key not in self.world.online]
        if away:
            account = away[index % len(away)]
            self.log_in(self.pick(index, "out"), account.name, account.password)

    @precondition(lambda self: len(self.conns) < ACCOUNT_CONNECTIONS)
    @rule(
        name=st.sampled_from(["nobody", "nobody", "carol", "dave", "bob"]), count=st.integers(1, 6), then_right=st.booleans()
    )
    def guess(self, name: str, count: int, then_right: bool) -> None:
        """Wrong passwords in a row from a new connection of its own
        address: the sixth within 60 s (per address or per account) is
        rate_limited before hashing, the right one too."""
        conn = self.open(GUESS_HOST, v2=True)
        for attempt in range(count):
            if conn not in self.conns or conn.name is not None:
                return
            self.log_in(conn, name, f"wrong guess {attempt}")
        account = self.world.accounts.get(name)
        if then_right and account is not None and conn in self.conns and conn.name is None:
            self.log_in(conn, name, account.password)

    def ends_badly(self, conn: Conn) -> bool:
        """Whether ending ``conn`` would hit ghost_member (then it is left be)."""
        return self.world.avoids("ghost_member") and self.world.ghost(conn)

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50))
    def logout(self, index: int) -> None:
        """``logout`` (mostly of a logged-in connection)."""
        conn = self.pick(index, "in")
        if not self.ends_badly(conn):
            self.run(self.world.plan_logout(conn))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50))
    def disconnect(self, index: int) -> None:
        """A client goes away."""
        conn = self.pick(index)
        if self.ends_badly(conn):
            return
        step = Step(conn, {"request": "disconnect"}, ref=False)
        if conn.name is not None:
            self.world.end_session(step, conn)
        conn.client.disconnect()
        self.conns.remove(conn)
        self.compare(step, self.gather(set()), None)

    @rule(seconds=st.sampled_from([0.5, 5.0, 30.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        """Bans, mutes, the throttle and the registration rate run out; a
        connection not logged in for 60 s is closed (nobody is told)."""
        self.clock.advance(seconds)
        now = self.world.now()
        timed_out = {conn for conn in self.conns if conn.name is None and conn.timer_from + ACCOUNT_LOGIN_TIMEOUT <= now}
        got = self.gather(timed_out)
        assert not any(got.values()), got

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), old=st.sampled_from(["right", "right", "wrong", "long"]),
          new=st.sampled_from(["new password", "short", "x" * 1025, "<name>"]))
    def password(self, index: int, old: str, new: str) -> None:
        """``password``: a change, with the right or a wrong old one."""
        conn = self.pick(index, "v2")
        account = self.world.accounts.get(str(conn.name).lower()) if conn.account else None
        right = account.password if account is not None else "whatever password"
        given = {"right": right, "wrong": "wrong password", "long": "y" * 1025}[old]
        # <name>: the account's name in another case (weak: too short, or the name).
        self.run(self.world.plan_password(conn, given, (conn.name or "x").swapcase() if new == "<name>" else new))

    # -- rules: rooms and messages ------------------------------------------------

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), room=st.sampled_from(ACCOUNT_ROOMS), as_object=st.booleans(),
          anyone=st.sampled_from([False, False, False, True]))
    def join(self, index: int, room: str, as_object: bool, anyone: bool) -> None:
        """``join``, mostly from a logged-in v2 connection."""
        self.run(self.world.plan_join(self.pick(index, "any" if anyone else "v2"), room, as_object))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), who=st.sampled_from(["member", "member", "anyone"]),
          room=st.sampled_from(ACCOUNT_ROOMS + ["#nowhere"]), comment=st.sampled_from([None, None, "bye", "  \n"]))
    def part(self, index: int, who: str, room: str, comment: str | None) -> None:
        """``part``, mostly of a room of the sender's."""
        conn, mine = self.pick_actor(index, who)
        if comment and self.world.avoids("part_comment_self") and conn.name is not None:
            if len(self.world.v2_sessions(conn.name.lower())) > 1:
                comment = None
        self.run(self.world.plan_part(conn, mine or room, comment))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), who=st.sampled_from(["member", "member", "op", "anyone"]),
          where=st.sampled_from(["mine", "mine", "lobby", "none", "other"]), room=st.sampled_from(ACCOUNT_ROOMS),
          text=st.sampled_from(ACCOUNT_TEXTS))
    def msg(self, index: int, who: str, where: str, room: str, text: str) -> None:
        """``msg`` to #lobby (naming it or not) or a room."""
        conn, mine = self.pick_actor(index, who)
        target = {"mine": mine, "lobby": "#Lobby", "none": None, "other": room}[where] if where != "mine" or mine else None
        if target is None and conn.name is not None and self.world.avoids("lobby_mute_roomless"):
            if self.world.muted(LOBBY, conn.name.lower()):
                target = LOBBY
        self.run(self.world.plan_post(conn, text, target))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), to=st.sampled_from(ACCOUNT_DM_TO), text=st.sampled_from(ACCOUNT_TEXTS),
          anyone=st.sampled_from([False, False, False, True]))
    def dm(self, index: int, to: str, text: str, anyone: bool) -> None:
        """``msg`` with ``to``: online names, offline accounts, bad names, oneself."""
        conn = self.pick(index, "any" if anyone else "v2")
        self.send_dm(conn, text, self.resolve(conn, to))

    def send_dm(self, conn: Conn, text: str, to: str) -> None:
        """A DM, unless it runs into dm_to_v1_account."""
        world = self.world
        if world.avoids("dm_to_v1_account") and conn.name is not None and is_valid_name(to):
            sessions = world.sessions(to.lower())
            both = to.lower() in world.accounts and conn.name.lower() in world.accounts
            if both and sessions and not any(other.v2 for other in sessions):
                return
        self.run(world.plan_dm(conn, text, to))

    @precondition(lambda self: any(conn.account and conn.v2 for conn in self.conns))
    @rule(index=st.integers(0, 50), count=st.integers(1, 3))
    def dm_offline(self, index: int, count: int) -> None:
        """An account writes to an account that is not online: kept, and
        delivered once at its next login (come_back)."""
        world = self.world
        senders = [conn for conn in self.conns if conn.account and conn.v2]
        conn = senders[index % len(senders)]
        away = [account.name for key, account in world.accounts.items() if key not in world.online]
        for _ in range(count):
            self.send_dm(conn, "while you were away", away[index % len(away)] if away else "alice")

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), name=st.sampled_from(ACCOUNT_DM_TO), limit=st.sampled_from([None, None, 1]))
    def history_with(self, index: int, name: str, limit: int | None) -> None:
        """``history`` with ``with``."""
        conn = self.pick(index, "v2")
        self.run(self.world.plan_history_with(conn, self.resolve(conn, name), limit))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), count=st.integers(1, 3))
    def register_many(self, index: int, count: int) -> None:
        """New accounts from one connection, past --register-rate."""
        conn = self.pick(index)
        for _ in range(count):
            if conn not in self.conns:
                return
            self._registered += 1
            self.run(self.world.plan_register(conn, f"user{self._registered}", "long enough"))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50), text=st.sampled_from(["hi", "hi", "  "]))
    def restricted_try(self, index: int, text: str) -> None:
        """Someone a ban, a mute or a mode holds back tries anyway: a
        banned name joins (or logs in, banned from #lobby), a muted one
        posts, a name not invited joins an invite-only room, a member
        neither op nor voiced posts to a moderated room (each may have
        ended meanwhile; root is exempt from all)."""
        world = self.world
        tries: list[tuple[str, str, str]] = []  # (what, name key, room key)
        for (key, lower), _ends in sorted(world.bans.items()):
            tries.append(("login" if key == LOBBY else "join", lower, key))
        for (key, lower), _ends in sorted(world.mutes.items()):
            tries.append(("post", lower, key))
        for key, room in sorted(world.rooms.items()):
            if room.modes["invite_only"]:
                tries += [("join", lower, key) for lower in world.online if lower not in room.listed]
            if room.modes["moderated"]:
                tries += [("post", lower, key) for lower in room.listed]
        if not tries:
            return
        what, lower, key = tries[index % len(tries)]
        if what == "login":
            account = world.accounts.get(lower)
            conn = self.pick(index, "out")
            if account is not None:
                self.log_in(conn, account.name, account.password)
            else:
                self.guest_log_in(conn, lower)
            return
        sessions = world.v2_sessions(lower) if what == "join" or key != LOBBY else world.sessions(lower)
        if not sessions:
            return
        conn = sessions[index % len(sessions)]
        shown = world.rooms[key].name if key in world.rooms else LOBBY
        if what == "join":
            self.run(world.plan_join(conn, shown.swapcase(), as_object=bool(index % 2)))
        else:
            self.run(world.plan_post(conn, text, shown.swapcase()))

    @precondition(lambda self: self.conns)
    @rule(index=st.integers(0, 50),
          story=st.sampled_from(["ban", "mute", "invite_only", "moderated", "lobby_ban", "lobby_mute"]),
          duration=st.sampled_from([None, None, 5]))
    def story(self, index: int, story: str, duration: int | None) -> None:
        """A moderation story, each step checked as any other: an op bans
        a member, who cannot join (until unbanned); mutes one, who cannot
        post (until unmuted); makes the room invite-only, so an outsider
        cannot join until invited; makes it moderated, so a member cannot
        post until voiced; root bans someone from #lobby (online or not),
        who cannot log in, or mutes someone there, who cannot post until
        unmuted.  The other rules run between stories, time passes too."""
        world = self.world
        conn, mine = self.pick_actor(index, "op")
        if story.startswith("lobby") or mine is None:
            root = self.root_session(index)
            if root is None:
                return
            conn = root
            if not story.startswith("lobby"):
                rooms = sorted(world.rooms)
                if not rooms:
                    return
                mine = world.rooms[rooms[index % len(rooms)]].name
        actor = str(conn.name).lower()
        if story == "lobby_mute":
            names = [lower for lower in world.online if lower != actor]
            if names:
                target = names[index % len(names)]
                shown = world.canonical(target)
                self.moderation(conn, "mute", {"room": LOBBY, "user": shown, **({"duration": duration} if duration else {})})
                self.try_post(target, None, index)
                self.moderation(conn, "unmute", {"room": LOBBY, "user": shown})
                self.try_post(target, None, index)
            return
        if story == "lobby_ban":
            away = [lower for lower in world.accounts if lower not in world.online]
            names = [lower for lower in world.online if lower != actor] + away + ["zed"]
            target = names[index % len(names)]
            if target in world.online:
                shown = world.canonical(target)
            else:
                shown = world.accounts[target].name if target in world.accounts else target
            self.moderation(conn, "ban", {"room": LOBBY, "user": shown, **({"duration": duration} if duration else {})})
            account = world.accounts.get(target)
            again = self.pick(index, "out")
            if account is not None:
                self.log_in(again, account.name, account.password)
            else:
                self.guest_log_in(again, shown)
            return
        assert mine is not None
        room = world.rooms[mine.lower()]
        members = [lower for lower in room.listed if lower != actor]
        outsiders = [lower for lower in world.online if lower not in room.listed and world.v2_sessions(lower)]
        extra = {"duration": duration} if duration else {}
        if story in ("ban", "mute", "moderated") and members:
            target = members[index % len(members)]
            shown = world.canonical(target)
            if story == "ban":
                self.moderation(conn, "ban", {"room": mine, "user": shown, **extra})
                self.try_join(target, mine, index)
                self.moderation(conn, "unban", {"room": mine, "user": shown.swapcase()})
                self.try_join(target, mine, index)
            elif story == "mute":
                self.moderation(conn, "mute", {"room": mine, "user": shown, **extra})
                self.try_post(target, mine, index)
                self.moderation(conn, "unmute", {"room": mine, "user": shown})
                self.try_post(target, mine, index)
            else:
                self.moderation(conn, "mode", {"room": mine, "moderated": True})
                self.try_post(target, mine, index)
                self.moderation(conn, "voice", {"room": mine, "user": shown})
                self.try_post(target, mine, index)
                self.moderation(conn, "devoice", {"room": mine, "user": shown})
                self.moderation(conn, "op", {"room": mine, "user": shown})
                self.moderation(conn, "deop", {"room": mine, "user": shown})
        elif story == "invite_only" and outsiders:
            target = outsiders[index % len(outsiders)]
            self.moderation(conn, "mode", {"room": mine, "invite_only": True})
            self.try_join(target, mine, index)
            self.moderation(conn, "invite", {"room": mine, "user": world.canonical(target).upper()})
            self.try_join(target, mine, index)

    def try_join(self, lower: str, room: str, index: int) -> None:
        """A v2 session of ``lower`` (if it has one) joins ``room``."""
        sessions = self.world.v2_sessions(lower)
        if sessions:
            self.run(self.world.plan_join(sessions[index % len(sessions)], room.swapcase(), as_object=True))

    def try_post(self, lower: str, room: str | None, index: int) -> None:
        """A v2 session of ``lower`` (if it has one) posts to ``room``; to
        #lobby (None) any session, naming no room (unless that runs into
        lobby_mute_roomless)."""
        world = self.world
        sessions = world.v2_sessions(lower) if room is not None else world.sessions(lower)
        if not sessions:
            return
        if room is None and world.avoids("lobby_mute_roomless") and world.muted(LOBBY, lower):
            room = LOBBY
        self.run(world.plan_post(sessions[index % len(sessions)], "let me speak", room))

    # -- rules: moderation ---------------------------------------------------------

    @precondition(lambda self: self.conns)
    @rule(
        index=st.integers(0, 50), who=st.sampled_from(["op", "op", "op", "root", "member", "anyone"]),
        kind=st.sampled_from(list(MODERATION) + ["kick", "ban", "mute", "op", "mode"]),
        room=st.sampled_from(MODERATION_ROOMS), user=st.sampled_from(MODERATION_USERS), n=st.integers(0, 50),
        duration=st.sampled_from(DURATIONS), comment=st.sampled_from(COMMENTS),
        flags=st.one_of(
            st.dictionaries(st.sampled_from(MODE_FLAGS), st.booleans(), max_size=3), st.just({"moderated": "yes"})
        ),
        shape=st.sampled_from(SHAPES),
    )
    def moderate(
        self, index: int, who: str, kind: str, room: str, user: str, n: int, duration: Any, comment: Any,
        flags: dict[str, Any], shape: str,
    ) -> None:
        """kick, ban, unban, mute, unmute, op, deop, voice, devoice, mode
        and invite, from ops, members, root and anyone."""
        world = self.world
        conn, mine = self.pick_actor(index, who)
        room_name = (mine or "#dev") if room == "<mine>" else room
        if user == "<member>":
            key = room_name.lower()
            listed = world.rooms[key].listed if key in world.rooms else list(world.online) if key == LOBBY else []
            user = world.canonical(listed[n % len(listed)]).swapcase() if listed else "zed"
        user = self.resolve(conn, user)
        content: Any = {"room": room_name}
        takes = MODERATION[kind]
        if "user" in takes:
            content["user"] = user
        if "comment" in takes and comment is not None:
            content["comment"] = comment
        if "duration" in takes and duration is not None:
            content["duration"] = duration
        if kind == "mode":
            content.update(flags)
        if shape == "no_room":
            del content["room"]
        elif shape == "user_int":
            content["user"] = 5
        elif shape == "content_str":
            content = room_name
        self.moderation(conn, kind, content)

    def moderation(self, conn: Conn, kind: str, content: Any) -> None:
        """Send a moderation request, unless it runs into a known bug."""
        world = self.world
        if isinstance(content, dict) and isinstance(content.get("user"), str) and world.avoids("guest_operator"):
            if kind == "deop" and content["user"].lower() == OPERATOR and OPERATOR not in world.accounts:
                return
        if isinstance(content, dict) and isinstance(content.get("user"), str) and str(content.get("room")).lower() == LOBBY:
            lower = content["user"].lower()
            if kind == "ban" and world.avoids("lobby_ban_offline") and lower not in world.online:
                return
            if kind in ("kick", "ban") and world.avoids("ghost_member") and world.ghost_when_closed(lower):
                return
        self.run(world.plan_moderation(conn, kind, content))

    @precondition(lambda self: self.conns)
    @rule(
        index=st.integers(0, 50), operator=st.sampled_from([False, False, True]),
        kind=st.sampled_from(["kick", "ban", "ban", "mute", "unmute", "unban", "op", "deop", "voice", "devoice", "invite",
                              "mode", "mode"]),
        n=st.integers(0, 50), duration=st.sampled_from([None, None, 5, 60]), comment=st.sampled_from([None, "spam", "  "]),
        flags=st.dictionaries(st.sampled_from(MODE_FLAGS), st.booleans(), max_size=2),
    )
    def op_acts(
        self, index: int, operator: bool, kind: str, n: int, duration: int | None, comment: str | None,
        flags: dict[str, bool],
    ) -> None:
        """An op of a room, or root (the server operator, in any room or
        #lobby, logged in for it if need be), acts on a member of it, or
        invites someone who is not."""
        world = self.world
        conn, room_name = self.pick_actor(index, "op")
        if operator or room_name is None:
            root = self.root_session(index)
            if root is None:
                return
            conn = root
            rooms = [room.name for room in world.rooms.values()] + [LOBBY]
            room_name = rooms[n % len(rooms)]
        key = room_name.lower()
        listed = world.rooms[key].listed if key in world.rooms else list(world.online)
        if kind == "invite":
            outside = [lower for lower in world.online if lower not in listed]
            listed = outside or listed
        user = world.canonical(listed[n % len(listed)]) if listed else "zed"
        content: dict[str, Any] = {"room": room_name}
        takes = MODERATION[kind]
        if "user" in takes:
            content["user"] = user
        if "comment" in takes and comment is not None:
            content["comment"] = comment
        if "duration" in takes and duration is not None:
            content["duration"] = duration
        if kind == "mode":
            content.update(flags)
        self.moderation(conn, kind, content)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def server_state_is_the_models(self) -> None:
        """Names, sessions, rooms, accounts, kept DMs, bans and mutes are
        the model's: nothing stored twice or lost, nothing a request did
        not do."""
        world, hub, store = self.world, self.hub, self.store
        assert names_of(hub) == [holder.name for holder in world.online.values()], (names_of(hub), list(world.online))
        for lower, holder in world.online.items():
            sessions: list[object] = list(hub.sessions_of(lower))
            assert sessions == [conn.client.protocol for conn in holder.sessions], lower
        for conn in self.conns:
            protocol: Any = conn.client.protocol
            assert protocol.name == conn.name, (conn.name, protocol.name)
            assert hub.is_member(protocol) is (conn.name is not None), conn.name
            rooms = [world.rooms[key].name for key in world.rooms_of(conn.name.lower())] if conn.name and conn.v2 else []
            assert hub.joined_rooms(protocol) == rooms, (conn.name, hub.joined_rooms(protocol), rooms)
        records = {record.key: record for record in hub.directory.records() if record.key != LOBBY}
        assert sorted(records) == sorted(world.rooms), (sorted(records), sorted(world.rooms))
        for key, room in world.rooms.items():
            record = records[key]
            state = (record.name, set(record.ops), set(record.voiced), record.modes)
            assert state == (room.name, room.ops, room.voiced, room.modes), (record, room)
            assert fired(hub.directory.members(key)) == world.listed_names(room), (key, world.listed_names(room))
            assert [m.id for m in fired(hub.recent(room.name, None))] == room.stored, key
        assert [m.id for m in stored(hub)] == world.lobby
        assert {record.key: record.name for record in store.accounts()} == {k: a.name for k, a in world.accounts.items()}
        for key, account in world.accounts.items():
            assert store.memberships(key) == account.rooms, (key, store.memberships(key), account.rooms)
        for conv in world.dms:
            for party in dm_parties(conv):
                owner = world.accounts.get(party)
                kept = [m.id for m in store.dm_recent(party, conv, None)]
                # Each DM kept once for each side that is an account; a guest's side never.
                assert kept == (owner.kept.get(conv, []) if owner is not None else []), (party, conv, kept)
                assert store.delivered(party, conv) == (owner.marks.get(conv, 0) if owner is not None else 0), (party, conv)
        assert {(b.room_key, b.key): b.expires for b in store.load_bans()} == world.bans
        assert {(m.room_key, m.key): m.expires for m in store.load_mutes()} == world.mutes
        # Banned names are not in the room (nor online, banned from #lobby),
        # server operators excepted: straight from the server's state.
        online = {name.lower() for name in names_of(hub)}
        for (key, lower), ends in world.bans.items():
            if not world.is_operator(lower) and world.active(ends):
                present = online if key == LOBBY else {n.lower() for n in fired(hub.directory.members(key))}
                assert lower not in present, (key, lower, ends)
        assert not self.failures, self.failures


ChatMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SQLiteChatMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

class SQLiteAccountsChatMachine(AccountsChatMachine):
    """The accounts machine over the SQLite store (a file per example):
    accounts, memberships, bans, mutes, kept DMs and delivery marks go
    through its tables; no password the model ever used is in the files."""

    def make_store(self) -> HistoryStore:
        """A SQLite store in a directory of its own."""
        self.directory = tempfile.mkdtemp(prefix="chatd-accounts-")
        self.path = os.path.join(self.directory, "chat.sqlite3")
        return SQLiteHistory(self.path)

    @invariant()
    def no_password_in_the_files(self) -> None:
        """No password is in the database files, in any table or journal."""
        data = b"".join(open(os.path.join(self.directory, name), "rb").read() for name in os.listdir(self.directory))
        for password in self.world.passwords_seen:
            assert password.encode() not in data, password

    def teardown(self) -> None:
        """Close the store and remove its files."""
        super().teardown()
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


AccountsChatMachine.TestCase.settings = settings(
    max_examples=500, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SQLiteAccountsChatMachine.TestCase.settings = settings(
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


class StatefulAccountsTests(AccountsChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc,valid-type]
    """The accounts machine under trial and pytest."""

    def test_machine(self) -> None:
        """As :meth:`StatefulChatTests.test_machine`."""
        self.runTest()  # type: ignore[no-untyped-call]  # hypothesis leaves it unannotated


class StatefulSQLiteAccountsTests(SQLiteAccountsChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc,valid-type]
    """The accounts machine over the SQLite store (fewer examples: file I/O)."""

    def test_machine(self) -> None:
        """As :meth:`StatefulChatTests.test_machine`."""
        self.runTest()  # type: ignore[no-untyped-call]  # hypothesis leaves it unannotated

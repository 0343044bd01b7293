"""A hypothesis state machine drives one hub through many connections.

Random sequences of every request (``login``, ``logout``, ``msg``,
``names``, ``help``, ``ping``, ``hello``, ``history``), unknown requests,
content of the wrong type, non-object JSON, garbage bytes, disconnects,
slow readers and the passing of time.  The machine keeps a model of the
chat (who is logged in, in which order, who said ``hello``, which message
ids are stored) and after every step checks that each connection got
*exactly* the responses PROTOCOL.md gives for what happened - counted,
not just seen - and that:

- the registry holds exactly the logged-in, still-open connections, in
  login order;
- names are unique case-insensitively;
- every stored message reached every member of that moment, once;
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
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from chatd.stores.history import SQLiteHistory
from chatd.messages import HELP_TEXT
from tests.support import FakeClient, make_factory, names_of, stored, rebuild_hub

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
MAX_MESSAGE = 50
LOGIN_TIMEOUT = 60.0
HISTORY_ON_LOGIN = 100
_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")


@dataclass(eq=False)
class Peer:
    """The model of one connection."""

    client: FakeClient
    host: str
    timer_from: float  # when the login timeout started (connect, logout)
    name: str | None = None
    v2: bool = False
    paused: bool = False
    seen: list[int] = field(default_factory=list)  # message ids received


def signature(response: dict[str, Any]) -> tuple[Any, ...]:
    """What a response is, for counting: type plus the detail that matters."""
    kind = response["response"]
    if kind == "error":
        return ("error", response.get("code"))
    if kind == "message":
        return ("message", response["id"])
    if kind == "presence":
        return ("presence", response["content"]["user"], response["content"]["status"])
    if kind == "info":
        text = response["content"]
        if text.startswith("Login successful"):
            return ("info", "login")
        if text == "Logout successful":
            return ("info", "logout")
        return ("info", "help" if text == HELP_TEXT else "names")
    return (kind,)


def direct_answers(responses: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Signatures of ``responses`` but presence (never an answer to a request)."""
    return [signature(r) for r in responses if r["response"] != "presence"]


def history_ids(response: dict[str, Any]) -> list[int]:
    """Message ids of a ``history`` response (v1: JSON strings, v2: objects)."""
    return [(json.loads(entry) if isinstance(entry, str) else entry)["id"] for entry in response["content"]]


class ChatMachine(RuleBasedStateMachine):
    """The chat over the memory history store."""

    def __init__(self) -> None:
        super().__init__()
        self.factory = make_factory(
            msg_rate=10.0, msg_burst=3.0, max_per_ip=MAX_PER_IP, max_connections=MAX_CONNECTIONS,
            max_sendq=20_000, max_message=MAX_MESSAGE,
        )
        self.hub = self.factory.hub
        self.use_store()
        self.clock = self.factory.clock
        self.peers: list[Peer] = []
        self.order: list[Peer] = []  # logged in, in login order
        self.stored: list[int] = []  # ids of accepted messages, in order
        self.failures: list[dict[str, Any]] = []
        # Responses a step implies beyond the rule's own: the offline
        # presence of connections the server closed (see gather).
        self._implied: dict[Peer, list[tuple[Any, ...]]] = {}
        self._dropped: set[Peer] = set()  # slow readers the server dropped in this step
        globalLogPublisher.addObserver(self._observe)  # type: ignore[arg-type]

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            self.failures.append(event)

    def use_store(self) -> None:
        """Give the hub the history store under test (here: the memory one)."""

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observe)  # type: ignore[arg-type]

    def pick(self, index: int) -> Peer:
        """A connection that may send requests (see the module docstring)."""
        ready = [peer for peer in self.peers if not peer.paused]
        return ready[index % len(ready)]

    def any_peer(self, index: int) -> Peer:
        return self.peers[index % len(self.peers)]

    def others_v2(self, peer: Peer) -> list[Peer]:
        """Logged-in v2 connections other than ``peer``: they get its presence."""
        return [other for other in self.order if other is not peer and other.v2]

    # -- rules -------------------------------------------------------------

    @initialize(newline=st.booleans())
    def three_members(self, newline: bool) -> None:
        """Start from a room with members, so fan-out is exercised at once."""
        for index, name in enumerate(["ann", "ben", "cat"]):
            self.connect(HOSTS[index], newline)
            self.do_login(self.peers[-1], name)

    @rule(host=st.sampled_from(HOSTS), newline=st.booleans())
    def connect(self, host: str, newline: bool) -> None:
        busy = sum(p.host == host for p in self.peers) >= MAX_PER_IP or len(self.peers) >= MAX_CONNECTIONS
        peer = Peer(FakeClient(self.factory, newline=newline, host=host), host, self.clock.seconds())
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
            self.do_msg(peer, text)

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
    @rule(index=st.integers(0, 50))
    def names(self, index: int) -> None:
        peer = self.pick(index)
        peer.client.send("names")
        got = self.gather()
        if peer.name is None:
            self.expect(got, {peer: [("error", "not_logged_in")]})
            return
        self.expect(got, {peer: [("info", "names")]})
        assert got[peer][0]["content"] == ", ".join(p.name or "" for p in self.order), got[peer]

    @precondition(lambda self: any(not p.paused for p in self.peers))
    @rule(index=st.integers(0, 50), version=st.sampled_from([2, 3, 1, 0, "2", None, True]))
    def hello(self, index: int, version: Any) -> None:
        peer = self.pick(index)
        content = {"client": "stateful"} if version is None else {"protocol": version, "client": "stateful"}
        peer.client.send("hello", content)
        got = self.gather()
        if not isinstance(version, int) or isinstance(version, bool) or version < 2:
            self.expect(got, {peer: [("error", "bad_request")]})
            return
        self.expect(got, {peer: [("hello",)]})
        answer = got[peer][0]["content"]
        assert answer["protocol"] == 2 and "ping" in answer["features"] and "history" in answer["features"], answer
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
        self.expect(got, {peer: [("history",)]})
        size = max(1, min(500, 100 if limit is None else limit))
        if after is not None:
            newer = [i for i in self.stored if i > after]
            page, more = newer[:size], len(newer) > size
        else:
            older = self.stored if before is None else [i for i in self.stored if i < before]
            page, more = older[-size:], len(older) > size
        response = [r for r in got[peer] if r["response"] == "history"][0]
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
        expected: dict[Peer, list[tuple[Any, ...]]] = {}
        if peer in self.order:
            expected = {other: [("presence", peer.name, "offline")] for other in self.others_v2(peer)}
            self.order.remove(peer)
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
        expected: dict[Peer, list[tuple[Any, ...]]] = {
            other: [("presence", name, "online")] for other in self.others_v2(peer)
        }
        expected[peer] = [("info", "login"), ("history",)]
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
        expected: dict[Peer, list[tuple[Any, ...]]] = {
            other: [("presence", peer.name, "offline")] for other in self.others_v2(peer)
        }
        expected[peer] = [("info", "logout")]
        self.order.remove(peer)
        peer.name = None
        peer.timer_from = self.clock.seconds()
        peer.client.send("logout")
        self.expect(self.gather(), expected)

    def do_msg(self, peer: Peer, text: str) -> None:
        members = list(self.order)
        peer.client.send("msg", text)
        got = self.gather()
        answers = direct_answers(got.get(peer, []))
        if peer.name is None:
            self.expect(got, {peer: [("error", "not_logged_in")]})
            return
        assert len(answers) == 1, answers
        if answers[0][0] == "message":
            # Accepted: stored with the next id, then sent to every member
            # (the sender included), once.
            new_id = answers[0][1]
            assert not self.stored or new_id > self.stored[-1], (new_id, self.stored)
            assert got[peer][0]["sender"] == peer.name, got[peer]
            self.stored.append(new_id)
            self.expect(got, {member: [("message", new_id)] for member in members})
            return
        cleaned = re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text)
        own = "empty_message" if not cleaned.strip() else "message_too_long" if len(cleaned) > MAX_MESSAGE else None
        # The rate limit is checked before the text (PROTOCOL.md section 2).
        allowed = {("error", "rate_limited")} | ({("error", own)} if own else set())
        assert answers[0] in allowed, (answers, text)
        self.expect(got, {peer: answers})

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
                    if response["response"] == "message":
                        peer.seen.append(response["id"])
            closed = next((peer for peer in self.peers if peer.client.closed), None)
            if closed is None:
                return got
            if self.check_close_reason(closed, got.get(closed, []), busy_refused):
                self._dropped.add(closed)
            closed.client.disconnect()
            self.peers.remove(closed)
            if closed in self.order:
                self.order.remove(closed)
                for other in self.others_v2(closed):
                    self._implied.setdefault(other, []).append(("presence", closed.name, "offline"))

    def check_close_reason(self, peer: Peer, responses: list[dict[str, Any]], busy_refused: set[Peer]) -> bool:
        """Assert the server had a reason to close ``peer``; True if it was
        dropped as a slow reader (its output then may be cut short)."""
        flooded = any(r.get("code") == "rate_limited" and r["content"].startswith("Flooding") for r in responses)
        timed_out = peer.name is None and self.clock.seconds() - peer.timer_from >= LOGIN_TIMEOUT
        assert peer in busy_refused or flooded or timed_out or peer.paused, (peer, responses)
        return peer.paused and peer not in busy_refused and not flooded and not timed_out

    def expect(self, got: dict[Peer, list[dict[str, Any]]], expected: dict[Peer, list[tuple[Any, ...]]]) -> None:
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
            assert peer.seen == sorted(set(peer.seen)), peer.seen
        assert [m.id for m in stored(self.hub)] == self.stored
        assert not self.failures, self.failures


class SQLiteChatMachine(ChatMachine):
    """The same chat over the SQLite store (a file per example).

    Ids travel to SQLite as 64-bit integers: a ``history`` id past that
    must be answered, not crash the request (it raised OverflowError).
    """

    def use_store(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chatd-stateful-")
        rebuild_hub(self.hub, SQLiteHistory(os.path.join(self.directory, "chat.sqlite3")))

    def teardown(self) -> None:
        super().teardown()
        self.hub.history.close()
        shutil.rmtree(self.directory, ignore_errors=True)


ChatMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SQLiteChatMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class StatefulChatTests(ChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc,valid-type]
    """Run the state machine (bounded examples) under trial and pytest."""


class StatefulSQLiteChatTests(SQLiteChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc,valid-type]
    """The state machine over the SQLite store (fewer examples: file I/O)."""

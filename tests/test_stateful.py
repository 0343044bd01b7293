"""A hypothesis state machine drives one hub through many connections.

Random sequences of valid and invalid requests, garbage, disconnects,
slow readers and the passing of time; after every step the invariants
of the chat must hold:

- the registry holds exactly the logged-in, still-open connections;
- names are unique case-insensitively;
- every stored message reached every member of that moment, in id order;
- nothing was logged as an error (no exception in the server).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.support import FakeClient, make_factory

NAMES = ["alice", "Alice", "bob", "BOB", "carol", "server", "", "bad name", "x" * 33, "d\u00e9j\u00e0"]
TEXTS = ["hi", "", "   ", "x" * 60, "\x1b[2J", "multi\nline", "\u00e9\U0001f600", "\x00\x07"]
HOSTS = ["10.0.0.1", "10.0.0.2", "127.0.0.1"]


class ChatMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.factory = make_factory(
            msg_rate=10.0, msg_burst=3.0, max_per_ip=4, max_connections=8, max_sendq=20_000, max_message=50
        )
        self.hub = self.factory.hub
        self.clock = self.factory.clock
        self.clients: list[FakeClient] = []
        self.seen: dict[int, list[int]] = {}  # id(client) -> message ids received
        self.checked = 0  # messages verified so far
        self.members_before: set[int] = set()
        self.failures: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            self.failures.append(event)

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def pick(self, index: int) -> FakeClient:
        return self.clients[index % len(self.clients)]

    # -- rules -------------------------------------------------------------

    @initialize(newline=st.booleans())
    def three_members(self, newline: bool) -> None:
        """Start from a room with members, so fan-out is exercised at once."""
        for index, name in enumerate(["ann", "ben", "cat"]):
            self.connect(HOSTS[index], newline)
            self.clients[-1].send("login", name)

    @rule(host=st.sampled_from(HOSTS), newline=st.booleans())
    def connect(self, host: str, newline: bool) -> None:
        client = FakeClient(self.factory, newline=newline, host=host)
        self.clients.append(client)
        self.seen[id(client)] = []

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50), name=st.sampled_from(NAMES))
    def login(self, index: int, name: str) -> None:
        self.pick(index).send("login", name)

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50), name=st.sampled_from(["alice", "bob", "carol", "dave"]))
    def login_valid(self, index: int, name: str) -> None:
        # Valid names often, so that rooms of several members are common.
        self.pick(index).send("login", name)

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50), text=st.sampled_from(TEXTS), count=st.integers(1, 6))
    def msg(self, index: int, text: str, count: int) -> None:
        for _ in range(count):
            self.pick(index).send("msg", text)

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50), request=st.sampled_from(["logout", "names", "help", "ping", "bogus"]))
    def other_request(self, index: int, request: str) -> None:
        self.pick(index).send(request)

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50), data=st.binary(max_size=40))
    def garbage(self, index: int, data: bytes) -> None:
        self.pick(index).send_raw(data)

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50))
    def disconnect(self, index: int) -> None:
        client = self.pick(index)
        self.collect(client)
        client.disconnect()
        self.clients.remove(client)

    @precondition(lambda self: self.clients)
    @rule(index=st.integers(0, 50))
    def stop_reading(self, index: int) -> None:
        producer = self.pick(index).transport.producer
        if producer is not None:
            producer.pauseProducing()

    @rule(seconds=st.sampled_from([0.01, 0.1, 1.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- bookkeeping -----------------------------------------------------

    def collect(self, client: FakeClient) -> None:
        for response in client.received():
            if response["response"] == "message":
                self.seen[id(client)].append(response["id"])

    def settle(self) -> None:
        """Flush the hub, read every client, end connections the server closed."""
        self.clock.advance(0)
        for client in list(self.clients):
            self.collect(client)
            if client.transport.disconnecting:
                client.disconnect()
                self.clients.remove(client)

    # -- invariants --------------------------------------------------------

    @invariant()
    def chat_is_consistent(self) -> None:
        self.settle()
        members = [c for c in self.clients if getattr(c.protocol, "name", None) is not None]
        names = self.hub.names()
        assert sorted(names) == sorted(c.protocol.name for c in members), (names, members)
        assert len({name.lower() for name in names}) == len(names), names
        for client in members:
            assert self.hub.is_member(client.protocol)
        stored = [m.id for m in self.hub.recent(None)]
        new = [i for i in stored if i > self.checked]
        for client in members:
            if id(client) in self.members_before:
                got = self.seen[id(client)]
                assert all(i in got for i in new), (new, got)
            got = self.seen[id(client)]
            assert got == sorted(set(got)), got
        if stored:
            self.checked = stored[-1]
        self.members_before = {id(c) for c in members}
        assert not self.failures, self.failures


ChatMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class StatefulChatTests(ChatMachine.TestCase, SynchronousTestCase):  # type: ignore[misc]
    """Run the state machine (bounded examples) under trial and pytest."""

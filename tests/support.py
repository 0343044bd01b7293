"""Helpers shared by the tests: in-memory servers and clients."""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatd.stores.history import MemoryHistory
from chatd.core.hub import Hub
from chatd.server import ChatFactory, ServerConfig

_decoder = json.JSONDecoder()


def decode_stream(data: bytes) -> list[dict[str, Any]]:
    """Every JSON object in ``data``, framed as lines or bare."""
    text = data.decode("ascii")
    objects = []
    index = 0
    while True:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        if index >= len(text):
            return objects
        value, index = _decoder.raw_decode(text, index)
        objects.append(value)


class RecordingTransport(StringTransport):
    """A StringTransport that also keeps each ``write`` call apart."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, port))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def make_factory(
    clock: Clock | None = None, max_message: int = 2000, store: Any = None, hub_options: dict[str, Any] | None = None, **config: Any
) -> ChatFactory:
    """A factory with its own hub, memory history and clock.

    The message rate limit, the request budget and the per-address cap
    are off unless asked for: most tests post many messages from many
    connections at once; tests/test_limits.py tests those limits with
    their defaults.
    """
    config.setdefault("msg_rate", 0.0)
    config.setdefault("request_rate", 0.0)
    config.setdefault("max_per_ip", 0)
    clock = clock if clock is not None else Clock()
    clock.advance(1_764_000_000)  # a realistic epoch (2025-11-24)
    store = store if store is not None else MemoryHistory()
    hub = Hub.local(clock, store, max_message=max_message, **(hub_options or {}))
    return ChatFactory(hub, ServerConfig(**config), clock)


class FakeClient:
    """One connection to ``factory`` over a StringTransport.

    By default it sends each request as a line (lines framing); with
    ``newline=False`` it sends bare objects like a classic client.
    """

    _ports = itertools.cycle(range(40000, 60000))  # a long run makes more than 20,000

    def __init__(self, factory: ChatFactory, newline: bool = True, host: str = "127.0.0.1") -> None:
        self.newline = newline
        self.factory = factory
        self.transport = RecordingTransport(next(self._ports), host)
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send_raw(self, data: bytes) -> None:
        """Deliver ``data`` as one received chunk (and let the hub flush)."""
        self.protocol.dataReceived(data)
        self.factory.clock.advance(0)

    def send(self, request: str, content: Any = None, **extra: Any) -> None:
        """Send one request object."""
        obj: dict[str, Any] = {"request": request, "content": content}
        obj.update(extra)
        self.send_obj(obj)

    def send_obj(self, obj: Any) -> None:
        """Send any JSON value, framed as this client frames."""
        self.send_raw(json.dumps(obj).encode() + (b"\n" if self.newline else b""))

    def received(self) -> list[dict[str, Any]]:
        """The responses written since the last call (pacing run out first)."""
        self.drain()
        data = self.transport.value()
        self.transport.clear()
        return decode_stream(data)

    def drain(self) -> None:
        """Advance the clock until classic pacing has written everything."""
        output = getattr(self.protocol, "output", None)
        clock = self.factory.clock
        for _ in range(10_000):
            if output is None or not output.queued_bytes:
                return
            clock.advance(self.factory.config.pace)
        raise AssertionError("the pacing queue never drained")

    def one(self) -> dict[str, Any]:
        """Exactly one response since the last call."""
        responses = self.received()
        assert len(responses) == 1, responses
        return responses[0]

    def login(self, name: str) -> list[dict[str, Any]]:
        """Log in and return the login responses (info, history)."""
        self.send("login", name)
        return self.received()

    @property
    def closed(self) -> bool:
        """Whether the server asked to close this connection."""
        return bool(self.transport.disconnecting)

    def disconnect(self) -> None:
        """The client goes away."""
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone

        self.protocol.connectionLost(Failure(ConnectionDone()))


def fired(deferred: Any) -> Any:
    """The result of a Deferred that has already fired (a single node's
    core answers at once); raises its failure, or if it has not fired."""
    from twisted.python.failure import Failure

    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def stored(hub: Any) -> list[Any]:
    """Every stored message of the default room, oldest first."""
    from chatd.core.hub import DEFAULT_ROOM

    return list(fired(hub.recent(DEFAULT_ROOM, None)))


def names_of(hub: Any) -> list[str]:
    """The names in the default room, in login order."""
    return list(fired(hub.names()))


def rebuild_hub(hub: Hub, store: Any) -> None:
    """Rebuild a single node's ``hub`` on ``store`` (a HistoryStore)."""
    from chatd.core.local import LocalBus, LocalHistory, LocalRooms

    hub.history = LocalHistory(store)
    hub.directory = LocalRooms(store)
    hub.moderation.store = store
    hub.bus = LocalBus(hub.clock, store, hub.metrics)
    hub.bus.subscribe(hub)

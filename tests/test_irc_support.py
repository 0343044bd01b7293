"""Helpers for the IRC front-end's tests: an in-memory server and clients.

No test cases here: :func:`make_irc` builds a chat factory (its hub,
memory history, a ``Clock``) with an IRC factory on it, and
:class:`IRCClient` is one IRC connection over a StringTransport.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed

from chatd.frontends.irc.factory import IRCConfig, IRCFactory
from chatd.frontends.irc.lines import Line, parse_line
from chatd.messages import ChatError
from chatd.server import ChatFactory
from tests.support import FakeClient, RecordingTransport, make_factory

SERVER = "irc.test"


def make_irc(config: dict[str, Any] | None = None, **chat_config: Any) -> tuple[ChatFactory, IRCFactory]:
    """A chat factory and an IRC factory on its hub (autojoin #lobby)."""
    chat = make_factory(**chat_config)
    settings: dict[str, Any] = {"server_name": SERVER}
    settings.update(config or {})
    return chat, IRCFactory(chat, IRCConfig(**settings))


def password_check(accounts: dict[str, str]) -> Callable[[str], Callable[[str, str], Deferred[str]]]:
    """An account check over ``{name: password}`` (for the ``accounts`` setting)."""

    def for_host(host: str) -> Callable[[str, str], Deferred[str]]:
        def check(name: str, password: str) -> Deferred[str]:
            for account, right in accounts.items():
                if account.lower() == name.lower() and password == right:
                    return succeed(account)
            return fail(ChatError("auth_failed", "Wrong name or password."))

        return check

    return for_host


def account_exists(accounts: dict[str, str]) -> Callable[[str], Deferred[bool]]:
    """Whether a name is one of ``accounts``."""
    return lambda name: succeed(any(account.lower() == name.lower() for account in accounts))


class IRCClient:
    """One IRC connection over a StringTransport."""

    _ports = itertools.cycle(range(20000, 40000))

    def __init__(self, irc: IRCFactory, host: str = "127.0.0.1") -> None:
        self.irc = irc
        self.clock = irc.clock
        self.transport = RecordingTransport(next(self._ports), host)
        protocol = irc.buildProtocol(self.transport.getPeer())
        protocol.makeConnection(self.transport)
        self.protocol: Any = protocol

    def send_raw(self, data: bytes) -> None:
        """Bytes as one read, then the reactor turn."""
        self.protocol.dataReceived(data)
        self.clock.advance(0)

    def send(self, *lines: str) -> None:
        """Lines, each with CR LF, each as its own read."""
        for line in lines:
            self.send_raw(line.encode("utf-8") + b"\r\n")

    def raw(self) -> bytes:
        """What was written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def lines(self) -> list[Line]:
        """The lines written since the last call, parsed."""
        out = []
        for raw in self.raw().split(b"\r\n"):
            if raw:
                parsed = parse_line(raw)
                assert isinstance(parsed, Line), raw
                out.append(parsed)
        return out

    def commands(self) -> list[str]:
        """The commands of the lines written since the last call."""
        return [line.command for line in self.lines()]

    def register(self, nick: str, caps: str = "", user: str = "user", realname: str = "Real Name") -> list[Line]:
        """CAP LS 302 (and REQ), NICK, USER, CAP END: the welcome's lines."""
        self.send("CAP LS 302")
        if caps:
            self.send(f"CAP REQ :{caps}")
        self.send(f"NICK {nick}", f"USER {user} 0 * :{realname}", "CAP END")
        return self.lines()

    @property
    def closed(self) -> bool:
        """Whether the server closed (or is closing) the connection."""
        return bool(self.transport.disconnecting)

    def disconnect(self) -> None:
        """The client goes away."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))


def json_client(chat: ChatFactory, name: str) -> FakeClient:
    """A v2 JSON client logged in as ``name`` (its login answers read)."""
    client = FakeClient(chat)
    client.send("hello", {"protocol": 2})
    client.login(name)
    return client


def find(lines: list[Line], command: str) -> Line:
    """The first line with ``command``."""
    for line in lines:
        if line.command == command:
            return line
    raise AssertionError(f"no {command} in {[(line.command, line.params) for line in lines]}")

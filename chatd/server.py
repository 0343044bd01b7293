"""The server factory and its settings.

:class:`ChatFactory` builds one :class:`~chatd.protocol.ChatProtocol` per
connection and hands each the shared hub, the settings and the clock.
Several listeners (plain TCP, TLS, ...) may share one factory, and so
one hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.protocol import ServerFactory

from chatd.hub import Hub
from chatd.protocol import ChatProtocol


@dataclass(frozen=True)
class ServerConfig:
    """Per-connection settings, from the command line (see ``chatd.tap``)."""

    framing: str = "auto"  # auto | lines | classic
    pace: float = 0.025  # seconds between classic-framing writes
    history_on_login: int | None = 100  # None: all
    max_request: int = 16384  # bytes in one request
    login_timeout: float = 60.0  # seconds; 0 turns it off


class ChatFactory(ServerFactory):
    """Builds chat connections that share one hub."""

    protocol = ChatProtocol

    def __init__(self, hub: Hub, config: ServerConfig, clock: Any) -> None:
        self.hub = hub
        self.config = config
        self.clock = clock

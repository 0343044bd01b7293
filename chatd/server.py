"""The server factory and its settings.

:class:`ChatFactory` builds one :class:`~chatd.protocol.ChatProtocol` per
connection and hands each the shared hub, the settings and the clock.
Several listeners (plain TCP, TLS, ...) may share one factory, and so
one hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chatd.history import HistoryError, Retention
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


class HistoryService(Service):
    """Owns the history store's life: open, prune on a timer, flush and close.

    On stop, the hub's pending batch is committed before the store closes,
    so nothing accepted is lost on a clean shutdown.
    """

    log = Logger()

    def __init__(self, hub: Hub, retention: Retention, clock: Any, prune_every: float = 600.0) -> None:
        self.hub = hub
        self.retention = retention
        self.clock = clock
        self.prune_every = prune_every
        self._pruner: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        store = self.hub.history
        reopen = getattr(store, "open", None)
        if reopen is not None:
            reopen()
        if self.retention.count is not None or self.retention.days is not None:
            self._pruner = LoopingCall(self.prune)
            self._pruner.clock = self.clock
            self._pruner.start(self.prune_every, now=True)

    def prune(self) -> None:
        """Drop history that the retention setting no longer keeps."""
        try:
            dropped = self.hub.history.prune(self.retention, self.clock.seconds())
        except HistoryError as problem:
            self.log.error("pruning history failed: {problem}", problem=str(problem))
            return
        if dropped:
            self.log.info("pruned {count} old messages from history", count=dropped)

    def stopService(self) -> Any:
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        self.hub.flush()
        try:
            self.hub.history.close()
        except HistoryError as problem:
            self.log.error("closing history failed: {problem}", problem=str(problem))
        return super().stopService()

"""Connection caps shared by every listener: TCP chat, TLS and the web.

One :class:`ConnectionCaps` counts open connections in all and per
remote address (``--max-connections``, ``--max-per-ip``).  The chat
factory takes a slot for each chat connection it builds; the web port
takes one for each HTTP connection through :class:`CappedFactory` (a
WebSocket chat is an HTTP connection that upgraded: it keeps that one
slot and takes no second).  So however a client connects, it cannot hold
more than its share of the process's file descriptors.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

#: The refusal texts (sent to the client: JSON ``server_busy`` or HTTP 503).
SERVER_FULL = "The server is full. Try again later."
TOO_MANY_FROM_ADDRESS = "Too many connections from your address."


def host_of(addr: IAddress | None) -> str:
    """The remote host an address counts under (``local`` for UNIX sockets and the like)."""
    return str(getattr(addr, "host", "local"))


class ConnectionCaps:
    """Open connections, in all and per remote host, within two limits.

    A limit of 0 means no limit.  :meth:`acquire` takes a slot (or says
    why not); every slot taken must be given back once with
    :meth:`release`.
    """

    log = Logger()

    def __init__(self, max_per_ip: int, max_connections: int) -> None:
        self.max_per_ip = max_per_ip
        self.max_connections = max_connections
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def acquire(self, host: str) -> str | None:
        """Take a slot for a connection from ``host``: None, or the refusal text."""
        if self.max_connections and self.total >= self.max_connections:
            self.log.warn("refusing {host}: {count} connections open", host=host, count=self.total)
            return SERVER_FULL
        if self.max_per_ip and self.per_ip.get(host, 0) >= self.max_per_ip:
            self.log.warn("refusing {host}: too many connections from it", host=host)
            return TOO_MANY_FROM_ADDRESS
        self.total += 1
        self.per_ip[host] = self.per_ip.get(host, 0) + 1
        return None

    def release(self, host: str) -> None:
        """Give back a slot taken for ``host``."""
        self.total = max(0, self.total - 1)
        left = self.per_ip.get(host, 1) - 1
        if left > 0:
            self.per_ip[host] = left
        else:
            self.per_ip.pop(host, None)


class CappedConnection(ProtocolWrapper):
    """One connection holding a slot, given back exactly once when it ends.

    The wrapper sees the transport's ``connectionLost`` whatever the
    wrapped protocol became meanwhile (an HTTP channel hands its
    connection to a WebSocket protocol on upgrade).
    """

    def __init__(self, factory: CappedFactory, wrapped: IProtocol, host: str) -> None:
        super().__init__(factory, wrapped)
        self.host: str | None = host
        self.caps = factory.caps

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            host, self.host = self.host, None
            if host is not None:
                self.caps.release(host)


class CappedFactory(WrappingFactory["CappedConnection"]):
    """Wraps a listening factory so that each connection it serves counts against ``caps``.

    Over a cap, ``refuse(text)`` builds the protocol that answers the
    client (it should say why and close).
    """

    protocol = CappedConnection

    def __init__(self, wrapped: Any, caps: ConnectionCaps, refuse: Callable[[str], Protocol]) -> None:
        super().__init__(wrapped)
        self.caps = caps
        self.refuse = refuse

    # WrappingFactory promises a wrapper; over a cap this returns the
    # refusal instead (and None if the wrapped factory declines).
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]  # see above
        host = host_of(addr)
        refusal = self.caps.acquire(host)
        if refusal is not None:
            return self.refuse(refusal)
        try:
            wrapped = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            self.caps.release(host)
            raise
        if wrapped is None:
            self.caps.release(host)
            return None
        return CappedConnection(self, wrapped, host)

"""The IRC listener's factory, its settings and its shutdown.

:class:`IRCFactory` builds one :class:`~chatd.frontends.irc.protocol.IRCProtocol`
per connection on the JSON front-end's hub and settings, inside the same
connection caps (``--max-per-ip``, ``--max-connections`` count IRC
connections with all others: section 7.5), and knows how to show any
name as an IRC source (section 7.1).
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger

from chatd.caps import host_of
from chatd.frontends.irc.connection import IRCConnection
from chatd.frontends.irc.encoding import TAGS_ACCOUNT, TAGS_ALL, TAGS_BASE, ClientTags
from chatd.frontends.irc.moderation import Masks
from chatd.frontends.irc.protocol import IRCProtocol
from chatd.frontends.irc.sasl import AccountCheck, no_accounts
from chatd.frontends.irc.whowas import WhowasLog
from chatd.server import close_all

if TYPE_CHECKING:
    from chatd.server import ChatFactory

#: Sources remembered for names no longer online (CHATHISTORY shows a
#: message with the source it had): at most this many.
REMEMBERED_SOURCES = 10_000


@dataclass(frozen=True)
class IRCConfig:
    """The IRC front-end's settings (``--irc-*`` and what accounts give)."""

    server_name: str = field(default_factory=socket.getfqdn)
    autojoin: tuple[str, ...] = ("#lobby",)
    motd: tuple[str, ...] | None = None  # the lines of --irc-motd; None: 422
    network: str = "chatd"
    #: Accounts (section 7.2): given a client's address, the check of a
    #: name and password (SASL, PASS, OPER); None: accounts are off.
    accounts: Callable[[str], AccountCheck] | None = None
    #: Whether a name is a registered account (fires with a bool): a guest
    #: may not take it, and a PASS naming none is ignored.
    account_exists: Callable[[str], Deferred[bool]] | None = None
    accounts_required: bool = False
    #: Server operators: account names, lower-cased (``--operators``).
    operators: frozenset[str] = frozenset()
    keepalive: float = 120.0  # seconds without input before PING
    ping_timeout: float = 60.0  # seconds more before ERROR :Ping timeout


class RefusedProtocol(Protocol):
    """Answers ``ERROR :<text>`` and closes (over a connection cap)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"ERROR :{self.text}\r\n".encode("utf-8"))
        self.transport.loseConnection()


class IRCFactory(ServerFactory[IRCProtocol]):
    """Builds IRC connections on the chat factory's hub, settings and caps."""

    protocol = IRCProtocol
    log = Logger()

    def __init__(self, chat: ChatFactory, config: IRCConfig) -> None:
        self.chat = chat
        self.hub = chat.hub
        self.settings = chat.config
        self.clock = chat.clock
        self.config = config
        self.caps = chat.caps
        self.protocols: set[IRCProtocol] = set()
        self.client_tags = ClientTags()
        self.masks = Masks(self.hub)
        self.created = self.clock.seconds()
        self.whowas = WhowasLog()
        #: The last JOIN line built, by (user, room, tag mode,
        #: extended-join, time) (see IRCConnection._join_line).
        self.join_line_cache: tuple[tuple[str, str, int, bool, str], bytes] | None = None
        #: The last PART or QUIT line built (see IRCConnection._left).
        self.left_line_cache: tuple[tuple[object, ...], bytes] | None = None
        #: IRC sessions here that are server operators by OPER (NAMES and
        #: WHO look sessions up per member only when there are some).
        self.opered = 0
        #: The most IRC clients registered at once since start (265, 266).
        self.most_clients = 0
        self.shutting_down = False
        self._sources: OrderedDict[str, str] = OrderedDict()
        self._until_empty: list[Deferred[None]] = []

    # The override returns a refusal, not only an IRCProtocol as
    # Factory[IRCProtocol] promises; the listening port takes any protocol.
    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # type: ignore[override]  # a refusal is another protocol
        """An IRC connection for ``addr``, or ``ERROR`` over a cap."""
        if self.shutting_down:
            return RefusedProtocol("The server is shutting down.")
        host = host_of(addr)
        refusal = self.caps.acquire(host)
        if refusal is not None:
            return RefusedProtocol("Too many connections")
        protocol = super().buildProtocol(addr)
        assert protocol is not None
        protocol.peer_host = host
        self.protocols.add(protocol)
        return protocol

    def connection_closed(self, protocol: IRCConnection) -> None:
        """An IRC connection ended: its cap slot is given back."""
        host, protocol.peer_host = protocol.peer_host, None
        if host is None:
            return
        self.protocols.discard(protocol)
        self.caps.release(host)
        for waiter in self._until_empty if not self.protocols else ():
            if not waiter.called:
                waiter.callback(None)

    def check_for(self, host: str) -> AccountCheck:
        """The password check for a client at ``host`` (always failing
        without accounts)."""
        accounts = self.config.accounts
        return accounts(host) if accounts is not None else no_accounts

    def account_exists(self, name: str) -> Deferred[bool]:
        """Whether ``name`` is a registered account (never without accounts)."""
        exists = self.config.account_exists
        return exists(name) if exists is not None else succeed(False)

    @property
    def accounts_on(self) -> bool:
        """Whether accounts are on (``sasl`` is offered)."""
        return self.config.accounts is not None

    # -- sources (section 7.1) ----------------------------------------------

    def remember(self, name: str, source: str) -> None:
        """``name`` appears as ``source`` (an IRC session's, for history)."""
        key = name.lower()
        self._sources[key] = source
        self._sources.move_to_end(key)
        while len(self._sources) > REMEMBERED_SOURCES:
            self._sources.popitem(last=False)

    def source_of(self, name: str) -> str:
        """How ``name`` appears: an IRC session as ``nick!~user@irc``, a JSON
        session as ``name!name@json``."""
        session = self.hub.session_named(name)
        if isinstance(session, IRCProtocol):
            return f"{session.name}!{session.ident}@irc"
        if session is not None:
            return f"{name}!{name}@json"
        remembered = self._sources.get(name.lower())
        if remembered is not None and remembered.split("!", 1)[0] == name:
            return remembered
        return f"{name}!{name}@json"

    def account_of(self, name: str) -> str | None:
        """The account ``name``'s session here is logged in as, if any (an
        IRC session's SASL or PASS account; a JSON session's name when it
        logged in with a password)."""
        session = self.hub.session_named(name)
        if session is None:
            return None
        account = getattr(session, "account", None)
        if isinstance(account, str):
            return account
        return session.name if account is True else None

    def is_bot(self, name: str) -> bool:
        """Whether ``name``'s session here set user mode ``+B``."""
        return bool(getattr(self.hub.session_named(name), "bot", False))

    def sender_tags(self, name: str, mode: int) -> str:
        """The tags ``name``'s messages carry in tag ``mode``: its
        ``account`` (for ``account-tag``) and ``bot`` (``+B``, for
        ``message-tags``)."""
        parts = []
        if mode & TAGS_ACCOUNT:
            account = self.account_of(name)
            if account is not None:
                parts.append("account=" + account)
        if mode & TAGS_BASE == TAGS_ALL and self.is_bot(name):
            parts.append("bot")
        return ";".join(parts)

    def history_source_of(self, name: str) -> str:
        """A stored message's author: as it appeared, or ``name!name@history``."""
        remembered = self._sources.get(name.lower())
        if remembered is not None and remembered.split("!", 1)[0].lower() == name.lower():
            return f"{name}!{remembered.split('!', 1)[1]}"
        session = self.hub.session_named(name)
        if session is not None and not isinstance(session, IRCProtocol):
            return f"{name}!{name}@json"
        return f"{name}!{name}@history"

    # -- shutdown --------------------------------------------------------------

    def shut_down(self, grace: float) -> Deferred[None]:
        """Tell every IRC client the server is going and close; fires when
        all are closed (the rest aborted after ``grace`` seconds)."""
        self.shutting_down = True
        done = close_all(list(self.protocols), self.clock, grace, self._abort_all)
        self._until_empty = [done]
        return done

    def _abort_all(self) -> None:
        for protocol in list(self.protocols):
            transport = protocol.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]  # TCP and TLS transports can abort


class IRCShutdownService(Service):
    """On stop: every IRC client is told and closed (after the IRC
    listeners stop, before history closes)."""

    def __init__(self, factory: IRCFactory, grace: float = 3.0) -> None:
        self.factory = factory
        self.grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted.application is not annotated
        return self.factory.shut_down(self.grace)

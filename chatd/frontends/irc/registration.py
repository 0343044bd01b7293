"""Connection registration (PROTOCOL.md section 7.2): CAP, NICK, USER,
PASS, AUTHENTICATE (SASL PLAIN), the welcome burst and autojoin.

Registration completes when NICK and USER have arrived and no capability
negotiation is open; then the session logs in to the hub under its nick
(or its account's name), the welcome numerics go out, and it joins the
``--irc-autojoin`` rooms.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from chatd import __version__, messages
from chatd.frontends.irc import numerics as N
from chatd.frontends.irc.connection import CAPABILITIES, NICK, IRCConnection, ident_of, then
from chatd.frontends.irc.lines import Line
from chatd.frontends.irc.sasl import PlainExchange
from chatd.messages import ChatError
from chatd.stores.history import StoredMessage

#: ISUPPORT tokens (section 7.2), at most 13 per 005 line.
ISUPPORT = (
    "CASEMAPPING=ascii",
    "CHANTYPES=#",
    "PREFIX=(ov)@+",
    "CHANMODES=b,k,l,imnst",
    "NICKLEN=32",
    "CHANNELLEN=49",
    "TOPICLEN=390",
    "KICKLEN=390",
    "AWAYLEN=390",
    "MODES=4",
    "NETWORK={network}",
    "CHATHISTORY=500",
    "MSGREFTYPES=msgid,timestamp",
    "TARGMAX=JOIN:,PART:,KICK:4,NAMES:1,PRIVMSG:4,NOTICE:4,TAGMSG:4,WHOIS:1",
    "BOT=B",
)
TOKENS_PER_LINE = 13


class Registration(IRCConnection):
    """CAP negotiation, NICK/USER/PASS, SASL PLAIN and the welcome."""

    _sasl: PlainExchange | None = None
    _pass: str | None = None

    # -- CAP -----------------------------------------------------------------

    def available_caps(self) -> list[str]:
        """The capabilities offered: ``sasl`` only with accounts."""
        caps = list(CAPABILITIES)
        if self.factory.accounts_on:
            caps.append("sasl")
        return caps

    def irc_CAP(self, line: Line) -> Deferred[Any] | None:
        """``CAP LS [302]``, ``LIST``, ``REQ``, ``END``; another: 410."""
        if not line.params:
            self.numeric(N.ERR_NEEDMOREPARAMS, "CAP", "Not enough parameters")
            return None
        sub = line.params[0].upper()
        if sub == "LS":
            if self.name is None:
                self.negotiating = True
            version = line.params[1] if len(line.params) > 1 else ""
            if version.isdigit() and int(version) >= 302:
                self.cap_302 = True
            listed = [
                "sasl=PLAIN" if cap == "sasl" and self.cap_302 else cap for cap in self.available_caps()
            ]
            self.line("CAP", [self.me, "LS", " ".join(listed)], trailing=True)
        elif sub == "LIST":
            self.line("CAP", [self.me, "LIST", " ".join(sorted(self.caps))], trailing=True)
        elif sub == "REQ":
            if self.name is None:
                self.negotiating = True
            requested = line.params[1] if len(line.params) > 1 else ""
            self._request_caps(requested)
        elif sub == "END":
            if self.name is None:
                self.negotiating = False
                return self.maybe_register()
        else:
            self.numeric(N.ERR_INVALIDCAPCMD, line.params[0][:32], "Invalid CAP command")
        return None

    def _request_caps(self, requested: str) -> None:
        """``CAP REQ``: acknowledged or refused as a whole."""
        available = set(self.available_caps())
        items = requested.split()
        wanted = [(item[1:], False) if item.startswith("-") else (item, True) for item in items]
        if not items or any(cap not in available for cap, _ in wanted):
            self.line("CAP", [self.me, "NAK", requested], trailing=True)
            return
        for cap, on in wanted:
            if on:
                self.caps.add(cap)
            else:
                self.caps.discard(cap)
        self.line("CAP", [self.me, "ACK", requested], trailing=True)

    # -- NICK, USER, PASS ------------------------------------------------------

    def irc_NICK(self, line: Line) -> Deferred[Any] | None:
        """Before registration: take a nick (431, 432, 433 at once);
        after it: a guest renames."""
        nick = line.params[0] if line.params else ""
        if not nick:
            self.numeric(N.ERR_NONICKNAMEGIVEN, "No nickname given")
            return None
        if NICK.fullmatch(nick) is None:
            self.numeric(N.ERR_ERRONEUSNICKNAME, nick[:40], "Erroneous nickname")
            return None
        if nick.lower() == messages.SERVER_SENDER:
            self.numeric(N.ERR_NICKNAMEINUSE, nick, "Nickname is reserved")
            return None
        if self.name is not None:
            return self.rename(nick)
        holder = self.hub.session_named(nick)
        if holder is not None and holder is not self:
            self.numeric(N.ERR_NICKNAMEINUSE, nick, "Nickname is already in use")
            return None
        self.nick = nick
        return self.maybe_register()

    def rename(self, nick: str) -> Deferred[Any] | None:
        """A registered guest's NICK: 447 for an account session."""
        if nick == self.name:
            return None  # no change: nothing to anyone
        if self.account is not None:
            self.numeric(N.ERR_CANTCHANGENICK, "You cannot change your nick: it is your account's name")
            return None
        old_source, old = self.source, self.name
        d = self.hub.rename(self, nick)

        def renamed(new: str) -> None:
            self.departed(old)
            self.nick = new
            self.factory.remember(new, self.source)
            self.line("NICK", [new], old_source)

        def failed(failure: Failure) -> None:
            error = failure.trap(ChatError) and failure.value
            assert isinstance(error, ChatError)
            if error.code == messages.NAME_TAKEN:
                self.numeric(N.ERR_NICKNAMEINUSE, nick, "Nickname is already in use")
            elif error.code == messages.INVALID_USERNAME:
                self.numeric(N.ERR_ERRONEUSNICKNAME, nick, "Erroneous nickname")
            else:
                self.command_failed(error, "NICK", nick)

        return d.addCallbacks(renamed, failed)

    def irc_USER(self, line: Line) -> Deferred[Any] | None:
        """``USER <username> <mode> <unused> :<realname>`` (461 without
        four parameters or with an empty username or realname)."""
        if self.name is not None:
            self.numeric(N.ERR_ALREADYREGISTRED, "You may not reregister")
            return None
        params = line.params
        if len(params) < 4 or not params[0] or not params[3]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "USER", "Not enough parameters")
            return None
        self.username = params[0]
        self.realname = params[3][:256]
        self.ident = ident_of(params[0])
        return self.maybe_register()

    def irc_PASS(self, line: Line) -> None:
        """``PASS <account>:<password>`` or ``PASS <password>``, checked at
        registration; after it: 462."""
        if self.name is not None:
            self.numeric(N.ERR_ALREADYREGISTRED, "You may not reregister")
            return
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "PASS", "Not enough parameters")
            return
        self._pass = line.params[0][:1100]

    # -- SASL PLAIN ---------------------------------------------------------------

    def irc_AUTHENTICATE(self, line: Line) -> Deferred[Any] | None:
        """SASL PLAIN (section 7.2): 904 without ``CAP REQ sasl``, 462
        after registration, 907 once authenticated."""
        if self.name is not None:
            self.numeric(N.ERR_ALREADYREGISTRED, "You may not reregister")
            return None
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "AUTHENTICATE", "Not enough parameters")
            return None
        if "sasl" not in self.caps or not self.factory.accounts_on:
            self._sasl = None
            self.numeric(N.ERR_SASLFAIL, "SASL authentication failed")
            return None
        if self.account is not None:
            self.numeric(N.ERR_SASLALREADY, "You have already authenticated using SASL")
            return None
        argument = line.params[0]
        if argument == "*":
            self._sasl = None
            self.numeric(N.ERR_SASLABORTED, "SASL authentication aborted")
            return None
        exchange = self._sasl
        if exchange is None:
            if argument.upper() != "PLAIN":
                self.numeric(N.RPL_SASLMECHS, "PLAIN", "are available SASL mechanisms")
                self.numeric(N.ERR_SASLFAIL, "SASL authentication failed")
                return None
            self._sasl = PlainExchange()
            self.put(b"", b"AUTHENTICATE +")
            return None
        step = exchange.feed(argument)
        if step.kind == "more":
            return None
        self._sasl = None
        if step.kind == "failed" or step.credentials is None:
            text = "SASL message too long" if step.numeric == N.ERR_SASLTOOLONG else "SASL authentication failed"
            self.numeric(step.numeric, text)
            return None
        credentials = step.credentials
        check = self.factory.check_for(self.peer_host or "")
        d = check(credentials.authcid, credentials.password)
        return d.addCallbacks(self._authenticated, self._sasl_failed)

    def _authenticated(self, account: str) -> None:
        self.account = account  # registration names the session after it, whatever NICK said
        self.numeric(N.RPL_LOGGEDIN, f"{self.me}!{self.ident}@irc", account, f"You are now logged in as {account}")
        self.numeric(N.RPL_SASLSUCCESS, "SASL authentication successful")

    def _sasl_failed(self, failure: Failure) -> None:
        if not failure.check(ChatError):
            self.log.failure("checking a SASL password failed", failure)
        self.numeric(N.ERR_SASLFAIL, "SASL authentication failed")

    # -- completion -------------------------------------------------------------

    def maybe_register(self) -> Deferred[Any] | None:
        """Complete registration if NICK and USER are in and no negotiation
        is open: PASS checked, then the hub's login, the welcome, autojoin."""
        if self.name is not None or self.registering or self.nick is None or self.username is None or self.negotiating:
            return None
        if self._sasl is not None:
            self._sasl = None
            self.numeric(N.ERR_SASLABORTED, "SASL authentication aborted")
        if self._pass is not None and self.account is None:
            return self._check_pass(self._pass)
        return self._complete()

    def _check_pass(self, given: str) -> Deferred[Any] | None:
        """``PASS``: checked like SASL if it names an account; 464 and close if wrong."""
        self._pass = None
        account, colon, password = given.partition(":")
        if not colon:
            account, password = self.nick or "", given
        if not self.factory.accounts_on:
            return self._complete()  # no accounts: ignored
        self.registering = True
        d = self.factory.account_exists(account).addCallback(self._pass_account, account, password)

        def checked(name: str | None) -> Deferred[Any] | None:
            self.registering = False
            if name is not None:
                self.account = name
            return self._complete()

        def wrong(failure: Failure) -> None:
            self.registering = False
            if not failure.check(ChatError):
                self.log.failure("checking a PASS password failed", failure)
            self.numeric(N.ERR_PASSWDMISMATCH, "Password incorrect")
            self.close_with_error("Password incorrect")

        return d.addCallbacks(checked, wrong)

    def _pass_account(self, exists: bool, account: str, password: str) -> Deferred[str | None]:
        """A PASS naming an account is checked; one naming none is ignored."""
        if not exists:
            return succeed(None)
        check = self.factory.check_for(self.peer_host or "")

        def checked(name: str) -> str | None:
            return name

        return check(account, password).addCallback(checked)

    def _complete(self) -> Deferred[Any] | None:
        config = self.factory.config
        if config.accounts_required and self.account is None:
            self.fail("*", "ACCOUNT_REQUIRED", "An account is required to connect to this server")
            self.close_with_error("An account is required")
            return None
        self.registering = True
        if self.account is not None:
            return self._login(self.account)
        nick = self.nick
        assert nick is not None
        return self.factory.account_exists(nick).addCallback(self._guest_login, nick)

    def _guest_login(self, taken: bool, nick: str) -> Deferred[Any] | None:
        """A guest may not take an account's name (433; another NICK may follow)."""
        if taken:
            self.registering = False
            self.numeric(N.ERR_NICKNAMEINUSE, nick, "Nickname is registered to an account")
            return None
        return self._login(nick)

    def _login(self, name: str) -> Deferred[Any]:
        """The hub's login: an account's (several sessions allowed) or a guest's nick."""
        if self.account is not None:
            d = self.hub.login(self, name, lobby=False, account=True)
        else:
            d = self.hub.login(self, name, nick=True, lobby=False)
        return d.addCallbacks(self._registered, self._login_failed)

    def _login_failed(self, failure: Failure) -> None:
        self.registering = False
        if not failure.check(ChatError):
            self.log.failure("an IRC login failed", failure)
            self.close_with_error("The server could not register you; try again later")
            return
        error = failure.value
        assert isinstance(error, ChatError)
        name = self.account or self.nick or "*"
        if error.code == "banned":
            self.numeric(N.ERR_YOUREBANNEDCREEP, error.text)
            self.close_with_error("You are banned from this server")
        elif error.code == messages.INVALID_USERNAME:
            self.numeric(N.ERR_ERRONEUSNICKNAME, name, "Erroneous nickname")
        elif error.code == messages.NAME_TAKEN:
            self.numeric(N.ERR_NICKNAMEINUSE, name, "Nickname is already in use")
        else:
            self.fail("*", error.code.upper(), error.text)
            if self.account is not None:
                self.close_with_error(error.text)

    def _registered(self, name: str) -> Deferred[Any] | None:
        self.registering = False
        if not self.logged_in(name):
            return None
        self.nick = name
        self.factory.remember(name, self.source)
        self.welcome()
        d: Deferred[Any] = succeed(None)
        for room in self.factory.config.autojoin:
            d = then(d, lambda room=room: self.join_one(room, autojoin=True))  # type: ignore[misc]  # a default binds the loop's room
        if self.account is not None and "draft/chathistory" not in self.caps:
            d = then(d, self.send_undelivered)
        return d

    def send_undelivered(self) -> Deferred[None]:
        """An account's DMs that came while it had no session (section 7.4):
        after the welcome and autojoins, oldest first, at most 100 per
        conversation (a client with draft/chathistory fetches them itself)."""
        from chatd.frontends.irc.encoding import message_lines

        def send(conversations: list[tuple[str, list[StoredMessage], bool]]) -> None:
            mode = self.tag_mode
            for _other, found, _more in conversations:
                for message in found:
                    source = self.factory.history_source_of(message.sender)
                    for tags, body in message_lines(message, source, mode):
                        self.put(tags, body, response=False)

        return maybeDeferred(self.hub.undelivered, self.me, self).addCallback(send)

    def welcome(self) -> None:
        """001-005, LUSERS, the MOTD (section 7.2)."""
        server, me = self.server, self.me
        version = f"chatd-{__version__}"
        created = datetime.datetime.fromtimestamp(self.factory.created, tz=datetime.timezone.utc)
        self.numeric(N.RPL_WELCOME, f"Welcome to the chatd IRC network {me}")
        self.numeric(N.RPL_YOURHOST, f"Your host is {server}, running version {version}")
        self.numeric(N.RPL_CREATED, f"This server was created {created:%Y-%m-%d %H:%M:%S} UTC")
        self.put(self.tags_for(), f":{server} {N.RPL_MYINFO} {me} {server} {version} Bio biklmnostv".encode("utf-8"))
        tokens = [token.format(network=self.factory.config.network) for token in ISUPPORT]
        for start in range(0, len(tokens), TOKENS_PER_LINE):
            chunk = tokens[start : start + TOKENS_PER_LINE]
            self.put(
                self.tags_for(),
                f":{server} {N.RPL_ISUPPORT} {me} {' '.join(chunk)} :are supported by this server".encode("utf-8"),
            )
        self.lusers()
        self.motd()

    def lusers(self) -> None:
        """251, 252, 254, 255, then 265 and 266 (the current and most
        users since start; one server, so local and global agree)."""
        users = self.hub.local_users
        factory = self.factory
        factory.most_clients = most = max(factory.most_clients, users)
        operators = sum(1 for protocol in factory.protocols if protocol.operator)
        rooms = self.hub.room_count()
        self.numeric(N.RPL_LUSERCLIENT, f"There are {users} users and 0 invisible on 1 servers")
        self.numeric(N.RPL_LUSEROP, str(operators), "operator(s) online")
        self.numeric(N.RPL_LUSERCHANNELS, str(rooms), "channels formed")
        self.numeric(N.RPL_LUSERME, f"I have {users} clients and 0 servers")
        self.numeric(N.RPL_LOCALUSERS, str(users), str(most), f"Current local users {users}, max {most}")
        self.numeric(N.RPL_GLOBALUSERS, str(users), str(most), f"Current global users {users}, max {most}")

    def motd(self) -> None:
        """375, 372 per line, 376; or 422."""
        lines = self.factory.config.motd
        if lines is None:
            self.numeric(N.ERR_NOMOTD, "MOTD File is missing")
            return
        self.numeric(N.RPL_MOTDSTART, f"- {self.server} Message of the day - ")
        for text in lines:
            self.numeric(N.RPL_MOTD, f"- {text}")
        self.numeric(N.RPL_ENDOFMOTD, "End of /MOTD command.")

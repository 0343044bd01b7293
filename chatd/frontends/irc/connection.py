"""An IRC connection as a session of the hub: wire, output, events.

:class:`IRCConnection` is to IRC what ``ChatProtocol`` is to JSON: it
extends :class:`chatd.core.session.Session` (request ordering, limits,
timers, close) with the IRC wire: bytes are split into lines within the
limits of PROTOCOL.md section 7.5 (:class:`~chatd.frontends.irc.lines.
LineSplitter`), each line is queued as one request, and in its turn
dispatched to ``irc_<COMMAND>`` as twisted.words' ``IRC`` does.  The
commands themselves are mixins (:mod:`~chatd.frontends.irc.registration`,
:mod:`~chatd.frontends.irc.commands`, :mod:`~chatd.frontends.irc.history`).

Output goes through :meth:`IRCConnection.put`: while a command with a
``label`` is being answered (labeled-response), its lines are collected
and sent together when it is done (one labeled line, a
``labeled-response`` batch, or an ``ACK``); its echoes, which the hub
delivers a turn later, count as part of it.  What the hub hands every
member (:meth:`deliver`, :meth:`presence`, :meth:`notify`) is rendered
as IRC lines here; a stored batch is encoded once per tag mode for every
IRC member (:mod:`~chatd.frontends.irc.encoding`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import messages
from chatd.core.rooms import Delivery, Draft, dm_parties
from chatd.core.session import DEFAULT_BUFFER_SIZE, Session, Wire
from chatd.frontends.irc import numerics as N
from chatd.frontends.irc.encoding import (
    TAGS_ALL,
    TAGS_NONE,
    TAGS_TIME,
    TAGS_ACCOUNT,
    TAGS_BASE,
    OutLine,
    delivery_block,
    delivery_lines,
)
from chatd.frontends.irc.lines import BadLine, Line, LineSplitter, Received, add_tag, assemble, build, parse_line
from chatd.frontends.json.framing import UnpacedOutput
from chatd.messages import ChatError
from chatd.twisted_compat import writer_for

if TYPE_CHECKING:
    from chatd.frontends.irc.factory import IRCFactory

#: Commands served before registration (section 7.2); others get 451.
PRE_REGISTRATION = frozenset({"CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG", "QUIT"})

#: Capabilities offered (section 7.2); ``sasl`` only with accounts.
CAPABILITIES = (
    "message-tags",
    "server-time",
    "echo-message",
    "batch",
    "labeled-response",
    "multi-prefix",
    "userhost-in-names",
    "draft/chathistory",
    "away-notify",
    "account-tag",
    "extended-join",
)

_IDENT = re.compile(r"[^A-Za-z0-9_.-]")

#: A nick (section 7.2).
NICK = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")


def then(d: Deferred[Any], step: Callable[[], object]) -> Deferred[Any]:
    """Run ``step`` once ``d`` fired (its result discarded); what it
    returns (a Deferred too) is waited for."""

    def run(_: object) -> Any:
        return step()

    return d.addCallback(run)


def ident_of(username: str) -> str:
    """The ``user`` part of a source: ``~`` and the USER username without
    the characters outside ``[A-Za-z0-9_.-]``, cut to 10 (``u`` if none)."""
    return "~" + (_IDENT.sub("", username)[:10] or "u")


class IRCOutput(UnpacedOutput):
    """Writes whole IRC lines (the payloads carry their CR LF)."""

    name = "irc"

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def send(self, payload: bytes) -> None:
        """Write one or more lines."""
        self._write(payload)


class IRCConnection(Session[Received], Protocol):
    """One IRC client: its wire, its output and what the hub tells it."""

    log = Logger()
    factory: IRCFactory

    version = 2  # a full participant (section 7.1): DMs, rooms, presence
    transport_kind = "irc"
    peer_host: str | None = None  # counted against the caps while set

    # Registration state (section 7.2).
    nick: str | None = None  # the NICK asked for, before registration
    username: str | None = None
    realname = ""
    ident = "~u"
    account: str | None = None
    negotiating = False  # CAP LS or REQ opened negotiation, END not yet
    cap_302 = False
    registering = False  # the hub's login is being answered
    # Per-session state.
    away: str | None = None
    operator = False  # a server operator (OPER, section 7.3)
    invisible = False  # user mode +i
    bot = False  # user mode +B (IRCv3 bot-mode)

    # labeled-response: the lines of the command being answered, its label,
    # and the drafts whose echoes belong to it.
    _collector: list[OutLine] | None = None
    _label: str | None = None
    _label_pending = False
    _quit_seen: tuple[str, int] | None = None
    _keepalive: IDelayedCall | None = None
    _batch_serial = 0

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        """A TCP or TLS connection: the transport is the wire."""
        transport = self.transport
        assert transport is not None
        wire = cast(Wire, transport)
        self.peer_address = transport.getPeer()
        self.caps: set[str] = set()
        self.splitter = LineSplitter()
        self._label_drafts: set[Draft] = set()
        self._joining: set[str] = set()
        self._held_deliveries: list[Delivery] = []
        self._transport_write = writer_for(transport)
        factory = self.factory
        self.start_session(factory.hub, factory.clock, factory.settings, wire, getattr(transport, "bufferSize", DEFAULT_BUFFER_SIZE))
        self.output = IRCOutput(self.write)
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except (OSError, AttributeError, NotImplementedError):
                pass
        self._arm_keepalive()
        self.log.info("IRC connection from {peer}", peer=self.peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: no longer counted, logged out, timers stopped."""
        self._cancel_keepalive()
        self.factory.connection_closed(self)
        if self.operator:
            self.operator = False
            self.factory.opered -= 1
        self.departed()
        self.end_session()

    def departed(self, nick: str | None = None) -> None:
        """This session leaves ``nick`` (default: its name, when it ends):
        recorded for WHOWAS."""
        nick = nick or self.name
        if nick is not None:
            self.factory.whowas.record(nick, self.ident, self.realname, self.clock.seconds())

    def write(self, data: bytes) -> None:
        """Every byte to the client goes through here (for the send queue)."""
        self._transport_write(data)
        self.sendq.wrote(len(data))

    # -- input -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes: split into lines, each queued as one request."""
        if self.closing:
            return
        self.received(len(data))
        self._arm_keepalive()
        requests: list[tuple[Received, float]] = []
        for raw in self.splitter.feed(data):
            request = BadLine("too_long") if raw is None else parse_line(raw)
            requests.append((request, 1.0))
        if requests:
            self.requests_arrived(requests)

    def joins_batch(self, request: Received) -> bool:
        """An unlabeled PRIVMSG or NOTICE may join our pending batch; a
        labeled one waits until the previous answers are out."""
        return (
            isinstance(request, Line)
            and request.command in ("PRIVMSG", "NOTICE")
            and not self._label_pending
            and not (request.label and "labeled-response" in self.caps)
        )

    def handle(self, request: Received) -> Deferred[Any] | None:
        """One line, in its turn: dispatched, its answer collected if labeled."""
        label = request.label if "labeled-response" in self.caps else None
        if label is not None:
            self._collector = []
            self._label = label[:64]
            self._label_pending = True
        try:
            result = self.dispatch(request)
        except Exception:
            self.log.failure("handling an IRC line from {peer} failed", peer=self.peer)
            result = None
        if result is not None:
            command = request.command if isinstance(request, Line) else "*"
            result.addErrback(self._command_error, command)
        if label is None:
            return result
        if result is None:
            self._maybe_finish_label()
            return None
        return result.addBoth(self._handler_done)

    def _command_error(self, failure: Failure, command: str) -> None:
        """A command's answer failed unforeseen: logged, and the client told."""
        self.log.failure("the IRC command {command} of {peer} failed", failure, command=command, peer=self.peer)
        if not self.closing:
            self.fail(command, "INTERNAL_ERROR", "The server could not complete this command; try again.")

    def _handler_done(self, result: object) -> None:
        self._label_pending = bool(self._label_drafts)
        self._maybe_finish_label(handler_done=True)

    def dispatch(self, request: Received) -> Deferred[Any] | None:
        """A line to its ``irc_<COMMAND>`` method, as twisted.words'
        ``IRC.handleCommand`` does; bad lines and unknown commands get
        their numerics."""
        if isinstance(request, BadLine):
            if request.reason == "too_long":
                self.numeric(N.ERR_INPUTTOOLONG, "Input line was too long")
            else:
                self.numeric(N.ERR_UNKNOWNCOMMAND, request.command or "*", "Unknown command")
            return None
        command = request.command
        if self.name is None and command not in PRE_REGISTRATION:
            self.numeric(N.ERR_NOTREGISTERED, "You have not registered")
            return None
        handler: Callable[[Line], Deferred[Any] | None] | None = getattr(self, "irc_" + command, None)
        if handler is None:
            self.numeric(N.ERR_UNKNOWNCOMMAND, command, "Unknown command")
            return None
        try:
            return handler(request)
        except ChatError as error:
            self.command_failed(error, command, "*")
            return None

    # -- labeled-response ----------------------------------------------------

    def _maybe_finish_label(self, handler_done: bool = True) -> None:
        """Send a labeled command's answer once its handler is done and its
        echoes are in."""
        if self._collector is None or self._label_drafts or not handler_done:
            return
        lines, label = self._collector, self._label or ""
        self._collector = None
        self._label = None
        self._label_pending = False
        self.send_labeled(label, lines)

    def send_labeled(self, label: str, lines: list[OutLine]) -> None:
        """A labeled answer: ``ACK``, one labeled line, or a batch."""
        tag = ("label=" + label).encode("utf-8")
        if not lines:
            self.send_payload(assemble(tag, build("ACK", [], self.server)))
            return
        opened = _batch_ref(lines[0][1], b"+")
        single_batch = len(lines) > 1 and opened is not None and _batch_ref(lines[-1][1], b"-") == opened
        if len(lines) == 1 or single_batch or "batch" not in self.caps:
            tags, body = lines[0]
            self.send_payload(assemble(add_tag(tags, tag), body) + b"".join(assemble(t, b) for t, b in lines[1:]))
            return
        ident = self.batch_id()
        batch = ("batch=" + ident).encode("ascii")
        out = [assemble(tag, build("BATCH", ["+" + ident, "labeled-response"], self.server))]
        out += [assemble(add_tag(tags, batch), body) for tags, body in lines]
        out.append(assemble(b"", build("BATCH", ["-" + ident], self.server)))
        self.send_payload(b"".join(out))

    def batch_id(self) -> str:
        """A new batch reference (letters and digits)."""
        self._batch_serial += 1
        return f"b{self._batch_serial}"

    # -- output ------------------------------------------------------------

    @property
    def server(self) -> str:
        """The server's name (``--irc-server-name``)."""
        return self.factory.config.server_name

    @property
    def me(self) -> str:
        """How numerics address this client: its nick, ``*`` before it has one."""
        return self.name or self.nick or "*"

    @property
    def source(self) -> str:
        """This client as others see it: ``nick!~user@irc`` (section 7.1)."""
        return f"{self.me}!{self.ident}@irc"

    @property
    def tag_mode(self) -> int:
        """Which tags this client gets: all, ``time`` only, or none; with
        :data:`TAGS_ACCOUNT` set if it negotiated ``account-tag``."""
        caps = self.caps
        account = TAGS_ACCOUNT if "account-tag" in caps else 0
        if "message-tags" in caps:
            return TAGS_ALL | account
        if "server-time" in caps:
            return TAGS_TIME | account
        return TAGS_NONE | account

    def tags_for(self, tags: str = "", time: str | None = None, account: str | None = None) -> bytes:
        """A line's tags as this client gets them: ``tags`` (serialised;
        with message-tags only), ``time`` (the current time if None), and
        ``account=`` the account of the line's source, if it has one and
        this client negotiated ``account-tag``."""
        mode = self.tag_mode
        base = mode & TAGS_BASE
        parts = []
        if base == TAGS_ALL and tags:
            parts.append(tags)
        if base != TAGS_NONE:
            parts.append("time=" + (time or self.hub.now()))
        if account is not None and mode & TAGS_ACCOUNT:
            parts.append("account=" + account)
        return ";".join(parts).encode("utf-8")

    def put(self, tags: bytes, body: bytes, response: bool = True) -> None:
        """One line out: into the labeled answer being collected (if
        ``response``), else in request order."""
        if response and self._collector is not None:
            self._collector.append((tags, body))
            return
        self.send_payload(assemble(tags, body))

    def line(
        self,
        command: str,
        params: list[str],
        source: str | None = None,
        trailing: bool = False,
        tags: str = "",
        response: bool = True,
        account: str | None = None,
    ) -> None:
        """A line from ``source`` (default: the server); ``account``: the
        source's account, for a client with ``account-tag``."""
        self.put(self.tags_for(tags, account=account), build(command, params, source or self.server, trailing), response)

    def join_params(self, room: str, user: str) -> tuple[list[str], bool]:
        """A JOIN line's parameters (and whether the last is trailing):
        with ``extended-join``, the joiner's account (``*``: none) and
        realname too."""
        if "extended-join" not in self.caps:
            return [room], False
        session = self.hub.session_named(user)
        realname = session.realname if isinstance(session, IRCConnection) else user
        return [room, self.factory.account_of(user) or "*", realname or user], True

    def numeric(self, code: str, *params: str) -> None:
        """A numeric to this client; the last parameter is its text."""
        self.put(self.tags_for(), build(code, [self.me, *params], self.server, trailing=True))

    def fail(self, command: str, code: str, *params: str) -> None:
        """A standard reply: ``FAIL <command> <code> [params] :text``."""
        self.line("FAIL", [command, code, *params], trailing=True)

    def command_failed(self, error: ChatError, command: str, target: str, quiet: bool = False) -> None:
        """A core error as its numeric (section 7.3): ``rate_limited`` is a
        FAIL; nothing at all when ``quiet`` (NOTICE)."""
        if quiet:
            return
        code = error.code
        if code == messages.RATE_LIMITED:
            self.fail(command, "RATE_LIMITED", error.text)
        elif code == messages.FORBIDDEN and command == "JOIN":
            self.numeric(N.ERR_TOOMANYCHANNELS, target, error.text)
        elif code in (messages.NAME_TAKEN, messages.INVALID_USERNAME):
            self.numeric(N.ERROR_NUMERICS[code], target, error.text)
        elif code == messages.EMPTY_MESSAGE:
            self.numeric(N.ERR_NOTEXTTOSEND, "No text to send")
        elif code in N.ERROR_NUMERICS:
            self.numeric(N.ERROR_NUMERICS[code], target, error.text)
        else:
            self.fail(command, code.upper(), error.text)

    def write_payload(self, payload: bytes) -> None:
        """Send lines now."""
        assert self.output is not None
        self.output.send(payload)
        self.check_sendq()

    def send_error(self, code: str, text: str) -> None:
        """The session's own errors (flood, a lost name): ``ERROR``, as it
        closes."""
        if code == messages.RATE_LIMITED:
            text = "Flooding"
        self.put(b"", build("ERROR", [text], trailing=True), response=False)

    def send_info(self, text: str) -> None:
        """A server notice to this client."""
        self.put(self.tags_for(), build("NOTICE", [self.me, text], self.server, trailing=True), response=False)

    def shut_down(self) -> None:
        """The server is stopping: ``ERROR``, then close."""
        if self.closing:
            return
        self._events.clear()
        self._held = None
        self._waiting_for_store = False
        self.put(b"", build("ERROR", ["Server shutting down"], trailing=True), response=False)
        self.close_after_output()

    def _timed_out(self) -> None:
        """Registration not done within the login timeout (section 7.5)."""
        if self.name is None:
            self.log.info("closing {peer}: not registered within the login timeout", peer=self.peer)
            self.put(b"", build("ERROR", ["Registration timed out"], trailing=True), response=False)
            self.close_after_output()
            return
        super()._timed_out()

    def close_with_error(self, text: str) -> None:
        """``ERROR :text``, then close."""
        self.put(b"", build("ERROR", [text], trailing=True), response=False)
        self.close_after_output()

    # -- what the command mixins provide ---------------------------------------

    def join_one(self, name: str, autojoin: bool = False, join_key: str | None = None) -> Deferred[Any] | None:
        """Join one room (:mod:`~chatd.frontends.irc.commands`)."""
        raise NotImplementedError

    def show_join(self, record: Any, members: list[str], response: bool = True) -> None:
        """A JOIN with its topic and names (:mod:`~chatd.frontends.irc.commands`)."""
        raise NotImplementedError

    def lusers(self) -> None:
        """251-255 (:mod:`~chatd.frontends.irc.registration`)."""
        raise NotImplementedError

    def motd(self) -> None:
        """375-376 or 422 (:mod:`~chatd.frontends.irc.registration`)."""
        raise NotImplementedError

    # -- keepalive (section 7.5) -----------------------------------------------

    def _arm_keepalive(self) -> None:
        self._cancel_keepalive()
        seconds = self.factory.config.keepalive
        if seconds > 0 and not self.closing:
            self._keepalive = self.clock.callLater(seconds, self._ping)

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _ping(self) -> None:
        self._keepalive = None
        if self.closing:
            return
        self.put(b"", build("PING", [self.server], trailing=True), response=False)
        self._keepalive = self.clock.callLater(self.factory.config.ping_timeout, self._ping_timeout)

    def _ping_timeout(self) -> None:
        self._keepalive = None
        if not self.closing:
            self.log.info("closing {peer} ({user}): ping timeout", peer=self.peer, user=self.name)
            self.close_with_error("Ping timeout")

    # -- from the hub ------------------------------------------------------------

    def write_delivery(self, delivery: Delivery) -> None:
        """A stored batch: the same encoded lines for every IRC member; our
        own messages as echoes (echo-message) or not at all."""
        if self._joining and delivery.room.lower() in self._joining:
            self._held_deliveries.append(delivery)  # its JOIN lines go first
            return
        output = self.output
        assert output is not None
        factory = self.factory
        mode = self.tag_mode
        if not delivery.posted_by(self):
            output.send(delivery_block(delivery, mode, factory.source_of, factory.client_tags, factory.sender_tags))
            return
        echo = "echo-message" in self.caps
        encoded = delivery_lines(delivery, mode, factory.source_of, factory.client_tags, factory.sender_tags)
        for message, draft, lines in zip(delivery.messages, delivery.drafts, encoded):
            if draft is None or draft.origin is not self:
                output.send(b"".join(assemble(tags, body) for tags, body in lines))
                continue
            if echo:
                collect = self._collector is not None and draft in self._label_drafts
                for tags, body in lines:
                    if collect:
                        assert self._collector is not None
                        self._collector.append((tags, body))
                    else:
                        output.send(assemble(tags, body))
            if message.to is not None and len(dm_parties(message.room)) == 1:
                # A message to one's own nick: delivered to it as a recipient too.
                output.send(b"".join(assemble(tags, body) for tags, body in lines))

    def joined_answered(self, key: str) -> None:
        """The JOIN lines of ``key`` are out: what came for it meanwhile follows."""
        self._joining.discard(key)
        held = [delivery for delivery in self._held_deliveries if delivery.room.lower() == key]
        if held:
            self._held_deliveries = [delivery for delivery in self._held_deliveries if delivery.room.lower() != key]
            for delivery in held:
                self.deliver(delivery)

    def write_presence(self, user: str, status: str, room: str) -> None:
        """A name came (``JOIN``) or went (``PART``, or one ``QUIT`` for a
        name whose last session ended)."""
        if status == "online":
            self.send_payload(self._join_line(user, room))
            if "away-notify" in self.caps:
                away = getattr(self.hub.session_named(user), "away", None)
                if isinstance(away, str):
                    self.line("AWAY", [away], self.factory.source_of(user), trailing=True, response=False)
        else:
            self._left(user, room, None)

    def _join_line(self, user: str, room: str) -> bytes:
        """``user``'s JOIN line as this client gets it: built once per
        event for every recipient that negotiated the same (a room tells
        each member in turn; a login storm makes that most of the work)."""
        mode, extended = self.tag_mode, "extended-join" in self.caps
        factory = self.factory
        key = (user, room, mode, extended, self.hub.now())
        cached = factory.join_line_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        params, trailing = self.join_params(room, user)
        account = factory.account_of(user) if mode & TAGS_ACCOUNT else None
        line = assemble(self.tags_for(account=account), build("JOIN", params, factory.source_of(user), trailing))
        factory.join_line_cache = (key, line)
        return line

    def _left(self, user: str, room: str, comment: str | None) -> None:
        lower = user.lower()
        departure = self.hub.departing.get(lower)
        if departure is not None:
            if self._quit_seen == (lower, departure):
                return  # one QUIT per logout, whatever the rooms shared
            self._quit_seen = (lower, departure)
        # Built once per event for every recipient with the same tags.
        factory = self.factory
        key = (user, room if departure is None else departure, comment, self.tag_mode & TAGS_BASE, self.hub.now())
        cached = factory.left_line_cache
        if cached is not None and cached[0] == key:
            self.send_payload(cached[1])
            return
        if departure is None:
            params, trailing = ([room, comment], True) if comment else ([room], False)
            body = build("PART", params, factory.source_of(user), trailing)
        else:
            text = f"Quit: {comment}" if comment else "Quit: Connection closed"
            body = build("QUIT", [text], factory.source_of(user), trailing=True)
        line = assemble(self.tags_for(), body)
        factory.left_line_cache = (key, line)
        self.send_payload(line)

    def write_event(self, kind: str, content: dict[str, Any]) -> None:
        """A room event as IRC lines (section 7.1's table)."""
        room = str(content.get("room", ""))
        by = content.get("by")
        own = isinstance(by, str) and by.lower() == (self.name or "").lower()
        source = self.factory.source_of(by) if isinstance(by, str) else self.server
        if kind == "presence":
            user = str(content.get("user", ""))
            if content.get("status") == "online":
                self.line("JOIN", [room], self.factory.source_of(user), response=False)
            elif content.get("reason") in ("kicked", "banned"):
                comment = content.get("comment") or (by if isinstance(by, str) else user)
                if content.get("reason") == "banned":
                    self.line("MODE", [room, "+b", f"{user}!*@*"], source, response=own)
                self.line("KICK", [room, user, str(comment)], source, trailing=True, response=own)
            else:
                comment = content.get("comment")
                self._left(user, room, comment if isinstance(comment, str) else None)
        elif kind == "topic":
            self.line("TOPIC", [room, str(content.get("topic", ""))], source, trailing=True, response=own)
        elif kind == "mode":
            self.line("MODE", [room, *mode_changes(content)], source, response=own)
        elif kind == "invite":
            account = self.factory.account_of(by) if isinstance(by, str) else None
            self.line("INVITE", [self.me, room], source, response=False, account=account)
        elif kind in ("mute", "unmute") and isinstance(by, str):
            verb = "muted" if kind == "mute" else "unmuted"
            self.send_info(f"You were {verb} in {room} by {by}")
        elif kind == "joined":
            # Another session of this account joined: this one joins too (section 7.1).
            joined = content.get("joined")
            record = getattr(joined, "record", None)
            if record is not None:
                self.show_join(record, list(getattr(joined, "members", [])), response=False)
        elif kind == "parted":
            self.line("PART", [room], self.source, response=False)
        elif kind == "info":
            text = str(content.get("text", ""))
            if text.startswith(("You were kicked from", "You were banned from")) and isinstance(by, str):
                # The core tells the target apart from the room (section 6.5).
                comment = content.get("comment") or by
                if text.startswith("You were banned from"):
                    self.line("MODE", [room, "+b", f"{self.me}!*@*"], source, response=False)
                self.line("KICK", [room, self.me, str(comment)], source, trailing=True, response=False)
                if room.lower() == "#lobby":
                    # The core closes the session next (section 7.3).
                    verb = "Kicked" if text.startswith("You were kicked") else "Banned"
                    self.put(b"", build("ERROR", [f"{verb} from {room} by {by}: {comment}"], trailing=True), response=False)
            elif text:
                self.send_info(text)

    def renamed(self, old: str, new: str) -> None:
        """A name we share a room with changed (``NICK``, section 7.3)."""
        holder = self.hub.session_named(new)
        ident = getattr(holder, "ident", None)
        source = f"{old}!{ident}@irc" if isinstance(ident, str) else f"{old}!{old}@json"
        self.line("NICK", [new], source, response=False)

    def draft_done(self, draft: Draft) -> None:
        """Our message was stored and its echo sent, or it failed; a
        labeled command whose echoes are all in is answered."""
        self.factory.client_tags.forget(draft)
        failure = draft.result
        if isinstance(failure, Failure):
            error = failure.value
            if isinstance(error, ChatError):
                self.command_failed(error, "NOTICE" if draft.notice else "PRIVMSG", draft.to or draft.room, quiet=draft.notice)
            elif not draft.notice:
                self.fail("PRIVMSG", "MESSAGE_ERROR", "Your message could not be stored; please send it again.")
        if draft in self._label_drafts:
            self._label_drafts.discard(draft)
            if not self._label_drafts and not self._answering:
                self._maybe_finish_label()


def _batch_ref(body: bytes, sign: bytes) -> bytes | None:
    """The reference of a ``BATCH +ref`` (or ``-ref``) line, if it is one."""
    parts = body.split(b" ", 3)
    if len(parts) >= 3 and parts[1] == b"BATCH" and parts[2].startswith(sign):
        return parts[2][1:]
    return None


def mode_changes(content: dict[str, Any]) -> list[str]:
    """A ``mode`` event (section 6.5) as MODE parameters: ``+i-t``, or
    ``+o nick``."""
    letters = {"invite_only": "i", "topic_ops": "t", "moderated": "m", "secret": "s", "no_external": "n"}
    user = content.get("user")
    if isinstance(user, str):
        for role, letter in (("op", "o"), ("voice", "v")):
            if role in content:
                return [("+" if content[role] else "-") + letter, user]
    ban = content.get("ban")
    if isinstance(ban, str):
        return [("-" if content.get("removed") else "+") + "b", ban]
    out = ""
    sign = ""
    flags: dict[str, Any] = dict(content.get("modes") or {})
    limit = flags.pop("limit", None)
    join_key = flags.pop("key", None)
    # What was set first, then what was unset: "+im-t"; a key and a limit
    # last, with their values as arguments when set.
    changes = [(letters.get(str(flag)), value) for flag, value in sorted(flags.items(), key=lambda item: not item[1])]
    changes += [(letter, value) for letter, value in (("k", join_key), ("l", limit)) if value is not None]
    args: list[str] = []
    for char, value in changes:
        if char is None:
            continue
        wanted = "+" if value else "-"
        if wanted != sign:
            out += wanted
            sign = wanted
        out += char
        if value and not isinstance(value, bool):
            args.append(str(value))
    return [out or "+", *args]

"""The JSON front-end's connection: :class:`ChatProtocol`.

Bytes go through the :class:`~chatd.frontends.json.framing.StreamDecoder`;
each request is queued in the session layer
(:class:`chatd.core.session.Session`: ordering, limits, timers, close)
and, in its turn, checked and dispatched to a ``request_<type>`` method,
which calls the hub.  Responses are rendered here: v1 or v2, with the
request's ``ref``, in lines or classic framing.  The protocol knows
nothing about other connections: the hub calls
:meth:`~chatd.core.session.Session.deliver` for fan-out, which writes the
batch's shared encoding (:mod:`chatd.frontends.json.encoding`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import __version__, messages
from chatd.accounts.cred import account_required_text, no_password_text
from chatd.accounts.service import LoggedIn
from chatd.caps import host_of
from chatd.core.hub import DEFAULT_ROOM, MAX_TOPIC, Joined, record_modes
from chatd.core.moderation import Done
from chatd.core.rooms import ROOM_NAME_LENGTH, Delivery, Draft
from chatd.core.session import DEFAULT_BUFFER_SIZE, OutputFraming, Session, Wire
from chatd.frontends.json.encoding import delivery_lines, delivery_payloads, encode_message, message_response
from chatd.frontends.json.framing import CLASSIC, LINES, ClassicOutput, Decoded, LinesOutput, StreamDecoder
from chatd.frontends.json.requests import (
    PARSERS,
    HistoryRequest,
    LoginRequest,
    ModerationRequest,
    PasswordRequest,
    RegisterRequest,
    MsgRequest,
    NamesRequest,
    PlainRequest,
    RoomRequest,
    TopicRequest,
)
from chatd.messages import ChatError
from chatd.stores.history import MAX_PAGE, HistoryError, StoredMessage
from chatd.stores.roomstate import RoomRecord
from chatd.twisted_compat import writer_for

if TYPE_CHECKING:
    from chatd.server import ChatFactory

#: Classic clients read 4096 bytes per response (``sock.recv(4096)``).
CLASSIC_READ_SIZE = 4096

#: Requests a connection may make before it logs in.
PRE_LOGIN = frozenset({"login", "help", "hello", "ping", "register"})

#: The content type a request must carry, where it is not ignored and
#: the request has no parser of its own (``requests.PARSERS``); a wrong
#: type is ``bad_request``.  ``login`` checks its own content
#: (``invalid_username``).
CONTENT_TYPES: dict[str, tuple[type, ...]] = {
    "hello": (dict,),
}

#: What ``hello`` announces (PROTOCOL.md sections 5 and 6.7).
FEATURES = ["ping", "history", "ref", "presence", "rooms", "dm", "topic", "moderation", "multisession"]
#: Added to ``FEATURES`` unless ``--accounts off``.
ACCOUNT_FEATURES = ["accounts"]
PROTOCOL_VERSION = 2

#: The answer to a v2-only request from a connection without hello (section 6.1).
NEEDS_HELLO = "Send hello first: this request needs protocol 2."
MAX_REF_LENGTH = 128

#: Request budget costs (see :func:`request_cost`): a request costs 1
#: unit, plus this much per history row or listed name it may return.
COST_PER_ROW = 1 / 25
COST_PER_NAME = 1 / 100


def trimmed_history(payloads: list[bytes], timestamp: str, limit: int) -> list[str]:
    """The newest of ``payloads`` whose v1 ``history`` response fits ``limit`` bytes."""
    size = len(messages.encode(messages.response("history", [], timestamp)))
    kept: list[str] = []
    for payload in reversed(payloads):
        text = payload.decode("ascii")
        # Each entry is a JSON string: quoted and escaped, plus ", " between.
        size += len(json.dumps(text)) + (2 if kept else 0)
        if size > limit:
            break
        kept.append(text)
    kept.reverse()
    return kept


class ChatProtocol(Session[Decoded], Protocol):
    """A connection speaking the JSON chat protocol: its wire and its rendering.

    The session layer (:class:`~chatd.core.session.Session`) orders the
    requests, applies the limits and timers and closes; this class turns
    bytes into requests (the stream decoder, framing chosen from the
    first request), checks and dispatches each to ``request_<type>``
    (PROTOCOL.md section 2), and renders responses (v1/v2, ``ref``,
    lines or classic framing).  Over TCP and TLS the transport is the
    wire (:meth:`connectionMade`, :meth:`dataReceived`); the WebSocket
    front-end (:mod:`chatd.frontends.websocket`) starts it on its own
    wire with :meth:`start` and hands it one request per frame.
    """

    log = Logger()
    factory: ChatFactory

    MAX_LENGTH = 16384  # the request size limit (--max-request), set at start
    version = 1  # 2 once the client sent hello
    transport_kind = "tcp"  # for metrics: tcp or websocket
    peer_host: str | None = None  # counted against the caps while set
    framing_fixed = False  # the wire frames responses itself (WebSocket): hello changes nothing
    account = False  # logged in as an account (with its password)
    _ref: Any = None  # the ref of the request being handled

    def connectionMade(self) -> None:
        """A TCP or TLS connection: the transport is the wire."""
        transport = self.transport
        assert transport is not None  # set by makeConnection, just before
        # A TCP or TLS transport is a Wire: ITCPTransport, and the producer
        # and consumer interfaces (which ITCPTransport does not include).
        wire = cast(Wire, transport)
        self.start(wire, writer_for(transport), transport.getPeer(), getattr(transport, "bufferSize", DEFAULT_BUFFER_SIZE))
        _send_small_writes_at_once(transport)
        if self.factory.config.framing != "auto":
            self._use_framing(self.factory.config.framing)

    def start(self, wire: Wire, write: Callable[[bytes], None], peer: IAddress, buffer_size: int) -> None:
        """Start the session on ``wire``; ``write`` sends bytes to the client."""
        self.peer_address = peer
        self.log.info("connection from {peer}", peer=self.peer)
        config = self.factory.config
        self.MAX_LENGTH = config.max_request
        self.decoder = StreamDecoder(config.max_request)
        # The ref of each of our messages not yet delivered that carried one.
        self._refs: dict[Draft, Any] = {}
        # Rooms whose join is being answered, and what came for them meanwhile.
        self._joining: set[str] = set()
        self._held_deliveries: list[Delivery] = []
        self._transport_write = write
        self.start_session(self.factory.hub, self.factory.clock, config, wire, buffer_size)

    def use_output(self, output: OutputFraming) -> None:
        """Write every response through ``output`` from now on (the
        WebSocket's frames): no framing is chosen or switched."""
        self.output = output
        self.framing_fixed = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The connection ended: no longer counted, logged out."""
        self.log.info("connection from {peer} closed", peer=self.peer)
        self.factory.connection_closed(self)
        self.end_session()

    # -- input ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from a TCP or TLS stream: decoded, each request queued with its cost."""
        if self.closing:
            return
        self.received(len(data))
        events = self.decoder.feed(data)
        if events and self.output is None:
            self._use_framing(LINES if events[0].newline_follows else CLASSIC)
        factory = self.factory
        self.requests_arrived([(event, request_cost(event, factory)) for event in events])

    def frame_received(self, events: list[Decoded], size: int) -> None:
        """The requests of one message of ``size`` bytes, decoded by the
        wire (a WebSocket text frame), each queued with its cost."""
        if self.closing:
            return
        self.received(size)
        factory = self.factory
        self.requests_arrived([(event, request_cost(event, factory)) for event in events])

    def joins_batch(self, request: Decoded) -> bool:
        """Whether the request is a ``msg`` (it may join our pending batch)."""
        return request.request is not None and request.request.get("request") == "msg"

    def handle(self, request: Decoded) -> Deferred[None] | None:
        """A decoded request, or the decoder's error."""
        if request.error == messages.TOO_LONG:
            self.too_long()
        elif request.error is not None:
            self.send_error(messages.BAD_JSON, "Invalid JSON: send one JSON object per request.")
        else:
            assert request.request is not None
            return self.handle_request(request.request)
        return None

    def too_long(self) -> None:
        """The request passed ``MAX_LENGTH``: answer ``too_long``, then close."""
        self.send_error(messages.TOO_LONG, f"Request too long: the limit is {self.MAX_LENGTH} bytes.")
        self.close_after_output()

    def handle_request(self, request: dict[str, Any]) -> Deferred[None] | None:
        """Check a decoded request and dispatch it to ``request_<type>``.

        Every response sent while handling it carries its ``ref``.  A
        Deferred if the answer comes later (the ref stays set until then).
        """
        ref = request.get("ref")
        if ref is not None and not _valid_ref(ref):
            self.send_error(
                messages.BAD_REQUEST,
                f"Bad request: 'ref' must be a string of up to {MAX_REF_LENGTH} characters or an integer.",
            )
            return None
        self._ref = ref
        try:
            result = self._dispatch(request)
        except ChatError as failure:
            self.send_error(failure.code, failure.text)
            result = None
        if isinstance(result, Deferred):
            # The core answers with a Deferred: fired already on a single
            # node, later when clustered.  The session holds the next
            # requests until then.
            return result.addErrback(self._async_failed).addBoth(self._async_done)
        self._ref = None
        return None

    def _async_failed(self, failure: Failure) -> None:
        if failure.check(ChatError):
            error = cast(ChatError, failure.value)
            self.send_error(error.code, error.text)
        elif failure.check(HistoryError):
            self._history_failed(cast(HistoryError, failure.value))
        else:
            self.log.failure("request failed", failure)
            self.send_error(messages.SERVER_BUSY, "The server could not complete this request; try again.")

    def _history_failed(self, problem: Exception) -> None:
        """The history store could not answer: ``server_busy``, and the
        connection goes on (a login stays logged in)."""
        self.log.error("history unavailable for {peer}: {problem}", peer=self.peer, problem=str(problem))
        self.send_error(messages.SERVER_BUSY, "History is unavailable right now; try again later.")

    def _async_done(self, _: object) -> None:
        self._ref = None

    def _dispatch(self, request: dict[str, Any]) -> Any:
        """The checks of PROTOCOL.md section 2, in order, then the handler."""
        kind = request.get("request")
        if not isinstance(kind, str):
            raise ChatError(messages.BAD_REQUEST, "Bad request: the 'request' key must be a string.")
        # Like twisted.words' irc_<COMMAND>: the prefix keeps any string
        # from reaching attributes other than request handlers.
        handler = getattr(self, "request_" + kind, None)
        if handler is None:
            raise ChatError(
                messages.UNKNOWN_REQUEST,
                f"Unknown request {_quote(kind)}. Send {{\"request\": \"help\"}} for the list.",
            )
        parser = PARSERS.get(kind)
        content = request.get("content")
        if parser is not None:
            content = parser(request)
        else:
            expected = CONTENT_TYPES.get(kind)
            if expected is not None and not isinstance(content, expected):
                wanted = " or ".join(_TYPE_NAMES[t] for t in expected)
                raise ChatError(messages.BAD_REQUEST, f"Bad request: the content of '{kind}' must be {wanted}.")
        if self.name is None and kind not in PRE_LOGIN:
            raise ChatError(messages.NOT_LOGGED_IN, "You are not logged in. Log in first.")
        if self.version < PROTOCOL_VERSION and getattr(content, "needs_v2", False):
            raise ChatError(messages.FORBIDDEN, NEEDS_HELLO)
        return handler(content)

    # -- requests --------------------------------------------------------

    def request_login(self, request: LoginRequest) -> Deferred[Any]:
        """``login``: take a username (a guest's, or an account's with its
        password), then send the room's recent history."""
        if self.name is not None:
            raise ChatError(messages.ALREADY_LOGGED_IN, f"You are already logged in as {self.name}.")
        accounts = self.factory.accounts
        hub = self.factory.hub
        if accounts is None:
            # --accounts off: a password is ignored (section 6.4).
            return hub.login(self, request.name).addCallback(self._logged_in)
        if request.password is None:
            hub.check_name(request.name)
            if self.factory.config.accounts == "required":
                raise ChatError(messages.AUTH_FAILED, account_required_text())
            d = maybeDeferred(accounts.store.load_account, request.name)
            return d.addCallback(self._guest_login, request.name)
        logged = accounts.login(request.name, request.password, host_of(self.peer_address))
        return logged.addCallback(self._account_login)

    def _guest_login(self, account: object, name: str) -> Deferred[None]:
        """A login without a password: a guest, unless the name is an account's."""
        if account is not None:
            raise ChatError(messages.AUTH_FAILED, no_password_text(name))
        return self.factory.hub.login(self, name).addCallback(self._logged_in)

    def _account_login(self, logged: LoggedIn) -> Deferred[None]:
        """The password was right: the session logs in under the account's name."""
        self.account = True
        d = self.factory.hub.login(self, logged.name, account=True)
        return d.addCallbacks(self._logged_in, self._account_refused)

    def _account_refused(self, failure: Failure) -> Failure:
        self.account = False
        return failure

    def request_register(self, request: RegisterRequest) -> Deferred[None]:
        """``register`` (any connection, before login too): create an account; it does not log in."""
        accounts = self.factory.accounts
        operator = self.account and (self.name or "").lower() in self.factory.operators
        if accounts is None:
            raise ChatError(messages.FORBIDDEN, "This server has no accounts.")
        if self.factory.config.registration == "closed" and not operator:
            raise ChatError(messages.FORBIDDEN, "Registration is closed on this server.")
        hub = self.factory.hub
        d = accounts.register(
            request.username,
            request.password,
            host_of(self.peer_address),
            taken=hub.name_held,
            exempt=operator,
        )
        return d.addCallback(lambda record: self.send_info(f"Account {record.name} registered"))

    def _moderate(self, request: ModerationRequest) -> Deferred[None]:
        """A section 6.5 request (``kick``, ``ban``, ``mode``, ...): the
        churn bucket, then the hub's checks; the actor's ``info`` is sent
        before the events it causes."""
        self.churn_check()
        d = self.factory.hub.moderation.request(self, request.kind, request.fields)
        return d.addCallback(self._moderated)

    def _moderated(self, done: Done) -> None:
        self.churn_taken()
        self.send_info(done.text, **done.extra)
        done.apply()

    request_kick = request_ban = request_unban = request_mute = request_unmute = _moderate
    request_op = request_deop = request_voice = request_devoice = request_mode = request_invite = _moderate

    def request_password(self, request: PasswordRequest) -> Deferred[None]:
        """``password`` (v2): change the account's password."""
        accounts = self.factory.accounts
        if accounts is None or not self.account or self.name is None:
            raise ChatError(messages.FORBIDDEN, "Only accounts have passwords: guests have none to change.")
        d = accounts.change_password(self.name, request.old, request.new)
        return d.addCallback(lambda _: self.send_info("Password changed"))

    def _logged_in(self, name: str) -> Deferred[None] | None:
        if not self.logged_in(name):
            return None
        self.send_info(f"Login successful. You are now logged in as {self.name}")
        d = self._send_login_history()
        if self.account and self.version >= PROTOCOL_VERSION:
            d.addCallback(lambda _: self._send_account_rooms())
        return d

    def _send_account_rooms(self) -> Deferred[None]:
        """An account's v2 session: the info and history of each room the
        account is in, in the order joined (section 6.4), then its DMs
        kept while it had no session."""
        d = self.factory.hub.account_rooms(str(self.name))
        d.addCallback(self._rejoin_all)
        d.addErrback(self._account_room_failed, "its rooms")
        return d.addCallback(lambda _: self._send_undelivered())

    def _rejoin_all(self, keys: list[str]) -> Deferred[None]:
        d: Deferred[Any] = Deferred()
        for key in keys:
            d.addCallback(self._rejoin, key)
            d.addCallback(self._send_joined)
            d.addErrback(self._account_room_failed, key)
        d.callback(None)
        return d

    def _send_undelivered(self) -> Deferred[None]:
        """DMs kept for the account while it had no session: one history
        per conversation (section 6.3)."""
        hub = self.factory.hub
        sent: Deferred[None] = hub.undelivered(str(self.name), self).addCallback(self._send_kept)
        sent.addErrback(self._undelivered_failed)
        return sent

    def _send_kept(self, found: list[tuple[str, list[StoredMessage], bool]]) -> None:
        hub = self.factory.hub
        for other, kept, more in found:
            content = [message_response(message) for message in kept]
            self.send_response(messages.response("history", content, hub.now(), more=more, **{"with": other}))

    def _undelivered_failed(self, failure: Failure) -> None:
        """The kept DMs cannot be read now: they stay undelivered, for a later login."""
        self.log.failure("reading the DMs kept for {user} failed", failure, user=self.name)

    def _rejoin(self, _: object, key: str) -> Deferred[Joined]:
        return self.factory.hub.join(self, key, rejoin=True)

    def _account_room_failed(self, failure: Failure, key: str) -> None:
        """A kept room that cannot be entered now (banned meanwhile, say)."""
        if failure.check(ChatError):
            error = cast(ChatError, failure.value)
            if error.code == messages.BANNED:
                self.factory.hub.forget_room(str(self.name), key)  # banned while away: no longer its room
            self.send_error(error.code, error.text)
            return
        self.log.failure("rejoining {room} for {user} failed", failure, room=key, user=self.name)

    def request_logout(self, content: Any) -> None:
        """``logout``: leave the registry and return to the logged-out state."""
        self.logged_out()
        self.account = False
        self.send_info("Logout successful")

    def request_msg(self, request: MsgRequest) -> None:
        """``msg``: the hub stores the message, then sends it to the room
        (or to both sides of a DM).

        Further requests wait until it is stored and sent, so their
        responses come after the echo (which carries the request's ref).
        """
        draft = self.post(request.text, room=request.room, to=request.to)
        if draft is None:
            return  # flooding: the session closes
        ref = self._ref
        if draft.settled:  # refused at once: nothing to wait for
            self._post_failed(draft.result, ref)
            return
        if ref is not None:
            self._refs[draft] = ref
        self.wait_for_store(draft)

    def draft_done(self, draft: Draft) -> None:
        """Our message was stored (its echo, with the ref, went out with
        the batch) or could not be: then an error, with the ref."""
        ref = self._refs.pop(draft, None)
        if isinstance(draft.result, Failure):
            self._post_failed(draft.result, ref)

    def _post_failed(self, failure: Failure, ref: Any) -> None:
        """Our message could not be stored: tell the sender (with its ref)."""
        if not self.takes_fan_out():
            return
        self._ref = ref
        try:
            if failure.check(ChatError):
                error = cast(ChatError, failure.value)
                self.send_error(error.code, error.text)
            else:
                self.send_error(messages.SERVER_BUSY, "Your message could not be stored; please send it again.")
        finally:
            self._ref = None

    def request_names(self, request: NamesRequest) -> Deferred[None]:
        """``names``: the users of ``#lobby`` in login order, or of a room
        in the order they joined."""
        hub = self.factory.hub
        if request.room is None:
            return hub.names().addCallback(lambda names: self.send_info(", ".join(names)))
        record = hub.readable(self, request.room)
        return hub.names(record.name).addCallback(lambda names: self.send_info(", ".join(names), room=record.name))

    def request_join(self, request: RoomRequest) -> Deferred[Any]:
        """``join`` (v2): enter a room, created if new; its info and history."""
        self.churn_check()
        self._joining.add(request.room.lower())
        d = self.factory.hub.join(self, request.room, join_key=request.key)
        d.addCallback(self._joined_room)
        return d.addBoth(self._join_answered, request.room.lower())

    def _joined_room(self, joined: Joined) -> None:
        self.churn_taken()
        self._send_joined(joined)

    def _send_joined(self, joined: Joined) -> None:
        """A join's answer: the room's ``info``, then its ``history``."""
        record = joined.record
        ops = set(record.ops)
        voiced = set(record.voiced)
        self.send_info(
            f"Joined {record.name}",
            room=record.name,
            topic=record.topic,
            members=joined.members,
            ops=[name for name in joined.members if name.lower() in ops],
            voiced=[name for name in joined.members if name.lower() in voiced],
            modes=record_modes(record, record.key),
        )
        if joined.history is not None:
            content = [message_response(message) for message in joined.history]
            self.send_response(messages.response("history", content, self.factory.hub.now(), room=record.name))

    def _join_answered(self, result: object, key: str) -> object:
        """The join is answered: what arrived for the room meanwhile follows."""
        self._joining.discard(key)
        held = [delivery for delivery in self._held_deliveries if delivery.room.lower() == key]
        if held:
            self._held_deliveries = [delivery for delivery in self._held_deliveries if delivery.room.lower() != key]
            for delivery in held:
                self.deliver(delivery)
        return result

    def request_part(self, request: RoomRequest) -> None:
        """``part`` (v2): leave a room."""
        self.churn_check()
        record = self.factory.hub.part(self, request.room, request.comment)
        self.churn_taken()
        self.send_info(f"Left {record.name}", room=record.name)

    def request_rooms(self, request: PlainRequest) -> Deferred[None]:
        """``rooms`` (v2): the rooms one may see, with member counts."""
        return self.factory.hub.room_list(self).addCallback(self._send_rooms)

    def _send_rooms(self, rooms: list[tuple[RoomRecord, int]]) -> None:
        listed = [
            {
                "room": record.name,
                "members": count,
                "topic": record.topic,
                "invite_only": bool(record.modes.get("invite_only")),
                "secret": bool(record.modes.get("secret")),
            }
            for record, count in rooms
        ]
        text = ", ".join(f"{entry['room']} ({entry['members']})" for entry in listed)
        self.send_info(text, rooms=listed)

    def request_topic(self, request: TopicRequest) -> Any:
        """``topic`` (v2): read a room's topic, or set it (``""`` clears)."""
        hub = self.factory.hub
        if request.topic is None:
            record = hub.readable(self, request.room)
            text = f"Topic of {record.name}: {record.topic}" if record.topic else f"{record.name} has no topic."
            self.send_info(text, room=record.name, topic=record.topic, by=record.topic_by, set_at=record.topic_set_at)
            return None
        self.churn_check()
        return hub.topic(self, request.room, request.topic, self._topic_set)

    def _topic_set(self, record: RoomRecord) -> None:
        """Answered before the members (the setter among them) get ``topic``."""
        self.churn_taken()
        self.send_info(f"Topic of {record.name} set", room=record.name)

    def request_help(self, content: Any) -> None:
        """``help``: every request and its content."""
        self.send_info(messages.HELP_TEXT)

    def request_hello(self, content: dict[str, Any]) -> None:
        """``hello`` (v2): switch to lines framing and object-form history."""
        protocol = content.get("protocol")
        if not isinstance(protocol, int) or isinstance(protocol, bool) or protocol < PROTOCOL_VERSION:
            raise ChatError(messages.BAD_REQUEST, "Bad request: hello needs \"protocol\": 2 or higher.")
        self.version = PROTOCOL_VERSION
        self._use_framing(LINES)
        config = self.factory.config
        history_on_login = config.history_on_login
        limits = {
            "max_request": config.max_request,
            "max_message": self.factory.hub.max_message,
            "history_page": MAX_PAGE,
            "history_on_login": "all" if history_on_login is None else history_on_login,
            "room_name": ROOM_NAME_LENGTH,
            "topic": MAX_TOPIC,
            "rooms_per_user": self.factory.hub.max_rooms_per_user,
            "max_sessions": self.factory.config.max_sessions,
        }
        features = FEATURES + (ACCOUNT_FEATURES if self.factory.accounts is not None else [])
        content = {"protocol": PROTOCOL_VERSION, "server": f"chatd/{__version__}", "features": features, "limits": limits}
        self.send_response(messages.response("hello", content, self.factory.hub.now()))

    def request_ping(self, content: Any) -> None:
        """``ping`` (v2): ``pong`` echoing the content."""
        self.send_response(messages.response("pong", content, self.factory.hub.now()))

    def request_history(self, request: HistoryRequest) -> Any:
        """``history`` (v2): a page before or after an id, oldest first, with ``more``."""
        hub = self.factory.hub
        if request.with_name is not None:
            # Stored DMs are an account's (section 6.3): a guest has none.
            limit = DEFAULT_PAGE if request.limit is None else request.limit
            d = hub.dm_page(self, request.with_name, request.before, request.after, limit)
            return d.addCallback(self._send_dm_page, request.with_name)
        room, label = DEFAULT_ROOM, None
        if request.room is not None:
            record = hub.record(request.room)
            if record.key != DEFAULT_ROOM:
                if not hub.in_room(self, record.key):
                    raise ChatError(messages.NOT_IN_ROOM, f"You are not in {record.name}.")
                room = label = record.name
        limit = DEFAULT_PAGE if request.limit is None else request.limit
        page = hub.page(room, request.before, request.after, limit)
        return page.addCallback(self._send_page, label)

    def _send_dm_page(self, page: tuple[list[StoredMessage], bool], with_name: str) -> None:
        found, more = page
        content = [message_response(message) for message in found]
        self.send_response(messages.response("history", content, self.factory.hub.now(), more=more, **{"with": with_name}))

    def _send_page(self, page: tuple[list[StoredMessage], bool], room: str | None) -> None:
        found, more = page
        history = self._history_content(found)
        extra: dict[str, Any] = {"more": more} if room is None else {"room": room, "more": more}
        self.send_response(messages.response("history", history, self.factory.hub.now(), **extra))

    # -- output ----------------------------------------------------------

    def write_payload(self, payload: bytes) -> None:
        """Send one encoded response now, in this connection's framing."""
        if self.output is None:
            self._use_framing(LINES)
        assert self.output is not None
        self.output.send(payload)
        self.check_sendq()

    def send_response(self, response: dict[str, Any]) -> None:
        """Encode and send one response (with the request's ``ref``, if any)."""
        if self._ref is not None:
            response["ref"] = self._ref
        self.send_payload(messages.encode(response))

    def send_error(self, code: str, text: str) -> None:
        """Send an ``error`` response with its ``code``."""
        self.factory.hub.metrics.errors.labels(code).inc()
        self.send_response(messages.error(code, text, self.factory.hub.now()))

    def send_info(self, text: str, **extra: Any) -> None:
        """Send an ``info`` response (``extra`` keys after its content)."""
        self.send_response(messages.info(text, self.factory.hub.now(), **extra))

    def deliver(self, delivery: Delivery) -> None:
        """Fan-out from the core (:meth:`Session.deliver`), the common case
        in one call.

        A room's batch goes to every member in turn, so this runs once per
        message per recipient: it was a chain of seven calls (deliver,
        takes_fan_out, write_delivery, send_block, write, check_sendq,
        unsent_bytes) around the one ``send``, a quarter of the server's
        CPU in a fan-out profile.  For a lines-framed connection that is
        open, answers no join and awaits no echo with a ``ref``, the batch's
        shared block is written here; the send-queue meter only counts,
        and the limit can only be passed, once the transport has paused us
        (a lines output holds nothing back itself).  Anything else takes
        the general path, which does the same for this case.
        """
        if type(self.output) is LinesOutput and not self.closing and not self._joining and not self._refs:
            try:
                lines: bytes = delivery.cached["json-lines"]
            except KeyError:
                lines = delivery_lines(delivery)
            self._write_shared(lines)
            return
        super().deliver(delivery)

    def _write_shared(self, data: bytes) -> None:
        """Write bytes shared by every recipient straight to the transport;
        the send queue counts them only once the transport has paused us."""
        self._transport_write(data)
        sendq = self.sendq
        if sendq.backlogged:
            sendq.wrote(len(data))
            self.check_sendq()

    def presence(self, user: str, status: str, room: str) -> None:
        """Who came or went (:meth:`Session.presence`), the common case in
        one call, as :meth:`deliver` does it: a login or logout is told to
        every member of the rooms in turn, so in a login storm this runs
        once per login per online user.  For an open, lines-framed v2
        connection with nothing held back, the event's shared line is
        written here; anything else takes the general path."""
        if (
            type(self.output) is LinesOutput
            and not self.closing
            and not self._waiting_for_store
            and self.version >= PROTOCOL_VERSION
        ):
            self._write_shared(presence_line(self.factory, user, status, room))
            return
        super().presence(user, status, room)

    def write_delivery(self, delivery: Delivery) -> None:
        """Fan-out: a stored batch, encoded once for every JSON member.

        Lines framing writes the batch's shared block in one write; only
        when the batch holds one of our own messages that carried a
        ``ref`` is that echo encoded again, with it.
        """
        if self._joining and delivery.room.lower() in self._joining:
            # Its join is not answered yet: the info and history go first.
            self._held_deliveries.append(delivery)
            return
        output = self.output
        assert output is not None  # the session checked
        if self._refs and delivery.posted_by(self):
            refs = self._refs
            payloads = delivery_payloads(delivery)
            for message, draft, payload in zip(delivery.messages, delivery.drafts, payloads):
                ref = refs.get(draft) if draft is not None else None
                if ref is None:
                    output.send(payload)
                else:
                    output.send(messages.encode(message_response(message, ref=ref)))
        elif type(output) is LinesOutput:
            output.send_block(delivery_lines(delivery))
        else:
            for payload in delivery_payloads(delivery):
                output.send(payload)

    def write_presence(self, user: str, status: str, room: str) -> None:
        """v2 only: who came or went (a v1 client never gets this type)."""
        self.write_event("presence", {"user": user, "status": status, "room": room})

    def write_event(self, kind: str, content: dict[str, Any]) -> None:
        """v2 only: an unsolicited response (``presence``, ``topic``, ...);
        ``info`` (a moderator's action on us: content ``text`` and its
        keys) goes to every version."""
        if kind in ("info", "joined", "parted"):
            saved, self._ref = self._ref, None
            try:
                if kind == "joined":  # another session of our name joined
                    self._send_joined(cast(Joined, content["joined"]))
                elif kind == "parted":
                    self.send_info(f"Left {content['room']}", room=content["room"])
                else:
                    extra = {key: value for key, value in content.items() if key != "text"}
                    self.send_info(str(content.get("text", "")), **extra)
            finally:
                self._ref = saved
            return
        if self.version < PROTOCOL_VERSION:
            return
        self.send_payload(encoded_event(self.factory, kind, content))

    def _send_login_history(self) -> Deferred[None]:
        hub = self.factory.hub
        return hub.recent(DEFAULT_ROOM, self.factory.config.history_on_login).addCallback(self._send_recent)

    def _send_recent(self, found: list[StoredMessage]) -> None:
        timestamp = self.factory.hub.now()
        content: list[Any]
        if self.version == 1 and self.output is not None and self.output.name == CLASSIC:
            content = trimmed_history([encode_message(message) for message in found], timestamp, CLASSIC_READ_SIZE)
        else:
            content = self._history_content(found)
        self.send_response(messages.response("history", content, timestamp))

    def _history_content(self, found: list[StoredMessage]) -> list[Any]:
        """History entries: JSON strings for v1, message objects for v2."""
        if self.version == 1:
            return [encode_message(message).decode("ascii") for message in found]
        return [message_response(message) for message in found]

    def write(self, data: bytes) -> None:
        """Every byte to the client goes through here (for the send queue)."""
        self._transport_write(data)
        self.sendq.wrote(len(data))

    def _use_framing(self, framing: str) -> None:
        if self.framing_fixed or (self.output is not None and self.output.name == framing):
            return
        write = self.write
        previous = self.output
        output: LinesOutput | ClassicOutput
        if framing == CLASSIC:
            config = self.factory.config
            output = ClassicOutput(write, self.factory.clock, config.pace)
        else:
            output = LinesOutput(write)
        self.output = output
        if previous is not None:
            # Responses still waiting for their classic pace go first.
            for payload in previous.take_queue():
                output.send(payload)


_TYPE_NAMES = {str: "a string", dict: "an object", type(None): "null"}

#: Page size of a ``history`` request without ``limit``.
DEFAULT_PAGE = 100


def presence_line(factory: ChatFactory, user: str, status: str, room: str) -> bytes:
    """A ``presence`` event as one line, encoded once for every recipient
    (the last one is kept on the factory while the event and the
    timestamp are the same)."""
    key = (user, status, room, factory.hub.now())
    cached = factory.presence_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    line = encoded_event(factory, "presence", {"user": user, "status": status, "room": room}) + b"\n"
    factory.presence_cache = (key, line)
    return line


def encoded_event(factory: ChatFactory, kind: str, content: dict[str, Any]) -> bytes:
    """An unsolicited response, encoded once for every recipient.

    A room announces one event to each member in turn (a presence to
    every ``#lobby`` user at a login or logout): the last encoding is
    kept on the factory and used again while the event and the
    timestamp are the same, instead of encoding it anew per recipient.
    """
    timestamp = factory.hub.now()
    try:
        key: Any = (kind, timestamp, tuple(content.items()))
        hash(key)
    except TypeError:  # a value that is a list or a dict: encode as it is
        key = None
    cached = factory.event_cache
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    payload = messages.encode(messages.response(kind, content, timestamp))
    if key is not None:
        factory.event_cache = (key, payload)
    return payload


def _send_small_writes_at_once(transport: Any) -> None:
    """Turn Nagle's algorithm off where there is a TCP socket (TLS over
    TCP too): after a burst of output, a small reply would otherwise wait
    for the client's delayed ACK, some 40 ms."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except (OSError, AttributeError, NotImplementedError):
        pass  # not a TCP socket after all (a UNIX socket, a test transport)


def request_cost(event: Decoded, factory: ChatFactory) -> float:
    """What handling ``event`` costs from the connection's request budget.

    One unit per request, whatever it is (errors included: no request is
    free), plus a share for each history row it may send back and for each
    connection it may write to (``names`` lists them, ``login`` and
    ``logout`` announce to them), so the budget follows the work a request
    causes.
    """
    request = event.request
    if request is None:
        return 1.0
    kind = request.get("request")
    if kind == "history":
        content = request.get("content")
        limit = content.get("limit") if isinstance(content, dict) else None
        rows = limit if isinstance(limit, int) and not isinstance(limit, bool) else DEFAULT_PAGE
        return 1.0 + max(1, min(MAX_PAGE, rows)) * COST_PER_ROW
    if kind == "login":
        # Its history, and the presence notice every other user gets.
        on_login = factory.config.history_on_login
        rows = min(MAX_PAGE if on_login is None else on_login, MAX_PAGE)
        return 1.0 + rows * COST_PER_ROW + factory.connections * COST_PER_NAME
    if kind in ("names", "logout"):
        return 1.0 + factory.connections * COST_PER_NAME
    if kind == "join":
        # Its history, the member list and the presence members get.
        on_join = factory.config.history_on_login
        rows = min(MAX_PAGE if on_join is None else on_join, MAX_PAGE)
        return 1.0 + rows * COST_PER_ROW + factory.connections * COST_PER_NAME
    if kind == "rooms":
        return 1.0 + factory.hub.room_count() * COST_PER_NAME
    return 1.0


def _valid_ref(ref: Any) -> bool:
    if isinstance(ref, str):
        return len(ref) <= MAX_REF_LENGTH
    return isinstance(ref, int) and not isinstance(ref, bool)


def _quote(text: str) -> str:
    """A request type for an error sentence: quoted, bounded, printable."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    return json.dumps(shown)

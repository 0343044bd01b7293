"""One :class:`ChatProtocol` per connection: requests in, responses out.

Bytes go through the :class:`~chatd.frontends.json.framing.StreamDecoder`; each request
is dispatched to a ``request_<type>`` method, which calls the hub.  The
protocol knows nothing about other connections: the hub calls
:meth:`ChatProtocol.deliver` for fan-out.
"""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import LineReceiver

from chatd import __version__, messages
from chatd.frontends.json.framing import CLASSIC, LINES, ClassicOutput, Decoded, LinesOutput, StreamDecoder
from chatd.stores.history import MAX_PAGE, HistoryError, StoredMessage
from chatd.core.limits import FloodMeter, RequestBudget, SendQueueMeter, TokenBucket
from chatd.twisted_compat import writer_for
from chatd.core.hub import DEFAULT_ROOM
from chatd.core.rooms import Delivery, Draft
from chatd.frontends.json.encoding import delivery_lines, delivery_payloads, encode_message, message_response
from chatd.messages import ChatError

if TYPE_CHECKING:
    from chatd.server import ChatFactory

#: Classic clients read 4096 bytes per response (``sock.recv(4096)``).
CLASSIC_READ_SIZE = 4096

#: Twisted's FileDescriptor.bufferSize, for transports that do not say.
DEFAULT_BUFFER_SIZE = 64 * 1024

#: Requests a connection may make before it logs in.
PRE_LOGIN = frozenset({"login", "help", "hello", "ping"})

#: The content type a request must carry, where it is not ignored; a
#: wrong type is ``bad_request``.  ``login`` checks its own content
#: (``invalid_username``).
CONTENT_TYPES: dict[str, tuple[type, ...]] = {
    "msg": (str,),
    "hello": (dict,),
    "history": (dict, type(None)),
}

#: What ``hello`` announces (PROTOCOL.md section 5).
FEATURES = ["ping", "history", "ref", "presence"]
PROTOCOL_VERSION = 2
MAX_REF_LENGTH = 128

#: Messages one connection may add to one batch (one reactor turn); the
#: rest wait for the next turn, which bounds the work done in one turn.
MAX_BATCH_PER_CONNECTION = 32

#: Requests of any type one connection gets handled in one reactor turn;
#: the rest wait for the next turn, so no connection holds the reactor.
MAX_REQUESTS_PER_TURN = 32

#: A connection whose queued requests are this many seconds of budget
#: ahead of it is flooding: ``rate_limited``, then it is closed.
FLOOD_SECONDS = 10.0

#: Seconds a closing connection gets to take its last output (and a TLS
#: peer to answer the close) before the connection is aborted.
CLOSE_GRACE = 10.0

#: Request budget costs (see :func:`request_cost`): a request costs 1
#: unit, plus this much per history row or listed name it may return.
COST_PER_ROW = 1 / 25
COST_PER_NAME = 1 / 100
#: Input costs too, whatever it decodes to: one unit per 4 KiB received
#: (garbage yields one ``bad_json`` per read, but decoding it is work).
COST_PER_BYTE = 1 / 4096

#: The largest message id (SQLite's INTEGER is 64-bit signed).
MAX_ID = 2**63 - 1


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


class ChatProtocol(LineReceiver):
    """A chat connection speaking the JSON chat protocol.

    It keeps :class:`LineReceiver`'s contract - ``sendLine`` sends one
    response, ``MAX_LENGTH`` is the request size limit and
    ``lineLengthExceeded`` answers ``too_long`` and closes - while the
    input goes through the stream decoder, so clients that send bare
    JSON without newlines work.
    """

    delimiter = b"\n"
    log = Logger()
    factory: ChatFactory

    name: str | None = None
    output: LinesOutput | ClassicOutput | None = None
    closing = False
    version = 1  # 2 once the client sent hello
    transport_kind = "tcp"  # for metrics: tcp or websocket
    peer_host: str | None = None  # counted against the caps while set
    _login_timer: Any = None
    _ref: Any = None  # the ref of the request being handled
    # Ordering while our messages wait in the hub's batch (see
    # _process_events): _waiting_for_store is set while one does; _held
    # keeps direct responses made meanwhile, to be sent after the echoes.
    _waiting_for_store = False
    _held: list[bytes] | None = None
    _batched = 0  # our messages in the pending batch
    _answering = False  # a request is being answered later (clustered hub)
    _reading_paused = False
    _queued_cost = 0.0  # budget units of the requests in _events
    _resume_call: Any = None  # handles the queued requests later (budget, turn)
    _close_deadline: Any = None  # aborts a closing connection that will not close
    _producer_registered = False
    _processing = False  # inside _process_events
    _posts_pending = 0  # our messages not yet stored and delivered

    def connectionMade(self) -> None:
        self.log.info("connection from {peer}", peer=_peer(self))
        config = self.factory.config
        self.MAX_LENGTH = config.max_request
        self.decoder = StreamDecoder(config.max_request)
        self._events: deque[tuple[Decoded, float]] = deque()
        # The ref of each of our messages not yet delivered that carried one.
        self._refs: dict[Draft, Any] = {}
        clock = self.factory.clock
        self.rate = TokenBucket(clock, config.msg_rate, config.msg_burst)
        # Rejections are forgiven at the allowed rate: sending at several
        # times the rate fills this within seconds, and then we hang up.
        self.flood = FloodMeter(clock, config.msg_rate, 2 * config.msg_burst)
        self.budget = RequestBudget(clock, config.request_rate, config.request_burst)
        self.sendq = SendQueueMeter(getattr(self.transport, "bufferSize", DEFAULT_BUFFER_SIZE), self._output_drained)
        self._transport_write = writer_for(self.transport)
        _send_small_writes_at_once(self.transport)
        self.transport.registerProducer(self.sendq, True)
        self._producer_registered = True
        if config.framing != "auto":
            self._use_framing(config.framing)
        self._start_login_timer()

    def connectionLost(self, reason: Any = None) -> None:
        self.log.info("connection from {peer} closed", peer=_peer(self))
        self.factory.connection_closed(self)
        self._cancel_login_timer()
        self._cancel_idle_timer()
        self._cancel(self._resume_call)
        self._cancel(self._close_deadline)
        self._resume_call = self._close_deadline = None
        self._events.clear()
        if self.output is not None:
            self.output.stop()
        if self.name is not None:
            self.factory.hub.logout(self)
            self.log.info("{user} left (connection lost)", user=self.name)
            self.name = None
        self.closing = True

    # -- input ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self._idle_timer is not None:
            self._idle_timer.reset(self.factory.config.idle_timeout)
        self.budget.charge(len(data) * COST_PER_BYTE)
        events = self.decoder.feed(data)
        if events and self.output is None:
            self._use_framing(LINES if events[0].newline_follows else CLASSIC)
        for event in events:
            cost = request_cost(event, self.factory)
            self._events.append((event, cost))
            self._queued_cost += cost
        self._process_events()
        # What this turn could not handle waits for the budget; that much
        # waiting is a flood.
        if self.budget.behind(self._queued_cost) > FLOOD_SECONDS:
            self._flooded()

    def _process_events(self) -> None:
        """Handle queued requests in order, within the budget.

        While a msg of ours waits to be stored, further msg requests join
        the same batch (one transaction for a burst), but anything that
        would answer directly waits until our echoes are out: each
        connection sees its responses in request order.  A request waits
        while the connection's budget is in debt, or its output is not
        being read, and after :data:`MAX_REQUESTS_PER_TURN` in one turn.
        """
        if self._processing:
            return  # an answer that came at once, inside the loop below
        self._processing = True
        try:
            self._handle_queued()
        finally:
            self._processing = False
        if not self._events:
            self._queued_cost = 0.0  # no float drift across a long session
            wait = self.budget.wait()
            if wait > 0 and not self.closing:
                self._process_later(wait)  # in debt for input alone: read again then
        self._update_reading()

    def _handle_queued(self) -> None:
        handled = 0
        while self._events and self._may_handle():
            event, cost = self._events[0]
            if self._waiting_for_store and (not _is_msg(event) or self._batched >= MAX_BATCH_PER_CONNECTION):
                break
            wait = self.budget.wait()
            if wait > 0 or handled >= MAX_REQUESTS_PER_TURN:
                self._process_later(wait)
                break
            self._events.popleft()
            self._queued_cost -= cost
            self.budget.charge(cost)
            handled += 1
            self._handle_event(event)

    def _may_handle(self) -> bool:
        return not self.closing and self._held is None and not self._answering and not self.sendq.backlogged

    def _resume_call_pending(self) -> bool:
        return self._resume_call is not None and self._resume_call.active()

    def _process_later(self, delay: float) -> None:
        if self._resume_call is None or not self._resume_call.active():
            self._resume_call = self.factory.clock.callLater(delay, self._process_events)

    def _update_reading(self) -> None:
        """Read from the client only while its requests can be handled.

        Queued requests (over the budget, or past this turn's share) and
        output the client is not reading both stop the reading, so one
        connection's flood is spread over time instead of stalling the
        reactor or filling memory.  A closing connection reads again: its
        peer's close must be seen.
        """
        pause = not self.closing and (bool(self._events) or self.sendq.backlogged or self._resume_call_pending())
        if pause == self._reading_paused or self.transport is None:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _output_drained(self) -> None:
        """The transport sent its buffer: requests may be handled again."""
        if not self.closing:
            self._process_events()

    def _flooded(self) -> None:
        if self.closing:
            return
        self.log.info("closing {peer} ({user}): flooding requests", peer=_peer(self), user=self.name)
        self._events.clear()
        self._queued_cost = 0.0
        self.send_error(messages.RATE_LIMITED, "Flooding: you keep sending far too fast. Closing the connection.")
        self.close_after_output()

    def _store_done(self) -> None:
        self._waiting_for_store = False
        self._batched = 0
        held, self._held = self._held, None
        for payload in held or ():
            self.sendLine(payload)
        if self.closing:
            self._close_when_drained()
            return
        self._process_events()

    def _handle_event(self, event: Decoded) -> None:
        if event.error == messages.TOO_LONG:
            self.lineLengthExceeded(b"")
        elif event.error is not None:
            self.send_error(messages.BAD_JSON, "Invalid JSON: send one JSON object per request.")
        else:
            assert event.request is not None
            self.handle_request(event.request)

    def lineLengthExceeded(self, line: bytes) -> None:
        """The request passed ``MAX_LENGTH``: answer ``too_long``, then close."""
        self.send_error(messages.TOO_LONG, f"Request too long: the limit is {self.MAX_LENGTH} bytes.")
        self.close_after_output()

    def handle_request(self, request: dict[str, Any]) -> None:
        """Check a decoded request and dispatch it to ``request_<type>``.

        Every response sent while handling it carries its ``ref``.
        """
        ref = request.get("ref")
        if ref is not None and not _valid_ref(ref):
            self.send_error(
                messages.BAD_REQUEST,
                f"Bad request: 'ref' must be a string of up to {MAX_REF_LENGTH} characters or an integer.",
            )
            return
        self._ref = ref
        try:
            result = self._dispatch(request)
        except ChatError as failure:
            self.send_error(failure.code, failure.text)
            result = None
        if isinstance(result, Deferred):
            # The core answers with a Deferred: fired already on a single
            # node, later when clustered.  Until then this connection's
            # next requests wait, and the ref stays set for the answer.
            self._answering = True
            result.addErrback(self._async_failed).addBoth(self._async_done)
            return
        self._ref = None

    def _async_failed(self, failure: Failure) -> None:
        if failure.check(ChatError):
            self.send_error(failure.value.code, failure.value.text)
        elif failure.check(HistoryError):
            self._history_failed(failure.value)
        else:
            self.log.failure("request failed", failure)
            self.send_error(messages.SERVER_BUSY, "The server could not complete this request; try again.")

    def _history_failed(self, problem: Exception) -> None:
        """The history store could not answer: ``server_busy``, and the
        connection goes on (a login stays logged in)."""
        self.log.error("history unavailable for {peer}: {problem}", peer=_peer(self), problem=str(problem))
        self.send_error(messages.SERVER_BUSY, "History is unavailable right now; try again later.")

    def _async_done(self, _: object) -> None:
        self._answering = False
        self._ref = None
        self._process_events()  # nothing if this came at once, inside it

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
        content = request.get("content")
        expected = CONTENT_TYPES.get(kind)
        if expected is not None and not isinstance(content, expected):
            wanted = " or ".join(_TYPE_NAMES[t] for t in expected)
            raise ChatError(messages.BAD_REQUEST, f"Bad request: the content of '{kind}' must be {wanted}.")
        if self.name is None and kind not in PRE_LOGIN:
            raise ChatError(messages.NOT_LOGGED_IN, "You are not logged in. Log in first.")
        return handler(content)

    # -- requests --------------------------------------------------------

    def request_login(self, content: Any) -> Deferred[None]:
        """``login``: take a username, then send the room's recent history."""
        if self.name is not None:
            raise ChatError(messages.ALREADY_LOGGED_IN, f"You are already logged in as {self.name}.")
        return self.factory.hub.login(self, content).addCallback(self._logged_in)

    def _logged_in(self, name: str) -> Any:
        self.name = name
        if self.closing:
            # The connection went while the login was answered: free the
            # name as connectionLost would have.
            self.factory.hub.logout(self)
            self.name = None
            return None
        self._cancel_login_timer()
        self._start_idle_timer()
        self.log.info("{user} logged in from {peer}", user=self.name, peer=_peer(self))
        self.send_info(f"Login successful. You are now logged in as {self.name}")
        return self._send_login_history()

    def request_logout(self, content: Any) -> None:
        """``logout``: leave the registry and return to the logged-out state."""
        self.factory.hub.logout(self)
        self.log.info("{user} logged out", user=self.name)
        self.name = None
        self.send_info("Logout successful")
        self._cancel_idle_timer()
        self._start_login_timer()

    def request_msg(self, content: str) -> None:
        """``msg``: the hub stores the message, then sends it to everyone.

        Further requests wait until it is stored and sent, so their
        responses come after the echo (which carries the request's ref).
        """
        if not self.rate.available():
            if self.flood.reject():
                self.log.info("closing {peer} ({user}): flooding", peer=_peer(self), user=self.name)
                self.send_error(messages.RATE_LIMITED, "Flooding: you keep sending far too fast. Closing the connection.")
                self.close_after_output()
                return
            raise ChatError(messages.RATE_LIMITED, "Slow down: you are sending messages too fast.")
        draft = self.factory.hub.post(self, content)
        self.rate.take()
        ref = self._ref
        if draft.stored.called:  # refused at once: nothing to wait for
            draft.stored.addErrback(self._post_failed, ref)
            return
        if ref is not None:
            self._refs[draft] = ref
        self._batched += 1
        self._posts_pending += 1
        self._waiting_for_store = True
        draft.stored.addCallbacks(_ignore, self._post_failed, errbackArgs=(ref,))
        draft.stored.addBoth(self._post_settled, draft)

    def _post_failed(self, failure: Failure, ref: Any) -> None:
        """Our message could not be stored: tell the sender (with its ref)."""
        if not self._takes_fan_out():
            return
        self._ref = ref
        try:
            if failure.check(ChatError):
                self.send_error(failure.value.code, failure.value.text)
            else:
                self.send_error(messages.SERVER_BUSY, "Your message could not be stored; please send it again.")
        finally:
            self._ref = None

    def _post_settled(self, _: object, draft: Draft) -> None:
        self._refs.pop(draft, None)
        self._posts_pending -= 1
        if self._posts_pending == 0:
            self._store_done()

    def request_names(self, content: Any) -> Deferred[None]:
        """``names``: the logged-in users in login order."""
        return self.factory.hub.names().addCallback(lambda names: self.send_info(", ".join(names)))

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
        }
        content = {"protocol": PROTOCOL_VERSION, "server": f"chatd/{__version__}", "features": FEATURES, "limits": limits}
        self.send_response(messages.response("hello", content, self.factory.hub.now()))

    def request_ping(self, content: Any) -> None:
        """``ping`` (v2): ``pong`` echoing the content."""
        self.send_response(messages.response("pong", content, self.factory.hub.now()))

    def request_history(self, content: dict[str, Any] | None) -> Any:
        """``history`` (v2): a page before or after an id, oldest first, with ``more``."""
        query = content or {}
        room = query.get("room", DEFAULT_ROOM)
        if not isinstance(room, str):
            raise ChatError(messages.BAD_REQUEST, "Bad request: 'room' must be a string.")
        if room.lower() != DEFAULT_ROOM:
            raise ChatError(messages.NO_SUCH_ROOM, f"No such room: {_quote(room)}.")
        before, after = _id_field(query, "before"), _id_field(query, "after")
        if before is not None and after is not None:
            raise ChatError(messages.BAD_REQUEST, "Bad request: give 'before' or 'after', not both.")
        limit = _id_field(query, "limit")
        page = self.factory.hub.page(DEFAULT_ROOM, before, after, DEFAULT_PAGE if limit is None else limit)
        return page.addCallback(self._send_page)

    def _send_page(self, page: tuple[list[StoredMessage], bool]) -> None:
        found, more = page
        history = self._history_content(found)
        self.send_response(messages.response("history", history, self.factory.hub.now(), more=more))

    # -- output ----------------------------------------------------------

    def sendLine(self, line: bytes) -> None:  # type: ignore[override]
        """Send one encoded response in this connection's framing."""
        if self.output is None:
            self._use_framing(LINES)
        assert self.output is not None
        self.output.send(line)
        self._check_sendq()

    def send_response(self, response: dict[str, Any]) -> None:
        """Encode and send one response (with the request's ``ref``, if any)."""
        if self._ref is not None:
            response["ref"] = self._ref
        payload = messages.encode(response)
        if self._waiting_for_store:
            # Our earlier msg is not echoed yet: this waits for it, and so
            # does everything after it (_process_events stops).
            if self._held is None:
                self._held = []
            self._held.append(payload)
            return
        self.sendLine(payload)

    def send_error(self, code: str, text: str) -> None:
        """Send an ``error`` response with its ``code``."""
        self.factory.hub.metrics.errors.labels(code).inc()
        self.send_response(messages.error(code, text, self.factory.hub.now()))

    def send_info(self, text: str) -> None:
        """Send an ``info`` response."""
        self.send_response(messages.info(text, self.factory.hub.now()))

    def deliver(self, delivery: Delivery) -> None:
        """Fan-out from the hub: a stored batch, encoded once for everyone.

        Lines framing writes the batch's shared block in one write; only
        when the batch holds one of our own messages that carried a
        ``ref`` is that echo encoded again, with it.
        """
        output = self.output
        if output is None or not self._takes_fan_out():
            return
        if self._refs and delivery.posted_by(self):
            refs = self._refs
            payloads = delivery_payloads(delivery)
            for message, draft, payload in zip(delivery.messages, delivery.drafts, payloads):
                ref = refs.get(draft) if draft is not None else None
                if ref is None:
                    output.send(payload)
                else:
                    output.send(messages.encode(message_response(message, ref=ref)))
        elif output.name == LINES:
            output.send_block(delivery_lines(delivery))
        else:
            for payload in delivery_payloads(delivery):
                output.send(payload)
        self._check_sendq()

    def _takes_fan_out(self) -> bool:
        """Whether messages go out to this connection: until it closes,
        and while closing only the batch it waits for (its own echoes
        and whatever came before its last words)."""
        return self.output is not None and (not self.closing or self._waiting_for_store)

    def presence(self, user: str, status: str, room: str) -> None:
        """v2 only: who came or went (a v1 client never gets this type)."""
        if self.version < PROTOCOL_VERSION or self.output is None or self.closing:
            return
        content = {"user": user, "status": status, "room": room}
        saved, self._ref = self._ref, None  # unsolicited: no ref
        try:
            self.send_response(messages.response("presence", content, self.factory.hub.now()))
        finally:
            self._ref = saved

    def name_lost(self) -> None:
        """Our name went to a user on another node while this node was cut
        off from the cluster: tell the user, log out, close."""
        if self.closing:
            return
        self.send_error(
            messages.NAME_TAKEN, f"Your name {self.name} was taken on another server while this one was cut off."
        )
        self.close_after_output()

    def close_after_output(self) -> None:
        """Ignore further input, write what is queued, then close.

        Every close goes through here (or aborts at once): whatever the
        peer does, the socket is closed within :data:`CLOSE_GRACE`
        seconds, aborted if it has not taken its output by then.
        """
        if self._close_deadline is not None:
            return
        self.closing = True
        self._events.clear()
        self._queued_cost = 0.0
        self._cancel(self._resume_call)
        self._close_deadline = self.factory.clock.callLater(CLOSE_GRACE, self._abort)
        self._update_reading()
        if self._waiting_for_store:
            return  # _store_done closes once our echoes are written
        self._close_when_drained()

    def _close_when_drained(self) -> None:
        if self.output is None:
            self._lose_connection()
        else:
            self.output.when_drained(self._lose_connection)

    def _lose_connection(self) -> None:
        # A registered streaming producer keeps a TLS transport from ever
        # shutting down: it waits for the producer to finish.
        if self._producer_registered:
            self._producer_registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _abort(self) -> None:
        self._close_deadline = None
        self.log.info("aborting {peer}: not closed within {grace} s", peer=_peer(self), grace=CLOSE_GRACE)
        if self.output is not None:
            self.output.stop()
        self.transport.abortConnection()

    @staticmethod
    def _cancel(call: Any) -> None:
        if call is not None and call.active():
            call.cancel()

    def _send_login_history(self) -> Any:
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

    def _write(self, data: bytes) -> None:
        """Every byte to the client goes through here (for the send queue)."""
        self._transport_write(data)
        self.sendq.wrote(len(data))

    def unsent_bytes(self) -> int:
        """Output held by the server: the transport's buffer and the pacing queue."""
        queued = self.output.queued_bytes if self.output is not None else 0
        return self.sendq.unsent + queued

    def _check_sendq(self) -> None:
        limit = self.factory.config.max_sendq
        if limit and not self.closing and self.unsent_bytes() > limit:
            # A slow reader: drop it now rather than buffer without end;
            # nothing more can reach it anyway.
            self.log.info(
                "closing {peer} ({user}): over {limit} bytes of output unsent", peer=_peer(self), user=self.name, limit=limit
            )
            self.factory.hub.metrics.sendq_drops.inc()
            self.closing = True
            self._events.clear()
            if self.output is not None:
                self.output.stop()
            self.transport.abortConnection()

    def _use_framing(self, framing: str) -> None:
        if self.output is not None and self.output.name == framing:
            return
        write = self._write
        previous = self.output
        if framing == CLASSIC:
            config = self.factory.config
            self.output = ClassicOutput(write, self.factory.clock, config.pace)
        else:
            self.output = LinesOutput(write)
        if previous is not None:
            # Responses still waiting for their classic pace go first.
            for payload in previous.take_queue():
                self.output.send(payload)

    # -- login timeout -------------------------------------------------

    def _start_login_timer(self) -> None:
        self._cancel_login_timer()
        timeout = self.factory.config.login_timeout
        if timeout > 0:
            self._login_timer = self.factory.clock.callLater(timeout, self._login_timed_out)

    def _cancel_login_timer(self) -> None:
        self._cancel(self._login_timer)
        self._login_timer = None

    def shut_down(self) -> None:
        """The server is stopping: say so, then close once that is written."""
        if self.closing:
            return
        self._events.clear()
        self._held = None
        self._waiting_for_store = False
        self.send_info("Server shutting down")
        self.close_after_output()

    # -- idle timeout (logged-in users) --------------------------------

    _idle_timer: Any = None

    def _start_idle_timer(self) -> None:
        timeout = self.factory.config.idle_timeout
        if timeout > 0:
            self._idle_timer = self.factory.clock.callLater(timeout, self._idle_timed_out)

    def _cancel_idle_timer(self) -> None:
        self._cancel(self._idle_timer)
        self._idle_timer = None

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        timeout = self.factory.config.idle_timeout
        self.log.info("closing {peer} ({user}): idle for {timeout} s", peer=_peer(self), user=self.name, timeout=timeout)
        self.send_info(f"Idle for {timeout:g} seconds: closing the connection.")
        self.close_after_output()

    def _login_timed_out(self) -> None:
        self._login_timer = None
        self.log.info("closing {peer}: not logged in within the login timeout", peer=_peer(self))
        self.close_after_output()


_TYPE_NAMES = {str: "a string", dict: "an object", type(None): "null"}

#: Page size of a ``history`` request without ``limit``.
DEFAULT_PAGE = 100


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
    return 1.0


def _ignore(_: object) -> None:
    """A callback that keeps nothing."""


def _is_msg(event: Decoded) -> bool:
    return event.request is not None and event.request.get("request") == "msg"


def _valid_ref(ref: Any) -> bool:
    if isinstance(ref, str):
        return len(ref) <= MAX_REF_LENGTH
    return isinstance(ref, int) and not isinstance(ref, bool)


def _id_field(query: dict[str, Any], key: str) -> int | None:
    """An optional non-negative integer field of a ``history`` request."""
    value = query.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise ChatError(messages.BAD_REQUEST, f"Bad request: '{key}' must be a whole number from 0 to 2**63-1.")
    return value


def _quote(text: str) -> str:
    """A request type for an error sentence: quoted, bounded, printable."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    return json.dumps(shown)


def _peer(protocol: ChatProtocol) -> str:
    peer = protocol.transport.getPeer() if protocol.transport is not None else None
    host = getattr(peer, "host", None)
    return f"{host}:{getattr(peer, 'port', '')}" if host is not None else str(peer)

"""The session layer: one per connection, whatever the front-end.

A front-end (JSON over TCP/TLS, JSON over WebSocket, IRC later) owns its
wire format: it turns bytes into requests and renders responses.  What
every front-end shares lives here, in :class:`Session`, which the
front-end's connection class extends:

- **request ordering**: requests are queued with a cost and handled in
  order; while an answer is pending (a Deferred from the core) or our own
  messages wait to be stored, the next requests wait, so a client sees
  its responses in request order (messages in a burst still join one
  batch);
- **limits**: the request budget ("fakelag", :class:`RequestBudget`),
  at most :data:`MAX_REQUESTS_PER_TURN` requests per reactor turn,
  reading paused while requests are queued or output is not being read,
  input far ahead of the budget closed as a flood; the message rate and
  its flood meter; the send-queue limit (:class:`SendQueueMeter`, fed by
  the transport's producer API);
- **timers** (``policies.TimeoutMixin``): before login, a login timeout
  that activity does not extend; once logged in, an idle timeout that
  activity resets;
- **the close path**: a polite close once the output is written, then an
  abort after :data:`CLOSE_GRACE` seconds;
- what the core calls (:class:`~chatd.interfaces.ISession`):
  :meth:`Session.deliver`, :meth:`Session.presence`,
  :meth:`Session.name_lost`, the encoding delegated to the front-end.

The limit primitives themselves are in :mod:`chatd.core.limits`.  The
front-end provides the wire (:class:`Wire`, which a Twisted TCP or TLS
transport already is) and an output framing (:class:`OutputFraming`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer
from twisted.protocols.policies import TimeoutMixin

from chatd import messages
from chatd.core.limits import FloodMeter, RequestBudget, SendQueueMeter, TokenBucket
from chatd.core.rooms import Delivery, Draft
from chatd.interfaces import ISession
from chatd.messages import ChatError

if TYPE_CHECKING:
    from chatd.core.hub import Hub

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

#: Input costs budget too, whatever it decodes to: one unit per 4 KiB
#: received (garbage yields one ``bad_json`` per read, but decoding it is work).
COST_PER_BYTE = 1 / 4096

#: Twisted's FileDescriptor.bufferSize, for transports that do not say.
DEFAULT_BUFFER_SIZE = 64 * 1024


class Wire(Protocol):
    """What a session needs of its connection.

    The names are Twisted's (``ITCPTransport``, ``IProducer``,
    ``IConsumer``): a TCP or TLS transport is a wire as it is; a
    WebSocket front-end provides a small one
    (:class:`chatd.frontends.websocket.WebSocketWire`).
    """

    def pauseProducing(self) -> None:
        """Stop reading from the peer for a while."""

    def resumeProducing(self) -> None:
        """Read from the peer again."""

    def loseConnection(self) -> None:
        """Close once what is written has been sent."""

    def abortConnection(self) -> None:
        """Close at once, unsent output dropped."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Have ``producer`` paused while the send buffer is full (the send-queue meter)."""

    def unregisterProducer(self) -> None:
        """Forget the producer (a TLS transport waits for it before it closes)."""


class OutputFraming(Protocol):
    """How a front-end writes responses (``chatd.frontends.json.framing``'s
    lines and classic outputs, the WebSocket's text frames)."""

    name: str

    @property
    def queued_bytes(self) -> int:
        """Bytes held back (by pacing), not yet written."""

    def send(self, payload: bytes) -> None:
        """Write (or queue) one encoded response."""

    def when_drained(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything sent so far has been written."""

    def stop(self) -> None:
        """Drop anything queued (the connection is going)."""

    def take_queue(self) -> list[bytes]:
        """Hand over what is queued and stop (the framing changes)."""


class SessionSettings(Protocol):
    """The settings a session reads (``chatd.server.ServerConfig`` has them)."""

    @property
    def msg_rate(self) -> float:
        """Messages per second; 0: no limit."""

    @property
    def msg_burst(self) -> float:
        """Messages that may be sent at once."""

    @property
    def request_rate(self) -> float:
        """Budget units per second; 0: no budget."""

    @property
    def request_burst(self) -> float:
        """Budget units that may be spent at once."""

    @property
    def login_timeout(self) -> float:
        """Seconds to log in; 0: off."""

    @property
    def idle_timeout(self) -> float:
        """Seconds a logged-in session may send nothing; 0: off."""

    @property
    def max_sendq(self) -> int:
        """Bytes of unsent output before the connection is dropped; 0: no limit."""


RequestT = TypeVar("RequestT")


class _Timer(TimeoutMixin):
    """``policies.TimeoutMixin`` on a given clock, with typed calls.

    One timer serves both timeouts: they never run at once (login
    before login, idle after it).
    """

    def __init__(self, clock: IReactorTime, expired: Callable[[], None]) -> None:
        self._clock = clock
        self._expired = expired

    def callLater(self, period: float, func: Callable[[], None]) -> IDelayedCall:
        """Timers run on the session's clock, not the global reactor."""
        return self._clock.callLater(period, func)

    def start(self, seconds: float) -> None:
        """(Re)start the timer for ``seconds`` from now; 0 turns it off."""
        self.setTimeout(seconds if seconds > 0 else None)  # type: ignore[no-untyped-call]  # twisted.protocols.policies is not annotated

    def stop(self) -> None:
        """No timeout any more."""
        self.setTimeout(None)  # type: ignore[no-untyped-call]  # twisted.protocols.policies is not annotated

    def activity(self) -> None:
        """Something arrived: start the period again."""
        self.resetTimeout()  # type: ignore[no-untyped-call]  # twisted.protocols.policies is not annotated

    def timeoutConnection(self) -> None:
        """The period passed with no activity."""
        self._expired()


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


@implementer(ISession)
class Session(Generic[RequestT]):
    """One connection's session state, limits, ordering, timers and close.

    A front-end's connection class extends it, calls
    :meth:`start_session` once connected, :meth:`received` and
    :meth:`requests_arrived` as input comes, :meth:`end_session` when
    the connection is lost, and implements the rendering and handling
    hooks (:meth:`handle`, :meth:`joins_batch`, :meth:`write_payload`,
    :meth:`write_delivery`, :meth:`write_presence`, :meth:`send_error`,
    :meth:`send_info`).  ``RequestT`` is whatever the front-end queues
    for one request.
    """

    log = Logger()

    name: str | None = None
    version = 1  # the protocol version spoken (ISession): 2 once a JSON client sent hello
    output: OutputFraming | None = None
    closing = False
    peer_address: IAddress | None = None
    # Ordering while our messages wait in the hub's batch (see
    # _process_events): _waiting_for_store is set while one does; _held
    # keeps direct responses made meanwhile, to be sent after the echoes.
    _waiting_for_store = False
    _held: list[bytes] | None = None
    _batched = 0  # our messages in the pending batch
    _answering = False  # a request is being answered later (a Deferred not fired yet)
    _reading_paused = False
    _queued_cost = 0.0  # budget units of the requests in _events
    _resume_call: IDelayedCall | None = None  # handles the queued requests later (budget, turn)
    _turn_handled = 0  # requests handled in this reactor turn
    _turn_end: IDelayedCall | None = None  # starts the count again next turn
    _close_deadline: IDelayedCall | None = None  # aborts a closing connection that will not close
    _producer_registered = False
    _processing = False  # inside _process_events
    _posts_pending = 0  # our messages not yet stored and delivered

    def start_session(self, hub: Hub, clock: IReactorTime, settings: SessionSettings, wire: Wire, buffer_size: int) -> None:
        """The connection is up: set the limits, watch the output, start the login timeout.

        ``buffer_size``: the transport's send buffer size (where its
        producer API pauses), for the send-queue meter.
        """
        self.hub = hub
        self.clock = clock
        self.settings = settings
        self.wire = wire
        self._events: deque[tuple[RequestT, float]] = deque()
        self.rate = TokenBucket(clock, settings.msg_rate, settings.msg_burst)
        # join, part, a topic that sets (and moderation): a bucket of their
        # own, as large and as fast as the message bucket (a churn guard).
        self.churn = TokenBucket(clock, settings.msg_rate, settings.msg_burst)
        # Rejections are forgiven at the allowed rate: sending at several
        # times the rate fills this within seconds, and then we hang up.
        self.flood = FloodMeter(clock, settings.msg_rate, 2 * settings.msg_burst)
        self.budget = RequestBudget(clock, settings.request_rate, settings.request_burst)
        self.sendq = SendQueueMeter(buffer_size, self._output_drained)
        wire.registerProducer(self.sendq, True)
        self._producer_registered = True
        self._timer = _Timer(clock, self._timed_out)
        self._timer.start(settings.login_timeout)

    def end_session(self) -> None:
        """The connection is gone: stop every timer, log out."""
        self._timer.stop()
        _cancel(self._resume_call)
        _cancel(self._close_deadline)
        _cancel(self._turn_end)
        self._resume_call = self._close_deadline = self._turn_end = None
        self._events.clear()
        if self.output is not None:
            self.output.stop()
        if self.name is not None:
            self.hub.logout(self)
            self.log.info("{user} left (connection lost)", user=self.name)
            self.name = None
        self.closing = True

    @property
    def peer(self) -> str:
        """The peer's address, for the logs."""
        address = self.peer_address
        host = getattr(address, "host", None)
        return f"{host}:{getattr(address, 'port', '')}" if host is not None else str(address)

    # -- what the front-end implements ------------------------------------

    def handle(self, request: RequestT) -> Deferred[Any] | None:
        """Handle one request; a Deferred if the answer comes later (the
        next requests wait for it)."""
        raise NotImplementedError

    def joins_batch(self, request: RequestT) -> bool:
        """Whether ``request`` posts a message (it may join the pending batch)."""
        raise NotImplementedError

    def write_payload(self, payload: bytes) -> None:
        """Write one encoded response now."""
        raise NotImplementedError

    def write_delivery(self, delivery: Delivery) -> None:
        """Write a stored batch (encoded once per framing for every member)."""
        raise NotImplementedError

    def write_presence(self, user: str, status: str, room: str) -> None:
        """Tell the client (if its protocol knows presence) who came or went."""
        raise NotImplementedError

    def write_event(self, kind: str, content: dict[str, object]) -> None:
        """Tell the client (if its protocol knows it) of a room event."""
        raise NotImplementedError

    def send_error(self, code: str, text: str) -> None:
        """Send an error with ``code``."""
        raise NotImplementedError

    def send_info(self, text: str) -> None:
        """Send an information text."""
        raise NotImplementedError

    # -- input ---------------------------------------------------------

    def received(self, size: int) -> None:
        """``size`` bytes arrived: activity (the idle timeout starts again),
        and input costs budget."""
        if self.name is not None:
            self._timer.activity()  # the login timeout is not extended
        self.budget.charge(size * COST_PER_BYTE)

    def requests_arrived(self, requests: Iterable[tuple[RequestT, float]]) -> None:
        """Queue ``(request, cost)`` pairs and handle what may be handled now."""
        for request, cost in requests:
            self._events.append((request, cost))
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
        if self._resume_call_pending():
            return  # this turn's share is spent, or the budget in debt: it goes on then
        while self._events and self._may_handle():
            request, cost = self._events[0]
            if self._waiting_for_store and (not self.joins_batch(request) or self._batched >= MAX_BATCH_PER_CONNECTION):
                break
            wait = self.budget.wait()
            if wait > 0 or self._turn_handled >= MAX_REQUESTS_PER_TURN:
                self._process_later(wait)
                break
            self._events.popleft()
            self._queued_cost -= cost
            self.budget.charge(cost)
            self._count_in_turn()
            self._handle(request)

    def _count_in_turn(self) -> None:
        """Count a request against this reactor turn's share.

        Counted on the session, not per call: a WebSocket hands over each
        frame as a read of its own, many in one turn.
        """
        if self._turn_handled == 0:
            self._turn_end = self.clock.callLater(0, self._next_turn)
        self._turn_handled += 1

    def _next_turn(self) -> None:
        _cancel(self._turn_end)
        self._turn_end = None
        self._turn_handled = 0

    def _handle(self, request: RequestT) -> None:
        answer = self.handle(request)
        if answer is not None:
            # Answered later (at once on a single node, when clustered
            # perhaps not): until then the next requests wait.
            self._answering = True
            answer.addBoth(self._answered)

    def _answered(self, _: object) -> None:
        self._answering = False
        self._process_events()  # nothing if this came at once, inside it

    def _may_handle(self) -> bool:
        return not self.closing and self._held is None and not self._answering and not self.sendq.backlogged

    def _resume_call_pending(self) -> bool:
        return self._resume_call is not None and self._resume_call.active()

    def _process_later(self, delay: float) -> None:
        if not self._resume_call_pending():
            self._resume_call = self.clock.callLater(delay, self._process_events)

    def _update_reading(self) -> None:
        """Read from the client only while its requests can be handled.

        Queued requests (over the budget, or past this turn's share) and
        output the client is not reading both stop the reading, so one
        connection's flood is spread over time instead of stalling the
        reactor or filling memory.  A closing connection reads again: its
        peer's close must be seen.
        """
        pause = not self.closing and (bool(self._events) or self.sendq.backlogged or self._resume_call_pending())
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            self.wire.pauseProducing()
        else:
            self.wire.resumeProducing()

    def _output_drained(self) -> None:
        """The transport sent its buffer: requests may be handled again."""
        if not self.closing:
            self._process_events()

    def _flooded(self) -> None:
        if self.closing:
            return
        self.log.info("closing {peer} ({user}): flooding requests", peer=self.peer, user=self.name)
        self._events.clear()
        self._queued_cost = 0.0
        self.send_error(messages.RATE_LIMITED, "Flooding: you keep sending far too fast. Closing the connection.")
        self.close_after_output()

    # -- login state -----------------------------------------------------

    def logged_in(self, name: str) -> bool:
        """The core accepted ``name``: the idle timeout replaces the login
        timeout.  False if the connection went meanwhile (then the name is
        freed again)."""
        self.name = name
        if self.closing:
            # The connection went while the login was answered: free the
            # name as end_session would have.
            self.hub.logout(self)
            self.name = None
            return False
        self._timer.start(self.settings.idle_timeout)
        self.log.info("{user} logged in from {peer}", user=self.name, peer=self.peer)
        return True

    def logged_out(self) -> None:
        """Leave the core; the login timeout runs again."""
        self.hub.logout(self)
        self.log.info("{user} logged out", user=self.name)
        self.name = None
        self._timer.start(self.settings.login_timeout)

    def _timed_out(self) -> None:
        if self.name is None:
            self.log.info("closing {peer}: not logged in within the login timeout", peer=self.peer)
        else:
            timeout = self.settings.idle_timeout
            self.log.info("closing {peer} ({user}): idle for {timeout} s", peer=self.peer, user=self.name, timeout=timeout)
            self.send_info(f"Idle for {timeout:g} seconds: closing the connection.")
        self.close_after_output()

    # -- messages --------------------------------------------------------

    def post(self, text: str, room: str | None = None, to: str | None = None, notice: bool = False) -> Draft | None:
        """Post ``text`` within the message rate: the draft, or None if the
        session is closed for flooding.  Raises ``ChatError``
        (``rate_limited``, or the core's refusal of the text).

        Unless the draft is settled already (refused at once), the
        front-end calls :meth:`wait_for_store`; :meth:`draft_done` tells it
        how the draft ended.
        """
        if not self.rate.available():
            if self.flood.reject():
                self.log.info("closing {peer} ({user}): flooding", peer=self.peer, user=self.name)
                self.send_error(messages.RATE_LIMITED, "Flooding: you keep sending far too fast. Closing the connection.")
                self.close_after_output()
                return None
            raise ChatError(messages.RATE_LIMITED, "Slow down: you are sending messages too fast.")
        if notice:
            draft = self.hub.post(self, text, room=room, to=to, notice=True)  # an IRC NOTICE
        else:
            draft = self.hub.post(self, text, room=room, to=to)
        self.rate.take()
        return draft

    def wait_for_store(self, draft: Draft) -> None:
        """Further requests wait until ``draft`` is stored and delivered
        (or failed), so their responses come after its echo; messages
        meanwhile join its batch."""
        self._batched += 1
        self._posts_pending += 1
        self._waiting_for_store = True
        draft.awaited = True

    def draft_settled(self, draft: Draft) -> None:
        """The bus is done with a draft we posted (``ISession``)."""
        if not draft.awaited:
            return  # refused at once: the front-end answers it where it posted
        self.draft_done(draft)
        self._posts_pending -= 1
        if self._posts_pending == 0:
            self._store_done()

    def draft_done(self, draft: Draft) -> None:
        """A draft we waited for was stored (``draft.result`` the message)
        or not (a Failure): the front-end's answer, if any."""

    def _store_done(self) -> None:
        self._waiting_for_store = False
        self._batched = 0
        # Stored in a later turn than the posts were handled in: this
        # turn's share starts now (whatever order the turn's calls run in;
        # waiting for _next_turn here halved the batches of a burst).
        self._next_turn()
        held, self._held = self._held, None
        for payload in held or ():
            self.write_payload(payload)
        if self.closing:
            self._close_when_drained()
            return
        self._process_events()

    def send_payload(self, payload: bytes) -> None:
        """Send one encoded direct response, in request order: while our
        earlier message is not echoed yet, it waits for the echo (and so
        does everything after it)."""
        if self._waiting_for_store:
            if self._held is None:
                self._held = []
            self._held.append(payload)
            return
        self.write_payload(payload)

    # -- from the core (ISession) ------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """Fan-out from the core: a stored batch, rendered by the front-end."""
        if self.output is None or not self.takes_fan_out():
            return
        self.write_delivery(delivery)
        self.check_sendq()

    def takes_fan_out(self) -> bool:
        """Whether messages go out to this connection: until it closes,
        and while closing only the batch it waits for (its own echoes
        and whatever came before its last words)."""
        return self.output is not None and (not self.closing or self._waiting_for_store)

    def presence(self, user: str, status: str, room: str) -> None:
        """``user`` came or went in ``room`` (nothing once closing)."""
        if self.output is None or self.closing:
            return
        self.write_presence(user, status, room)

    def notify(self, kind: str, content: dict[str, object]) -> None:
        """A room event (``topic``, ...) for the client (nothing once closing)."""
        if self.output is None or self.closing:
            return
        self.write_event(kind, content)

    def churn_check(self) -> None:
        """``rate_limited`` when the join/part/topic bucket is empty (the
        token is taken by :meth:`churn_taken`, once the request succeeded)."""
        if not self.churn.available():
            raise ChatError(messages.RATE_LIMITED, "Slow down: you are joining, leaving or changing rooms too fast.")

    def churn_taken(self) -> None:
        """A join, part or topic change succeeded: it takes its token."""
        self.churn.take()

    def name_lost(self) -> None:
        """Our name went to a user on another node while this node was cut
        off from the cluster: tell the user, log out, close."""
        if self.closing:
            return
        self.send_error(
            messages.NAME_TAKEN, f"Your name {self.name} was taken on another server while this one was cut off."
        )
        self.close_after_output()

    # -- output limits -----------------------------------------------------

    def unsent_bytes(self) -> int:
        """Output held by the server: the transport's buffer and the pacing queue."""
        queued = self.output.queued_bytes if self.output is not None else 0
        return self.sendq.unsent + queued

    def check_sendq(self) -> None:
        """Drop a connection holding more than ``max_sendq`` bytes unsent."""
        limit = self.settings.max_sendq
        if limit and not self.closing and self.unsent_bytes() > limit:
            # A slow reader: drop it now rather than buffer without end;
            # nothing more can reach it anyway.
            self.log.info(
                "closing {peer} ({user}): over {limit} bytes of output unsent", peer=self.peer, user=self.name, limit=limit
            )
            self.hub.metrics.sendq_drops.inc()
            self.closing = True
            self._events.clear()
            if self.output is not None:
                self.output.stop()
            self.wire.abortConnection()

    # -- closing -------------------------------------------------------

    def close_after_output(self) -> None:
        """Ignore further input, write what is queued, then close.

        Every close goes through here (or aborts at once): whatever the
        peer does, the socket is closed within :data:`CLOSE_GRACE`
        seconds, aborted if it has not taken its output by then.
        """
        if self._close_deadline is not None:
            return
        self.closing = True
        self._timer.stop()  # no login or idle notice inside the close grace
        self._events.clear()
        self._queued_cost = 0.0
        _cancel(self._resume_call)
        self._close_deadline = self.clock.callLater(CLOSE_GRACE, self._abort)
        self._update_reading()
        if self._waiting_for_store:
            return  # _store_done closes once our echoes are written
        self._close_when_drained()

    def shut_down(self) -> None:
        """The server is stopping: say so, then close once that is written."""
        if self.closing:
            return
        self._events.clear()
        self._held = None
        self._waiting_for_store = False
        self.send_info("Server shutting down")
        self.close_after_output()

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
            self.wire.unregisterProducer()
        self.wire.loseConnection()

    def _abort(self) -> None:
        self._close_deadline = None
        self.log.info("aborting {peer}: not closed within {grace} s", peer=self.peer, grace=CLOSE_GRACE)
        if self.output is not None:
            self.output.stop()
        self.wire.abortConnection()


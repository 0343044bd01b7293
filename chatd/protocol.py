"""One :class:`ChatProtocol` per connection: requests in, responses out.

Bytes go through the :class:`~chatd.framing.StreamDecoder`; each request
is dispatched to a ``request_<type>`` method, which calls the hub.  The
protocol knows nothing about other connections: the hub calls
:meth:`ChatProtocol.deliver` for fan-out.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from chatd import messages
from chatd.framing import CLASSIC, LINES, ClassicOutput, Decoded, LinesOutput, StreamDecoder
from chatd.history import StoredMessage
from chatd.messages import ChatError

if TYPE_CHECKING:
    from chatd.server import ChatFactory

#: Classic clients read 4096 bytes per response (``sock.recv(4096)``).
CLASSIC_READ_SIZE = 4096

#: Requests a connection may make before it logs in.
PRE_LOGIN = frozenset({"login", "help"})

#: The content type a request must carry, where it is not ignored.
#: ``login`` checks its own content (``invalid_username``).
CONTENT_TYPES: dict[str, type] = {"msg": str}


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
    _login_timer: Any = None

    def connectionMade(self) -> None:
        config = self.factory.config
        self.MAX_LENGTH = config.max_request
        self.decoder = StreamDecoder(config.max_request)
        if config.framing != "auto":
            self._use_framing(config.framing)
        self._start_login_timer()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_login_timer()
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
        for event in self.decoder.feed(data):
            if self.output is None:
                self._use_framing(LINES if event.newline_follows else CLASSIC)
            self._handle_event(event)
            if self.closing:
                return

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
        """Check a decoded request and dispatch it to ``request_<type>``."""
        kind = request.get("request")
        if not isinstance(kind, str):
            self.send_error(messages.BAD_REQUEST, "Bad request: the 'request' key must be a string.")
            return
        # Like twisted.words' irc_<COMMAND>: the prefix keeps any string
        # from reaching attributes other than request handlers.
        handler = getattr(self, "request_" + kind, None)
        if handler is None:
            self.send_error(
                messages.UNKNOWN_REQUEST,
                f"Unknown request {_quote(kind)}. Send {{\"request\": \"help\"}} for the list.",
            )
            return
        content = request.get("content")
        expected = CONTENT_TYPES.get(kind)
        if expected is not None and not isinstance(content, expected):
            self.send_error(messages.BAD_REQUEST, f"Bad request: the content of '{kind}' must be a string.")
            return
        if self.name is None and kind not in PRE_LOGIN:
            self.send_error(messages.NOT_LOGGED_IN, "You are not logged in. Log in first.")
            return
        try:
            handler(content)
        except ChatError as failure:
            self.send_error(failure.code, failure.text)

    # -- requests --------------------------------------------------------

    def request_login(self, content: Any) -> None:
        """``login``: take a username, then send the room's recent history."""
        hub = self.factory.hub
        if self.name is not None:
            raise ChatError(messages.ALREADY_LOGGED_IN, f"You are already logged in as {self.name}.")
        self.name = hub.login(self, content)
        self._cancel_login_timer()
        self.log.info("{user} logged in from {peer}", user=self.name, peer=_peer(self))
        self.send_info(f"Login successful. You are now logged in as {self.name}")
        self._send_login_history()

    def request_logout(self, content: Any) -> None:
        """``logout``: leave the registry and return to the logged-out state."""
        self.factory.hub.logout(self)
        self.log.info("{user} logged out", user=self.name)
        self.name = None
        self.send_info("Logout successful")
        self._start_login_timer()

    def request_msg(self, content: str) -> None:
        """``msg``: the hub stores the message, then sends it to everyone."""
        self.factory.hub.post(self, content)

    def request_names(self, content: Any) -> None:
        """``names``: the logged-in users in login order."""
        self.send_info(", ".join(self.factory.hub.names()))

    def request_help(self, content: Any) -> None:
        """``help``: every request and its content."""
        self.send_info(messages.HELP_TEXT)

    # -- output ----------------------------------------------------------

    def sendLine(self, line: bytes) -> None:  # type: ignore[override]
        """Send one encoded response in this connection's framing."""
        if self.output is None:
            self._use_framing(LINES)
        assert self.output is not None
        self.output.send(line)

    def send_response(self, response: dict[str, Any]) -> None:
        """Encode and send one response."""
        self.sendLine(messages.encode(response))

    def send_error(self, code: str, text: str) -> None:
        """Send an ``error`` response with its ``code``."""
        self.send_response(messages.error(code, text, self.factory.hub.now()))

    def send_info(self, text: str) -> None:
        """Send an ``info`` response."""
        self.send_response(messages.info(text, self.factory.hub.now()))

    def deliver(self, message: StoredMessage) -> None:
        """Fan-out from the hub: the pre-encoded message, as is."""
        if self.output is None or self.closing:
            return
        self.output.send(message.payload, message.line)

    def close_after_output(self) -> None:
        """Stop reading, write what is queued, then close."""
        self.closing = True
        if self.output is None:
            self.transport.loseConnection()
        else:
            self.output.when_drained(self.transport.loseConnection)

    def _send_login_history(self) -> None:
        config = self.factory.config
        hub = self.factory.hub
        payloads = [message.payload for message in hub.recent(config.history_on_login)]
        timestamp = hub.now()
        if self.output is not None and self.output.name == CLASSIC:
            content = trimmed_history(payloads, timestamp, CLASSIC_READ_SIZE)
        else:
            content = [payload.decode("ascii") for payload in payloads]
        self.send_response(messages.response("history", content, timestamp))

    def _use_framing(self, framing: str) -> None:
        write = self.transport.write
        if framing == CLASSIC:
            config = self.factory.config
            self.output = ClassicOutput(write, self.factory.clock, config.pace)
        else:
            self.output = LinesOutput(write)

    # -- login timeout -------------------------------------------------

    def _start_login_timer(self) -> None:
        self._cancel_login_timer()
        timeout = self.factory.config.login_timeout
        if timeout > 0:
            self._login_timer = self.factory.clock.callLater(timeout, self._login_timed_out)

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        self.log.info("closing {peer}: not logged in within the login timeout", peer=_peer(self))
        self.closing = True
        self.transport.loseConnection()


def _quote(text: str) -> str:
    """A request type for an error sentence: quoted, bounded, printable."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    return json.dumps(shown)


def _peer(protocol: ChatProtocol) -> str:
    peer = protocol.transport.getPeer() if protocol.transport is not None else None
    host = getattr(peer, "host", None)
    return f"{host}:{getattr(peer, 'port', '')}" if host is not None else str(peer)

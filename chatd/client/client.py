"""``chatd-client``: the terminal client.

The reactor does both directions: :class:`ChatClientProtocol` (lines
split by :class:`LineSplitter`, in linear time and bounded) talks to the
server, :class:`UserInput` reads what the
user types through ``twisted.internet.stdio``, and :class:`ChatSession`
ties them together: it sends requests, prints responses through the
:class:`~chatd.client.parser.MessageParser`, reconnects with backoff after a
lost connection and logs in again under the same name, skipping messages
it has already shown.  Whatever a server sends, the client never raises:
malformed responses are shown as error lines, and resuming after a
reconnect is bounded.

Run as ``chatd-client`` or ``python -m chatd.client.client``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterator, TextIO, cast

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure

from chatd import __version__
from chatd.client.parser import COMMANDS, ERROR, INFO, MESSAGE, NOTICE, Command, Line, MessageParser, encode_request, parse_input

#: Seconds to wait for replies after standard input ends (v1 servers;
#: with v2 a ping tells exactly when every reply is in).
DRAIN_QUIET = 1.0
#: ... but never longer than this in all.
DRAIN_MAX = 5.0

#: ``ref`` values of the client's own bookkeeping requests.
RESUME_REF = "chatd-client:resume"
DRAIN_REF = "chatd-client:drain"

#: Largest response line read, in bytes.  The largest a chatd server with
#: default limits sends is a v2 history page: 500 messages of 2000 code
#: points, where the server's ASCII JSON writes an astral character (an
#: emoji) as a surrogate pair, ``\ud83d\ude00``, 12 bytes: 500 x (24 000
#: + about 150 bytes of other fields) = 12.08 MB.  A v1 login history of
#: 500 (JSON strings of JSON: 14 bytes a character) would be 14.09 MB.
#: 16 MiB is above both, and bounds the memory a hostile server can make
#: the client hold.  (A server with a larger --max-message, or with
#: --history-on-login all and a large history, can exceed it: the client
#: then says so and drops the connection.)
MAX_RESPONSE = 16 * 1024 * 1024

#: Resuming after a reconnect (v2 ``history after`` pages of 500) stops
#: after this many pages (10 000 messages) ...
MAX_RESUME_PAGES = 20
#: ... or once this many live messages wait for it to end ...
MAX_RESUME_BUFFER = 1000
#: ... or this many bytes of them.  The client then says the history is
#: incomplete and shows the live messages held, in order.
MAX_RESUME_BUFFER_BYTES = MAX_RESPONSE

_COLOURS = {MESSAGE: "", INFO: "\x1b[36m", ERROR: "\x1b[31m", NOTICE: "\x1b[33m"}
_PREFIX = {MESSAGE: "", INFO: "* ", ERROR: "! ", NOTICE: "- "}


class Printer:
    """Writes :class:`Line` objects to a text stream, coloured on a terminal."""

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream = stream
        self.colour = colour

    @classmethod
    def for_stdout(cls) -> Printer:
        """Colour only when stdout is a terminal and ``NO_COLOR`` is unset."""
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        return cls(sys.stdout, colour)

    def show(self, line: Line) -> None:
        """Print one line (its text is already terminal-safe)."""
        text = _PREFIX[line.kind] + line.text
        if self.colour and _COLOURS[line.kind]:
            text = f"{_COLOURS[line.kind]}{text}\x1b[0m"
        self._write(text)

    def raw(self, data: bytes) -> None:
        """Print a response as received (``--raw``), made terminal-safe."""
        from chatd.client.parser import safe

        self._write(safe(data.decode("utf-8", "replace")))

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
        except UnicodeEncodeError:
            # A terminal whose encoding lacks a character (Latin-1 and an
            # emoji): show its escape rather than raise.
            encoding = getattr(self.stream, "encoding", None) or "ascii"
            self.stream.write((text + "\n").encode(encoding, "backslashreplace").decode(encoding))
        self.stream.flush()


class LineTooLong(Exception):
    """A line from the server grew past the limit; ``length`` bytes so far."""

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


class LineSplitter:
    """Splits a byte stream into lines in time linear in its length.

    Twisted's ``LineReceiver`` appends each chunk to a ``bytes`` buffer
    (a copy of the whole buffer) and splits the whole buffer again, so a
    long line arriving in 64 KB chunks costs time quadratic in its length,
    and so does a chunk holding many short lines.  Here every byte is
    searched for the delimiter once (``scanned`` counts the bytes
    searched) and copied a bounded number of times: the pieces of an
    unfinished line are kept in a list and joined once, when it ends.
    """

    delimiter = b"\n"

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.scanned = 0
        self._parts: list[bytes] = []
        self._pending = 0  # bytes in _parts

    @property
    def pending(self) -> int:
        """Bytes held of a line not yet ended."""
        return self._pending

    def split(self, data: bytes) -> Iterator[bytes]:
        """The lines ``data`` completes, in order, without their delimiter.

        Raises :class:`LineTooLong` (and forgets the line) at a line
        longer than ``max_length``, even before it ends.  Stopping the
        iteration early drops the rest of ``data``.
        """
        start = 0
        while True:
            end = data.find(self.delimiter, start)
            self.scanned += (len(data) if end < 0 else end + 1) - start
            if end < 0:
                break
            line = self._complete(data[start:end])
            start = end + 1
            yield line
        self._keep(data[start:])

    def _complete(self, piece: bytes) -> bytes:
        if self._parts:
            self._parts.append(piece)
            piece = b"".join(self._parts)
            self._parts, self._pending = [], 0
        if len(piece) > self.max_length:
            raise LineTooLong(len(piece))
        return piece

    def _keep(self, rest: bytes) -> None:
        if not rest:
            return
        self._pending += len(rest)
        if self._pending > self.max_length:
            length = self._pending
            self._parts, self._pending = [], 0
            raise LineTooLong(length)
        self._parts.append(rest)


class ChatClientProtocol(Protocol):
    """The connection to the server: requests out, one response per line in."""

    MAX_LENGTH = MAX_RESPONSE

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.lines = LineSplitter(self.MAX_LENGTH)
        self._refused = False  # a line was too long: ignore the rest

    def connectionMade(self) -> None:
        self.session.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        try:
            for line in self.lines.split(data):
                self.lineReceived(line)
                if getattr(self.transport, "disconnecting", False):
                    return  # e.g. /quit: nothing more is read
        except LineTooLong as too_long:
            self._refused = True
            self.lineLengthExceeded(too_long.length)

    def lineReceived(self, line: bytes) -> None:
        """One line from the server (blank lines are ignored)."""
        line = line.rstrip(b"\r")
        if line:
            self.session.line_received(line)

    def lineLengthExceeded(self, length: int) -> None:
        """A response over ``MAX_LENGTH``: say so, drop the connection.

        The usual reconnect logic follows; the line's memory is already
        freed.  Aborted, not closed politely: a TLS close would wait for
        the server's answer while it may go on sending.
        """
        limit = self.MAX_LENGTH // (1024 * 1024)
        self.session.printer.show(Line(ERROR, f"the server sent a response too large to read (over {limit} MiB); disconnecting"))
        cast(ITCPTransport, self.transport).abortConnection()  # TCP or TLS: both can abort

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.session.disconnected(self, reason)

    def send_request(self, request: str, content: Any = None, **extra: Any) -> None:
        """Send one request."""
        assert self.transport is not None  # only sent while connected
        self.transport.write(encode_request(request, content, **extra))


class ChatSession:
    """The client's state: name, connection, reconnects, what was shown.

    ``connect`` opens a new connection and returns a Deferred that fires
    once it is made (with the protocol) or fails.  ``done`` fires with the
    exit status.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[ChatSession], defer.Deferred[Any]],
        printer: Printer,
        name: str | None = None,
        raw: bool = False,
        max_retries: int = 8,
        max_delay: float = 30.0,
        describe: str = "the server",
    ) -> None:
        self.clock = clock
        self._connect = connect
        self.printer = printer
        self.name = name
        self.raw = raw
        self.max_retries = max_retries
        self.max_delay = max_delay
        self.describe = describe
        self.parser = MessageParser()
        self.protocol: ChatClientProtocol | None = None
        self.done: defer.Deferred[int] = defer.Deferred()
        self.last_id = 0  # newest message id shown: anything older is a repeat
        self._pending_name: str | None = None
        self._ever_connected = False
        self._retries = 0
        self._quitting = False
        self._awaiting_logout = False
        self._input_ended = False
        self._drain_timer: IDelayedCall | None = None
        self._drain_deadline: IDelayedCall | None = None
        self._queued: list[tuple[str, Any]] = []
        self.v2 = False
        self._awaiting_hello = False
        self._resuming = False
        self._resume_pages = 0  # pages asked for in this resume
        self._resume_buffer: list[dict[str, Any]] = []  # live messages held meanwhile
        self._resume_bytes = 0  # their size as received

    # -- connection ----------------------------------------------------

    def start(self) -> defer.Deferred[int]:
        """Connect; ``done`` fires with the exit status."""
        self._attempt()
        return self.done

    def _attempt(self) -> None:
        attempt = self._connect(self)
        attempt.addErrback(self._connect_failed)

    def _connect_failed(self, reason: Failure) -> None:
        if not self._ever_connected:
            self.show(ERROR, f"cannot connect to {self.describe}: {_reason_text(reason)}")
            self._finish(1)
            return
        self._schedule_reconnect()

    def connected(self, protocol: ChatClientProtocol) -> None:
        """A connection is made: offer v2, log in (again) if we have a name."""
        self.protocol = protocol
        if self._ever_connected:
            self.show(NOTICE, f"reconnected to {self.describe}")
        self._ever_connected = True
        self._retries = 0
        # The first response answers hello: "hello" from a v2 server, an
        # error from a v1 one (responses come in request order).
        self.v2 = False
        self._awaiting_hello = True
        self._reset_resume()
        protocol.send_request("hello", {"protocol": 2, "client": f"chatd-client/{__version__}"})
        if self.name is not None:
            self._send("login", self.name)
        for request, content in self._queued:
            self._send(request, content)
        self._queued.clear()
        if self._quitting:
            self.quit()
        elif self._input_ended:
            self._start_draining()

    def disconnected(self, protocol: ChatClientProtocol, reason: Failure) -> None:
        """The connection is gone: finish, or reconnect with backoff."""
        if protocol is not self.protocol:
            return
        self.protocol = None
        if _is_tls_failure(reason):
            # Never retried: a wrong or untrusted certificate stays wrong.
            self.show(ERROR, f"TLS failed with {self.describe}: {_reason_text(reason)}")
            self._finish(1)
            return
        if self._quitting or self._input_ended:
            self._finish(0)
            return
        if self.name is None:
            self.show(ERROR, "connection to the server lost")
            self._finish(1)
            return
        self.show(ERROR, "connection to the server lost")
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._retries >= self.max_retries:
            self.show(ERROR, f"giving up after {self._retries} attempts to reconnect")
            self._finish(1)
            return
        delay = min(self.max_delay, 2.0**self._retries)
        self._retries += 1
        self.show(NOTICE, f"reconnecting in {delay:g} s (attempt {self._retries} of {self.max_retries})")
        self.clock.callLater(delay, self._attempt)

    # -- server responses ----------------------------------------------

    def line_received(self, line: bytes) -> None:
        """One response from the server.

        Never raises, whatever the server sent: an exception here would
        drop the connection, and after the reconnect the server could send
        the same response again, for ever.  Malformed responses become
        error lines.
        """
        if self.raw:
            self.printer.raw(line)
        try:
            lines = self._lines_for(line)
        except Exception as problem:  # the last resort; known cases are handled below it
            lines = [Line(ERROR, f"cannot show a response from the server ({type(problem).__name__})")]
        self._print(lines)
        self._restart_drain_timer()

    def _lines_for(self, line: bytes) -> list[Line]:
        """Lines to print for one response line (and its bookkeeping)."""
        try:
            response = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            response = None
        if not isinstance(response, dict):
            lines = self.parser.parse(line)
            if self._resuming:
                # Responses come in request order, and this may have been
                # the page asked for: waiting for it could hold back the
                # live messages for ever.
                lines += self._end_resume("the server sent a malformed response")
            return lines
        if self._awaiting_hello:
            self._awaiting_hello = False
            if self._hello_answered(response):
                return []
        self._track(response)
        return self._handle(response, len(line))

    def _print(self, lines: list[Line]) -> None:
        if not self.raw:
            for printed in lines:
                self.printer.show(printed)

    def _hello_answered(self, response: dict[str, Any]) -> bool:
        """Handle the answer to hello; True if there is nothing more to do."""
        if response.get("response") == "hello":
            self.v2 = True
            if self.last_id:
                # Back after a lost connection: fetch exactly what was
                # missed; the login history would leave gaps past its size.
                self._reset_resume()
                self._resuming = True
                self._request_missed()
            return True
        # A v1 server: it answered hello with an error; carry on in v1.
        return response.get("response") == "error"

    def _request_missed(self) -> None:
        assert self.protocol is not None
        self._resume_pages += 1
        self.protocol.send_request("history", {"after": self.last_id, "limit": 500}, ref=RESUME_REF)

    def _handle(self, response: dict[str, Any], size: int) -> list[Line]:
        """Lines to print for a response, resuming and de-duplicating.

        ``size`` is the response's length as received.
        """
        kind = response.get("response")
        ref = response.get("ref")
        if ref == DRAIN_REF and kind == "pong":
            self.clock.callLater(0, self._drained)
            return []
        if ref == RESUME_REF:
            # A page still due after the resume ended early: its
            # messages are older than those shown since.
            return self._resume_page(response) if self._resuming else []
        if self._resuming:
            if kind == "history" and ref is None:
                return []  # the login history: the resume pages replace it
            if kind == "message":
                return self._hold_live(response, size)
        return self._parse_new(response)

    # -- resuming after a reconnect ------------------------------------------

    def _reset_resume(self) -> None:
        self._resuming = False
        self._resume_pages = 0
        self._resume_buffer = []
        self._resume_bytes = 0

    def _hold_live(self, message: dict[str, Any], size: int) -> list[Line]:
        """Keep a live message until the resume is done, within bounds."""
        self._resume_buffer.append(message)
        self._resume_bytes += size
        if len(self._resume_buffer) >= MAX_RESUME_BUFFER or self._resume_bytes >= MAX_RESUME_BUFFER_BYTES:
            return self._end_resume(f"{len(self._resume_buffer)} new messages arrived while fetching it")
        return []

    def _resume_page(self, response: dict[str, Any]) -> list[Line]:
        """A page of missed messages: show it, then ask for the next or end.

        Bounded against a server that always says ``more``: at most
        ``MAX_RESUME_PAGES`` pages, and each must bring a message not
        shown yet.
        """
        if response.get("response") != "history" or not isinstance(response.get("content"), list):
            # An error (e.g. rate_limited) or nonsense: show it and stop.
            return self._parse_new(response) + self._end_resume("the server did not send it")
        shown_before = self.last_id
        lines = self._parse_new(response)
        if response.get("more") is not True:
            return lines + self._end_resume()  # caught up
        if self.last_id == shown_before:
            return lines + self._end_resume("the server sent no new messages")
        if self._resume_pages >= MAX_RESUME_PAGES:
            return lines + self._end_resume(f"stopped after {self._resume_pages} pages")
        self._request_missed()
        return lines

    def _end_resume(self, incomplete: str | None = None) -> list[Line]:
        """Stop resuming: then the live messages that came meanwhile, in
        order (minus any already shown).  ``incomplete`` says why some of
        the missed messages are not shown."""
        held = self._resume_buffer
        self._reset_resume()
        lines = [Line(NOTICE, f"history incomplete: {incomplete}")] if incomplete else []
        for message in held:
            lines.extend(self._parse_new(message))
        return lines

    def _track(self, response: dict[str, Any]) -> None:
        kind = response.get("response")
        content = response.get("content")
        if kind == "info" and self._awaiting_logout and content == "Logout successful":
            self._awaiting_logout = False
            self.clock.callLater(0, self._drained)  # after this line is printed
        if kind == "info" and isinstance(content, str) and self._pending_name is not None:
            if content.startswith("Login successful"):
                self.name = self._pending_name
                self._pending_name = None
            elif content.startswith("Logout successful"):
                self.name = None
                self._pending_name = None
        elif kind == "error" and response.get("code") in ("invalid_username", "name_taken", "already_logged_in"):
            if response.get("code") != "already_logged_in":
                self.name = None  # not logged in on this connection
            self._pending_name = None

    def _parse_new(self, response: dict[str, Any]) -> list[Line]:
        """Parse, leaving out messages already shown (after a reconnect)."""
        kind = response.get("response")
        if kind == "message":
            return self.parser.parse_response(response) if self._is_new(response) else []
        if kind == "history" and isinstance(response.get("content"), list):
            fresh = []
            for entry in response["content"]:
                message = _entry(entry)
                if message is None or self._is_new(message):
                    fresh.append(entry)
            return self.parser.parse_history(dict(response, content=fresh))
        return self.parser.parse_response(response)

    def _is_new(self, message: dict[str, Any]) -> bool:
        message_id = message.get("id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            return True  # a server without ids: show everything
        if message_id <= self.last_id:
            return False
        self.last_id = message_id
        return True

    # -- user input ------------------------------------------------------

    def user_line(self, text: str) -> None:
        """One line typed by the user."""
        command = parse_input(text)
        if command.action == "quit":
            self.quit()
        elif command.action == "error":
            self.show(ERROR, command.content)
        elif command.action == "request":
            self._request(command)

    def _request(self, command: Command) -> None:
        if command.request == "login":
            self._pending_name = command.content
        elif command.request == "logout":
            self._pending_name = self.name
        if self.protocol is None:
            if command.request == "login":
                self.name = None  # the reconnect logs in with this name instead
            self._queued.append((command.request, command.content))
            return
        self._send(command.request, command.content)

    def _send(self, request: str, content: Any) -> None:
        assert self.protocol is not None
        if request == "login":
            self._pending_name = content
        self.protocol.send_request(request, content)

    def quit(self) -> None:
        """``/quit``: log out, show the replies still due, close, exit 0."""
        self._quitting = True
        if self.protocol is None:
            if self._ever_connected:
                self._finish(0)
            # Otherwise connected() quits once the lines before it are sent.
            return
        if self.name is not None or self._pending_name is not None:
            # Replies come in order: "Logout successful" is the last one due.
            self.protocol.send_request("logout")
            self._awaiting_logout = True
        self._input_ended = True
        self._start_draining()

    def input_ended(self) -> None:
        """Standard input is closed: wait for replies still due, then exit."""
        if self._input_ended or self.done.called:
            return
        self._input_ended = True
        if self.protocol is not None:
            self._start_draining()
        # Otherwise the connection is still to be made: connected() starts
        # draining once the queued lines are sent.

    def _start_draining(self) -> None:
        if self._drain_deadline is None:
            self._drain_deadline = self.clock.callLater(DRAIN_MAX, self._drained)
        if self.v2 and self.protocol is not None:
            # Exact: the pong comes after every reply still due.
            self.protocol.send_request("ping", None, ref=DRAIN_REF)
            return
        self._restart_drain_timer()

    def _restart_drain_timer(self) -> None:
        if not self._input_ended or self.done.called or self.v2:
            return
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = self.clock.callLater(DRAIN_QUIET, self._drained)

    def _drained(self) -> None:
        for timer in (self._drain_timer, self._drain_deadline):
            if timer is not None and timer.active():
                timer.cancel()
        if self.protocol is not None:
            assert self.protocol.transport is not None  # self.protocol is the connected one
            self.protocol.transport.loseConnection()
        else:
            self._finish(0)

    # -- helpers ---------------------------------------------------------

    def show(self, kind: str, text: str) -> None:
        """Print a line of the client's own."""
        self.printer.show(Line(kind, text))

    def _finish(self, status: int) -> None:
        if not self.done.called:
            self.done.callback(status)


def _entry(entry: Any) -> dict[str, Any] | None:
    """A history entry (a v1 JSON string or a v2 object) as an object."""
    if isinstance(entry, str):
        try:
            entry = json.loads(entry)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return None
    return entry if isinstance(entry, dict) else None


def _is_tls_failure(reason: Failure) -> bool:
    try:
        from OpenSSL.SSL import Error as SSLError
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - both come with twisted[tls]
        return False
    return reason.check(SSLError, VerificationError) is not None


def _reason_text(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if _is_tls_failure(reason):
        return _tls_problem(value)
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0]


def _tls_problem(value: Any) -> str:
    """A TLS failure as one sentence for people."""
    if type(value).__name__ == "VerificationError":
        return "the certificate is not valid for this host name"
    details = [item for args in getattr(value, "args", ()) for item in (args if isinstance(args, list) else [args])]
    reasons = [str(part[-1]) if isinstance(part, tuple) else str(part) for part in details]
    if any("certificate verify failed" in reason for reason in reasons):
        return "the certificate is not trusted (" + "; ".join(reasons) + ")"
    return "handshake failed (" + ("; ".join(reasons) or type(value).__name__) + ")"


class UserInput(LineReceiver):
    """Standard input, line by line, handed to the session."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self, session: ChatSession) -> None:
        self.session = session

    def lineReceived(self, line: bytes) -> None:
        self.session.user_line(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        last: bytes = self.clearLineBuffer()
        if last:
            self.lineReceived(last)  # a last line without newline
        self.session.input_ended()


class ClientOptions(usage.Options):
    """Command-line options of ``chatd-client``."""

    synopsis = "[options]"
    longdesc = f"Chat with a chatd server. Type a message and Enter to send it; commands: {COMMANDS}."
    optParameters = [
        ["host", None, "127.0.0.1", "Server host name or address."],
        ["port", None, 9998, "Server port.", int],
        ["name", None, None, "Log in with this name on connect."],
        ["cafile", None, None, "With --tls: trust this CA certificate (PEM) instead of the system's."],
    ]
    optFlags = [
        ["tls", None, "Connect with TLS, verifying the server's certificate and host name."],
        ["raw", None, "Print responses as received (JSON), for debugging."],
    ]


def make_endpoint(reactor: Any, options: ClientOptions) -> IStreamClientEndpoint:
    """The endpoint for ``--host``/``--port``, wrapped in TLS with ``--tls``."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint = HostnameEndpoint(reactor, options["host"], options["port"])
    if not options["tls"]:
        return endpoint
    from twisted.internet import ssl

    trust: Any = None
    if options["cafile"]:
        with open(options["cafile"], "rb") as handle:
            trust = ssl.Certificate.loadPEM(handle.read())
    tls_options = ssl.optionsForClientTLS(options["host"], trustRoot=trust)
    return wrapClientTLS(tls_options, endpoint)


def main(reactor: Any, *argv: str) -> defer.Deferred[None]:
    """Run the client until it quits; fails with SystemExit on exit status 1."""
    from twisted.internet import stdio
    from twisted.internet.endpoints import connectProtocol

    options = ClientOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as problem:
        sys.stderr.write(f"chatd-client: {problem}\n{options}")
        raise SystemExit(2)
    try:
        endpoint = make_endpoint(reactor, options)
    except OSError as problem:
        sys.stderr.write(f"chatd-client: cannot read --cafile: {problem}\n")
        raise SystemExit(2)

    def connect(session: ChatSession) -> defer.Deferred[Any]:
        connecting: defer.Deferred[Any] = connectProtocol(endpoint, ChatClientProtocol(session))
        return connecting

    session = ChatSession(
        reactor,
        connect,
        Printer.for_stdout(),
        name=options["name"],
        raw=options["raw"],
        describe=f"{options['host']}:{options['port']}",
    )
    stdio.StandardIO(UserInput(session), reactor=reactor)
    finished = session.start()

    def exit_with(status: int) -> None:
        if status:
            raise SystemExit(status)

    return finished.addCallback(exit_with)


def run() -> None:
    """Console entry point ``chatd-client``."""
    from twisted.internet import task

    task.react(main, sys.argv[1:])


if __name__ == "__main__":
    run()

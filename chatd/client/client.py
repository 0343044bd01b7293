"""``chatd-client``: the terminal client.

The reactor does both directions: :class:`ChatClientProtocol` (lines
split by :class:`LineSplitter`, in linear time and bounded) talks to the
server, :class:`UserInput` reads what the
user types through ``twisted.internet.stdio``, and :class:`ChatSession`
ties them together: it sends requests, prints responses through the
:class:`~chatd.client.parser.MessageParser`, reconnects with backoff after a
lost connection and logs in again under the same name, skipping messages
it has already shown.  With a protocol 2 server it speaks rooms and
direct messages (PROTOCOL.md section 6): ``/join``, ``/part``,
``/rooms``, ``/topic``, ``/names``, ``/msg NAME``, and ``/switch`` to
choose where plain lines go; after a reconnect it joins its rooms again
and resumes each one.  Whatever a server sends, the client never raises:
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
from chatd.client.parser import (
    COMMANDS,
    ERROR,
    HELP,
    INFO,
    LOBBY,
    MESSAGE,
    NOTICE,
    Command,
    Line,
    MessageParser,
    conversation,
    encode_request,
    fold,
    parse_input,
    safe,
    target_key,
)

#: Seconds to wait for replies after standard input ends (v1 servers;
#: with v2 a ping tells exactly when every reply is in).
DRAIN_QUIET = 1.0
#: ... but never longer than this in all.
DRAIN_MAX = 5.0

#: ``ref`` values of the client's own bookkeeping requests ...
RESUME_REF = "chatd-client:resume"
DRAIN_REF = "chatd-client:drain"
#: ... and the prefixes of those that carry a room name: a join the user
#: asked for (refused: plain lines go back where they went), the same
#: join again after a reconnect, a part.
JOIN_REF = "chatd-client:join "
REJOIN_REF = "chatd-client:rejoin "
PART_REF = "chatd-client:part "

#: Conversations whose last id is kept for de-duplicating, at most (a
#: server could name a new room in every message).
MAX_CONVERSATIONS = 10_000

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
    """The client's state: name, connection, reconnects, rooms, what was shown.

    ``connect`` opens a new connection and returns a Deferred that fires
    once it is made (with the protocol) or fails.  ``done`` fires with the
    exit status.

    Rooms: ``rooms`` holds the rooms joined besides ``#lobby`` (every JSON
    user is in ``#lobby`` from login to logout), ``target`` is where plain
    lines go (a room, or a name for DMs), and ``last_ids`` the newest
    message id shown per conversation (ids are per room and per DM
    conversation: each is de-duplicated on its own).  After a reconnect
    the session logs in again, joins its rooms again, and asks each
    conversation it has seen messages of for what it missed.
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
        self.parser = MessageParser()
        self.name = name
        self.raw = raw
        self.max_retries = max_retries
        self.max_delay = max_delay
        self.describe = describe
        self.protocol: ChatClientProtocol | None = None
        self.done: defer.Deferred[int] = defer.Deferred()
        # Per conversation (parser.conversation's key), the newest message
        # id shown: anything older is a repeat.
        self.last_ids: dict[str, int] = {}
        # Rooms joined besides #lobby: folded name -> canonical spelling,
        # in the order joined.
        self.rooms: dict[str, str] = {}
        self._join_from: dict[str, str] = {}  # folded room -> the target before its /join, until answered
        self._rejoining: set[str] = set()  # rooms joined again after a reconnect, not yet answered
        self._paged: set[str] = set()  # conversations this reconnect resumes by history pages
        self._pending_name: str | None = None
        self._ever_connected = False
        self._retries = 0
        self._quitting = False
        self._awaiting_logout = False
        self._input_ended = False
        self._drain_timer: IDelayedCall | None = None
        self._drain_deadline: IDelayedCall | None = None
        self._queued: list[tuple[str, Any, dict[str, Any]]] = []
        self.v2 = False
        self._awaiting_hello = False
        self._resuming = False
        self._resume_queue: list[str] = []  # conversations still to resume, in order
        self._resume_current: str | None = None  # the one being paged
        self._resume_pages = 0  # pages asked for of it
        self._resume_buffer: list[dict[str, Any]] = []  # live messages held meanwhile
        self._resume_bytes = 0  # their size as received

    @property
    def name(self) -> str | None:
        """The name logged in with (or to log in with on connect)."""
        return self.parser.me

    @name.setter
    def name(self, name: str | None) -> None:
        self.parser.me = name  # the parser tells our DMs from others'

    @property
    def target(self) -> str:
        """Where plain lines go: ``#lobby``, another room, or a name (DMs)."""
        return self.parser.target

    @target.setter
    def target(self, target: str) -> None:
        self.parser.target = target  # its messages print plainly

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
        self._rejoining.clear()
        self._paged.clear()
        protocol.send_request("hello", {"protocol": 2, "client": f"chatd-client/{__version__}"})
        if self.name is not None:
            self._send("login", self.name)
        else:
            self._forget_rooms()  # not logged in: in no room
        for request, content, extra in self._queued:
            self._send(request, content, **extra)
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
        after = self._track(response)
        return self._handle(response, len(line)) + after

    def _print(self, lines: list[Line]) -> None:
        if not self.raw:
            for printed in lines:
                self.printer.show(printed)

    def _hello_answered(self, response: dict[str, Any]) -> bool:
        """Handle the answer to hello; True if there is nothing more to do."""
        if response.get("response") == "hello":
            self.v2 = True
            if self.name is not None and (self.rooms or any(self.last_ids.values())):
                self._resume()  # back after a lost connection
            return True
        # A v1 server: it answered hello with an error; carry on in v1.
        return response.get("response") == "error"

    def _resume(self) -> None:
        """After a reconnect (the login is already sent): join the rooms
        again, then fetch exactly what was missed in each conversation
        whose messages were seen (its last id known), one ``history
        after`` at a time.  The login's and those joins' histories would
        leave gaps past their size: they are dropped for those."""
        assert self.protocol is not None
        for key, room in self.rooms.items():
            self._rejoining.add(key)
            self.protocol.send_request("join", room, ref=REJOIN_REF + room)
        plan = [key for key in (LOBBY, *self.rooms) if self.last_ids.get(key)]
        if not plan:
            return  # nothing seen yet: the histories the server sends are all there is
        self._reset_resume()
        self._paged = set(plan)
        self._resuming = True
        self._resume_queue = plan
        self._print(self._next_resume())

    def _next_resume(self) -> list[Line]:
        """Ask for the next conversation's missed messages, or end the resume."""
        while self._resume_queue:
            key = self._resume_queue.pop(0)
            if key == LOBBY or key in self.rooms:  # its join again may have failed
                self._resume_current = key
                self._resume_pages = 0
                self._request_missed()
                return []
        return self._end_resume()

    def _request_missed(self) -> None:
        assert self.protocol is not None and self._resume_current is not None
        key = self._resume_current
        query: dict[str, Any] = {"after": self.last_ids.get(key, 0), "limit": 500}
        if key != LOBBY:
            query["room"] = self.rooms.get(key, key)
        self._resume_pages += 1
        self.protocol.send_request("history", query, ref=RESUME_REF)

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
        if isinstance(ref, str) and ref.startswith(REJOIN_REF):
            return self._rejoin_answer(response, fold(ref[len(REJOIN_REF) :]))
        if self._resuming:
            if kind == "history" and ref is None and LOBBY in self._paged:
                return []  # the login history: the resume pages replace it
            if kind == "message":
                return self._hold_live(response, size)
        return self._parse_new(response)

    def _rejoin_answer(self, response: dict[str, Any], key: str) -> list[Line]:
        """A response to a join sent again after a reconnect."""
        if key not in self._rejoining:
            return []  # the login failed: nothing to say about the rooms
        kind = response.get("response")
        if kind in ("history", "error"):
            self._rejoining.discard(key)
        if kind == "history" and key in self._paged:
            return []  # the resume pages replace it
        return self._parse_new(response)

    # -- resuming after a reconnect ------------------------------------------

    def _reset_resume(self) -> None:
        self._resuming = False
        self._resume_queue = []
        self._resume_current = None
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
        """A page of missed messages: show it, then ask for the next or
        go on to the next conversation.

        Bounded against a server that always says ``more``: at most
        ``MAX_RESUME_PAGES`` pages a conversation, and each must bring a
        message not shown yet.
        """
        if response.get("response") != "history" or not isinstance(response.get("content"), list):
            # An error (e.g. rate_limited) or nonsense: show it and stop.
            return self._parse_new(response) + self._conversation_resumed("the server did not send it")
        key = self._resume_current or LOBBY
        shown_before = self.last_ids.get(key, 0)
        lines = self._parse_new(response)
        if response.get("more") is not True:
            return lines + self._conversation_resumed()  # caught up
        if self.last_ids.get(key, 0) == shown_before:
            return lines + self._conversation_resumed("the server sent no new messages")
        if self._resume_pages >= MAX_RESUME_PAGES:
            return lines + self._conversation_resumed(f"stopped after {self._resume_pages} pages")
        self._request_missed()
        return lines

    def _conversation_resumed(self, incomplete: str | None = None) -> list[Line]:
        """The current conversation is done: on to the next.  ``incomplete``
        says why some of its missed messages are not shown."""
        lines = []
        if incomplete:
            key = self._resume_current or LOBBY
            what = "history" if key == LOBBY else f"history of {safe(self.rooms.get(key, key))}"
            lines.append(Line(NOTICE, f"{what} incomplete: {incomplete}"))
        return lines + self._next_resume()

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

    # -- what the responses change ---------------------------------------

    def _track(self, response: dict[str, Any]) -> list[Line]:
        """Follow the name, the rooms and the target; lines to print after
        the response's own."""
        kind = response.get("response")
        content = response.get("content")
        ref = response.get("ref")
        room = response.get("room")
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
                self._forget_rooms()  # a guest's memberships end with its session
        elif kind == "error" and self._pending_name is not None and response.get("code") in ("invalid_username", "name_taken", "already_logged_in"):
            if response.get("code") != "already_logged_in":
                self.name = None  # not logged in on this connection
                self._forget_rooms()
                if self._resuming:
                    return self._end_resume()  # the error says why
            self._pending_name = None
        if kind == "info" and isinstance(room, str):
            if isinstance(response.get("members"), list):
                self._joined(room)
            elif (isinstance(ref, str) and ref.startswith(PART_REF)) or (
                ref is None and isinstance(content, str) and content.startswith(("Left ", "You were kicked ", "You were banned "))
            ):
                self._left(room)
        if kind == "error" and isinstance(ref, str):
            if ref.startswith(JOIN_REF):
                return self._join_failed(ref[len(JOIN_REF) :], rejoin=False)
            if ref.startswith(REJOIN_REF) and fold(ref[len(REJOIN_REF) :]) in self._rejoining:
                return self._join_failed(ref[len(REJOIN_REF) :], rejoin=True)
        return []

    def _joined(self, room: str) -> None:
        """The server says we are in ``room`` (its canonical spelling)."""
        key = fold(room)
        self._join_from.pop(key, None)
        if key == LOBBY:
            return
        self.rooms[key] = room
        if target_key(self.target) == key:
            self.target = room  # as the room's creator spelled it

    def _left(self, room: str) -> None:
        """We are out of ``room``: plain lines go to ``#lobby`` if they went there."""
        key = fold(room)
        self.rooms.pop(key, None)
        if target_key(self.target) == key and key not in self._join_from:
            self.target = LOBBY

    def _join_failed(self, room: str, rejoin: bool) -> list[Line]:
        """A join was refused: back to the target before it (``rejoin``:
        the join after a reconnect, so the room is no longer ours)."""
        key = fold(room)
        previous = self._join_from.pop(key, LOBBY)
        if rejoin:
            self.rooms.pop(key, None)
        if key == LOBBY or key in self.rooms or target_key(self.target) != key:
            return []
        if previous.startswith("#") and fold(previous) != LOBBY and fold(previous) not in self.rooms:
            previous = LOBBY
        self.target = previous
        return [Line(NOTICE, f"now talking {self._where(previous)}")]

    def _forget_rooms(self) -> None:
        """Logged out (or not logged in): in no room but ``#lobby``."""
        self.rooms.clear()
        self._join_from.clear()
        self._rejoining.clear()
        if self.target.startswith("#"):
            self.target = LOBBY

    def _parse_new(self, response: dict[str, Any]) -> list[Line]:
        """Parse, leaving out messages already shown (after a reconnect)."""
        kind = response.get("response")
        if kind == "message":
            return self.parser.parse_response(response) if self._is_new(response) else []
        if kind == "history" and isinstance(response.get("content"), list):
            room = response.get("room")
            fresh = []
            for entry in response["content"]:
                message = _entry(entry)
                if message is not None and isinstance(room, str) and "room" not in message and "to" not in message:
                    message = dict(message, room=room)  # an entry of a room's history
                if message is None or self._is_new(message):
                    fresh.append(entry)
            return self.parser.parse_history(dict(response, content=fresh))
        return self.parser.parse_response(response)

    def _is_new(self, message: dict[str, Any]) -> bool:
        message_id = message.get("id")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            return True  # a server without ids: show everything
        key = conversation(message, self.name)
        if message_id <= self.last_ids.get(key, 0):
            return False
        if key not in self.last_ids and len(self.last_ids) >= MAX_CONVERSATIONS:
            # Bounded whatever a server sends: forget the oldest
            # conversation that is neither #lobby nor a room joined.
            for old in self.last_ids:
                if old != LOBBY and old not in self.rooms:
                    del self.last_ids[old]
                    break
        self.last_ids[key] = message_id
        return True

    # -- user input ------------------------------------------------------

    def user_line(self, text: str) -> None:
        """One line typed by the user."""
        command = parse_input(text)
        if command.action == "quit":
            self.quit()
        elif command.action == "error":
            self.show(ERROR, command.content)
        elif command.action == "help":
            for usage_text, meaning in HELP:
                self.show(INFO, f"{usage_text:<18} {meaning}")
        elif command.action == "switch":
            self._switch(command.content)
        elif command.action == "request":
            self._request(command)

    def _switch(self, target: str | None) -> None:
        """``/switch``: plain lines go to ``target`` from now on."""
        if target is not None:
            key = target_key(target)
            self.target = self.rooms.get(key, target)
        note = ""
        key = target_key(self.target)
        if self.target.startswith("#") and key != LOBBY and key not in self.rooms and key not in self._join_from:
            note = f" (not joined: /join {self.target})"
        self.show(NOTICE, f"now talking {self._where(self.target)}{note}")

    def _where(self, target: str) -> str:
        return f"in {safe(target)}" if target.startswith("#") else f"to {safe(target)} (direct messages)"

    def _request(self, command: Command) -> None:
        if self.protocol is not None and not self._awaiting_hello and not self.v2 and self._needs_v2(command):
            self.show(ERROR, "This server speaks protocol 1 only: no rooms and no direct messages.")
            return
        wire = self._wire(command)
        if wire is None:
            return
        request, content, extra = wire
        if request == "login":
            self._pending_name = content
        elif request == "logout":
            self._pending_name = self.name
        if self.protocol is None:
            if request == "login":
                self.name = None  # the reconnect logs in with this name instead
            self._queued.append((request, content, extra))
            return
        self._send(request, content, **extra)

    def _needs_v2(self, command: Command) -> bool:
        """Whether a command needs a protocol 2 server (rooms, DMs)."""
        if command.request in ("join", "part", "rooms", "topic"):
            return True
        if command.request == "msg":
            return target_key(command.target or self.target) != LOBBY
        if command.request == "names":
            room = command.content or self.target
            return bool(room.startswith("#") and fold(room) != LOBBY)
        return False

    def _wire(self, command: Command) -> tuple[str, Any, dict[str, Any]] | None:
        """A command as the request, content and top-level keys to send
        (None: refused here, with an error line)."""
        request, content = command.request, command.content
        if request == "msg":
            return "msg", content, self._address(command.target or self.target)
        if request == "join":
            # Plain lines go to the room at once, so that those typed
            # right after /join go there; a refusal switches back.
            key = fold(content)
            self._join_from.setdefault(key, self.target)
            self.target = self.rooms.get(key, content)
            return "join", content, {"ref": JOIN_REF + content}
        if request == "part":
            room = content or self._current_room("part")
            if room is None:
                return None
            if target_key(self.target) == fold(room):
                self.target = LOBBY
            self._join_from.pop(fold(room), None)
            return "part", room, {"ref": PART_REF + room}
        if request == "topic":
            room = self._current_room("topic")
            if room is None:
                return None
            return "topic", {"room": room} if content is None else {"room": room, "topic": content}, {}
        if request == "names":
            room = content or (self.target if self.target.startswith("#") else LOBBY)
            return "names", None if fold(room) == LOBBY else {"room": room}, {}
        return request, content, {}

    def _address(self, target: str) -> dict[str, Any]:
        """The top-level keys of a ``msg`` to ``target``."""
        if not target.startswith("#"):
            return {"to": target}
        key = fold(target)
        return {} if key == LOBBY else {"room": self.rooms.get(key, target)}

    def _current_room(self, word: str) -> str | None:
        """The current target if it is a room; else an error line."""
        if self.target.startswith("#"):
            return self.target
        self.show(ERROR, f"/{word}: you are talking to {safe(self.target)}, not in a room (/switch #ROOM first).")
        return None

    def _send(self, request: str, content: Any, **extra: Any) -> None:
        assert self.protocol is not None
        if request == "login":
            self._pending_name = content
        self.protocol.send_request(request, content, **extra)

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

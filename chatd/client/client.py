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
and resumes each one.  With a server that has accounts (section 6.4)
``/register``, ``/login`` with a password and ``/password`` ask for
passwords with the terminal's echo off (:class:`Keyboard`), or read them
from the next input lines of a pipe or from ``--password-file``; the
password of the account logged in stays in memory only (a
:class:`Secret`) to log in again after a reconnect.  The moderation
commands of section 6.5 act on the current room.  Whatever a server
sends, the client never raises: malformed responses are shown as error
lines, and resuming after a reconnect is bounded.

Run as ``chatd-client`` or ``python -m chatd.client.client``.
"""

from __future__ import annotations

import atexit
import json
import os
import stat
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol as Interface, TextIO, cast

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
    MODERATION,
    NOTICE,
    USER_NAME,
    Command,
    Line,
    MessageParser,
    command_word,
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
#: Every login (a v2 server puts it on all the login's responses: its
#: errors, and an account's rooms and waiting direct messages) and a
#: password change.
LOGIN_REF = "chatd-client:login"
PASSWORD_REF = "chatd-client:password"
#: A ping whose pong says every earlier reply is in: ``/whoami`` answers then.
WHOAMI_REF = "chatd-client:whoami"

#: Login errors a server without ``ref`` (protocol 1) can give.
V1_LOGIN_ERRORS = ("invalid_username", "name_taken", "already_logged_in")

#: Seconds to wait for the answer to ``hello`` before what was typed is
#: sent anyway (a server that never answers it).
HELLO_WAIT = 5.0

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
        self._prompt: str | None = None

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

    def prompt(self, text: str) -> None:
        """Show a password prompt (no newline: the answer is typed after it).

        Until :meth:`end_prompt`, a line printed meanwhile goes on a line
        of its own and the prompt is shown again after it.
        """
        self._prompt = text
        self._emit(text)

    def end_prompt(self) -> None:
        """The answer was typed (without echo, so its Enter was not shown)."""
        if self._prompt is not None:
            self._prompt = None
            self._emit("\n")

    def _write(self, text: str) -> None:
        if self._prompt is not None:
            self._emit("\n" + text + "\n" + self._prompt)
        else:
            self._emit(text + "\n")

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
        except UnicodeEncodeError:
            # A terminal whose encoding lacks a character (Latin-1 and an
            # emoji): show its escape rather than raise.
            encoding = getattr(self.stream, "encoding", None) or "ascii"
            self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        self.stream.flush()


class Secret:
    """A password held in memory: never shown by ``repr`` or ``str``, so
    that no log line, traceback or error text can carry it by mistake;
    :meth:`reveal` gives it for the one request that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The password itself."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret(hidden)"

    __str__ = __repr__


def _revealed(value: Any) -> Any:
    """``value`` with each :class:`Secret` in it (or in a dict of it)
    replaced by its text: done only as a request is encoded."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    return value


class EchoControl(Interface):
    """Turns a terminal's echo off while a password is typed."""

    def hide(self) -> bool:
        """Echo off; False if it could not be turned off."""

    def restore(self) -> None:
        """Echo as it was before :meth:`hide` (nothing if not hidden)."""


class Keyboard:
    """Standard input when it is a terminal: echo off while a password is
    typed, through ``termios`` on its file descriptor.

    The client reads standard input in the reactor (``twisted.internet
    .stdio``, a line at a time in the terminal's canonical mode), so the
    password line comes in like any other; only the terminal's ``ECHO``
    flag changes, for as long as the prompt is up.  Nothing blocks: the
    connection keeps being served while the user types.  Turning it off
    flushes input not yet read (``TCSAFLUSH``, as ``getpass`` does): it
    was typed, and shown, before the prompt.  The saved settings come
    back when the line is in, when input ends, at exit (``atexit``, also
    reached after ``SIGINT`` or ``SIGTERM``, which stop the reactor) and
    when the session ends.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    @classmethod
    def for_stdin(cls) -> Keyboard | None:
        """A keyboard for standard input if it is a terminal, else None."""
        try:
            import termios  # noqa: F401 - POSIX only

            return cls(sys.stdin.fileno()) if os.isatty(sys.stdin.fileno()) else None
        except (ImportError, ValueError, OSError):
            return None

    def hide(self) -> bool:
        """Turn echo off (keeping line editing); False if that failed."""
        import termios

        if self._saved is not None:
            return True
        try:
            saved = termios.tcgetattr(self.fd)
            quiet = list(saved)
            quiet[3] = saved[3] & ~termios.ECHO  # the local modes
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, quiet)
        except termios.error:
            return False
        self._saved = saved
        return True

    def restore(self) -> None:
        """Echo back on, as it was."""
        import termios

        saved, self._saved = self._saved, None
        if saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, saved)
            except termios.error:
                pass  # the terminal is gone


@dataclass
class _SecretWait:
    """Passwords being asked for: the next input lines are them."""

    what: str  # the command, for messages ("/login alice")
    prompts: list[str]  # one per password asked for
    then: Callable[[list[Secret]], None]
    answers: list[Secret] = field(default_factory=list)


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

    Accounts (PROTOCOL.md section 6.4): ``/login NAME`` on a server with
    accounts asks for the password (Enter alone logs in as a guest),
    ``/register NAME`` and ``/password`` ask for theirs.  With
    ``keyboard`` (standard input is a terminal) each is asked for with a
    prompt and the terminal's echo off; without it (a pipe) the next
    input lines are the passwords.  ``password_file`` (``--password-file``)
    answers ``/login`` and ``/register`` instead, and logs ``name`` in on
    connect.  The password of the account logged in is kept in memory
    only, as a :class:`Secret`, to log in again after a reconnect; it is
    never printed.  Until the server has answered the first ``hello``
    (so that the session knows whether it has accounts, and so whether
    the line after ``/login NAME`` is a password) typed lines wait.
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
        keyboard: EchoControl | None = None,
        password_file: Secret | None = None,
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
        # Logins sent and not answered yet, oldest first: name, password.
        self._logins: deque[tuple[str, Secret | None]] = deque()
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
        # Accounts: the server's features (None until a hello is
        # answered; empty for a v1 server), how passwords are read, the
        # password of the account logged in and of a login or password
        # change waiting for its answer.
        self.features: frozenset[str] | None = None
        self.keyboard = keyboard
        self.password_file = password_file
        self._password: Secret | None = password_file if name is not None else None
        self._pending_new: Secret | None = None
        self._asking: _SecretWait | None = None
        # Lines typed before the first hello is answered, and whether
        # input ended meanwhile.
        self._ready = False
        self._held: list[str] = []
        self._held_end = False
        self._release_due = False
        self._hello_timer: IDelayedCall | None = None
        # Rooms given back at this connection's login (an account's), and
        # whether the server put us out of #lobby (no reconnect then).
        self._restored: set[str] = set()
        self._removed = False
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
    def account(self) -> bool:
        """Whether the session is logged in to an account (with a password)."""
        return self.name is not None and self._password is not None

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
        self._restored.clear()
        self._logins.clear()  # answers that will never come
        protocol.send_request("hello", {"protocol": 2, "client": f"chatd-client/{__version__}"})
        if not self._ready and self._hello_timer is None:
            self._hello_timer = self.clock.callLater(HELLO_WAIT, self._hello_overdue)
        if self.name is not None:
            self._send("login", self.name, **({"password": self._password} if self._password is not None else {}))
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
        if self._removed:
            self.show(ERROR, "the server closed the connection: you were put out of #lobby (not reconnecting)")
            self._finish(1)
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
        if self._release_due:
            self._release()

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
            if not self._ready:
                self._release_due = True  # once this response is shown
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
            content = response.get("content")
            features = content.get("features") if isinstance(content, dict) else None
            self.features = frozenset(item for item in features if isinstance(item, str)) if isinstance(features, list) else frozenset()
            if self.name is not None and (self.rooms or any(self.last_ids.values())):
                self._resume()  # back after a lost connection
            return True
        # A v1 server: it answered hello with an error; carry on in v1.
        self.features = frozenset()
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
        if ref == WHOAMI_REF and kind == "pong":
            self.printer.show(self._account_state())  # a line of the client's own: shown with --raw too
            return []
        if ref == RESUME_REF:
            # A page still due after the resume ended early: its
            # messages are older than those shown since.
            return self._resume_page(response) if self._resuming else []
        if isinstance(ref, str) and ref.startswith(REJOIN_REF):
            return self._rejoin_answer(response, fold(ref[len(REJOIN_REF) :]))
        if self._resuming:
            if kind == "history" and ref in (None, LOGIN_REF) and "with" not in response:
                # The login's history of #lobby (or, for an account, of a
                # room it is in): the resume pages replace it.  Direct
                # messages that waited for the login are shown.
                room = response.get("room")
                if (fold(room) if isinstance(room, str) else LOBBY) in self._paged:
                    return []
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
        if kind == "info" and key in self._restored:
            # An account's login gave the room back already (a room
            # already joined: the info only): said once is enough.
            self._rejoining.discard(key)
            return []
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
        code = response.get("code")
        if kind == "info" and isinstance(content, str):
            if content.startswith("Login successful") and self._logins:
                # Answers come in request order: the oldest login's.
                self.name, self._password = self._logins.popleft()  # no password: a guest
                if not self._has_accounts():
                    self._password = None  # a server without accounts ignored it
            elif content.startswith("Logout successful"):
                self.name = None
                self._password = None
                self._forget_rooms()  # a guest's memberships end with its session
        elif kind == "error" and self._logins and (ref == LOGIN_REF or (ref is None and code in V1_LOGIN_ERRORS)):
            # The login was refused (auth_failed, banned, rate_limited, ...:
            # a v2 server says which request by the ref).
            self._logins.popleft()
            if code != "already_logged_in" and self.name is not None:
                # The login again after a reconnect: not logged in on
                # this connection, so in no room.  (Not logged in before:
                # nothing to forget, and a /join typed after the login
                # still stands.)
                self.name = None
                self._password = None
                self._forget_rooms()
                if self._resuming:
                    return self._end_resume()  # the error says why
        if ref == PASSWORD_REF:
            if kind == "info" and self._pending_new is not None and self.account:
                self._password = self._pending_new  # for the next reconnect
            self._pending_new = None
        after: list[Line] = []
        if kind == "info" and isinstance(room, str):
            if isinstance(response.get("members"), list):
                self._joined(room)
                if ref == LOGIN_REF:
                    self._restored.add(fold(room))  # an account's room, given back at login
            elif (isinstance(ref, str) and ref.startswith(PART_REF)) or (
                ref is None and isinstance(content, str) and content.startswith(("Left ", "You were kicked ", "You were banned "))
            ):
                before = self.target
                self._left(room)
                if isinstance(content, str) and content.startswith(("You were kicked ", "You were banned ")):
                    if fold(room) == LOBBY:
                        self._removed = True  # the server closes the connection next
                    elif self.target != before:
                        after.append(Line(NOTICE, f"now talking {self._where(self.target)}"))
        if kind == "error" and isinstance(ref, str):
            if ref.startswith(JOIN_REF):
                return self._join_failed(ref[len(JOIN_REF) :], rejoin=False)
            if ref.startswith(REJOIN_REF) and fold(ref[len(REJOIN_REF) :]) in self._rejoining:
                return self._join_failed(ref[len(REJOIN_REF) :], rejoin=True)
        return after

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
        """One line typed by the user (a password, when one is asked for)."""
        if self._asking is not None:
            self._secret_line(text)
            return
        if not self._ready:
            self._held.append(text)  # until the server says what it has
            return
        command = parse_input(text)
        word = command_word(text)
        if word in ("login", "register", "password"):
            self._account_command(word, command)
        elif command.action == "quit":
            self.quit()
        elif command.action == "error":
            self.show(ERROR, command.content)
        elif command.action == "help":
            for usage_text, meaning in HELP:
                self.show(INFO, f"{usage_text:<18} {meaning}")
        elif command.action == "whoami":
            self._whoami()
        elif command.action == "switch":
            self._switch(command.content)
        elif command.action == "request":
            self._request(command)

    # -- typed lines held until the server's features are known -----------

    def _release(self) -> None:
        """The first hello is answered (or overdue): handle the lines
        typed meanwhile, in order, then an end of input that came."""
        self._release_due = False
        if self._ready:
            return
        self._ready = True
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        held, self._held = self._held, []
        for text in held:
            if self.done.called:
                return
            self.user_line(text)
        if self._held_end:
            self._held_end = False
            self.input_ended()

    def _hello_overdue(self) -> None:
        """No answer to hello: go on without knowing the server's features."""
        self._hello_timer = None
        self._release()

    # -- accounts ----------------------------------------------------------

    def _has_accounts(self) -> bool:
        return self.features is not None and "accounts" in self.features

    def _no_accounts(self, word: str) -> bool:
        """Whether the server is known to have no accounts (then said)."""
        if self.features is None or self._has_accounts():
            return False
        if self.v2:
            self.show(ERROR, f"/{word}: this server has no accounts.")
        else:
            self.show(ERROR, f"/{word}: this server speaks protocol 1 only: no accounts.")
        return True

    def _account_command(self, word: str, command: Command) -> None:
        """``/login``, ``/register``, ``/password``.

        Which input lines are passwords must never depend on answers
        still to come (a pipe's lines are all read at once): on a pipe
        these commands take their password lines even when refused (a
        typo, no accounts, not logged in), and only then say why, so
        that a password is never sent as a message.  On a terminal the
        user sees a refusal before typing on, so it comes first.
        """
        if command.action == "error":
            count = self._pipe_passwords(word)
            if count:
                self._ask(word, [""] * count, lambda _answers: self.show(ERROR, command.content))
            else:
                self.show(ERROR, command.content)
        elif word == "login":
            self._login(command.content)
        elif word == "register":
            self._register(command.content)
        else:
            self._change_password()

    def _pipe_passwords(self, word: str) -> int:
        """How many input lines after ``/WORD`` are passwords, without a
        terminal (0 with one: its prompts come only once accepted)."""
        if self.keyboard is not None:
            return 0
        if word == "login":
            known_without = self.features is not None and not self._has_accounts()
            return 0 if known_without or self.password_file is not None else 1
        if word == "register":
            return 0 if self.password_file is not None else 1
        return 2  # /password: the current one, the new one

    def _login(self, name: str) -> None:
        """``/login NAME``: with a password if the server has accounts
        (from ``--password-file``, or asked for: Enter alone, or an empty
        line, logs in as a guest), else as a guest as in protocol 1."""
        known_without = self.features is not None and not self._has_accounts()
        if known_without:
            self._request(Command("request", "login", name))
        elif self.password_file is not None:
            self._request(Command("request", "login", name), password=self.password_file)
        elif self.keyboard is not None and (USER_NAME.fullmatch(name) is None or self.name is not None):
            # Nothing to ask for: the server refuses the name, or says we
            # are logged in already.
            self._request(Command("request", "login", name))
        else:

            def log_in(answers: list[Secret]) -> None:
                password = answers[0]
                self._request(Command("request", "login", name), **({"password": password} if password else {}))

            self._ask(f"/login {name}", [f"Password for {name} (Enter alone: log in as a guest): "], log_in)

    def _register(self, name: str) -> None:
        """``/register NAME``: the password from ``--password-file`` or
        asked for (twice on a terminal).  It does not log in (section 6.4)."""
        if (self.keyboard is not None or self.password_file is not None) and self._no_accounts("register"):
            return
        if self.password_file is not None:
            self._request(Command("request", "register", {"username": name, "password": self.password_file}))
            return

        def register(answers: list[Secret]) -> None:
            if self._no_accounts("register"):
                return
            if not answers[0]:
                self.show(NOTICE, f"/register {name}: no password given; nothing registered")
            elif len(answers) > 1 and answers[0].reveal() != answers[1].reveal():
                self.show(ERROR, f"/register {name}: the two passwords differ; nothing registered")
            else:
                self._request(Command("request", "register", {"username": name, "password": answers[0]}))

        prompts = [f"Password for the new account {name}: "]
        if self.keyboard is not None:
            prompts.append("The same password again: ")
        self._ask(f"/register {name}", prompts, register)

    def _change_password(self) -> None:
        """``/password``: the current password, then the new one (twice on
        a terminal).  Without a terminal, a guest's is refused by the
        server (whether we are one may not be known yet)."""
        if self.keyboard is not None:
            if self._no_accounts("password"):
                return
            if not self.account:
                self.show(ERROR, "/password: you are not logged in to an account.")
                return

        def change(answers: list[Secret]) -> None:
            if self._no_accounts("password"):
                return
            if len(answers) < 2 or not answers[0] or not answers[1]:
                self.show(NOTICE, "/password: no password given; password unchanged")
                return
            old, new = answers[0], answers[1]
            if len(answers) > 2 and new.reveal() != answers[2].reveal():
                self.show(ERROR, "/password: the two new passwords differ; password unchanged")
            else:
                self._request(Command("request", "password", {"old": old, "new": new}))

        prompts = ["Current password: ", "New password: "]
        if self.keyboard is not None:
            prompts.append("The new password again: ")
        self._ask("/password", prompts, change)

    def _ask(self, what: str, prompts: list[str], then: Callable[[list[Secret]], None]) -> None:
        """Take the next input lines as passwords: on a terminal each
        after its prompt, echo off."""
        if self.keyboard is not None and not self.keyboard.hide():
            self.show(ERROR, f"{what}: cannot turn the terminal's echo off; use --password-file")
            return
        self._asking = _SecretWait(what, prompts, then)
        if self.keyboard is not None:
            self.printer.prompt(prompts[0])

    def _secret_line(self, text: str) -> None:
        """A line typed while passwords are asked for: the next of them."""
        asking = self._asking
        assert asking is not None
        answer = Secret(text.rstrip("\r\n"))
        asking.answers.append(answer)
        if self.keyboard is not None:
            self.printer.end_prompt()
        # On a terminal, Enter alone ends the questions (a guest login, or
        # cancelled); a pipe always gives as many lines as were asked for,
        # so that which lines are passwords never depends on their text.
        if len(asking.answers) < len(asking.prompts) and (answer or self.keyboard is None):
            if self.keyboard is not None:
                self.printer.prompt(asking.prompts[len(asking.answers)])
            return
        self._stop_asking()
        asking.then(asking.answers)

    def _stop_asking(self) -> None:
        self._asking = None
        if self.keyboard is not None:
            self.printer.end_prompt()
            self.keyboard.restore()

    def _whoami(self) -> None:
        """``/whoami``: the account state, once the replies to what was
        typed before it are in (a ping's pong comes after them)."""
        if self.protocol is not None and self.v2 and not self._awaiting_hello:
            self.protocol.send_request("ping", None, ref=WHOAMI_REF)
        else:
            self.printer.show(self._account_state())

    def _account_state(self) -> Line:
        """Who we are: not logged in, a guest, or an account; and whether
        the server has accounts."""
        if self.name is None:
            text = "You are not logged in"
        elif self.account:
            text = f"You are {safe(self.name)}, logged in to your account (after a lost connection the client logs in again with its password)"
        else:
            text = f"You are {safe(self.name)}, a guest"
        if self._has_accounts():
            text += "; this server has accounts (/register NAME, /login NAME)"
        elif self.features is not None:
            text += "; this server has no accounts"
        return Line(NOTICE, text + ".")

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

    def _request(self, command: Command, **secrets: Secret) -> None:
        """Send a command's request, or queue it until connected.
        ``secrets`` are top-level keys (a login's ``password``)."""
        if self.protocol is not None and not self._awaiting_hello and not self.v2 and self._needs_v2(command):
            self.show(ERROR, "This server speaks protocol 1 only: no rooms and no direct messages.")
            return
        wire = self._wire(command)
        if wire is None:
            return
        request, content, extra = wire
        extra.update(secrets)
        if self.protocol is None:
            if request == "login":
                self.name = None  # the reconnect logs in with this name instead
                self._password = None
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
        return command.request in MODERATION or command.request in ("mode", "password")

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
        if request in MODERATION or request == "mode":
            room = command.target or self._current_room(request)
            if room is None:
                return None
            return request, {"room": self.rooms.get(fold(room), room), **content}, {}
        if request == "password":
            return request, content, {"ref": PASSWORD_REF}
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
        hint = f" or name it: /{word} #ROOM ..." if word in MODERATION or word == "mode" else ""
        self.show(ERROR, f"/{word}: you are talking to {safe(self.target)}, not in a room (/switch #ROOM first{hint}).")
        return None

    def _send(self, request: str, content: Any, **extra: Any) -> None:
        """Send a request now; passwords (:class:`Secret`) are revealed
        only here, as it is encoded."""
        assert self.protocol is not None
        if request == "login":
            password = extra.get("password")
            self._logins.append((content, password if isinstance(password, Secret) else None))
            extra["ref"] = LOGIN_REF
        elif request == "password" and isinstance(content, dict):
            new = content.get("new")
            self._pending_new = new if isinstance(new, Secret) else None
        self.protocol.send_request(request, _revealed(content), **_revealed(extra))

    def quit(self) -> None:
        """``/quit``: log out, show the replies still due, close, exit 0."""
        self._quitting = True
        if self.protocol is None:
            if self._ever_connected:
                self._finish(0)
            # Otherwise connected() quits once the lines before it are sent.
            return
        if self.name is not None or self._logins:
            self.protocol.send_request("logout")
            # Replies come in order: with v1, "Logout successful" is the
            # last one due (with v2 the drain's pong says so, and an
            # earlier /logout's answer is not taken for this one's).
            self._awaiting_logout = not self.v2
        self._input_ended = True
        self._start_draining()

    def input_ended(self) -> None:
        """Standard input is closed: wait for replies still due, then exit."""
        if self._input_ended or self.done.called:
            return
        if not self._ready:
            self._held_end = True  # after the lines typed before it
            return
        if self._asking is not None:
            what = self._asking.what
            self._stop_asking()
            self.show(ERROR, f"{what}: input ended before the password; nothing sent")
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
        if self.keyboard is not None:
            self.keyboard.restore()  # never leave the terminal without echo
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
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
        ["name", None, None, "Log in with this name on connect (to an account with --password-file)."],
        [
            "password-file",
            None,
            None,
            "Read an account's password from this file's first line: --name logs in with it, and /login and /register use it "
            "instead of asking. Keep the file private (chmod 600).",
        ],
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


def read_password_file(path: str) -> Secret:
    """The password in ``path``: its first line, without the line end.

    Raises ``OSError`` if it cannot be read and ``ValueError`` if it is
    empty or not UTF-8 (the messages never hold the password).  Warns on
    standard error when other users may read the file.
    """
    with open(path, "rb") as handle:
        data = handle.read(64 * 1024)
        mode = os.fstat(handle.fileno()).st_mode
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise ValueError("its first line is empty")
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        sys.stderr.write(f"chatd-client: warning: other users can read {path} (chmod 600 it)\n")
    return Secret(password)


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
    password: Secret | None = None
    if options["password-file"]:
        try:
            password = read_password_file(options["password-file"])
        except (OSError, ValueError) as problem:
            reason = problem.strerror if isinstance(problem, OSError) and problem.strerror else str(problem)
            sys.stderr.write(f"chatd-client: cannot use --password-file {options['password-file']}: {reason}\n")
            raise SystemExit(2)
    keyboard = Keyboard.for_stdin()
    if keyboard is not None:
        # Echo back on however the client ends (a password prompt may be
        # up): at exit, and when the reactor stops (SIGINT, SIGTERM).
        atexit.register(keyboard.restore)
        reactor.addSystemEventTrigger("before", "shutdown", keyboard.restore)

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
        keyboard=keyboard,
        password_file=password,
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

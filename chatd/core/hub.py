"""The hub: the one place that knows every user, room and message.

It validates logins and messages, stores each accepted message in the
history store *before* anyone receives it, then fans it out: the message
is encoded once and the same bytes go to every member of the room.

Accepted messages are batched: the first one of a reactor turn schedules
a flush (``callLater(0)``), which commits the whole batch in one
transaction and only then delivers it.  Connections that posted wait for
that flush before handling their next request (:meth:`Hub.after_flush`),
so each connection still sees its responses in request order.

When another process holds the database locked, the commit fails at
once instead of waiting (waiting would freeze every user): the batch
stays pending and the commit is tried again a little later, messages
accepted meanwhile joining the batch.  Nothing of it is delivered, and
no waiting connection goes on, before it is stored, or has failed after
``RETRY_FOR`` seconds of tries (then its senders get ``server_busy``).
Nothing here is module-level: a test may build as many hubs as it likes.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

from chatd import messages
from twisted.logger import Logger

from chatd.stores.history import HistoryBusy, HistoryError, HistoryStore, StoredMessage
from chatd.messages import ChatError
from chatd.metrics import Metrics

LOBBY = "#lobby"

#: Commits the database refused as locked are tried again after
#: ``RETRY_FIRST`` seconds, each wait doubling up to ``RETRY_MAX``; after
#: ``RETRY_FOR`` seconds of tries the batch fails.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
RETRY_FOR = 5.0

_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
# Unicode category Cc except \t (U+0009) and \n (U+000A).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Member(Protocol):
    """A logged-in connection, as the hub sees it."""

    name: str | None

    def deliver(self, message: StoredMessage) -> None:
        """Send an accepted message to this member."""

    def deliver_many(self, batch: list[StoredMessage], lines: bytes) -> None:
        """Send a batch of messages; ``lines`` is all of them in lines framing."""

    def deliver_own(self, message: StoredMessage, ref: Any) -> None:
        """Send this member's own message back, carrying its request's ``ref``."""

    def message_failed(self, message: StoredMessage, ref: Any) -> None:
        """This member's message could not be stored."""

    def presence(self, user: str, status: str, room: str) -> None:
        """``user`` came (``online``) or went (``offline``) in ``room``."""

    def name_lost(self) -> None:
        """Another node owns this member's name now (clustered hubs)."""


def clean_text(text: str) -> str:
    """Remove control characters other than newline and tab."""
    return _CONTROL.sub("", text)


class Hub:
    """User registry, the room ``#lobby``, and message fan-out."""

    log = Logger()

    def __init__(self, clock: Any, history: HistoryStore, max_message: int = 2000, metrics: Metrics | None = None) -> None:
        self.clock = clock
        self.history = history
        self.max_message = max_message
        self.metrics = metrics if metrics is not None else Metrics()
        # Keyed by the lower-cased name; dict order is login order.
        self._members: dict[str, Member] = {}
        self._batch: list[tuple[StoredMessage, Member, Any]] = []
        self._after_flush: list[Any] = []
        self._flush_call: Any = None
        # While the database refuses the batch as locked: since when, and
        # the wait before the next try.
        self._busy_since: float | None = None
        self._retry_delay = RETRY_FIRST

    def now(self) -> str:
        """The reactor's current time as a protocol timestamp."""
        return messages.format_timestamp(self.clock.seconds())

    @staticmethod
    def check_name(name: Any) -> None:
        """``invalid_username`` or ``name_taken`` (reserved) for a bad name."""
        if not isinstance(name, str) or not _USERNAME.fullmatch(name):
            raise ChatError(
                messages.INVALID_USERNAME,
                "Invalid username: use 1 to 32 characters, each a letter A-Z or a-z or a digit 0-9.",
            )
        if name.lower() == messages.SERVER_SENDER:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is reserved.")

    def login(self, member: Member, name: Any) -> str:
        """Register ``member`` under ``name``; return the name as given."""
        self.check_name(name)
        key = name.lower()
        if key in self._members:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")
        self._members[key] = member
        self._announce(name, "online", member)
        return name

    def logout(self, member: Member) -> None:
        """Remove ``member`` from the registry (its name is free at once)."""
        if member.name is not None and self._members.get(member.name.lower()) is member:
            del self._members[member.name.lower()]
            self._announce(member.name, "offline", member)

    def _announce(self, name: str, status: str, subject: Member) -> None:
        for member in list(self._members.values()):
            if member is not subject:
                member.presence(name, status, LOBBY)

    def names(self) -> list[str]:
        """Logged-in usernames in login order."""
        return [member.name for member in self._members.values() if member.name is not None]

    def is_member(self, member: Member) -> bool:
        """Whether ``member`` is currently logged in."""
        return member.name is not None and self._members.get(member.name.lower()) is member

    def recent(self, limit: int | None) -> list[StoredMessage]:
        """The newest ``limit`` stored messages of the lobby, oldest first."""
        return self.history.recent(LOBBY, limit)

    def page(self, before: int | None, after: int | None, limit: int) -> tuple[list[StoredMessage], bool]:
        """A page of the lobby's history (see :meth:`HistoryStore.page`)."""
        return self.history.page(LOBBY, before=before, after=after, limit=limit)

    def post(self, member: Member, text: str, ref: Any = None) -> StoredMessage | None:
        """Validate ``text`` from ``member`` and queue it to be stored, then delivered."""
        assert member.name is not None
        text = self.checked_text(text)
        message = self.history.append(LOBBY, member.name, text, self.now())
        self._batch.append((message, member, ref))
        self._schedule_flush()
        return message

    def checked_text(self, text: str) -> str:
        """The message text cleaned, or ``empty_message``/``message_too_long``."""
        text = clean_text(text)
        if not text.strip():
            raise ChatError(messages.EMPTY_MESSAGE, "Message is empty.")
        if len(text) > self.max_message:
            raise ChatError(
                messages.MESSAGE_TOO_LONG,
                f"Message too long: {len(text)} characters, the limit is {self.max_message}.",
            )
        return text

    def after_flush(self, action: Any, member: Member | None = None) -> None:
        """Run ``action`` after the pending batch is stored and delivered."""
        if not self._batch:
            action()
            return
        self._after_flush.append(action)

    def flush(self) -> None:
        """Store the pending batch in one transaction, then deliver it.

        Called directly (at shutdown) this is one last try, synchronous
        and quick: a batch the database still refuses fails at once.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._commit(last_try=True)

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self._commit(last_try=False)

    def _commit(self, last_try: bool) -> None:
        """Commit the pending batch; deliver it, fail it or try again later."""
        retry = not last_try and not self._retries_exhausted()
        started = time.perf_counter()
        try:
            self.history.commit(retry=retry)
        except HistoryBusy as problem:
            if retry:
                self._retry_later(str(problem))
                return
            self._finish(failure=problem)
        except HistoryError as problem:
            self._finish(failure=problem)
        else:
            self._finish(seconds=time.perf_counter() - started)

    def _finish(self, failure: HistoryError | None = None, seconds: float = 0.0) -> None:
        """The batch is stored (deliver it) or lost; then run the waiting actions."""
        batch, self._batch = self._batch, []
        actions, self._after_flush = self._after_flush, []
        if self._busy_since is not None:
            waited = self.clock.seconds() - self._busy_since
            self._busy_since = None
            if failure is None:
                self.log.info("history database free again: {count} messages stored after {waited:.2f} s", count=len(batch), waited=waited)
        if failure is not None:
            self.log.error("could not store {count} messages: {problem}", count=len(batch), problem=str(failure))
            for message, origin, ref in batch:
                origin.message_failed(message, ref)
        elif batch:
            self.metrics.history_write_seconds.observe(seconds)
            self.metrics.messages_accepted.inc(len(batch))
            self._fan_out(batch)
        for action in actions:
            action()

    def _retries_exhausted(self) -> bool:
        return self._busy_since is not None and self.clock.seconds() - self._busy_since >= RETRY_FOR

    def _retry_later(self, problem: str) -> None:
        """Keep the batch pending and try its commit again a little later."""
        now = self.clock.seconds()
        if self._busy_since is None:
            self._busy_since = now
            self._retry_delay = RETRY_FIRST
            self.log.warn("history database busy, {count} messages wait: {problem}", count=len(self._batch), problem=problem)
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        # The last try falls on the bound, not up to RETRY_MAX after it.
        delay = min(self._retry_delay, max(0.0, self._busy_since + RETRY_FOR - now))
        self._flush_call = self.clock.callLater(delay, self._scheduled_flush)

    def _schedule_flush(self) -> None:
        # While a retry is scheduled, new messages join its batch.
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._scheduled_flush)

    def _fan_out(self, batch: list[tuple[StoredMessage, Member, Any]]) -> None:
        """Deliver a stored batch to every member.

        The batch is encoded once, as one block of lines, and that same
        block is written to every lines-framed member: one write per
        member per batch, not one per message.  Only a sender whose
        request carried a ``ref`` gets its own echo re-encoded, with it.
        """
        stored = [message for message, _origin, _ref in batch]
        lines = b"".join(message.line for message in stored)
        with_ref = {id(origin) for _message, origin, ref in batch if ref is not None}
        # A member may drop out while we deliver: iterate over a snapshot.
        recipients = list(self._members.values())
        self.metrics.deliveries.inc(len(stored) * len(recipients))
        for recipient in recipients:
            if id(recipient) not in with_ref:
                recipient.deliver_many(stored, lines)
                continue
            for message, origin, ref in batch:
                if origin is recipient and ref is not None:
                    recipient.deliver_own(message, ref)
                else:
                    recipient.deliver(message)

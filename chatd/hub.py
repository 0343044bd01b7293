"""The hub: the one place that knows every user, room and message.

It validates logins and messages, stores each accepted message in the
history store *before* anyone receives it, then fans it out: the message
is encoded once and the same bytes go to every member of the room.
Nothing here is module-level: a test may build as many hubs as it likes.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from chatd import messages
from chatd.history import HistoryStore, StoredMessage
from chatd.messages import ChatError

LOBBY = "#lobby"

_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
# Unicode category Cc except \t (U+0009) and \n (U+000A).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Member(Protocol):
    """A logged-in connection, as the hub sees it."""

    name: str | None

    def deliver(self, message: StoredMessage) -> None:
        """Send an accepted message to this member."""


def clean_text(text: str) -> str:
    """Remove control characters other than newline and tab."""
    return _CONTROL.sub("", text)


class Hub:
    """User registry, the room ``#lobby``, and message fan-out."""

    def __init__(self, clock: Any, history: HistoryStore, max_message: int = 2000) -> None:
        self.clock = clock
        self.history = history
        self.max_message = max_message
        # Keyed by the lower-cased name; dict order is login order.
        self._members: dict[str, Member] = {}

    def now(self) -> str:
        """The reactor's current time as a protocol timestamp."""
        return messages.format_timestamp(self.clock.seconds())

    def login(self, member: Member, name: Any) -> str:
        """Register ``member`` under ``name``; return the name as given."""
        if not isinstance(name, str) or not _USERNAME.fullmatch(name):
            raise ChatError(
                messages.INVALID_USERNAME,
                "Invalid username: use 1 to 32 characters, each a letter A-Z or a-z or a digit 0-9.",
            )
        key = name.lower()
        if key == messages.SERVER_SENDER:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is reserved.")
        if key in self._members:
            raise ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")
        self._members[key] = member
        return name

    def logout(self, member: Member) -> None:
        """Remove ``member`` from the registry (its name is free at once)."""
        if member.name is not None and self._members.get(member.name.lower()) is member:
            del self._members[member.name.lower()]

    def names(self) -> list[str]:
        """Logged-in usernames in login order."""
        return [member.name for member in self._members.values() if member.name is not None]

    def is_member(self, member: Member) -> bool:
        """Whether ``member`` is currently logged in."""
        return member.name is not None and self._members.get(member.name.lower()) is member

    def recent(self, limit: int | None) -> list[StoredMessage]:
        """The newest ``limit`` messages of the lobby, oldest first."""
        return self.history.recent(LOBBY, limit)

    def post(self, member: Member, text: str) -> StoredMessage:
        """Validate, store, then deliver ``text`` from ``member`` to everyone."""
        assert member.name is not None
        text = clean_text(text)
        if not text.strip():
            raise ChatError(messages.EMPTY_MESSAGE, "Message is empty.")
        if len(text) > self.max_message:
            raise ChatError(
                messages.MESSAGE_TOO_LONG,
                f"Message too long: {len(text)} characters, the limit is {self.max_message}.",
            )
        message = self.history.append(LOBBY, member.name, text, self.now())
        # A member may drop out while we deliver: iterate over a snapshot.
        for recipient in list(self._members.values()):
            recipient.deliver(message)
        return message

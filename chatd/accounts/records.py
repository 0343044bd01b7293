"""What the stores keep of accounts and moderation: plain data.

:class:`AccountRecord` is an account (PROTOCOL.md section 6.4): its
name as registered and its password's Argon2id PHC string, never the
password.  :class:`Restriction` is a ban or a mute of a name in a room
(section 6.5), with its optional end.  The hub decides what changes
them; the stores (:mod:`chatd.stores.history`) only keep them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class AccountRecord:
    """An account: ``name`` as registered, ``password_hash`` a PHC string."""

    name: str
    # Not in the repr: a hash is no password, but it has no business in logs.
    password_hash: str = field(repr=False)
    created: str  # a protocol timestamp (chatd.messages.format_timestamp)

    @property
    def key(self) -> str:
        """The name compared case-insensitively (ASCII, as names compare)."""
        return self.name.lower()

    def with_hash(self, password_hash: str) -> AccountRecord:
        """The record with a new password hash (a changed password, or a re-hash)."""
        return replace(self, password_hash=password_hash)


@dataclass(frozen=True)
class Restriction:
    """A ban or a mute: ``name`` (as the moderator spelled it) in ``room``.

    ``expires`` is when it ends by itself, in POSIX seconds; None: when
    it is lifted (``unban``, ``unmute``).  ``by`` is the moderator's
    name, ``comment`` the cleaned comment (``""``: none), ``created`` a
    protocol timestamp.
    """

    room: str
    name: str
    expires: float | None = None
    by: str | None = None
    comment: str = ""
    created: str | None = None

    @property
    def room_key(self) -> str:
        """The room compared case-insensitively."""
        return self.room.lower()

    @property
    def key(self) -> str:
        """The name compared case-insensitively: a ban of ``Bob`` holds ``bob``."""
        return self.name.lower()

    def active(self, now: float) -> bool:
        """Whether it still holds at ``now`` (POSIX seconds)."""
        return self.expires is None or now < self.expires

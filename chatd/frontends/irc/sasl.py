"""SASL PLAIN for the IRC front-end (PROTOCOL.md section 7.2).

:class:`PlainExchange` is one ``AUTHENTICATE`` exchange, pure: it takes
the client's chunks (at most 400 bytes each, at most 1,600 bytes in all:
the buffer is bounded) and says what to answer; the password itself is
checked by an :data:`AccountCheck`, a callable ``check(name, password)``
returning a Deferred that fires with the account's canonical name or
fails with a :class:`~chatd.messages.ChatError` (``auth_failed``,
``rate_limited``, ``forbidden``).  :func:`no_accounts` is the check of a
server without accounts: every attempt fails.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import Deferred, fail

from chatd.messages import ChatError

#: The core's error code for a wrong name or password (section 6.4).
AUTH_FAILED = "auth_failed"

#: A chunk of a client's response: at most this many bytes (base64).
CHUNK = 400

#: A whole response: at most this many bytes of base64 (section 7.2).
MAX_RESPONSE = 1600

#: Checks a name and password: fires with the account's canonical name,
#: or fails with ``ChatError`` (``auth_failed``, ``rate_limited``, ...).
AccountCheck = Callable[[str, str], Deferred[str]]


def no_accounts(name: str, password: str) -> Deferred[str]:
    """The check of a server without accounts: never an account."""
    return fail(ChatError(AUTH_FAILED, "There are no accounts on this server."))


@dataclass(frozen=True)
class Credentials:
    """A decoded PLAIN response."""

    authcid: str
    password: str


@dataclass(frozen=True)
class Step:
    """What the exchange says after a chunk: ``more`` (wait for the next
    chunk), ``done`` with ``credentials``, or ``failed`` with the numeric
    to send (904 or 905)."""

    kind: str
    credentials: Credentials | None = None
    numeric: str = ""


MORE = Step("more")


def decode_plain(response: bytes) -> Credentials | None:
    """``[authzid] NUL authcid NUL passwd`` (RFC 4616), or None if it is
    not one this server accepts: bad base64 or UTF-8, not three fields, an
    empty authcid or password, an authzid other than the authcid."""
    try:
        raw = base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        return None
    fields = raw.split(b"\x00")
    if len(fields) != 3:
        return None
    try:
        authzid, authcid, password = (field.decode("utf-8") for field in fields)
    except UnicodeDecodeError:
        return None
    if not authcid or not password:
        return None
    if authzid and authzid.lower() != authcid.lower():
        return None
    return Credentials(authcid, password)


class PlainExchange:
    """One SASL PLAIN exchange after ``AUTHENTICATE PLAIN``: the chunks,
    bounded, until the response is whole."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: str) -> Step:
        """One ``AUTHENTICATE`` parameter (``+`` ends a response whose last
        chunk was exactly 400 bytes, or is an empty response)."""
        data = chunk.encode("utf-8")
        if data == b"+":
            return self._finish()
        if len(data) > CHUNK:
            return Step("failed", numeric="905")
        self._size += len(data)
        if self._size > MAX_RESPONSE:
            return Step("failed", numeric="904")
        self._chunks.append(data)
        if len(data) == CHUNK:
            return MORE
        return self._finish()

    def _finish(self) -> Step:
        credentials = decode_plain(b"".join(self._chunks))
        self._chunks.clear()
        if credentials is None:
            return Step("failed", numeric="904")
        return Step("done", credentials=credentials)

"""How the JSON front-end writes stored messages: ``message`` responses.

The core hands out plain :class:`~chatd.stores.history.StoredMessage`
data; this module turns it into the protocol's bytes.  A fan-out batch is
encoded once (:func:`delivery_lines`, :func:`delivery_payloads`, cached on
the :class:`~chatd.core.rooms.Delivery`) and the same bytes go to every
JSON member; v1 history sends the same encoding as JSON strings.
"""

from __future__ import annotations

from typing import Any

from chatd import messages
from chatd.core.rooms import LOBBY, Delivery
from chatd.stores.history import StoredMessage


def message_response(message: StoredMessage, **extra: Any) -> dict[str, Any]:
    """The ``message`` response for ``message`` (``extra`` keys last).

    A ``#lobby`` message carries no ``room`` key (section 6.1: the same
    bytes serve v1 and v2); another room's carries ``room``, a DM ``to``;
    an IRC NOTICE ``"notice": true`` (section 7.1).
    """
    if message.notice:
        extra = {"notice": True, **extra}
    if message.to is not None:
        if message.offline:
            extra = {"offline": True, **extra}
        return messages.response(
            "message", message.text, message.timestamp, sender=message.sender, id=message.id, to=message.to, **extra
        )
    if message.room != LOBBY:
        return messages.response(
            "message", message.text, message.timestamp, sender=message.sender, id=message.id, room=message.room, **extra
        )
    return messages.response("message", message.text, message.timestamp, sender=message.sender, id=message.id, **extra)


def encode_message(message: StoredMessage) -> bytes:
    """``message`` as one encoded ``message`` response (no newline)."""
    return messages.encode(message_response(message))


def _payloads(batch: list[StoredMessage]) -> list[bytes]:
    return [encode_message(message) for message in batch]


def _lines(batch: list[StoredMessage]) -> bytes:
    return b"".join(encode_message(message) + b"\n" for message in batch)


def delivery_payloads(delivery: Delivery) -> list[bytes]:
    """Each message of the batch encoded, once for every member."""
    payloads: list[bytes] = delivery.encoded("json-payloads", _payloads)
    return payloads


def delivery_lines(delivery: Delivery) -> bytes:
    """The whole batch as JSON lines, once for every member."""
    if "json-payloads" in delivery.cached:
        # Already encoded for a classic member: join, do not encode again.
        joined: bytes = delivery.encoded("json-lines", lambda _: b"".join(p + b"\n" for p in delivery_payloads(delivery)))
        return joined
    lines: bytes = delivery.encoded("json-lines", _lines)
    return lines

"""How the IRC front-end writes stored messages: PRIVMSG and NOTICE lines.

A stored message becomes one line or more (PROTOCOL.md section 7.4): its
text is split at each ``\\n`` (empty pieces dropped), then at UTF-8
character boundaries so that each line without tags fits 512 bytes.
Every line carries the message's ``time``; the first its msgid, the k-th
``<msgid>/<k>``.  What a recipient gets of the tags depends on what it
negotiated (:data:`TAGS_NONE`, :data:`TAGS_TIME`, :data:`TAGS_ALL`), so
a fan-out batch is encoded once per tag mode and cached on the
:class:`~chatd.core.rooms.Delivery` (as the JSON front-end caches its
own encoding), and the same bytes go to every IRC member.

Client-only tags (``+name``) of a message posted on this node ride on
its draft (:class:`ClientTags`); they are never stored.
"""

from __future__ import annotations

from typing import Callable, Iterable

from chatd.core.rooms import Delivery, Draft, dm_parties, is_dm
from chatd.frontends.irc.lines import MAX_LINE_BYTES, assemble, build, cut_utf8, format_tags
from chatd.stores.history import StoredMessage

#: What a recipient gets of a line's tags: none, ``time`` only
#: (``server-time``), or all of them (``message-tags``).
TAGS_NONE = 0
TAGS_TIME = 1
TAGS_ALL = 2
#: The bits of a tag mode that say which of the three it is.
TAGS_BASE = 3
#: A flag on a tag mode: the recipient negotiated ``account-tag`` (an
#: author's account rides on its messages, whatever the rest).
TAGS_ACCOUNT = 4

#: One line to send, apart: its serialised tags (for its recipient's tag
#: mode, without ``@``) and its tag-less part (no CR LF).
OutLine = tuple[bytes, bytes]

#: The source of a message's author: ``nick!user@host``.
SourceOf = Callable[[str], str]

#: The tags an author's messages carry for a recipient in a tag mode
#: (``account=...``, ``bot``), serialised; ``""`` for none.
SenderTags = Callable[[str, int], str]


def no_sender_tags(name: str, mode: int) -> str:
    """No author tags (history, tests)."""
    return ""


def conversation_key(room: str) -> str:
    """The msgid key of a room or conversation (section 7.4): the room in
    lower case, or ``dm:<a>:<b>`` with both names lower-cased, sorted."""
    if is_dm(room):
        parties = dm_parties(room)
        if len(parties) == 1:
            parties = parties * 2  # a conversation with oneself
        return "dm:" + ":".join(parties)
    return room.lower()


def msgid(message: StoredMessage) -> str:
    """A stored message's msgid: ``<key>:<id>``, the same on every node."""
    return f"{conversation_key(message.room)}:{message.id}"


def target_of(message: StoredMessage) -> str:
    """Where a message went, as IRC names it: the room, or the recipient."""
    return message.to if message.to is not None else message.room


def is_notice(message: StoredMessage, draft: Draft | None) -> bool:
    """Whether a message was a NOTICE: its draft says so here; a stored
    message may say so itself (once the store keeps it)."""
    if draft is not None:
        return draft.notice
    return bool(getattr(message, "notice", False))


def split_text(text: str, prefix: int) -> list[str]:
    """``text`` as the pieces of its lines: split at ``\\n`` (empty pieces
    dropped), then so that ``prefix`` bytes, the piece and CR LF fit 512."""
    limit = max(1, MAX_LINE_BYTES - 2 - prefix)
    pieces: list[str] = []
    for part in text.split("\n"):
        if part:
            pieces.extend(cut_utf8(part, limit))
    return pieces or [text.replace("\n", " ")]


def message_lines(
    message: StoredMessage,
    source: str,
    mode: int,
    notice: bool = False,
    client_tags: str = "",
    extra_tags: str = "",
    sender_tags: str = "",
) -> list[OutLine]:
    """The lines of one stored message for a recipient in tag ``mode``.

    ``client_tags`` (serialised ``+name`` tags) and ``extra_tags`` (e.g.
    ``batch=...``) are added in mode :data:`TAGS_ALL`; ``extra_tags`` also
    in the others where it is a ``batch`` tag the recipient asked for;
    ``sender_tags`` (the author's ``account``, ``bot``) as the caller
    chose them for ``mode``.
    """
    base = mode & TAGS_BASE
    command = "NOTICE" if notice else "PRIVMSG"
    target = target_of(message)
    prefix = len(f":{source} {command} {target} :".encode("utf-8"))
    ident = msgid(message)
    lines: list[OutLine] = []
    for k, piece in enumerate(split_text(message.text, prefix), start=1):
        parts: list[str] = []
        if extra_tags:
            parts.append(extra_tags)
        if base == TAGS_ALL:
            parts.append("msgid=" + (ident if k == 1 else f"{ident}/{k}"))
        if base != TAGS_NONE:
            parts.append("time=" + message.timestamp)
        if sender_tags:
            parts.append(sender_tags)
        if base == TAGS_ALL and client_tags:
            parts.append(client_tags)
        lines.append((";".join(parts).encode("utf-8"), build(command, [target, piece], source, trailing=True)))
    return lines


class ClientTags:
    """The client-only tags of drafts posted on this node, until delivered.

    The IRC front-end keeps them here (never in the store) so that the
    delivery of a message carries them to recipients with
    ``message-tags``, and forgets them once the draft is settled.
    """

    def __init__(self) -> None:
        self._tags: dict[int, str] = {}

    def keep(self, draft: Draft, tags: dict[str, str]) -> None:
        """Remember ``draft``'s client-only tags (serialised)."""
        if tags:
            self._tags[id(draft)] = format_tags(tags)

    def of(self, draft: Draft | None) -> str:
        """The serialised client-only tags of ``draft`` (``""``: none)."""
        return self._tags.get(id(draft), "") if draft is not None else ""

    def forget(self, draft: Draft) -> None:
        """The draft is settled: its tags are no longer needed."""
        self._tags.pop(id(draft), None)

    def __len__(self) -> int:
        return len(self._tags)


def delivery_lines(
    delivery: Delivery,
    mode: int,
    source_of: SourceOf,
    client_tags: ClientTags,
    sender_tags: SenderTags = no_sender_tags,
) -> list[list[OutLine]]:
    """Each message of the batch as its lines in tag ``mode``, encoded
    once per batch for every IRC member."""

    def encode(messages: Iterable[StoredMessage]) -> list[list[OutLine]]:
        return [
            message_lines(
                message,
                source_of(message.sender),
                mode,
                is_notice(message, draft),
                client_tags.of(draft),
                sender_tags=sender_tags(message.sender, mode),
            )
            for message, draft in zip(delivery.messages, delivery.drafts)
        ]

    lines: list[list[OutLine]] = delivery.encoded(f"irc-lines-{mode}", encode)
    return lines


def delivery_block(
    delivery: Delivery,
    mode: int,
    source_of: SourceOf,
    client_tags: ClientTags,
    sender_tags: SenderTags = no_sender_tags,
) -> bytes:
    """The whole batch, ready to write, in tag ``mode``: once per batch."""

    def encode(_: object) -> bytes:
        return b"".join(
            assemble(tags, body)
            for message_lines_ in delivery_lines(delivery, mode, source_of, client_tags, sender_tags)
            for tags, body in message_lines_
        )

    block: bytes = delivery.encoded(f"irc-block-{mode}", encode)
    return block

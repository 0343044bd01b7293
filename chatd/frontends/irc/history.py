"""CHATHISTORY (PROTOCOL.md section 7.4) over the store JSON ``history`` pages.

A reference is a msgid (``msgid=<key>:<id>[/<k>]``: the chatd id of that
target) or a timestamp (``timestamp=...``); both become id bounds, and
each subcommand one or two pages of the hub's history
(:meth:`chatd.core.hub.Hub.page`).  A timestamp becomes ids by reading
the room's history back from its newest message, a page at a time, as far
as :data:`SCAN_PAGES` pages.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from chatd.core.hub import DEFAULT_ROOM, is_valid_name
from chatd.core.rooms import dm_key
from chatd.frontends.irc.connection import IRCConnection, then
from chatd.frontends.irc.encoding import conversation_key, is_notice, message_lines
from chatd.frontends.irc.lines import Line
from chatd.messages import ChatError, format_timestamp
from chatd.stores.history import MAX_PAGE, StoredMessage

#: Reads a page of one target's history: ``(before, after, limit)`` to
#: ``(messages, more)``, as :meth:`chatd.core.hub.Hub.page` does.
Pager = Callable[[int | None, int | None, int], Deferred[tuple[list[StoredMessage], bool]]]

#: Pages read back at most to find where a timestamp falls.
SCAN_PAGES = 20

SUBCOMMANDS = ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN")


class BadParams(Exception):
    """INVALID_PARAMS: a bad reference or limit."""


@dataclass(frozen=True)
class Ref:
    """A reference: an id, or a timestamp (normalised), or ``*``."""

    id: int | None = None
    timestamp: str | None = None

    @property
    def star(self) -> bool:
        return self.id is None and self.timestamp is None


def parse_timestamp(text: str) -> str:
    """``YYYY-MM-DDThh:mm:ss[.sss]Z`` as a protocol timestamp (milliseconds)."""
    value = text[:-1] if text.endswith("Z") else text
    for pattern in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = datetime.datetime.strptime(value, pattern).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            continue
        if moment.year < 1970:
            return "1970-01-01T00:00:00.000Z"
        return format_timestamp(moment.timestamp())
    raise BadParams(f"bad timestamp {text[:40]!r}")


def parse_ref(text: str, key: str, star: bool = False) -> Ref:
    """A reference for the target whose msgid key is ``key``."""
    if text == "*" and star:
        return Ref()
    kind, _, value = text.partition("=")
    if kind == "timestamp":
        return Ref(timestamp=parse_timestamp(value))
    if kind == "msgid":
        prefix, _, ident = value.rpartition(":")
        ident = ident.split("/", 1)[0]
        if prefix.lower() != key or not ident.isdigit():
            raise BadParams("that msgid is not a message of this target")
        return Ref(id=int(ident))
    raise BadParams(f"bad reference {text[:40]!r}")


def parse_limit(text: str) -> int:
    """1 or more; over 500 counts as 500."""
    if not text.isdigit() or int(text) < 1:
        raise BadParams("the limit must be 1 or more")
    return min(int(text), MAX_PAGE)


class History(IRCConnection):
    """``CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN|TARGETS``."""

    def irc_CHATHISTORY(self, line: Line) -> Deferred[Any] | None:
        """Needs ``draft/chathistory`` (else 421)."""
        from chatd.frontends.irc import numerics as N

        if "draft/chathistory" not in self.caps:
            self.numeric(N.ERR_UNKNOWNCOMMAND, "CHATHISTORY", "Unknown command")
            return None
        params = line.params
        sub = params[0].upper() if params else ""
        if sub == "TARGETS":
            return self._targets(params[1:])
        if sub not in SUBCOMMANDS:
            self.fail("CHATHISTORY", "INVALID_PARAMS", sub[:32] or "*", "Unknown subcommand")
            return None
        needed = 5 if sub == "BETWEEN" else 4
        if len(params) < needed:
            self.fail("CHATHISTORY", "INVALID_PARAMS", sub, "Not enough parameters")
            return None
        target = params[1]
        resolved = self._history_target(target)
        if resolved is None:
            self.fail("CHATHISTORY", "INVALID_TARGET", sub, target[:64], "Messages could not be retrieved")
            return None
        pager, key, shown = resolved
        try:
            first = parse_ref(params[2], key, star=sub == "LATEST")
            second = parse_ref(params[3], key) if sub == "BETWEEN" else None
            limit = parse_limit(params[4] if sub == "BETWEEN" else params[3])
        except BadParams as problem:
            self.fail("CHATHISTORY", "INVALID_PARAMS", sub, str(problem))
            return None
        if pager is None:
            d: Deferred[list[StoredMessage]] = succeed([])  # a guest's DMs are never stored
        else:
            d = self._select(pager, sub, first, second, limit)

        def failed(failure: Any) -> None:
            self.log.failure("CHATHISTORY failed", failure)
            self.fail("CHATHISTORY", "MESSAGE_ERROR", sub, shown, "Messages could not be retrieved")

        return d.addCallbacks(lambda found: self._send_history(shown, found), failed)

    def _history_target(self, target: str) -> tuple[Pager | None, str, str] | None:
        """``(pager, msgid key, name shown)``, or None (INVALID_TARGET).

        A room needs membership; a nick gives the DMs the client's account
        may read (section 6.3, :meth:`chatd.core.hub.Hub.dm_page`): a guest
        has none (no pager).
        """
        hub = self.hub
        if target.startswith("#"):
            try:
                record = hub.record(target)
            except ChatError:
                return None
            if not hub.in_room(self, record.key):
                return None
            room = DEFAULT_ROOM if record.key == DEFAULT_ROOM else record.name
            return (lambda before, after, limit: hub.page(room, before, after, limit)), record.key, record.name
        if not is_valid_name(target):
            return None
        key = conversation_key(dm_key(self.me, target))
        if self.account is None:
            return None, key, target

        def pager(before: int | None, after: int | None, limit: int) -> Deferred[tuple[list[StoredMessage], bool]]:
            return maybeDeferred(hub.dm_page, self, target, before, after, limit)

        return pager, key, target

    def _select(self, pager: Pager, sub: str, first: Ref, second: Ref | None, limit: int) -> Deferred[list[StoredMessage]]:
        """The messages a subcommand selects, oldest first."""
        stamps = [ref.timestamp for ref in (first, second) if ref is not None and ref.timestamp is not None]
        if not stamps:
            return self._by_ids(pager, sub, first, second, limit, {})
        d = self._bounds(pager, stamps)
        return d.addCallback(lambda bounds: self._by_ids(pager, sub, first, second, limit, bounds))

    def _bounds(self, pager: Pager, stamps: list[str]) -> Deferred[dict[str, tuple[int, int | None]]]:
        """For each timestamp: ``(last id at or before it (0: none), first
        id at or after it (None: none))``."""
        bounds: dict[str, tuple[int, int | None]] = {}
        pending = {stamp: [0, None, False] for stamp in stamps}  # last_le, first_ge, settled

        def scan(page: tuple[list[StoredMessage], bool], pages: int) -> Any:
            found, more = page
            for message in reversed(found):
                for stamp, state in pending.items():
                    if state[2]:
                        continue
                    if message.timestamp >= stamp:
                        state[1] = message.id
                    if message.timestamp <= stamp and not state[0]:
                        state[0] = message.id
                    if message.timestamp < stamp:
                        state[2] = True
            if found and more and pages < SCAN_PAGES and not all(state[2] for state in pending.values()):
                return pager(found[0].id, None, MAX_PAGE).addCallback(scan, pages + 1)
            for stamp, state in pending.items():
                bounds[stamp] = (int(state[0] or 0), state[1] if state[1] is None else int(state[1]))
            return bounds

        return pager(None, None, MAX_PAGE).addCallback(scan, 1)

    def _by_ids(
        self,
        pager: Pager,
        sub: str,
        first: Ref,
        second: Ref | None,
        limit: int,
        bounds: dict[str, tuple[int, int | None]],
    ) -> Deferred[list[StoredMessage]]:
        def after_id(ref: Ref) -> int:
            """The id messages after ``ref`` are greater than."""
            if ref.id is not None:
                return ref.id
            assert ref.timestamp is not None
            return bounds[ref.timestamp][0]

        def before_id(ref: Ref) -> int | None:
            """The id messages before ``ref`` are smaller than (None: any)."""
            if ref.id is not None:
                return ref.id
            assert ref.timestamp is not None
            return bounds[ref.timestamp][1]

        def page(before: int | None, after: int | None, count: int) -> Deferred[list[StoredMessage]]:
            return pager(before, after, count).addCallback(lambda result: list(result[0]))

        if sub == "LATEST":
            if first.star:
                return page(None, None, limit)
            floor = after_id(first)
            return page(None, None, limit).addCallback(lambda found: [m for m in found if m.id > floor])
        if sub == "BEFORE":
            ceiling = before_id(first)
            return page(ceiling, None, limit)
        if sub == "AFTER":
            return page(None, after_id(first), limit)
        if sub == "AROUND":
            center = first.id if first.id is not None else before_id(first)
            if center is None:
                return succeed([])
            earlier = (limit - 1) // 2
            later = limit - earlier

            def around(before: list[StoredMessage]) -> Deferred[list[StoredMessage]]:
                return page(None, center - 1, later).addCallback(lambda rest: before + rest)

            if earlier <= 0:
                return around([])
            return page(center, None, earlier).addCallback(around)
        assert second is not None
        if first.id is not None and second.id is not None:
            forwards = first.id <= second.id
        elif first.timestamp is not None and second.timestamp is not None:
            forwards = first.timestamp <= second.timestamp
        else:
            forwards = after_id(first) <= after_id(second)
        if forwards:
            floor, ceiling = after_id(first), before_id(second)
            return page(None, floor, limit).addCallback(
                lambda found: [m for m in found if ceiling is None or m.id < ceiling]
            )
        top, bottom = before_id(first), after_id(second)
        return page(top, None, limit).addCallback(lambda found: [m for m in found if m.id > bottom])

    def _send_history(self, shown: str, found: list[StoredMessage]) -> None:
        """A ``chathistory`` batch (or the bare lines, without ``batch``)."""
        batched = "batch" in self.caps
        ident = self.batch_id() if batched else ""
        if batched:
            self.line("BATCH", ["+" + ident, "chathistory", shown])
        mode = self.tag_mode
        extra = f"batch={ident}" if batched else ""
        for message in found:
            source = self.factory.history_source_of(message.sender)
            for tags, body in message_lines(message, source, mode, is_notice(message, None), extra_tags=extra):
                self.put(tags, body)
        if batched:
            self.line("BATCH", ["-" + ident])

    def _targets(self, params: list[str]) -> Deferred[Any] | None:
        """``TARGETS <timestamp=> <timestamp=> <limit>``: the rooms and
        conversations whose newest message lies strictly between.

        The conversations are those of ``hub.dm_partners(session)`` (the
        names an account has kept DMs with), once the core lists them.
        """
        try:
            if len(params) < 3:
                raise BadParams("Not enough parameters")
            low = parse_ref(params[0], "")
            high = parse_ref(params[1], "")
            if low.timestamp is None or high.timestamp is None:
                raise BadParams("TARGETS takes timestamps")
            limit = parse_limit(params[2])
        except BadParams as problem:
            self.fail("CHATHISTORY", "INVALID_PARAMS", "TARGETS", str(problem))
            return None
        start, end = sorted((low.timestamp, high.timestamp))
        hub = self.hub
        rooms = [DEFAULT_ROOM if room.lower() == DEFAULT_ROOM else room for room in self._rooms_in()]
        newest: list[tuple[str, str]] = []

        def collect(found: list[StoredMessage], room: str) -> None:
            if found and start < found[-1].timestamp < end:
                shown = hub.lobby.name if room == DEFAULT_ROOM else room
                newest.append((found[-1].timestamp, shown))

        def collect_dm(page: tuple[list[StoredMessage], bool], partner: str) -> None:
            found = page[0]
            if found and start < found[-1].timestamp < end:
                last = found[-1]
                # The partner as its messages spell it.
                shown = last.sender if last.sender.lower() == partner.lower() else (last.to or partner)
                newest.append((last.timestamp, shown))

        def conversations(partners: list[str]) -> Deferred[Any]:
            d: Deferred[Any] = succeed(None)
            for partner in partners:
                d = then(d, lambda partner=partner: hub.dm_page(self, partner, None, None, 1).addCallback(collect_dm, partner))  # type: ignore[misc]  # a default binds the loop's partner
            return d

        d: Deferred[Any] = succeed(None)
        for room in rooms:
            d = then(d, lambda room=room: hub.recent(room, 1).addCallback(collect, room))  # type: ignore[misc]  # a default binds the loop's room
        partners_of = getattr(hub, "dm_partners", None)
        if self.account is not None and partners_of is not None:
            # The conversations the account may read (a hub that lists them).
            d = then(d, lambda: maybeDeferred(partners_of, self).addCallback(conversations))

        def send(_: object) -> None:
            newest.sort()
            batched = "batch" in self.caps
            ident = self.batch_id() if batched else ""
            if batched:
                self.line("BATCH", ["+" + ident, "draft/chathistory-targets"])
            tags = f"batch={ident}" if batched else ""
            for stamp, name in newest[:limit]:
                self.put(self.tags_for(tags) if not batched else _batch_tags(self, ident), f":{self.server} CHATHISTORY TARGETS {name} {stamp}".encode("utf-8"))
            if batched:
                self.line("BATCH", ["-" + ident])

        return d.addCallback(send)

    def _rooms_in(self) -> list[str]:
        rooms = list(self.hub.joined_rooms(self))
        if self.hub.in_room(self, DEFAULT_ROOM):
            rooms.insert(0, self.hub.lobby.name)
        return rooms


def _batch_tags(connection: IRCConnection, ident: str) -> bytes:
    """A line's tags inside a batch: ``batch`` first, then what the client
    gets of the rest."""
    rest = connection.tags_for()
    return (f"batch={ident}".encode("ascii") + (b";" + rest if rest else b""))

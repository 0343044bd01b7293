"""The IRC commands of a registered client (PROTOCOL.md section 7.3).

Each ``irc_<COMMAND>`` turns its line into the hub's calls and answers
with lines and numerics; the core's errors map to numerics as section 7.3
lists (:meth:`~chatd.frontends.irc.connection.IRCConnection.command_failed`).
TAGMSG and CTCP never reach the core's store: they are relayed here to
the IRC sessions of the target, with a msgid that is no chatd id.
"""

from __future__ import annotations

import datetime
import fnmatch
import secrets
from typing import TYPE_CHECKING, Any, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from chatd import messages
from chatd.core.hub import DEFAULT_ROOM, Joined, is_valid_name
from chatd.core.rooms import dm_key
from chatd.frontends.irc import numerics as N
from chatd.frontends.irc.connection import IRCConnection, then
from chatd.frontends.irc.encoding import conversation_key
from chatd.frontends.irc.lines import MAX_LINE_BYTES, Line, build, format_tags
from chatd.core.moderation import Done
from chatd.frontends.irc.moderation import FLAG_LETTERS, is_lobby, mask_of
from chatd.frontends.json.requests import MAX_ROOM_LIMIT, valid_room_key
from chatd.messages import ChatError
from chatd.stores.roomstate import RoomRecord

if TYPE_CHECKING:
    from chatd.interfaces import ISession

#: Targets one PRIVMSG, NOTICE or TAGMSG may name (TARGMAX); past them: 407.
MAX_TARGETS = 4
#: Targets of one KICK (TARGMAX).
MAX_KICKS = 4
#: Nicks one USERHOST may name.
MAX_USERHOST = 5
#: The longest AWAY text.
AWAYLEN = 390
#: The user modes a client sets and unsets itself: letter -> attribute.
USER_FLAGS = {"i": "invisible", "B": "bot"}


def unix_time(timestamp: str | None) -> str:
    """A protocol timestamp (ISO 8601) as POSIX seconds, for 329 and 333."""
    if not timestamp:
        return "0"
    try:
        moment = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return "0"
    return str(int(moment.replace(tzinfo=datetime.timezone.utc).timestamp()))


def mode_string(record: RoomRecord) -> list[str]:
    """A room's modes as 324 shows them: ``+nt``, or ``+lnt 10``."""
    modes = record.modes
    if is_lobby(record):
        return ["+nt"]
    letters = "".join(letter for letter, flag in sorted(FLAG_LETTERS.items()) if modes.get(flag))
    args = []
    if record.limit is not None:
        letters = "l" + letters
        args.append(str(record.limit))
    if record.join_key is not None:
        letters = "k" + letters
        args.insert(0, record.join_key)
    return ["+" + letters, *args]


class Commands(IRCConnection):
    """Channels, messages, queries and the rest of section 7.3."""

    # -- simple ones -------------------------------------------------------------

    def irc_PING(self, line: Line) -> None:
        """``PONG`` with the token (409 without one)."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NOORIGIN, "No origin specified")
            return
        self.line("PONG", [self.server, line.params[0]], trailing=True)

    def irc_PONG(self, line: Line) -> None:
        """Nothing (any input keeps the connection alive)."""

    def irc_QUIT(self, line: Line) -> None:
        """``ERROR``, then close; the name's rooms see one QUIT."""
        comment = line.params[0] if line.params else ""
        self.line("ERROR", [f"Closing link: {self.source} (Quit: {comment})"], trailing=True, response=False)
        if self.name is not None:
            name = self.name
            self.departed()
            self.hub.logout(self, comment=comment or None)
            self.log.info("{user} quit", user=name)
            self.name = None
        self.close_after_output()

    def irc_LUSERS(self, line: Line) -> None:
        """As in the welcome."""
        self.lusers()

    def irc_MOTD(self, line: Line) -> None:
        """As in the welcome."""
        self.motd()

    def irc_AWAY(self, line: Line) -> None:
        """306 with a text, 305 without one."""
        text = line.params[0] if line.params else ""
        if text:
            self.away = text[:AWAYLEN]
            self.numeric(N.RPL_NOWAWAY, "You have been marked as being away")
        else:
            self.away = None
            self.numeric(N.RPL_UNAWAY, "You are no longer marked as being away")
        # away-notify: the IRC sessions sharing a room with this one are told.
        body = build("AWAY", [self.away] if self.away else [], self.source, trailing=bool(self.away))
        for session in self._sharing():
            if "away-notify" in session.caps and not session.closing:
                session.put(session.tags_for(), body, response=False)

    def _sharing(self) -> list[IRCConnection]:
        """This node's other IRC sessions in a room with this one."""
        found: dict[int, IRCConnection] = {}
        for room in self.rooms_in():
            local = self.hub.rooms.get(room.lower())
            for member in local.members() if local is not None else ():
                if member is not self and isinstance(member, IRCConnection):
                    found[id(member)] = member
        return list(found.values())

    def irc_OPER(self, line: Line) -> Deferred[Any] | None:
        """``OPER <account> <password>``: a server operator until it closes."""
        if len(line.params) < 2:
            self.numeric(N.ERR_NEEDMOREPARAMS, "OPER", "Not enough parameters")
            return None
        account, password = line.params[0], line.params[1]
        config = self.factory.config
        if not self.factory.accounts_on or account.lower() not in config.operators:
            self.numeric(N.ERR_NOOPERHOST, "No O-lines for your host")
            return None

        def opered(name: str) -> None:
            if not self.operator:
                self.operator = True
                self.factory.opered += 1
            self.numeric(N.RPL_YOUREOPER, "You are now an IRC operator")
            self.line("MODE", [self.me, "+o"], self.source)

        def wrong(failure: Failure) -> None:
            self.numeric(N.ERR_PASSWDMISMATCH, "Password incorrect")

        return self.factory.check_for(self.peer_host or "")(account, password).addCallbacks(opered, wrong)

    # -- JOIN, PART ----------------------------------------------------------------

    def irc_JOIN(self, line: Line) -> Deferred[Any] | None:
        """``JOIN #a,#b [key,key]`` (a key for each room that has one, in
        order); ``JOIN 0`` parts every room."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "JOIN", "Not enough parameters")
            return None
        if line.params[0] == "0":
            for room in self.rooms_in():
                self.part_one(room, None)
            return None
        d: Deferred[Any] = succeed(None)
        keys = line.params[1].split(",") if len(line.params) > 1 else []
        for index, name in enumerate(line.params[0].split(",")):
            if name:
                key = keys[index] if index < len(keys) and keys[index] else None
                d = then(d, lambda name=name, key=key: self.join_one(name, join_key=key))  # type: ignore[misc]  # defaults bind the loop's values
        return d

    def rooms_in(self) -> list[str]:
        """The rooms this session is in, ``#lobby`` included."""
        rooms = list(self.hub.joined_rooms(self))
        if self.hub.in_room(self, DEFAULT_ROOM):
            rooms.insert(0, self.hub.lobby.name)
        return rooms

    def join_one(self, name: str, autojoin: bool = False, join_key: str | None = None) -> Deferred[Any] | None:
        """One room of a JOIN: its JOIN line, topic and names; or the numeric."""
        hub = self.hub
        try:
            key = hub.room_key(name)
        except ChatError as error:
            self.command_failed(error, "JOIN", name)
            return None
        if hub.in_room(self, key):
            return None  # already joined: nothing
        record = hub.directory.get(key) if key != DEFAULT_ROOM else None
        if record is not None and self.factory.masks.banned(key, self.me) and not self._exempt():
            self.numeric(N.ERR_BANNEDFROMCHAN, record.name, "Cannot join channel (+b)")
            return None
        try:
            self.churn_check()
        except ChatError as error:
            self.command_failed(error, "JOIN", name)
            return None
        self._joining.add(key)
        d = hub.join(self, name, join_key=join_key)

        def joined(answer: Joined) -> None:
            if answer.history is None:
                return
            self.churn_taken()
            self.show_join(answer.record, answer.members)

        def failed(failure: Failure) -> None:
            error = failure.trap(ChatError) and failure.value
            assert isinstance(error, ChatError)
            self.command_failed(error, "JOIN", name)

        def done(result: object) -> None:
            self.joined_answered(key)

        return d.addCallbacks(joined, failed).addBoth(done)

    def show_join(self, record: RoomRecord, members: list[str], response: bool = True) -> None:
        """The JOIN line, the topic (332, 333) and the names (353, 366)."""
        params, trailing = self.join_params(record.name, self.me)
        self.line("JOIN", params, self.source, trailing=trailing, response=response, account=self.account)
        if record.topic:
            self.numeric(N.RPL_TOPIC, record.name, record.topic)
            self.numeric(N.RPL_TOPICWHOTIME, record.name, record.topic_by or self.server, unix_time(record.topic_set_at))
        self.send_names(record, members)

    def irc_PART(self, line: Line) -> None:
        """``PART #a,#b [:text]``: the PART line to the members, the parter too."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "PART", "Not enough parameters")
            return
        comment = line.params[1] if len(line.params) > 1 else None
        for name in line.params[0].split(","):
            if name:
                self.part_one(name, comment)

    def part_one(self, name: str, comment: str | None) -> None:
        """Leave one room."""
        try:
            self.churn_check()
            record = self.hub.part(self, name, comment, lobby=True)
        except ChatError as error:
            self.command_failed(error, "PART", name)
            return
        self.churn_taken()
        self.line("PART", [record.name, comment] if comment else [record.name], self.source)

    # -- NAMES ---------------------------------------------------------------------

    def irc_NAMES(self, line: Line) -> Deferred[Any] | None:
        """353 and 366 for a room one may read; 366 alone otherwise."""
        if not line.params or not line.params[0]:
            self.numeric(N.RPL_ENDOFNAMES, "*", "End of /NAMES list")
            return None
        name = line.params[0]
        try:
            record = self.hub.readable(self, name)
        except ChatError:
            self.numeric(N.RPL_ENDOFNAMES, name, "End of /NAMES list")
            return None
        return self.hub.names(record.name).addCallback(lambda members: self.send_names(record, members))

    def send_names(self, record: RoomRecord, members: list[str]) -> None:
        """353 lines (as many as the names need), then 366."""
        symbol = "@" if record.modes.get("secret") and not is_lobby(record) else "="
        multi = "multi-prefix" in self.caps
        userhost = "userhost-in-names" in self.caps
        entries = []
        for member in members:
            prefix = self.prefix_of(record, member, multi)
            shown = self.factory.source_of(member) if userhost else member
            entries.append(prefix + shown)
        head = f":{self.server} {N.RPL_NAMREPLY} {self.me} {symbol} {record.name} :"
        room = MAX_LINE_BYTES - 2 - len(head.encode("utf-8"))
        chunk: list[str] = []
        size = 0
        for entry in entries:
            if chunk and size + 1 + len(entry) > room:
                self.put(self.tags_for(), (head + " ".join(chunk)).encode("utf-8"))
                chunk, size = [], 0
            size += len(entry) + (1 if chunk else 0)
            chunk.append(entry)
        if chunk:
            self.put(self.tags_for(), (head + " ".join(chunk)).encode("utf-8"))
        self.numeric(N.RPL_ENDOFNAMES, record.name, "End of /NAMES list")

    def prefix_of(self, record: RoomRecord, name: str, multi: bool) -> str:
        """``@`` and/or ``+`` for a member (both with multi-prefix)."""
        lower = name.lower()
        # (Without an OPERed session anywhere here, no lookup per member.)
        op = lower in record.ops or (self.factory.opered > 0 and self._is_operator(name))
        voiced = lower in record.voiced
        if multi:
            return ("@" if op else "") + ("+" if voiced else "")
        return "@" if op else "+" if voiced else ""

    def _is_operator(self, name: str) -> bool:
        session = self.hub.session_named(name)
        return bool(getattr(session, "operator", False))

    # -- TOPIC -------------------------------------------------------------------------

    def irc_TOPIC(self, line: Line) -> Deferred[Any] | None:
        """Read: 332 and 333, or 331.  Set: TOPIC to the members."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "TOPIC", "Not enough parameters")
            return None
        name = line.params[0]
        hub = self.hub
        if len(line.params) < 2:
            try:
                record = hub.readable(self, name)
            except ChatError as error:
                self.command_failed(error, "TOPIC", name)
                return None
            if record.topic:
                self.numeric(N.RPL_TOPIC, record.name, record.topic)
                self.numeric(N.RPL_TOPICWHOTIME, record.name, record.topic_by or self.server, unix_time(record.topic_set_at))
            else:
                self.numeric(N.RPL_NOTOPIC, record.name, "No topic is set")
            return None
        try:
            record = hub.record(name)
            if not hub.in_room(self, record.key):
                raise ChatError(messages.NOT_IN_ROOM, f"You're not on {record.name}")
            self.churn_check()
        except ChatError as error:
            self.command_failed(error, "TOPIC", name)
            return None
        d = hub.topic(self, name, line.params[1], lambda _: self.churn_taken())

        def failed(failure: Failure) -> None:
            error = failure.trap(ChatError) and failure.value
            assert isinstance(error, ChatError)
            if error.code == messages.MESSAGE_TOO_LONG:
                self.fail("TOPIC", "TOO_LONG", error.text)
            else:
                self.command_failed(error, "TOPIC", record.name)

        return d.addErrback(failed)

    # -- PRIVMSG, NOTICE, TAGMSG ----------------------------------------------------

    def irc_PRIVMSG(self, line: Line) -> None:
        """Per target, a room message or a DM (401, 403, 404, 411, 412, 407)."""
        self.message(line, notice=False)

    def irc_NOTICE(self, line: Line) -> None:
        """As PRIVMSG, but never a numeric or FAIL in answer."""
        self.message(line, notice=True)

    def message(self, line: Line, notice: bool) -> None:
        command = line.command
        if not line.params or not line.params[0]:
            if not notice:
                self.numeric(N.ERR_NORECIPIENT, f"No recipient given ({command})")
            return
        if len(line.params) < 2 or not line.params[1]:
            if not notice:
                self.numeric(N.ERR_NOTEXTTOSEND, "No text to send")
            return
        text = line.params[1]
        client_tags = line.client_tags()
        for index, target in enumerate(line.params[0].split(",")):
            if not target:
                continue
            if index >= MAX_TARGETS:
                if not notice:
                    self.numeric(N.ERR_TOOMANYTARGETS, target, "Too many targets")
                break
            relayed = len(f":{self.source} {command} {target} :{text}\r\n".encode("utf-8"))
            if relayed > MAX_LINE_BYTES:
                if not notice:
                    self.numeric(N.ERR_INPUTTOOLONG, "Input line was too long")
                continue
            if text.startswith("\x01"):
                self.relay(command, target, text, client_tags, notice)
                continue
            if not self.post_one(target, text, client_tags, notice) or self.closing:
                return

    def post_one(self, target: str, text: str, client_tags: dict[str, str], notice: bool) -> bool:
        """Post to one target; False if the connection closes (flooding)."""
        command = "NOTICE" if notice else "PRIVMSG"
        room = to = None
        if target.startswith("#"):
            room = target
            if self.factory.masks.banned(target.lower(), self.me) and not self._exempt():
                if not notice:
                    self.numeric(N.ERR_CANNOTSENDTOCHAN, target, "Cannot send to channel (+b)")
                return True
        else:
            to = target
            holder = self.hub.session_named(target)
            away = getattr(holder, "away", None)
            if isinstance(away, str) and not notice:
                self.numeric(N.RPL_AWAY, str(holder.name if holder is not None else target), away)
        try:
            draft = self.post(text, room=room, to=to, notice=notice)
        except ChatError as error:
            self.command_failed(error, command, target, quiet=notice)
            return True
        if draft is None:
            return False
        if draft.settled:
            failure = draft.result
            if isinstance(failure, Failure) and isinstance(failure.value, ChatError):
                self.command_failed(failure.value, command, target, quiet=notice)
            return True
        self.factory.client_tags.keep(draft, client_tags)
        if self._collector is not None:
            self._label_drafts.add(draft)
        self.wait_for_store(draft)
        return True

    def irc_TAGMSG(self, line: Line) -> None:
        """Client-only tags to the target's IRC sessions with message-tags."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NORECIPIENT, "No recipient given (TAGMSG)")
            return
        for index, target in enumerate(line.params[0].split(",")):
            if index >= MAX_TARGETS:
                self.numeric(N.ERR_TOOMANYTARGETS, target, "Too many targets")
                break
            if target:
                self.relay("TAGMSG", target, None, line.client_tags(), notice=False)

    def relay(self, command: str, target: str, text: str | None, client_tags: dict[str, str], notice: bool) -> None:
        """TAGMSG or CTCP: to the target's IRC sessions only, never stored;
        its msgid is ``<key>:t`` and 16 random hex digits."""
        hub = self.hub
        try:
            if not self.rate.available():
                if self.flood.reject():  # far over the rate, as Session.post judges it
                    self.log.info("closing {peer} ({user}): flooding", peer=self.peer, user=self.name)
                    self.send_error(messages.RATE_LIMITED, "Flooding")
                    self.close_after_output()
                    return
                raise ChatError(messages.RATE_LIMITED, "Slow down: you are sending messages too fast.")
            if target.startswith("#"):
                record = hub.record(target)
                self._check_postable(record)
                key = conversation_key(record.name)
                shown = record.name
                room = hub.rooms.get(record.key)
                recipients: Iterable[ISession] = room.members() if room is not None else ()
            else:
                holder = hub.session_named(target) if is_valid_name(target) else None
                if holder is None or holder.name is None:
                    raise ChatError(messages.NO_SUCH_USER, f"No such nick: {target}")
                shown = holder.name
                key = conversation_key(dm_key(self.me, holder.name))
                recipients = [holder]
        except ChatError as error:
            self.command_failed(error, command, target, quiet=notice)
            return
        self.rate.take()
        ident = f"{key}:t{secrets.token_hex(8)}"
        now = hub.now()
        server_tags = "msgid=" + ident
        if self.bot:
            server_tags += ";bot"
        if client_tags:
            server_tags += ";" + format_tags(client_tags)
        params = [shown] if text is None else [shown, text]
        body = build(command, params, self.source, trailing=text is not None)
        for session in recipients:
            if session is self or not isinstance(session, IRCConnection) or session.closing:
                continue
            if text is None and "message-tags" not in session.caps:
                continue
            session.put(session.tags_for(server_tags, now, self.account), body, response=False)
            session.check_sendq()
        to_self = not target.startswith("#") and shown.lower() == self.me.lower()
        if "echo-message" in self.caps and (text is not None or "message-tags" in self.caps):
            self.put(self.tags_for(server_tags, now, self.account), body)
        if to_self and (text is not None or "message-tags" in self.caps):
            self.put(self.tags_for(server_tags, now, self.account), body, response=False)

    def _check_postable(self, record: RoomRecord) -> None:
        """What the hub checks of a room message, for a relay (404 etc.)."""
        hub = self.hub
        member = hub.in_room(self, record.key)
        if is_lobby(record) or record.modes.get("no_external", True):
            if not member:
                raise ChatError(messages.NOT_IN_ROOM, f"You're not on {record.name}")
        hub.moderation.check_post(self, record)
        if self.factory.masks.banned(record.key, self.me) and not self._exempt():
            raise ChatError(messages.MUTED, f"You are banned from {record.name}")

    def _exempt(self) -> bool:
        """Server operators pass bans, mutes and invite-only rooms."""
        return self.operator or self.hub.moderation.is_operator(self.name)

    def command_failed(self, error: ChatError, command: str, target: str, quiet: bool = False) -> None:
        """As the connection's, but a refused message is 404 (section 7.3)."""
        if command in ("PRIVMSG", "NOTICE", "TAGMSG") and error.code == messages.NOT_IN_ROOM:
            if not quiet:
                self.numeric(N.ERR_CANNOTSENDTOCHAN, target, "Cannot send to channel")
            return
        if error.code == messages.NO_SUCH_USER and command in ("PRIVMSG", "NOTICE", "TAGMSG", "INVITE", "KICK", "WHOIS"):
            if not quiet:
                self.numeric(N.ERR_NOSUCHNICK, target, "No such nick/channel")
            return
        super().command_failed(error, command, target, quiet)

    # -- LIST, WHO, WHOIS, USERHOST -------------------------------------------------

    def irc_LIST(self, line: Line) -> Deferred[Any]:
        """322 per room ``rooms`` would list (only the named ones, if any), 323."""
        wanted = {name.lower() for name in line.params[0].split(",") if name} if line.params else set()

        def listed(rooms: list[tuple[RoomRecord, int]]) -> None:
            for record, count in rooms:
                if count <= 0 or (wanted and record.key not in wanted):
                    continue
                self.numeric(N.RPL_LIST, record.name, str(count), record.topic)
            self.numeric(N.RPL_LISTEND, "End of /LIST")

        return self.hub.room_list(self).addCallback(listed)

    def who_entry(self, name: str, channel: str, record: RoomRecord | None) -> None:
        """One 352: ``<client> <channel> <user> <host> <server> <nick> <flags> :0 <realname>``."""
        session = self.hub.session_named(name)
        if isinstance(session, IRCConnection):
            user, host, realname = session.ident, "irc", session.realname
            flags = "G" if session.away else "H"
            if session.operator:
                flags += "*"
            if session.bot:
                flags += "B"
        else:
            user, host, realname, flags = name, "json", name, "H"
        if record is not None:
            flags += self.prefix_of(record, name, "multi-prefix" in self.caps)
        self.numeric(N.RPL_WHOREPLY, channel, user, host, self.server, name, flags, f"0 {realname}")

    def irc_WHO(self, line: Line) -> Deferred[Any] | None:
        """A room's members, or every name a nick glob matches; then 315."""
        mask = line.params[0] if line.params and line.params[0] else "*"
        hub = self.hub
        if mask.startswith("#"):
            try:
                record = hub.readable(self, mask)
            except ChatError:
                self.numeric(N.RPL_ENDOFWHO, mask, "End of WHO list")
                return None

            def room_members(members: list[str]) -> None:
                for member in members:
                    self.who_entry(member, record.name, record)
                self.numeric(N.RPL_ENDOFWHO, mask, "End of WHO list")

            return hub.names(record.name).addCallback(room_members)
        glob = mask.lower()
        wildcard = "*" in glob or "?" in glob
        shared = self._shared_names() if wildcard else set()

        def matching(names: list[str]) -> None:
            for name in names:
                if not fnmatch.fnmatchcase(name.lower(), glob.replace("[", "[[]")):
                    continue
                session = hub.session_named(name)
                if wildcard and getattr(session, "invisible", False) and session is not self and name.lower() not in shared:
                    continue
                self.who_entry(name, "*", None)
            self.numeric(N.RPL_ENDOFWHO, mask, "End of WHO list")

        return hub.registry.names().addCallback(matching)

    def _shared_names(self) -> set[str]:
        """Names (lower-cased) in a room with this session, on this node."""
        shared: set[str] = set()
        for room in self.rooms_in():
            local = self.hub.rooms.get(room.lower())
            if local is not None:
                shared.update(str(member.name).lower() for member in local.members())
        return shared

    def irc_WHOIS(self, line: Line) -> Deferred[Any] | None:
        """311, 319, 312, 301, 313, 330, 318 (401 then 318 for nobody)."""
        if not line.params or not line.params[-1]:
            self.numeric(N.ERR_NONICKNAMEGIVEN, "No nickname given")
            return None
        nick = line.params[-1].split(",")[0]
        hub = self.hub

        def answer(names: list[str]) -> None:
            found = next((name for name in names if name.lower() == nick.lower()), None)
            if found is None:
                self.numeric(N.ERR_NOSUCHNICK, nick, "No such nick/channel")
                self.numeric(N.RPL_ENDOFWHOIS, nick, "End of /WHOIS list")
                return
            session = hub.session_named(found)
            if isinstance(session, IRCConnection):
                user, host, realname = session.ident, "irc", session.realname
            else:
                user, host, realname = found, "json", found
            self.numeric(N.RPL_WHOISUSER, found, user, host, "*", realname)
            rooms = []
            if session is not None:
                for room in (hub.lobby.name, *hub.joined_rooms(session)):
                    key = room.lower()
                    if not hub.in_room(session, key):
                        continue
                    record = hub.lobby_record() if key == DEFAULT_ROOM else hub.directory.get(key)
                    if record is None or not (record.public or hub.in_room(self, key)):
                        continue
                    rooms.append(self.prefix_of(record, found, "multi-prefix" in self.caps) + record.name)
            if rooms:
                self.numeric(N.RPL_WHOISCHANNELS, found, " ".join(rooms))
            self.numeric(N.RPL_WHOISSERVER, found, self.server, "chatd")
            away = getattr(session, "away", None)
            if isinstance(away, str):
                self.numeric(N.RPL_AWAY, found, away)
            if getattr(session, "operator", False):
                self.numeric(N.RPL_WHOISOPERATOR, found, "is an IRC operator")
            if getattr(session, "bot", False):
                self.numeric(N.RPL_WHOISBOT, found, "is a bot")
            account = getattr(session, "account", None)
            if isinstance(account, str):
                self.numeric(N.RPL_WHOISACCOUNT, found, account, "is logged in as")
            self.numeric(N.RPL_ENDOFWHOIS, found, "End of /WHOIS list")

        return hub.registry.names().addCallback(answer)

    def irc_USERHOST(self, line: Line) -> None:
        """302 ``nick[*]=+user@host`` (``-`` when away) for those online."""
        if not line.params:
            self.numeric(N.ERR_NEEDMOREPARAMS, "USERHOST", "Not enough parameters")
            return
        replies = []
        for nick in line.params[:MAX_USERHOST]:
            session = self.hub.session_named(nick)
            if session is None or session.name is None:
                continue
            if isinstance(session, IRCConnection):
                star = "*" if session.operator else ""
                sign = "-" if session.away else "+"
                replies.append(f"{session.name}{star}={sign}{session.ident}@irc")
            else:
                replies.append(f"{session.name}=+{session.name}@json")
        self.numeric(N.RPL_USERHOST, " ".join(replies))

    # -- MODE ----------------------------------------------------------------------

    def irc_MODE(self, line: Line) -> Deferred[Any] | None:
        """A room's modes (read or change) or one's own user modes."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "MODE", "Not enough parameters")
            return None
        target = line.params[0]
        if not target.startswith("#"):
            self.user_mode(target, line.params[1] if len(line.params) > 1 else "")
            return None
        hub = self.hub
        try:
            record = hub.record(target)
        except ChatError as error:
            self.command_failed(error, "MODE", target)
            return None
        if len(line.params) < 2:
            if not record.public and not hub.in_room(self, record.key):
                self.numeric(N.ERR_NOTONCHANNEL, record.name, "You're not on that channel")
                return None
            self.numeric(N.RPL_CHANNELMODEIS, record.name, *mode_string(record))
            self.numeric(N.RPL_CREATIONTIME, record.name, unix_time(record.created))
            return None
        return self.room_modes(record, line.params[1], line.params[2:])

    def user_mode(self, target: str, changes: str) -> None:
        """``MODE <own nick> [+i|-i|+B|-B|-o]``: 221, 501, 502.  ``+B`` marks
        a bot (IRCv3 bot-mode): its messages carry a ``bot`` tag, WHOIS
        shows 335 and WHO the flag ``B``."""
        if target.lower() != self.me.lower():
            if self.hub.session_named(target) is None:
                self.numeric(N.ERR_NOSUCHNICK, target, "No such nick/channel")
            else:
                self.numeric(N.ERR_USERSDONTMATCH, "Can't change mode for other users")
            return
        if not changes:
            modes = ("B" if self.bot else "") + ("i" if self.invisible else "") + ("o" if self.operator else "")
            self.numeric(N.RPL_UMODEIS, "+" + modes)
            return
        sign = "+"
        applied = ""
        applied_sign = ""
        unknown = False
        for char in changes:
            if char in "+-":
                sign = char
                continue
            if char in USER_FLAGS:
                attribute = USER_FLAGS[char]
                if getattr(self, attribute) != (sign == "+"):
                    setattr(self, attribute, sign == "+")
                    applied += (sign if applied_sign != sign else "") + char
                    applied_sign = sign
            elif char == "o":
                if sign == "-" and self.operator:
                    self.operator = False
                    self.factory.opered -= 1
                    applied += ("-" if applied_sign != "-" else "") + "o"
                    applied_sign = "-"
            else:
                unknown = True
        if unknown:
            self.numeric(N.ERR_UMODEUNKNOWNFLAG, "Unknown MODE flag")
        if applied:
            self.line("MODE", [self.me, applied], self.source)

    def room_modes(self, record: RoomRecord, changes: str, arguments: list[str]) -> Deferred[Any] | None:
        """``MODE #room <changes> [args]``: flags and roles through the
        core's moderation, ``+b`` masks here; one MODE line per change."""
        hub = self.hub
        masks = self.factory.masks
        lobby = is_lobby(record)
        member = hub.in_room(self, record.key)
        op = self.operator or hub.moderation.is_op(record, self.name)
        args = list(arguments)
        # The room's settings to change, as section 6.5's ``mode`` takes
        # them: flags, and ``limit`` (0: none) and ``key`` ("": none).
        settings: dict[str, Any] = {}
        roles: list[tuple[str, str]] = []
        bans: list[tuple[str, bool]] = []
        list_bans = False
        sign = "+"
        for char in changes:
            if char in "+-":
                sign = char
                continue
            if char in FLAG_LETTERS:
                settings[FLAG_LETTERS[char]] = sign == "+"
            elif char in "ov":
                if args:
                    kind = ("op" if sign == "+" else "deop") if char == "o" else ("voice" if sign == "+" else "devoice")
                    roles.append((kind, args.pop(0)))
            elif char == "k":
                if sign == "-":
                    settings["key"] = ""
                    if args:
                        args.pop(0)  # -k takes the old key, which is not checked
                    continue
                if not args:
                    self.numeric(N.ERR_NEEDMOREPARAMS, "MODE", "Not enough parameters")
                    continue
                text = args.pop(0)
                if not valid_room_key(text):
                    self.numeric(N.ERR_INVALIDMODEPARAM, record.name, "k", "*", "Invalid key: 1 to 32 characters, no spaces")
                    continue
                settings["key"] = text
            elif char == "l":
                if sign == "-":
                    settings["limit"] = 0
                    continue
                if not args:
                    self.numeric(N.ERR_NEEDMOREPARAMS, "MODE", "Not enough parameters")
                    continue
                text = args.pop(0)
                if not text.isdigit() or not 1 <= int(text) <= MAX_ROOM_LIMIT:
                    self.numeric(N.ERR_INVALIDMODEPARAM, record.name, "l", text, "Invalid limit: a whole number from 1")
                    continue
                settings["limit"] = int(text)
            elif char == "b":
                if not args:
                    list_bans = True
                    continue
                text = args.pop(0)
                mask = mask_of(text)
                if mask is None:
                    self.numeric(N.ERR_INVALIDMODEPARAM, record.name, "b", text, "Invalid ban mask")
                    continue
                bans.append((mask, sign == "+"))
            else:
                self.numeric(N.ERR_UNKNOWNMODE, char, "is unknown mode char to me")
        if list_bans:
            if not record.public and not member:
                self.numeric(N.ERR_NOTONCHANNEL, record.name, "You're not on that channel")
            else:
                for ban in masks.bans(record.key):
                    self.numeric(N.RPL_BANLIST, record.name, ban.mask, ban.by, str(ban.at))
                self.numeric(N.RPL_ENDOFBANLIST, record.name, "End of channel ban list")
        if not settings and not roles and not bans:
            return None
        if not member and not self._exempt():
            self.numeric(N.ERR_NOTONCHANNEL, record.name, "You're not on that channel")
            return None
        if not op or (lobby and (settings or roles)):
            self.numeric(N.ERR_CHANOPRIVSNEEDED, record.name, "You're not channel operator")
            return None
        now = int(self.clock.seconds())
        for mask, add in bans:
            if add:
                masks.add_ban(self.me, record, mask, now)
            else:
                masks.remove_ban(self.me, record, mask)
        d: Deferred[Any] = succeed(None)
        if settings:
            d = then(d, lambda: self.moderate("MODE", "mode", {"room": record.name, **settings}, record.name))
        for kind, user in roles:
            d = then(d, lambda kind=kind, user=user: self.moderate("MODE", kind, {"room": record.name, "user": user}, user))  # type: ignore[misc]  # defaults bind the loop's values
        return d

    def moderate(self, command: str, kind: str, content: dict[str, Any], target: str) -> Deferred[Any] | None:
        """A section 6.5 request through the core: the churn bucket, its
        checks (each failure as its numeric), then its events (which bring
        this client its MODE, KICK or INVITE lines)."""
        try:
            self.churn_check()
        except ChatError as error:
            self.command_failed(error, command, str(content.get("room", target)))
            return None
        d = self.hub.moderation.request(self, kind, content)

        def done(result: Done) -> Done:
            self.churn_taken()
            result.apply()
            return result

        def failed(failure: Failure) -> None:
            error = failure.trap(ChatError) and failure.value
            assert isinstance(error, ChatError)
            self.moderation_failed(error, command, str(content.get("room", "")), target)

        return d.addCallbacks(done, failed)

    def moderation_failed(self, error: ChatError, command: str, room: str, target: str) -> None:
        """A refused moderation request as its numeric (section 7.3)."""
        code = error.code
        if code == messages.NO_SUCH_USER:
            holder = self.hub.session_named(target)
            if holder is not None and holder.name is not None:
                self.numeric(N.ERR_USERNOTINCHANNEL, holder.name, room, "They aren't on that channel")
            else:
                self.numeric(N.ERR_NOSUCHNICK, target, "No such nick/channel")
        elif code in (messages.NOT_OP, messages.FORBIDDEN):
            self.numeric(N.ERR_CHANOPRIVSNEEDED, room, "You're not channel operator")
        else:
            self.command_failed(error, command, room)

    # -- KICK, INVITE ---------------------------------------------------------------

    def irc_KICK(self, line: Line) -> Deferred[Any] | None:
        """``KICK #room nick[,nick] [:comment]`` or ``KICK #a,#b n1,n2``."""
        if len(line.params) < 2 or not line.params[0] or not line.params[1]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "KICK", "Not enough parameters")
            return None
        rooms = line.params[0].split(",")
        nicks = line.params[1].split(",")
        comment = line.params[2] if len(line.params) > 2 and line.params[2] else self.me
        pairs = [(rooms[0], nick) for nick in nicks] if len(rooms) == 1 else list(zip(rooms, nicks))
        d: Deferred[Any] = succeed(None)
        for room, nick in pairs[:MAX_KICKS]:
            if room and nick:
                content = {"room": room, "user": nick, "comment": comment[:390]}
                d = then(d, lambda content=content, nick=nick: self.moderate("KICK", "kick", content, nick))  # type: ignore[misc]  # defaults bind the loop's values
        return d

    def irc_INVITE(self, line: Line) -> Deferred[Any] | None:
        """``INVITE <nick> #room``: 341 to the inviter, INVITE to the invitee."""
        if len(line.params) < 2 or not line.params[0] or not line.params[1]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "INVITE", "Not enough parameters")
            return None
        nick, name = line.params[0], line.params[1]
        hub = self.hub
        try:
            record = hub.record(name)
        except ChatError as error:
            self.command_failed(error, "INVITE", name)
            return None
        target = hub.session_named(nick)
        if target is not None and target.name is not None and hub.in_room(target, record.key):
            if not hub.in_room(self, record.key) and not self._exempt():
                self.numeric(N.ERR_NOTONCHANNEL, record.name, "You're not on that channel")
            else:
                self.numeric(N.ERR_USERONCHANNEL, target.name, record.name, "is already on channel")
            return None
        d = self.moderate("INVITE", "invite", {"room": record.name, "user": nick}, nick)
        if d is None:
            return None

        def invited(done: Done | None) -> None:
            if isinstance(done, Done):
                user = str(done.extra.get("user", nick))
                self.numeric(N.RPL_INVITING, user, record.name)

        return d.addCallback(invited)

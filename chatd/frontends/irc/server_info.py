"""IRC commands about the server and its users' past: HELP (and HELPOP),
INFO, TIME, LINKS, WHOWAS, and KILL for server operators.

Section 7.3 of PROTOCOL.md does not list these; every common IRC server
has them and clients send them (``/help``, ``/time``, ``/whowas``,
``/kill``), so chatd answers them as modern.ircdocs.horse describes
rather than with 421.
"""

from __future__ import annotations

import datetime
import fnmatch
from typing import Any

from twisted.internet.defer import Deferred

from chatd import __version__
from chatd.frontends.irc import numerics as N
from chatd.frontends.irc.connection import IRCConnection
from chatd.frontends.irc.lines import Line, build

#: HELP's subjects: one short text per command a client may send.
HELP_TOPICS: dict[str, tuple[str, ...]] = {
    "AWAY": ("AWAY [:text]", "Marks you away with a text, or back without one."),
    "CAP": ("CAP LS [302] | LIST | REQ :caps | END", "Negotiates IRCv3 capabilities."),
    "CHATHISTORY": (
        "CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN|TARGETS ...",
        "Pages the history of a channel or a conversation (needs draft/chathistory).",
    ),
    "HELP": ("HELP [subject]", "Lists the commands, or explains one."),
    "INFO": ("INFO", "Tells what this server is."),
    "INVITE": ("INVITE <nick> <#channel>", "Invites a user to a channel you are in."),
    "JOIN": ("JOIN <#channel>[,<#channel>...] | JOIN 0", "Joins channels (0 leaves them all)."),
    "KICK": ("KICK <#channel> <nick>[,<nick>] [:comment]", "Removes users from a channel (channel operators)."),
    "KILL": ("KILL <nick> [:reason]", "Disconnects every session of a user (server operators)."),
    "LINKS": ("LINKS", "Lists the servers of the network."),
    "LIST": ("LIST [#channel,...]", "Lists the channels you may see, with members and topic."),
    "LUSERS": ("LUSERS", "Counts users, operators and channels."),
    "MODE": (
        "MODE <#channel> [+|-][ovtnimsb] [args] | MODE <nick> [+|-]i",
        "Reads or changes channel modes, or your own user modes.",
    ),
    "MOTD": ("MOTD", "Shows the message of the day."),
    "NAMES": ("NAMES <#channel>", "Lists a channel's members."),
    "NICK": ("NICK <nick>", "Changes your nick (guests only: an account keeps its name)."),
    "NOTICE": ("NOTICE <target>[,<target>] :text", "Sends a notice: never answered automatically."),
    "OPER": ("OPER <account> <password>", "Makes you a server operator (listed accounts only)."),
    "PART": ("PART <#channel>[,<#channel>] [:text]", "Leaves channels."),
    "PING": ("PING <token>", "Asks the server for a PONG."),
    "PRIVMSG": ("PRIVMSG <target>[,<target>] :text", "Sends a message to channels or nicks."),
    "QUIT": ("QUIT [:text]", "Disconnects."),
    "TAGMSG": ("TAGMSG <target>", "Sends client tags only (needs message-tags)."),
    "TIME": ("TIME", "Tells the server's time."),
    "TOPIC": ("TOPIC <#channel> [:text]", "Reads or sets a channel's topic."),
    "USERHOST": ("USERHOST <nick> [<nick>...]", "Shows users' user and host."),
    "WHO": ("WHO <#channel>|<mask>", "Lists a channel's members or the users a nick mask matches."),
    "WHOIS": ("WHOIS <nick>", "Tells about a user."),
    "WHOWAS": ("WHOWAS <nick> [count]", "Tells about users who recently left a nick."),
}

#: INFO's lines.
INFO_LINES = (
    f"chatd {__version__}: a chat server built on Twisted.",
    "One hub for IRC, the JSON chat protocol and WebSocket clients:",
    "the same rooms, direct messages, accounts and history on every front-end.",
)


class ServerInfo(IRCConnection):
    """HELP, HELPOP, INFO, TIME, LINKS, WHOWAS and KILL."""

    def irc_HELP(self, line: Line) -> None:
        """704, 705 per line, 706; 524 for an unknown subject."""
        subject = line.params[0].upper() if line.params and line.params[0] else ""
        if not subject:
            self.numeric(N.RPL_HELPSTART, "*", "chatd IRC commands (HELP <command> for one):")
            names = sorted(HELP_TOPICS)
            for start in range(0, len(names), 10):
                self.numeric(N.RPL_HELPTXT, "*", " ".join(names[start : start + 10]))
            self.numeric(N.RPL_ENDOFHELP, "*", "End of /HELP")
            return
        topic = HELP_TOPICS.get(subject)
        if topic is None:
            self.numeric(N.ERR_HELPNOTFOUND, subject[:40], "No help available on this topic")
            return
        usage, *text = topic
        self.numeric(N.RPL_HELPSTART, subject, usage)
        for piece in text:
            self.numeric(N.RPL_HELPTXT, subject, piece)
        self.numeric(N.RPL_ENDOFHELP, subject, "End of /HELP")

    irc_HELPOP = irc_HELP

    def _other_server(self, line: Line) -> bool:
        """A target server other than this one: 402 (true)."""
        target = line.params[0] if line.params and line.params[0] else ""
        if target and not _matches_server(target, self.server):
            self.numeric(N.ERR_NOSUCHSERVER, target[:64], "No such server")
            return True
        return False

    def irc_INFO(self, line: Line) -> None:
        """371 per line, 374 (402 for another server)."""
        if self._other_server(line):
            return
        for text in INFO_LINES:
            self.numeric(N.RPL_INFO, text)
        self.numeric(N.RPL_ENDOFINFO, "End of /INFO list")

    def irc_TIME(self, line: Line) -> None:
        """391 ``<server> :<local time>`` (402 for another server)."""
        if self._other_server(line):
            return
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), tz=datetime.timezone.utc)
        self.numeric(N.RPL_TIME, self.server, now.strftime("%A %B %d %Y -- %H:%M:%S +00:00"))

    def irc_LINKS(self, line: Line) -> None:
        """The network shows as one server (a cluster's nodes share one
        name), so there are no links to list: a notice, then 365."""
        self.line("NOTICE", [self.me, f"This network is one server: {self.server}"], trailing=True)
        self.numeric(N.RPL_ENDOFLINKS, "*", "End of /LINKS list")

    def irc_WHOWAS(self, line: Line) -> None:
        """314 and 312 per entry, newest first, then 369; 406 then 369
        for none; 461 without a nick."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "WHOWAS", "Not enough parameters")
            return
        nick = line.params[0].split(",")[0][:64]
        try:
            count = int(line.params[1]) if len(line.params) > 1 else 0
        except ValueError:
            count = 0
        entries = self.factory.whowas.find(nick, count)
        if not entries:
            self.numeric(N.ERR_WASNOSUCHNICK, nick, "There was no such nickname")
        for entry in entries:
            self.numeric(N.RPL_WHOWASUSER, entry.nick, entry.ident, "irc", "*", entry.realname)
            left = datetime.datetime.fromtimestamp(entry.when, tz=datetime.timezone.utc)
            self.numeric(N.RPL_WHOISSERVER, entry.nick, self.server, f"{left:%a %b %d %H:%M:%S %Y}")
        self.numeric(N.RPL_ENDOFWHOWAS, nick, "End of WHOWAS")

    def irc_KILL(self, line: Line) -> Deferred[Any] | None:
        """``KILL <nick> [:reason]``: every session of the user on this node
        is closed (server operators only: 481); its rooms see it quit."""
        if not line.params or not line.params[0]:
            self.numeric(N.ERR_NEEDMOREPARAMS, "KILL", "Not enough parameters")
            return None
        if not self.operator:
            self.numeric(N.ERR_NOPRIVILEGES, "Permission Denied - You're not an IRC operator")
            return None
        nick = line.params[0]
        reason = line.params[1] if len(line.params) > 1 and line.params[1] else self.me
        victims = list(self.hub.sessions_of(nick)) if nick else []
        if not victims:
            self.numeric(N.ERR_NOSUCHNICK, nick[:64], "No such nick/channel")
            return None
        comment = f"Killed by {self.me}: {reason}"[:390]
        self.log.info("{oper} killed {user}: {reason}", oper=self.me, user=nick, reason=reason)
        for victim in victims:
            if isinstance(victim, IRCConnection):
                victim.departed()
                text = f"Closing link: {victim.source} ({comment})"
                victim.put(b"", build("ERROR", [text], trailing=True), response=False)
            else:
                victim.notify("info", {"text": f"You were killed by {self.me}: {reason}", "by": self.me})
            if victim.name is not None:
                self.hub.logout(victim, comment=comment)
                victim.name = None
            close = getattr(victim, "close_after_output", None)  # every session kind has it; ISession does not say so
            if close is not None:
                close()
        return None


def _matches_server(mask: str, server: str) -> bool:
    """Whether a server mask (``*``, ``?``) matches ``server``."""
    return fnmatch.fnmatchcase(server.lower(), mask.lower())

"""The IRC connection class: :class:`IRCProtocol`.

It puts together the session and wire of
:class:`~chatd.frontends.irc.connection.IRCConnection` with the command
mixins: registration (:mod:`~chatd.frontends.irc.registration`), the
commands of section 7.3 (:mod:`~chatd.frontends.irc.commands`) and
CHATHISTORY (:mod:`~chatd.frontends.irc.history`) and HELP, INFO, TIME,
LINKS, WHOWAS and KILL (:mod:`~chatd.frontends.irc.server_info`).
"""

from __future__ import annotations

from chatd.frontends.irc.commands import Commands
from chatd.frontends.irc.history import History
from chatd.frontends.irc.registration import Registration
from chatd.frontends.irc.server_info import ServerInfo


class IRCProtocol(Registration, Commands, History, ServerInfo):
    """One IRC client connection on the hub (PROTOCOL.md section 7)."""


__all__ = ["IRCProtocol"]

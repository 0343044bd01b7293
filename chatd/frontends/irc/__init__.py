"""The IRC front-end (PROTOCOL.md section 7): IRC clients on the same hub.

``lines`` (framing, IRCv3 tags, parsing on Twisted's ``parsemsg``),
``numerics``, ``encoding`` (stored messages as PRIVMSG/NOTICE lines, once
per batch), ``sasl`` (SASL PLAIN), ``connection`` (the session, its wire,
output and labeled responses), ``registration``, ``commands``,
``history`` (CHATHISTORY), ``moderation``, ``protocol`` (the connection
class) and ``factory`` (the listener's factory and settings).
"""

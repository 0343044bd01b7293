"""Several chatd nodes as one chat, through Redis (``--cluster``).

The one :class:`~chatd.core.hub.Hub`, on Redis parts instead of local
ones: :mod:`~chatd.cluster.names` (who holds which name),
:mod:`~chatd.cluster.bus` (ids, order, storage and delivery of messages
and direct messages; presence and room events), :mod:`~chatd.cluster.rooms`
(rooms' records and every node's members), :mod:`~chatd.cluster.history`
(reading the streams), :mod:`~chatd.cluster.accounts` (accounts, bans,
mutes, memberships, kept DMs and the login throttle, with ``--accounts``),
over
:mod:`~chatd.cluster.link` (RESP2 connections of its own that fail fast).
:mod:`~chatd.cluster.scripts` has the keys and Lua scripts,
:mod:`~chatd.cluster.entries` the reading of entries anyone may have
written, :mod:`~chatd.cluster.node` the builder and the service.
"""

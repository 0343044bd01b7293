"""Listening endpoints with a backlog fit for a login storm.

Twisted listens with a backlog of 50 unless the endpoint description
says otherwise.  When thousands of clients connect at once (a restart,
a network coming back), the kernel's accept queue then overflows: SYNs
are dropped and retried after 1, 3, 7... seconds, and some connections
are reset, so logins take tens of seconds though the server is idle.
Every chatd listener therefore asks for :data:`LISTEN_BACKLOG` (the
kernel caps it at ``net.core.somaxconn``) unless its description names
a ``backlog`` of its own.
"""

from __future__ import annotations

#: The accept queue chatd asks for.
LISTEN_BACKLOG = 4096

#: Endpoint kinds whose descriptions take ``backlog=``.
_WITH_BACKLOG = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """``description`` with ``:backlog=N`` added, for a kind that takes
    it and a description that does not set it already."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in _WITH_BACKLOG or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"

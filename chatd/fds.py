"""Open files: make room for ``--max-connections`` before serving.

Every connection is a file descriptor, and the usual soft limit on open
files (1024) is far below the default ``--max-connections`` (10000): past
it ``accept()`` fails with EMFILE and nobody new gets in, not even a
``server_busy``.  At start chatd raises its soft limit toward the hard
one; if the connections still do not fit, the connection cap is lowered
to what fits (with a warning), so the cap, not the kernel, refuses.
"""

from __future__ import annotations

import resource
from typing import Any

#: Descriptors kept for everything but connections: listeners, the
#: database and its WAL, logs, Redis links, the reactor's own.
RESERVED = 64


def fit_connections(max_connections: int, limits: Any = resource) -> tuple[int, int]:
    """Raise the soft open-files limit for ``max_connections`` (0: as high
    as allowed); return the connection cap that fits and the limit now."""
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    wanted = max_connections + RESERVED if max_connections else hard
    if hard != limits.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        try:
            limits.setrlimit(limits.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # not allowed here: the cap is fitted to the limit as it is
    fits = max(1, soft - RESERVED)
    if max_connections == 0 or max_connections > fits:
        return fits, soft
    return max_connections, soft

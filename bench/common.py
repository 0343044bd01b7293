"""Helpers shared by the benchmarks: ports, readiness, process figures."""

from __future__ import annotations

import os
import socket
import sys
import time


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, deadline: float = 20.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` (bounded)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {deadline:g} s")


def twistd_command() -> list[str]:
    """The ``twistd`` of the running interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "twisted.scripts.twistd"]


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB, from ``/proc``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

"""Health probe for containers and monitors: does chatd answer?

    python -m chatd.healthcheck [--host 127.0.0.1] [--port 9998] [--timeout 5]

Connects, sends ``help`` and expects an ``info`` response: proof that the
server's protocol works, not just that a port is open.  Exit status 0 if
it does, 1 (with one line on stderr) if not.  Deliberately plain: a
blocking socket with a timeout, no reactor, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def probe(host: str, port: int, timeout: float) -> str | None:
    """None if chatd answered ``help`` with ``info``; else what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b'{"request": "help", "content": null}\n')
            reader = sock.makefile("rb")
            line = reader.readline(65536)
    except OSError as problem:
        return f"cannot talk to {host}:{port}: {problem}"
    try:
        response = json.loads(line)
    except ValueError:
        return f"not a chatd response from {host}:{port}: {line[:80]!r}"
    if not isinstance(response, dict) or response.get("response") != "info":
        return f"unexpected response from {host}:{port}: {line[:80]!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the probe; the exit status says healthy (0) or not (1)."""
    parser = argparse.ArgumentParser(description="Check that chatd answers help with info.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9998)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    problem = probe(args.host, args.port, args.timeout)
    if problem is not None:
        print(f"chatd unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

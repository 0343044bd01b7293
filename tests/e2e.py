"""Helpers for end-to-end tests: a real ``twistd chatd`` and socket clients.

Everything is on loopback, every wait has a deadline, and only processes
started here are signalled, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

DEADLINE = 20.0


def twistd_command() -> list[str]:
    """The ``twistd`` of the running interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Any, what: str, deadline: float = DEADLINE) -> None:
    """Poll ``predicate`` until true, or fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class ServerProcess:
    """``twistd -n --pidfile= chatd --port PORT ...`` as a child process."""

    def __init__(self, workdir: str, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(workdir, "server.log")

    def start(self) -> ServerProcess:
        for _attempt in range(5):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [*twistd_command(), "-n", "--pidfile=", "chatd", "--port", str(self.port), *self.args],
                    cwd=self.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end and self.process.poll() is None:
                if can_connect(self.port):
                    return self
                time.sleep(0.05)
            self.kill()  # the port was taken meanwhile, or it failed: try again
        raise AssertionError(f"chatd did not start; log:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)


class LinesClient:
    """A modern client: one JSON object per line each way."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.reader = self.sock.makefile("rb")

    def send(self, request: str, content: Any = None, **extra: Any) -> None:
        obj = {"request": request, "content": content, **extra}
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def receive(self, presence: bool = False) -> dict[str, Any]:
        """The next response (v2 presence notices skipped unless asked for)."""
        while True:
            line = self.reader.readline()
            if not line:
                raise EOFError("connection closed")
            assert line.endswith(b"\n")
            response = json.loads(line)
            if presence or response.get("response") != "presence":
                return response

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class ClassicClient:
    """A classic client: bare JSON out, ``json.loads(sock.recv(4096))`` in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)

    def send(self, request: str, content: Any = None) -> None:
        self.sock.send(json.dumps({"request": request, "content": content}).encode())

    def receive(self) -> dict[str, Any]:
        data = self.sock.recv(4096)
        if not data:
            raise EOFError("connection closed")
        return json.loads(data)

    def close(self) -> None:
        self.sock.close()

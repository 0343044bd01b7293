"""Issue 13, findings 2 and 3 on real sockets: every limit that closes a
connection ends in a closed socket, on TLS as on plain TCP, and what the
connection held (its name, its per-address slot) is freed."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import DEADLINE, LinesClient, ServerProcess, can_connect, free_port, wait_for


def read_until_closed(sock: socket.socket, deadline: float = DEADLINE) -> bytes:
    """Everything the server sends until it closes; fails past ``deadline``."""
    sock.settimeout(deadline)
    received = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return received  # closed (abruptly)
        except socket.timeout:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server did not close the connection within {deadline} s; got {received[-200:]!r}")


class TLSCloseTests(SynchronousTestCase):
    def setUp(self) -> None:
        from tests.certs import TestCA

        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        ca = TestCA(self.workdir)
        key, cert = ca.issue("localhost")
        self.context = ssl.create_default_context(cafile=ca.path)
        self.tls_port = free_port()
        self.server = ServerProcess(
            self.workdir, "--history", "memory", "--login-timeout", "2", "--max-per-ip", "3",
            "--listen", f"ssl:{self.tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        ).start()
        self.addCleanup(self.server.kill)
        wait_for(lambda: can_connect(self.tls_port), "the TLS listener")

    def tls(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=DEADLINE)
        secure = self.context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(secure.close)
        return secure

    def send(self, sock: socket.socket, request: str, content: object) -> None:
        sock.sendall(json.dumps({"request": request, "content": content}).encode() + b"\n")

    def test_login_timeout_closes_a_tls_connection(self) -> None:
        read_until_closed(self.tls())

    def test_too_long_closes_a_tls_connection(self) -> None:
        sock = self.tls()
        self.send(sock, "login", "bob")
        sock.sendall(b'{"request": "msg", "content": "' + b"x" * 20000)
        received = read_until_closed(sock)
        self.assertIn(b'"too_long"', received)

    def test_flood_closes_a_tls_connection_and_frees_its_name(self) -> None:
        sock = self.tls()
        self.send(sock, "login", "flooder")
        sock.sendall(b"{}\n" * 20000)
        received = read_until_closed(sock)
        self.assertIn(b"Flooding", received)
        wait_for(lambda: self.can_log_in("flooder"), "the flooder's name to be free again")

    def can_log_in(self, name: str) -> bool:
        client = LinesClient(self.server.port)
        try:
            client.send("login", name)
            return client.receive()["response"] == "info"
        finally:
            client.close()

    def test_closed_tls_connections_give_back_their_slots(self) -> None:
        for _ in range(6):  # twice the per-address limit
            sock = self.tls()
            sock.sendall(b'"' + b"x" * 20000)  # too_long: the server closes
            read_until_closed(sock)
            sock.close()
        wait_for(lambda: self.can_log_in("afterwards"), "a free slot for this address")


class PlainCloseTests(SynchronousTestCase):
    def test_backlogged_connection_closed_by_a_timeout(self) -> None:
        """A client that stopped reading (history pages unread) is closed by
        the idle timeout: its socket, name and slot freed within the grace,
        although its output never drains."""
        workdir = self.mktemp()
        os.makedirs(workdir)
        server = ServerProcess(workdir, "--history", "memory", "--max-per-ip", "3", "--msg-rate", "0",
                               "--request-rate", "0", "--max-sendq", "0", "--idle-timeout", "2").start()
        self.addCleanup(server.kill)
        poster = LinesClient(server.port)
        self.addCleanup(poster.close)
        poster.send("login", "poster")
        poster.receive(), poster.receive()
        for i in range(300):
            poster.send("msg", f"{i} " + "x" * 1900)
        for _ in range(300):
            poster.receive()
        sleeper = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        self.addCleanup(sleeper.close)
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        page = json.dumps({"request": "history", "content": {"limit": 500}}).encode() + b"\n"
        sleeper.sendall(b'{"request": "login", "content": "sleeper"}\n' + page * 5)
        wait_for(lambda: "sleeper" in self.names(server.port), "the sleeper to log in")
        wait_for(lambda: "sleeper" not in self.names(server.port), "the sleeper's name to be freed", deadline=30)
        self.assertIn("aborting", server.log())

    def names(self, port: int) -> str:
        client = LinesClient(port)
        try:
            client.send("login", f"probe{time.monotonic_ns() % 10**9}")
            client.receive(), client.receive()
            client.send("names")
            return str(client.receive()["content"])
        finally:
            client.close()

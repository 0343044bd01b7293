"""Write-through to idle TCP sockets (chatd/writethrough.py)."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chatd.writethrough import writer_for


class WriteThroughTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.ours.setblocking(False)
        self.peer.settimeout(5)
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(self.ours, Protocol(), ("127.0.0.1", 1), None, 1, self.reactor)
        self.write = writer_for(self.transport)

    def test_idle_socket_gets_the_bytes_at_once(self) -> None:
        self.write(b"hello\n")
        self.assertEqual(self.peer.recv(100), b"hello\n")
        self.assertEqual(self.transport._tempDataBuffer, [])
        self.assertNotIn(self.transport, self.reactor.getWriters())  # no reactor round trip

    def test_queued_data_keeps_its_order(self) -> None:
        self.transport.write(b"first\n")  # queued by Twisted, not yet sent
        self.write(b"second\n")
        self.assertEqual(self.transport._tempDataBuffer, [b"first\n", b"second\n"])
        self.transport.doWrite()
        self.assertEqual(self.peer.recv(100), b"first\nsecond\n")

    def test_what_the_kernel_does_not_take_is_queued(self) -> None:
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"x" * 4_000_000
        self.write(big)
        queued = b"".join(self.transport._tempDataBuffer)
        self.assertTrue(queued)
        self.assertTrue(big.endswith(queued))
        self.assertIn(self.transport, self.reactor.getWriters())
        received = b""
        while len(received) < len(big):
            self.transport.doWrite()
            received += self.peer.recv(1 << 20)
        self.assertEqual(received, big)

    def test_other_transports_use_plain_write(self) -> None:
        transport = StringTransport()
        self.assertEqual(writer_for(transport), transport.write)

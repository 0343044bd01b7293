"""Listening endpoints get a large accept backlog (chatd.listening)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.listening import LISTEN_BACKLOG, with_backlog


class BacklogTests(SynchronousTestCase):
    def test_tcp_ssl_and_unix_get_the_backlog(self) -> None:
        self.assertEqual(with_backlog("tcp:9998"), f"tcp:9998:backlog={LISTEN_BACKLOG}")
        self.assertEqual(
            with_backlog("ssl:6697:privateKey=k.pem:certKey=c.pem"),
            f"ssl:6697:privateKey=k.pem:certKey=c.pem:backlog={LISTEN_BACKLOG}",
        )
        self.assertEqual(with_backlog("unix:/run/chatd.sock"), f"unix:/run/chatd.sock:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("TCP6:9998:interface=\\:\\:1"), f"TCP6:9998:interface=\\:\\:1:backlog={LISTEN_BACKLOG}")

    def test_an_explicit_backlog_and_other_kinds_are_kept(self) -> None:
        self.assertEqual(with_backlog("tcp:9998:backlog=10"), "tcp:9998:backlog=10")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")

    def test_the_listener_asks_for_the_backlog(self) -> None:
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        serverFromString(reactor, with_backlog("tcp:9998:interface=127.0.0.1")).listen(Factory.forProtocol(Protocol))
        port, _, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (9998, LISTEN_BACKLOG, "127.0.0.1"))

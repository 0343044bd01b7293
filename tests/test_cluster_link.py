"""The cluster's own RESP2 client (chatd/cluster/link.py): the reply
parser fed in every possible cut, and a connection's calls, replies,
reply timeout and loss, on a string transport and a fake reactor."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chatd.cluster.link import (
    RedisLink,
    RedisProtocol,
    RedisProtocolError,
    RedisUnavailable,
    ReplyParser,
    ResponseError,
    encode_command,
)

#: Replies as Redis sends them, and what the parser must make of them.
REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", "OK"),
    (b":42\r\n", 42),
    (b":-3\r\n", -3),
    (b"$5\r\nhello\r\n", "hello"),
    (b"$3\r\n007\r\n", "007"),  # numbers stay strings
    (b"$0\r\n\r\n", ""),
    (b"$-1\r\n", None),
    (b"$2\r\n\xff\xfe\r\n", b"\xff\xfe"),  # not UTF-8: bytes
    (b"$4\r\na\r\nb\r\n", "a\r\nb"),  # CRLF inside a bulk string
    (b"*0\r\n", []),
    (b"*-1\r\n", None),
    (b"*2\r\n$1\r\na\r\n:1\r\n", ["a", 1]),
    (
        b"*1\r\n*2\r\n$6\r\nstream\r\n*2\r\n*2\r\n$3\r\n1-1\r\n*4\r\n$6\r\nsender\r\n$3\r\nbob\r\n"
        b"$4\r\ntext\r\n$2\r\nhi\r\n*2\r\n$3\r\n2-1\r\n*0\r\n",
        [["stream", [["1-1", ["sender", "bob", "text", "hi"]], ["2-1", []]]]],
    ),
    (b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n$1\r\nb\r\n", ["a", None, ["b"]]),
]


class ReplyParserTests(SynchronousTestCase):
    def test_every_reply_whole(self) -> None:
        for raw, expected in REPLIES:
            with self.subTest(raw=raw):
                self.assertEqual(ReplyParser().feed(raw), [expected])

    def test_all_replies_cut_anywhere(self) -> None:
        stream = b"".join(raw for raw, _ in REPLIES)
        expected = [value for _, value in REPLIES]
        for cut in range(len(stream) + 1):
            for second in (cut, min(cut + 7, len(stream))):
                parser = ReplyParser()
                got = parser.feed(stream[:cut]) + parser.feed(stream[cut:second]) + parser.feed(stream[second:])
                self.assertEqual(got, expected, f"cut at {cut} and {second}")

    def test_byte_by_byte(self) -> None:
        stream = b"".join(raw for raw, _ in REPLIES)
        parser = ReplyParser()
        got: list[Any] = []
        for index in range(len(stream)):
            got += parser.feed(stream[index : index + 1])
        self.assertEqual(got, [value for _, value in REPLIES])

    def test_error_reply(self) -> None:
        [error] = ReplyParser().feed(b"-ERR unknown command\r\n")
        self.assertIsInstance(error, ResponseError)
        self.assertEqual(str(error), "ERR unknown command")

    def test_garbage(self) -> None:
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"!what\r\n")
        self.assertRaises(ValueError, ReplyParser().feed, b"$x\r\n")
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"+" + b"a" * 70000)

    def test_encode_command(self) -> None:
        self.assertEqual(encode_command(("SET", "k", "é")), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n")
        self.assertEqual(encode_command((b"\xff", 12)), b"*2\r\n$1\r\n\xff\r\n$2\r\n12\r\n")


class ConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.link = RedisLink(self.clock, "127.0.0.1", 1, 0, 3.0)
        self.protocol = RedisProtocol(self.link)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def outcome(self, d: Any) -> list[Any]:
        got: list[Any] = []
        d.addBoth(got.append)
        return got

    def test_calls_and_replies_in_order(self) -> None:
        self.assertTrue(self.link.connected)
        first = self.outcome(self.link.call("GET", "a"))
        second = self.outcome(self.link.call("FOO"))
        third = self.outcome(self.link.call("XREAD"))
        self.assertEqual(self.transport.value(), encode_command(("GET", "a")) + encode_command(("FOO",)) + encode_command(("XREAD",)))
        self.protocol.dataReceived(b"$1\r\n1\r\n-ERR no\r\n*1\r")
        self.assertEqual(first, ["1"])
        self.assertIsInstance(second[0], Failure)
        self.assertIsInstance(second[0].value, ResponseError)
        self.assertEqual(third, [])
        self.protocol.dataReceived(b"\n:1\r\n")
        self.assertEqual(third, [[1]])

    def test_reply_timeout_fails_every_call_and_drops_the_connection(self) -> None:
        first = self.outcome(self.link.call("GET", "a"))
        self.clock.advance(2)
        second = self.outcome(self.link.call("GET", "b"))
        self.clock.advance(0.5)
        self.protocol.dataReceived(b"$1\r\n1\r\n")  # the first is answered in time
        self.assertEqual(first, ["1"])
        self.clock.advance(2.4)  # the second's deadline is 5.0
        self.assertEqual(second, [])
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertIsInstance(second[0].value, RedisUnavailable)
        self.assertTrue(self.transport.disconnected)  # aborted

    def test_lost_connection_fails_the_waiting_calls(self) -> None:
        waiting = self.outcome(self.link.call("GET", "a"))
        self.protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertIsInstance(waiting[0].value, RedisUnavailable)
        self.assertFalse(self.link.connected)
        late = self.outcome(self.link.call("GET", "a"))
        self.assertIsInstance(late[0].value, RedisUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_drops_the_connection(self) -> None:
        waiting = self.outcome(self.link.call("GET", "a"))
        self.protocol.dataReceived(b"?\r\n")
        self.assertIsInstance(waiting[0].value, RedisUnavailable)
        self.assertTrue(self.transport.disconnected)  # aborted

    def test_database_chosen_before_calls(self) -> None:
        link = RedisLink(self.clock, "127.0.0.1", 1, 3, 3.0)
        protocol = RedisProtocol(link)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), encode_command(("SELECT", "3")))
        self.assertFalse(link.connected)
        protocol.dataReceived(b"+OK\r\n")
        self.assertTrue(link.connected)

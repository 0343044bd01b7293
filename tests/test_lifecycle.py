"""Shutdown: users told, pending messages stored, connections closed; logs."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chatd.logs import JSONLinesObserver, event_as_json, json_observer, log_destination

from tests.support import FakeClient, make_factory, names_of, stored


class ShutdownTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = make_factory()
        self.clock = self.factory.clock

    def test_users_told_then_closed(self) -> None:
        alice, bob = FakeClient(self.factory), FakeClient(self.factory, newline=False)
        alice.login("alice")
        bob.login("bob")
        stranger = FakeClient(self.factory)
        done: list[object] = []
        self.factory.shut_down(grace=3).addCallback(done.append)
        for client in (alice, bob, stranger):
            self.assertEqual(client.received()[-1]["content"], "Server shutting down")
            self.assertTrue(client.transport.disconnecting)
        self.assertEqual(done, [])
        for client in (alice, bob, stranger):
            client.disconnect()
        self.assertEqual(done, [None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pending_messages_are_stored_and_delivered_first(self) -> None:
        alice = FakeClient(self.factory)
        alice.login("alice")
        alice.protocol.dataReceived(b'{"request": "msg", "content": "last words"}\n')
        self.factory.shut_down(grace=3)
        responses = alice.received()
        self.assertEqual([r["content"] for r in responses], ["last words", "Server shutting down"])
        self.assertEqual([m.text for m in stored(self.factory.hub)], ["last words"])

    def test_requests_after_the_notice_are_ignored(self) -> None:
        alice = FakeClient(self.factory)
        alice.login("alice")
        self.factory.shut_down(grace=3)
        alice.received()
        alice.send("msg", "too late")
        self.assertEqual(alice.received(), [])
        self.assertEqual(stored(self.factory.hub), [])

    def test_stragglers_aborted_after_grace(self) -> None:
        alice = FakeClient(self.factory)
        alice.login("alice")
        self.factory.shut_down(grace=3)
        self.assertFalse(alice.transport.disconnected)
        self.clock.advance(3)
        self.assertTrue(alice.transport.disconnected)

    def test_no_connections(self) -> None:
        done: list[object] = []
        self.factory.shut_down(grace=3).addCallback(done.append)
        self.assertEqual(done, [None])

    def test_new_connections_refused_while_shutting_down(self) -> None:
        self.factory.shut_down(grace=3)
        late = FakeClient(self.factory)
        [response] = [json.loads(line) for line in late.transport.value().splitlines()]
        self.assertEqual(response["code"], "server_busy")


class JSONLogTests(SynchronousTestCase):
    def capture(self) -> tuple[Logger, io.StringIO]:
        stream = io.StringIO()
        return Logger(namespace="chatd.test", observer=JSONLinesObserver(stream)), stream

    def test_one_json_object_per_line(self) -> None:
        log, stream = self.capture()
        log.info("{user} logged in from {peer}", user="bob", peer="127.0.0.1:5")
        log.warn("odd {thing}", thing=object())
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["message"], "bob logged in from 127.0.0.1:5")
        self.assertEqual((first["level"], first["namespace"], first["user"]), ("info", "chatd.test", "bob"))
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        second = json.loads(lines[1])
        self.assertEqual(second["level"], "warn")
        self.assertNotIn("thing", second)  # not a plain JSON value

    def test_failure_has_a_traceback(self) -> None:
        log, stream = self.capture()
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke", Failure())
        record = json.loads(stream.getvalue())
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_newlines_stay_inside_the_line(self) -> None:
        line = event_as_json({"log_format": "a\nb {x}", "x": "c\nd", "log_level": LogLevel.info, "log_time": 0})
        self.assertNotIn("\n", line)
        self.assertEqual(json.loads(line)["message"], "a\nb c\nd")

    def test_destination_follows_twistd(self) -> None:
        import sys

        self.assertIs(log_destination(None, nodaemon=True), sys.stdout)
        self.assertIs(log_destination("-", nodaemon=False), sys.stdout)
        path = self.mktemp()
        logfile = log_destination(path, nodaemon=True)
        self.addCleanup(logfile.close)
        self.assertEqual(logfile.path, __import__("os").path.abspath(path))
        self.assertIsInstance(json_observer(None), JSONLinesObserver)

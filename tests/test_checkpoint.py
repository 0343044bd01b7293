"""The SQLite WAL is checkpointed off the reactor thread (chatd.server.
HistoryService.checkpoint, chatd.stores.history.SQLiteHistory.checkpoint_wal)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd import server
from chatd.server import HistoryService
from chatd.stores.history import HistoryError, Retention, SQLiteHistory
from tests.support import make_factory


class CheckpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "chatd.sqlite3")
        self.store = SQLiteHistory(self.path)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.factory = make_factory(clock=self.clock, store=self.store)
        self.ran: list[Callable[[], None]] = []

    def in_thread(self, work: Callable[[], None]) -> Deferred[None]:
        self.ran.append(work)
        try:
            work()
        except Exception:
            return fail()
        return succeed(None)

    def fill(self, count: int) -> None:
        for index in range(count):
            self.store.append("#lobby", "bob", f"message {index} " + "x" * 1800, "2026-12-02T00:00:00.000Z")
        self.store.commit()

    def test_commits_never_checkpoint(self) -> None:
        mode = self.store._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.assertEqual(mode, 0)
        self.fill(3000)  # well past SQLite's 1,000 pages
        self.assertGreater(self.store.wal_bytes(), server.CHECKPOINT_BYTES)

    def test_the_service_checkpoints_a_big_wal_in_a_thread(self) -> None:
        service = HistoryService(self.factory.hub, Retention(), self.clock, in_thread=self.in_thread)
        service.startService()
        self.addCleanup(service.stopService)
        self.fill(10)
        self.clock.advance(server.CHECKPOINT_EVERY)
        self.assertEqual(self.ran, [])  # a small WAL is left alone
        self.fill(3000)
        before = os.stat(self.path).st_size
        self.clock.advance(server.CHECKPOINT_EVERY)
        self.assertEqual(len(self.ran), 1)
        self.assertGreater(os.stat(self.path).st_size, before + 1_000_000)  # the messages are in the database file
        # The next writer starts the WAL again (truncated to the limit).
        self.fill(1)
        self.assertEqual(len(self.store.recent("#lobby", None)), 3011)

    def test_a_failed_checkpoint_is_logged_and_tried_again(self) -> None:
        calls: list[int] = []

        def failing(work: Callable[[], None]) -> Deferred[None]:
            calls.append(1)
            return fail(HistoryError("disk on fire"))

        service = HistoryService(self.factory.hub, Retention(), self.clock, in_thread=failing)
        service.startService()
        self.addCleanup(service.stopService)
        self.fill(3000)
        self.clock.advance(server.CHECKPOINT_EVERY)
        self.clock.advance(server.CHECKPOINT_EVERY)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_a_checkpoint_never_creates_a_database(self) -> None:
        self.store.close()
        os.remove(self.path)
        with self.assertRaises(HistoryError):
            self.store.checkpoint_wal()
        self.assertFalse(os.path.exists(self.path))

    def test_a_checkpoint_beside_a_writer(self) -> None:
        self.fill(100)
        reader: Any = sqlite3.connect(self.path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchone()  # a reader holds a snapshot
        self.store.checkpoint_wal()  # passive: copies what it can, blocks nobody
        self.fill(5)
        reader.execute("ROLLBACK")
        reader.close()
        self.store.checkpoint_wal()
        self.assertEqual(len(self.store.recent("#lobby", None)), 105)

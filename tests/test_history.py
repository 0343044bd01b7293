"""History stores: one contract, run against both stores; SQLite specifics."""

from __future__ import annotations

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatd.history import MAX_PAGE, HistoryError, HistoryStore, MemoryHistory, Retention, SQLiteHistory
from chatd.messages import format_timestamp

DAY = 86400.0


class StoreContract:
    """Tests every store must pass; mixed into a TestCase per store."""

    def make_store(self) -> HistoryStore:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.make_store()

    def add(self, count: int, room: str = "#lobby", start: float = 1_700_000_000.0) -> None:
        for i in range(count):
            self.store.append(room, "bob", f"m{i}", format_timestamp(start + i))
        self.store.commit()

    def texts(self, found: list) -> list[str]:
        return [message.text for message in found]

    def test_ids_start_at_one_and_increase(self) -> None:
        first = self.store.append("#lobby", "bob", "a", "t")
        second = self.store.append("#lobby", "bob", "b", "t")
        self.assertEqual((first.id, second.id), (1, 2))

    def test_ids_per_room(self) -> None:
        self.assertEqual(self.store.append("#a", "bob", "a", "t").id, 1)
        self.assertEqual(self.store.append("#b", "bob", "b", "t").id, 1)
        self.assertEqual(self.store.append("#a", "bob", "c", "t").id, 2)

    def test_pending_messages_are_not_read_until_committed(self) -> None:
        self.store.append("#lobby", "bob", "a", "t")
        self.assertEqual(self.store.recent("#lobby", None), [])
        self.assertEqual(self.store.pending, 1)
        committed = self.store.commit()
        self.assertEqual(self.texts(committed), ["a"])
        self.assertEqual(self.texts(self.store.recent("#lobby", None)), ["a"])
        self.assertEqual(self.store.pending, 0)

    def test_message_fields_round_trip(self) -> None:
        sent = self.store.append("#lobby", "007", "h\u00e9 \U0001f600\n\t\"x\"", "2026-11-25T19:34:22.123Z")
        self.store.commit()
        [got] = self.store.recent("#lobby", 1)
        self.assertEqual(got, sent)
        self.assertEqual(got.payload, sent.payload)
        self.assertEqual(got.sender, "007")

    def test_recent(self) -> None:
        self.add(10)
        self.assertEqual(self.texts(self.store.recent("#lobby", 3)), ["m7", "m8", "m9"])
        self.assertEqual(len(self.store.recent("#lobby", None)), 10)
        self.assertEqual(self.store.recent("#lobby", 0), [])
        self.assertEqual(self.store.recent("#nowhere", 5), [])

    def test_page_after(self) -> None:
        self.add(10)
        found, more = self.store.page("#lobby", after=3, limit=4)
        self.assertEqual([m.id for m in found], [4, 5, 6, 7])
        self.assertTrue(more)
        found, more = self.store.page("#lobby", after=6, limit=4)
        self.assertEqual([m.id for m in found], [7, 8, 9, 10])
        self.assertFalse(more)
        found, more = self.store.page("#lobby", after=10, limit=4)
        self.assertEqual((found, more), ([], False))

    def test_page_before(self) -> None:
        self.add(10)
        found, more = self.store.page("#lobby", before=8, limit=3)
        self.assertEqual([m.id for m in found], [5, 6, 7])
        self.assertTrue(more)
        found, more = self.store.page("#lobby", before=4, limit=3)
        self.assertEqual([m.id for m in found], [1, 2, 3])
        self.assertFalse(more)
        self.assertEqual(self.store.page("#lobby", before=1, limit=3), ([], False))

    def test_page_newest(self) -> None:
        self.add(10)
        found, more = self.store.page("#lobby", limit=4)
        self.assertEqual([m.id for m in found], [7, 8, 9, 10])
        self.assertTrue(more)
        found, more = self.store.page("#lobby", limit=10)
        self.assertEqual(len(found), 10)
        self.assertFalse(more)

    def test_page_limit_clamped(self) -> None:
        self.add(MAX_PAGE + 20)
        found, more = self.store.page("#lobby", after=0, limit=100000)
        self.assertEqual(len(found), MAX_PAGE)
        self.assertTrue(more)
        found, _ = self.store.page("#lobby", after=0, limit=0)
        self.assertEqual(len(found), 1)
        found, _ = self.store.page("#lobby", after=0, limit=-5)
        self.assertEqual(len(found), 1)

    def test_page_both_directions_refused(self) -> None:
        self.assertRaises(ValueError, self.store.page, "#lobby", before=5, after=1)

    def test_paging_walks_everything_once(self) -> None:
        self.add(23)
        seen: list[int] = []
        after, more = 0, True
        while more:
            found, more = self.store.page("#lobby", after=after, limit=5)
            seen.extend(m.id for m in found)
            after = found[-1].id
        self.assertEqual(seen, list(range(1, 24)))

    def test_prune_by_count_keeps_ids_growing(self) -> None:
        self.add(10)
        self.assertEqual(self.store.prune(Retention(count=4), 0), 6)
        self.assertEqual([m.id for m in self.store.recent("#lobby", None)], [7, 8, 9, 10])
        self.assertEqual(self.store.append("#lobby", "bob", "next", "t").id, 11)

    def test_prune_by_age(self) -> None:
        self.add(5, start=1_700_000_000.0)
        self.add(0)
        self.store.append("#lobby", "bob", "new", format_timestamp(1_700_000_000.0 + 40 * DAY))
        self.store.commit()
        dropped = self.store.prune(Retention(days=30), 1_700_000_000.0 + 45 * DAY)
        self.assertEqual(dropped, 5)
        self.assertEqual(self.texts(self.store.recent("#lobby", None)), ["new"])

    def test_no_retention_prunes_nothing(self) -> None:
        self.add(5)
        self.assertEqual(self.store.prune(Retention(), 1e12), 0)
        self.assertEqual(len(self.store.recent("#lobby", None)), 5)

    def test_last_id(self) -> None:
        self.assertEqual(self.store.last_id("#lobby"), 0)
        self.add(3)
        self.assertEqual(self.store.last_id("#lobby"), 3)


class MemoryHistoryTests(StoreContract, SynchronousTestCase):
    def make_store(self) -> HistoryStore:
        return MemoryHistory()


class SQLiteHistoryTests(StoreContract, SynchronousTestCase):
    def make_store(self) -> HistoryStore:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "chatd.sqlite3")
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def reopen(self) -> SQLiteHistory:
        self.store.close()
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def test_restart_keeps_history_and_ids(self) -> None:
        self.add(5)
        store = self.reopen()
        self.assertEqual([m.text for m in store.recent("#lobby", None)], [f"m{i}" for i in range(5)])
        self.assertEqual(store.append("#lobby", "bob", "after restart", "t").id, 6)

    def test_ids_never_reused_after_pruning_and_restart(self) -> None:
        self.add(5)
        self.store.prune(Retention(count=1), 0)
        self.store.prune(Retention(days=1), 1_800_000_000.0)  # everything is old now
        self.assertEqual(self.store.recent("#lobby", None), [])
        store = self.reopen()
        self.assertEqual(store.append("#lobby", "bob", "x", "t").id, 6)

    def test_uncommitted_messages_are_not_stored(self) -> None:
        self.store.append("#lobby", "bob", "never committed", "t")
        self.store._pending.clear()  # as if the process died before the commit
        store = self.reopen()
        self.assertEqual(store.recent("#lobby", None), [])

    def test_wal_and_schema_version(self) -> None:
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(db.execute("SELECT version FROM schema_version").fetchone()[0], 1)

    def test_newer_schema_refused(self) -> None:
        self.store.close()
        db = sqlite3.connect(self.path)
        db.execute("UPDATE schema_version SET version = 99")
        db.commit()
        db.close()
        error = self.assertRaises(HistoryError, SQLiteHistory, self.path)
        self.assertIn("schema version 99", str(error))

    def test_corrupt_file(self) -> None:
        path = os.path.join(self.directory, "corrupt.sqlite3")
        with open(path, "wb") as handle:
            handle.write(b"this is not a database at all" * 100)
        error = self.assertRaises(HistoryError, SQLiteHistory, path)
        self.assertIn(path, str(error))
        self.assertIn("not a database", str(error))

    def test_unwritable_directory(self) -> None:
        if os.geteuid() == 0:
            path = "/proc/chatd-cannot-be-here.sqlite3"
        else:  # pragma: no cover - CI runs as root
            locked = os.path.join(self.directory, "locked")
            os.makedirs(locked)
            os.chmod(locked, 0o500)
            path = os.path.join(locked, "chatd.sqlite3")
        error = self.assertRaises(HistoryError, SQLiteHistory, path)
        self.assertIn(path, str(error))

    def test_failed_commit_hands_ids_out_again(self) -> None:
        self.add(2)
        self.store.append("#lobby", "bob", "doomed", "t")
        real = self.store._db
        self.store._db = None  # any use now fails
        self.assertRaises(HistoryError, self.store.commit)
        self.store._db = real
        self.assertEqual(self.store.append("#lobby", "bob", "retry", "t").id, 3)
        self.store.commit()
        self.assertEqual([m.text for m in self.store.recent("#lobby", None)], ["m0", "m1", "retry"])

    def test_fsync_option(self) -> None:
        store = SQLiteHistory(os.path.join(self.directory, "synced.sqlite3"), fsync=True)
        self.addCleanup(store.close)
        self.assertEqual(store._connection().execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        self.assertEqual(self.store._connection().execute("PRAGMA synchronous").fetchone()[0], 1)  # NORMAL


class RetentionTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(Retention.parse("30d"), Retention(days=30))
        self.assertEqual(Retention.parse("1000"), Retention(count=1000))
        self.assertEqual(Retention.parse("0.5d"), Retention(days=0.5))
        for bad in ("", "x", "0", "-1", "30days", "0d", "d"):
            self.assertRaises(ValueError, Retention.parse, bad)

    def test_cutoff(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000 + DAY)
        self.assertEqual(Retention(days=1).cutoff(clock.seconds()), format_timestamp(1_700_000_000))
        self.assertIsNone(Retention(count=5).cutoff(clock.seconds()))

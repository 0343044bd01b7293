"""History stores: one contract, run against both stores; SQLite specifics."""

from __future__ import annotations

import os
import shutil
import sqlite3

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.json.encoding import encode_message
from chatd.stores import history
from chatd.stores.history import (
    MAX_PAGE,
    SCHEMA_VERSION,
    HistoryBusy,
    HistoryError,
    HistoryStore,
    MemoryHistory,
    Retention,
    SQLiteHistory,
    StoredMessage,
)
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
        self.assertEqual(encode_message(got), encode_message(sent))
        self.assertEqual(got.sender, "007")

    def test_a_notice_stays_a_notice(self) -> None:
        notice = self.store.append("#lobby", "bob", "from IRC", "2026-11-25T19:34:22.123Z", notice=True)
        plain = self.store.append("#lobby", "bob", "plain", "2026-11-25T19:34:22.124Z")
        self.store.commit()
        self.assertEqual([m.notice for m in self.store.recent("#lobby", None)], [True, False])
        self.assertEqual(self.store.recent("#lobby", None), [notice, plain])
        self.assertIn(b'"notice": true', encode_message(self.store.recent("#lobby", 2)[0]))
        self.assertNotIn(b"notice", encode_message(self.store.recent("#lobby", 1)[0]))

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
        self.assertEqual(db.execute("SELECT version FROM schema_version").fetchone()[0], SCHEMA_VERSION)

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


class FailingMemoryHistory(MemoryHistory):
    """A memory store whose writes fail while ``fail`` is set."""

    fail = False

    def _write(self, batch: list[StoredMessage]) -> None:
        if self.fail:
            raise HistoryError("disk on fire")
        super()._write(batch)


class CheckTests(SynchronousTestCase):
    """``check()``: healthy until a commit fails, healthy again once writes work."""

    def test_memory_store(self) -> None:
        store = FailingMemoryHistory()
        store.check()
        store.fail = True
        store.append("#lobby", "bob", "lost", "t")
        self.assertRaises(HistoryError, store.commit)
        error = self.assertRaises(HistoryError, store.check)
        self.assertIn("disk on fire", str(error))
        store.fail = False
        store.check()  # its probe write works: healthy without waiting for a message
        store.check()


class SQLiteCase(SynchronousTestCase):
    """A fresh SQLite store in a fresh directory; log events collected."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "chatd.sqlite3")
        self.events: list[dict] = []
        self.patch(SQLiteHistory, "log", Logger(observer=self.events.append))
        self.store = self.open_store()

    def open_store(self, path: str | None = None) -> SQLiteHistory:
        store = SQLiteHistory(path or self.path)
        self.addCleanup(store.close)
        return store

    def add(self, count: int, store: HistoryStore | None = None, text: str = "m") -> None:
        store = store or self.store
        for i in range(count):
            store.append("#lobby", "bob", f"{text}{i}", "t")
        store.commit()

    def stored(self, path: str | None = None) -> list[tuple[int, str]]:
        """(id, text) of every message in the file at ``path``, read afresh."""
        db = sqlite3.connect(path or self.path)
        try:
            return [(row[0], row[1]) for row in db.execute("SELECT id, text FROM messages ORDER BY id")]
        finally:
            db.close()

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(event) for event in self.events if event["log_level"] == level]

    def lock(self) -> sqlite3.Connection:
        """Another connection takes the write lock, as ``sqlite3 file 'BEGIN EXCLUSIVE'`` would."""
        locker = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        return locker


class DiskFullTests(SQLiteCase):
    """Finding 10: the real error is reported, and check() fails."""

    def fill(self) -> None:
        self.add(20, text="x" * 1000)
        db = self.store._connection()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite answers SQLITE_FULL past this

    def test_commit_names_the_real_error(self) -> None:
        self.fill()
        for _ in range(5):
            self.store.append("#lobby", "bob", "y" * 3000, "t")
        error = self.assertRaises(HistoryError, self.store.commit)
        self.assertIn("database or disk is full", str(error))
        self.assertNotIn("no transaction", str(error))
        self.assertEqual(self.store.pending, 0)
        self.assertEqual(self.store.append("#lobby", "bob", "next", "t").id, 21)  # ids handed out again

    def test_check_fails_until_writes_work_again(self) -> None:
        self.store.check()
        self.fill()
        self.store.append("#lobby", "bob", "y" * 3000, "t")
        self.assertRaises(HistoryError, self.store.commit)
        error = self.assertRaises(HistoryError, self.store.check)
        self.assertIn("database or disk is full", str(error))
        self.store._connection().execute("PRAGMA max_page_count = 1000000")  # space freed
        self.store.check()  # healthy without a message having to succeed first
        self.assertEqual(self.stored()[-1][0], 20)  # the probe left nothing behind


class CorruptDatabaseTests(SQLiteCase):
    """Finding 13 (store side): every read of a damaged file raises HistoryError."""

    def corrupt(self) -> SQLiteHistory:
        self.add(300, text="m" * 500)
        self.store.close()
        page = 4096
        size = os.path.getsize(self.path)
        # Pages 1-4 hold the schema and the roots of the three tables: the
        # file still opens, and reading messages meets garbage.
        with open(self.path, "r+b") as handle:
            for number in range(6, size // page + 1):
                handle.seek((number - 1) * page)
                handle.write(b"\xa5" * page)
        return self.open_store()

    def test_reads_raise_history_error(self) -> None:
        store = self.corrupt()
        for read in (
            lambda: store.recent("#lobby", None),
            lambda: store.recent("#lobby", 10),
            lambda: store.page("#lobby", after=0),
            lambda: store.page("#lobby", before=200),
            lambda: store.page("#lobby"),
            store.check,
        ):
            error = self.assertRaises(HistoryError, read)
            self.assertIn("malformed", str(error))
        store.append("#lobby", "bob", "new", "t")
        self.assertRaises(HistoryError, store.commit)

    def test_foreign_values_raise_history_error(self) -> None:
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO messages VALUES ('#lobby', 1, 'bob', ?, 't', 0)", (b"\xff\x00",))
        db.execute("INSERT INTO rooms VALUES ('#odd', 'seven')")
        db.commit()
        db.close()
        for read in (lambda: self.store.recent("#lobby", None), lambda: self.store.page("#lobby", after=0)):
            error = self.assertRaises(HistoryError, read)
            self.assertIn("malformed message", str(error))
        self.assertRaises(HistoryError, self.store.last_id, "#odd")
        self.assertRaises(HistoryError, self.store.append, "#odd", "bob", "x", "t")


class DeletedDatabaseTests(SQLiteCase):
    """Finding 11: a database file deleted or replaced while running."""

    def test_deleted_file_is_put_back_with_its_history(self) -> None:
        self.add(3)
        os.unlink(self.path)
        self.store.append("#lobby", "bob", "after", "t")
        self.store.commit()
        self.assertEqual(self.stored(), [(1, "m0"), (2, "m1"), (3, "m2"), (4, "after")])
        self.assertEqual(self.store.append("#lobby", "bob", "next", "t").id, 5)
        self.assertTrue(any(self.path in line and "deleted" in line for line in self.logged(LogLevel.error)))
        self.assertEqual([name for name in os.listdir(self.directory) if name.endswith(".saved")], [])

    def test_deleted_with_its_journal(self) -> None:
        self.add(3)
        for suffix in ("", "-wal", "-shm"):
            os.unlink(self.path + suffix)
        self.add(1, text="after")
        self.store.close()
        store = self.open_store()
        self.assertEqual([m.text for m in store.recent("#lobby", None)], ["m0", "m1", "m2", "after0"])
        self.assertEqual(store.append("#lobby", "bob", "x", "t").id, 5)

    def test_put_back_at_close_even_with_nothing_pending(self) -> None:
        self.add(3)
        os.unlink(self.path)
        self.store.close()
        self.assertEqual([text for _id, text in self.stored()], ["m0", "m1", "m2"])

    def test_check_puts_it_back(self) -> None:
        self.add(2)
        os.unlink(self.path)
        self.store.check()
        self.assertEqual(len(self.stored()), 2)

    def test_replaced_file_continues_ids_and_keeps_a_copy(self) -> None:
        self.add(5)
        other_path = os.path.join(self.directory, "other.sqlite3")
        other = SQLiteHistory(other_path)
        self.add(2, other, text="other")
        other.close()
        os.replace(other_path, self.path)
        self.store.append("#lobby", "bob", "after", "t")
        self.store.commit()
        self.assertEqual(self.stored(), [(1, "other0"), (2, "other1"), (6, "after")])
        [saved] = [name for name in os.listdir(self.directory) if name.endswith(".saved")]
        saved = os.path.join(self.directory, saved)
        self.assertEqual([text for _id, text in self.stored(saved)], [f"m{i}" for i in range(5)])
        self.assertTrue(any(saved in line for line in self.logged(LogLevel.error)))
        self.store.close()
        self.assertEqual(self.open_store().append("#lobby", "bob", "x", "t").id, 7)  # also after a restart

    def test_replaced_by_a_file_with_newer_ids(self) -> None:
        self.add(2)
        other_path = os.path.join(self.directory, "other.sqlite3")
        other = SQLiteHistory(other_path)
        self.add(10, other, text="other")
        other.close()
        os.replace(other_path, self.path)
        self.store.append("#lobby", "bob", "numbered 3", "t")
        self.assertRaises(HistoryError, self.store.commit)  # id 3 is taken there
        self.store.append("#lobby", "bob", "after", "t")
        self.store.commit()
        self.assertEqual(self.stored()[-1], (11, "after"))

    def test_directory_gone_refuses_writes_until_it_can_put_it_back(self) -> None:
        self.add(2)
        shutil.rmtree(self.directory)
        self.store.append("#lobby", "bob", "refused", "t")
        error = self.assertRaises(HistoryError, self.store.commit)
        self.assertIn(self.path, str(error))
        self.assertIn("cannot be put back", str(error))
        self.assertRaises(HistoryError, self.store.check)
        self.assertEqual([m.text for m in self.store.recent("#lobby", None)], ["m0", "m1"])  # reads go on
        os.makedirs(self.directory)
        self.store.append("#lobby", "bob", "kept", "t")
        self.store.commit()
        self.store.check()
        self.assertEqual(self.stored(), [(1, "m0"), (2, "m1"), (3, "kept")])


class LockedDatabaseTests(SQLiteCase):
    """Finding 12, store side: a lock held elsewhere fails fast and passes."""

    def test_statements_hardly_wait(self) -> None:
        timeout = self.store._connection().execute("PRAGMA busy_timeout").fetchone()[0]
        self.assertLessEqual(timeout, 10)

    def test_commit_with_retry_keeps_the_batch(self) -> None:
        self.add(1)
        locker = self.lock()
        self.store.append("#lobby", "bob", "waits", "t")
        self.assertRaises(HistoryBusy, self.store.commit, retry=True)
        self.assertEqual(self.store.pending, 1)
        self.assertEqual(self.store.append("#lobby", "bob", "joins", "t").id, 3)
        self.assertEqual([m.text for m in self.store.recent("#lobby", None)], ["m0"])  # reads go on
        self.store.check()  # busy is not broken
        locker.execute("ROLLBACK")
        self.assertEqual([m.id for m in self.store.commit(retry=True)], [2, 3])
        self.assertEqual(self.stored(), [(1, "m0"), (2, "waits"), (3, "joins")])

    def test_commit_without_retry_fails_and_frees_the_ids(self) -> None:
        locker = self.lock()
        self.store.append("#lobby", "bob", "lost", "t")
        error = self.assertRaises(HistoryError, self.store.commit)
        self.assertIn("locked", str(error))
        self.assertEqual(self.store.pending, 0)
        self.assertRaises(HistoryError, self.store.check)  # the probe is refused too
        locker.execute("ROLLBACK")
        self.store.check()
        self.assertEqual(self.store.append("#lobby", "bob", "kept", "t").id, 1)

    def test_prune_and_close_while_locked(self) -> None:
        self.add(3)
        locker = self.lock()
        self.assertRaises(HistoryError, self.store.prune, Retention(count=1), 0)
        self.store.close()  # returns; nothing pending is lost
        locker.execute("ROLLBACK")
        self.assertEqual(len(self.stored()), 3)


class RollbackTests(SQLiteCase):
    def test_failed_migration_is_rolled_back_whole(self) -> None:
        path = os.path.join(self.directory, "half.sqlite3")
        broken = {1: ["CREATE TABLE messages (x)", "CREATE TABLE messages (y)"]}
        self.patch(history, "MIGRATIONS", broken)
        error = self.assertRaises(HistoryError, SQLiteHistory, path)
        self.assertIn("already exists", str(error))
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
        self.assertEqual(tables, ["schema_version"])

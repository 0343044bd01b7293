"""The stores' accounts and moderation part (issue 16): one contract run
against both stores, then the SQLite migration to schema 3."""

from __future__ import annotations

import os
import shutil
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from chatd.accounts.records import AccountRecord, Restriction
from chatd.core.rooms import dm_key
from chatd.stores import history
from chatd.stores.history import HistoryError, HistoryStore, MemoryHistory, Retention, SQLiteHistory, StoredMessage
from chatd.stores.roomstate import RoomRecord

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "chatd-schema1.sqlite3")
HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
T0 = "2026-12-01T10:00:00.000Z"


def dm(conversation: str, message_id: int, sender: str, to: str, text: str | None = None) -> StoredMessage:
    return StoredMessage(message_id, conversation, sender, text or f"dm {message_id}", f"2026-12-01T10:00:{message_id % 60:02d}.000Z", to)


class AccountStoreContract:
    """What every store keeps of accounts, bans, mutes, memberships and DMs."""

    store: HistoryStore

    def make_store(self) -> HistoryStore:
        raise NotImplementedError

    def reopen(self) -> HistoryStore:
        """The same store as a restarted server sees it (memory: itself)."""
        return self.store

    def setUp(self) -> None:
        self.store = self.make_store()

    # -- accounts ----------------------------------------------------------

    def test_account_saved_and_loaded_by_any_case(self) -> None:
        self.assertIsNone(self.store.load_account("alice"))
        self.store.save_account(AccountRecord("Alice", HASH, T0))
        store = self.reopen()
        record = store.load_account("ALICE")
        self.assertEqual(record, AccountRecord("Alice", HASH, T0))
        assert record is not None
        self.assertEqual(record.key, "alice")

    def test_save_account_updates_the_hash(self) -> None:
        self.store.save_account(AccountRecord("Alice", HASH, T0))
        self.store.save_account(AccountRecord("Alice", HASH + "x", T0))
        record = self.reopen().load_account("alice")
        assert record is not None
        self.assertEqual(record.password_hash, HASH + "x")
        self.assertEqual(len(self.reopen().accounts()), 1)

    def test_create_account_refuses_an_existing_name(self) -> None:
        self.assertTrue(self.store.create_account(AccountRecord("Alice", HASH, T0)))
        self.assertFalse(self.store.create_account(AccountRecord("aLICE", HASH + "other", T0)))
        record = self.reopen().load_account("alice")
        assert record is not None
        self.assertEqual((record.name, record.password_hash), ("Alice", HASH))

    def test_accounts_by_key(self) -> None:
        for name in ("carol", "Bob", "alice"):
            self.store.save_account(AccountRecord(name, HASH, T0))
        self.assertEqual([record.name for record in self.reopen().accounts()], ["alice", "Bob", "carol"])

    def test_account_repr_leaves_the_hash_out(self) -> None:
        self.assertNotIn(HASH, repr(AccountRecord("alice", HASH, T0)))

    # -- bans and mutes ----------------------------------------------------

    def test_bans_kept_with_expiry_by_and_comment(self) -> None:
        ban = Restriction("#Dev", "Bob", expires=1_800_000_000.5, by="alice", comment="spam", created=T0)
        self.store.save_ban(ban)
        self.store.save_ban(Restriction("#dev", "carol"))
        self.store.save_ban(Restriction("#other", "bob"))
        store = self.reopen()
        self.assertEqual(store.load_bans("#DEV"), [ban, Restriction("#dev", "carol")])
        self.assertEqual([(b.room_key, b.key) for b in store.load_bans()], [("#dev", "bob"), ("#dev", "carol"), ("#other", "bob")])
        self.assertEqual(store.load_mutes(), [])

    def test_ban_replaced_by_a_newer_one(self) -> None:
        self.store.save_ban(Restriction("#dev", "bob", expires=10.0))
        self.store.save_ban(Restriction("#dev", "BOB", expires=None, comment="for good"))
        self.assertEqual(self.reopen().load_bans("#dev"), [Restriction("#dev", "BOB", expires=None, comment="for good")])

    def test_unban(self) -> None:
        self.store.save_ban(Restriction("#dev", "bob"))
        self.assertTrue(self.store.remove_ban("#DEV", "Bob"))
        self.assertFalse(self.store.remove_ban("#dev", "bob"))
        self.assertEqual(self.reopen().load_bans(), [])

    def test_mutes_apart_from_bans(self) -> None:
        self.store.save_mute(Restriction("#dev", "bob", expires=5.0))
        self.store.save_ban(Restriction("#dev", "carol"))
        self.assertEqual(self.store.load_mutes("#dev"), [Restriction("#dev", "bob", expires=5.0)])
        self.assertFalse(self.store.remove_ban("#dev", "bob"))
        self.assertTrue(self.store.remove_mute("#dev", "bob"))
        self.assertEqual(self.reopen().load_mutes(), [])
        self.assertEqual(len(self.reopen().load_bans()), 1)

    def test_expired_restrictions_pruned(self) -> None:
        self.store.save_ban(Restriction("#dev", "gone", expires=100.0))
        self.store.save_ban(Restriction("#dev", "stays", expires=200.0))
        self.store.save_ban(Restriction("#dev", "forever"))
        self.store.save_mute(Restriction("#dev", "muted", expires=50.0))
        self.assertFalse(Restriction("#dev", "gone", expires=100.0).active(100.0))
        self.assertTrue(Restriction("#dev", "gone", expires=100.0).active(99.9))
        self.assertEqual(self.store.prune_restrictions(100.0), 2)
        self.assertEqual([ban.name for ban in self.reopen().load_bans()], ["forever", "stays"])
        self.assertEqual(self.reopen().load_mutes(), [])

    # -- memberships -------------------------------------------------------

    def test_memberships_in_join_order(self) -> None:
        for room in ("#zeta", "#Alpha", "#mid"):
            self.store.add_membership("Alice", room)
        self.store.add_membership("alice", "#ZETA")  # already in: its place stays
        self.store.add_membership("bob", "#alpha")
        store = self.reopen()
        self.assertEqual(store.memberships("ALICE"), ["#zeta", "#alpha", "#mid"])
        self.assertEqual(store.room_accounts("#Alpha"), ["alice", "bob"])
        self.assertEqual(store.memberships("nobody"), [])

    def test_membership_removed_and_rejoined_goes_last(self) -> None:
        for room in ("#a", "#b", "#c"):
            self.store.add_membership("alice", room)
        self.store.remove_membership("Alice", "#A")
        self.store.remove_membership("alice", "#never")
        self.assertEqual(self.reopen().memberships("alice"), ["#b", "#c"])
        self.store.add_membership("alice", "#a")
        self.assertEqual(self.reopen().memberships("alice"), ["#b", "#c", "#a"])
        self.assertEqual(self.reopen().room_accounts("#a"), ["alice"])

    # -- stored DMs --------------------------------------------------------

    def test_dm_readable_only_by_its_owner(self) -> None:
        conversation = dm_key("alice", "bob")
        message = dm(conversation, 1, "alice", "bob", "hi bob")
        self.store.store_dms([("Alice", message)])  # bob was a guest: alice's side only
        store = self.reopen()
        self.assertEqual(store.dm_recent("alice", conversation, None), [message])
        self.assertEqual(store.dm_recent("bob", conversation, None), [])
        self.assertEqual(store.dm_page("bob", conversation), ([], False))
        # Not room history either.
        self.assertEqual(store.recent(conversation, None), [])

    def test_dm_kept_once(self) -> None:
        conversation = dm_key("alice", "bob")
        message = dm(conversation, 1, "alice", "bob")
        self.store.store_dms([("alice", message), ("bob", message)])
        self.store.store_dms([("alice", message)])
        store = self.reopen()
        self.assertEqual(store.dm_recent("alice", conversation, None), [message])
        self.assertEqual(store.dm_recent("bob", conversation, None), [message])

    def test_dm_pages(self) -> None:
        conversation = dm_key("alice", "bob")
        self.store.store_dms([("alice", dm(conversation, i, "bob", "alice")) for i in range(1, 11)])
        store = self.reopen()
        ids = lambda found: [m.id for m in found]  # noqa: E731
        page, more = store.dm_page("alice", conversation, limit=3)
        self.assertEqual((ids(page), more), ([8, 9, 10], True))
        page, more = store.dm_page("alice", conversation, before=8, limit=3)
        self.assertEqual((ids(page), more), ([5, 6, 7], True))
        page, more = store.dm_page("alice", conversation, before=3, limit=5)
        self.assertEqual((ids(page), more), ([1, 2], False))
        page, more = store.dm_page("alice", conversation, after=7, limit=2)
        self.assertEqual((ids(page), more), ([8, 9], True))
        page, more = store.dm_page("alice", conversation, after=8, limit=2)
        self.assertEqual((ids(page), more), ([9, 10], False))
        self.assertEqual(ids(store.dm_recent("alice", conversation, 2)), [9, 10])
        self.assertEqual(store.dm_recent("alice", conversation, 0), [])
        self.assertRaises(ValueError, store.dm_page, "alice", conversation, before=1, after=1)
        first = store.dm_recent("alice", conversation, 1)[0]
        self.assertEqual((first.room, first.sender, first.to), (conversation, "bob", "alice"))

    def test_undelivered_above_the_marks(self) -> None:
        with_bob = dm_key("alice", "bob")
        with_carol = dm_key("alice", "carol")
        self.store.store_dms([("alice", dm(with_bob, i, "bob", "alice")) for i in range(1, 4)])
        self.store.store_dms([("alice", dm(with_carol, i, "carol", "alice")) for i in range(1, 3)])
        self.store.store_dms([("bob", dm(with_bob, 9, "alice", "bob"))])
        self.assertEqual(self.store.delivered("alice", with_bob), 0)
        found = self.reopen().undelivered("Alice")
        self.assertEqual([(c, [m.id for m in page], more) for c, page, more in found], [(with_bob, [1, 2, 3], False), (with_carol, [1, 2], False)])
        self.store.mark_delivered("alice", with_bob, 2)
        self.store.mark_delivered("ALICE", with_bob, 1)  # a mark never goes back
        self.store.mark_delivered_many([("alice", with_carol, 2)])
        store = self.reopen()
        self.assertEqual(store.delivered("alice", with_bob), 2)
        found = store.undelivered("alice")
        self.assertEqual([(c, [m.id for m in page], more) for c, page, more in found], [(with_bob, [3], False)])
        self.store.mark_delivered("alice", with_bob, 3)
        self.assertEqual(self.reopen().undelivered("alice"), [])
        self.assertEqual([c for c, _page, _more in self.reopen().undelivered("bob")], [with_bob])

    def test_undelivered_oldest_hundred_per_conversation(self) -> None:
        conversation = dm_key("alice", "bob")
        self.store.store_dms([("alice", dm(conversation, i, "bob", "alice")) for i in range(1, 131)])
        [(found_conversation, page, more)] = self.reopen().undelivered("alice")
        self.assertEqual((found_conversation, page[0].id, page[-1].id, len(page), more), (conversation, 1, 100, 100, True))
        self.store.mark_delivered("alice", conversation, page[-1].id)
        [(_c, page, more)] = self.reopen().undelivered("alice")
        self.assertEqual((page[0].id, page[-1].id, more), (101, 130, False))

    def test_dm_prune_by_count_and_age(self) -> None:
        conversation = dm_key("alice", "bob")
        for i in range(1, 6):
            self.store.append(conversation, "bob", f"dm {i}", f"2026-12-0{i}T00:00:00.000Z", to="alice", keep=False)
        stored = self.store.commit()
        self.store.store_dms([("alice", message) for message in stored])
        self.assertEqual(self.store.prune_dms(Retention(), 0), 0)
        self.assertEqual(self.store.prune_dms(Retention(count=3), 0), 2)
        self.assertEqual([m.id for m in self.reopen().dm_recent("alice", conversation, None)], [3, 4, 5])
        # 2026-12-05T00:00Z is 1796428800; keep one day back from noon that day.
        self.assertEqual(self.store.prune_dms(Retention(days=1), 1_796_472_000.0), 2)
        self.assertEqual([m.id for m in self.reopen().dm_recent("alice", conversation, None)], [5])


class MemoryAccountStoreTests(AccountStoreContract, SynchronousTestCase):
    def make_store(self) -> HistoryStore:
        return MemoryHistory()


class SQLiteAccountStoreTests(AccountStoreContract, SynchronousTestCase):
    def make_store(self) -> HistoryStore:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "chatd.sqlite3")
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def reopen(self) -> HistoryStore:
        """Another connection to the same file, as after a restart."""
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def test_malformed_account_raises_history_error(self) -> None:
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO accounts VALUES ('alice', 'alice', ?, 't')", (b"\x00",))
        db.commit()
        db.close()
        error = self.assertRaises(HistoryError, self.store.load_account, "alice")
        self.assertIn("malformed account", str(error))

    def test_malformed_ban_and_dm_raise_history_error(self) -> None:
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO restrictions VALUES ('ban', '#dev', 'bob', '#dev', 'bob', 'soon', NULL, '', NULL)")
        db.execute("INSERT INTO dm_messages VALUES ('alice', 'c', 1, 'bob', 'alice', ?, 't', 0)", (b"\xff",))
        db.commit()
        db.close()
        self.assertRaises(HistoryError, self.store.load_bans)
        self.assertRaises(HistoryError, self.store.dm_recent, "alice", "c", None)

    def test_writes_while_locked_raise_history_busy(self) -> None:
        locker = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN IMMEDIATE")
        self.assertRaises(history.HistoryBusy, self.store.save_account, AccountRecord("alice", HASH, T0))
        self.assertRaises(history.HistoryBusy, self.store.save_ban, Restriction("#dev", "bob"))
        locker.execute("ROLLBACK")
        self.store.save_account(AccountRecord("alice", HASH, T0))
        self.assertIsNotNone(self.reopen().load_account("alice"))


class MigrationTests(SynchronousTestCase):
    """Schema 3 is added in place to a database of schema 1 or 2."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "chatd.sqlite3")

    def open(self) -> SQLiteHistory:
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def version(self) -> int:
        db = sqlite3.connect(self.path)
        try:
            return int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0])
        finally:
            db.close()

    def use_accounts(self, store: SQLiteHistory) -> None:
        store.save_account(AccountRecord("alice", HASH, T0))
        store.save_ban(Restriction("#dev", "bob"))
        store.add_membership("alice", "#dev")
        store.store_dms([("alice", dm(dm_key("alice", "bob"), 1, "bob", "alice"))])
        store.mark_delivered("alice", dm_key("alice", "bob"), 1)

    def test_schema_version_is_four(self) -> None:
        self.assertEqual(history.SCHEMA_VERSION, 4)
        self.open()
        self.assertEqual(self.version(), 4)

    def test_from_schema_one_fixture(self) -> None:
        shutil.copyfile(FIXTURE, self.path)
        store = self.open()
        self.assertEqual(self.version(), 4)
        self.assertEqual([m.id for m in store.recent("#lobby", None)], list(range(3, 13)))
        self.assertEqual(store.append("#lobby", "carol", "next", T0).id, 13)
        store.commit()
        self.use_accounts(store)
        store.close()
        again = self.open()
        self.assertEqual([m.id for m in again.recent("#lobby", None)], list(range(3, 14)))
        self.assertIsNotNone(again.load_account("alice"))
        self.assertEqual(again.memberships("alice"), ["#dev"])
        self.assertEqual(again.delivered("alice", dm_key("alice", "bob")), 1)

    def test_from_schema_two(self) -> None:
        self.patch(history, "SCHEMA_VERSION", 2)
        old = SQLiteHistory(self.path)
        old.save_room(RoomRecord("#Dev", T0, topic="kept", ops=("alice",)))
        old.close()
        # A message as schema 2 wrote it (no notice column).
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO messages (room, id, sender, text, timestamp) VALUES ('#Dev', 1, 'alice', 'first', ?)", (T0,))
        db.execute("INSERT INTO rooms (room, last_id) VALUES ('#Dev', 1)")
        db.commit()
        db.close()
        self.assertEqual(self.version(), 2)
        self.patch(history, "SCHEMA_VERSION", 4)
        store = self.open()
        self.assertEqual(self.version(), 4)
        self.assertEqual([(r.name, r.topic, r.ops) for r in store.load_rooms()], [("#Dev", "kept", ("alice",))])
        self.assertEqual([m.text for m in store.recent("#Dev", None)], ["first"])
        self.assertEqual(store.append("#Dev", "alice", "second", T0).id, 2)
        store.commit()
        self.use_accounts(store)
        self.assertEqual(self.open().load_bans("#dev"), [Restriction("#dev", "bob")])

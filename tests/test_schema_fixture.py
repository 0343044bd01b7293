"""A database written by an earlier chatd opens and keeps its history.

``tests/fixtures/chatd-schema1.sqlite3`` was written by chatd with schema
version 1 (before rooms, accounts and DMs): 12 messages in ``#lobby``
(text ``message {id - 1} ...``) from ``alice``, ``Bob`` and ``007`` in turn with non-ASCII, quotes, newline and
tab, then pruned to the newest 10 (ids 3-12; the last id 12 is kept
apart).  Every later schema must open it in place: the history stays,
ids go on from 12.  The fixture itself is never written: each test works
on a copy.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SynchronousTestCase

from chatd.stores.history import SQLiteHistory

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "chatd-schema1.sqlite3")


def expected_text(message_id: int) -> str:
    """The text the fixture's writer gave message ``message_id``."""
    return f"message {message_id - 1} \u00e9\U0001f600 \"q\"\n\ttab"


class SchemaOneFixtureTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "chatd.sqlite3")
        shutil.copyfile(FIXTURE, self.path)

    def open(self) -> SQLiteHistory:
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def test_history_kept(self) -> None:
        store = self.open()
        found = store.recent("#lobby", None)
        self.assertEqual([m.id for m in found], list(range(3, 13)))
        self.assertEqual([m.text for m in found], [expected_text(i) for i in range(3, 13)])
        self.assertEqual([m.sender for m in found[:3]], ["007", "alice", "Bob"])
        self.assertEqual(found[0].timestamp, "2026-11-25T19:34:02.000Z")
        page, more = store.page("#lobby", before=6, limit=2)
        self.assertEqual(([m.id for m in page], more), ([4, 5], True))

    def test_ids_go_on(self) -> None:
        store = self.open()
        self.assertEqual(store.last_id("#lobby"), 12)
        self.assertEqual(store.append("#lobby", "carol", "next", "2026-12-02T08:00:00.000Z").id, 13)
        store.commit()
        store.close()
        again = self.open()
        self.assertEqual([m.id for m in again.recent("#lobby", 2)], [12, 13])

    def test_fixture_is_schema_one(self) -> None:
        import sqlite3

        db = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
        try:
            self.assertEqual(db.execute("SELECT max(version) FROM schema_version").fetchone(), (1,))
        finally:
            db.close()

    def test_migrated_in_place_to_rooms(self) -> None:
        """Schema 2 (rooms) is added in place: the history stays, rooms
        are kept beside it, and ids go on per room."""
        import sqlite3

        from chatd.stores.history import SCHEMA_VERSION
        from chatd.stores.roomstate import RoomRecord

        store = self.open()
        store.save_room(RoomRecord("#Dev", "2026-12-02T08:00:00.000Z", topic="kept"))
        self.assertEqual(store.append("#Dev", "carol", "first", "2026-12-02T08:00:01.000Z").id, 1)
        self.assertEqual(store.append("#lobby", "carol", "next", "2026-12-02T08:00:01.000Z").id, 13)
        store.commit()
        store.close()
        db = sqlite3.connect(self.path)
        try:
            self.assertEqual(db.execute("SELECT max(version) FROM schema_version").fetchone(), (SCHEMA_VERSION,))
        finally:
            db.close()
        again = self.open()
        self.assertEqual([record.topic for record in again.load_rooms()], ["kept"])
        self.assertEqual([m.id for m in again.recent("#lobby", None)], list(range(3, 14)))
        self.assertEqual([m.text for m in again.recent("#Dev", None)], ["first"])

"""The member limit of a room (IRC ``+l``, JSON ``mode`` ``limit``), in memory."""

from __future__ import annotations

from tests.test_irc import IRCTestCase
from tests.test_irc_support import json_client


class LimitTests(IRCTestCase):
    config = {"autojoin": ()}

    def test_limit_set_enforced_changed_and_removed(self) -> None:
        chanop = self.client("chanop")
        chanop.send("JOIN #chan")
        chanop.lines()
        chanop.send("MODE #chan +l 2")
        (mode,) = chanop.lines()
        self.assertEqual((mode.command, mode.params), ("MODE", ["#chan", "+l", "2"]))
        chanop.send("MODE #chan")
        self.assertEqual(chanop.lines()[0].params[1:4], ["#chan", "+lnt", "2"])
        user2 = self.client("user2")
        user2.send("JOIN #chan")
        self.assertIn("JOIN", user2.commands())
        user3 = self.client("user3")
        user3.lines()
        user3.send("JOIN #chan")
        (full,) = user3.lines()
        self.assertEqual((full.command, full.params[:2]), ("471", ["user3", "#chan"]))
        # A JSON user meets the same limit.
        carol = json_client(self.chat_factory, "carol")
        carol.send("join", "#chan")
        self.assertEqual([(r["response"], r.get("code")) for r in carol.received()], [("error", "room_full")])
        chanop.send("MODE #chan +l 3")
        self.assertEqual(chanop.lines()[-1].params, ["#chan", "+l", "3"])
        user3.send("JOIN #chan")
        self.assertIn("JOIN", user3.commands())
        chanop.send("MODE #chan -l")
        self.assertEqual(chanop.lines()[-1].params, ["#chan", "-l"])
        carol.send("join", "#chan")
        self.assertNotIn("error", [r["response"] for r in carol.received()])
        self.assertIn("carol", self.chat_factory.hub.directory._members["#chan"])

    def test_a_part_frees_a_place_and_an_invite_passes(self) -> None:
        chanop = self.client("chanop")
        chanop.send("JOIN #chan", "MODE #chan +l 1")
        chanop.lines()
        user2 = self.client("user2")
        user2.send("JOIN #chan")
        self.assertEqual(user2.commands(), ["471"])
        chanop.send("INVITE user2 #chan")
        user2.lines()
        user2.send("JOIN #chan")
        self.assertEqual(user2.commands()[0], "JOIN")
        user2.send("PART #chan")
        user3 = self.client("user3")
        user3.send("JOIN #chan")
        self.assertEqual(user3.commands(), ["471"])  # chanop alone fills a limit of 1
        chanop.send("MODE #chan +l 2")
        user3.send("JOIN #chan")
        self.assertEqual(user3.commands()[0], "JOIN")

    def test_a_lower_limit_keeps_the_members(self) -> None:
        clients = [self.client(name) for name in ("chanop", "user2", "user3")]
        for client in clients:
            client.send("JOIN #chan")
        clients[0].send("MODE #chan +l 1")
        for client in clients:
            client.lines()
        clients[1].send("PRIVMSG #chan :still here")
        self.assertEqual(clients[2].lines()[-1].params, ["#chan", "still here"])

    def test_bad_values_and_rights(self) -> None:
        chanop = self.client("chanop")
        chanop.send("JOIN #chan")
        chanop.lines()
        for value in ("0", "-1", "abc", ":", "99999999999"):
            chanop.send(f"MODE #chan +l {value}")
            (line,) = chanop.lines()
            self.assertEqual((line.command, line.params[1:3]), ("696", ["#chan", "l"]), value)
        chanop.send("MODE #chan +l")
        self.assertEqual(chanop.commands(), ["461"])
        other = self.client("other")
        other.send("JOIN #chan")
        other.lines()
        other.send("MODE #chan +l 5")
        self.assertEqual(other.commands(), ["482"])
        lobby = self.client("lobbyist")
        lobby.send("JOIN #lobby")
        lobby.lines()
        lobby.send("MODE #lobby +l 5")
        self.assertEqual(lobby.commands(), ["482"])

    def test_json_mode_sets_a_limit_and_bad_ones_are_refused(self) -> None:
        carol = json_client(self.chat_factory, "carol")
        carol.send("join", "#r")
        carol.received()
        for bad in (-1, "3", True, 10**9):
            carol.send("mode", {"room": "#r", "limit": bad})
            (error,) = carol.received()
            self.assertEqual((error["response"], error["code"]), ("error", "bad_request"), bad)
        carol.send("mode", {"room": "#r", "limit": 1})
        shown = [r for r in carol.received() if r["response"] == "mode"]
        self.assertEqual(shown[0]["content"]["modes"], {"limit": 1})
        dave = self.client("dave")
        dave.send("JOIN #r")
        self.assertEqual(dave.commands(), ["471"])
        carol.send("mode", {"room": "#r"})
        info = carol.received()[0]
        self.assertEqual(info["response"], "info")

    def test_the_limit_survives_in_the_record(self) -> None:
        from chatd.stores.roomstate import RoomRecord

        record = RoomRecord("#r", "2026-12-02T00:00:00.000Z").with_limit(7)
        self.assertEqual(RoomRecord.from_json(record.to_json()).limit, 7)
        self.assertIsNone(RoomRecord.from_json(record.with_limit(0).to_json()).limit)
        self.assertIsNone(RoomRecord.from_json(record.to_json().replace('"limit":7', '"limit":"7"')).limit)


class KeyTests(IRCTestCase):
    config = {"autojoin": ()}

    def test_a_key_is_needed_given_and_removed(self) -> None:
        bar = self.client("bar")
        bar.send("JOIN #chan", "MODE #chan +k beer")
        mode = bar.lines()[-1]
        self.assertEqual((mode.command, mode.params), ("MODE", ["#chan", "+k", "beer"]))
        bar.send("MODE #chan")
        self.assertEqual(bar.lines()[0].params[1:], ["#chan", "+knt", "beer"])
        qux = self.client("qux")
        qux.lines()
        qux.send("JOIN #chan", "JOIN #chan bees")
        self.assertEqual(qux.commands(), ["475", "475"])
        qux.send("JOIN #other,#chan x,beer")
        joined = [line.params[0] for line in qux.lines() if line.command == "JOIN"]
        self.assertEqual(joined, ["#other", "#chan"])
        # A JSON join gives the key in its object.
        carol = json_client(self.chat_factory, "carol")
        carol.send("join", "#chan")
        self.assertEqual([r.get("code") for r in carol.received()], ["bad_key"])
        carol.send("join", {"room": "#chan", "key": "beer"})
        self.assertNotIn("error", [r["response"] for r in carol.received()])
        carol.send("join", {"room": "#x", "key": "has space"})
        self.assertEqual([r.get("code") for r in carol.received()], ["bad_request"])
        bar.send("MODE #chan -k *")
        self.assertEqual(bar.lines()[-1].params, ["#chan", "-k"])
        dave = self.client("dave")
        dave.send("JOIN #chan")
        self.assertIn("JOIN", dave.commands())

    def test_invalid_keys_get_696_and_change_nothing(self) -> None:
        bar = self.client("bar")
        bar.send("JOIN #chan")
        bar.lines()
        for key in ("passphrase with spaces", "long" * 100, "", " "):
            bar.send(f"MODE #chan +k :{key}")
            (line,) = bar.lines()
            self.assertEqual((line.command, line.params[1:4]), ("696", ["#chan", "k", "*"]), key)
        foo = self.client("foo")
        foo.send("JOIN #chan")
        self.assertIn("JOIN", foo.commands())

    def test_an_invitation_passes_the_key_and_the_record_keeps_it(self) -> None:
        from chatd.stores.roomstate import RoomRecord

        bar = self.client("bar")
        bar.send("JOIN #chan", "MODE #chan +k beer")
        qux = self.client("qux")
        bar.send("INVITE qux #chan")
        qux.lines()
        qux.send("JOIN #chan")
        self.assertEqual(qux.commands()[0], "JOIN")
        record = RoomRecord("#r", "2026-12-02T00:00:00.000Z").with_join_key("beer")
        self.assertEqual(RoomRecord.from_json(record.to_json()).join_key, "beer")
        self.assertIsNone(RoomRecord.from_json(record.with_join_key("").to_json()).join_key)

"""Several sessions of one account (PROTOCOL.md section 6.4): every
session gets every message, DM and echo; names list the account once;
presence comes with the first session and goes after the last; joins and
parts apply to the name; an account's rooms come back at login."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support import FakeClient
from tests.test_accounts_json import with_accounts


class MultiSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory, _ = with_accounts()
        self.factory.accounts.register("alice", "alice password", "127.0.0.1")  # type: ignore[union-attr]
        self.clients: list[FakeClient] = []

    def session(self, name: str = "alice", password: str | None = "alice password", v2: bool = True) -> list[dict[str, Any]]:
        client = FakeClient(self.factory)
        if v2:
            client.send("hello", {"protocol": 2})
            client.received()
        if password is None:
            client.send("login", name)
        else:
            client.send("login", name, password=password)
        self.clients.append(client)
        return client.received()

    def test_two_sessions_get_everything_and_names_list_once(self) -> None:
        self.session()
        first = self.clients[-1]
        second_login = self.session()
        second = self.clients[-1]
        self.assertEqual(second_login[0]["content"], "Login successful. You are now logged in as alice")
        self.assertEqual(first.received(), [])  # no presence for a second session
        self.session("bob", None)
        bob = self.clients[-1]
        first.received(), second.received()
        bob.send("msg", "hi alice", to="alice")
        self.assertEqual(first.one()["content"], "hi alice")
        self.assertEqual(second.one()["content"], "hi alice")
        first.send("msg", "from one", ref=1)
        mine = first.one()
        self.assertEqual(mine["ref"], 1)
        other = second.one()
        self.assertNotIn("ref", other)
        bob.received()
        bob.send("names")
        self.assertEqual(bob.one()["content"], "alice, bob")

    def test_presence_first_and_last(self) -> None:
        self.session("bob", None)
        bob = self.clients[-1]
        self.session()
        first = self.clients[-1]
        self.assertEqual(bob.one()["content"]["status"], "online")
        self.session()
        second = self.clients[-1]
        self.assertEqual(bob.received(), [])
        first.disconnect()
        self.assertEqual(bob.received(), [])
        second.send("msg", "still here")
        self.assertEqual(bob.one()["content"], "still here")
        second.disconnect()
        self.assertEqual(bob.one()["content"]["status"], "offline")

    def test_join_and_part_apply_to_the_name(self) -> None:
        self.session()
        first = self.clients[-1]
        self.session()
        second = self.clients[-1]
        first.send("join", "#dev", ref="j")
        answer = first.received()
        self.assertEqual([r["response"] for r in answer], ["info", "history"])
        told = second.received()
        self.assertEqual([r["response"] for r in told], ["info", "history"])
        self.assertEqual(told[0]["content"], "Joined #dev")
        self.assertNotIn("ref", told[0])
        second.send("msg", "in dev", room="#dev")
        self.assertEqual(first.one()["room"], "#dev")
        second.received()
        second.send("part", "#dev")
        self.assertEqual(second.one()["content"], "Left #dev")
        self.assertEqual(first.one()["content"], "Left #dev")

    def test_rooms_come_back_at_login(self) -> None:
        self.session()
        first = self.clients[-1]
        first.send("join", "#dev")
        first.send("join", "#ops")
        first.send("msg", "kept", room="#dev")
        first.received()
        first.disconnect()
        answers = self.session()
        kinds = [(r["response"], r.get("room")) for r in answers]
        self.assertEqual(kinds[:2], [("info", None), ("history", None)])
        self.assertEqual(kinds[2:], [("info", "#dev"), ("history", "#dev"), ("info", "#ops"), ("history", "#ops")])
        self.assertEqual([m["content"] for m in answers[3]["content"]], ["kept"])
        # a second session gets them too, with their history
        answers = self.session()
        self.assertEqual([(r["response"], r.get("room")) for r in answers][2:4], [("info", "#dev"), ("history", "#dev")])
        self.assertEqual([m["content"] for m in answers[3]["content"]], ["kept"])

    def test_max_sessions(self) -> None:
        self.factory.hub.max_sessions = 2
        self.session()
        self.session()
        answer = self.session()
        self.assertEqual(answer[0]["code"], "forbidden")

    def test_guest_holding_the_name_blocks_the_account(self) -> None:
        self.factory.accounts.register("carol", "carol password", "127.0.0.1")  # type: ignore[union-attr]
        # A guest logged in as carol before the account existed (registered
        # elsewhere, say): the account's login gets name_taken.
        self.factory.hub.registry.claim("carol", lambda: None)
        answer = self.session("carol", "carol password")
        self.assertEqual(answer[0]["code"], "name_taken")


class StoredDirectMessageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory, _ = with_accounts()
        for name in ("alice", "bob"):
            self.factory.accounts.register(name, f"{name} password", "127.0.0.1")  # type: ignore[union-attr]

    def login(self, name: str, password: bool = True) -> tuple[FakeClient, list[dict[str, Any]]]:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2})
        client.received()
        if password:
            client.send("login", name, password=f"{name} password")
        else:
            client.send("login", name)
        return client, client.received()

    def test_offline_dms_arrive_once_at_next_login(self) -> None:
        alice, _ = self.login("alice")
        for i in range(3):
            alice.send("msg", f"while away {i}", to="BOB")
        echoes = alice.received()
        self.assertEqual([(m["to"], m["offline"], m["id"]) for m in echoes], [("bob", True, 1), ("bob", True, 2), ("bob", True, 3)])
        bob, answers = self.login("bob")
        pages = [r for r in answers if r["response"] == "history" and "with" in r]
        self.assertEqual(len(pages), 1)
        self.assertEqual(pages[0]["with"], "alice")
        self.assertEqual([m["content"] for m in pages[0]["content"]], [f"while away {i}" for i in range(3)])
        self.assertFalse(pages[0]["more"])
        bob.disconnect()
        _, again = self.login("bob")
        self.assertEqual([r for r in again if "with" in r], [])

    def test_dm_history_with(self) -> None:
        alice, _ = self.login("alice")
        bob, _ = self.login("bob")
        alice.received()
        alice.send("msg", "one", to="bob")
        bob.send("msg", "two", to="alice")
        alice.received(), bob.received()
        alice.send("history", {"with": "Bob", "limit": 1})
        page = alice.one()
        self.assertEqual(([m["content"] for m in page["content"]], page["with"], page["more"]), (["two"], "Bob", True))
        # no undelivered DMs at a later login: both were seen live
        bob.disconnect()
        _, again = self.login("bob")
        self.assertEqual([r for r in again if "with" in r], [])

    def test_guest_dms_never_stored_and_guests_cannot_read(self) -> None:
        alice, _ = self.login("alice")
        guest, _ = self.login("carl", password=False)
        alice.received()
        guest.send("msg", "from a guest", to="alice")
        alice.received()
        guest.received()
        alice.send("history", {"with": "carl"})
        page = alice.one()
        self.assertEqual([m["content"] for m in page["content"]], ["from a guest"])  # alice's side is kept
        guest.send("history", {"with": "alice"})
        self.assertEqual(guest.one()["code"], "forbidden")
        alice.send("history", {"with": "bad name"})
        self.assertEqual(alice.one()["code"], "no_such_user")

    def test_guest_to_offline_account_is_refused(self) -> None:
        guest, _ = self.login("carl", password=False)
        guest.send("msg", "hello?", to="bob")
        self.assertEqual(guest.one()["code"], "no_such_user")


class PartStopsWatchingTests(SynchronousTestCase):
    def test_a_part_by_one_session_leaves_no_empty_room_behind(self) -> None:
        factory, _ = with_accounts()
        factory.accounts.register("alice", "alice password", "127.0.0.1")  # type: ignore[union-attr]
        clients = []
        for _ in range(2):
            client = FakeClient(factory)
            client.send("hello", {"protocol": 2})
            client.send("login", "alice", password="alice password")
            client.received()
            clients.append(client)
        clients[0].send("join", "#dev")
        clients[0].send("part", "#dev")
        self.assertNotIn("#dev", factory.hub.rooms)

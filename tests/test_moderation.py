"""Moderation on the JSON front-end (PROTOCOL.md section 6.5): kick, ban
(and its expiry), unban, mute, op/deop, voice/devoice, mode, invite, the
errors in their order, and server operators in ``#lobby``."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support import FakeClient
from tests.test_accounts_json import with_accounts


class ModerationTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory, _ = with_accounts(operators=frozenset({"root"}))
        self.factory.hub.moderation.operators = self.factory.operators
        self.clients: list[FakeClient] = []

    def v2(self, name: str, password: str | None = None) -> FakeClient:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2})
        if password is None:
            client.send("login", name)
        else:
            client.send("login", name, password=password)
        answers = client.received()
        assert answers[1]["response"] == "info", answers
        self.settle()
        self.clients.append(client)
        return client

    def settle(self) -> None:
        for client in self.clients:
            client.received()

    def join(self, client: FakeClient, room: str) -> None:
        client.send("join", room)
        self.settle()
        client.received()

    def act(self, client: FakeClient, kind: str, **content: Any) -> list[dict[str, Any]]:
        client.send(kind, content)
        return client.received()

    def code(self, client: FakeClient, kind: str, **content: Any) -> str | None:
        answers = self.act(client, kind, **content)
        assert len(answers) == 1, answers
        return answers[0].get("code")

    def room_of_three(self) -> tuple[FakeClient, FakeClient, FakeClient]:
        alice, bob, carol = self.v2("alice"), self.v2("bob"), self.v2("carol")
        for client in (alice, bob, carol):
            self.join(client, "#Dev")
        self.settle()
        return alice, bob, carol


class KickBanTests(ModerationTestCase):
    def test_kick(self) -> None:
        alice, bob, carol = self.room_of_three()
        self.assertEqual(self.code(bob, "kick", room="#dev", user="carol"), "not_op")
        answer = self.act(alice, "kick", room="#dev", user="BOB", comment="spam")
        self.assertEqual((answer[0]["content"], answer[0]["room"], answer[0]["user"]), ("Kicked bob from #Dev", "#Dev", "bob"))
        self.assertEqual(answer[1]["content"], {"user": "bob", "status": "offline", "room": "#Dev", "reason": "kicked", "by": "alice", "comment": "spam"})
        told = bob.received()
        self.assertEqual((told[0]["response"], told[0]["content"]), ("info", "You were kicked from #Dev by alice: spam"))
        self.assertEqual((told[0]["room"], told[0]["by"], told[0]["comment"]), ("#Dev", "alice", "spam"))
        self.assertEqual(carol.received()[0]["content"]["reason"], "kicked")
        alice.send("msg", "after", room="#dev")
        self.assertEqual(bob.received(), [])
        self.join(bob, "#dev")  # a kick is no ban

    def test_ban_unban_and_expiry(self) -> None:
        alice, bob, carol = self.room_of_three()
        answer = self.act(alice, "ban", room="#dev", user="bob", comment="go", duration=60)
        self.assertEqual(answer[0]["content"], "Banned bob from #Dev")
        self.assertEqual(bob.received()[0]["content"], "You were banned from #Dev by alice: go")
        self.assertEqual(carol.received()[0]["content"]["reason"], "banned")
        self.assertEqual(self.code(bob, "join", room="#dev"), "banned")
        self.factory.clock.advance(61)
        bob.send("join", "#dev")
        self.assertEqual(bob.received()[0]["content"], "Joined #Dev")
        self.act(alice, "ban", room="#dev", user="dave")  # not a member: recorded
        dave = self.v2("dave")
        self.assertEqual(self.code(dave, "join", room="#dev"), "banned")
        self.assertEqual(self.act(alice, "unban", room="#dev", user="Dave")[0]["content"], "Unbanned Dave from #Dev")
        dave.send("join", "#dev")
        self.assertEqual(dave.received()[0]["content"], "Joined #Dev")

    def test_errors_in_order(self) -> None:
        alice, bob, _ = self.room_of_three()
        outsider = self.v2("eve")
        self.assertEqual(self.code(alice, "kick", room="#dev"), "bad_request")
        self.assertEqual(self.code(alice, "ban", room="#dev", user="bob", duration=0), "bad_request")
        self.assertEqual(self.code(alice, "ban", room="#dev", user="bob", duration=1.5), "bad_request")
        self.assertEqual(self.code(alice, "mode", room="#dev", moderated="yes"), "bad_request")
        self.assertEqual(self.code(alice, "kick", room="dev", user="bob"), "invalid_room")
        self.assertEqual(self.code(alice, "kick", room="#nowhere", user="bob"), "no_such_room")
        self.assertEqual(self.code(outsider, "kick", room="#dev", user="bob"), "not_in_room")
        self.assertEqual(self.code(bob, "kick", room="#dev", user="alice"), "not_op")
        self.assertEqual(self.code(alice, "kick", room="#dev", user="eve"), "no_such_user")
        self.assertEqual(self.code(alice, "op", room="#dev", user="nobody"), "no_such_user")
        self.assertEqual(self.code(alice, "kick", room="#lobby", user="bob"), "not_op")

    def test_v1_forbidden(self) -> None:
        classic = FakeClient(self.factory)
        classic.send("login", "classic")
        classic.received()
        classic.send("kick", {"room": "#lobby", "user": "x"})
        self.assertEqual(classic.one()["code"], "forbidden")


class MuteRoleModeTests(ModerationTestCase):
    def test_mute_and_unmute(self) -> None:
        alice, bob, _ = self.room_of_three()
        self.act(alice, "mute", room="#dev", user="bob", duration=30)
        told = bob.received()
        self.assertEqual((told[0]["content"], told[0]["by"]), ("You were muted in #Dev by alice", "alice"))
        self.assertEqual(self.code(bob, "msg", room="#dev") if False else None, None)
        bob.send("msg", "hi", room="#dev")
        self.assertEqual(bob.one()["code"], "muted")
        bob.send("msg", "lobby is fine")
        self.assertEqual(bob.one()["response"], "message")
        self.settle()
        self.act(alice, "unmute", room="#dev", user="bob")
        self.assertEqual(bob.received()[0]["content"], "You were unmuted in #Dev by alice")
        bob.send("msg", "hi", room="#dev")
        self.assertEqual(bob.one()["response"], "message")

    def test_op_voice_and_moderated(self) -> None:
        alice, bob, carol = self.room_of_three()
        answer = self.act(alice, "op", room="#dev", user="bob")
        self.assertEqual(answer[0]["content"], "Opped bob in #Dev")
        self.assertEqual(answer[1]["response"], "mode")
        self.assertEqual(answer[1]["content"], {"room": "#Dev", "by": "alice", "user": "bob", "op": True})
        self.assertEqual(carol.received()[0]["content"]["op"], True)
        self.act(bob, "kick", room="#dev", user="carol")  # bob may now
        self.join(carol, "#dev")
        answer = self.act(alice, "mode", room="#dev", moderated=True)
        self.assertEqual(answer[0]["content"], "Modes of #Dev set")
        self.assertEqual(answer[1]["content"], {"room": "#Dev", "by": "alice", "modes": {"moderated": True}})
        self.settle()
        carol.send("msg", "hi", room="#dev")
        self.assertEqual(carol.one()["code"], "muted")
        self.act(alice, "voice", room="#dev", user="carol")
        self.settle()
        carol.send("msg", "hi", room="#dev")
        self.assertEqual(carol.one()["response"], "message")
        modes = self.act(carol, "mode", room="#dev")[0]
        self.assertEqual(modes["modes"]["moderated"], True)
        self.assertEqual(self.code(carol, "mode", room="#dev", secret=True), "not_op")
        self.settle()
        self.assertEqual(self.code(alice, "op", room="#lobby", user="bob"), "not_op")

    def test_invite_only(self) -> None:
        alice, _, _ = self.room_of_three()
        self.act(alice, "mode", room="#dev", invite_only=True)
        self.settle()
        dave = self.v2("dave")
        self.assertEqual(self.code(dave, "join", room="#dev"), "invite_only")
        answer = self.act(alice, "invite", room="#dev", user="dave")
        self.assertEqual(answer[0]["content"], "Invited dave to #Dev")
        invite = dave.received()[0]
        self.assertEqual((invite["response"], invite["content"]), ("invite", {"room": "#Dev", "by": "alice"}))
        dave.send("join", "#dev")
        self.assertEqual(dave.received()[0]["content"], "Joined #Dev")
        self.settle()
        self.assertEqual(self.code(alice, "invite", room="#dev", user="nobody"), "no_such_user")


class ServerOperatorTests(ModerationTestCase):
    def test_lobby_kick_closes_a_v1_client(self) -> None:
        self.factory.accounts.register("root", "root password", "127.0.0.1")  # type: ignore[union-attr]
        root = self.v2("root", password="root password")
        classic = FakeClient(self.factory, newline=False)
        classic.send("login", "classic")
        classic.received()
        self.settle()
        answer = self.act(root, "kick", room="#lobby", user="classic", comment="bye")
        self.assertEqual(answer[0]["content"], "Kicked classic from #lobby")
        told = classic.received()
        self.assertEqual(told[0]["content"], "You were kicked from #lobby by root: bye")
        self.assertTrue(classic.closed)

    def test_lobby_ban_refuses_logins(self) -> None:
        self.factory.accounts.register("root", "root password", "127.0.0.1")  # type: ignore[union-attr]
        root = self.v2("root", password="root password")
        bob = self.v2("bob")
        self.act(root, "ban", room="#lobby", user="bob")
        self.assertTrue(bob.closed)
        again = FakeClient(self.factory)
        again.send("login", "bob")
        self.assertEqual(again.one()["code"], "banned")
        self.assertEqual(self.code(root, "op", room="#lobby", user="root"), "forbidden")


class AccountBanWhileAwayTests(ModerationTestCase):
    def test_a_ban_while_away_drops_the_room_at_login(self) -> None:
        self.factory.accounts.register("dana", "dana password", "127.0.0.1")  # type: ignore[union-attr]
        alice = self.v2("alice")
        self.join(alice, "#dev")
        dana = self.v2("dana", password="dana password")
        self.join(dana, "#dev")
        dana.disconnect()
        self.act(alice, "ban", room="#dev", user="dana")
        again = FakeClient(self.factory)
        again.send("hello", {"protocol": 2})
        again.received()
        again.send("login", "dana", password="dana password")
        answers = again.received()
        self.assertEqual([(r["response"], r.get("code")) for r in answers][2:], [("error", "banned")])
        again.disconnect()
        third = FakeClient(self.factory)
        third.send("hello", {"protocol": 2})
        third.received()
        third.send("login", "dana", password="dana password")
        self.assertEqual([r["response"] for r in third.received()], ["info", "history"])


class OperatorMustBeAnAccountTests(ModerationTestCase):
    def test_a_guest_under_an_unregistered_operator_name_is_nobody(self) -> None:
        alice = self.v2("alice")
        guest = self.v2("root")  # listed in --operators, never registered
        self.assertEqual(self.code(guest, "kick", room="#lobby", user="alice"), "not_op")
        self.assertFalse(alice.closed)

    def test_a_lobby_mute_holds_messages_without_a_room(self) -> None:
        self.factory.accounts.register("root", "root password", "127.0.0.1")  # type: ignore[union-attr]
        root = self.v2("root", password="root password")
        classic = FakeClient(self.factory)
        classic.send("login", "carl")
        classic.received()
        self.settle()
        self.act(root, "mute", room="#lobby", user="carl")
        classic.received()
        classic.send("msg", "still talking")
        self.assertEqual(classic.one()["code"], "muted")

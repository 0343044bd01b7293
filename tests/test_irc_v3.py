"""IRCv3 on the IRC front-end, in memory: SASL PLAIN, PASS and OPER over
an account check, labeled-response and batch, CHATHISTORY paging the
same store as JSON ``history`` (PROTOCOL.md sections 7.2 and 7.4)."""

from __future__ import annotations

import base64
from typing import Any

from chatd.frontends.irc.factory import IRCConfig
from tests.test_irc import IRCTestCase
from tests.support import FakeClient
from tests.test_irc_support import SERVER, IRCClient, account_exists, json_client, password_check

ACCOUNTS = {"jilles": "sesame", "Operuser": "operpassword"}


def plain(*fields: bytes) -> str:
    return base64.b64encode(b"\x00".join(fields)).decode("ascii")


class AccountsTestCase(IRCTestCase):
    config = {
        "accounts": password_check(ACCOUNTS),
        "account_exists": account_exists(ACCOUNTS),
        "operators": frozenset({"operuser"}),
    }

    def sasl_client(self) -> IRCClient:
        client = IRCClient(self.irc)
        client.send("CAP LS 302", "CAP REQ sasl")
        client.lines()
        return client


class SaslTests(AccountsTestCase):
    def test_success_names_the_session_after_the_account(self) -> None:
        client = self.sasl_client()
        client.send("AUTHENTICATE PLAIN")
        self.assertEqual(client.raw(), b"AUTHENTICATE +\r\n")
        client.send("AUTHENTICATE " + plain(b"", b"jilles", b"sesame"))
        logged, success = client.lines()
        self.assertEqual(logged.command, "900")
        self.assertEqual(logged.params[:3], ["*", "*!~u@irc", "jilles"])
        self.assertEqual(success.command, "903")
        client.send("AUTHENTICATE PLAIN")
        self.assertEqual(client.commands(), ["907"])
        client.send("NICK whatever", "USER u 0 * :x", "CAP END")
        welcome = client.lines()
        self.assertEqual(next(line for line in welcome if line.command == "001").params[0], "jilles")
        self.assertEqual(client.protocol.name, "jilles")
        client.send("AUTHENTICATE PLAIN", "NICK other")
        self.assertEqual(client.commands(), ["462", "447"])

    def test_failures(self) -> None:
        client = self.sasl_client()
        for response in (plain(b"", b"jilles", b"millet"), plain(b"other", b"jilles", b"sesame"), plain(b"", b"", b"x"), "!!!"):
            client.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + response)
            self.assertEqual(client.commands(), ["AUTHENTICATE", "904"], response)
        client.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + "A" * 401)
        self.assertEqual(client.commands(), ["AUTHENTICATE", "905"])
        client.send("AUTHENTICATE PLAIN", "AUTHENTICATE *")
        self.assertEqual(client.commands(), ["AUTHENTICATE", "906"])
        client.send("AUTHENTICATE SCRAM-SHA-256")
        mechs, failed = client.lines()
        self.assertEqual((mechs.command, mechs.params[1], failed.command), ("908", "PLAIN", "904"))
        # after all that, a right one still works
        client.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + plain(b"jilles", b"jilles", b"sesame"))
        self.assertEqual(client.commands(), ["AUTHENTICATE", "900", "903"])

    def test_chunked_and_bounded(self) -> None:
        long_password = "x" * 592
        self.irc.config = IRCConfig(server_name=SERVER, accounts=password_check({"foo": long_password}))
        client = self.sasl_client()
        response = plain(b"foo", b"foo", long_password.encode())
        self.assertEqual(len(response), 800)
        client.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + response[:400], "AUTHENTICATE " + response[400:])
        self.assertEqual(client.commands(), ["AUTHENTICATE"])  # a chunk of exactly 400: more to come
        client.send("AUTHENTICATE +")
        self.assertEqual(client.commands(), ["900", "903"])
        flood = self.sasl_client()
        flood.send("AUTHENTICATE PLAIN")
        flood.lines()
        for _ in range(5):
            flood.send("AUTHENTICATE " + "A" * 400)
        self.assertEqual(flood.commands(), ["904"])  # past 1,600 bytes the exchange ends
        self.assertIsNone(flood.protocol._sasl)  # nothing of it is held

    def test_without_cap_req_and_during_registration(self) -> None:
        client = IRCClient(self.irc)
        client.send("AUTHENTICATE PLAIN")
        self.assertEqual(client.commands(), ["904"])
        client = self.sasl_client()
        client.send("AUTHENTICATE PLAIN", "NICK reguser", "USER u 0 * :x", "CAP END")
        commands = client.commands()
        self.assertEqual(commands[:2], ["AUTHENTICATE", "906"])
        self.assertIn("001", commands)

    def test_nick_user_during_sasl(self) -> None:
        client = self.sasl_client()
        client.send("AUTHENTICATE PLAIN", "NICK foo", "USER foo * * :Test")
        client.send("AUTHENTICATE " + plain(b"", b"jilles", b"sesame"))
        self.assertEqual(client.commands(), ["AUTHENTICATE", "900", "903"])

    def test_a_guest_cannot_take_an_account_name(self) -> None:
        client = IRCClient(self.irc)
        client.send("NICK Jilles", "USER u 0 * :x")
        self.assertEqual(client.commands(), ["433"])
        client.send("NICK guest")
        self.assertIn("001", client.commands())

    def test_pass(self) -> None:
        right = IRCClient(self.irc)
        right.send("PASS jilles:sesame", "NICK x", "USER u 0 * :x")
        self.assertEqual(right.protocol.name, "jilles")
        by_nick = IRCClient(self.irc)
        by_nick.send("PASS operpassword", "NICK operuser", "USER u 0 * :x")
        self.assertEqual(by_nick.protocol.name, "Operuser")
        ignored = IRCClient(self.irc)
        ignored.send("PASS nobody:anything", "NICK carl", "USER u 0 * :x")
        self.assertEqual(ignored.protocol.name, "carl")
        wrong = IRCClient(self.irc)
        wrong.send("PASS jilles:wrong", "NICK y", "USER u 0 * :x")
        lines = wrong.lines()
        self.assertEqual([line.command for line in lines], ["464", "ERROR"])
        self.assertTrue(wrong.closed)

    def test_oper(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.lines()
        alice.send("OPER jilles sesame", "OPER operuser wrong", "OPER operuser")
        self.assertEqual(alice.commands(), ["491", "464", "461"])
        alice.send("OPER operuser operpassword")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["381", "MODE"])
        self.assertEqual(lines[1].params, ["alice", "+o"])
        bob.send("WHO alice")
        self.assertEqual(bob.lines()[-2].params[6], "H*")
        alice.send("MODE alice -o")
        self.assertEqual(alice.lines()[0].params, ["alice", "-o"])

    def test_an_accounts_sessions_share_its_nick_and_rooms(self) -> None:
        first, second = self.sasl_client(), self.sasl_client()
        for client in (first, second):
            client.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + plain(b"", b"jilles", b"sesame"))
            client.send("NICK j", "USER u 0 * :x", "CAP END")
            client.lines()
        self.assertEqual((first.protocol.name, second.protocol.name), ("jilles", "jilles"))
        bob = self.client("bob")
        for client in (first, second, bob):
            client.lines()
        first.send("JOIN #both")
        self.assertEqual(first.lines()[0].command, "JOIN")
        shown = second.lines()
        self.assertEqual([(line.command, line.params[-1]) for line in shown][:1], [("JOIN", "#both")])
        self.assertIn("353", [line.command for line in shown])
        bob.send("JOIN #both", "PRIVMSG #both :to the account")
        self.assertEqual(first.lines()[-1].params, ["#both", "to the account"])
        self.assertEqual(second.lines()[-1].params, ["#both", "to the account"])
        first.send("PRIVMSG #both :from one session")
        self.assertEqual(first.lines(), [])  # no echo-message
        self.assertEqual(second.lines()[-1].params, ["#both", "from one session"])  # the other session gets it
        second.send("PART #both")
        self.assertEqual(second.lines()[0].command, "PART")
        self.assertEqual([line.command for line in first.lines()], ["PART"])

    def test_json_ban_and_lobby_kick_as_irc_sees_them(self) -> None:
        self.chat_factory.hub.moderation.operators = frozenset({"operuser"})
        # A server operator is a listed name that is an account.
        self.chat_factory.hub.is_account = lambda lower: lower == "operuser"
        oper = self.sasl_client()
        oper.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + plain(b"", b"Operuser", b"operpassword"))
        oper.send("NICK o", "USER u 0 * :x", "CAP END")
        bob = self.client("bob")
        json = json_client(self.chat_factory, "carol")
        json.send("join", "#r")
        bob.send("JOIN #r")
        for client in (oper, bob):
            client.lines()
        json.received()
        json.send("ban", {"room": "#r", "user": "bob", "comment": "enough"})
        lines = bob.lines()
        self.assertEqual([(line.command, line.params) for line in lines], [("MODE", ["#r", "+b", "bob!*@*"]), ("KICK", ["#r", "bob", "enough"])])
        bob.send("JOIN #r")
        self.assertEqual(bob.commands(), ["474"])
        oper.send("KICK #lobby bob :out")
        self.assertIn(("KICK", ["#lobby", "bob", "out"]), [(line.command, line.params) for line in oper.lines()])
        lines = bob.lines()
        self.assertEqual([line.command for line in lines], ["KICK", "ERROR"])
        self.assertEqual(lines[-1].params, ["Kicked from #lobby by Operuser: out"])
        self.assertTrue(bob.closed)

    def test_required_mode(self) -> None:
        self.irc.config = IRCConfig(server_name=SERVER, accounts=password_check(ACCOUNTS), accounts_required=True)
        guest = IRCClient(self.irc)
        guest.send("NICK guest", "USER u 0 * :x")
        lines = guest.lines()
        self.assertEqual([(line.command, line.params[:2]) for line in lines], [("FAIL", ["*", "ACCOUNT_REQUIRED"]), ("ERROR", ["An account is required"])])
        self.assertTrue(guest.closed)


class LabelTests(IRCTestCase):
    def test_ack_single_line_and_batch(self) -> None:
        alice = self.client("alice", caps="labeled-response batch")
        alice.lines()
        alice.send("@label=a PONG x")
        ack = alice.lines()
        self.assertEqual([(line.command, line.tags) for line in ack], [("ACK", {"label": "a"})])
        alice.send("@label=b PING t")
        pong = alice.lines()
        self.assertEqual([(line.command, line.tags) for line in pong], [("PONG", {"label": "b"})])
        alice.send("@label=c JOIN #x")
        lines = alice.lines()
        self.assertEqual(lines[0].command, "BATCH")
        self.assertEqual(lines[0].tags, {"label": "c"})
        ident = lines[0].params[0][1:]
        self.assertEqual(lines[0].params[1], "labeled-response")
        self.assertEqual([line.command for line in lines[1:-1]], ["JOIN", "353", "366"])
        self.assertTrue(all(line.tags["batch"] == ident for line in lines[1:-1]))
        self.assertEqual(lines[-1].params, ["-" + ident])
        alice.send("@label=d NONEXISTENT")
        self.assertEqual([(line.command, line.tags) for line in alice.lines()], [("421", {"label": "d"})])

    def test_echoes_are_the_answer(self) -> None:
        alice = self.client("alice", caps="labeled-response batch echo-message")
        bob = self.client("bob", caps="labeled-response batch echo-message")
        carl = self.client("carl")
        for client in (alice, bob, carl):
            client.lines()
        alice.send("@label=1 PRIVMSG bob :hi")
        echo = alice.lines()
        self.assertEqual([(line.command, line.tags) for line in echo], [("PRIVMSG", {"label": "1"})])
        self.assertEqual(bob.lines()[0].tags, {})
        alice.send("@label=2 PRIVMSG bob,carl :both")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["BATCH", "PRIVMSG", "PRIVMSG", "BATCH"])
        self.assertEqual(lines[0].tags, {"label": "2"})
        # without echo-message, a labeled PRIVMSG is answered with ACK
        carl.send("CAP REQ labeled-response")
        carl.lines()
        carl.send("@label=3 PRIVMSG alice :x")
        self.assertEqual([(line.command, line.tags) for line in carl.lines()], [("ACK", {"label": "3"})])

    def test_topic_set_is_its_own_answer(self) -> None:
        alice = self.client("alice", caps="labeled-response batch")
        alice.send("JOIN #t")
        alice.lines()
        alice.send("@label=t TOPIC #t :new")
        lines = alice.lines()
        self.assertEqual([(line.command, line.tags.get("label")) for line in lines], [("TOPIC", "t")])


class ChathistoryTests(IRCTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.json = json_client(self.chat_factory, "jason")
        self.json.send("join", "#h")
        self.stamps = []
        for index in range(10):
            self.json.send("msg", f"message {index}", room="#h")
            self.stamps.append(self.chat_factory.hub.now())
            self.clock.advance(0.01)
        self.json.received()
        self.alice = self.client("alice", caps="draft/chathistory batch message-tags server-time")
        self.alice.send("JOIN #h")
        self.alice.lines()

    def history(self, line: str) -> tuple[list[str], list[Any]]:
        self.alice.send(line)
        lines = self.alice.lines()
        start, *inner, end = lines
        self.assertEqual((start.command, start.params[1:]), ("BATCH", ["chathistory", "#h"]))
        ident = start.params[0][1:]
        self.assertEqual(end.params, ["-" + ident])
        self.assertTrue(all(line.tags["batch"] == ident for line in inner))
        return [line.params[1] for line in inner], inner

    def texts(self, *indexes: int) -> list[str]:
        return [f"message {index}" for index in indexes]

    def test_json_messages_as_privmsg_with_tags(self) -> None:
        texts, lines = self.history("CHATHISTORY LATEST #h * 100")
        self.assertEqual(texts, self.texts(*range(10)))
        first = lines[0]
        self.assertEqual((first.prefix, first.command, first.params[0]), ("jason!jason@json", "PRIVMSG", "#h"))
        self.assertEqual(first.tags["msgid"], "#h:1")
        self.assertEqual(first.tags["time"], self.stamps[0])

    def test_subcommands_by_msgid(self) -> None:
        self.assertEqual(self.history("CHATHISTORY LATEST #h * 3")[0], self.texts(7, 8, 9))
        self.assertEqual(self.history("CHATHISTORY LATEST #h msgid=#h:5 100")[0], self.texts(5, 6, 7, 8, 9))
        self.assertEqual(self.history("CHATHISTORY BEFORE #h msgid=#h:7 100")[0], self.texts(*range(6)))
        self.assertEqual(self.history("CHATHISTORY BEFORE #h msgid=#h:7 2")[0], self.texts(4, 5))
        self.assertEqual(self.history("CHATHISTORY AFTER #H msgid=#h:4 3")[0], self.texts(4, 5, 6))
        self.assertEqual(self.history("CHATHISTORY AROUND #h msgid=#h:8 3")[0], self.texts(6, 7, 8))
        self.assertEqual(self.history("CHATHISTORY AROUND #h msgid=#h:8 1")[0], self.texts(7))
        self.assertEqual(self.history("CHATHISTORY BETWEEN #h msgid=#h:1 msgid=#h:10 100")[0], self.texts(*range(1, 9)))
        self.assertEqual(self.history("CHATHISTORY BETWEEN #h msgid=#h:10 msgid=#h:1 3")[0], self.texts(6, 7, 8))

    def test_subcommands_by_timestamp(self) -> None:
        stamp = self.stamps
        self.assertEqual(self.history(f"CHATHISTORY BEFORE #h timestamp={stamp[6]} 2")[0], self.texts(4, 5))
        self.assertEqual(self.history(f"CHATHISTORY AFTER #h timestamp={stamp[3]} 3")[0], self.texts(4, 5, 6))
        self.assertEqual(self.history(f"CHATHISTORY LATEST #h timestamp={stamp[4]} 100")[0], self.texts(5, 6, 7, 8, 9))
        self.assertIn("message 7", self.history(f"CHATHISTORY AROUND #h timestamp={stamp[7]} 3")[0])
        self.assertEqual(self.history(f"CHATHISTORY BETWEEN #h timestamp={stamp[0]} timestamp={stamp[9]} 100")[0], self.texts(*range(1, 9)))
        self.assertEqual(self.history(f"CHATHISTORY BETWEEN #h timestamp={stamp[9]} timestamp={stamp[0]} 3")[0], self.texts(6, 7, 8))

    def test_errors(self) -> None:
        alice = self.alice
        alice.send(
            "CHATHISTORY LATEST #nope * 10",
            "CHATHISTORY FOO #h * 10",
            "CHATHISTORY BEFORE #h msgid=#other:3 10",
            "CHATHISTORY BEFORE #h * 10",
            "CHATHISTORY LATEST #h * 0",
            "CHATHISTORY LATEST #h msgid=#h:t0123456789abcdef 5",
        )
        lines = alice.lines()
        self.assertEqual([line.params[1] for line in lines], ["INVALID_TARGET"] + ["INVALID_PARAMS"] * 5)
        bob = self.client("bob", caps="draft/chathistory")
        bob.send("CHATHISTORY LATEST #h * 10")
        self.assertEqual(bob.lines()[-1].params[:3], ["CHATHISTORY", "INVALID_TARGET", "LATEST"])
        plain = self.client("carl")
        plain.lines()
        plain.send("CHATHISTORY LATEST #h * 10")
        self.assertEqual(plain.commands(), ["421"])

    def test_without_batch_and_a_guest_dm_conversation(self) -> None:
        bob = self.client("bob", caps="draft/chathistory")
        bob.send("JOIN #h")
        bob.lines()
        bob.send("CHATHISTORY LATEST #h * 2")
        self.assertEqual([line.command for line in bob.lines()], ["PRIVMSG", "PRIVMSG"])
        bob.send("CHATHISTORY LATEST jason * 10")
        self.assertEqual(bob.lines(), [])  # a guest's DMs are never stored

    def test_targets(self) -> None:
        self.alice.send("CHATHISTORY TARGETS timestamp=2020-01-01T00:00:00.000Z timestamp=2262-01-01T00:00:00.000Z 10")
        lines = self.alice.lines()
        self.assertEqual(lines[0].params[1], "draft/chathistory-targets")
        targets = [line.params[1:] for line in lines if line.command == "CHATHISTORY"]
        self.assertEqual(targets, [["#h", self.stamps[9]]])


class RealAccountsTests(IRCTestCase):
    """IRC over the real account service (as ``twistd chatd --accounts``
    wires it): DMs kept for accounts, paged by CHATHISTORY and delivered
    after an absence."""

    def setUp(self) -> None:
        from chatd.frontends.irc.factory import IRCFactory
        from chatd.tap import irc_accounts
        from tests.test_accounts_json import with_accounts

        self.chat_factory, _argon = with_accounts()
        self.clock = self.chat_factory.clock
        self.irc = IRCFactory(self.chat_factory, IRCConfig(server_name=SERVER, **irc_accounts(self.chat_factory)))
        for name in ("jilles", "Operuser"):
            client = FakeClient(self.chat_factory)
            client.send("register", {"username": name, "password": "sesame12"})
            self.assertEqual(client.received()[0]["content"], f"Account {name} registered")

    def account(self, name: str, caps: str = "") -> IRCClient:
        client = IRCClient(self.irc)
        client.send("CAP LS 302", f"CAP REQ :sasl {caps}".rstrip(), "AUTHENTICATE PLAIN")
        client.send("AUTHENTICATE " + plain(b"", name.encode(), b"sesame12"))
        client.send("NICK x", "USER u 0 * :x", "CAP END")
        self.welcome = client.lines()
        self.assertIn("903", [line.command for line in self.welcome])
        return client

    def test_dm_history_and_offline_dms(self) -> None:
        jilles = self.account("jilles", "draft/chathistory batch message-tags")
        oper = self.account("Operuser")
        jilles.send("PRIVMSG operuser :one", "PRIVMSG Operuser :two")
        oper.send("PRIVMSG jilles :three")
        jilles.lines()
        oper.lines()
        jilles.send("CHATHISTORY LATEST operuser * 10")
        lines = jilles.lines()
        self.assertEqual(lines[0].params[1:], ["chathistory", "operuser"])
        self.assertEqual([line.params[1] for line in lines[1:-1]], ["one", "two", "three"])
        self.assertEqual(lines[1].tags["msgid"], "dm:jilles:operuser:1")
        self.assertEqual(lines[3].prefix, "Operuser!~u@irc")
        jilles.send("CHATHISTORY BEFORE operuser msgid=dm:jilles:operuser:3 1")
        self.assertEqual([line.params[1] for line in jilles.lines()[1:-1]], ["two"])
        # while the operator is away, jilles writes; its next session gets it after the welcome
        oper.send("QUIT")
        jilles.send("PRIVMSG Operuser :while you were out")
        jilles.lines()
        back = self.account("Operuser")
        commands = [line.command for line in self.welcome]
        offline = self.welcome[-1]
        self.assertEqual((offline.prefix, offline.command, offline.params), ("jilles!~u@irc", "PRIVMSG", ["Operuser", "while you were out"]))
        self.assertLess(commands.index("366"), len(commands) - 1)  # after the welcome and autojoins
        back.send("QUIT")
        self.account("Operuser")
        self.assertNotIn("while you were out", [line.params[-1] for line in self.welcome])  # delivered once only

    def test_targets_with_conversations(self) -> None:
        jilles = self.account("jilles", "draft/chathistory batch server-time")
        oper = self.account("Operuser")
        jilles.send("JOIN #t", "PRIVMSG #t :in a room")
        self.clock.advance(1)
        jilles.send("PRIVMSG Operuser :in a conversation")
        jilles.lines()
        oper.lines()
        jilles.send("CHATHISTORY TARGETS timestamp=2020-01-01T00:00:00.000Z timestamp=2262-01-01T00:00:00.000Z 10")
        targets = [line.params[1] for line in jilles.lines() if line.command == "CHATHISTORY"]
        self.assertEqual(targets, ["#t", "Operuser"])

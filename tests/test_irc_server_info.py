"""HELP, INFO, TIME, LINKS, WHOWAS, KILL and LUSERS' 265/266 on the IRC
front-end, in memory."""

from __future__ import annotations

from tests.test_irc import IRCTestCase
from tests.test_irc_support import SERVER, account_exists, json_client, password_check

ACCOUNTS = {"operuser": "operpassword"}


class HelpTests(IRCTestCase):
    def test_help_lists_the_commands(self) -> None:
        alice = self.client("alice")
        alice.lines()
        for command in ("HELP", "HELPOP", "help"):
            alice.send(command)
            lines = alice.lines()
            self.assertEqual(lines[0].command, "704")
            self.assertEqual(lines[-1].command, "706")
            self.assertEqual({line.command for line in lines[1:-1]}, {"705"})
            listed = " ".join(line.params[-1] for line in lines[1:-1]).split()
            self.assertIn("PRIVMSG", listed)
            self.assertIn("WHOWAS", listed)

    def test_help_on_one_command_and_an_unknown_one(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("HELP privmsg")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["704", "705", "706"])
        self.assertTrue(all(line.params[:2] == ["alice", "PRIVMSG"] for line in lines))
        alice.send("HELP NOSUCHTHING")
        (line,) = alice.lines()
        self.assertEqual((line.command, line.params[:2]), ("524", ["alice", "NOSUCHTHING"]))

    def test_every_listed_command_is_served(self) -> None:
        from chatd.frontends.irc.protocol import IRCProtocol
        from chatd.frontends.irc.server_info import HELP_TOPICS

        for command in HELP_TOPICS:
            self.assertTrue(hasattr(IRCProtocol, f"irc_{command}"), command)


class InfoTimeLinksTests(IRCTestCase):
    config = {"server_name": SERVER}

    def test_info(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("INFO")
        lines = alice.lines()
        self.assertEqual({line.command for line in lines[:-1]}, {"371"})
        self.assertEqual(lines[-1].command, "374")
        alice.send(f"INFO {SERVER}", "INFO elsewhere.example")
        commands = alice.commands()
        self.assertEqual(commands[-2:-1], ["374"])
        self.assertEqual(commands[-1], "402")

    def test_time(self) -> None:
        alice = self.client("alice")
        alice.lines()
        import datetime

        self.clock.advance(100)
        alice.send("TIME")
        (line,) = alice.lines()
        self.assertEqual(line.command, "391")
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), tz=datetime.timezone.utc)
        self.assertEqual(line.params, ["alice", SERVER, now.strftime("%A %B %d %Y -- %H:%M:%S +00:00")])

    def test_links_shows_one_server(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("LINKS")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["NOTICE", "365"])
        self.assertEqual(lines[1].params[:2], ["alice", "*"])


class WhowasTests(IRCTestCase):
    def test_newest_first_count_and_end(self) -> None:
        alice = self.client("alice")
        first = self.client()
        first.register("bob", user="ident2", realname="First Bob")
        first.send("QUIT :bye")
        first.disconnect()
        self.clock.advance(5)
        second = self.client()
        second.register("bob", user="ident3", realname="Second Bob")
        second.disconnect()
        alice.lines()
        alice.send("WHOWAS bob")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["314", "312", "314", "312", "369"])
        self.assertEqual(lines[0].params, ["alice", "bob", "~ident3", "irc", "*", "Second Bob"])
        self.assertEqual(lines[2].params[2], "~ident2")
        alice.send("WHOWAS BOB 1")
        self.assertEqual(alice.commands(), ["314", "312", "369"])
        for count in ("0", "-1", "x"):
            alice.send(f"WHOWAS bob {count}")
            self.assertEqual(alice.commands().count("314"), 2)

    def test_a_rename_is_recorded(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        bob.send("NICK robert")
        alice.lines()
        alice.send("WHOWAS bob")
        self.assertEqual(alice.commands(), ["314", "312", "369"])

    def test_unknown_and_missing(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("WHOWAS nobody", "WHOWAS")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["406", "369", "461"])
        self.assertEqual(lines[1].params[:2], ["alice", "nobody"])

    def test_the_log_is_bounded(self) -> None:
        from chatd.frontends.irc.whowas import WHOWAS_REPLIES, WhowasLog

        log = WhowasLog(size=10)
        for index in range(50):
            log.record("bob" if index % 2 else "carol", "~u", "x", float(index))
        self.assertEqual(len(log.find("bob", 0)), 5)
        self.assertEqual(log.find("bob", 0)[0].when, 49.0)
        many = WhowasLog()
        for index in range(100):
            many.record("bob", "~u", "x", float(index))
        self.assertEqual(len(many.find("bob", -1)), WHOWAS_REPLIES)


class KillTests(IRCTestCase):
    config = {
        "accounts": password_check(ACCOUNTS),
        "account_exists": account_exists(ACCOUNTS),
        "operators": frozenset({"operuser"}),
    }

    def test_only_an_operator_kills_and_the_victim_is_closed(self) -> None:
        oper = self.client("ircop")
        alice = self.client("alice")
        bob = self.client("bob")
        alice.send("JOIN #r")
        bob.send("JOIN #r")
        for client in (oper, alice, bob):
            client.lines()
        alice.send("KILL bob :go away", "KILL alice :me")
        self.assertEqual(alice.commands(), ["481", "481"])
        self.assertFalse(bob.closed or alice.closed)
        oper.send("OPER operuser operpassword")
        oper.lines()
        oper.send("KILL", "KILL nobody :x", "KILL bob :some reason")
        self.assertEqual(oper.commands(), ["461", "401", "QUIT"])  # bob quits #lobby
        killed = bob.lines()
        self.assertEqual(killed[-1].command, "ERROR")
        self.assertIn("Killed by ircop: some reason", killed[-1].params[0])
        self.assertTrue(bob.closed)
        quit_line = alice.lines()[-1]
        self.assertEqual((quit_line.command, quit_line.prefix), ("QUIT", "bob!~user@irc"))
        self.assertIn("Killed by ircop", quit_line.params[0])
        self.assertIsNone(self.chat_factory.hub.session_named("bob"))
        alice.send("WHOWAS bob")
        self.assertEqual(alice.commands(), ["314", "312", "369"])

    def test_a_json_user_is_killed_too(self) -> None:
        oper = self.client("ircop")
        oper.send("OPER operuser operpassword")
        carol = json_client(self.chat_factory, "carol")
        carol.received()
        oper.send("KILL carol")
        self.assertIsNone(self.chat_factory.hub.session_named("carol"))
        told = carol.received()
        self.assertIn(("info", "You were killed by ircop: ircop"), [(message["response"], message["content"]) for message in told])
        self.assertTrue(carol.closed)


class LusersTests(IRCTestCase):
    def test_265_and_266_count_current_and_most(self) -> None:
        bar = self.client("bar")
        qux = self.client("qux")
        qux.disconnect()
        bar.lines()
        bar.send("LUSERS")
        lines = {line.command: line for line in bar.lines()}
        self.assertEqual(lines["265"].params[1:3], ["1", "2"])
        self.assertEqual(lines["266"].params[1:3], ["1", "2"])
        self.assertIn("I have 1 clients", lines["255"].params[-1])


class HostileTests(IRCTestCase):
    """The commands of this module cost budget like any other, and wait
    for a client that does not read."""

    chat = {"request_rate": 5.0, "request_burst": 10, "max_sendq": 4096}

    def test_a_flood_of_them_is_closed_and_others_go_on(self) -> None:
        alice, bob = self.client("alice"), self.client("bob")
        alice.lines()
        bob.lines()
        alice.send_raw(b"".join(b"HELP PRIVMSG\r\nWHOWAS x 0\r\nINFO\r\nTIME\r\nLINKS\r\n" for _ in range(400)))
        lines = alice.lines()
        self.assertEqual(lines[-1].command, "ERROR")
        self.assertLess(len(lines), 100)  # answered within the budget, not 2,000 times
        self.assertTrue(alice.closed)
        bob.send("PING still-here")
        self.assertEqual([(line.command, line.params[-1]) for line in bob.lines()], [("PONG", "still-here")])

    def test_a_client_that_never_reads_gets_no_more_output(self) -> None:
        alice = self.client("alice")
        alice.lines()
        sendq = alice.protocol.sendq
        sendq.pauseProducing()  # the kernel buffer is full: the client reads nothing
        for _ in range(50):
            alice.send("HELP")
            self.clock.advance(1)
        self.assertEqual(sendq.unsent, sendq.buffer_size)  # nothing was answered meanwhile
        self.assertFalse(alice.closed)
        sendq.resumeProducing()
        self.clock.advance(1)
        self.assertIn("704", alice.commands())  # the waiting requests are answered once it reads

"""account-tag, extended-join and bot mode (+B) on the IRC front-end, in memory."""

from __future__ import annotations

from tests.test_irc_support import IRCClient, json_client
from tests.test_irc_v3 import AccountsTestCase, plain


class NoAutojoin(AccountsTestCase):
    config = {**AccountsTestCase.config, "autojoin": ()}


class AccountTagsTests(NoAutojoin):
    def jilles(self, nick: str = "bar") -> IRCClient:
        client = self.sasl_client()
        client.send("AUTHENTICATE PLAIN", "AUTHENTICATE " + plain(b"", b"jilles", b"sesame"))
        client.send(f"NICK {nick}", "USER f 0 * :Jilles Real", "CAP END")
        client.lines()
        return client

    def test_messages_and_invites_carry_the_account(self) -> None:
        foo = self.client("foo", "account-tag")
        plain_client = self.client("plainer")
        jilles = self.jilles()
        for client in (foo, plain_client):
            client.lines()
        jilles.send("PRIVMSG foo :hi", "PRIVMSG plainer :hi")
        (line,) = foo.lines()
        self.assertEqual((line.command, line.params, line.tags), ("PRIVMSG", ["foo", "hi"], {"account": "jilles"}))
        self.assertEqual(plain_client.lines()[0].tags, {})
        jilles.send("JOIN #chan", "INVITE foo #chan")
        invite = [line for line in foo.lines() if line.command == "INVITE"]
        self.assertEqual([(line.params, line.tags) for line in invite], [(["foo", "#chan"], {"account": "jilles"})])
        # A guest's messages carry none.
        plain_client.send("PRIVMSG foo :from a guest")
        self.assertEqual(foo.lines()[0].tags, {})

    def test_with_message_tags_the_account_joins_the_others(self) -> None:
        foo = self.client("foo", "account-tag message-tags")
        jilles = self.jilles()
        foo.lines()
        jilles.send("PRIVMSG foo :hi")
        (line,) = foo.lines()
        self.assertEqual(line.tags["account"], "jilles")
        self.assertIn("msgid", line.tags)

    def test_a_json_account_is_tagged_and_a_json_guest_is_not(self) -> None:
        foo = self.client("foo", "account-tag")
        foo.lines()
        guest = json_client(self.chat_factory, "carol")
        guest.send("msg", "from json", to="foo")
        line = [line for line in foo.lines() if line.command == "PRIVMSG"][0]
        self.assertEqual((line.params, line.tags), (["foo", "from json"], {}))
        # An account's JSON session: its name is the account.
        self.chat_factory.hub.is_account = lambda lower: lower == "dave"
        account = json_client(self.chat_factory, "dave")
        account.protocol.account = True  # as a password login leaves it
        account.send("msg", "from an account", to="foo")
        line = [line for line in foo.lines() if line.command == "PRIVMSG"][0]
        self.assertEqual((line.params, line.tags), (["foo", "from an account"], {"account": "dave"}))

    def test_extended_join(self) -> None:
        foo = self.client("foo", "extended-join")
        foo.send("JOIN #chan")
        own = [line for line in foo.lines() if line.command == "JOIN"][0]
        self.assertEqual(own.params, ["#chan", "*", "Real Name"])
        bar = self.client("bar")
        bar.send("JOIN #chan")
        self.assertEqual(foo.lines()[0].params, ["#chan", "*", "Real Name"])
        jilles = self.jilles(nick="jnick")
        jilles.send("JOIN #chan")
        self.assertEqual(foo.lines()[0].params, ["#chan", "jilles", "Jilles Real"])
        json = json_client(self.chat_factory, "carol")
        json.send("join", "#chan")
        self.assertEqual(foo.lines()[0].params, ["#chan", "*", "carol"])
        # Without the capability: the plain JOIN.
        self.assertEqual(bar.lines()[0].params, ["#chan"])


class BotModeTests(NoAutojoin):
    def test_bot_mode_tags_whois_and_who(self) -> None:
        bot = self.client("botnick", "message-tags echo-message")
        user = self.client("usernick", "message-tags")
        plain_user = self.client("plainer")
        bot.lines()
        self.assertIn("BOT=B", " ".join(" ".join(line.params) for line in IRCClient(self.irc).register("x") if line.command == "005"))
        bot.send("MODE botnick +B")
        (mode,) = bot.lines()
        self.assertEqual((mode.command, mode.params), ("MODE", ["botnick", "+B"]))
        bot.send("MODE botnick")
        self.assertEqual(bot.lines()[0].params, ["botnick", "+B"])
        for client in (user, plain_user):
            client.lines()
        bot.send("PRIVMSG usernick :beep boop", "PRIVMSG plainer :beep")
        echo = bot.lines()
        self.assertEqual([line.tags.get("bot") for line in echo], ["", ""])
        received = user.lines()[0]
        self.assertEqual((received.params, received.tags.get("bot")), (["usernick", "beep boop"], ""))
        self.assertNotIn("bot", plain_user.lines()[0].tags)
        bot.send("JOIN #chan")
        user.send("JOIN #chan")
        for client in (bot, user):
            client.lines()
        bot.send("PRIVMSG #chan :to the room", "TAGMSG #chan")
        tagged = user.lines()
        self.assertEqual([line.command for line in tagged], ["PRIVMSG", "TAGMSG"])
        self.assertTrue(all("bot" in line.tags for line in tagged))
        user.send("WHOIS botnick")
        self.assertIn("335", user.commands())
        user.send("WHO #chan")
        who = {line.params[5]: line.params[6] for line in user.lines() if line.command == "352"}
        self.assertIn("B", who["botnick"])
        self.assertNotIn("B", who["usernick"])
        bot.send("MODE botnick -B", "PRIVMSG usernick :human now")
        bot.lines()
        self.assertNotIn("bot", user.lines()[0].tags)

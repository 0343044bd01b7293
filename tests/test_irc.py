"""The IRC front-end in memory (PROTOCOL.md section 7): registration,
every command, IRC and JSON users on one hub, and bad input."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.frontends.irc.lines import Line
from tests.test_irc_support import SERVER, IRCClient, find, json_client, make_irc


class IRCTestCase(SynchronousTestCase):
    """A hub with IRC; ``config`` goes to the IRC factory, ``chat`` to the chat one."""

    config: dict[str, Any] = {}
    chat: dict[str, Any] = {}

    def setUp(self) -> None:
        self.chat_factory, self.irc = make_irc(dict(self.config), **self.chat)
        self.clock = self.chat_factory.clock

    def client(self, nick: str | None = None, caps: str = "", **kwargs: Any) -> IRCClient:
        client = IRCClient(self.irc, **kwargs)
        if nick is not None:
            client.register(nick, caps)
        return client

    def numeric(self, lines: list[Line], code: str) -> Line:
        return find(lines, code)


class RegistrationTests(IRCTestCase):
    def test_welcome_in_order_with_isupport(self) -> None:
        alice = IRCClient(self.irc)
        lines = alice.register("alice")
        commands = [line.command for line in lines]
        self.assertEqual(commands[0], "CAP")
        welcome = commands[commands.index("001") :]
        self.assertEqual(welcome[:5], ["001", "002", "003", "004", "005"])
        self.assertEqual(welcome[6:13], ["251", "252", "254", "255", "265", "266", "422"])
        self.assertEqual(find(lines, "001").params, ["alice", "Welcome to the chatd IRC network alice"])
        self.assertEqual(find(lines, "004").params[1:], [SERVER, find(lines, "004").params[2], "Bio", "biklmnostv"])
        tokens = [param for line in lines if line.command == "005" for param in line.params[1:-1]]
        for token in ("CASEMAPPING=ascii", "CHANTYPES=#", "PREFIX=(ov)@+", "CHANMODES=b,k,l,imnst", "NICKLEN=32", "CHATHISTORY=500"):
            self.assertIn(token, tokens)
        self.assertTrue(all(len(line.params) - 2 <= 13 for line in lines if line.command == "005"))
        # autojoin #lobby (the default) comes after the welcome
        self.assertEqual(commands[-3:], ["JOIN", "353", "366"])
        self.assertEqual(lines[-3].prefix, "alice!~user@irc")

    def test_motd_lines(self) -> None:
        self.irc.config = type(self.irc.config)(server_name=SERVER, motd=("Hello", "World"))
        lines = IRCClient(self.irc).register("alice")
        motd = [(line.command, line.params[-1]) for line in lines if line.command in ("375", "372", "376")]
        self.assertEqual([command for command, _ in motd], ["375", "372", "372", "376"])
        self.assertEqual(motd[1][1], "- Hello")

    def test_cap_ls_302_req_list_end(self) -> None:
        alice = IRCClient(self.irc)
        alice.send("CAP LS 302")
        ls = alice.lines()[0]
        self.assertEqual(ls.params[:2], ["*", "LS"])
        caps = ls.params[2].split()
        self.assertIn("message-tags", caps)
        self.assertIn("draft/chathistory", caps)
        self.assertNotIn("sasl", caps)  # accounts off
        alice.send("CAP REQ :multi-prefix server-time", "CAP LIST")
        ack, listed = alice.lines()
        self.assertEqual(ack.params, ["*", "ACK", "multi-prefix server-time"])
        self.assertEqual(sorted(listed.params[2].split()), ["multi-prefix", "server-time"])
        alice.send("CAP REQ :multi-prefix foo")
        self.assertEqual(alice.lines()[0].params[1:], ["NAK", "multi-prefix foo"])
        alice.send("CAP REQ :-server-time", "CAP LIST")
        self.assertEqual(alice.lines()[1].params[2], "multi-prefix")
        alice.send("NICK alice", "USER u 0 * :Alice")
        self.assertEqual(alice.lines(), [])  # negotiation open: no welcome yet
        alice.send("CAP END")
        self.assertIn("001", [line.command for line in alice.lines()])

    def test_cap_ls_301_has_no_values_and_bad_subcommand_is_410(self) -> None:
        self.irc.config = type(self.irc.config)(server_name=SERVER, accounts=lambda host: None)  # type: ignore[arg-type,return-value]
        alice = IRCClient(self.irc)
        alice.send("CAP LS")
        self.assertIn("sasl", alice.lines()[0].params[2].split())
        alice.send("CAP LS 302")
        self.assertIn("sasl=PLAIN", alice.lines()[0].params[2].split())
        alice.send("CAP FOO")
        self.assertEqual(alice.lines()[0].command, "410")

    def test_nick_errors(self) -> None:
        self.client("alice")
        bob = IRCClient(self.irc)
        bob.send("NICK")
        self.assertEqual(bob.lines()[0].command, "431")
        bob.send("NICK 9lives", "NICK a!b", "NICK " + "x" * 33)
        self.assertEqual(bob.commands(), ["432", "432", "432"])
        bob.send("NICK ALICE", "NICK server")
        self.assertEqual(bob.commands(), ["433", "433"])
        bob.send("NICK bob_-1", "USER u 0 * :Bob")
        self.assertIn("001", bob.commands())

    def test_json_login_of_an_irc_nick_is_name_taken_and_back(self) -> None:
        self.client("alice")
        json = json_client(self.chat_factory, "bob")
        taken = json_client(self.chat_factory, "Alice")
        self.assertEqual(taken.received(), [])  # its error was read by login: check it there
        bob = IRCClient(self.irc)
        bob.send("NICK BOB", "USER u 0 * :x")
        self.assertEqual(bob.lines()[0].command, "433")
        self.assertTrue(json.protocol.name == "bob")

    def test_commands_before_registration_get_451(self) -> None:
        alice = IRCClient(self.irc)
        alice.send("JOIN #a", "PRIVMSG x :y", "WHO *")
        self.assertEqual(alice.commands(), ["451", "451", "451"])
        alice.send("PING tok")
        self.assertEqual(alice.lines()[0].params, [SERVER, "tok"])

    def test_user_needs_four_params_and_a_realname(self) -> None:
        alice = IRCClient(self.irc)
        alice.send("NICK alice", "USER a b c", "USER a 0 * :")
        lines = alice.lines()
        self.assertEqual([(line.command, line.params[1]) for line in lines], [("461", "USER"), ("461", "USER")])
        self.assertEqual(lines[0].params[0], "alice")
        alice.send("USER a 0 * :Alice", "USER a 0 * :Again", "PASS x")
        commands = alice.commands()
        self.assertIn("001", commands)
        self.assertEqual(commands[-2:], ["462", "462"])

    def test_registration_timeout(self) -> None:
        alice = IRCClient(self.irc)
        alice.send("NICK alice")
        self.clock.advance(61)
        lines = alice.lines()
        self.assertEqual(lines[-1].command, "ERROR")
        self.assertEqual(lines[-1].params, ["Registration timed out"])
        self.assertTrue(alice.closed)

    def test_ident_is_cleaned_and_cut(self) -> None:
        alice = self.client()
        alice.register("alice", user="😊ab.c-d_efghijklmn")
        self.assertEqual(alice.protocol.source, "alice!~ab.c-d_efg@irc")
        bob = self.client()
        bob.register("bob", user="😊😊")
        self.assertEqual(bob.protocol.source, "bob!~u@irc")

    def test_over_the_caps_is_error_too_many_connections(self) -> None:
        chat, irc = make_irc(max_per_ip=1)
        first = IRCClient(irc)
        second = IRCClient(irc)
        self.assertFalse(first.closed)
        self.assertEqual(second.raw(), b"ERROR :Too many connections\r\n")
        self.assertTrue(second.closed)
        first.disconnect()
        self.assertFalse(IRCClient(irc).closed)


class PingQuitTests(IRCTestCase):
    def test_ping_pong_and_409(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("PING abc", "PING", "PING :", "PONG whatever")
        lines = alice.lines()
        self.assertEqual(lines[0].command, "PONG")
        self.assertEqual(lines[0].prefix, SERVER)
        self.assertEqual(lines[0].params, [SERVER, "abc"])
        self.assertEqual([line.command for line in lines[1:]], ["409", "409"])

    def test_keepalive_ping_then_timeout(self) -> None:
        alice = self.client("alice")
        alice.lines()
        self.clock.advance(119)
        self.assertEqual(alice.lines(), [])
        self.clock.advance(1)
        self.assertEqual(alice.lines()[0].command, "PING")
        alice.send("PONG :" + SERVER)
        self.clock.advance(119)
        self.assertEqual(alice.lines(), [])
        self.clock.advance(1)
        self.assertEqual(alice.lines()[0].command, "PING")
        self.clock.advance(60)
        lines = alice.lines()
        self.assertEqual((lines[-1].command, lines[-1].params), ("ERROR", ["Ping timeout"]))
        self.assertTrue(alice.closed)

    def test_quit_closes_with_error_and_others_see_one_quit(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.send("JOIN #a,#b")
        bob.send("JOIN #a,#b")
        json = json_client(self.chat_factory, "carol")
        json.send("join", "#a")
        alice.lines()
        bob.lines()
        json.received()
        alice.send("QUIT :gone fishing")
        lines = alice.lines()
        self.assertEqual(lines[-1].command, "ERROR")
        self.assertTrue(alice.closed)
        quits = [line for line in bob.lines() if line.command == "QUIT"]
        self.assertEqual(len(quits), 1)  # #lobby, #a, #b shared: one QUIT
        self.assertEqual(quits[0].params, ["Quit: gone fishing"])
        self.assertEqual(quits[0].prefix, "alice!~user@irc")
        presence = [r["content"] for r in json.received() if r["response"] == "presence"]
        self.assertIn({"user": "alice", "status": "offline", "room": "#a", "comment": "gone fishing"}, presence)
        self.assertIn({"user": "alice", "status": "offline", "room": "#lobby", "comment": "gone fishing"}, presence)

    def test_connection_lost_is_a_quit_too(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        bob.lines()
        alice.disconnect()
        quits = [line for line in bob.lines() if line.command == "QUIT"]
        self.assertEqual(len(quits), 1)
        self.assertIsNone(self.chat_factory.hub.session_named("alice"))


class ChannelTests(IRCTestCase):
    def test_join_part_names_topic(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob", caps="multi-prefix userhost-in-names")
        alice.lines()
        bob.lines()
        alice.send("JOIN #Dev")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["JOIN", "353", "366"])
        self.assertEqual(lines[1].params, ["alice", "=", "#Dev", "@alice"])
        bob.send("JOIN #dev")
        lines = bob.lines()
        self.assertEqual(lines[0].params, ["#Dev"])
        self.assertEqual(lines[1].params[-1], "@alice!~user@irc bob!~user@irc")
        self.assertEqual(alice.lines()[0].prefix, "bob!~user@irc")
        bob.send("JOIN #dev")
        self.assertEqual(bob.lines(), [])  # already joined: nothing
        alice.send("TOPIC #dev :release day")
        self.assertEqual(alice.lines()[0].params, ["#Dev", "release day"])
        self.assertEqual(bob.lines()[0].command, "TOPIC")
        bob.send("TOPIC #dev :mine now")
        self.assertEqual(bob.commands(), ["482"])  # topic_ops, bob is no op
        bob.send("TOPIC #dev")
        topic, when = bob.lines()
        self.assertEqual((topic.command, topic.params[-1]), ("332", "release day"))
        self.assertEqual((when.command, when.params[2]), ("333", "alice"))
        bob.send("PART #dev :later")
        self.assertEqual(bob.lines()[0].params, ["#Dev", "later"])
        self.assertEqual(alice.lines()[0].params, ["#Dev", "later"])
        bob.send("PART #dev", "PART #nowhere", "PART bad")
        self.assertEqual(bob.commands(), ["442", "403", "403"])

    def test_join_errors_and_join_zero(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("JOIN #valid,inv@lid,#", "JOIN")
        commands = alice.commands()
        self.assertEqual(commands, ["JOIN", "353", "366", "403", "403", "461"])
        alice.send("JOIN 0")
        parted = alice.lines()
        self.assertEqual(sorted(line.params[0] for line in parted), ["#lobby", "#valid"])
        self.assertTrue(all(line.command == "PART" for line in parted))

    def test_names_of_unknown_or_unreadable_is_366_alone(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.send("JOIN #s", "MODE #s +s")
        alice.lines()
        bob.lines()
        bob.send("NAMES #s", "NAMES #nope", "NAMES x", "NAMES")
        self.assertEqual(bob.commands(), ["366"] * 4)
        alice.send("NAMES #s")
        self.assertEqual(alice.lines()[0].params, ["alice", "@", "#s", "@alice"])

    def test_mode_read_and_changes(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.send("JOIN #m")
        bob.send("JOIN #m")
        alice.lines()
        bob.lines()
        alice.send("MODE #m")
        modes, created = alice.lines()
        self.assertEqual((modes.command, modes.params[1:]), ("324", ["#m", "+nt"]))
        self.assertEqual(created.command, "329")
        alice.send("MODE #m +im-t")
        self.assertEqual([line.params for line in alice.lines()], [["#m", "+im-t"]])
        self.assertEqual(bob.lines()[0].params, ["#m", "+im-t"])
        alice.send("MODE #m +v bob")
        self.assertEqual(bob.lines()[0].params, ["#m", "+v", "bob"])
        alice.lines()
        bob.send("MODE #m -i", "MODE #m +q key", "MODE #m +b bad!mask@host")
        self.assertEqual(bob.commands(), ["482", "472", "696"])
        alice.send("MODE #m +b spam*", "MODE #m b")
        lines = alice.lines()
        self.assertEqual(lines[0].params, ["#m", "+b", "spam*!*@*"])
        self.assertEqual([line.command for line in lines[1:]], ["367", "368"])
        alice.send("MODE #nope", "MODE #lobby +i")
        self.assertEqual(alice.commands(), ["403", "482"])
        record = self.chat_factory.hub.directory.get("#m")
        assert record is not None
        self.assertTrue(record.modes["invite_only"] and record.modes["moderated"] and not record.modes["topic_ops"])

    def test_user_modes(self) -> None:
        alice = self.client("alice")
        self.client("bob")
        alice.lines()
        alice.send("MODE alice", "MODE alice +i", "MODE alice +x", "MODE bob +i", "MODE nobody")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["221", "MODE", "501", "502", "401"])
        self.assertEqual(lines[1].params, ["alice", "+i"])

    def test_kick(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        carol = json_client(self.chat_factory, "carol")
        alice.send("JOIN #k")
        bob.send("JOIN #k")
        carol.send("join", "#k")
        alice.lines()
        bob.lines()
        carol.received()
        bob.send("KICK #k alice")
        self.assertEqual(bob.commands(), ["482"])
        alice.send("KICK #k bob :spam")
        self.assertEqual(alice.lines()[0].params, ["#k", "bob", "spam"])
        self.assertEqual(bob.lines()[0].params, ["#k", "bob", "spam"])
        presence = [r for r in carol.received() if r["response"] == "presence"]
        self.assertEqual(
            presence[0]["content"],
            {"user": "bob", "status": "offline", "room": "#k", "reason": "kicked", "by": "alice", "comment": "spam"},
        )
        self.assertFalse(self.chat_factory.hub.in_room(bob.protocol, "#k"))
        alice.send("KICK #k bob", "KICK #k nobody", "KICK #nope bob", "KICK #k")
        self.assertEqual(alice.commands(), ["441", "401", "403", "461"])
        alice.send("KICK #k carol")
        self.assertEqual(alice.lines()[0].params, ["#k", "carol", "alice"])  # default comment: the kicker

    def test_invite(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.send("JOIN #i", "MODE #i +i")
        alice.lines()
        bob.lines()
        bob.send("JOIN #i")
        self.assertEqual(bob.commands(), ["473"])
        alice.send("INVITE nobody #i", "INVITE bob #i")
        lines = alice.lines()
        self.assertEqual(lines[0].command, "401")
        self.assertEqual(lines[1].params, ["alice", "bob", "#i"])
        invite = bob.lines()[0]
        self.assertEqual((invite.command, invite.params, invite.prefix), ("INVITE", ["bob", "#i"], "alice!~user@irc"))
        bob.send("JOIN #i")
        self.assertEqual(bob.lines()[0].command, "JOIN")
        alice.lines()
        alice.send("INVITE bob #i", "INVITE")
        self.assertEqual(alice.commands(), ["443", "461"])

    def test_list_who_whois_userhost(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        json_client(self.chat_factory, "carol")
        alice.send("JOIN #w", "TOPIC #w :hi", "AWAY :out")
        alice.lines()
        bob.lines()
        bob.send("LIST")
        listed = [line.params[1:] for line in bob.lines() if line.command == "322"]
        self.assertEqual(listed, [["#lobby", "3", ""], ["#w", "1", "hi"]])
        bob.send("LIST #w")
        self.assertEqual([line.command for line in bob.lines()], ["322", "323"])
        bob.send("WHO #w")
        who, end = bob.lines()
        self.assertEqual(who.params, ["bob", "#w", "~user", "irc", SERVER, "alice", "G@", "0 Real Name"])
        self.assertEqual(end.params[:2], ["bob", "#w"])
        bob.send("WHO Car*")
        who, end = bob.lines()
        self.assertEqual(who.params[1:7], ["*", "carol", "json", SERVER, "carol", "H"])
        self.assertEqual(end.params[1], "Car*")
        bob.send("WHOIS alice")
        commands = bob.commands()
        self.assertEqual(commands, ["311", "319", "312", "301", "318"])
        bob.send("WHOIS nobody")
        self.assertEqual(bob.commands(), ["401", "318"])
        bob.send("USERHOST alice carol nobody")
        self.assertEqual(bob.lines()[0].params[1], "alice=-~user@irc carol=+carol@json")

    def test_who_mask_skips_invisible_strangers(self) -> None:
        evan = self.client("evan")
        sam = self.client("sam")
        self.irc.config = type(self.irc.config)(server_name=SERVER, autojoin=())
        evan.send("MODE evan +i", "PART #lobby")
        sam.send("PART #lobby")
        sam.lines()
        sam.send("WHO eva*", "WHO evan")
        self.assertEqual(sam.commands(), ["315", "352", "315"])

    def test_away_notify(self) -> None:
        watcher = self.client("watcher", caps="away-notify")
        alice = self.client("alice")
        watcher.lines()
        alice.send("AWAY :gone")
        note = watcher.lines()[0]
        self.assertEqual((note.prefix, note.command, note.params), ("alice!~user@irc", "AWAY", ["gone"]))
        alice.send("PART #lobby")
        watcher.lines()
        alice.send("JOIN #lobby")
        joined, away = watcher.lines()
        self.assertEqual((joined.command, away.command, away.params), ("JOIN", "AWAY", ["gone"]))
        alice.send("AWAY")
        self.assertEqual(watcher.lines()[0].params, [])

    def test_away(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.lines()
        alice.send("AWAY :lunch", "AWAY", "AWAY :back soon")
        self.assertEqual(alice.commands(), ["306", "305", "306"])
        bob.send("PRIVMSG alice :hi", "NOTICE alice :hi")
        lines = bob.lines()
        self.assertEqual(lines[0].command, "301")
        self.assertEqual(lines[0].params, ["bob", "alice", "back soon"])
        self.assertEqual(len(lines), 1)  # no 301 for a NOTICE


class MessageTests(IRCTestCase):
    def test_irc_and_json_converse_in_lobby_and_a_room_and_by_dm(self) -> None:
        alice = self.client("alice")
        bob = json_client(self.chat_factory, "bob")
        alice.lines()
        alice.send("PRIVMSG #lobby :hello json")
        msg = [r for r in bob.received() if r["response"] == "message"][0]
        self.assertEqual((msg["sender"], msg["content"], msg.get("room")), ("alice", "hello json", None))
        bob.send("msg", "hello irc")
        bob.received()
        line = alice.lines()[0]
        self.assertEqual((line.prefix, line.command, line.params), ("bob!bob@json", "PRIVMSG", ["#lobby", "hello irc"]))
        # another room, both ways; presence both ways
        alice.send("JOIN #dev")
        alice.lines()
        bob.send("join", "#dev")
        joined = alice.lines()[0]
        self.assertEqual((joined.command, joined.prefix, joined.params), ("JOIN", "bob!bob@json", ["#dev"]))
        info = bob.received()[0]
        self.assertEqual(info["members"], ["alice", "bob"])
        bob.send("msg", "in dev", room="#dev")
        self.assertEqual(alice.lines()[0].params, ["#dev", "in dev"])
        bob.received()
        alice.send("PRIVMSG #dev :in dev too")
        self.assertEqual([r["content"] for r in bob.received() if r["response"] == "message"], ["in dev too"])
        # DMs both ways
        alice.send("PRIVMSG bob :psst")
        dm = [r for r in bob.received() if r["response"] == "message"][0]
        self.assertEqual((dm["sender"], dm["to"], dm["content"]), ("alice", "bob", "psst"))
        bob.send("msg", "psst back", to="alice")
        self.assertEqual(bob.one()["to"], "alice")
        self.assertEqual(alice.lines()[0].params, ["alice", "psst back"])
        # topics and parts cross too
        bob.send("part", {"room": "#dev", "comment": "bye"})
        self.assertEqual(bob.one()["content"], "Left #dev")
        self.assertEqual(alice.lines()[0].params, ["#dev", "bye"])
        alice.send("TOPIC #dev :new topic")
        alice.lines()
        bob.send("join", "#dev")
        alice.lines()
        self.assertEqual(bob.received()[0]["topic"], "new topic")
        alice.send("PART #dev")
        presence = [r["content"] for r in bob.received() if r["response"] == "presence"]
        self.assertEqual(presence, [{"user": "alice", "status": "offline", "room": "#dev"}])

    def test_json_sees_irc_names_and_v1_sees_lobby_only(self) -> None:
        alice = self.client("alice")
        bob = json_client(self.chat_factory, "bob")
        alice.lines()
        bob.send("names")
        self.assertEqual(bob.one()["content"], "alice, bob")
        alice.send("PART #lobby")
        bob.received()
        bob.send("names")
        self.assertEqual(bob.one()["content"], "bob")  # alice is online, not in #lobby
        bob.send("msg", "only lobby")
        self.assertEqual([line.command for line in alice.lines()], ["PART"])

    def test_errors_of_privmsg(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send("PRIVMSG nobody :x", "PRIVMSG #nope :x", "PRIVMSG", "PRIVMSG alice", "PRIVMSG #lobby :\x02\x03")
        self.assertEqual(alice.commands(), ["401", "403", "411", "412", "412"])
        alice.send("PRIVMSG a,b,c,d,e :x")
        self.assertEqual(alice.commands()[-1], "407")
        alice.send("NOTICE nobody :x", "NOTICE #nope :x", "NOTICE", "NOTICE a")
        self.assertEqual(alice.lines(), [])
        bob = self.client("bob")
        bob.send("JOIN #closed")
        alice.lines()
        alice.send("PRIVMSG #closed :let me in")
        self.assertEqual(alice.commands(), ["404"])

    def test_echo_message_and_tags(self) -> None:
        alice = self.client("alice", caps="echo-message message-tags")
        bob = self.client("bob", caps="message-tags")
        carol = self.client("carol")
        dave = self.client("dave", caps="server-time")
        for client in (alice, bob, carol, dave):
            client.lines()
        alice.send("@+react=wave;cat=dog;label=x PRIVMSG #lobby :hi all")
        echo = alice.lines()
        self.assertEqual(len(echo), 1)
        self.assertEqual(echo[0].tags["+react"], "wave")
        self.assertNotIn("cat", echo[0].tags)
        received = bob.lines()[0]
        self.assertEqual(received.tags["msgid"], "#lobby:1")
        self.assertEqual(received.tags["msgid"], echo[0].tags["msgid"])
        self.assertEqual(received.tags["+react"], "wave")
        self.assertNotIn("label", received.tags)
        self.assertEqual(carol.raw()[:1], b":")  # no tags at all
        dave_line = dave.lines()[0]
        self.assertEqual(list(dave_line.tags), ["time"])
        # without echo-message nothing comes back
        bob.send("PRIVMSG #lobby :quiet")
        self.assertEqual(bob.lines(), [])
        for client in (alice, carol, dave):
            client.lines()
        # TAGMSG reaches message-tags clients only, never the store
        alice.send(r"@+typing=active\sy TAGMSG #lobby")
        tagmsg = bob.lines()[0]
        self.assertEqual((tagmsg.command, tagmsg.tags["+typing"]), ("TAGMSG", "active y"))
        self.assertTrue(tagmsg.tags["msgid"].startswith("#lobby:t"))
        self.assertEqual(alice.lines()[0].tags["msgid"], tagmsg.tags["msgid"])
        self.assertEqual(carol.lines(), [])
        self.assertEqual(dave.lines(), [])
        stored = self.chat_factory.hub.history.store.recent("#lobby", None)  # type: ignore[attr-defined]
        self.assertEqual([m.text for m in stored], ["hi all", "quiet"])

    def test_ctcp_goes_to_irc_only(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob", caps="message-tags")
        json = json_client(self.chat_factory, "carol")
        alice.lines()
        bob.lines()
        json.received()
        alice.send("PRIVMSG #lobby :\x01ACTION waves\x01", "PRIVMSG bob :\x01VERSION\x01")
        action, version = bob.lines()
        self.assertEqual(action.params, ["#lobby", "\x01ACTION waves\x01"])
        self.assertEqual(version.params, ["bob", "\x01VERSION\x01"])
        self.assertTrue(version.tags["msgid"].startswith("dm:alice:bob:t"))
        self.assertEqual(json.received(), [])

    def test_json_multiline_and_long_messages_become_several_lines(self) -> None:
        alice = self.client("alice", caps="message-tags")
        json = json_client(self.chat_factory, "bob")
        alice.lines()
        json.send("msg", "one\n\ntwo\n" + "é" * 400)
        lines = alice.lines()
        self.assertEqual([line.params[1] for line in lines[:2]], ["one", "two"])
        self.assertEqual([line.tags["msgid"] for line in lines], ["#lobby:1", "#lobby:1/2", "#lobby:1/3", "#lobby:1/4"])
        self.assertEqual("".join(line.params[1] for line in lines[2:]), "é" * 400)
        self.assertTrue(len({line.tags["time"] for line in lines}) == 1)

    def test_relayed_line_over_512_is_417(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.lines()
        bob.lines()
        text = "x" * (512 - len(":alice!~user@irc PRIVMSG bob :\r\n"))
        alice.send(f"PRIVMSG bob :{text}")
        self.assertEqual(bob.lines()[0].params[1], text)
        alice.send(f"PRIVMSG bob :{text}y")
        self.assertEqual(alice.commands(), ["417"])
        self.assertEqual(bob.lines(), [])

    def test_messages_to_self(self) -> None:
        alice = self.client("alice", caps="echo-message labeled-response batch")
        alice.lines()
        alice.send("@label=me PRIVMSG alice :note to self")
        lines = alice.lines()
        self.assertEqual([line.params for line in lines], [["alice", "note to self"]] * 2)
        self.assertEqual(sorted(line.tags.get("label", "") for line in lines), ["", "me"])
        plain = self.client("bob")
        plain.lines()
        plain.send("PRIVMSG bob :again")
        self.assertEqual(len(plain.lines()), 1)

    def test_notice_is_marked_on_its_draft(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.lines()
        bob.lines()
        posted: list[Any] = []
        original = self.chat_factory.hub.bus.publish
        self.chat_factory.hub.bus.publish = lambda draft: (posted.append(draft), original(draft))[1]  # type: ignore[method-assign]
        alice.send("NOTICE #lobby :heads up")
        self.assertTrue(posted[0].notice)
        line = bob.lines()[0]
        self.assertEqual((line.command, line.params), ("NOTICE", ["#lobby", "heads up"]))

    def test_nick_change(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        carol = json_client(self.chat_factory, "carol")
        alice.send("JOIN #n")
        bob.send("JOIN #n")
        alice.lines()
        bob.lines()
        carol.received()
        alice.send("NICK alicia")
        mine = alice.lines()[0]
        self.assertEqual((mine.prefix, mine.command, mine.params), ("alice!~user@irc", "NICK", ["alicia"]))
        theirs = bob.lines()
        self.assertEqual(len(theirs), 1)  # one NICK line, #lobby and #n shared
        self.assertEqual((theirs[0].prefix, theirs[0].params), ("alice!~user@irc", ["alicia"]))
        presence = [r["content"] for r in carol.received()]
        self.assertEqual(
            presence,
            [{"user": "alice", "status": "offline", "room": "#lobby"}, {"user": "alicia", "status": "online", "room": "#lobby"}],
        )
        self.assertIs(self.chat_factory.hub.session_named("alicia"), alice.protocol)
        bob.send("NICK alicia", "NICK carol", "NICK Bob", "NICK Bob")
        lines = bob.lines()
        self.assertEqual([line.command for line in lines], ["433", "433", "NICK"])  # the same nick again: nothing
        self.assertEqual((lines[2].prefix, lines[2].params), ("bob!~user@irc", ["Bob"]))
        alice.send("PRIVMSG #n :renamed")
        self.assertEqual(bob.lines()[0].prefix, "alicia!~user@irc")


class LimitTests(IRCTestCase):
    def test_long_line_is_417_and_never_buffered_past_the_limit(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send_raw(b"PRIVMSG #lobby :" + b"x" * 600)
        self.assertEqual(alice.commands(), ["417"])
        self.assertLessEqual(alice.protocol.splitter.buffered, 0)
        for _ in range(100):
            alice.send_raw(b"y" * 10000)  # the rest of that line: dropped as it comes
        self.assertEqual(alice.protocol.splitter.buffered, 0)
        alice.send_raw(b"\r\nPING ok\r\n")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["PONG"])
        self.assertFalse(alice.closed)

    def test_line_limits_of_tags_and_rest(self) -> None:
        alice = self.client("alice", caps="message-tags echo-message")
        alice.lines()
        tags = "@+a=" + "a" * (4096 - 5)  # with the space after it: 4096
        alice.send(tags + " TAGMSG #lobby")
        self.assertEqual(alice.lines()[0].command, "TAGMSG")
        alice.send("@+a=" + "a" * (4096 - 4) + " TAGMSG #lobby")
        self.assertEqual(alice.commands(), ["417"])
        alice.send("PING " + "p" * 505)  # 510 bytes and CR LF
        self.assertEqual(alice.commands(), ["PONG"])
        alice.send("PING " + "p" * 506)
        self.assertEqual(alice.commands(), ["417"])

    def test_invalid_utf8_is_replaced(self) -> None:
        alice = self.client("alice")
        bob = json_client(self.chat_factory, "bob")
        alice.lines()
        bob.received()
        alice.send_raw(b"PRIVMSG #lobby :caf\xe9 \xff!\r\n")
        self.assertEqual([r["content"] for r in bob.received()], ["caf\ufffd \ufffd!"])
        self.assertFalse(alice.closed)

    def test_malformed_lines_and_unknown_commands(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send(":prefixonly", "@tags=only", "@;;=;x= :pre", "B@D x", "FOOBAR x", "123 x", "@bad$tag=1;+ok=2 PING t")
        lines = alice.lines()
        self.assertEqual([line.command for line in lines], ["421", "421", "421", "421", "421", "421", "PONG"])
        self.assertEqual(lines[4].params[1], "FOOBAR")
        self.assertFalse(alice.closed)

    def test_empty_lines_and_bare_lf(self) -> None:
        alice = self.client("alice")
        alice.lines()
        alice.send_raw(b"\r\n\n   \r\nPING a\nPING b\r\n")
        self.assertEqual([line.params[1] for line in alice.lines()], ["a", "b"])

    def test_rate_limit_is_fail_and_flood_closes(self) -> None:
        chat, irc = make_irc(msg_rate=1.0, msg_burst=2)
        alice = IRCClient(irc)
        alice.register("alice")
        alice.lines()
        alice.send("PRIVMSG #lobby :1", "PRIVMSG #lobby :2", "PRIVMSG #lobby :3")
        fail = alice.lines()[0]
        self.assertEqual(fail.command, "FAIL")
        self.assertEqual(fail.params[:2], ["PRIVMSG", "RATE_LIMITED"])
        self.assertFalse(alice.closed)
        for index in range(10):
            alice.send(f"PRIVMSG #lobby :{index}")
        lines = alice.lines()
        self.assertEqual((lines[-1].command, lines[-1].params), ("ERROR", ["Flooding"]))
        self.assertTrue(alice.closed)

    def test_churn_rate_limit_on_join(self) -> None:
        chat, irc = make_irc(msg_rate=1.0, msg_burst=2)
        alice = IRCClient(irc)
        alice.register("alice")  # autojoin took one token
        alice.lines()
        alice.send("JOIN #a,#b")
        lines = alice.lines()
        self.assertEqual(lines[-1].command, "FAIL")
        self.assertEqual(lines[-1].params[:2], ["JOIN", "RATE_LIMITED"])

    def test_a_failing_answer_is_fail_and_the_connection_goes_on(self) -> None:
        from twisted.internet.defer import fail

        alice = self.client("alice")
        alice.lines()
        self.chat_factory.hub.room_list = lambda session: fail(RuntimeError("a store that broke"))  # type: ignore[method-assign]
        alice.send("LIST", "PING still")
        lines = alice.lines()
        self.assertEqual([(line.command, line.params[:2]) for line in lines], [("FAIL", ["LIST", "INTERNAL_ERROR"]), ("PONG", [SERVER, "still"])])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_everyone_else_goes_on(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        alice.lines()
        bob.lines()
        bob.send_raw(b"\xff" * 5000 + b"\r\n:x\r\n@@@\r\nNICK\r\n")
        alice.send("PRIVMSG bob :still there?")
        self.assertEqual(bob.lines()[-1].params, ["bob", "still there?"])

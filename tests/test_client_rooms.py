"""The terminal client's rooms and direct messages (PROTOCOL.md section 6).

The session is driven against a scripted server (the test plays the
server, as tests/test_client.py's hostile-server tests do): what the
client sends for each command, what it prints for each response, and
how it joins its rooms again and resumes each one after a reconnect.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chatd.client import client as chatd_client
from chatd.client.client import JOIN_REF, LOGIN_REF, PART_REF, REJOIN_REF, RESUME_REF
from chatd.client.parser import HELP, LOBBY

from tests.e2e import DEADLINE, ServerProcess
from tests.support import make_factory
from tests.test_client import Harness, HostileServer, chat


def in_room(message_id: int, room: str, content: str = "x", sender: str = "bob") -> dict[str, Any]:
    """A ``message`` of ``room`` as a server sends it."""
    return dict(chat(message_id, content), room=room, sender=sender)


def dm(message_id: int, sender: str, to: str, content: str = "x") -> dict[str, Any]:
    """A direct message as a server sends it."""
    return dict(chat(message_id, content), sender=sender, to=to)


def joined(room: str, members: list[str], topic: str = "", ref: Any = None) -> dict[str, Any]:
    """The ``info`` answering a ``join``."""
    info: dict[str, Any] = {
        "response": "info", "content": f"Joined {room}", "room": room, "topic": topic,
        "members": members, "ops": members[:1], "voiced": [], "modes": {},
    }
    if ref is not None:
        info["ref"] = ref
    return info


def history(messages: list[dict[str, Any]], room: str | None = None, ref: Any = None, more: bool | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"response": "history", "content": messages}
    for key, value in (("room", room), ("ref", ref), ("more", more)):
        if value is not None:
            response[key] = value
    return response


class Scripted(SynchronousTestCase):
    """A session logged in as alice against a scripted v2 server."""

    def setUp(self) -> None:
        self.server = HostileServer(name="alice")
        self.server.hello()
        self.server.send({"response": "info", "content": "Login successful. You are now logged in as alice"}, history([]))
        self.server.requests()
        self.server.lines()
        self.session = self.server.session

    def type(self, *lines: str) -> list[dict[str, Any]]:
        """Type lines; the requests they sent."""
        for line in lines:
            self.session.user_line(line)
        return self.server.requests()

    def join(self, room: str, members: list[str] | None = None, canonical: str | None = None) -> None:
        """/join ``room`` and the server's answer (no history)."""
        [request] = self.type(f"/join {room}")
        spelled = canonical or room
        self.server.send(joined(spelled, members or ["alice"], ref=request["ref"]), history([], room=spelled, ref=request["ref"]))
        self.server.lines()

    def texts(self) -> list[str]:
        """The lines printed since the last call, timestamps cut off."""
        return [line.split("] ", 1)[1] if line.startswith("[") else line for line in self.server.lines()]


class CommandTests(Scripted):
    """What each command sends."""

    def test_join_switches_plain_lines_to_the_room(self) -> None:
        [join] = self.type("/join #dev")
        self.assertEqual(join, {"request": "join", "content": "#dev", "ref": JOIN_REF + "#dev"})
        self.assertEqual(self.session.target, "#dev")
        # Typed before the answer: it goes to the room (the server answers in order).
        [msg] = self.type("first")
        self.assertEqual(msg, {"request": "msg", "content": "first", "room": "#dev"})
        self.server.send(
            joined("#Dev", ["alice", "bob"], topic="Release 0.5", ref=join["ref"]),
            history([in_room(41, "#Dev", "Tagging at noon")], room="#Dev", ref=join["ref"]),
        )
        self.assertEqual(self.texts(), ["* Joined #Dev", "* Topic: Release 0.5", "* Members: @alice, bob", "bob: Tagging at noon"])
        self.assertEqual(self.session.rooms, {"#dev": "#Dev"})
        self.assertEqual(self.session.target, "#Dev")  # the canonical spelling
        self.assertEqual(self.type("second"), [{"request": "msg", "content": "second", "room": "#Dev"}])

    def test_refused_join_goes_back(self) -> None:
        self.join("#dev")
        self.type("/switch bob")
        self.server.lines()
        [join] = self.type("/join #full")
        self.assertEqual(self.session.target, "#full")
        self.server.send({"response": "error", "content": "You are in 50 rooms already.", "code": "forbidden", "ref": join["ref"]})
        self.assertEqual(self.texts(), ["! You are in 50 rooms already.", "- now talking to bob (direct messages)"])
        self.assertEqual(self.session.target, "bob")
        self.assertEqual(self.session.rooms, {"#dev": "#dev"})

    def test_refused_join_of_a_room_joined_keeps_it(self) -> None:
        self.join("#dev")
        [join] = self.type("/join #dev")
        self.server.send({"response": "error", "content": "Slow down.", "code": "rate_limited", "ref": join["ref"]})
        self.assertEqual(self.texts(), ["! Slow down."])
        self.assertEqual((self.session.target, self.session.rooms), ("#dev", {"#dev": "#dev"}))

    def test_switch_and_msg(self) -> None:
        self.join("#dev")
        self.server.lines()
        self.assertEqual(self.type("/switch bob", "hi bob"), [{"request": "msg", "content": "hi bob", "to": "bob"}])
        self.assertEqual(self.type("/switch #lobby", "hi all"), [{"request": "msg", "content": "hi all"}])
        self.assertEqual(self.type("/switch #DEV", "hi devs"), [{"request": "msg", "content": "hi devs", "room": "#dev"}])
        self.assertEqual(self.type("/msg carol psst", "/msg #lobby all", "/msg #Dev d"), [
            {"request": "msg", "content": "psst", "to": "carol"},
            {"request": "msg", "content": "all"},
            {"request": "msg", "content": "d", "room": "#dev"},
        ])
        self.assertEqual(self.session.target, "#dev")  # /msg does not switch
        self.assertEqual(self.texts(), ["- now talking to bob (direct messages)", "- now talking in #lobby", "- now talking in #dev"])
        self.type("/switch #elsewhere", "/switch")
        self.assertEqual(self.texts(), ["- now talking in #elsewhere (not joined: /join #elsewhere)"] * 2)

    def test_part(self) -> None:
        self.join("#dev")
        self.join("#ops")
        self.server.lines()
        [part] = self.type("/part")  # the current room
        self.assertEqual(part, {"request": "part", "content": "#ops", "ref": PART_REF + "#ops"})
        self.assertEqual(self.session.target, LOBBY)
        self.server.send({"response": "info", "content": "Left #ops", "room": "#ops", "ref": part["ref"]})
        self.assertEqual(self.session.rooms, {"#dev": "#dev"})
        self.assertEqual(self.type("/part #dev"), [{"request": "part", "content": "#dev", "ref": PART_REF + "#dev"}])
        self.assertEqual(self.texts(), ["* Left #ops"])
        self.type("/switch bob")
        self.server.lines()
        self.assertEqual(self.type("/part"), [])
        self.assertEqual(self.texts(), ["! /part: you are talking to bob, not in a room (/switch #ROOM first)."])

    def test_part_then_join_again_quickly_stays_in_the_room(self) -> None:
        self.join("#dev")
        self.type("/part", "/join #dev")
        self.server.send({"response": "info", "content": "Left #dev", "room": "#dev", "ref": PART_REF + "#dev"})
        self.assertEqual(self.session.target, "#dev")  # the /join typed after it still holds

    def test_topic_names_rooms(self) -> None:
        self.assertEqual(self.type("/names", "/rooms", "/topic"), [
            {"request": "names", "content": None},
            {"request": "rooms", "content": None},
            {"request": "topic", "content": {"room": "#lobby"}},
        ])
        self.join("#dev")
        self.assertEqual(self.type("/names", "/names #ops", "/topic", "/topic Release 0.5"), [
            {"request": "names", "content": {"room": "#dev"}},
            {"request": "names", "content": {"room": "#ops"}},
            {"request": "topic", "content": {"room": "#dev"}},
            {"request": "topic", "content": {"room": "#dev", "topic": "Release 0.5"}},
        ])
        self.server.lines()
        self.type("/switch bob")
        self.assertEqual(self.type("/topic x", "/names"), [{"request": "names", "content": None}])
        self.assertIn("! /topic: you are talking to bob, not in a room (/switch #ROOM first).", self.texts())

    def test_help_is_local_and_lists_every_command(self) -> None:
        self.assertEqual(self.type("/help"), [])
        printed = self.server.lines()
        self.assertEqual(len(printed), len(HELP))
        for (command, meaning), line in zip(HELP, printed):
            self.assertTrue(line.startswith(f"* {command} "), line)
            self.assertTrue(line.endswith(meaning), line)

    def test_kicked_or_logged_out_leaves_the_rooms(self) -> None:
        self.join("#dev")
        self.join("#ops")
        self.server.send({"response": "info", "content": "You were kicked from #ops by bob: spam", "room": "#ops", "by": "bob", "comment": "spam"})
        self.assertEqual((self.session.target, list(self.session.rooms)), (LOBBY, ["#dev"]))
        self.type("/switch #dev", "/logout")
        self.server.send({"response": "info", "content": "Logout successful"})
        self.assertEqual((self.session.target, self.session.rooms, self.session.name), (LOBBY, {}, None))


class DisplayTests(Scripted):
    """Messages of the current target print plainly; others say where they belong."""

    def test_rooms_and_dms_labelled(self) -> None:
        self.join("#dev")
        self.server.lines()
        self.server.send(in_room(1, "#dev", "in dev"), chat(1, "in lobby"), dm(1, "bob", "alice", "psst"), dm(2, "alice", "bob", "yes?"))
        self.assertEqual(self.texts(), ["bob: in dev", "[#lobby] bob: in lobby", "bob -> alice: psst", "alice -> bob: yes?"])
        self.type("/switch bob")
        self.server.lines()
        self.server.send(dm(3, "bob", "alice", "lunch"), dm(4, "alice", "bob", "sure"), in_room(2, "#dev", "d"), dm(1, "carol", "alice", "c"))
        self.assertEqual(self.texts(), ["bob: lunch", "alice: sure", "[#dev] bob: d", "carol -> alice: c"])

    def test_ids_are_per_room(self) -> None:
        self.join("#dev")
        self.server.lines()
        self.server.send(in_room(5, "#dev", "d5"), chat(3, "l3"), dm(2, "bob", "alice", "b2"), dm(2, "carol", "alice", "c2"))
        self.server.send(in_room(5, "#DEV", "d5 again"), chat(3, "l3 again"), dm(2, "bob", "alice", "again"), dm(1, "alice", "carol", "old"))
        self.server.send(in_room(6, "#dev", "d6"), chat(4, "l4"))
        self.assertEqual(self.texts(), ["bob: d5", "[#lobby] bob: l3", "bob -> alice: b2", "carol -> alice: c2", "bob: d6", "[#lobby] bob: l4"])
        self.assertEqual(self.session.last_ids, {"#dev": 6, LOBBY: 4, "@bob": 2, "@carol": 2})

    def test_presence_and_topic(self) -> None:
        self.join("#dev")
        self.server.lines()
        self.server.send(
            {"response": "presence", "content": {"user": "bob", "status": "online", "room": "#dev"}},
            {"response": "topic", "content": {"room": "#dev", "topic": "Ship it", "by": "bob"}},
            {"response": "presence", "content": {"user": "bob", "status": "offline", "room": "#dev"}},
            {"response": "presence", "content": {"user": "bob", "status": "offline", "room": "#lobby"}},
        )
        self.assertEqual(self.texts(), ["- bob joined #dev", "- bob set the topic of #dev: Ship it", "- bob left #dev", "- bob is offline"])

    def test_conversations_remembered_are_bounded(self) -> None:
        self.patch(chatd_client, "MAX_CONVERSATIONS", 5)
        self.join("#dev")
        self.server.send(chat(1), in_room(1, "#dev"))
        for number in range(100):
            self.server.send(in_room(1, f"#r{number}"))
        self.assertEqual(len(self.session.last_ids), 5)
        self.assertEqual(list(self.session.last_ids)[:2], [LOBBY, "#dev"])  # kept
        self.assertIn("#r99", self.session.last_ids)


class RoomResumeTests(Scripted):
    """After a reconnect: log in, join the rooms again, one history after per conversation."""

    def setUp(self) -> None:
        super().setUp()
        self.join("#dev", canonical="#Dev")
        self.join("#ops")
        self.type("/switch #dev")
        self.server.send(chat(7, "lobby7"), in_room(20, "#Dev", "dev20"), in_room(3, "#ops", "ops3"))
        self.server.lines()

    def reconnect(self) -> None:
        """The connection is lost; the client comes back 1 s later; its
        hello is answered (then it asks for the rest)."""
        self.server.protocol.connectionLost(Failure(error.ConnectionLost()))
        self.server.clock.advance(1.0)
        self.assertEqual(self.server.lines(), [
            "! connection to the server lost", "- reconnecting in 1 s (attempt 1 of 8)", "- reconnected to the server",
        ])
        self.server.hello()

    def test_rejoins_then_pages_each_room_in_turn(self) -> None:
        server = self.server
        self.reconnect()
        self.assertEqual(server.requests(), [
            {"request": "hello", "content": {"protocol": 2, "client": f"chatd-client/{chatd_client.__version__}"}},
            {"request": "login", "content": "alice", "ref": LOGIN_REF},
            {"request": "join", "content": "#Dev", "ref": REJOIN_REF + "#Dev"},
            {"request": "join", "content": "#ops", "ref": REJOIN_REF + "#ops"},
            {"request": "history", "content": {"after": 7, "limit": 500}, "ref": RESUME_REF},
        ])
        server.send(
            {"response": "info", "content": "Login successful. You are now logged in as alice"},
            history([chat(7, "lobby7"), chat(8, "lobby8 in login history")]),
            joined("#Dev", ["bob", "alice"], ref=REJOIN_REF + "#Dev"),
            history([in_room(20, "#Dev", "dev20"), in_room(21, "#Dev", "dev21 in join history")], room="#Dev", ref=REJOIN_REF + "#Dev"),
            in_room(23, "#Dev", "dev23 live"),  # held until the resume is done
            joined("#ops", ["alice"], ref=REJOIN_REF + "#ops"),
            history([in_room(3, "#ops", "ops3")], room="#ops", ref=REJOIN_REF + "#ops"),
            history([chat(8, "lobby8")], ref=RESUME_REF),
        )
        self.assertEqual(server.requests(), [{"request": "history", "content": {"after": 20, "limit": 500, "room": "#Dev"}, "ref": RESUME_REF}])
        server.send(history([in_room(21, "#Dev", "dev21"), in_room(22, "#Dev", "dev22")], room="#Dev", ref=RESUME_REF, more=True))
        self.assertEqual(server.requests(), [{"request": "history", "content": {"after": 22, "limit": 500, "room": "#Dev"}, "ref": RESUME_REF}])
        server.send(history([in_room(23, "#Dev", "dev23 live")], room="#Dev", ref=RESUME_REF, more=False))
        self.assertEqual(server.requests(), [{"request": "history", "content": {"after": 3, "limit": 500, "room": "#ops"}, "ref": RESUME_REF}])
        self.assertTrue(self.session._resuming)
        server.send(history([in_room(4, "#ops", "ops4")], room="#ops", ref=RESUME_REF, more=False))
        self.assertFalse(self.session._resuming)
        self.assertEqual(self.texts(), [
            "* Login successful. You are now logged in as alice",
            "* Joined #Dev", "* Members: @bob, alice",
            "* Joined #ops", "* Members: @alice",
            "[#lobby] bob: lobby8",
            "bob: dev21", "bob: dev22", "bob: dev23 live",
            "[#ops] bob: ops4",
        ])
        server.send(in_room(23, "#Dev", "dev23 again"), in_room(24, "#Dev", "dev24"))
        self.assertEqual(self.texts(), ["bob: dev24"])
        self.assertEqual(self.session.target, "#Dev")

    def test_refused_rejoin_drops_the_room(self) -> None:
        server = self.server
        self.reconnect()
        server.requests()
        server.send(
            {"response": "info", "content": "Login successful. You are now logged in as alice"},
            history([]),
            {"response": "error", "content": "You are banned from #Dev.", "code": "banned", "ref": REJOIN_REF + "#Dev"},
            joined("#ops", ["alice"], ref=REJOIN_REF + "#ops"),
            history([], room="#ops", ref=REJOIN_REF + "#ops"),
            history([], ref=RESUME_REF),
        )
        # #Dev is skipped: straight to #ops.
        self.assertEqual(server.requests(), [{"request": "history", "content": {"after": 3, "limit": 500, "room": "#ops"}, "ref": RESUME_REF}])
        server.send(history([], room="#ops", ref=RESUME_REF))
        self.assertEqual(self.texts(), [
            "* Login successful. You are now logged in as alice",
            "! You are banned from #Dev.",
            "- now talking in #lobby",
            "* Joined #ops", "* Members: @alice",
        ])
        self.assertEqual((self.session.rooms, self.session.target, self.session._resuming), ({"#ops": "#ops"}, LOBBY, False))

    def test_room_page_refused_goes_on_to_the_next(self) -> None:
        server = self.server
        self.reconnect()
        server.requests()
        server.send(history([], ref=RESUME_REF))
        server.send({"response": "error", "content": "Slow down.", "code": "rate_limited", "ref": RESUME_REF})
        self.assertEqual(server.requests(), [
            {"request": "history", "content": {"after": 20, "limit": 500, "room": "#Dev"}, "ref": RESUME_REF},
            {"request": "history", "content": {"after": 3, "limit": 500, "room": "#ops"}, "ref": RESUME_REF},
        ])
        server.send(history([], room="#ops", ref=RESUME_REF))
        self.assertEqual(self.texts()[-2:], ["! Slow down.", "- history of #Dev incomplete: the server did not send it"])
        self.assertFalse(self.session._resuming)

    def test_pages_bounded_per_room(self) -> None:
        server = self.server
        self.reconnect()
        server.requests()
        server.send(history([], ref=RESUME_REF))
        pages = 0
        for next_id in range(21, 200):
            requests = server.requests()
            if not requests or requests[0]["content"].get("room") != "#Dev":
                break
            pages += 1
            server.send(history([in_room(next_id, "#Dev")], room="#Dev", ref=RESUME_REF, more=True))
        self.assertEqual(pages, chatd_client.MAX_RESUME_PAGES)
        self.assertIn(f"- history of #Dev incomplete: stopped after {pages} pages", self.texts())
        self.assertEqual(requests, [{"request": "history", "content": {"after": 3, "limit": 500, "room": "#ops"}, "ref": RESUME_REF}])

    def test_failed_login_forgets_the_rooms_quietly(self) -> None:
        server = self.server
        self.reconnect()
        server.requests()
        server.send(
            {"response": "error", "content": "Username 'alice' is taken.", "code": "name_taken"},
            {"response": "error", "content": "You are not logged in. Log in first.", "code": "not_logged_in", "ref": REJOIN_REF + "#Dev"},
            {"response": "error", "content": "You are not logged in. Log in first.", "code": "not_logged_in", "ref": REJOIN_REF + "#ops"},
            {"response": "error", "content": "You are not logged in. Log in first.", "code": "not_logged_in", "ref": RESUME_REF},
        )
        self.assertEqual(self.texts(), ["! Username 'alice' is taken."])
        self.assertEqual((self.session.name, self.session.rooms, self.session.target, self.session._resuming), (None, {}, LOBBY, False))
        self.assertEqual(server.requests(), [])

    def test_room_without_messages_keeps_its_join_history(self) -> None:
        server = self.server
        self.join("#new")  # no message seen there: nothing to page
        self.reconnect()
        self.assertEqual([r["content"] for r in server.requests() if r["request"] == "join"], ["#Dev", "#ops", "#new"])
        server.send(
            {"response": "info", "content": "Login successful. You are now logged in as alice"},
            history([]),
            joined("#new", ["alice"], ref=REJOIN_REF + "#new"),
            history([in_room(1, "#new", "new1")], room="#new", ref=REJOIN_REF + "#new"),
        )
        self.assertEqual(self.texts()[-1], "bob: new1")  # /join made #new the target


class V1ServerTests(SynchronousTestCase):
    """A protocol 1 server has no rooms: the room commands are refused here."""

    def test_room_commands_refused_locally(self) -> None:
        server = HostileServer(name="alice")
        server.send({"response": "error", "content": "Unknown request hello.", "code": "unknown_request"})
        server.requests()
        server.lines()
        for line in ("/join #dev", "/msg bob hi", "/rooms", "/topic", "/names #dev"):
            server.session.user_line(line)
        self.assertEqual(server.lines(), ["! This server speaks protocol 1 only: no rooms and no direct messages."] * 5)
        server.session.user_line("/names")
        server.session.user_line("/msg #lobby hi")
        self.assertEqual(server.requests(), [{"request": "names", "content": None}, {"request": "msg", "content": "hi"}])


# -- against the real server, in memory --------------------------------------


def chat_texts(lines: list[str]) -> list[str]:
    """Printed lines with each message's ``[HH:MM:SS] `` cut off (checked)."""
    shown = []
    for line in lines:
        match = re.match(r"\[\d\d:\d\d:\d\d\] ", line)
        shown.append(line[match.end():] if match else line)
    return shown


class RealServerTests(SynchronousTestCase):
    """Two terminal clients and the server's JSON protocol, over iosim."""

    def setUp(self) -> None:
        self.factory = make_factory(history_on_login=5)
        self.clock = self.factory.clock
        self.alice = Harness(self.factory, name="alice")
        self.alice.pump()
        self.bob = Harness(self.factory, name="bob")
        self.bob.pump()
        self.alice.pump()
        self.assertEqual(self.alice.lines(), ["* Login successful. You are now logged in as alice", "- bob is online"])
        self.assertEqual(self.bob.lines(), ["* Login successful. You are now logged in as bob"])

    def test_join_switch_dm_part(self) -> None:
        alice, bob = self.alice, self.bob
        alice.type("/join #Dev", "/topic Release 0.5", "hello dev")
        bob.type("/join #dev")
        alice.pump()
        self.assertEqual(chat_texts(alice.lines()), [
            "* Joined #Dev", "* Members: @alice",
            "* Topic of #Dev set", "- alice set the topic of #Dev: Release 0.5",
            "alice: hello dev",
            "- bob joined #Dev",
        ])
        self.assertEqual(chat_texts(bob.lines()), ["* Joined #Dev", "* Topic: Release 0.5", "* Members: @alice, bob", "alice: hello dev"])
        bob.type("/switch #lobby", "/msg alice psst")
        alice.type("in dev")
        alice.type("/switch bob", "hi bob", "/rooms")
        bob.pump()
        self.assertEqual(chat_texts(bob.lines()), [
            "- now talking in #lobby", "bob -> alice: psst", "[#Dev] alice: in dev", "alice -> bob: hi bob",
        ])
        self.assertEqual(chat_texts(alice.lines()), [
            "bob -> alice: psst", "alice: in dev", "- now talking to bob (direct messages)", "alice: hi bob", "* #Dev (2), #lobby (2)",
        ])
        bob.type("/part #dev", "back in the lobby", "/names")
        alice.pump()  # what bob's lines caused, before alice types
        alice.type("/switch #dev", "/names")
        self.assertEqual(chat_texts(bob.lines()), ["* Left #Dev", "bob: back in the lobby", "* alice, bob"])
        self.assertEqual(chat_texts(alice.lines()), [
            "- bob left #Dev", "[#lobby] bob: back in the lobby", "- now talking in #Dev", "* alice",
        ])
        self.assertEqual(bob.session.rooms, {})
        self.assertEqual(alice.session.rooms, {"#dev": "#Dev"})

    def test_resume_per_room_after_a_reconnect(self) -> None:
        alice, bob = self.alice, self.bob
        alice.type("/join #dev", "/join #ops", "/switch #dev")
        bob.type("/join #dev", "/switch #lobby", "lobby 1", "/switch #dev", "dev 1")
        alice.pump()
        alice.lines()
        bob.lines()
        alice.drop()
        # While alice is away: more than the login's and the join's
        # history (5 each) in each room.
        for number in range(2, 10):
            bob.type("/switch #lobby", f"lobby {number}", "/switch #dev", f"dev {number}")
        self.clock.advance(1.0)  # alice reconnects, logs in, joins again, pages
        alice.pump()
        bob.type("/switch #lobby", "lobby live", "/switch #dev", "dev live")
        alice.pump()
        self.assertEqual(chat_texts(alice.lines()), [
            "! connection to the server lost",
            "- reconnecting in 1 s (attempt 1 of 8)",
            "- reconnected to the server",
            "* Login successful. You are now logged in as alice",
            # In the rooms again (no op was left in #dev: alice is again).
            "* Joined #dev", "* Members: bob, @alice",
            "* Joined #ops", "* Members: @alice",
            # Exactly what was missed, room by room, then the live messages.
            *[f"[#lobby] bob: lobby {number}" for number in range(2, 10)],
            *[f"bob: dev {number}" for number in range(2, 10)],
            "[#lobby] bob: lobby live",
            "bob: dev live",
        ])
        self.assertEqual(alice.session.rooms, {"#dev": "#dev", "#ops": "#ops"})
        self.assertEqual(alice.session.target, "#dev")
        self.assertEqual(alice.session.last_ids, {"#lobby": 10, "#dev": 10})


# -- end to end: the real server, two clients over pipes ----------------------


class PipedClient:
    """``python -m chatd.client --name NAME`` (``name`` None: without
    ``--name``) and ``args``, with standard input and output as pipes:
    lines typed in, lines printed read back (by a thread, so that every
    wait has a deadline).  ``label`` names its stderr file."""

    def __init__(self, port: int, name: str | None, workdir: str, *args: str, label: str | None = None) -> None:
        label = label or name or "client"
        self.stderr_path = os.path.join(workdir, f"{label}.{len(os.listdir(workdir))}.stderr")
        named = ["--name", name] if name is not None else []
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatd.client", "--port", str(port), *named, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=dict(os.environ, NO_COLOR="1"),
            )
        self.printed: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.printed.put(line.rstrip("\n"))
        self.printed.put(None)  # the client closed its output

    def type(self, *lines: str) -> None:
        assert self.process.stdin is not None
        for line in lines:
            self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def next_lines(self, count: int) -> list[str]:
        """The next ``count`` printed lines, a message's time shown as ``[T]``."""
        lines = []
        for _ in range(count):
            try:
                line = self.printed.get(timeout=DEADLINE)
            except queue.Empty:
                raise AssertionError(f"timed out; printed so far: {lines}") from None
            if line is None:
                raise AssertionError(f"the client exited; printed so far: {lines}")
            lines.append(re.sub(r"^\[\d\d:\d\d:\d\d\] ", "[T] ", line))
        return lines

    def finish(self) -> tuple[int, list[str], str]:
        """Close standard input; the exit status, the rest printed, stderr."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = self.process.wait(timeout=DEADLINE)
        rest = []
        while (line := self.printed.get(timeout=DEADLINE)) is not None:
            rest.append(line)
        with open(self.stderr_path) as stderr:
            return status, rest, stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # only this client, by its own handle
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class PipeEndToEndTests(SynchronousTestCase):
    """The issue's "terminal client test: join, switch, DM, part, over a pipe"."""

    def setUp(self) -> None:
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        self.server = ServerProcess(self.workdir).start()
        self.addCleanup(self.server.kill)

    def client(self, name: str) -> PipedClient:
        client = PipedClient(self.server.port, name, self.workdir)
        self.addCleanup(client.kill)
        self.assertEqual(client.next_lines(1), [f"* Login successful. You are now logged in as {name}"])
        return client

    def expect(self, client: PipedClient, *lines: str) -> None:
        self.assertEqual(client.next_lines(len(lines)), list(lines))

    def test_join_switch_dm_part(self) -> None:
        alice = self.client("alice")
        bob = self.client("bob")
        self.expect(alice, "- bob is online")

        alice.type("/join #Dev", "/topic Release 0.5")
        self.expect(alice, "* Joined #Dev", "* Members: @alice", "* Topic of #Dev set", "- alice set the topic of #Dev: Release 0.5")
        bob.type("/join #dev")
        self.expect(bob, "* Joined #Dev", "* Topic: Release 0.5", "* Members: @alice, bob")
        self.expect(alice, "- bob joined #Dev")

        # Both talk in #Dev: its messages show plainly.
        alice.type("hello dev")
        self.expect(alice, "[T] alice: hello dev")
        self.expect(bob, "[T] alice: hello dev")

        # bob switches to #lobby: #Dev's messages now show their room.
        bob.type("/switch #lobby")
        self.expect(bob, "- now talking in #lobby")
        alice.type("still in dev")
        self.expect(alice, "[T] alice: still in dev")
        self.expect(bob, "[T] [#Dev] alice: still in dev")

        # A DM, then plain lines to each other after /switch NAME.
        bob.type("/msg alice lunch?")
        self.expect(bob, "[T] bob -> alice: lunch?")
        self.expect(alice, "[T] bob -> alice: lunch?")
        alice.type("/switch bob", "sure")
        self.expect(alice, "- now talking to bob (direct messages)", "[T] alice: sure")
        self.expect(bob, "[T] alice -> bob: sure")
        bob.type("/switch alice", "see you")
        self.expect(bob, "- now talking to alice (direct messages)", "[T] bob: see you")
        self.expect(alice, "[T] bob: see you")

        # bob leaves #Dev; a lobby line shows its room to alice, in #Dev.
        bob.type("/part #dev")
        self.expect(bob, "* Left #Dev")
        self.expect(alice, "- bob left #Dev")
        bob.type("/switch #lobby", "/rooms", "back in the lobby")
        self.expect(bob, "- now talking in #lobby", "* #Dev (1), #lobby (2)", "[T] bob: back in the lobby")
        alice.type("/switch #dev", "/names")
        self.expect(alice, "[T] [#lobby] bob: back in the lobby", "- now talking in #Dev", "* alice")

        bob.type("/quit")
        self.expect(bob, "* Logout successful")
        self.assertEqual(bob.finish(), (0, [], ""))
        self.expect(alice, "- bob is offline")
        self.assertEqual(alice.finish(), (0, [], ""))

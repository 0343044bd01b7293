"""The terminal client's accounts and moderation (PROTOCOL.md sections 6.4
to 6.6): ``/register``, ``/login`` with a password (asked for with echo
off on a terminal, the next input line on a pipe, or ``--password-file``),
``/password``, ``/whoami``, logging in again with the password after a
reconnect, the moderation commands, their events, and the direct messages
that waited for the login.

Scripted-server tests play the server (as tests/test_client_rooms.py
does); the real hub answers through iosim in ``RealServerTests``; the end
of the file runs ``chatd-client`` against ``twistd chatd`` over pipes and
in a pseudo-terminal.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import termios
import time
from typing import Any

from twisted.internet import error, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chatd.client import client as chatd_client
from chatd.client.client import (
    HELLO_WAIT,
    LOGIN_REF,
    PASSWORD_REF,
    REJOIN_REF,
    RESUME_REF,
    ChatSession,
    Keyboard,
    Printer,
    Secret,
    read_password_file,
)
from chatd import __version__
from chatd.client.parser import COMMANDS, LOBBY, local_time

from tests.e2e import DEADLINE, LinesClient, ServerProcess
from tests.test_accounts_json import with_accounts
from tests.test_client import Harness, HostileServer, chat
from tests.test_client_rooms import PipedClient, dm, history, in_room, joined

PASSWORD = "correct horse"

ACCOUNT_FEATURES = ["ping", "history", "ref", "presence", "rooms", "dm", "topic", "moderation", "multisession", "accounts"]


class FakeKeyboard:
    """Stands for a terminal: notes when echo goes off and comes back."""

    def __init__(self, works: bool = True) -> None:
        self.works = works
        self.hidden = False
        self.events: list[str] = []

    def hide(self) -> bool:
        self.events.append("hide")
        self.hidden = self.works
        return self.works

    def restore(self) -> None:
        self.events.append("restore")
        self.hidden = False


class Server(HostileServer):
    """A scripted server (see HostileServer) whose session may have a
    terminal and a password file; ``hello`` says whether it has accounts."""

    def __init__(self, name: str | None = None, keyboard: FakeKeyboard | None = None, password_file: str | None = None) -> None:
        self.clock = task.Clock()
        self.out = io.StringIO()
        self.protocols = []
        secret = Secret(password_file) if password_file is not None else None
        self.session = ChatSession(
            self.clock, self.connect, Printer(self.out, colour=False), name=name, keyboard=keyboard, password_file=secret
        )
        self.status: list[int] = []
        self.session.start().addCallback(self.status.append)

    def hello(self, accounts: bool = True) -> None:
        features = ACCOUNT_FEATURES if accounts else ACCOUNT_FEATURES[:-1]
        self.send({"response": "hello", "content": {"protocol": 2, "server": "chatd/test", "features": features}})

    def type(self, *lines: str) -> list[dict[str, Any]]:
        """Type lines; the requests they sent."""
        for line in lines:
            self.session.user_line(line)
        return self.requests()

    def logged_in(self, name: str = "alice", ref: Any = LOGIN_REF) -> None:
        self.send({"response": "info", "content": f"Login successful. You are now logged in as {name}", "ref": ref}, history([], ref=ref))

    def printed(self) -> str:
        """Everything printed so far (not cleared)."""
        return self.out.getvalue()

    def texts(self) -> list[str]:
        """The lines printed since the last call, timestamps cut off."""
        return [line.split("] ", 1)[1] if line.startswith("[") else line for line in self.lines()]


def login(name: str, password: str | None = None) -> dict[str, Any]:
    """A login request as the client sends it."""
    request: dict[str, Any] = {"request": "login", "content": name, "ref": LOGIN_REF}
    if password is not None:
        request["password"] = password
    return request


def auth_failed(name: str = "alice") -> dict[str, Any]:
    return {"response": "error", "content": f"Wrong password for {name}.", "code": "auth_failed", "ref": LOGIN_REF}


class PipeLoginTests(SynchronousTestCase):
    """Standard input is not a terminal: the line after ``/login NAME`` is
    its password (if the server has accounts)."""

    def setUp(self) -> None:
        self.server = Server()
        self.server.hello()
        self.server.requests()

    def test_next_line_is_the_password(self) -> None:
        self.assertEqual(self.server.type("/login alice"), [])
        self.assertEqual(self.server.type(PASSWORD), [login("alice", PASSWORD)])
        self.server.logged_in()
        self.assertEqual(self.server.texts(), ["* Login successful. You are now logged in as alice"])
        self.assertTrue(self.server.session.account)
        self.assertEqual(self.server.type("hello"), [{"request": "msg", "content": "hello"}])

    def test_passwords_keep_their_spaces_and_are_never_printed(self) -> None:
        self.server.type("/login alice")
        self.assertEqual(self.server.type("  two  spaces \r"), [login("alice", "  two  spaces ")])
        self.server.send(auth_failed())
        self.assertEqual(self.server.texts(), ["! Wrong password for alice."])
        self.assertFalse(self.server.session.account)
        self.assertIsNone(self.server.session.name)
        self.assertNotIn("two  spaces", self.server.printed())

    def test_empty_line_logs_in_as_a_guest(self) -> None:
        self.server.type("/login bob")
        self.assertEqual(self.server.type(""), [login("bob")])
        self.server.logged_in("bob")
        self.assertEqual(self.server.session.name, "bob")
        self.assertFalse(self.server.session.account)

    def test_without_accounts_login_is_as_in_protocol_1(self) -> None:
        server = Server()
        server.hello(accounts=False)
        server.requests()
        # The line after /login is a message, as scripts have always had it.
        self.assertEqual(server.type("/login bob", "hi"), [login("bob"), {"request": "msg", "content": "hi"}])

    def test_refused_account_commands_still_take_their_passwords(self) -> None:
        # Lines are read long before earlier answers arrive: which lines
        # are passwords must not depend on them, or a password would go
        # out as a message.
        sent = self.server.type(
            "/register bad!", "secret1", "/register", "secret2", "/login", "secret3", "/password x", "secret4", "secret5",
            "/password", "secret6", "secret7",  # not logged in: the server refuses it
        )
        self.assertEqual(sent, [{"request": "password", "content": {"old": "secret6", "new": "secret7"}, "ref": PASSWORD_REF}])
        self.assertEqual(self.server.texts(), [
            "! /register: 'bad!' is not a user name.",
            "! /register needs a NAME (the password is asked for).",
            f"! /login needs a NAME. Commands: {COMMANDS}",
            "! /password takes nothing: the passwords are asked for, never typed after it.",
        ])
        self.assertNotIn("secret", self.server.printed())

    def test_no_accounts_register_takes_the_password_then_refuses(self) -> None:
        server = Server()
        server.hello(accounts=False)
        server.requests()
        self.assertEqual(server.type("/register alice", "secret", "/password", "old", "new"), [])
        self.assertEqual(server.texts(), ["! /register: this server has no accounts.", "! /password: this server has no accounts."])

    def test_input_ends_before_the_password(self) -> None:
        self.server.type("/login alice")
        self.server.session.input_ended()
        self.assertEqual(self.server.requests(), [{"request": "ping", "content": None, "ref": chatd_client.DRAIN_REF}])
        self.assertEqual(self.server.texts(), ["! /login alice: input ended before the password; nothing sent"])

    def test_register_then_login_pipelined(self) -> None:
        sent = self.server.type("/register alice", PASSWORD, "/login alice", "wrong", "/login alice", PASSWORD, "/join #dev", "/whoami")
        self.assertEqual(sent, [
            {"request": "register", "content": {"username": "alice", "password": PASSWORD}},
            login("alice", "wrong"),
            login("alice", PASSWORD),
            {"request": "join", "content": "#dev", "ref": chatd_client.JOIN_REF + "#dev"},
            {"request": "ping", "content": None, "ref": chatd_client.WHOAMI_REF},
        ])
        self.server.send({"response": "info", "content": "Account alice registered"}, auth_failed())
        self.server.logged_in()
        self.server.send(joined("#dev", ["alice"], ref=sent[3]["ref"]), history([], room="#dev", ref=sent[3]["ref"]))
        self.server.send({"response": "pong", "content": None, "ref": chatd_client.WHOAMI_REF})
        self.assertEqual(self.server.texts(), [
            "* Account alice registered",
            "! Wrong password for alice.",
            "* Login successful. You are now logged in as alice",
            "* Joined #dev", "* Members: @alice",
            "- You are alice, logged in to your account (after a lost connection the client logs in again with its password);"
            " this server has accounts (/register NAME, /login NAME).",
        ])
        # The refused login did not undo the /join typed after it.
        self.assertEqual((self.server.session.target, self.server.session.rooms), ("#dev", {"#dev": "#dev"}))

    def test_logins_and_logouts_pipelined(self) -> None:
        self.server.type("/login alice", PASSWORD, "/logout", "/login bob", "")
        self.server.logged_in("alice")
        self.assertEqual((self.server.session.name, self.server.session.account), ("alice", True))
        self.server.send({"response": "info", "content": "Logout successful"})
        self.assertEqual((self.server.session.name, self.server.session.account), (None, False))
        self.server.logged_in("bob")
        self.assertEqual((self.server.session.name, self.server.session.account), ("bob", False))

    def test_quit_waits_for_its_own_logout(self) -> None:
        self.server.type("/login bob", "", "/logout", "/login carol", "", "/quit")
        self.server.logged_in("bob")
        self.server.send({"response": "info", "content": "Logout successful"})
        self.server.clock.advance(0)
        self.assertTrue(self.server.connected())  # that was the first logout's answer
        self.server.logged_in("carol")
        self.server.send({"response": "info", "content": "Logout successful"}, {"response": "pong", "content": None, "ref": chatd_client.DRAIN_REF})
        self.server.clock.advance(0)
        self.assertFalse(self.server.connected())


class TerminalLoginTests(SynchronousTestCase):
    """Standard input is a terminal: a prompt, echo off for the password."""

    def setUp(self) -> None:
        self.keyboard = FakeKeyboard()
        self.server = Server(keyboard=self.keyboard)
        self.server.hello()
        self.server.requests()

    def test_login_prompts_with_echo_off(self) -> None:
        self.assertEqual(self.server.type("/login alice"), [])
        self.assertEqual(self.server.out.getvalue(), "Password for alice (Enter alone: log in as a guest): ")
        self.assertTrue(self.keyboard.hidden)
        self.assertEqual(self.server.type(PASSWORD), [login("alice", PASSWORD)])
        self.assertEqual(self.keyboard.events, ["hide", "restore"])
        self.server.logged_in()
        self.assertEqual(self.server.lines(), [
            "Password for alice (Enter alone: log in as a guest): ",
            "* Login successful. You are now logged in as alice",
        ])

    def test_lines_printed_while_the_prompt_is_up(self) -> None:
        self.server.type("/login alice")
        self.server.send(chat(1, "meanwhile"))
        prompt = "Password for alice (Enter alone: log in as a guest): "
        self.assertTrue(self.server.out.getvalue().endswith(f"{prompt}\n[{local_time(chat(1)['timestamp'])}] bob: meanwhile\n{prompt}"))
        self.server.type(PASSWORD)
        self.assertTrue(self.server.out.getvalue().endswith(prompt + "\n"))

    def test_enter_alone_is_a_guest_login(self) -> None:
        self.server.type("/login bob")
        self.assertEqual(self.server.type(""), [login("bob")])

    def test_no_prompt_when_there_is_nothing_to_ask(self) -> None:
        self.assertEqual(self.server.type("/login bad name"), [login("bad name")])  # the server says why not
        self.server.send({"response": "error", "content": "Invalid username.", "code": "invalid_username", "ref": LOGIN_REF})
        self.server.type("/login bob", "")
        self.server.logged_in("bob")
        self.server.lines()
        self.assertEqual(self.server.type("/login alice"), [login("alice")])  # "already logged in"
        self.assertEqual(self.keyboard.events, ["hide", "restore"])

    def test_register_asks_twice(self) -> None:
        self.server.type("/register alice", PASSWORD)
        self.assertTrue(self.server.out.getvalue().endswith("The same password again: "))
        self.assertEqual(self.server.type(PASSWORD), [{"request": "register", "content": {"username": "alice", "password": PASSWORD}}])
        self.assertEqual(self.server.type("/register alice", PASSWORD, "typo"), [])
        self.assertEqual(self.server.lines()[-1], "! /register alice: the two passwords differ; nothing registered")
        self.assertEqual(self.server.type("/register alice", ""), [])
        self.assertEqual(self.server.lines()[-1], "- /register alice: no password given; nothing registered")
        self.assertFalse(self.keyboard.hidden)

    def test_password_change(self) -> None:
        self.assertEqual(self.server.type("/password"), [])
        self.assertEqual(self.server.lines(), ["! /password: you are not logged in to an account."])
        self.server.type("/login alice", PASSWORD)
        self.server.logged_in()
        self.server.lines()
        self.server.type("/password", PASSWORD, "new password")
        self.assertEqual(self.server.type("new password"), [
            {"request": "password", "content": {"old": PASSWORD, "new": "new password"}, "ref": PASSWORD_REF},
        ])
        self.assertEqual(self.server.type("/password", PASSWORD, "new password", "other"), [])
        self.assertEqual(self.server.lines()[-1], "! /password: the two new passwords differ; password unchanged")

    def test_echo_that_cannot_be_turned_off_asks_nothing(self) -> None:
        self.keyboard.works = False
        self.assertEqual(self.server.type("/login alice", PASSWORD), [{"request": "msg", "content": PASSWORD}])
        self.assertEqual(self.server.lines()[0], "! /login alice: cannot turn the terminal's echo off; use --password-file")

    def test_echo_comes_back_when_input_ends_or_the_session_ends(self) -> None:
        self.server.type("/login alice")
        self.server.session.input_ended()
        self.assertFalse(self.keyboard.hidden)
        keyboard = FakeKeyboard()
        server = Server(keyboard=keyboard)
        server.hello()
        server.type("/register alice")
        self.assertTrue(keyboard.hidden)
        server.protocol.connectionLost(Failure(error.ConnectionLost()))  # not logged in: the client ends
        self.assertEqual(server.status, [1])
        self.assertFalse(keyboard.hidden)

    def test_without_accounts_nothing_is_asked(self) -> None:
        server = Server(keyboard=self.keyboard)
        server.hello(accounts=False)
        server.requests()
        self.assertEqual(server.type("/login bob", "/register bob", "/password"), [login("bob")])
        self.assertEqual(server.lines(), ["! /register: this server has no accounts.", "! /password: this server has no accounts."])
        self.assertEqual(self.keyboard.events, [])


class PasswordFileTests(SynchronousTestCase):
    """``--password-file``: ``--name`` logs in with it; ``/login`` and
    ``/register`` use it instead of asking."""

    def test_name_logs_in_with_it_on_connect_and_again_after_a_reconnect(self) -> None:
        server = Server(name="alice", password_file=PASSWORD)
        self.assertEqual(server.requests()[1], login("alice", PASSWORD))
        server.hello()
        server.logged_in()
        self.assertTrue(server.session.account)
        server.reconnect()
        self.assertEqual(server.requests()[1], login("alice", PASSWORD))
        self.assertNotIn(PASSWORD, server.printed())

    def test_login_and_register_use_it(self) -> None:
        server = Server(password_file=PASSWORD)
        server.hello()
        server.requests()
        self.assertEqual(server.type("/register alice", "/login alice", "next line"), [
            {"request": "register", "content": {"username": "alice", "password": PASSWORD}},
            login("alice", PASSWORD),
            {"request": "msg", "content": "next line"},
        ])

    def test_read_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("pass word \r\nsecond line\n")
        os.chmod(path, 0o600)
        self.assertEqual(read_password_file(path).reveal(), "pass word ")
        for content in (b"", b"\nx\n", b"\xff\xfe"):
            with open(path, "wb") as handle:
                handle.write(content)
            self.assertRaises(ValueError, read_password_file, path)
        self.assertRaises(OSError, read_password_file, path + ".missing")

    def test_readable_by_others_warns(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("hunter22\n")
        os.chmod(path, 0o644)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        read_password_file(path)
        self.assertIn("other users can read", stderr.getvalue())
        self.assertNotIn("hunter22", stderr.getvalue())

    def test_secret_never_shows(self) -> None:
        secret = Secret("hunter22")
        self.assertNotIn("hunter22", repr(secret) + str(secret) + repr([secret]) + f"{secret}" + repr({"password": secret}))
        self.assertEqual(secret.reveal(), "hunter22")


class ReconnectTests(SynchronousTestCase):
    """The password of the account logged in is kept to log in again."""

    def setUp(self) -> None:
        self.server = Server()
        self.server.hello()
        self.server.type("/login alice", PASSWORD)
        self.server.logged_in()
        self.server.lines()

    def test_logs_in_again_with_the_password(self) -> None:
        self.server.reconnect()
        self.assertEqual(self.server.requests()[1], login("alice", PASSWORD))
        self.server.logged_in()
        self.assertEqual(self.server.texts(), [
            "! connection to the server lost", "- reconnecting in 1 s (attempt 1 of 8)", "- reconnected to the server",
            "* Login successful. You are now logged in as alice",
        ])
        self.assertTrue(self.server.session.account)

    def test_a_refused_login_again_forgets_name_and_password(self) -> None:
        self.server.type("/join #dev")
        self.server.send(joined("#dev", ["alice"], ref=chatd_client.JOIN_REF + "#dev"))
        self.server.reconnect()
        self.server.requests()
        self.server.send({"response": "error", "content": "Wrong password for alice.", "code": "auth_failed", "ref": LOGIN_REF})
        self.assertEqual((self.server.session.name, self.server.session.account, self.server.session.rooms), (None, False, {}))
        # Not logged in any more: a lost connection now ends the client.
        self.server.protocol.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(self.server.status, [1])

    def test_a_changed_password_is_the_one_used(self) -> None:
        self.server.type("/password", PASSWORD, "new password")
        self.server.send({"response": "info", "content": "Password changed", "ref": PASSWORD_REF})
        self.server.type("/password", "new password", "refused one")
        self.server.send({"response": "error", "content": "Too weak.", "code": "weak_password", "ref": PASSWORD_REF})
        self.server.reconnect()
        self.assertEqual(self.server.requests()[1], login("alice", "new password"))

    def test_logout_forgets_the_password(self) -> None:
        self.server.type("/logout")
        self.server.send({"response": "info", "content": "Logout successful"})
        self.assertFalse(self.server.session.account)
        self.server.type("/login bob", "")
        self.server.logged_in("bob")
        self.server.reconnect()
        self.assertEqual(self.server.requests()[1], login("bob"))

    def test_account_rooms_given_back_at_login_are_not_shown_twice(self) -> None:
        server = self.server
        server.type("/join #dev")
        server.send(joined("#dev", ["alice"], ref=chatd_client.JOIN_REF + "#dev"), history([], room="#dev", ref=chatd_client.JOIN_REF + "#dev"))
        server.send(chat(7, "lobby7"), in_room(20, "#dev", "dev20"))
        server.lines()
        server.reconnect()
        self.assertEqual(server.requests(), [
            {"request": "hello", "content": {"protocol": 2, "client": f"chatd-client/{__version__}"}},
            login("alice", PASSWORD),
            {"request": "join", "content": "#dev", "ref": REJOIN_REF + "#dev"},
            {"request": "history", "content": {"after": 7, "limit": 500}, "ref": RESUME_REF},
        ])
        server.send(
            {"response": "info", "content": "Login successful. You are now logged in as alice", "ref": LOGIN_REF},
            history([chat(7, "lobby7"), chat(8, "lobby8")], ref=LOGIN_REF),
            joined("#dev", ["alice", "bob"], ref=LOGIN_REF),  # the account's room, given back
            history([in_room(20, "#dev", "dev20"), in_room(21, "#dev", "dev21")], room="#dev", ref=LOGIN_REF),
            history([dm(5, "carol", "alice", "while away")], ref=LOGIN_REF) | {"with": "carol", "more": False},
            joined("#dev", ["alice", "bob"], ref=REJOIN_REF + "#dev"),  # already a member: the info only
            history([chat(8, "lobby8")], ref=RESUME_REF),
        )
        server.send(history([in_room(21, "#dev", "dev21")], room="#dev", ref=RESUME_REF))
        self.assertEqual(server.texts()[3:], [
            "* Login successful. You are now logged in as alice",
            "* Joined #dev", "* Members: @alice, bob",
            "- Direct messages from carol while you were away:",
            "carol -> alice: while away",
            "[#lobby] bob: lobby8",
            "bob: dev21",
        ])
        self.assertFalse(server.session._resuming)


class HeldLinesTests(SynchronousTestCase):
    """Lines typed before the server answered hello wait for it: whether
    the line after ``/login NAME`` is a password depends on it."""

    def test_held_until_hello_is_answered(self) -> None:
        server = Server()
        self.assertEqual(server.requests(), [{"request": "hello", "content": {"protocol": 2, "client": f"chatd-client/{__version__}"}}])
        self.assertEqual(server.type("/login alice", PASSWORD, "hi"), [])
        server.session.input_ended()
        server.hello()
        self.assertEqual(server.requests(), [
            login("alice", PASSWORD), {"request": "msg", "content": "hi"}, {"request": "ping", "content": None, "ref": chatd_client.DRAIN_REF},
        ])

    def test_v1_server(self) -> None:
        server = Server()
        server.type("/login bob", "hi", "/register bob", "secret")
        server.send({"response": "error", "content": "Unknown request.", "code": "unknown_request"})
        self.assertEqual(server.requests(), [login("bob"), {"request": "msg", "content": "hi"}])
        self.assertEqual(server.lines(), ["! /register: this server speaks protocol 1 only: no accounts."])

    def test_a_server_that_never_answers(self) -> None:
        server = Server()
        server.type("/login alice", PASSWORD)
        server.requests()
        server.clock.advance(HELLO_WAIT)
        # Not known to lack accounts: the line after /login is still the password.
        self.assertEqual(server.requests(), [login("alice", PASSWORD)])


class ModerationCommandTests(SynchronousTestCase):
    """What each moderation command sends."""

    def setUp(self) -> None:
        self.server = Server(name="alice")
        self.server.hello()
        self.server.logged_in()
        self.server.type("/join #Dev")
        self.server.send(joined("#Dev", ["alice", "bob"], ref=chatd_client.JOIN_REF + "#Dev"))
        self.server.requests()
        self.server.lines()

    def test_requests(self) -> None:
        sent = self.server.type(
            "/kick bob spam", "/ban bob 1h flooding", "/unban bob", "/mute bob 30s", "/unmute bob",
            "/op bob", "/deop bob", "/voice bob", "/devoice bob", "/mode", "/mode +im -s", "/invite carol",
        )
        room = {"room": "#Dev"}
        self.assertEqual(sent, [
            {"request": "kick", "content": dict(room, user="bob", comment="spam")},
            {"request": "ban", "content": dict(room, user="bob", duration=3600, comment="flooding")},
            {"request": "unban", "content": dict(room, user="bob")},
            {"request": "mute", "content": dict(room, user="bob", duration=30)},
            {"request": "unmute", "content": dict(room, user="bob")},
            {"request": "op", "content": dict(room, user="bob")},
            {"request": "deop", "content": dict(room, user="bob")},
            {"request": "voice", "content": dict(room, user="bob")},
            {"request": "devoice", "content": dict(room, user="bob")},
            {"request": "mode", "content": room},
            {"request": "mode", "content": dict(room, invite_only=True, moderated=True, secret=False)},
            {"request": "invite", "content": dict(room, user="carol")},
        ])

    def test_room_named_or_current(self) -> None:
        self.assertEqual(self.server.type("/kick #ops bob", "/invite bob #ops", "/switch #lobby", "/kick bob"), [
            {"request": "kick", "content": {"room": "#ops", "user": "bob"}},
            {"request": "invite", "content": {"room": "#ops", "user": "bob"}},
            {"request": "kick", "content": {"room": "#lobby", "user": "bob"}},  # server operators may
        ])
        self.server.lines()
        self.assertEqual(self.server.type("/switch bob", "/op carol", "/mode"), [])
        self.assertEqual(self.server.lines()[1:], [
            "! /op: you are talking to bob, not in a room (/switch #ROOM first or name it: /op #ROOM ...).",
            "! /mode: you are talking to bob, not in a room (/switch #ROOM first or name it: /mode #ROOM ...).",
        ])

    def test_v1_server_refuses_here(self) -> None:
        server = Server(name="bob")
        server.send({"response": "error", "content": "Unknown request.", "code": "unknown_request"})
        server.requests()
        self.assertEqual(server.type("/kick carol", "/mode +m"), [])
        self.assertEqual(server.lines(), ["! This server speaks protocol 1 only: no rooms and no direct messages."] * 2)


class ModerationEventTests(SynchronousTestCase):
    """What the moderation events print, and what they change."""

    def setUp(self) -> None:
        self.server = Server(name="alice")
        self.server.hello()
        self.server.logged_in()
        self.server.type("/join #Dev")
        self.server.send(joined("#Dev", ["bob", "alice"], ref=chatd_client.JOIN_REF + "#Dev"))
        self.server.requests()
        self.server.lines()

    def test_events(self) -> None:
        self.server.send(
            {"response": "mode", "content": {"room": "#Dev", "by": "bob", "user": "alice", "op": True}},
            {"response": "mode", "content": {"room": "#Dev", "by": "bob", "user": "carol", "voice": True}},
            {"response": "mode", "content": {"room": "#Dev", "by": "bob", "modes": {"invite_only": True}}},
            {"response": "invite", "content": {"room": "#Ops", "by": "bob"}},
            {"response": "info", "content": "You were muted in #Dev by bob", "room": "#Dev", "by": "bob"},
            {"response": "presence", "content": {"user": "carol", "status": "offline", "room": "#Dev", "reason": "banned", "by": "bob", "comment": "go"}},
            {"response": "info", "content": "Modes of #Dev", "room": "#Dev", "modes": {"invite_only": True, "moderated": False}},
        )
        self.assertEqual(self.server.texts(), [
            "- bob gave you op in #Dev",
            "- bob gave voice to carol in #Dev",
            "- bob set the modes of #Dev: invite_only on",
            "- bob invites you to #Ops (/join #Ops)",
            "- You were muted in #Dev by bob",
            "- carol was banned from #Dev by bob: go",
            "* Modes of #Dev",
            "* Modes: invite_only on, moderated off",
        ])

    def test_kicked_from_the_current_room_says_where_lines_go_now(self) -> None:
        self.server.send({"response": "info", "content": "You were kicked from #Dev by bob: spam", "room": "#Dev", "by": "bob", "comment": "spam"})
        self.assertEqual(self.server.texts(), ["- You were kicked from #Dev by bob: spam", "- now talking in #lobby"])
        self.assertEqual((self.server.session.target, self.server.session.rooms), (LOBBY, {}))
        self.assertEqual(self.server.type("hi"), [{"request": "msg", "content": "hi"}])

    def test_put_out_of_the_lobby_no_reconnect(self) -> None:
        self.server.send({"response": "info", "content": "You were banned from #lobby by root: bye", "room": "#lobby", "by": "root", "comment": "bye"})
        self.server.protocol.connectionLost(Failure(error.ConnectionDone()))
        self.server.clock.advance(60)
        self.assertEqual(self.server.texts(), [
            "- You were banned from #lobby by root: bye",
            "! the server closed the connection: you were put out of #lobby (not reconnecting)",
        ])
        self.assertEqual((self.server.status, len(self.server.protocols)), ([1], 1))

    def test_event_text_is_made_safe(self) -> None:
        nasty = "x\x1b]0;pwned\x07\u202e"
        self.server.send(
            {"response": "info", "content": nasty, "room": nasty, "by": nasty},
            {"response": "mode", "content": {"room": nasty, "by": nasty, "user": nasty, "op": True}},
            {"response": "history", "content": [dm(1, nasty, "alice", nasty)], "with": nasty, "more": True},
        )
        printed = self.server.printed()
        for character in ("\x1b", "\x07", "\u202e"):
            self.assertNotIn(character, printed)
        self.assertIn("\\x1b]0;pwned\\x07\\u202e", printed)


class OfflineDirectMessageTests(SynchronousTestCase):
    """Direct messages that waited for the login (section 6.3)."""

    def test_shown_at_login_once(self) -> None:
        server = Server()
        server.hello()
        server.type("/login alice", PASSWORD)
        waiting = history([dm(1, "bob", "alice", "one"), dm(2, "bob", "alice", "two")], ref=LOGIN_REF) | {"with": "bob", "more": True}
        server.logged_in()
        server.send(waiting, waiting)  # the second time: nothing new
        self.assertEqual(server.texts(), [
            "* Login successful. You are now logged in as alice",
            "- Direct messages from bob while you were away:",
            "bob -> alice: one",
            "bob -> alice: two",
            "- More direct messages from bob are waiting: they come at your next login.",
        ])
        self.assertEqual(server.session.last_ids["@bob"], 2)

    def test_own_offline_echo_says_so(self) -> None:
        server = Server(name="alice")
        server.hello()
        server.logged_in()
        server.lines()
        server.type("/msg bob later")
        server.send(dm(1, "alice", "bob", "later") | {"offline": True})
        self.assertEqual(server.texts(), ["alice -> bob: later (offline: delivered at their next login)"])


class RealServerTests(SynchronousTestCase):
    """The client against the real hub with accounts (over iosim)."""

    def setUp(self) -> None:
        self.factory, _ = with_accounts()
        self.factory.hub.moderation.operators = self.factory.operators

    def test_register_login_moderate(self) -> None:
        alice = Harness(self.factory)
        alice.type("/register alice", PASSWORD, "/login alice", "wrong one", "/login alice", PASSWORD, "/join #dev")
        self.assertEqual(alice.lines(), [
            "* Account alice registered",
            "! Wrong password for alice.",
            "* Login successful. You are now logged in as alice",
            "* Joined #dev",
            "* Members: @alice",
        ])
        bob = Harness(self.factory, name="bob")
        bob.type("/join #dev")
        alice.pump()
        alice.lines()
        bob.lines()
        alice.type("/op bob", "/mode +m", "/kick bob spam")
        bob.pump()
        self.assertEqual(alice.lines(), [
            "* Opped bob in #dev", "- alice gave op to bob in #dev",
            "* Modes of #dev set", "- alice set the modes of #dev: moderated on",
            "* Kicked bob from #dev", "- bob was kicked from #dev by alice: spam",
        ])
        self.assertEqual(bob.lines(), [
            "- alice gave you op in #dev", "- alice set the modes of #dev: moderated on",
            "- You were kicked from #dev by alice: spam", "- now talking in #lobby",
        ])
        self.assertNotIn(PASSWORD, alice.out.getvalue())

    def test_offline_dms_and_rooms_at_login(self) -> None:
        for name in ("alice", "bob"):
            self.factory.accounts.register(name, PASSWORD, "127.0.0.1")  # type: ignore[union-attr]
        bob = Harness(self.factory)
        bob.type("/login bob", PASSWORD, "/join #dev", "/quit")  # type() pumps, and the clock runs what is due now
        alice = Harness(self.factory)
        alice.type("/login alice", PASSWORD, "/msg bob one", "/msg bob two")
        self.assertEqual([line.split("] ", 1)[-1] for line in alice.lines()], [
            "* Login successful. You are now logged in as alice",
            "alice -> bob: one (offline: delivered at their next login)",
            "alice -> bob: two (offline: delivered at their next login)",
        ])
        bob = Harness(self.factory)
        bob.type("/login bob", PASSWORD)
        self.assertEqual([line.split("] ", 1)[-1] for line in bob.lines()], [
            "* Login successful. You are now logged in as bob",
            "* Joined #dev", "* Members: @bob",
            "- Direct messages from alice while you were away:",
            "alice -> bob: one",
            "alice -> bob: two",
        ])


# -- end to end: chatd-client against twistd chatd -----------------------------


class AccountPipeEndToEndTests(SynchronousTestCase):
    """Over pipes: register, log in (a wrong password first), join, op and
    kick another client; an account logged in by ``--password-file``."""

    def setUp(self) -> None:
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        self.server = ServerProcess(self.workdir, "--accounts", "optional").start()
        self.addCleanup(self.server.kill)

    def client(self, name: str | None, *args: str, label: str | None = None) -> PipedClient:
        client = PipedClient(self.server.port, name, self.workdir, *args, label=label)
        self.addCleanup(client.kill)
        return client

    def expect(self, client: PipedClient, *lines: str) -> None:
        self.assertEqual(client.next_lines(len(lines)), list(lines))

    def test_register_login_op_kick(self) -> None:
        alice = self.client(None, label="alice")
        alice.type("/register alice", PASSWORD, "/login alice", "wrong password", "/login alice", PASSWORD, "/join #dev", "/whoami")
        self.expect(
            alice,
            "* Account alice registered",
            "! Wrong password for alice.",
            "* Login successful. You are now logged in as alice",
            "* Joined #dev",
            "* Members: @alice",
            "- You are alice, logged in to your account (after a lost connection the client logs in again with its password);"
            " this server has accounts (/register NAME, /login NAME).",
        )

        # bob: an account logged in on connect with --password-file.
        registrar = LinesClient(self.server.port)
        self.addCleanup(registrar.close)
        registrar.send("register", {"username": "bob", "password": "bob's password"})
        self.assertEqual(registrar.receive()["content"], "Account bob registered")
        secret = os.path.join(self.workdir, "bob.password")
        with open(secret, "w") as handle:
            handle.write("bob's password\n")
        os.chmod(secret, stat.S_IRUSR | stat.S_IWUSR)
        bob = self.client("bob", "--password-file", secret)
        self.expect(bob, "* Login successful. You are now logged in as bob")
        self.expect(alice, "- bob is online")
        bob.type("/join #dev")
        self.expect(bob, "* Joined #dev", "* Members: @alice, bob")
        self.expect(alice, "- bob joined #dev")

        alice.type("/op bob")
        self.expect(alice, "* Opped bob in #dev", "- alice gave op to bob in #dev")
        self.expect(bob, "- alice gave you op in #dev")
        alice.type("/kick bob spam")
        self.expect(alice, "* Kicked bob from #dev", "- bob was kicked from #dev by alice: spam")
        self.expect(bob, "- You were kicked from #dev by alice: spam", "- now talking in #lobby")

        # A DM to an account with no session waits for its next login.
        bob.type("/quit")
        self.expect(bob, "* Logout successful")
        self.assertEqual(bob.finish(), (0, [], ""))
        self.expect(alice, "- bob is offline")
        alice.type("/msg bob see you")
        self.expect(alice, "[T] alice -> bob: see you (offline: delivered at their next login)")
        bob = self.client("bob", "--password-file", secret)
        self.expect(
            bob,
            "* Login successful. You are now logged in as bob",
            "- Direct messages from alice while you were away:",
            "[T] alice -> bob: see you",
        )
        self.assertEqual(bob.finish(), (0, [], ""))
        self.assertEqual(alice.finish()[0], 0)
        for output in (self.server.log(),):
            self.assertNotIn(PASSWORD, output)
            self.assertNotIn("bob's password", output)


class PtyEndToEndTests(SynchronousTestCase):
    """In a pseudo-terminal: the password typed after ``/login NAME`` is not
    echoed, echo is back after it, and after a SIGTERM at a prompt."""

    def setUp(self) -> None:
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        self.server = ServerProcess(self.workdir, "--accounts", "optional").start()
        self.addCleanup(self.server.kill)
        registrar = LinesClient(self.server.port)
        self.addCleanup(registrar.close)
        registrar.send("register", {"username": "alice", "password": PASSWORD})
        self.assertEqual(registrar.receive()["content"], "Account alice registered")
        self.master, self.slave = pty.openpty()
        self.addCleanup(os.close, self.master)
        self.addCleanup(os.close, self.slave)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd.client", "--port", str(self.server.port)],
            stdin=self.slave, stdout=self.slave, stderr=self.slave,
            env=dict(os.environ, NO_COLOR="1"), start_new_session=True,
        )
        self.addCleanup(self.stop)
        self.output = b""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # only this client, by its own handle
        self.process.wait(timeout=DEADLINE)

    def read_until(self, marker: bytes) -> None:
        """Read the terminal until ``marker`` shows (within the deadline)."""
        end = time.monotonic() + DEADLINE
        while marker not in self.output:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {marker!r}; the terminal showed {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:  # the client closed the terminal
                    raise AssertionError(f"the client exited; the terminal showed {self.output!r}") from None

    def echo_on(self) -> bool:
        return bool(termios.tcgetattr(self.slave)[3] & termios.ECHO)

    def test_password_not_echoed(self) -> None:
        os.write(self.master, b"/login alice\n")
        self.read_until(b"Password for alice (Enter alone: log in as a guest): ")
        self.assertFalse(self.echo_on())
        os.write(self.master, PASSWORD.encode() + b"\n")
        self.read_until(b"* Login successful. You are now logged in as alice")
        self.assertTrue(self.echo_on())
        os.write(self.master, b"echo is back\n")
        self.read_until(b"alice: echo is back")
        lines = self.output.replace(b"\r\n", b"\n").split(b"\n")
        self.assertIn(b"/login alice", lines)  # the terminal echoed the command ...
        self.assertIn(b"echo is back", lines)  # ... and this line
        self.assertNotIn(PASSWORD.encode(), self.output)  # ... but never the password
        os.write(self.master, b"/quit\n")
        self.assertEqual(self.process.wait(timeout=DEADLINE), 0)

    def test_echo_restored_after_sigterm_at_a_prompt(self) -> None:
        os.write(self.master, b"/login alice\n")
        self.read_until(b"Password for alice")
        self.assertFalse(self.echo_on())
        self.process.send_signal(signal.SIGTERM)  # our own child, by its handle
        self.process.wait(timeout=DEADLINE)
        self.assertTrue(self.echo_on())

"""The browser client's accounts and moderation, in headless Chromium
against a real ``twistd chatd --accounts optional`` (PROTOCOL.md 6.4-6.6).

- Register and log in from the page; the account state is shown; the
  password is only ever in its ``type=password`` input (never the address,
  storage or the rest of the page) and is emptied once logged in.
- An op kicks, bans and mutes a member from the member's menu in another
  page, which says so clearly (an alert, the room marked, the reason);
  ops (@) and voiced (+) show in member lists and follow ``mode`` events.
- Against a scripted server (:class:`AccountFakeServer`), the client's
  own rules exactly: no password field without "accounts"; a reconnect
  logs in again with the password and does not rejoin an account's rooms
  (the server restores them; one it does not is marked); roles, modes,
  invitations, another session's joins and parts, a mute, and a kick from
  ``#lobby``, which stops the automatic reconnect.
- Offline DMs open their conversations with unread counts; an
  invitation is shown and joins an invite-only room; after a server
  restart the page logs in to the account again (the password kept in
  memory only) and the account's rooms come back.

Screenshots are written to ``$CHATD_ARTIFACTS``. Skipped without
Chromium, except under CI (as tests/test_browser.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.e2e import ServerProcess, can_connect, free_port, wait_for
from tests.test_browser_rooms import FAKE_ORIGIN, BrowserCase, ClientPage, FakeServer, _now

PASSWORDS = {"alice": "alice's long secret", "bob": "bob has a password", "carol": "carol keeps it safe"}

# The "@" or "+" the stylesheet puts before a member's name (not part of its text).
PREFIX_JS = "el => getComputedStyle(el.querySelector('.nick'), '::before').content"
# Every value and attribute of the page, and everything it stored: where a password must not be.
EXPOSED_JS = """() => [
  location.href, document.cookie, JSON.stringify(Object.entries(localStorage)),
  JSON.stringify(Object.entries(sessionStorage)), document.documentElement.outerHTML,
  ...Array.from(document.querySelectorAll('input, textarea, select')).map(el => el.value),
].join('\\n')"""


class AccountPage(ClientPage):
    """A page of the client with the account and moderation steps."""

    def register(self, name: str, password: str) -> None:
        self.page.locator("#login-password").wait_for()  # shown once hello lists "accounts"
        self.page.fill("#login-name", name)
        self.page.fill("#login-password", password)
        self.page.click("#register-button")
        self.page.wait_for_selector("#message", state="visible")

    def log_in(self, name: str, password: str) -> None:
        self.page.locator("#login-password").wait_for()
        self.page.fill("#login-name", name)
        self.page.fill("#login-password", password)
        self.page.press("#login-password", "Enter")
        self.page.wait_for_selector("#message", state="visible")

    def member(self, user: str) -> Any:
        return self.page.locator("#users li").filter(has=self.page.locator(".nick", has_text=user))

    def prefix(self, user: str) -> str:
        """The mark before ``user`` in the member list: "@", "+" or ""."""
        content = str(self.member(user).evaluate(PREFIX_JS))
        return content.strip('"') if content not in ("none", "normal") else ""

    def wait_prefix(self, user: str, prefix: str) -> None:
        self.page.wait_for_function(
            "([user, prefix]) => Array.from(document.querySelectorAll('#users li')).some(li =>"
            " li.querySelector('.nick') && li.querySelector('.nick').textContent === user &&"
            " getComputedStyle(li.querySelector('.nick'), '::before').content === (prefix ? JSON.stringify(prefix) : 'none'))",
            arg=[user, prefix],
        )

    def act(self, user: str, action: str, comment: str = "", duration: str = "") -> None:
        """Open ``user``'s menu in the room on screen and do ``action``."""
        self.page.click(f'#users button.member-actions[data-user="{user}"]')
        self.page.locator("#member-menu").wait_for()
        self.test.assertEqual(self.page.text_content("#menu-title"), f"{user} in {self.page.text_content('#conv-title')}")
        self.page.fill("#menu-comment", comment)
        self.page.select_option("#menu-duration", duration)
        self.page.click(f'#menu-actions button[data-action="{action}"]')

    def alert(self, text: str) -> None:
        self.page.locator("#alert-text", has_text=text).wait_for()
        self.test.assertTrue(self.page.locator("#alert").is_visible())

    def notices(self, key: str) -> list[str]:
        return [str(t) for t in self.page.locator(f'#messages ol[data-key="{key}"] li.notice').all_text_contents()]

    def wait_notice(self, key: str, text: str) -> None:
        self.page.locator(f'#messages ol[data-key="{key}"] li.notice', has_text=text).first.wait_for()

    def wait_error(self, text: str) -> None:
        self.page.locator("#chat-error", has_text=text).wait_for()

    def assert_password_hidden(self, password: str) -> None:
        self.test.assertNotIn(password, str(self.page.evaluate(EXPOSED_JS)))


class AccountsEndToEndTests(BrowserCase):
    def setUp(self) -> None:
        super().setUp()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.web_port = free_port()
        self.server = self.start_server()

    def start_server(self) -> ServerProcess:
        server = ServerProcess(
            self.workdir, "--web", f"tcp:{self.web_port}:interface=127.0.0.1", "--accounts", "optional"
        ).start()
        self.addCleanup(server.kill)
        wait_for(lambda: can_connect(self.web_port), "the web listener")
        return server

    def open(self) -> AccountPage:
        raw = self.new_page()
        raw.goto(f"http://127.0.0.1:{self.web_port}/")
        return AccountPage(self, raw)

    def account(self, name: str) -> AccountPage:
        page = self.open()
        page.register(name, PASSWORDS[name])
        return page

    def shot(self, page: AccountPage, name: str) -> None:
        page.page.screenshot(path=os.path.join(self.artifacts, name))

    def test_register_log_in_and_get_kicked_by_an_op_in_another_page(self) -> None:
        alice = self.account("alice")
        # The account state is visible; the password is in no address,
        # storage or element of the page, its input emptied and a password one.
        self.assertEqual(alice.page.text_content("#account-name"), "alice")
        self.assertEqual(alice.page.text_content("#account-kind"), "account")
        self.assertEqual(alice.page.get_attribute("#login-password", "type"), "password")
        self.assertEqual(alice.page.input_value("#login-password"), "")
        alice.assert_password_hidden(PASSWORDS["alice"])
        # Registered accounts: a wrong password and a guest on the name are refused.
        other = self.open()
        other.page.locator("#login-password").wait_for()
        other.page.fill("#login-name", "alice")
        other.page.fill("#login-password", "not the password")
        other.page.press("#login-password", "Enter")
        other.page.locator("#login-error", has_text="Wrong password").wait_for()
        self.assertTrue(other.page.locator("#login-form").is_visible())
        other.page.fill("#login-password", "")
        other.page.press("#login-name", "Enter")
        other.page.locator("#login-error", has_text="alice is an account").wait_for()
        self.shot(other, "accounts-refused.png")
        other.page.close()
        bob = self.open()
        bob.register("bob", PASSWORDS["bob"])
        self.assertEqual(bob.page.text_content("#account-kind"), "account")
        # alice creates #dev and is its op; bob joins.
        alice.join("#dev")
        bob.join("#dev")
        alice.page.locator("#users li", has_text="bob").wait_for()
        self.assertEqual(alice.prefix("alice"), "@")
        self.assertEqual(alice.prefix("bob"), "")
        self.assertEqual(bob.prefix("alice"), "@")
        self.assertEqual(sorted(alice.users()), ["alice", "bob"])  # the "@" is no part of the name
        self.assertEqual(bob.page.locator("#users button.member-actions").count(), 0)  # not op: no menu
        self.assertEqual(alice.page.locator("#users button.member-actions").count(), 1)  # none for herself
        bob.say("hello dev")
        alice.wait_text("#dev", "hello dev")

        # The kick, from bob's menu in alice's page.
        alice.act("bob", "kick", comment="spam")
        bob.alert("You were kicked from #dev by alice: spam")
        bob.wait_notice("#dev", "You were kicked from #dev by alice: spam")
        kicked = bob.page.locator('#rooms li[data-key="#dev"]')
        self.assertIn("gone", kicked.get_attribute("class") or "")
        self.assertEqual(kicked.locator(".state").text_content(), "kicked")
        self.assertEqual(bob.page.text_content("#room-state"), "You were kicked from this room")
        self.assertEqual(bob.users(), [])
        self.assertEqual(bob.page.text_content("#part"), "Close")
        alice.wait_notice("#dev", "bob was kicked by alice: spam")
        alice.page.locator("#users li", has_text="bob").wait_for(state="detached")
        self.assertTrue(alice.page.locator("#member-menu").is_hidden())
        # Talking there now is refused in the page, before anything is sent.
        bob.say("still here?")
        bob.wait_error("You are not in #dev")
        self.shot(bob, "kicked.png")
        self.shot(alice, "kicker.png")

        # A kick is no ban: bob comes back. Then a ban, for an hour.
        bob.join("#dev")
        bob.page.locator('#rooms li.gone[data-key="#dev"]').wait_for(state="detached")
        alice.page.locator("#users li", has_text="bob").wait_for()
        alice.act("bob", "ban", comment="go away", duration="3600")
        bob.alert("You were banned from #dev by alice: go away")
        self.assertEqual(bob.page.locator('#rooms li[data-key="#dev"] .state').text_content(), "banned")
        self.assertEqual(bob.page.text_content("#room-state"), "You are banned from this room")
        alice.wait_notice("#dev", "bob was banned by alice: go away")
        bob.page.fill("#join-name", "#dev")
        bob.page.press("#join-name", "Enter")
        bob.wait_error("You are banned from #dev")
        self.shot(bob, "banned.png")
        alice.say("/unban bob")
        alice.wait_notice("#dev", "Unbanned bob from #dev")
        bob.join("#dev")
        alice.page.locator("#users li", has_text="bob").wait_for()

        # A mute: bob is told, and his messages to #dev are refused until unmuted.
        alice.act("bob", "mute", duration="300")
        bob.alert("You were muted in #dev by alice")
        self.assertEqual(bob.page.text_content("#room-state"), "You are muted here")
        self.assertEqual(bob.page.locator('#rooms li[data-key="#dev"] .state').text_content(), "muted")
        bob.say("let me talk")
        bob.wait_error("You are muted in #dev")
        self.shot(bob, "muted.png")
        alice.act("bob", "unmute")
        bob.alert("You were unmuted in #dev by alice")
        bob.page.locator('#rooms li[data-key="#dev"] .state').wait_for(state="detached")
        bob.say("thanks")
        alice.wait_text("#dev", "thanks")
        self.assertNotIn("let me talk", alice.texts("#dev"))

        # Roles: voice, then op, shown on both pages from the mode events.
        alice.act("bob", "voice")
        alice.wait_prefix("bob", "+")
        bob.wait_prefix("bob", "+")
        bob.wait_notice("#dev", "alice gave voice to you")
        alice.act("bob", "op")
        alice.wait_prefix("bob", "@")
        bob.wait_prefix("bob", "@")
        bob.wait_notice("#dev", "alice made you an operator")
        self.assertEqual(alice.page.text_content('#menu-actions button[data-action="deop"]'), "Remove op")
        bob.page.locator('#users button.member-actions[data-user="alice"]').wait_for()  # bob may act now
        self.assertEqual(bob.page.text_content("#room-state"), "You are an operator")
        self.shot(alice, "moderation.png")
        alice.assert_password_hidden(PASSWORDS["alice"])
        bob.assert_password_hidden(PASSWORDS["bob"])

    def test_offline_dms_invites_and_login_again_after_a_restart(self) -> None:
        alice = self.account("alice")
        bob = self.account("bob")
        # alice opens a DM with bob from the #lobby list; bob leaves.
        alice.page.locator("#users button.nick", has_text="bob").click()
        alice.wait_current("@bob")
        bob.page.close()
        alice.switch("#lobby")  # until the server has seen bob go
        alice.page.locator("#users li", has_text="bob").wait_for(state="detached")
        alice.switch("@bob")
        for i in range(3):
            alice.say(f"while you were out {i}")
            alice.wait_text("@bob", f"while you were out {i}")
        self.assertIn("bob is offline", alice.page.locator('#messages ol[data-key="@bob"] li.message .note').first.text_content() or "")
        # bob logs in again: the conversation opens unread, #lobby on screen.
        bob = self.open()
        bob.log_in("bob", PASSWORDS["bob"])
        bob.page.locator('#dms li[data-key="@alice"] .unread', has_text="3").wait_for()
        self.assertEqual(bob.current(), "#lobby")
        self.assertEqual(bob.texts("@alice"), [f"while you were out {i}" for i in range(3)])
        self.shot(bob, "offline-dms.png")
        bob.switch("@alice")
        self.assertEqual(bob.unread("@alice"), 0)

        # An invite-only room: carol (a guest) is refused, invited, and joins.
        alice.join("#Plans")
        alice.page.click("#modes-box summary")
        alice.page.click('#modes input[data-flag="invite_only"]')  # checked once the server says so
        alice.wait_notice("#plans", "alice set the room invite only on")
        self.assertTrue(alice.page.is_checked('#modes input[data-flag="invite_only"]'))
        carol = self.open()
        carol.login("carol")
        self.assertEqual(carol.page.text_content("#account-kind"), "guest")
        carol.page.fill("#join-name", "#plans")
        carol.page.press("#join-name", "Enter")
        carol.wait_error("#Plans is invite-only")
        alice.page.fill("#invite-name", "carol")
        alice.page.press("#invite-name", "Enter")
        alice.wait_notice("#plans", "Invited carol to #Plans")
        invitation = carol.page.locator('#invites li[data-room="#plans"]')
        invitation.wait_for()
        self.assertEqual(invitation.locator(".invite-text").text_content(), "#Plans from alice")
        self.shot(carol, "invited.png")
        invitation.locator("button", has_text="Join").click()
        carol.wait_current("#plans")
        self.assertTrue(carol.page.locator("#invites-box").is_hidden())
        alice.page.locator("#users li", has_text="carol").wait_for()

        # A restart: alice's page logs in to her account again by itself
        # (the password only in memory); her rooms come back with the login.
        self.server.stop()
        alice.page.wait_for_function("() => document.getElementById('status').textContent !== 'connected'")
        self.server = self.start_server()
        alice.page.wait_for_function("() => document.getElementById('status').textContent === 'connected'")
        bob.page.wait_for_function("() => document.getElementById('status').textContent === 'connected'")
        bob.say("are you back?")
        alice.wait_text("@bob", "are you back?")
        alice.switch("#plans")
        alice.say("back in plans")
        alice.wait_text("#plans", "back in plans")
        self.assertEqual(alice.page.text_content("#account-kind"), "account")
        self.assertNotIn("gone", alice.page.locator('#rooms li[data-key="#plans"]').get_attribute("class") or "")
        self.assertEqual(alice.prefix("alice"), "@")  # an account's op survives the restart
        alice.assert_in_order("@bob")
        alice.assert_password_hidden(PASSWORDS["alice"])
        self.shot(alice, "account-resumed.png")


# ---------------------------------------------------------------------------
# The client against a scripted server


class AccountFakeServer(FakeServer):
    """:class:`FakeServer` with accounts: ``register``, ``login`` with a
    password (then the account's rooms and its waiting DMs, as section 6.4
    orders them), ``ping``, and joins whose info lists ops and voiced."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, str] = {}
        self.account_rooms: list[str] = []         # rooms the account is in, kept by the server
        self.waiting: dict[str, list[str]] = {}    # DMs from someone while the account was away
        self.ops: dict[str, list[str]] = {}
        self.voiced: dict[str, list[str]] = {}
        self.connections = 0

    def connect(self, ws: Any) -> None:
        if not self.down:
            self.connections += 1
        super().connect(ws)

    def hang_up(self) -> None:
        """The server closes the page's connection (and takes new ones)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def receive(self, ws: Any, text: str | bytes) -> None:
        if ws is not self.socket:
            return
        request = json.loads(text)
        kind, content = request["request"], request.get("content")
        ref = request.get("ref")
        tail = {} if ref is None else {"ref": ref}
        if kind == "hello":
            self.requests.append(request)
            self.send("hello", {"protocol": 2, "features": ["rooms", "dm", "topic", "moderation", "accounts"]}, **tail)
        elif kind == "register":
            self.requests.append(request)
            self.accounts[content["username"].lower()] = content["password"]
            self.send("info", f"Account {content['username']} registered", **tail)
        elif kind == "login" and "password" in request:
            self.requests.append(request)
            self.account_login(content, request["password"], tail)
        elif kind == "password":
            self.requests.append(request)
            if self.accounts.get(self.name.lower()) != content["old"]:
                self.send("error", "Wrong password.", code="auth_failed", **tail)
            else:
                self.accounts[self.name.lower()] = content["new"]
                self.send("info", "Password changed", **tail)
        elif kind == "ping":
            self.requests.append(request)
            self.send("pong", content, **tail)
        elif kind == "history" and "with" in content:
            self.requests.append(request)
            self.send("history", [], more=False, **{"with": content["with"]}, **tail)
        else:
            super().receive(ws, text)

    def account_login(self, name: str, password: str, tail: dict[str, Any]) -> None:
        if self.accounts.get(name.lower()) != password:
            self.send("error", f"Wrong password for {name}.", code="auth_failed", **tail)
            return
        self.name = name
        self.send("info", f"Login successful. You are now logged in as {name}", **tail)
        self.send("history", self.rooms["#lobby"][-self.JOIN_HISTORY:], **tail)
        for room in self.account_rooms:
            self.join(room, tail)
        for other, texts in self.waiting.items():
            pair = "|".join(sorted([other.lower(), name.lower()]))
            page = []
            for text in texts:
                self.dm_ids[pair] = self.dm_ids.get(pair, 0) + 1
                page.append({"timestamp": _now(), "sender": other, "response": "message", "content": text,
                             "id": self.dm_ids[pair], "to": name})
            self.send("history", page, more=False, **{"with": other}, **tail)
        self.waiting = {}

    def join(self, room: str, tail: dict[str, Any]) -> None:
        key = room.lower()
        if key not in self.rooms:
            self.room(room)
        already = key in self.joined
        self.joined.add(key)
        if name_is_account(self) and all(r.lower() != key for r in self.account_rooms):
            self.account_rooms.append(room)
        spelling = self.spelling[key]
        members = [m for m in self.members[key] if m.lower() != self.name.lower()] + [self.name]
        modes = {"invite_only": False, "topic_ops": True, "moderated": False, "secret": False, "no_external": True}
        self.send("info", f"Joined {spelling}", room=spelling, topic=self.topics[key], members=members,
                  ops=self.ops.get(key, []), voiced=self.voiced.get(key, []), modes=modes, **tail)
        if not already:  # a room already joined: the info only (section 6.2)
            self.send("history", self.rooms[key][-self.JOIN_HISTORY:], room=spelling, **tail)


def name_is_account(server: AccountFakeServer) -> bool:
    return server.name.lower() in server.accounts


class AccountsClientTests(BrowserCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = AccountFakeServer()
        self.raw = self.new_page()
        self.server.attach(self.raw)
        self.raw.goto(f"{FAKE_ORIGIN}/")
        self.page = AccountPage(self, self.raw)

    def requests(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.server.requests if r["request"] == kind]

    def wait_request(self, kind: str, count: int) -> None:
        # Playwright runs the scripted server's handlers only while it is
        # waited on: poll through the page, not with time.sleep.
        for _ in range(200):
            if len(self.requests(kind)) >= count:
                return
            self.raw.wait_for_timeout(50)
        raise AssertionError(f"timed out waiting for {count} {kind} requests: {self.server.requests}")

    def event(self, response: str, content: Any, **extra: Any) -> None:
        self.server.send(response, content, **extra)

    def test_without_accounts_there_is_no_password_field(self) -> None:
        plain = FakeServer()  # its hello lists no "accounts"
        raw = self.new_page()
        plain.attach(raw)
        raw.goto(f"{FAKE_ORIGIN}/")
        page = AccountPage(self, raw)
        raw.wait_for_function("() => document.getElementById('status').textContent === 'connected'")
        self.assertTrue(raw.locator("#login-password").is_hidden())
        self.assertTrue(raw.locator("#register-button").is_hidden())
        page.login("amy")
        self.assertEqual(raw.text_content("#account-kind"), "guest")
        self.assertTrue(raw.locator("#password-box").is_hidden())
        self.assertNotIn("password", [r for r in plain.requests if r["request"] == "login"][0])
        # With accounts, the field is there, and a password input.
        self.page.page.locator("#login-password").wait_for()
        self.assertEqual(self.page.page.get_attribute("#login-password", "type"), "password")

    def test_reconnect_logs_in_again_and_keeps_only_the_rooms_the_server_restores(self) -> None:
        self.server.accounts["amy"] = "amy's secret words"
        page = self.page
        page.log_in("amy", "amy's secret words")
        login = self.requests("login")[0]
        self.assertEqual(login, {"request": "login", "content": "amy", "password": "amy's secret words", "ref": "login"})
        self.assertEqual(self.server.requests[self.server.requests.index(login) + 1]["request"], "ping")
        self.assertEqual(self.raw.text_content("#account-kind"), "account")
        page.assert_password_hidden("amy's secret words")
        page.join("#dev")
        page.join("#ops")
        self.server.post("#dev", "zed", "dev 0")
        page.wait_text("#dev", "dev 0")
        self.server.drop()
        self.raw.wait_for_function("() => document.getElementById('status').textContent !== 'connected'")
        # While away: amy left #ops (kicked, say), #dev went on, zed wrote to her.
        self.server.account_rooms = ["#dev"]
        for i in range(1, 5):
            self.server.post("#dev", "zed", f"dev {i}")
        self.server.waiting = {"zed": ["psst 1", "psst 2"]}
        before = len(self.server.requests)
        self.server.down = False
        page.wait_text("#dev", "dev 4")
        page.wait_text("#dev", "dev 1")
        self.raw.locator('#rooms li.gone[data-key="#ops"]').wait_for()
        page.wait_notice("#ops", "You are no longer in #ops.")
        self.raw.locator('#dms li[data-key="@zed"] .unread', has_text="2").wait_for()
        self.raw.wait_for_function("() => document.getElementById('status').textContent === 'connected'")
        self.assertEqual(page.texts("#dev"), [f"dev {i}" for i in range(5)])
        page.assert_in_order("#dev")
        self.assertEqual(page.texts("@zed"), ["psst 1", "psst 2"])
        again = self.server.requests[before:]
        # The same login, password and all, from memory; no room joined again.
        self.assertEqual([r for r in again if r["request"] == "login"], [login])
        self.assertEqual([r for r in again if r["request"] == "join"], [])
        self.assertEqual([r["content"].get("after") for r in again if r["request"] == "history" and "room" in r["content"]][:1], [1])
        self.assertEqual(self.raw.text_content("#account-kind"), "account")
        self.assertNotIn("gone", self.raw.locator('#rooms li[data-key="#dev"]').get_attribute("class") or "")
        page.assert_password_hidden("amy's secret words")
        self.raw.screenshot(path=os.path.join(self.artifacts, "account-reconnect-fake.png"))

    def test_a_wrong_password_and_registering(self) -> None:
        self.server.accounts["amy"] = "the right one"
        page = self.page
        self.raw.locator("#login-password").wait_for()
        self.raw.fill("#login-name", "amy")
        self.raw.fill("#login-password", "the wrong one")
        self.raw.press("#login-password", "Enter")
        self.raw.locator("#login-error", has_text="Wrong password for amy.").wait_for()
        self.assertTrue(self.raw.locator("#login-form").is_visible())
        # An account name may have "_" (section 6.4); registering logs in after.
        page.register("new_user", "a fine password")
        self.assertEqual(self.requests("register")[0]["content"], {"username": "new_user", "password": "a fine password"})
        self.assertEqual(self.requests("login")[-1]["password"], "a fine password")
        self.assertEqual(self.raw.text_content("#account-name"), "new_user")
        page.assert_password_hidden("a fine password")
        # A new password: a reconnect then logs in with it.
        self.raw.click("#password-box summary")
        self.raw.fill("#old-password", "not it")
        self.raw.fill("#new-password", "a better password")
        self.raw.press("#new-password", "Enter")
        self.raw.locator("#password-result", has_text="Wrong password.").wait_for()
        self.raw.fill("#old-password", "a fine password")
        self.raw.fill("#new-password", "a better password")
        self.raw.press("#new-password", "Enter")
        self.raw.locator("#password-result", has_text="Password changed").wait_for()
        self.assertEqual((self.raw.input_value("#old-password"), self.raw.input_value("#new-password")), ("", ""))
        logins = len(self.requests("login"))
        self.server.drop()
        self.raw.wait_for_function("() => document.getElementById('status').textContent !== 'connected'")
        self.server.down = False
        self.wait_request("login", logins + 1)
        self.raw.wait_for_function("() => document.getElementById('status').textContent === 'connected'")
        self.assertEqual(self.requests("login")[-1]["password"], "a better password")
        self.assertTrue(self.raw.locator("#message").is_visible())
        page.assert_password_hidden("a better password")
        page.assert_password_hidden("a fine password")

    def test_roles_modes_invites_sessions_and_a_mute(self) -> None:
        dialogs: list[str] = []

        def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        self.raw.on("dialog", on_dialog)
        self.server.room("#dev", members=("zed",))
        self.server.ops["#dev"] = ["zed"]
        self.server.voiced["#dev"] = ["amy"]
        page = self.page
        page.login("amy")
        page.join("#dev")
        self.assertEqual((page.prefix("zed"), page.prefix("amy")), ("@", "+"))
        self.assertEqual(page.users(), ["zed", "amy"])
        self.assertEqual(self.raw.locator("#users button.member-actions").count(), 0)
        # zed ops amy: her menu for zed appears.
        self.event("mode", {"room": "#dev", "by": "zed", "user": "amy", "op": True})
        page.wait_prefix("amy", "@")
        self.raw.locator('#users button.member-actions[data-user="zed"]').wait_for()
        page.wait_notice("#dev", "zed made you an operator")
        self.assertEqual(self.raw.text_content("#room-state"), "You are an operator")
        self.event("mode", {"room": "#dev", "by": "zed", "modes": {"moderated": True}})
        page.wait_notice("#dev", "zed set the room moderated on")
        self.assertTrue(self.raw.is_checked('#modes input[data-flag="moderated"]'))
        # Someone new while ops are here: nothing to ask. An op coming back
        # (an account keeps op) is checked with a join of the room.
        self.server.members["#dev"].append("yan")
        self.event("presence", {"user": "yan", "status": "online", "room": "#dev"})
        self.event("presence", {"user": "zed", "status": "offline", "room": "#dev"})
        self.raw.locator("#users li", has_text="zed").wait_for(state="detached")
        self.server.ops["#dev"] = ["amy"]  # zed was a guest: his op ended
        self.event("presence", {"user": "zed", "status": "online", "room": "#dev"})
        self.wait_request("join", 2)
        self.assertEqual(self.requests("join")[-1], {"request": "join", "content": "#dev", "ref": "refresh|#dev"})
        page.wait_prefix("zed", "")
        self.assertEqual(sorted(page.users()), ["amy", "yan", "zed"])
        self.raw.wait_for_timeout(500)
        self.assertEqual(len(self.requests("join")), 2)  # yan's arrival asked nothing
        # The member menu sends the request for that member.
        page.act("zed", "ban", comment="flood", duration="3600")
        self.wait_request("ban", 1)
        self.assertEqual(self.requests("ban")[0]["content"], {"room": "#dev", "user": "zed", "comment": "flood", "duration": 3600})
        self.assertTrue(self.raw.locator("#member-menu").is_hidden())
        # An invitation, its sender's name shown as text.
        self.event("invite", {"room": "#secret", "by": "<img src=x onerror=alert(1)>"})
        invitation = self.raw.locator('#invites li[data-room="#secret"]')
        invitation.wait_for()
        self.assertEqual(invitation.locator(".invite-text").text_content(), "#secret from <img src=x onerror=alert(1)>")
        self.assertEqual(self.raw.locator("img").count(), 0)
        invitation.locator("button", has_text="Join").click()
        page.wait_current("#secret")
        self.assertEqual(self.requests("join")[-1]["content"], "#secret")
        self.assertTrue(self.raw.locator("#invites-box").is_hidden())
        # Another session of the name joins #ops, then parts it (no ref: not ours).
        page.switch("#dev")
        self.server.room("#ops")
        self.event("info", "Joined #ops", room="#ops", topic="", members=["amy"], ops=["amy"], voiced=[], modes={})
        self.event("history", [], room="#ops")
        self.raw.locator('#rooms li[data-key="#ops"]').wait_for()
        self.assertEqual(page.current(), "#dev")
        self.event("info", "Left #ops", room="#ops")
        self.raw.locator('#rooms li[data-key="#ops"]').wait_for(state="detached")
        # A mute, then our own message getting through ends it here.
        self.event("info", "You were muted in #dev by zed", room="#dev", by="zed")
        page.alert("You were muted in #dev by zed")
        self.assertEqual(self.raw.text_content("#room-state"), "You are muted here")
        page.say("am I back?")
        page.wait_text("#dev", "am I back?")
        self.raw.locator('#rooms li[data-key="#dev"] .state').wait_for(state="detached")
        self.assertEqual(self.raw.text_content("#room-state"), "You are an operator")
        self.raw.screenshot(path=os.path.join(self.artifacts, "moderation-fake.png"))
        # Kicked from #lobby: the server closes, the page does not log in again by itself.
        connections = self.server.connections
        self.event("info", "You were kicked from #lobby by root: bye", room="#lobby", by="root", comment="bye")
        self.server.hang_up()
        self.raw.locator("#login-error", has_text="You were kicked from #lobby by root: bye").wait_for()
        self.assertTrue(self.raw.locator("#login-form").is_visible())
        self.raw.wait_for_timeout(1500)
        self.assertEqual(self.server.connections, connections)
        self.assertEqual(self.raw.text_content("#status"), "disconnected")
        page.login("amy")  # her choice: a new connection
        self.assertEqual(self.server.connections, connections + 1)
        self.assertEqual(dialogs, [])

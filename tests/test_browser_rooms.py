"""The browser client's rooms and direct messages, in headless Chromium.

Two parts:

- :class:`RoomsClientTests` drives the page against a scripted stand-in
  for the server (Playwright's WebSocket routing: no chatd process), so
  the client's own rules are checked exactly and quickly: one list per
  conversation, unread counts, scroll kept across switches, DMs keyed
  case-insensitively, topics, parting, and a resume whose join history,
  history pages and live messages arrive interleaved.
- :class:`RoomsEndToEndTests` runs a real ``twistd chatd``: two pages in
  two rooms and a DM between them, a TCP user in one room, switching
  rooms, and a server restart after which every room is resumed without
  duplicates, including what was sent while the pages were away (the
  pages are held off the restarted server until then, so "away" is
  certain). Screenshots are written to ``$CHATD_ARTIFACTS``.

Skipped without Chromium, except under CI (as tests/test_browser.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import DEADLINE, LinesClient, ServerProcess, can_connect, free_port, wait_for
from tests.test_browser import CHROMIUM, FLAGS, TIMEOUT_MS, _require_browser

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chatd", "static")
FAKE_ORIGIN = "http://chatd.test"

# JavaScript run in the page: the ids and texts shown in one conversation's list.
IDS_JS = "(key) => Array.from(document.querySelectorAll('#messages ol')).filter(l => l.dataset.key === key)" \
    ".flatMap(l => Array.from(l.querySelectorAll('li.message'))).map(li => Number(li.dataset.id))"
TEXTS_JS = "(key) => Array.from(document.querySelectorAll('#messages ol')).filter(l => l.dataset.key === key)" \
    ".flatMap(l => Array.from(l.querySelectorAll('li.message .text'))).map(el => el.textContent)"


class ClientPage:
    """One browser page of the chat client, with the steps a person takes."""

    def __init__(self, test: SynchronousTestCase, page: Any) -> None:
        self.test = test
        self.page = page

    def login(self, name: str) -> None:
        self.page.fill("#login-name", name)
        self.page.press("#login-name", "Enter")
        self.page.wait_for_selector("#message", state="visible")

    def join(self, room: str) -> None:
        self.page.fill("#join-name", room)
        self.page.press("#join-name", "Enter")
        self.wait_current(("#" + room.lstrip("#")).lower())

    def switch(self, key: str) -> None:
        self.page.locator(f'#rooms li[data-key="{key}"] button, #dms li[data-key="{key}"] button').click()
        self.wait_current(key)

    def wait_current(self, key: str) -> None:
        self.page.locator(f'.convs li.current[data-key="{key}"]').wait_for()
        self.page.wait_for_function(
            "(key) => Array.from(document.querySelectorAll('#messages ol')).some(l => l.dataset.key === key && !l.hidden)",
            arg=key,
        )

    def current(self) -> str:
        return str(self.page.locator(".convs li.current").get_attribute("data-key"))

    def say(self, text: str) -> None:
        self.page.fill("#message", text)
        self.page.press("#message", "Enter")

    def ids(self, key: str) -> list[int]:
        return list(self.page.evaluate(IDS_JS, key))

    def texts(self, key: str) -> list[str]:
        return list(self.page.evaluate(TEXTS_JS, key))

    def wait_text(self, key: str, text: str) -> None:
        self.page.wait_for_function(f"(a) => ({TEXTS_JS})(a[0]).includes(a[1])", arg=[key, text])

    def unread(self, key: str) -> int:
        badge = self.page.locator(f'.convs li[data-key="{key}"] .unread')
        return 0 if badge.is_hidden() else int(badge.text_content() or "0")

    def conversations(self) -> list[str]:
        return [str(k) for k in self.page.locator(".convs li").evaluate_all("els => els.map(e => e.dataset.key)")]

    def users(self) -> list[str]:
        return [t.strip() for t in self.page.locator("#users li").all_text_contents()]

    def assert_in_order(self, key: str) -> None:
        """Each id once, in increasing order: nothing shown twice."""
        ids = self.ids(key)
        self.test.assertEqual(ids, sorted(set(ids)), f"ids of {key}: {ids}")


class BrowserCase(SynchronousTestCase):
    def setUp(self) -> None:
        _require_browser()
        from playwright.sync_api import sync_playwright

        self.artifacts = os.environ.get("CHATD_ARTIFACTS", os.path.abspath("browser-artifacts"))
        os.makedirs(self.artifacts, exist_ok=True)
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        self.addCleanup(self.browser.close)

    def new_page(self) -> Any:
        page = self.browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        return page


# ---------------------------------------------------------------------------
# The client against a scripted server


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class FakeServer:
    """Just enough of PROTOCOL.md §5-§6 to drive one page, deterministically.

    Rooms hold their messages (ids per room from 1); ``join`` answers the
    room's info and its newest :attr:`JOIN_HISTORY` messages; ``history``
    pages :attr:`PAGE` messages at a time (smaller than the client asks,
    as a server may clamp), so a resume takes several pages. While
    :attr:`down` the page's connections are refused. Every request is kept
    in :attr:`requests`.
    """

    JOIN_HISTORY = 3
    PAGE = 2

    def __init__(self) -> None:
        self.rooms: dict[str, list[dict[str, Any]]] = {"#lobby": []}
        self.spelling: dict[str, str] = {"#lobby": "#lobby"}
        self.topics: dict[str, str] = {"#lobby": ""}
        self.members: dict[str, list[str]] = {"#lobby": []}
        self.dm_ids: dict[str, int] = {}
        self.socket: Any = None
        self.name = ""
        self.joined: set[str] = set()
        self.down = False
        self.requests: list[dict[str, Any]] = []

    # -- what the test does --

    def attach(self, page: Any) -> None:
        page.route(f"{FAKE_ORIGIN}/**", self.serve_file)
        page.route_web_socket(f"{FAKE_ORIGIN.replace('http', 'ws')}/ws", self.connect)

    def room(self, spelling: str, topic: str = "", members: tuple[str, ...] = ()) -> None:
        key = spelling.lower()
        self.spelling[key] = spelling
        self.rooms.setdefault(key, [])
        self.topics[key] = topic
        self.members[key] = list(members)

    def post(self, room: str, sender: str, text: str) -> dict[str, Any]:
        """A message in ``room`` from someone, sent live if the page is in it."""
        key = room.lower()
        message: dict[str, Any] = {
            "timestamp": _now(), "sender": sender, "response": "message", "content": text,
            "id": len(self.rooms[key]) + 1,
        }
        if key != "#lobby":
            message["room"] = self.spelling[key]
        self.rooms[key].append(message)
        if self.socket is not None and (key == "#lobby" or key in self.joined):
            self.socket.send(json.dumps(message))
        return message

    def dm(self, sender: str, to: str, text: str, ref: Any = None) -> None:
        pair = "|".join(sorted([sender.lower(), to.lower()]))
        self.dm_ids[pair] = self.dm_ids.get(pair, 0) + 1
        message = {"timestamp": _now(), "sender": sender, "response": "message", "content": text,
                   "id": self.dm_ids[pair], "to": to}
        if ref is not None:
            message["ref"] = ref
        if self.socket is not None:
            self.socket.send(json.dumps(message))

    def send(self, response: str, content: Any, **extra: Any) -> None:
        self.socket.send(json.dumps({"timestamp": _now(), "sender": "server", "response": response,
                                     "content": content, **extra}))

    def drop(self) -> None:
        """The server goes away: the page's socket closes, new ones are refused."""
        self.down = True
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    # -- the page's side --

    def serve_file(self, route: Any) -> None:
        path = route.request.url[len(FAKE_ORIGIN):].split("?")[0].lstrip("/") or "index.html"
        types = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        full = os.path.join(STATIC_DIR, os.path.basename(path))
        if not os.path.exists(full):
            route.fulfill(status=404, body="")
            return
        with open(full, "rb") as f:
            route.fulfill(status=200, body=f.read(), content_type=types[full.rsplit(".", 1)[1]])

    def connect(self, ws: Any) -> None:
        if self.down:
            ws.close()
            return
        self.socket = ws
        self.joined = set()  # a new session: guests' rooms are not kept
        ws.on_message(lambda text: self.receive(ws, text))

    def receive(self, ws: Any, text: str | bytes) -> None:
        if ws is not self.socket:
            return
        request = json.loads(text)
        self.requests.append(request)
        ref = request.get("ref")
        tail = {} if ref is None else {"ref": ref}
        kind, content = request["request"], request.get("content")
        if kind == "hello":
            self.send("hello", {"protocol": 2, "features": ["rooms", "dm", "topic"]}, **tail)
        elif kind == "login":
            self.name = content
            self.send("info", f"Login successful. You are now logged in as {content}", **tail)
            self.send("history", self.rooms["#lobby"][-self.JOIN_HISTORY:], **tail)
        elif kind == "names":
            self.send("info", self.name, **tail)
        elif kind == "join":
            self.join(content, tail)
        elif kind == "part":
            self.joined.discard(content.lower())
            self.send("info", f"Left {self.spelling[content.lower()]}", room=self.spelling[content.lower()], **tail)
        elif kind == "topic":
            self.topic(content, tail)
        elif kind == "history":
            self.history(content, tail)
        elif kind == "msg" and "to" in request:
            self.dm(self.name, request["to"], content, ref)
        elif kind == "msg":
            self.post(request.get("room", "#lobby"), self.name, content)

    def join(self, room: str, tail: dict[str, Any]) -> None:
        key = room.lower()
        if key not in self.rooms:
            self.room(room)
        self.joined.add(key)
        spelling = self.spelling[key]
        self.send("info", f"Joined {spelling}", room=spelling, topic=self.topics[key],
                  members=[*self.members[key], self.name], ops=[], voiced=[], modes={}, **tail)
        self.send("history", self.rooms[key][-self.JOIN_HISTORY:], room=spelling, **tail)

    def topic(self, content: dict[str, Any], tail: dict[str, Any]) -> None:
        key = content["room"].lower()
        spelling = self.spelling[key]
        if "topic" not in content:
            self.send("info", f"Topic of {spelling}", room=spelling, topic=self.topics[key], by=None,
                      set_at=None, **tail)
            return
        self.topics[key] = content["topic"]
        self.send("info", f"Topic of {spelling} set", room=spelling, **tail)
        self.send("topic", {"room": spelling, "topic": content["topic"], "by": self.name})

    def history(self, content: dict[str, Any], tail: dict[str, Any]) -> None:
        key = content.get("room", "#lobby").lower()
        newer = [m for m in self.rooms[key] if m["id"] > content["after"]]
        extra = {} if key == "#lobby" else {"room": self.spelling[key]}
        self.send("history", newer[: self.PAGE], more=len(newer) > self.PAGE, **extra, **tail)


class RoomsClientTests(BrowserCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = FakeServer()
        self.raw = self.new_page()
        self.server.attach(self.raw)
        self.raw.goto(f"{FAKE_ORIGIN}/")
        self.page = ClientPage(self, self.raw)

    def requests(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.server.requests if r["request"] == kind]

    def test_rooms_switching_unread_topic_and_part(self) -> None:
        self.server.room("#Dev", topic="Release 0.5", members=("zed",))
        for i in range(5):
            self.server.post("#Dev", "zed", f"old {i}")
        page = self.page
        page.login("amy")
        self.assertEqual(page.conversations(), ["#lobby"])
        self.assertTrue(self.raw.locator("#part").is_hidden())  # #lobby cannot be parted
        # A name without "#" is completed; the server's spelling is shown.
        page.join("dev")
        self.assertEqual(self.requests("join")[-1]["content"], "#dev")
        self.assertEqual(self.raw.text_content("#conv-title"), "#Dev")
        self.assertEqual(self.raw.text_content("#topic"), "Release 0.5")
        self.assertEqual(page.users(), ["zed", "amy"])
        self.assertEqual(page.texts("#dev"), ["old 2", "old 3", "old 4"])  # the join's history
        self.assertEqual(page.unread("#dev"), 0)  # the room's past is not news
        # A bad room name is refused before anything is sent.
        self.raw.fill("#join-name", "#no spaces")
        self.raw.press("#join-name", "Enter")
        self.assertIn("room name", self.raw.text_content("#chat-error") or "")
        self.assertEqual(len(self.requests("join")), 1)
        # Messages to a room not on screen count as unread, and the lists stay apart.
        page.switch("#lobby")
        self.server.post("#Dev", "zed", "while you look away")
        self.server.post("#lobby", "zed", "in the lobby")
        page.wait_text("#lobby", "in the lobby")
        self.raw.locator('#rooms li[data-key="#dev"] .unread', has_text="1").wait_for()
        self.assertEqual(page.texts("#lobby"), ["in the lobby"])
        self.assertEqual(self.raw.title(), "(1) chatd")
        # Sending goes to the room on screen: #lobby as a plain msg, others with "room".
        page.say("hello lobby")
        page.wait_text("#lobby", "hello lobby")
        self.assertNotIn("room", self.requests("msg")[-1])
        page.switch("#dev")
        self.assertEqual(page.unread("#dev"), 0)
        self.assertEqual(page.texts("#dev"), ["old 2", "old 3", "old 4", "while you look away"])
        page.say("<b>bold</b> & <img src=x onerror=alert(1)>")
        page.wait_text("#dev", "<b>bold</b> & <img src=x onerror=alert(1)>")
        self.assertEqual(self.requests("msg")[-1]["room"], "#Dev")
        self.assertEqual(self.raw.locator("#messages img, #messages b").count(), 0)
        # The topic: "/topic text" sets it; the topic response updates the header.
        page.say("/topic Freeze <Friday>")
        self.raw.locator("#topic", has_text="Freeze <Friday>").wait_for()
        self.assertEqual(self.requests("topic")[-1]["content"], {"room": "#Dev", "topic": "Freeze <Friday>"})
        self.assertIn("amy set the topic: Freeze <Friday>", self.raw.locator('#messages ol[data-key="#dev"] li.notice').all_text_contents())
        # Parting: the room goes, #lobby is shown.
        self.raw.click("#part")
        page.wait_current("#lobby")
        self.assertEqual(self.requests("part")[-1]["content"], "#Dev")
        self.assertEqual(page.conversations(), ["#lobby"])

    def test_switching_keeps_the_scroll_position(self) -> None:
        self.server.room("#dev")
        self.page.login("amy")
        self.page.join("#dev")
        for i in range(60):
            self.server.post("#dev", "zed", f"line {i}")
        self.page.wait_text("#dev", "line 59")
        dev = self.raw.locator('#messages ol[data-key="#dev"]')
        # It followed the new messages to the bottom; now read back a little.
        self.assertGreater(dev.evaluate("l => l.scrollTop"), 200)
        dev.evaluate("l => { l.scrollTop = 120; }")
        self.page.switch("#lobby")
        self.server.post("#dev", "zed", "arrives while away")
        self.raw.locator('#rooms li[data-key="#dev"] .unread', has_text="1").wait_for()
        self.page.switch("#dev")
        self.assertEqual(dev.evaluate("l => l.scrollTop"), 120)
        self.assertEqual(self.page.texts("#dev"), [f"line {i}" for i in range(60)] + ["arrives while away"])
        # A list left at the bottom follows what came while it was hidden.
        dev.evaluate("l => { l.scrollTop = l.scrollHeight; }")
        self.page.switch("#lobby")
        for i in range(5):
            self.server.post("#dev", "zed", f"more {i}")
        self.raw.locator('#rooms li[data-key="#dev"] .unread', has_text="5").wait_for()
        self.page.switch("#dev")
        self.assertTrue(dev.evaluate("l => l.scrollHeight - l.scrollTop - l.clientHeight < 5"))

    def test_direct_messages_are_conversations_of_their_own(self) -> None:
        self.server.room("#dev", members=("Zed",))
        self.page.login("amy")
        self.page.join("#dev")
        # A DM from someone opens a conversation keyed by their name, unread.
        self.server.dm("Zed", "amy", "psst")
        self.raw.locator('#dms li[data-key="@zed"] .unread', has_text="1").wait_for()
        self.assertEqual(self.page.current(), "#dev")
        self.assertEqual(self.page.texts("#dev"), [])
        # Clicking the name in the member list opens the same conversation.
        self.raw.locator("#users button", has_text="Zed").click()
        self.page.wait_current("@zed")
        self.assertEqual(self.page.texts("@zed"), ["psst"])
        self.assertEqual(self.page.unread("@zed"), 0)
        self.assertEqual(self.page.users(), ["amy", "Zed"])
        # Our reply goes "to" them; its echo (to: Zed, from us) lands here too.
        self.page.say("hi there")
        self.page.wait_text("@zed", "hi there")
        self.assertEqual(self.requests("msg")[-1], {"request": "msg", "content": "hi there", "to": "Zed"})
        self.assertEqual(self.page.ids("@zed"), [1, 2])
        # DM ids are per conversation: another person's id 1 is not a repeat.
        self.server.dm("bob", "amy", "me too")
        self.page.wait_text("@bob", "me too")
        self.assertEqual(self.page.ids("@bob"), [1])
        # "/topic" is for rooms; closing a DM only hides it here.
        self.page.say("/topic nope")
        self.raw.locator("#chat-error", has_text="Only rooms").wait_for()
        self.assertEqual(self.requests("topic")[-1]["content"], {"room": "#lobby"})  # only the login's read
        self.raw.click("#part")
        self.page.wait_current("#lobby")
        self.assertEqual(self.page.conversations(), ["#lobby", "#dev", "@bob"])

    def test_resume_pages_every_room_once(self) -> None:
        for room in ("#dev", "#ops"):
            self.server.room(room)
        page = self.page
        page.login("amy")
        self.server.post("#lobby", "zed", "lobby 0")
        page.join("#dev")
        page.join("#ops")
        self.server.post("#dev", "zed", "dev 0")
        self.server.post("#ops", "zed", "ops 0")
        page.wait_text("#ops", "ops 0")
        page.wait_text("#dev", "dev 0")
        self.server.drop()
        self.raw.wait_for_function("document.getElementById('status').textContent !== 'connected'")
        # While the page is away: more than a join's history in #dev (so the
        # resume's pages and the join's newest messages overlap and interleave).
        for i in range(1, 9):
            self.server.post("#dev", "zed", f"dev {i}")
        self.server.post("#ops", "zed", "ops 1")
        for i in range(1, 4):
            self.server.post("#lobby", "zed", f"lobby {i}")
        before = len(self.server.requests)
        self.server.down = False
        page.wait_text("#dev", "dev 8")
        page.wait_text("#dev", "dev 1")
        page.wait_text("#ops", "ops 1")
        page.wait_text("#lobby", "lobby 3")
        self.raw.wait_for_function("document.getElementById('status').textContent === 'connected'")
        self.assertEqual(page.texts("#dev"), [f"dev {i}" for i in range(9)])
        self.assertEqual(page.texts("#ops"), ["ops 0", "ops 1"])
        self.assertEqual(page.texts("#lobby"), [f"lobby {i}" for i in range(4)])
        for key in ("#lobby", "#dev", "#ops"):
            page.assert_in_order(key)
        # What came while away is unread (#ops is on screen; "dev 0" was unread already).
        self.assertEqual((page.unread("#dev"), page.unread("#lobby"), page.unread("#ops")), (9, 3, 0))
        # Every room but #lobby joined again; each paged from its own last id.
        again = self.server.requests[before:]
        self.assertEqual(sorted(r["content"] for r in again if r["request"] == "join"), ["#dev", "#ops"])
        first_pages: dict[str, int] = {}
        for r in again:
            if r["request"] == "history":
                first_pages.setdefault(r["content"].get("room", "#lobby"), r["content"]["after"])
        self.assertEqual(first_pages, {"#lobby": 1, "#dev": 1, "#ops": 1})
        # Live messages after the return still arrive, once.
        self.server.post("#ops", "zed", "ops 2")
        page.wait_text("#ops", "ops 2")
        self.assertEqual(page.texts("#ops"), ["ops 0", "ops 1", "ops 2"])


# ---------------------------------------------------------------------------
# A real server


class RoomsEndToEndTests(BrowserCase):
    def setUp(self) -> None:
        super().setUp()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.web_port = free_port()
        self.server = self.start_server()
        self.gate_open = True

    def start_server(self) -> ServerProcess:
        # A join's history is the newest 5 messages: the resume after a
        # restart has to page the rest from the last id seen.
        server = ServerProcess(
            self.workdir, "--web", f"tcp:{self.web_port}:interface=127.0.0.1", "--history-on-login", "5"
        ).start()
        self.addCleanup(server.kill)
        wait_for(lambda: can_connect(self.web_port), "the web listener")
        return server

    def open_page(self, name: str) -> ClientPage:
        raw = self.new_page()
        raw.goto(f"http://127.0.0.1:{self.web_port}/")
        page = ClientPage(self, raw)
        page.login(name)
        return page

    def gate(self, ws: Any) -> None:
        """Hold a page off the server until the test opens the gate."""
        if self.gate_open:
            ws.connect_to_server()
        else:
            ws.close()

    def terminal(self, name: str, *rooms: str) -> LinesClient:
        client = LinesClient(self.server.port)
        self.addCleanup(client.close)
        client.send("hello", {"protocol": 2, "client": "test"})
        self.assertEqual(client.receive()["response"], "hello")
        client.send("login", name)
        self.assertEqual(client.receive()["response"], "info")
        self.assertEqual(client.receive()["response"], "history")
        for room in rooms:
            client.send("join", room)
            joined = client.receive()
            self.assertEqual((joined["response"], joined.get("room", "").lower()), ("info", room.lower()), joined)
            self.assertEqual(client.receive()["response"], "history")
        return client

    def term_say(self, client: LinesClient, text: str, room: str | None = None) -> dict[str, Any]:
        """Send as the TCP user; its own echo back (others' messages skipped)."""
        extra = {} if room is None else {"room": room}
        end = time.monotonic() + DEADLINE
        client.send("msg", text, **extra)
        while time.monotonic() < end:
            response = client.receive()
            if response.get("code") == "rate_limited":
                time.sleep(0.2)
                client.send("msg", text, **extra)
            elif response.get("response") == "error":
                raise AssertionError(f"msg {text!r}: {response}")
            elif response.get("response") == "message" and response.get("content") == text:
                return response
        raise AssertionError(f"no echo of {text!r}")

    def test_two_rooms_a_dm_a_terminal_and_a_restart(self) -> None:
        alice = self.open_page("alice")
        bob = self.open_page("bob")
        alice.join("#dev")
        alice.join("#ops")
        bob.join("#ops")
        term = self.terminal("term", "#dev")
        # The TCP user talks in #dev; alice, looking at #ops, sees it as unread.
        for i in range(3):
            self.term_say(term, f"dev {i}", "#dev")
        alice.wait_text("#dev", "dev 2")
        self.assertEqual(alice.unread("#dev"), 3)
        bob.say("ops from bob")
        alice.wait_text("#ops", "ops from bob")
        alice.page.locator("#users li", has_text="bob").wait_for()
        self.assertEqual(sorted(alice.users()), ["alice", "bob"])
        # bob is not in #dev: no such conversation, none of its messages.
        self.assertEqual(bob.conversations(), ["#lobby", "#ops"])
        self.assertEqual(bob.texts("#ops"), ["ops from bob"])
        # Switching keeps each room's messages.
        alice.switch("#dev")
        self.assertEqual(alice.unread("#dev"), 0)
        self.assertEqual(sorted(alice.users()), ["alice", "term"])
        alice.say("dev from alice")
        alice.wait_text("#dev", "dev from alice")
        heard = term.receive()
        self.assertEqual((heard["content"], heard["room"]), ("dev from alice", "#dev"))
        alice.switch("#ops")
        self.assertEqual(alice.texts("#ops"), ["ops from bob"])
        alice.switch("#dev")
        self.assertEqual(alice.texts("#dev"), ["dev 0", "dev 1", "dev 2", "dev from alice"])
        # A DM: bob clicks alice in the #ops member list.
        bob.page.locator("#users button", has_text="alice").click()
        bob.wait_current("@alice")
        bob.say("psst alice")
        bob.wait_text("@alice", "psst alice")
        alice.page.locator('#dms li[data-key="@bob"] .unread', has_text="1").wait_for()
        alice.switch("@bob")
        self.assertEqual(alice.texts("@bob"), ["psst alice"])
        alice.say("hi bob")
        bob.wait_text("@alice", "hi bob")
        for page, rooms in ((alice, ("#lobby", "#dev", "#ops")), (bob, ("#lobby", "#ops"))):
            for key in rooms:
                self.assertNotIn("psst alice", page.texts(key))
        alice.page.screenshot(path=os.path.join(self.artifacts, "rooms.png"))

        # The server restarts; the pages are held off until messages were
        # sent without them, in every room they are in.
        self.gate_open = False
        for page in (alice, bob):
            page.page.route_web_socket("**/ws", self.gate)
        self.server.stop()
        for page in (alice, bob):
            page.page.wait_for_function("document.getElementById('status').textContent !== 'connected'")
        self.server = self.start_server()
        term = self.terminal("term", "#dev", "#ops")
        for i in range(8):  # more than a join's history (5)
            self.term_say(term, f"away dev {i}", "#dev")
        self.term_say(term, "away ops", "#ops")
        self.term_say(term, "away lobby")
        self.gate_open = True
        alice.wait_text("#dev", "away dev 7")
        alice.wait_text("#dev", "away dev 0")
        alice.wait_text("#ops", "away ops")
        alice.wait_text("#lobby", "away lobby")
        bob.wait_text("#ops", "away ops")
        for page in (alice, bob):
            page.page.wait_for_function("document.getElementById('status').textContent === 'connected'")
        self.assertEqual(
            alice.texts("#dev"),
            ["dev 0", "dev 1", "dev 2", "dev from alice", *[f"away dev {i}" for i in range(8)]],
        )
        self.assertEqual(alice.texts("#ops"), ["ops from bob", "away ops"])
        self.assertEqual(alice.texts("#lobby"), ["away lobby"])
        self.assertEqual(bob.texts("#ops"), ["ops from bob", "away ops"])
        self.assertEqual(alice.texts("@bob"), ["psst alice", "hi bob"])  # kept on the page
        for page, keys in ((alice, ("#lobby", "#dev", "#ops", "@bob")), (bob, ("#lobby", "#ops", "@alice"))):
            for key in keys:
                page.assert_in_order(key)
        # alice is looking at the DM: what she missed is counted per room.
        self.assertEqual((alice.unread("#dev"), alice.unread("#ops"), alice.unread("#lobby")), (8, 1, 1))
        # After the return: live room messages, and DMs both ways.
        self.term_say(term, "after the return", "#dev")
        alice.wait_text("#dev", "after the return")
        bob.say("back again")
        alice.wait_text("@bob", "back again")
        alice.say("welcome back")
        bob.wait_text("@alice", "welcome back")
        alice.assert_in_order("#dev")
        alice.assert_in_order("@bob")
        alice.switch("#dev")
        alice.page.screenshot(path=os.path.join(self.artifacts, "rooms-resumed.png"))

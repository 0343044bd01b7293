"""A real browser: headless Chromium (Debian's) driven by Playwright.

Two browser pages and a TCP client chat; a message with HTML shows as
text; the page reconnects after a server restart and resumes, keeping
earlier messages and showing none twice. Screenshots are written to
``$CHATD_ARTIFACTS`` (default: ``browser-artifacts`` in the test's
working directory).

Skipped when Chromium is not installed, except under CI, where its
absence is a failure (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e import can_connect, LinesClient, ServerProcess, free_port, wait_for

CHROMIUM = os.environ.get("CHATD_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 20_000


def _require_browser() -> None:
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            raise AssertionError(f"Chromium is missing at {CHROMIUM}: .ci/run should install it")
        raise SkipTest(f"no Chromium at {CHROMIUM}")
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        raise SkipTest("playwright is not installed")


class BrowserTests(SynchronousTestCase):
    def setUp(self) -> None:
        _require_browser()
        from playwright.sync_api import sync_playwright

        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.artifacts = os.environ.get("CHATD_ARTIFACTS", os.path.abspath("browser-artifacts"))
        os.makedirs(self.artifacts, exist_ok=True)
        self.web_port = free_port()
        self.server = self.start_server()
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        self.addCleanup(self.browser.close)

    def start_server(self) -> ServerProcess:
        server = ServerProcess(self.workdir, "--web", f"tcp:{self.web_port}:interface=127.0.0.1").start()
        self.addCleanup(server.kill)
        wait_for(lambda: can_connect(self.web_port), "the web listener")
        return server

    def open_page(self, name: str) -> Any:
        page = self.browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{self.web_port}/")
        first_text_input = page.locator("input[type=text]:visible").first
        self.assertEqual(first_text_input.get_attribute("id"), "login-name")
        self.assertFalse(page.locator("#message").is_visible())
        first_text_input.fill(name)
        first_text_input.press("Enter")
        page.wait_for_selector("#message", state="visible")
        self.assertFalse(page.locator("#login-name").is_visible())
        return page

    def say(self, page: Any, text: str) -> None:
        page.fill("#message", text)
        page.press("#message", "Enter")

    def texts(self, page: Any) -> list[str]:
        return [text for text in page.locator("#messages li.message .text").all_text_contents()]

    def wait_text(self, page: Any, text: str) -> None:
        page.locator("#messages li.message .text", has_text=text).first.wait_for()

    def terminal(self, name: str) -> LinesClient:
        client = LinesClient(self.server.port)
        self.addCleanup(client.close)
        client.send("login", name)
        client.receive()
        client.receive()
        return client

    def test_two_pages_and_a_terminal_chat(self) -> None:
        alice = self.open_page("alice")
        bob = self.open_page("bob")
        term = self.terminal("term")
        self.say(alice, "hello from alice")
        self.wait_text(bob, "hello from alice")
        self.assertEqual(term.receive()["content"], "hello from alice")
        term.send("msg", "hello from the terminal")
        self.wait_text(alice, "hello from the terminal")
        self.wait_text(bob, "hello from the terminal")
        self.say(bob, "hello from bob")
        self.wait_text(alice, "hello from bob")
        self.assertEqual(term.receive()["content"], "hello from the terminal")
        self.assertEqual(term.receive()["content"], "hello from bob")
        # Sender and HH:MM time are shown; each message once.
        row = alice.locator("#messages li.message", has_text="hello from bob")
        self.assertEqual(row.count(), 1)
        self.assertEqual(row.locator(".sender").text_content(), "bob:")
        self.assertRegex(row.locator(".time").text_content() or "", r"^\d\d:\d\d$")
        # The user list is live.
        alice.locator("#users li", has_text="term").wait_for()
        term.close()
        alice.locator("#users li", has_text="term").wait_for(state="detached")
        self.assertEqual(sorted(alice.locator("#users li").all_text_contents()), ["alice", "bob"])
        alice.screenshot(path=os.path.join(self.artifacts, "chat.png"))

    def test_html_is_shown_as_text(self) -> None:
        page = self.open_page("viewer")
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        attacker = self.terminal("mallory")
        payload = "<img src=x onerror=alert(1)>"
        attacker.send("msg", payload)
        self.wait_text(page, payload)
        self.assertEqual(page.locator("#messages img").count(), 0)
        self.assertEqual(page.locator("#messages li.message .text", has_text=payload).first.text_content(), payload)
        page.wait_for_timeout(300)
        self.assertEqual(dialogs, [])
        page.screenshot(path=os.path.join(self.artifacts, "xss.png"))

    def test_reconnect_and_resume(self) -> None:
        page = self.open_page("steady")
        term = self.terminal("talker")
        for i in range(3):
            term.send("msg", f"before {i}")
            term.receive()
        self.wait_text(page, "before 2")
        self.server.stop()
        page.wait_for_function(
            "['disconnected', 'reconnecting'].some(s => document.getElementById('status').textContent.startsWith(s))"
        )
        page.screenshot(path=os.path.join(self.artifacts, "outage.png"))
        restarted = time.monotonic()
        self.server = self.start_server()  # same data directory, same web port
        term = self.terminal("talker")
        term.send("msg", "while you were away")
        term.receive()
        self.wait_text(page, "while you were away")
        self.assertLess(time.monotonic() - restarted, 15)
        page.wait_for_function("document.getElementById('status').textContent === 'connected'")
        term.send("msg", "after the return")
        self.wait_text(page, "after the return")
        self.assertEqual(self.texts(page), ["before 0", "before 1", "before 2", "while you were away", "after the return"])
        page.screenshot(path=os.path.join(self.artifacts, "resumed.png"))

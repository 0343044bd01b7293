"""End to end: a real IRC client from Debian (``ii``, FIFO and file based)
and a JSON client converse through a real ``twistd chatd --irc``.

In ``#lobby`` and in another room, DMs both ways, and the JSON messages
sent before ``ii`` connected fetched over CHATHISTORY.  ``ii`` keeps one
directory per server, channel and nick, each with an ``in`` FIFO (what we
write is sent) and an ``out`` file (what it received).  Skipped when
``ii`` is not installed (``apt-get install ii``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e import DEADLINE, LinesClient, ServerProcess, can_connect, free_port, wait_for

II = shutil.which("ii")


class IIClient:
    """``ii`` as a child process; its files under ``base``."""

    def __init__(self, base: str, port: int, nick: str) -> None:
        self.base = base
        self.server_dir = os.path.join(base, "127.0.0.1")
        assert II is not None
        self.process = subprocess.Popen(
            [II, "-s", "127.0.0.1", "-p", str(port), "-n", nick, "-f", "ii user", "-i", base],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def path(self, *parts: str) -> str:
        return os.path.join(self.server_dir, *parts)

    def out(self, where: str = "") -> str:
        """What ii wrote for the server (``""``), a channel or a nick."""
        try:
            with open(self.path(where, "out") if where else self.path("out"), encoding="utf-8", errors="replace") as out:
                return out.read()
        except FileNotFoundError:
            return ""

    def write(self, where: str, text: str) -> None:
        """A line into a FIFO: the server's (``""``), a channel's or a nick's."""
        fifo = self.path(where, "in") if where else self.path("in")
        wait_for(lambda: os.path.exists(fifo), f"ii's FIFO {fifo}")
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(descriptor, text.encode("utf-8") + b"\n")
        finally:
            os.close(descriptor)

    def wait_out(self, where: str, text: str) -> None:
        wait_for(lambda: text in self.out(where), f"{text!r} in ii's {where or 'server'} out")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=DEADLINE)


class JSONClient(LinesClient):
    """A v2 JSON client that waits for a given message."""

    def message(self, text: str) -> dict[str, object]:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            response = self.receive()
            if response.get("response") == "message" and response.get("content") == text:
                return response
        raise AssertionError(f"no message {text!r}")


class IIEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        if II is None:
            if os.environ.get("CI"):
                raise AssertionError("ii is missing: .ci/run should install it")
            raise SkipTest("ii is not installed (apt-get install ii)")
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.irc_port = free_port()
        self.server = ServerProcess(
            workdir,
            "--history", "memory",
            "--irc", f"tcp:{self.irc_port}:interface=127.0.0.1",
            "--irc-server-name", "e2e.test",
        ).start()
        self.addCleanup(self.server.stop)
        wait_for(lambda: can_connect(self.irc_port), "the IRC port")
        self.json = JSONClient(self.server.port)
        self.addCleanup(self.json.close)
        self.json.send("hello", {"protocol": 2})
        self.json.receive()
        self.json.send("login", "jason")
        self.assertEqual(self.json.receive()["response"], "info")
        self.json.receive()  # its history
        self.ii_base = os.path.join(workdir, "irc")

    def start_ii(self) -> IIClient:
        client = IIClient(self.ii_base, self.irc_port, "iris")
        self.addCleanup(client.stop)
        client.wait_out("", "Welcome to the chatd IRC network iris")
        client.wait_out("#lobby", "iris")  # autojoined
        return client

    def test_ii_and_json_converse(self) -> None:
        json = self.json
        # Sent before ii connects: ii fetches them over CHATHISTORY below.
        for text in ("early one", "early two"):
            json.send("msg", text)
            json.message(text)
        ii = self.start_ii()

        # #lobby, both ways
        json.send("msg", "hi iris")
        json.message("hi iris")
        ii.wait_out("#lobby", "<jason> hi iris")
        ii.write("#lobby", "hi jason")
        answer = json.message("hi jason")
        self.assertEqual(answer["sender"], "iris")
        self.assertNotIn("room", answer)

        # another room, both ways
        ii.write("", "/j #dev")
        ii.wait_out("#dev", "iris")
        json.send("join", "#dev")
        ii.wait_out("#dev", "jason")
        json.send("msg", "dev from json", room="#dev")
        ii.wait_out("#dev", "<jason> dev from json")
        ii.write("#dev", "dev from ii")
        self.assertEqual(json.message("dev from ii")["room"], "#dev")

        # DMs both ways
        json.send("msg", "dm for iris", to="iris")
        json.message("dm for iris")
        ii.wait_out("jason", "<jason> dm for iris")
        ii.write("jason", "dm for jason")
        dm = json.message("dm for jason")
        self.assertEqual((dm["sender"], dm["to"]), ("iris", "jason"))

        # history of the JSON messages, over CHATHISTORY
        self.assertNotIn("early one", ii.out("#lobby"))
        ii.write("", "/CAP REQ draft/chathistory")
        ii.wait_out("", "ACK draft/chathistory")
        ii.write("", "/CHATHISTORY LATEST #lobby * 10")
        ii.wait_out("#lobby", "<jason> early two")
        lobby = ii.out("#lobby")
        self.assertLess(lobby.index("<jason> early one"), lobby.index("<jason> early two"))

        # ii leaves: the JSON user sees it go
        ii.write("", "/q bye now")
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            response = json.receive(presence=True)
            if response.get("response") == "presence" and response["content"].get("status") == "offline":  # type: ignore[union-attr]
                self.assertEqual(response["content"]["user"], "iris")  # type: ignore[index]
                break
        else:
            self.fail("no presence offline for iris")


class TLSEndToEndTests(SynchronousTestCase):
    """``--irc ssl:...``: IRC over TLS, on the same hub as JSON."""

    def test_irc_over_tls(self) -> None:
        import socket
        import ssl

        from tests.certs import TestCA

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        ca = TestCA(workdir)
        key, cert = ca.issue("localhost")
        port = free_port()
        server = ServerProcess(
            workdir,
            "--history", "memory",
            "--irc", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        ).start()
        self.addCleanup(server.stop)
        wait_for(lambda: can_connect(port), "the IRC TLS port")
        json = JSONClient(server.port)
        self.addCleanup(json.close)
        json.send("hello", {"protocol": 2})
        json.receive()
        json.send("login", "jason")
        json.receive()
        json.receive()
        context = ssl.create_default_context(cafile=ca.path)
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            reader = tls.makefile("rb")
            tls.sendall(b"NICK secure\r\nUSER s 0 * :Secure\r\n")
            seen: list[bytes] = []
            while not any(b" 366 " in line for line in seen):
                seen.append(reader.readline())
            self.assertTrue(any(b" 001 secure " in line for line in seen))
            tls.sendall(b"PRIVMSG #lobby :over tls\r\n")
            self.assertEqual(json.message("over tls")["sender"], "secure")
            json.send("msg", "back over tls")
            while True:
                line = reader.readline()
                self.assertTrue(line, "connection closed")
                if b"PRIVMSG #lobby :back over tls" in line:
                    self.assertTrue(line.startswith(b":jason!jason@json "))
                    break
            tls.sendall(b"QUIT\r\n")

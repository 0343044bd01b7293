"""Rooms and DMs end to end: the real ``twistd chatd`` on loopback.

- A v1 classic client in ``#lobby`` while v2 users chat in ``#dev`` and
  DM each other receives exactly the lobby messages, in the bytes of
  section 4 (no ``room`` key, the field order and separators v1 clients
  have always had).
- Two rooms, 30 interleaved messages each: every member sees its rooms'
  messages once, in id order, a non-member none; after SIGKILL and a
  restart the ids go on and ``join`` replays the newest messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import DEADLINE, LinesClient, ServerProcess

_DECODER = json.JSONDecoder()


def v1_bytes(response: dict[str, Any]) -> bytes:
    """``response`` as chatd has always encoded it for v1 clients."""
    return json.dumps(response, ensure_ascii=True, separators=(", ", ": ")).encode("ascii")


class ClassicReader:
    """A classic client that keeps every byte it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.data = b""

    def send(self, request: str, content: Any = None) -> None:
        self.sock.send(json.dumps({"request": request, "content": content}).encode())

    def objects(self) -> list[tuple[dict[str, Any], bytes]]:
        """Every bare object received so far, with its bytes."""
        found, text, position = [], self.data.decode("ascii"), 0
        while position < len(text):
            value, end = _DECODER.raw_decode(text, position)
            found.append((value, text[position:end].encode("ascii")))
            position = end
        return found

    def read_until(self, count: int) -> list[tuple[dict[str, Any], bytes]]:
        """Read until ``count`` objects arrived (bounded by the deadline)."""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            objects = self.objects() if self.data else []
            if len(objects) >= count:
                return objects
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        raise AssertionError(f"got {len(self.objects())} objects, wanted {count}: {self.data[-500:]!r}")

    def close(self) -> None:
        self.sock.close()


def v2_client(port: int, name: str) -> LinesClient:
    client = LinesClient(port)
    client.send("hello", {"protocol": 2})
    assert client.receive()["response"] == "hello"
    client.send("login", name)
    assert client.receive()["response"] == "info"
    assert client.receive()["response"] == "history"
    return client


def join(client: LinesClient, room: str) -> tuple[dict[str, Any], dict[str, Any]]:
    client.send("join", room)
    info, history = client.receive(), client.receive()
    assert info["response"] == "info" and history["response"] == "history", (info, history)
    return info, history


def messages_of(client: LinesClient, count: int) -> list[dict[str, Any]]:
    return [client.receive() for _ in range(count)]


class RoomsEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess(self.workdir, "--data-dir", self.workdir, *args).start()
        self.addCleanup(server.kill)
        return server

    def test_classic_client_gets_exactly_the_lobby(self) -> None:
        server = self.start()
        classic = ClassicReader(server.port)
        self.addCleanup(classic.close)
        classic.send("login", "classic")
        classic.read_until(2)  # info, history
        alice, bob = v2_client(server.port, "alice"), v2_client(server.port, "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        join(alice, "#dev")
        join(bob, "#dev")
        lobby_texts = []
        for i in range(5):
            alice.send("msg", f"dev {i}", room="#dev")
            bob.send("msg", f"psst {i}", to="alice")
            text = f"lobby {i} \u00e9\U0001f600 \"q\""
            (alice if i % 2 else bob).send("msg", text)
            lobby_texts.append(text)
        alice.send("topic", {"room": "#dev", "topic": "secret plans"})
        # Every v2 message was stored and fanned out before this last one.
        for client in (alice, bob):
            client.send("ping", "sync")
            while client.receive().get("response") != "pong":
                pass
        alice.send("msg", "last lobby line")
        lobby_texts.append("last lobby line")
        got = classic.read_until(2 + len(lobby_texts))
        time.sleep(0.3)  # anything else would have arrived by now
        classic.sock.settimeout(0.2)
        try:
            extra = classic.sock.recv(65536)
        except socket.timeout:
            extra = b""
        self.assertEqual(extra, b"")
        messages = got[2:]
        # Two senders: their lines may interleave either way, each once.
        self.assertEqual(sorted(m["content"] for m, _ in messages), sorted(lobby_texts))
        self.assertEqual(messages[-1][0]["content"], "last lobby line")
        for message, raw in messages:
            self.assertEqual(list(message), ["timestamp", "sender", "response", "content", "id"])
            self.assertEqual(raw, v1_bytes(message))
        self.assertEqual([m["id"] for m, _ in messages], list(range(1, len(lobby_texts) + 1)))
        self.assertNotIn(b"dev", classic.data)
        self.assertNotIn(b"psst", classic.data)
        self.assertNotIn(b"presence", classic.data)

    def test_two_rooms_interleaved_then_sigkill_and_restart(self) -> None:
        unthrottled = ("--msg-rate", "0", "--request-rate", "0")
        server = self.start(*unthrottled)
        alice, bob, carol, dave = (v2_client(server.port, name) for name in ("alice", "bob", "carol", "dave"))
        for client in (alice, bob, carol, dave):
            self.addCleanup(client.close)
        join(alice, "#a")
        join(bob, "#a")
        join(bob, "#B")
        join(carol, "#b")
        for i in range(30):
            alice.send("msg", f"a{i}", room="#a")
            carol.send("msg", f"b{i}", room="#b")
        got = {name: messages_of(client, count) for name, client, count in (("alice", alice, 30), ("bob", bob, 60), ("carol", carol, 30))}
        for name, room, prefix in (("alice", "#a", "a"), ("carol", "#B", "b")):
            self.assertEqual([m["id"] for m in got[name]], list(range(1, 31)))
            self.assertEqual({m["room"] for m in got[name]}, {room})
            self.assertEqual([m["content"] for m in got[name]], [f"{prefix}{i}" for i in range(30)])
        for room in ("#a", "#B"):
            ids = [m["id"] for m in got["bob"] if m["room"] == room]
            self.assertEqual(ids, list(range(1, 31)))
        self.assertEqual(len(got["bob"]), 60)
        dave.send("ping", "end")
        self.assertEqual(dave.receive()["response"], "pong")  # nothing came before it
        self.assertEqual(server.stop(signal.SIGKILL), -signal.SIGKILL)

        server = self.start(*unthrottled)
        erin = v2_client(server.port, "erin")
        self.addCleanup(erin.close)
        erin.send("join", {"room": "#b"})
        info, history = erin.receive(), erin.receive()
        self.assertEqual((info["room"], history["room"]), ("#B", "#B"))
        self.assertEqual([m["id"] for m in history["content"]], list(range(1, 31)))
        self.assertEqual(info["ops"], ["erin"])  # guests' roles end with their sessions
        erin.send("msg", "after the restart", room="#b")
        self.assertEqual(erin.receive()["id"], 31)
        erin.send("history", {"room": "#b", "after": 28})
        page = erin.receive()
        self.assertEqual([m["id"] for m in page["content"]], [29, 30, 31])

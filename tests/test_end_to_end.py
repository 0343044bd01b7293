"""The real ``twistd chatd`` over TCP on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import can_connect, DEADLINE, ClassicClient, LinesClient, ServerProcess, free_port, twistd_command, wait_for


class EndToEndTests(SynchronousTestCase):
    def start_server(self, *args: str) -> ServerProcess:
        server = ServerProcess(self.mktemp_dir(), *args).start()
        self.addCleanup(server.kill)
        return server

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_classic_and_lines_clients_chat(self) -> None:
        # A wide pace keeps each classic response in its own recv even on
        # a busy machine.
        server = self.start_server("--pace", "100")
        alice = ClassicClient(server.port)
        self.addCleanup(alice.close)
        bob = LinesClient(server.port)
        self.addCleanup(bob.close)

        alice.send("login", "alice")
        self.assertEqual(alice.receive()["content"], "Login successful. You are now logged in as alice")
        self.assertEqual(alice.receive()["response"], "history")
        bob.send("login", "bob")
        self.assertEqual(bob.receive()["content"], "Login successful. You are now logged in as bob")
        self.assertEqual(bob.receive()["content"], [])

        alice.send("msg", "hello from a classic client")
        echo = alice.receive()
        self.assertEqual((echo["response"], echo["sender"], echo["content"]), ("message", "alice", "hello from a classic client"))
        self.assertEqual(bob.receive(), echo)

        bob.send("msg", "hello from a lines client")
        echo = bob.receive()
        self.assertEqual(echo["content"], "hello from a lines client")
        self.assertEqual(alice.receive(), echo)

        bob.send("names")
        self.assertEqual(bob.receive()["content"], "alice, bob")
        alice.send("bogus")
        self.assertEqual(alice.receive()["code"], "unknown_request")

        carol = LinesClient(server.port)
        self.addCleanup(carol.close)
        carol.send("login", "carol")
        carol.receive()
        history = carol.receive()["content"]
        self.assertEqual(len(history), 2)

        self.assertEqual(server.stop(signal.SIGTERM), 0)

    def test_disconnect_frees_name(self) -> None:
        server = self.start_server()
        first = LinesClient(server.port)
        first.send("login", "dave")
        first.receive()
        first.close()
        second = LinesClient(server.port)
        self.addCleanup(second.close)

        def login_accepted() -> bool:
            second.send("login", "dave")
            response = second.receive()
            if response["response"] == "info":
                second.receive()
                return True
            return False

        wait_for(login_accepted, "the name to be free again")
        self.assertEqual(server.stop(), 0)

    def test_too_long_closes_the_connection(self) -> None:
        server = self.start_server("--max-request", "100")
        client = LinesClient(server.port)
        self.addCleanup(client.close)
        client.send("msg", "x" * 200)
        self.assertEqual(client.receive()["code"], "too_long")
        self.assertRaises(EOFError, client.receive)


class DaemonTests(SynchronousTestCase):
    """``twistd chatd --port N`` daemonizes and writes ``twistd.pid``."""

    def test_daemonize_and_stop_by_pid(self) -> None:
        workdir = self.mktemp()
        os.makedirs(workdir)
        port = free_port()
        status = subprocess.run(
            [*twistd_command(), "chatd", "--port", str(port)], cwd=workdir, timeout=DEADLINE, capture_output=True
        )
        self.assertEqual(status.returncode, 0, status.stderr)
        pidfile = os.path.join(workdir, "twistd.pid")
        wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), "twistd.pid")
        with open(pidfile) as handle:
            pid = int(handle.read().strip())

        def alive() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True

        self.addCleanup(lambda: alive() and os.kill(pid, signal.SIGKILL))
        wait_for(lambda: _answers_help(port), "the daemon to answer")
        self.assertTrue(os.path.exists(os.path.join(workdir, "twistd.log")))
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(), "the daemon to exit")
        wait_for(lambda: not os.path.exists(pidfile), "twistd.pid to be removed")


def _answers_help(port: int) -> bool:
    try:
        client = LinesClient(port)
    except OSError:
        time.sleep(0.1)
        return False
    try:
        client.send("help")
        return client.receive()["response"] == "info"
    finally:
        client.close()


def client_command() -> list[str]:
    """The installed ``chatd-client`` of this environment."""
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "chatd-client")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "chatd.client.client"]


class ClientEndToEndTests(SynchronousTestCase):
    """``chatd-client`` with piped standard input against a real server."""

    def setUp(self) -> None:
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.server = ServerProcess(workdir).start()
        self.addCleanup(self.server.kill)

    def run_client(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, NO_COLOR="1")
        return subprocess.run(
            [*client_command(), "--port", str(self.server.port), *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env=env,
        )

    def test_piped_script(self) -> None:
        result = self.run_client("/login bob\nhello\n/names\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "* Login successful. You are now logged in as bob")
        self.assertRegex(lines[1], r"^\[\d\d:\d\d:\d\d\] bob: hello$")
        self.assertEqual(lines[2], "* bob")
        self.assertEqual(result.stderr, "")

    def test_chat_with_a_classic_client(self) -> None:
        classic = ClassicClient(self.server.port)
        self.addCleanup(classic.close)
        classic.send("login", "old")
        classic.receive()
        classic.receive()
        classic.send("msg", "before you came \x1b[2J")
        classic.receive()
        result = self.run_client("hi old timer\n/quit\n", "--name", "new")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "* Login successful. You are now logged in as new")
        self.assertTrue(lines[1].endswith("old: before you came [2J"), lines)
        self.assertTrue(lines[2].endswith("new: hi old timer"), lines)
        self.assertNotIn("\x1b", result.stdout)
        seen = classic.receive()
        self.assertEqual((seen["sender"], seen["content"]), ("new", "hi old timer"))

    def test_escape_sequence_from_another_user_is_not_printed(self) -> None:
        classic = LinesClient(self.server.port)
        self.addCleanup(classic.close)
        classic.send("login", "mallory")
        classic.receive()
        classic.receive()
        # Control characters are stripped by the server; the client must
        # also hold if a server does not: check the bytes it prints.
        classic.send("msg", "clear \x1b[2J screen")
        classic.receive()
        result = self.run_client("", "--name", "victim")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("mallory: clear [2J screen", result.stdout)
        self.assertNotIn("\x1b", result.stdout)

    def test_refused_connection(self) -> None:
        port = free_port()
        result = subprocess.run(
            [*client_command(), "--port", str(port), "--name", "bob"],
            input="", capture_output=True, text=True, timeout=DEADLINE,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout.strip(), f"! cannot connect to 127.0.0.1:{port}: connection refused")
        self.assertNotIn("Traceback", result.stderr)


class DurabilityEndToEndTests(SynchronousTestCase):
    """History survives SIGKILL; v2 paging and resume over TCP."""

    def setUp(self) -> None:
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)

    def start(self) -> ServerProcess:
        server = ServerProcess(self.workdir, "--msg-rate", "0", "--request-rate", "0").start()
        self.addCleanup(server.kill)
        return server

    def v2_login(self, port: int, name: str) -> tuple[LinesClient, list[dict[str, object]]]:
        client = LinesClient(port)
        self.addCleanup(client.close)
        client.send("hello", {"protocol": 2, "client": "test"})
        self.assertEqual(client.receive()["response"], "hello")
        client.send("login", name)
        self.assertEqual(client.receive()["response"], "info")
        history = client.receive()
        return client, history["content"]

    def test_kill_9_loses_nothing_that_was_seen(self) -> None:
        server = self.start()
        client, _ = self.v2_login(server.port, "bob")
        sent = [f"message {i}" for i in range(50)]
        for text in sent:
            client.send("msg", text)
        echoes = [client.receive() for _ in sent]
        self.assertEqual([echo["content"] for echo in echoes], sent)
        self.assertEqual(server.stop(signal.SIGKILL), -signal.SIGKILL)

        server = self.start()
        _, history = self.v2_login(server.port, "alice")
        self.assertEqual([m["content"] for m in history], sent)
        self.assertEqual([m["id"] for m in history], [echo["id"] for echo in echoes])
        self.assertEqual([m["timestamp"] for m in history], [echo["timestamp"] for echo in echoes])
        client, _ = self.v2_login(server.port, "carol")
        client.send("msg", "after the restart")
        self.assertEqual(client.receive()["id"], echoes[-1]["id"] + 1)

    def test_paging_and_resume(self) -> None:
        server = self.start()
        reader, _ = self.v2_login(server.port, "reader")
        writer, _ = self.v2_login(server.port, "writer")
        writer.send("msg", "seen")
        last_seen = reader.receive()["id"]
        writer.receive()
        reader.close()
        for i in range(120):
            writer.send("msg", f"missed {i}")
            writer.receive()
        # The reader comes back and asks for what it missed, page by page.
        reader, _ = self.v2_login(server.port, "reader")
        missed: list[str] = []
        after, more = last_seen, True
        while more:
            reader.send("history", {"after": after, "limit": 50}, ref="resume")
            page = reader.receive()
            self.assertEqual(page["ref"], "resume")
            missed.extend(m["content"] for m in page["content"])
            after, more = page["content"][-1]["id"], page["more"]
        self.assertEqual(missed, [f"missed {i}" for i in range(120)])
        reader.send("history", {"before": last_seen + 1, "limit": 1})
        self.assertEqual([m["content"] for m in reader.receive()["content"]], ["seen"])
        reader.send("ping", 42)
        self.assertEqual(reader.receive()["content"], 42)


class AbuseEndToEndTests(SynchronousTestCase):
    """A slow reader and a flooder cannot hurt the others (real server)."""

    def start(self, *args: str) -> ServerProcess:
        workdir = self.mktemp()
        os.makedirs(workdir)
        server = ServerProcess(workdir, "--history", "memory", *args).start()
        self.addCleanup(server.kill)
        return server

    def login(self, port: int, name: str) -> LinesClient:
        client = LinesClient(port)
        self.addCleanup(client.close)
        client.send("login", name)
        client.receive()
        client.receive()
        return client

    def test_reader_that_never_reads_is_dropped(self) -> None:
        import socket

        server = self.start("--msg-rate", "0", "--request-rate", "0", "--max-sendq", "65536")
        sleeper = socket.socket()
        self.addCleanup(sleeper.close)
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.settimeout(DEADLINE)
        sleeper.connect(("127.0.0.1", server.port))
        sleeper.sendall(b'{"request": "login", "content": "sleeper"}\n')
        alice, bob = self.login(server.port, "alice"), self.login(server.port, "bob")
        text = "x" * 1500
        rounds, per_round = 60, 100
        for round_number in range(rounds):
            for i in range(per_round):
                alice.send("msg", f"{round_number}.{i} {text}")
            for client in (alice, bob):
                for _ in range(per_round):
                    self.assertEqual(client.receive()["response"], "message")
        # Everyone else got all 6,000 messages; the sleeper was cut off.
        bob.send("names")
        names = bob.receive()["content"]
        self.assertEqual(names, "alice, bob")
        self.assertIn("bytes of output unsent", server.log())
        received = 0
        try:
            while True:
                chunk = sleeper.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
        except ConnectionResetError:
            pass
        self.assertLess(received, rounds * per_round * len(text))

    def test_flood_does_not_delay_others(self) -> None:
        server = self.start()
        flooder = self.login(server.port, "flooder")
        other = self.login(server.port, "other")
        flood = b"".join(b'{"request": "msg", "content": "spam %d"}\n' % i for i in range(2000))
        try:
            flooder.sock.sendall(flood)
        except OSError:
            pass  # the server may hang up before it has read it all
        other.send("names")
        names = None
        for _ in range(100):
            response = other.receive()
            if response["response"] == "info":
                names = response["content"]
                break
        self.assertIsNotNone(names)
        # The flooder got 20 through, then rate_limited errors, then was cut off.
        codes = []
        try:
            while True:
                response = flooder.receive()
                codes.append(response.get("code"))
        except (EOFError, ConnectionResetError):
            pass
        self.assertEqual(codes.count(None), 20)
        self.assertIn("rate_limited", codes)
        self.assertIn("flooding", server.log())


class DeploymentEndToEndTests(SynchronousTestCase):
    """TLS beside plain TCP, graceful SIGTERM, JSON logs."""

    def setUp(self) -> None:
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)

    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess(self.workdir, "--history", "memory", *args).start()
        self.addCleanup(server.kill)
        return server

    def tls_server(self, hostname: str) -> tuple[ServerProcess, int, str]:
        from tests.certs import TestCA

        ca = TestCA(self.workdir)
        key, cert = ca.issue(hostname)
        tls_port = free_port()
        server = self.start("--listen", f"ssl:{tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        wait_for(lambda: can_connect(tls_port), "the TLS listener")
        return server, tls_port, ca.path

    def test_plain_and_tls_share_one_room(self) -> None:
        import socket
        import ssl

        server, tls_port, ca_path = self.tls_server("localhost")
        context = ssl.create_default_context(cafile=ca_path)
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=DEADLINE)
        secure = context.wrap_socket(raw, server_hostname="localhost")
        tls_client = LinesClient.__new__(LinesClient)
        tls_client.sock, tls_client.reader = secure, secure.makefile("rb")
        self.addCleanup(tls_client.close)
        plain = LinesClient(server.port)
        self.addCleanup(plain.close)
        for client, name in ((tls_client, "secure"), (plain, "plain")):
            client.send("login", name)
            self.assertEqual(client.receive()["response"], "info")
            client.receive()
        tls_client.send("msg", "over TLS")
        self.assertEqual(tls_client.receive()["content"], "over TLS")
        self.assertEqual(plain.receive()["content"], "over TLS")
        plain.send("names")
        self.assertEqual(plain.receive()["content"], "secure, plain")

    def run_client(self, port: int, *args: str, script: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*client_command(), "--port", str(port), *args],
            input=script, capture_output=True, text=True, timeout=DEADLINE, env=dict(os.environ, NO_COLOR="1"),
        )

    def test_client_verifies_the_certificate(self) -> None:
        server, tls_port, ca_path = self.tls_server("localhost")
        result = self.run_client(tls_port, "--tls", "--cafile", ca_path, "--host", "localhost", "--name", "ok",
                                 script="hello over tls\n")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("ok: hello over tls", result.stdout)

    def test_client_refuses_a_certificate_for_another_host(self) -> None:
        server, tls_port, ca_path = self.tls_server("wrong.example")
        result = self.run_client(tls_port, "--tls", "--cafile", ca_path, "--host", "localhost", "--name", "bob",
                                 script="should never be sent\n")
        self.assertEqual(result.returncode, 1, result.stdout)
        [line] = result.stdout.splitlines()
        self.assertTrue(line.startswith(f"! TLS failed with localhost:{tls_port}"), line)
        self.assertNotIn("Traceback", result.stderr)

    def test_client_refuses_an_untrusted_certificate(self) -> None:
        server, tls_port, _ = self.tls_server("localhost")
        result = self.run_client(tls_port, "--tls", "--host", "localhost", "--name", "bob", script="x\n")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("! TLS failed", result.stdout)

    def test_sigterm_tells_users_and_exits_zero(self) -> None:
        server = self.start("--pace", "100")
        lines_user = LinesClient(server.port)
        self.addCleanup(lines_user.close)
        classic_user = ClassicClient(server.port)
        self.addCleanup(classic_user.close)
        lines_user.send("login", "modern")
        lines_user.receive()
        lines_user.receive()
        classic_user.send("login", "classic")
        classic_user.receive()
        classic_user.receive()
        started = time.monotonic()
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(lines_user.receive()["content"], "Server shutting down")
        self.assertEqual(classic_user.receive()["content"], "Server shutting down")
        self.assertRaises(EOFError, lines_user.receive)

    def test_sigterm_with_a_reader_that_never_reads(self) -> None:
        import socket

        server = self.start("--msg-rate", "0", "--request-rate", "0")
        sleeper = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        self.addCleanup(sleeper.close)
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.sendall(b'{"request": "login", "content": "sleeper"}\n')
        talker = LinesClient(server.port)
        self.addCleanup(talker.close)
        talker.send("login", "talker")
        talker.receive()
        talker.receive()
        for i in range(300):
            talker.send("msg", f"{i} " + "y" * 1000)
            talker.receive()
        started = time.monotonic()
        self.assertEqual(server.stop(signal.SIGTERM), 0)
        self.assertLess(time.monotonic() - started, 5)

    def test_json_log_lines_parse(self) -> None:
        import json

        server = self.start("--log-format", "json")
        client = LinesClient(server.port)
        client.send("login", "logged")
        client.receive()
        client.close()
        self.assertEqual(server.stop(), 0)
        records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        messages = [record["message"] for record in records]
        self.assertTrue(any("logged in from 127.0.0.1" in message for message in messages), messages)
        self.assertTrue(all({"time", "level", "message"} <= set(record) for record in records))



class HealthcheckTests(SynchronousTestCase):
    """``python -m chatd.healthcheck``: the container's HEALTHCHECK."""

    def test_healthy_server(self) -> None:
        from chatd.healthcheck import main

        workdir = self.mktemp()
        os.makedirs(workdir)
        server = ServerProcess(workdir, "--history", "memory").start()
        self.addCleanup(server.kill)
        self.assertEqual(main(["--port", str(server.port)]), 0)

    def test_nothing_listening(self) -> None:
        from chatd.healthcheck import probe

        problem = probe("127.0.0.1", free_port(), 2)
        self.assertIsNotNone(problem)
        self.assertIn("cannot talk to", problem)

    def test_something_else_listening(self) -> None:
        import socket
        import threading

        from chatd.healthcheck import probe

        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        problem = probe("127.0.0.1", listener.getsockname()[1], 5)
        thread.join(5)
        self.assertIn("not a chatd response", problem or "")

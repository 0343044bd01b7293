"""``chatd-admin``, run as a program against a scratch data directory."""

from __future__ import annotations

import os
import select
import sqlite3
import subprocess
import sys
import time

import argon2
from twisted.trial.unittest import SynchronousTestCase

from chatd import admin
from chatd.accounts.records import AccountRecord, Restriction
from chatd.stores.history import SQLiteHistory
from tests.test_accounts_cred import encodings

PASSWORD = "Admin-Plaintext-Pw"
TIMEOUT = 60


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.path = os.path.join(self.data_dir, admin.DATABASE_NAME)

    def run_admin(self, *args: str, stdin: str = "", script: bool = False) -> subprocess.CompletedProcess[str]:
        command = [os.path.join(os.path.dirname(sys.executable), "chatd-admin")] if script else [sys.executable, "-m", "chatd.admin"]
        return subprocess.run(
            command + ["--data-dir", self.data_dir, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def store(self) -> SQLiteHistory:
        store = SQLiteHistory(self.path)
        self.addCleanup(store.close)
        return store

    def assertNoPlaintext(self, password: str, *outputs: subprocess.CompletedProcess[str]) -> None:
        found_files = 0
        for name in os.listdir(self.data_dir):
            with open(os.path.join(self.data_dir, name), "rb") as handle:
                data = handle.read()
            found_files += 1
            for encoded in encodings(password):
                self.assertNotIn(encoded, data, f"{password!r} in {name}")
        self.assertGreater(found_files, 0)
        for output in outputs:
            self.assertNotIn(password, output.stdout + output.stderr)

    def verifies(self, name: str, password: str) -> bool:
        record = self.store().load_account(name)
        assert record is not None
        try:
            return bool(argon2.PasswordHasher().verify(record.password_hash, password))
        except argon2.exceptions.VerifyMismatchError:
            return False

    def test_database_name_is_the_servers(self) -> None:
        from chatd.tap import DATABASE_NAME

        self.assertEqual(admin.DATABASE_NAME, DATABASE_NAME)

    def test_create_from_stdin(self) -> None:
        result = self.run_admin("create", "Alice", stdin=PASSWORD + "\n", script=True)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn("Account Alice created", result.stdout)
        record = self.store().load_account("alice")
        assert record is not None
        self.assertEqual(record.name, "Alice")
        self.assertTrue(record.password_hash.startswith("$argon2id$v=19$m="))
        self.assertTrue(self.verifies("alice", PASSWORD))
        self.assertFalse(self.verifies("alice", PASSWORD + "\n"))
        self.assertNoPlaintext(PASSWORD, result)

    def test_create_from_password_file_with_crlf(self) -> None:
        password_file = os.path.join(self.mktemp() + "-pw")
        with open(password_file, "w", newline="") as handle:
            handle.write("Ünïcode pässword\r\nsecond line\n")
        result = self.run_admin("create", "bob", "--password-file", password_file)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(self.verifies("bob", "Ünïcode pässword"))
        self.assertNoPlaintext("Ünïcode pässword", result)

    def test_create_refusals(self) -> None:
        self.assertEqual(self.run_admin("create", "alice", stdin=PASSWORD).returncode, 0)
        taken = self.run_admin("create", "ALICE", stdin="")  # refused before the password is read
        self.assertEqual(taken.returncode, 1)
        self.assertIn("name_taken", taken.stderr)
        weak = self.run_admin("create", "bob", stdin="bob\n")
        self.assertEqual(weak.returncode, 1)
        self.assertIn("weak_password", weak.stderr)
        self.assertNoPlaintext("bob\n", weak)
        short = self.run_admin("create", "carol", "--min-password", "30", stdin=PASSWORD)
        self.assertEqual(short.returncode, 1)
        self.assertIn("at least 30 bytes", short.stderr)
        invalid = self.run_admin("create", "not a name", stdin=PASSWORD)
        self.assertEqual(invalid.returncode, 1)
        self.assertIn("invalid_username", invalid.stderr)
        self.assertEqual([record.name for record in self.store().accounts()], ["alice"])
        missing = self.run_admin("--data-dir", os.path.join(self.data_dir, "nowhere"), "create", "dave", stdin=PASSWORD)
        self.assertEqual(missing.returncode, 1)
        usage = self.run_admin("frobnicate")
        self.assertEqual(usage.returncode, 2)

    def test_reset_password(self) -> None:
        self.assertEqual(self.run_admin("create", "alice", stdin=PASSWORD).returncode, 0)
        created = self.store().load_account("alice")
        result = self.run_admin("reset-password", "Alice", stdin="Another-Plaintext-Pw\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Password of alice reset", result.stdout)
        self.assertTrue(self.verifies("alice", "Another-Plaintext-Pw"))
        self.assertFalse(self.verifies("alice", PASSWORD))
        record = self.store().load_account("alice")
        assert record is not None and created is not None
        self.assertEqual(record.created, created.created)
        unknown = self.run_admin("reset-password", "nobody", stdin="Another-Plaintext-Pw\n")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no account named nobody", unknown.stderr)
        self.assertNoPlaintext("Another-Plaintext-Pw", result, unknown)

    def test_bans_listed_and_lifted(self) -> None:
        store = self.store()
        store.save_ban(Restriction("#Dev", "Bob", expires=None, by="alice", comment="spam"))
        store.save_ban(Restriction("#dev", "carol", expires=time.time() + 3600, by="alice"))
        store.save_ban(Restriction("#dev", "old", expires=time.time() - 10))
        store.save_ban(Restriction("#other", "dave"))
        store.save_mute(Restriction("#dev", "eve"))
        listed = self.run_admin("bans")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        lines = [line.split("\t") for line in listed.stdout.splitlines()]
        self.assertEqual([(room, name) for room, name, *_ in lines], [("#Dev", "Bob"), ("#dev", "carol"), ("#other", "dave")])
        self.assertEqual(lines[0][2:], ["-", "alice", "spam"])
        self.assertTrue(lines[1][2].endswith("Z"))
        only = self.run_admin("bans", "--room", "#OTHER")
        self.assertEqual(only.stdout.splitlines(), ["#other\tdave\t-\t-\t"])
        mutes = self.run_admin("bans", "--mutes")
        self.assertEqual([line.split("\t")[1] for line in mutes.stdout.splitlines()], ["eve"])
        lifted = self.run_admin("unban", "#DEV", "bob")
        self.assertEqual(lifted.returncode, 0, lifted.stderr)
        self.assertIn("lifted", lifted.stdout)
        self.assertEqual([ban.name for ban in store.load_bans("#dev")], ["carol", "old"])
        again = self.run_admin("unban", "#dev", "bob")
        self.assertEqual(again.returncode, 0)
        self.assertIn("No ban of bob", again.stdout)
        bad = self.run_admin("unban", "dev", "bob")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("invalid_room", bad.stderr)

    def test_no_database(self) -> None:
        result = self.run_admin("bans")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no chatd database", result.stderr)
        self.assertFalse(os.path.exists(self.path))

    def test_running_server_database(self) -> None:
        """A server holds the database open (WAL) and is writing: the admin
        waits for its transaction, and the server reads what the admin wrote."""
        server = self.store()
        server.append("#lobby", "bob", "hello", "2026-12-01T10:00:00.000Z")
        server.commit()
        server.save_ban(Restriction("#dev", "bob"))
        locker = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN IMMEDIATE")  # a server transaction in progress
        process = subprocess.Popen(
            [sys.executable, "-m", "chatd.admin", "--data-dir", self.data_dir, "create", "alice"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdin is not None
            process.stdin.write(PASSWORD + "\n")
            process.stdin.close()
            # Longer than the server's own waits (1 s at its start, 5 ms after).
            time.sleep(2.5)
            self.assertIsNone(process.poll())  # still waiting for the lock
            locker.execute("ROLLBACK")
            process.wait(timeout=TIMEOUT)
            assert process.stdout is not None and process.stderr is not None
            out, err = process.stdout.read(), process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self.assertEqual(process.returncode, 0, err)
        self.assertIn("created", out)
        self.assertIsNotNone(server.load_account("alice"))
        self.assertEqual([m.text for m in server.recent("#lobby", None)], ["hello"])
        lifted = self.run_admin("unban", "#dev", "bob")
        self.assertEqual(lifted.returncode, 0, lifted.stderr)
        self.assertEqual(server.load_bans(), [])
        server.save_account(AccountRecord("zed", "$argon2id$v=19$m=8,t=1,p=1$x$y", "t"))  # the server still writes

    def test_password_from_a_terminal_without_echo(self) -> None:
        import pty

        pid, master = pty.fork()
        if pid == 0:  # the child: its controlling terminal is the pty
            try:
                os.execv(sys.executable, [sys.executable, "-m", "chatd.admin", "--data-dir", self.data_dir, "create", "alice"])
            finally:
                os._exit(127)
        seen = b""
        try:
            seen += self.wait_for(master, b"Password for alice: ")
            os.write(master, PASSWORD.encode() + b"\n")
            seen += self.wait_for(master, b"Again: ")
            os.write(master, PASSWORD.encode() + b"\n")
            seen += self.wait_for(master, b"created")
        finally:
            status = self.reap(pid)
            os.close(master)
        self.assertEqual(status, 0, seen)
        self.assertNotIn(PASSWORD.encode(), seen)  # not echoed
        self.assertTrue(self.verifies("alice", PASSWORD))

    def wait_for(self, fd: int, wanted: bytes) -> bytes:
        got = b""
        deadline = time.monotonic() + TIMEOUT
        while wanted not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"no {wanted!r} in {got!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                got += chunk
        self.assertIn(wanted, got)
        return got

    def reap(self, pid: int) -> int:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return -9

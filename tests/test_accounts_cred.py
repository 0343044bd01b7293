"""twisted.cred over the account store, and the account requests built on
it (register, login with a password, password change), with the order of
their errors, the throttle before any hashing, and no plaintext anywhere."""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

import argon2
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd import messages
from chatd.accounts.cred import (
    AccountAvatar,
    AccountChecker,
    ChatRealm,
    IChatAccount,
    UnknownAccount,
    WrongPassword,
    make_portal,
)
from chatd.accounts.passwords import MAX_PASSWORD_BYTES, Passwords
from chatd.accounts.records import AccountRecord
from chatd.accounts.service import AccountService, LoggedIn
from chatd.accounts.throttle import LocalThrottle
from chatd.messages import ChatError
from chatd.stores.history import MemoryHistory, SQLiteHistory
from tests.accounts_support import CountingArgon, SyncReactor

T0 = "2026-12-01T10:00:00.000Z"
SECRET = "s3cret-Pässword"


class Harness:
    """A service over a memory store, passwords hashed by a synchronous pool."""

    def __init__(self, store: Any = None, register_rate: int = 3) -> None:
        self.store = store if store is not None else MemoryHistory()
        self.argon = CountingArgon()
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.passwords = Passwords(SyncReactor(), argon=self.argon)  # type: ignore[arg-type]
        self.throttle = LocalThrottle(self.clock, register_rate=register_rate)
        self.service = AccountService(self.store, self.passwords, self.throttle, self.clock)

    def add(self, name: str, password: str, argon: argon2.PasswordHasher | None = None) -> AccountRecord:
        hasher = argon if argon is not None else argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        record = AccountRecord(name, hasher.hash(password), T0)
        self.store.save_account(record)
        return record


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.add("Alice", SECRET)
        self.checker = AccountChecker(self.h.store, self.h.passwords)

    def check(self, name: bytes, password: bytes) -> Deferred[Any]:
        return self.checker.requestAvatarId(UsernamePassword(name, password))

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_right_password_gives_the_name_as_registered(self) -> None:
        self.assertEqual(self.successResultOf(self.check(b"alice", SECRET.encode())), b"Alice")
        self.assertEqual(self.h.argon.verified, 1)

    def test_wrong_password(self) -> None:
        failure = self.failureResultOf(self.check(b"ALICE", b"wrong password"), WrongPassword)
        self.assertEqual(failure.value.sentence, "Wrong password for Alice.")

    def test_unknown_account_is_not_hashed(self) -> None:
        failure = self.failureResultOf(self.check(b"bob", SECRET.encode()), UnknownAccount)
        self.assertIn("no account named bob", failure.value.sentence)
        self.failureResultOf(self.check(b"not a name!", SECRET.encode()), UnknownAccount)
        self.failureResultOf(self.check(b"\xff", SECRET.encode()), UnknownAccount)
        self.assertEqual(self.h.argon.calls, 0)

    def test_over_1024_bytes_refused_without_hashing(self) -> None:
        self.failureResultOf(self.check(b"alice", b"x" * (MAX_PASSWORD_BYTES + 1)), WrongPassword)
        self.assertEqual(self.h.argon.calls, 0)

    def test_rehash_on_login_saves_the_new_hash(self) -> None:
        old = self.h.add("carol", SECRET, argon2.PasswordHasher(time_cost=1, memory_cost=16, parallelism=1))
        self.assertEqual(self.successResultOf(self.check(b"carol", SECRET.encode())), b"carol")
        record = self.h.store.load_account("carol")
        assert record is not None
        self.assertNotEqual(record.password_hash, old.password_hash)
        self.assertTrue(record.password_hash.startswith("$argon2id$v=19$m=8,t=1,p=1$"))
        self.assertEqual(record.created, old.created)
        self.assertEqual(self.successResultOf(self.check(b"carol", SECRET.encode())), b"carol")

    def test_rehash_does_not_undo_a_password_change(self) -> None:
        self.h.add("carol", SECRET, argon2.PasswordHasher(time_cost=1, memory_cost=16, parallelism=1))
        changed = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("the new one")
        real_load = self.h.store.load_account
        calls = []

        def load(key: str) -> AccountRecord | None:
            # Between the verification and the re-hash's save, the password changes.
            calls.append(key)
            if len(calls) == 2:
                record = real_load(key)
                assert record is not None
                self.h.store.save_account(record.with_hash(changed))
            return real_load(key)

        self.h.store.load_account = load  # type: ignore[method-assign]
        self.assertEqual(self.successResultOf(self.check(b"carol", SECRET.encode())), b"carol")
        record = real_load("carol")
        assert record is not None
        self.assertEqual(record.password_hash, changed)

    def test_custom_rehash_hook_and_its_failure(self) -> None:
        self.h.add("carol", SECRET, argon2.PasswordHasher(time_cost=1, memory_cost=16, parallelism=1))
        seen: list[tuple[str, str]] = []

        def hook(record: AccountRecord, new_hash: str) -> None:
            seen.append((record.name, new_hash))
            raise OSError("the store is gone")

        checker = AccountChecker(self.h.store, self.h.passwords, on_rehash=hook)
        # The login stands; the failure is logged (without the password).
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"carol", SECRET.encode()))), b"carol")
        self.assertEqual([name for name, _ in seen], ["carol"])

    def test_deferred_store(self) -> None:
        """A cluster's store answers later: the checker waits for it."""
        store = self.h.store

        class Later:
            def load_account(self, key: str) -> Deferred[AccountRecord | None]:
                return succeed(store.load_account(key))

            def save_account(self, record: AccountRecord) -> Deferred[None]:
                return succeed(store.save_account(record))

        checker = AccountChecker(Later(), self.h.passwords)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UsernamePassword(b"alice", SECRET.encode()))), b"Alice")


class PortalTests(SynchronousTestCase):
    def test_portal_gives_an_account_avatar(self) -> None:
        h = Harness()
        h.add("Alice", SECRET)
        portal = make_portal(h.store, h.passwords)
        interface, avatar, logout = self.successResultOf(portal.login(UsernamePassword(b"alice", SECRET.encode()), None, IChatAccount))
        self.assertIs(interface, IChatAccount)
        self.assertEqual(avatar, AccountAvatar("Alice"))
        self.assertTrue(IChatAccount.providedBy(avatar))
        assert isinstance(avatar, AccountAvatar)
        self.assertEqual(avatar.key, "alice")
        logout()

    def test_realm_with_a_session_factory(self) -> None:
        made: list[tuple[str, object]] = []
        ended: list[str] = []

        def sessions(name: str, mind: object) -> tuple[object, Any]:
            made.append((name, mind))
            return f"session of {name}", lambda: ended.append(name)

        realm = ChatRealm(sessions)
        interface, avatar, logout = realm.requestAvatar(b"Alice", "the mind", IChatAccount)
        self.assertEqual((interface, avatar, made), (IChatAccount, "session of Alice", [("Alice", "the mind")]))
        logout()
        self.assertEqual(ended, ["Alice"])
        self.assertRaises(NotImplementedError, realm.requestAvatar, b"Alice", None, ICredentialsChecker)


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.add("Alice", SECRET)

    def login(self, name: Any = "alice", password: str = SECRET, address: str = "192.0.2.1") -> Deferred[LoggedIn]:
        return self.h.service.login(name, password, address)

    def error(self, result: Deferred[Any]) -> tuple[str, str]:
        failure = self.failureResultOf(result, ChatError)
        return failure.value.code, failure.value.text

    def test_right_password(self) -> None:
        logged_in = self.successResultOf(self.login())
        self.assertEqual(logged_in.name, "Alice")
        self.assertEqual(logged_in.avatar, AccountAvatar("Alice"))

    def test_auth_failed_sentences(self) -> None:
        self.assertEqual(self.error(self.login(password="wrong password")), (messages.AUTH_FAILED, "Wrong password for Alice."))
        code, text = self.error(self.login(name="bob"))
        self.assertEqual(code, messages.AUTH_FAILED)
        self.assertIn("no account named bob", text)

    def test_invalid_account_name(self) -> None:
        for name in ("", "server", "a b", "x" * 33, 7, None, "-dash"):
            self.assertEqual(self.error(self.login(name=name))[0], messages.INVALID_USERNAME)
        self.assertEqual(self.h.argon.calls, 0)

    def test_sixth_wrong_password_rate_limited_before_hashing(self) -> None:
        for _ in range(5):
            self.assertEqual(self.error(self.login(password="wrong password"))[0], messages.AUTH_FAILED)
        self.assertEqual(self.h.argon.verified, 5)
        self.assertEqual(self.error(self.login(password="wrong password"))[0], messages.RATE_LIMITED)
        self.assertEqual(self.error(self.login())[0], messages.RATE_LIMITED)  # even the right one
        self.assertEqual(self.h.argon.verified, 5)  # nothing hashed
        # Another address, same account: the account is throttled too.
        self.assertEqual(self.error(self.login(address="198.51.100.7"))[0], messages.RATE_LIMITED)
        self.h.clock.advance(60)
        self.assertEqual(self.successResultOf(self.login()).name, "Alice")

    def test_unknown_names_count_per_address(self) -> None:
        for i in range(5):
            self.error(self.login(name=f"nobody{i}"))
        self.assertEqual(self.error(self.login())[0], messages.RATE_LIMITED)
        self.assertEqual(self.successResultOf(self.login(address="192.0.2.2")).name, "Alice")

    def test_successes_do_not_count(self) -> None:
        for _ in range(10):
            self.successResultOf(self.login())
        self.successResultOf(self.login())


class RegisterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def register(self, name: Any = "Alice", password: str = SECRET, address: str = "192.0.2.1", **kw: Any) -> Deferred[AccountRecord]:
        return self.h.service.register(name, password, address, **kw)

    def code(self, result: Deferred[Any]) -> str:
        return str(self.failureResultOf(result, ChatError).value.code)

    def test_registers_and_logs_in(self) -> None:
        record = self.successResultOf(self.register())
        self.assertEqual((record.name, record.created), ("Alice", "2027-01-15T08:00:00.000Z"))
        self.assertTrue(record.password_hash.startswith("$argon2id$v=19$"))
        self.assertEqual(self.h.store.load_account("alice"), record)
        self.assertEqual(self.successResultOf(self.h.service.login("ALICE", SECRET, "192.0.2.1")).name, "Alice")

    def test_own_errors_in_order(self) -> None:
        self.successResultOf(self.register("taken"))
        # invalid_username before weak_password before name_taken
        self.assertEqual(self.code(self.register("bad name", password="")), messages.INVALID_USERNAME)
        self.assertEqual(self.code(self.register("Taken", password="short")), messages.WEAK_PASSWORD)
        self.assertEqual(self.code(self.register("Taken")), messages.NAME_TAKEN)
        self.assertEqual(self.code(self.register("alice", password="ALICE")), messages.WEAK_PASSWORD)
        self.assertEqual(self.h.argon.hashed, 1)  # only the one registration hashed

    def test_rate_limited_first_and_refusals_give_their_place_back(self) -> None:
        self.code(self.register("bad name"))
        self.code(self.register("alice", password="short"))
        for name in ("a1", "a2", "a3"):
            self.successResultOf(self.register(name))
        self.assertEqual(self.code(self.register("bad name")), messages.RATE_LIMITED)
        self.assertEqual(self.code(self.register("a4")), messages.RATE_LIMITED)
        self.successResultOf(self.register("a4", address="192.0.2.2"))
        self.successResultOf(self.register("a5", exempt=True))  # a server operator
        self.h.clock.advance(60)
        self.successResultOf(self.register("a6"))

    def test_guest_holding_the_name(self) -> None:
        asked: list[str] = []

        def taken(name: str) -> bool:
            asked.append(name)
            return name.lower() == "bob"

        self.assertEqual(self.code(self.register("Bob", taken=taken)), messages.NAME_TAKEN)
        self.assertEqual(self.h.argon.hashed, 0)
        self.successResultOf(self.register("carol", taken=taken))
        self.assertEqual(asked, ["Bob", "carol", "carol"])  # asked again after hashing

    def test_guest_logging_in_while_hashing(self) -> None:
        state = {"asked": 0}

        def taken(name: str) -> Deferred[bool]:
            state["asked"] += 1
            return succeed(state["asked"] > 1)

        self.assertEqual(self.code(self.register("carol", taken=taken)), messages.NAME_TAKEN)
        self.assertIsNone(self.h.store.load_account("carol"))

    def test_same_name_twice_at_once(self) -> None:
        hashes: list[Deferred[str]] = []

        def held_hash(password: str | bytes) -> Deferred[str]:
            waiting: Deferred[str] = Deferred()
            hashes.append(waiting)
            return waiting

        self.h.passwords.hash = held_hash  # type: ignore[method-assign]
        first = self.register("carol", address="192.0.2.1")
        second = self.register("Carol", address="192.0.2.2")
        self.assertEqual(len(hashes), 2)  # both got past the checks before either was created
        phc = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(SECRET)
        hashes[0].callback(phc)
        hashes[1].callback(phc)
        self.assertEqual(self.successResultOf(first).name, "carol")
        self.assertEqual(self.code(second), messages.NAME_TAKEN)
        # The loser's registration gave its place back.
        self.assertEqual(self.h.throttle.tracked(), 1)


class ChangePasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.add("Alice", SECRET)

    def change(self, old: str = SECRET, new: str = "brand new password") -> Deferred[AccountRecord]:
        return self.h.service.change_password("alice", old, new)

    def code(self, result: Deferred[Any]) -> str:
        return str(self.failureResultOf(result, ChatError).value.code)

    def test_changed(self) -> None:
        record = self.successResultOf(self.change())
        self.assertEqual(self.h.store.load_account("alice"), record)
        self.assertEqual(self.code(self.h.service.login("alice", SECRET, "192.0.2.1")), messages.AUTH_FAILED)
        self.successResultOf(self.h.service.login("alice", "brand new password", "192.0.2.1"))

    def test_huge_new_password_refused_before_hashing(self) -> None:
        self.assertEqual(self.code(self.change(old="wrong", new="x" * 1025)), messages.WEAK_PASSWORD)
        self.assertEqual(self.h.argon.calls, 0)

    def test_wrong_old_before_weak_new(self) -> None:
        self.assertEqual(self.code(self.change(old="wrong password", new="short")), messages.AUTH_FAILED)
        self.assertEqual(self.code(self.change(new="short")), messages.WEAK_PASSWORD)
        self.assertEqual(self.code(self.change(new="ALICE")), messages.WEAK_PASSWORD)
        self.assertEqual(self.code(self.change(old="x" * 2000)), messages.AUTH_FAILED)
        self.assertEqual((self.h.argon.verified, self.h.argon.hashed), (3, 0))
        self.successResultOf(self.h.service.login("alice", SECRET, "192.0.2.1"))


@implementer(ILogObserver)
class LogCollector:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def text(self) -> str:
        return "\n".join(f"{formatEvent(event)} {event!r}" for event in self.events)


def encodings(password: str) -> list[bytes]:
    """The ways a password could show up in a file."""
    raw = password.encode("utf-8")
    return [
        raw,
        password.encode("utf-16-le"),
        password.encode("utf-16-be"),
        base64.b64encode(raw),
        raw.hex().encode(),
        password.encode("unicode_escape"),
        password.encode("ascii", "backslashreplace"),
    ]


class NoPlaintextTests(TestCase):
    """Real threads, a real SQLite file: the password is nowhere but in memory."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "chatd.sqlite3")
        self.store = SQLiteHistory(self.path)
        self.addCleanup(self.store.close)
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-plaintext")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.argon = CountingArgon()
        self.passwords = Passwords(reactor, self.pool, argon=self.argon)  # type: ignore[arg-type]
        self.service = AccountService(self.store, self.passwords, LocalThrottle(reactor), reactor)
        self.logs = LogCollector()
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)

    def assertNowhere(self, password: str, errors: list[str]) -> None:
        for suffix in ("", "-wal"):
            if os.path.exists(self.path + suffix):
                with open(self.path + suffix, "rb") as handle:
                    data = handle.read()
                for encoded in encodings(password):
                    self.assertNotIn(encoded, data, f"{password!r} in {self.path + suffix}")
        self.assertTrue(os.path.getsize(self.path + "-wal") > 0)  # the writes are there to search
        self.assertNotIn(password, self.logs.text())
        for text in errors:
            self.assertNotIn(password, text)

    def test_register_login_change_leave_no_plaintext(self) -> Deferred[None]:
        first, second, wrong = "Zebra-Plaintext-1", "Quokka-Plaintext-2", "Wombat-Plaintext-3"
        reactor_thread = threading.current_thread()

        async def work() -> list[str]:
            errors: list[str] = []
            await self.service.register("alice", first, "192.0.2.1")
            self.assertEqual((await self.service.login("alice", first, "192.0.2.1")).name, "alice")
            for attempt in (self.service.login("alice", wrong, "192.0.2.1"), self.service.change_password("alice", wrong, second)):
                try:
                    await attempt
                except ChatError as error:
                    errors.append(error.text)
            await self.service.change_password("alice", first, second)
            self.assertEqual((await self.service.login("alice", second, "192.0.2.1")).name, "alice")
            # A checkpoint moves the WAL into the main file: search both states.
            self.assertNowhere(first, errors)
            self.store._connection().execute("PRAGMA wal_checkpoint(FULL)")
            for password in (first, second, wrong):
                self.assertNowhere(password, errors)
            self.assertEqual(len(errors), 2)
            self.assertNotIn(reactor_thread, self.argon.threads)
            return errors

        return Deferred.fromCoroutine(work()).addCallback(lambda _: None)

    def test_concurrent_logins_all_off_the_reactor(self) -> Deferred[None]:
        self.store.save_account(AccountRecord("bob", argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(SECRET), T0))

        async def work() -> None:
            results = await gatherResults([self.service.login("bob", SECRET, f"192.0.2.{i}") for i in range(4)])
            self.assertEqual([result.name for result in results], ["bob"] * 4)
            self.assertEqual(self.argon.verified, 4)
            self.assertTrue(all("test-plaintext" in thread.name for thread in self.argon.threads))

        return Deferred.fromCoroutine(work())

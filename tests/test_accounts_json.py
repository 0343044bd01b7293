"""Accounts on the JSON front-end (PROTOCOL.md section 6.4): register,
login with a password, password changes, and their errors in order."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.accounts.passwords import Passwords
from chatd.accounts.service import AccountService
from chatd.accounts.throttle import LocalThrottle
from chatd.server import ChatFactory
from chatd.stores.history import MemoryHistory
from tests.accounts_support import CountingArgon, SyncPool, SyncReactor
from tests.support import FakeClient, make_factory


def with_accounts(mode: str = "optional", registration: str = "open", register_rate: int = 3, operators: frozenset[str] = frozenset()) -> tuple[ChatFactory, CountingArgon]:
    store = MemoryHistory()
    base = make_factory(store=store, accounts=mode, registration=registration)
    argon = CountingArgon()
    passwords = Passwords(SyncReactor(SyncPool()), argon=argon)
    service = AccountService(store, passwords, LocalThrottle(base.clock, register_rate=register_rate), base.clock, min_password=8)
    factory = ChatFactory(base.hub, base.config, base.clock, accounts=service, operators=operators)
    base.hub.use_accounts(store, operators)
    return factory, argon


class AccountTestCase(SynchronousTestCase):
    mode = "optional"

    def setUp(self) -> None:
        self.factory, self.argon = with_accounts(self.mode)

    def client(self, v2: bool = True) -> FakeClient:
        client = FakeClient(self.factory)
        if v2:
            client.send("hello", {"protocol": 2})
            client.received()
        return client

    def answer(self, client: FakeClient, request: str, content: Any = None, **extra: Any) -> dict[str, Any]:
        client.send(request, content, **extra)
        return client.received()[0]

    def code(self, client: FakeClient, request: str, content: Any = None, **extra: Any) -> str | None:
        return self.answer(client, request, content, **extra).get("code")

    def register(self, name: str = "alice", password: str = "correct horse") -> None:
        answer = self.answer(self.client(), "register", {"username": name, "password": password})
        self.assertEqual(answer["content"], f"Account {name} registered")


class RegisterLoginTests(AccountTestCase):
    def test_register_then_login(self) -> None:
        client = self.client(v2=False)  # register works on any connection
        answer = self.answer(client, "register", {"username": "alice", "password": "correct horse"})
        self.assertEqual((answer["response"], answer["content"]), ("info", "Account alice registered"))
        self.assertEqual(self.code(client, "login", "alice", password="battery staple"), "auth_failed")
        info = self.answer(client, "login", "ALICE", password="correct horse")
        self.assertEqual(info["content"], "Login successful. You are now logged in as alice")

    def test_hello_lists_accounts(self) -> None:
        client = FakeClient(self.factory)
        client.send("hello", {"protocol": 2})
        self.assertIn("accounts", client.one()["content"]["features"])

    def test_guest_cannot_take_an_account_name(self) -> None:
        self.register()
        client = self.client()
        answer = self.answer(client, "login", "Alice")
        self.assertEqual(answer["code"], "auth_failed")
        self.assertEqual(answer["content"], "Alice is an account: log in with its password.")

    def test_guests_still_log_in(self) -> None:
        info = self.answer(self.client(v2=False), "login", "bob")
        self.assertEqual(info["content"], "Login successful. You are now logged in as bob")

    def test_register_errors_in_order(self) -> None:
        client = self.client()
        self.assertEqual(self.code(client, "register", "alice"), "bad_request")
        self.assertEqual(self.code(client, "register", {"username": "alice", "password": 5}), "bad_request")
        self.assertEqual(self.code(client, "register", {"username": "bad name", "password": "x"}), "invalid_username")
        self.assertEqual(self.code(client, "register", {"username": "alice", "password": "short"}), "weak_password")
        self.assertEqual(self.code(client, "register", {"username": "alice", "password": "Alice"}), "weak_password")
        self.assertEqual(self.code(client, "register", {"username": "alice", "password": "x" * 1025}), "weak_password")
        self.assertEqual(self.code(client, "register", {"username": "alice", "password": "a\x00bcdefghij"}), "weak_password")
        self.assertEqual(self.argon.calls, 0)
        self.answer(self.client(), "login", "bob")
        self.assertEqual(self.code(client, "register", {"username": "Bob", "password": "long enough"}), "name_taken")

    def test_register_rate(self) -> None:
        client = self.client()
        for i in range(3):
            self.assertEqual(self.answer(client, "register", {"username": f"user{i}", "password": "long enough"})["response"], "info")
        self.assertEqual(self.code(client, "register", {"username": "user9", "password": "long enough"}), "rate_limited")

    def test_throttle_before_hashing(self) -> None:
        self.register()
        hashed = self.argon.calls
        client = self.client()
        for _ in range(5):
            self.assertEqual(self.code(client, "login", "alice", password="wrong password"), "auth_failed")
        verified = self.argon.calls
        self.assertEqual(self.code(client, "login", "alice", password="correct horse"), "rate_limited")
        self.assertEqual(self.argon.calls, verified)
        self.assertGreater(verified, hashed)
        self.factory.clock.advance(61)  # the first connection's login timeout closed it meanwhile
        self.assertEqual(self.answer(self.client(), "login", "alice", password="correct horse")["response"], "info")

    def test_login_errors(self) -> None:
        client = self.client()
        self.assertEqual(self.code(client, "login", "alice", password=5), "bad_request")
        self.assertEqual(self.code(client, "login", "bad name", password="whatever1"), "invalid_username")
        self.assertEqual(self.code(client, "login", "nobody", password="whatever1"), "auth_failed")
        self.answer(client, "login", "bob")
        self.assertEqual(self.code(client, "login", "alice", password="whatever1"), "already_logged_in")

    def test_account_login_while_a_guest_holds_the_name(self) -> None:
        guest = self.client()
        self.answer(guest, "login", "carol")
        # carol registers only once the guest is gone; the guest came back.
        self.assertEqual(self.code(self.client(), "register", {"username": "carol", "password": "long enough"}), "name_taken")


class PasswordChangeTests(AccountTestCase):
    def test_change_password(self) -> None:
        self.register()
        client = self.client()
        self.answer(client, "login", "alice", password="correct horse")
        client.received()
        self.assertEqual(self.code(client, "password", {"old": "wrong password", "new": "new password"}), "auth_failed")
        self.assertEqual(self.code(client, "password", {"old": "correct horse", "new": "short"}), "weak_password")
        self.assertEqual(self.code(client, "password", {"old": "correct horse"}), "bad_request")
        answer = self.answer(client, "password", {"old": "correct horse", "new": "new password"})
        self.assertEqual(answer["content"], "Password changed")
        self.answer(client, "logout")
        self.assertEqual(self.code(client, "login", "alice", password="correct horse"), "auth_failed")
        self.assertEqual(self.answer(client, "login", "alice", password="new password")["response"], "info")

    def test_guest_and_v1_cannot_change_passwords(self) -> None:
        guest = self.client()
        self.answer(guest, "login", "bob")
        guest.received()
        self.assertEqual(self.code(guest, "password", {"old": "a", "new": "b"}), "forbidden")
        classic = self.client(v2=False)
        self.answer(classic, "login", "carl")
        self.assertEqual(self.code(classic, "password", {"old": "a", "new": "b"}), "forbidden")


class RequiredTests(AccountTestCase):
    mode = "required"

    def test_login_needs_an_account(self) -> None:
        client = self.client(v2=False)
        answer = self.answer(client, "login", "bob")
        self.assertEqual(answer["code"], "auth_failed")
        self.assertEqual(self.code(client, "login", "bad name"), "invalid_username")


class AccountsOffTests(SynchronousTestCase):
    def test_register_and_password_forbidden_and_password_ignored(self) -> None:
        factory = make_factory()
        client = FakeClient(factory)
        client.send("hello", {"protocol": 2})
        self.assertNotIn("accounts", client.one()["content"]["features"])
        client.send("register", {"username": "alice", "password": "correct horse"})
        self.assertEqual(client.one()["code"], "forbidden")
        client.send("login", "alice", password="anything")
        self.assertEqual(client.received()[0]["content"], "Login successful. You are now logged in as alice")
        client.send("password", {"old": "a", "new": "b"})
        self.assertEqual(client.one()["code"], "forbidden")


class ClosedRegistrationTests(SynchronousTestCase):
    def test_only_operators_register(self) -> None:
        factory, _ = with_accounts(registration="closed", register_rate=1, operators=frozenset({"root"}))
        factory.accounts.register("root", "root password", "127.0.0.1")  # type: ignore[union-attr]
        client = FakeClient(factory)
        client.send("register", {"username": "alice", "password": "correct horse"})
        self.assertEqual(client.one()["code"], "forbidden")
        client.send("login", "root", password="root password")
        client.received()
        for name in ("alice", "bob"):  # exempt from the register rate too
            client.send("register", {"username": name, "password": "correct horse"})
            self.assertEqual(client.one()["content"], f"Account {name} registered")

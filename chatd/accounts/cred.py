"""twisted.cred for accounts: a checker over the account store, a realm, a portal.

As twisted.words does, a login is ``portal.login(credentials, mind,
IChatAccount)``: :class:`AccountChecker` (an ``ICredentialsChecker`` of
``IUsernamePassword``) finds the account in the store and verifies the
password in the thread pool (:class:`~chatd.accounts.passwords.Passwords`);
its avatar id is the account's name as registered, in ASCII bytes.
:class:`ChatRealm` turns that id into an avatar: an :class:`AccountAvatar`
by default, or whatever the session factory the hub gives it makes.

Each way a check fails is an :class:`AuthFailed` (an
``UnauthorizedLogin``) whose ``sentence`` is the ``auth_failed`` text of
PROTOCOL.md section 6.4 ("which case").  No sentence, log line or
exception text holds the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Coroutine
from typing import Any, Callable, Protocol, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from chatd.accounts.names import is_account_name
from chatd.accounts.passwords import Passwords, too_long
from chatd.accounts.records import AccountRecord


class IChatAccount(Interface):
    """The avatar of a logged-in account."""

    name = Attribute("The account's name as registered (str).")


@implementer(IChatAccount)
@dataclass(frozen=True)
class AccountAvatar:
    """An account that passed the checker: its name as registered."""

    name: str

    @property
    def key(self) -> str:
        """The name lower-cased, as names compare."""
        return self.name.lower()


class AccountStore(Protocol):
    """What the checker needs of a store: a local one answers at once, a
    cluster's may answer with a Deferred."""

    def load_account(self, key: str) -> AccountRecord | None | Deferred[AccountRecord | None]:
        """The account named ``key`` (any case), or None."""

    def save_account(self, record: AccountRecord) -> None | Deferred[None]:
        """Keep ``record``."""


def no_password_text(name: str) -> str:
    """``auth_failed``'s sentence for a login without a password on an account name."""
    return f"{name} is an account: log in with its password."


def account_required_text() -> str:
    """``auth_failed``'s sentence for a login without an account under ``--accounts required``."""
    return "This server needs an account: register one, then log in with its password."


class AuthFailed(UnauthorizedLogin):
    """A login the checker refused; ``sentence`` is the ``auth_failed`` text."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


class UnknownAccount(AuthFailed):
    """A password was given for a name that is not an account."""

    def __init__(self, name: str) -> None:
        super().__init__(f"There is no account named {name}: log in without a password, or register it.")


class WrongPassword(AuthFailed):
    """The password does not match the account's (or could never: over 1024 bytes)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Wrong password for {name}.")


_T = TypeVar("_T")


async def settled(result: _T | Deferred[_T] | Coroutine[Any, Any, _T]) -> _T:
    """``result``, waited for if it is a Deferred or a coroutine (a local
    store answers at once, a cluster's later)."""
    if isinstance(result, Deferred):
        return await result
    if isinstance(result, Coroutine):
        return await result
    return result


#: Called after a login re-hashed a password, with the account's record as
#: the checker read it (the old hash) and the new hash; may return a Deferred.
RehashHook = Callable[[AccountRecord, str], object]


@implementer(ICredentialsChecker)
class AccountChecker:
    """Usernames and passwords checked against the account store.

    The account is read first (no hashing for a name that is not an
    account), a password over 1024 bytes is refused without hashing, and
    only then is the password verified in the pool.  When the stored hash
    was made with outdated parameters the password is hashed anew in the
    same thread call and ``on_rehash`` gets the record and the new hash; by
    default the new hash is saved to the store, unless the account's hash
    changed meanwhile (a password change wins over a re-hash of the old
    password).
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, store: AccountStore, passwords: Passwords, on_rehash: RehashHook | None = None) -> None:
        self.store = store
        self.passwords = passwords
        self.on_rehash: RehashHook = on_rehash if on_rehash is not None else self._save_rehash

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        """The account's name as registered (ASCII bytes), or an :class:`AuthFailed` failure."""
        return Deferred.fromCoroutine(self._check(credentials.username, credentials.password))

    async def _check(self, username: bytes | str, password: bytes | str) -> bytes | tuple[()]:
        name = username.decode("ascii", "replace") if isinstance(username, bytes) else username
        if not is_account_name(name):
            raise UnknownAccount(name)
        record = await settled(self.store.load_account(name.lower()))
        if record is None:
            raise UnknownAccount(name)
        if too_long(password):
            raise WrongPassword(record.name)
        verdict = await self.passwords.verify(record.password_hash, password)
        if not verdict.matches:
            raise WrongPassword(record.name)
        if verdict.rehashed is not None:
            try:
                await settled(self.on_rehash(record, verdict.rehashed))
            except Exception as problem:
                # The login stands: the old hash still verifies.
                self.log.warn("could not keep the new hash of account {name}: {problem}", name=record.name, problem=str(problem))
        return record.name.encode("ascii")

    async def _save_rehash(self, record: AccountRecord, new_hash: str) -> None:
        current = await settled(self.store.load_account(record.key))
        if current is not None and current.password_hash == record.password_hash:
            await settled(self.store.save_account(current.with_hash(new_hash)))


#: Makes the avatar of an account that logged in: ``(name, mind)`` ->
#: ``(avatar, logout)``.
SessionFactory = Callable[[str, object], tuple[object, Callable[[], None]]]


def _account_avatar(name: str, mind: object) -> tuple[object, Callable[[], None]]:
    return AccountAvatar(name), lambda: None


@implementer(IRealm)
class ChatRealm:
    """Avatars for :class:`IChatAccount`: what ``sessions`` makes of the
    account's name (by default an :class:`AccountAvatar` and a logout that
    does nothing)."""

    def __init__(self, sessions: SessionFactory | None = None) -> None:
        self.sessions = sessions if sessions is not None else _account_avatar

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any) -> tuple[Any, object, Callable[[], None]]:
        """``(IChatAccount, avatar, logout)`` for the account ``avatarId`` names."""
        if IChatAccount not in interfaces:
            raise NotImplementedError("chatd's realm only makes IChatAccount avatars")
        if not isinstance(avatarId, bytes):
            raise TypeError("an account's avatar id is its name in bytes")
        avatar, logout = self.sessions(avatarId.decode("ascii"), mind)
        return IChatAccount, avatar, logout


def make_portal(store: AccountStore, passwords: Passwords, realm: IRealm | None = None, on_rehash: RehashHook | None = None) -> Portal:
    """A portal whose only checker is an :class:`AccountChecker` over ``store``."""
    return Portal(realm if realm is not None else ChatRealm(), [AccountChecker(store, passwords, on_rehash)])

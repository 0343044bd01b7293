"""The account requests of PROTOCOL.md section 6.4, as the hub calls them.

:class:`AccountService` puts together the store, the password pool
(:class:`~chatd.accounts.passwords.Passwords`), the throttle
(:class:`~chatd.accounts.throttle.IAuthThrottle`) and the cred portal
(:mod:`chatd.accounts.cred`), and answers with the protocol's errors in
the protocol's order:

- :meth:`~AccountService.login` (a login carrying a password):
  ``invalid_username``, ``rate_limited`` (the throttle, before any
  hashing), ``auth_failed``.  The hub checks ``already_logged_in`` before
  and ``banned``, ``name_taken``, ``forbidden`` (``--max-sessions``) after.
- :meth:`~AccountService.register`: ``rate_limited``, ``invalid_username``,
  ``weak_password``, ``name_taken``.  The hub checks ``forbidden``
  (``--accounts off``, ``--registration closed``) before.
- :meth:`~AccountService.change_password`: ``auth_failed``,
  ``weak_password`` (a new password over 1024 bytes first, before any
  hashing).  The hub checks ``forbidden`` (a guest) before.

Every failure is a :class:`~chatd.messages.ChatError`, except the store's
own (:class:`~chatd.stores.history.HistoryError`), which pass through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from chatd import messages
from chatd.accounts.cred import AccountChecker, AuthFailed, ChatRealm, IChatAccount, RehashHook, settled
from chatd.accounts.names import is_account_name
from chatd.accounts.passwords import DEFAULT_MIN_PASSWORD, MAX_PASSWORD_BYTES, Passwords, check_password, encode, too_long
from chatd.accounts.records import AccountRecord
from chatd.accounts.throttle import IAuthThrottle
from chatd.messages import ChatError

#: ``invalid_username``'s sentence for an account name.
INVALID_ACCOUNT_NAME = (
    "Invalid account name: use 1 to 32 letters A-Z or a-z and digits, or an IRC nick"
    " (a letter or _ first, then letters, digits, _ or -, up to 32)."
)


class AccountWriter(Protocol):
    """What the service needs of a store (local: at once; a cluster's: Deferreds)."""

    def load_account(self, key: str) -> AccountRecord | None | Deferred[AccountRecord | None]:
        """The account named ``key`` (any case), or None."""

    def save_account(self, record: AccountRecord) -> None | Deferred[None]:
        """Keep ``record`` (insert or update)."""

    def create_account(self, record: AccountRecord) -> bool | Deferred[bool]:
        """Keep ``record`` unless its name is an account already; whether it was kept."""


@dataclass(frozen=True)
class LoggedIn:
    """An account that logged in: its name as registered, the realm's
    avatar and the logout to call when the session ends."""

    name: str
    avatar: object
    logout: Callable[[], None]


class AccountService:
    """Registration, login with a password and password changes.

    ``realm`` defaults to a :class:`~chatd.accounts.cred.ChatRealm` (an
    :class:`~chatd.accounts.cred.AccountAvatar` per login);
    ``on_rehash`` to saving the new hash (see
    :class:`~chatd.accounts.cred.AccountChecker`).
    """

    def __init__(
        self,
        store: AccountWriter,
        passwords: Passwords,
        throttle: IAuthThrottle,
        clock: IReactorTime,
        min_password: int = DEFAULT_MIN_PASSWORD,
        realm: IRealm | None = None,
        on_rehash: RehashHook | None = None,
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.throttle = throttle
        self.clock = clock
        self.min_password = min_password
        self.checker = AccountChecker(store, passwords, on_rehash)
        self.portal = Portal(realm if realm is not None else ChatRealm(), [self.checker])

    # -- login -------------------------------------------------------------

    def login(self, name: Any, password: str, address: str, mind: object = None) -> Deferred[LoggedIn]:
        """Check ``password`` for the account ``name``, logging in from ``address``.

        Fails with ``ChatError``: ``invalid_username`` (not an account
        name), ``rate_limited`` (5 or more ``auth_failed`` in the last 60 s
        for this address or this name; nothing is hashed), ``auth_failed``
        (no such account, wrong password; counted by the throttle).
        """
        return Deferred.fromCoroutine(self._login(name, password, address, mind))

    async def _login(self, name: Any, password: str, address: str, mind: object) -> LoggedIn:
        if not is_account_name(name):
            raise ChatError(messages.INVALID_USERNAME, INVALID_ACCOUNT_NAME)
        if not await self.throttle.login_allowed(address, name):
            raise ChatError(messages.RATE_LIMITED, "Too many failed logins: wait a minute before trying again.")
        credentials = UsernamePassword(name.encode("ascii"), encode(password))
        try:
            _interface, avatar, logout = await self.portal.login(credentials, mind, IChatAccount)
        except AuthFailed as failed:
            await self.throttle.login_failed(address, name)
            raise ChatError(messages.AUTH_FAILED, failed.sentence) from None
        account_name = getattr(avatar, "name", name)
        return LoggedIn(account_name if isinstance(account_name, str) else name, avatar, logout)

    # -- register ----------------------------------------------------------

    def register(
        self,
        name: Any,
        password: str,
        address: str,
        taken: Callable[[str], bool | Deferred[bool]] | None = None,
        exempt: bool = False,
    ) -> Deferred[AccountRecord]:
        """Create the account ``name`` with ``password``; the new record.

        ``taken(name)`` says whether a guest holds the name now (asked
        before hashing and again before the account is created).  With
        ``exempt`` (a server operator asks) the registration rate does not
        apply.  Fails with ``ChatError``: ``rate_limited``,
        ``invalid_username``, ``weak_password``, ``name_taken``.  A
        registration that fails gives its place in the rate back.
        """
        return Deferred.fromCoroutine(self._register(name, password, address, taken, exempt))

    async def _register(
        self, name: Any, password: str, address: str, taken: Callable[[str], bool | Deferred[bool]] | None, exempt: bool
    ) -> AccountRecord:
        if not exempt and not await self.throttle.reserve_registration(address):
            raise ChatError(messages.RATE_LIMITED, "Too many accounts registered from your address: try again later.")
        try:
            return await self._create(name, password, taken)
        except BaseException:
            if not exempt:
                await self.throttle.release_registration(address)
            raise

    async def _create(self, name: Any, password: str, taken: Callable[[str], bool | Deferred[bool]] | None) -> AccountRecord:
        if not is_account_name(name):
            raise ChatError(messages.INVALID_USERNAME, INVALID_ACCOUNT_NAME)
        check_password(password, name, self.min_password)
        await self._check_free(name, taken)
        password_hash = await self.passwords.hash(password)
        # A guest may have logged in under the name while it was hashed.
        await self._check_free(name, taken)
        record = AccountRecord(name, password_hash, messages.format_timestamp(self.clock.seconds()))
        if not await settled(self.store.create_account(record)):
            raise _name_taken(name)
        return record

    async def _check_free(self, name: str, taken: Callable[[str], bool | Deferred[bool]] | None) -> None:
        if await settled(self.store.load_account(name)) is not None:
            raise _name_taken(name)
        if taken is not None and await settled(taken(name)):
            raise _name_taken(name)

    # -- password ----------------------------------------------------------

    def change_password(self, name: str, old: str, new: str) -> Deferred[AccountRecord]:
        """Replace the password of the account ``name`` (logged in); the updated record.

        Fails with ``ChatError``: ``weak_password`` at once for a ``new``
        over 1024 bytes (nothing is hashed), ``auth_failed`` (``old`` is
        wrong), ``weak_password`` (the other rules).
        """
        return Deferred.fromCoroutine(self._change_password(name, old, new))

    async def _change_password(self, name: str, old: str, new: str) -> AccountRecord:
        if too_long(new):
            raise ChatError(messages.WEAK_PASSWORD, f"The password is too long: at most {MAX_PASSWORD_BYTES} bytes of UTF-8.")
        record = await settled(self.store.load_account(name))
        if record is None:
            raise ChatError(messages.AUTH_FAILED, f"There is no account named {name}.")
        wrong = ChatError(messages.AUTH_FAILED, "The old password is wrong: the password was not changed.")
        if too_long(old):
            raise wrong
        verdict = await self.passwords.verify(record.password_hash, old)
        if not verdict.matches:
            raise wrong
        check_password(new, record.name, self.min_password)
        updated = record.with_hash(await self.passwords.hash(new))
        await settled(self.store.save_account(updated))
        return updated


def _name_taken(name: str) -> ChatError:
    return ChatError(messages.NAME_TAKEN, f"Username '{name}' is taken.")

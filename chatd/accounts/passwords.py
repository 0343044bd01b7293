"""Account passwords: the ``weak_password`` rules and Argon2id hashing off the reactor.

PROTOCOL.md section 6.4: passwords are kept only as Argon2id hashes in
PHC string form (``$argon2id$v=19$m=...``), made by ``argon2-cffi``.
Hashing costs tens of milliseconds of CPU and tens of MiB of memory by
design, so :class:`Passwords` runs every hash and every verification in a
thread pool, at most ``concurrency`` at once (a
:class:`~twisted.internet.defer.DeferredSemaphore`), never on the reactor
thread: a ``ping`` is answered while logins are being checked.

A hash made with other parameters than the current ones (older, cheaper
settings) is made again at the next successful verification, in the same
thread call (:attr:`Verdict.rehashed`); the caller stores it.

No function here logs, returns or puts in an exception text the password
it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from chatd import messages
from chatd.messages import ChatError

#: The longest password, in bytes of UTF-8 (PROTOCOL.md section 6.4);
#: checked before any hashing.
MAX_PASSWORD_BYTES = 1024

#: ``--min-password``'s default, in bytes of UTF-8.
DEFAULT_MIN_PASSWORD = 8

#: How many hashes or verifications run at once by default.
DEFAULT_CONCURRENCY = 2

_T = TypeVar("_T")


def encode(password: str | bytes) -> bytes:
    """The bytes of ``password`` that are hashed: its UTF-8.

    A lone surrogate (which JSON front-ends already replace) is encoded
    as such instead of failing in the middle of a hash.
    """
    return password if isinstance(password, bytes) else password.encode("utf-8", "surrogatepass")


def too_long(password: str | bytes) -> bool:
    """Whether ``password`` is over :data:`MAX_PASSWORD_BYTES` bytes of UTF-8.

    Such a password is never hashed: it cannot have been registered.
    """
    # Up to 4 bytes per code point: most texts are decided without encoding.
    if len(password) * 4 <= MAX_PASSWORD_BYTES:
        return False
    return len(encode(password)) > MAX_PASSWORD_BYTES


def password_problem(password: str, name: str, min_bytes: int = DEFAULT_MIN_PASSWORD) -> str | None:
    """Why ``password`` is weak for the account ``name``, as a sentence; None if it is not.

    The rules of PROTOCOL.md section 6.4, in this order: more than 1024
    bytes of UTF-8, U+0000 in it, fewer than ``min_bytes`` bytes, equal
    to the name case-insensitively (ASCII, as names compare).  The
    sentence never quotes the password.
    """
    if too_long(password):
        return f"The password is too long: at most {MAX_PASSWORD_BYTES} bytes of UTF-8."
    if "\x00" in password:
        return "The password must not contain U+0000."
    encoded = encode(password)
    if len(encoded) < min_bytes:
        return f"The password is too short: at least {min_bytes} bytes of UTF-8."
    # bytes.lower() changes ASCII letters only, as names compare.
    if encoded.lower() == name.encode("utf-8", "surrogatepass").lower():
        return "The password must not be the account name."
    return None


def check_password(password: str, name: str, min_bytes: int = DEFAULT_MIN_PASSWORD) -> None:
    """Raise ``ChatError(weak_password)`` if :func:`password_problem` finds one."""
    problem = password_problem(password, name, min_bytes)
    if problem is not None:
        raise ChatError(messages.WEAK_PASSWORD, problem)


@dataclass(frozen=True)
class Verdict:
    """What verifying a password against a stored hash found.

    ``rehashed``: when the password matched a hash made with other
    parameters than the current ones, the same password hashed anew
    (store it in place of the old one); otherwise None.
    """

    matches: bool
    rehashed: str | None = None


def default_argon() -> argon2.PasswordHasher:
    """The Argon2id hasher with argon2-cffi's current recommended parameters."""
    return argon2.PasswordHasher(type=argon2.Type.ID)


def hash_blocking(argon: argon2.PasswordHasher, password: str | bytes) -> str:
    """``password``'s PHC string, computed in the calling thread.

    For a thread of the pool, or a program without a reactor
    (``chatd-admin``); never call it on the reactor thread.
    """
    return argon.hash(encode(password))


def verify_blocking(argon: argon2.PasswordHasher, phc: str, password: str | bytes) -> Verdict:
    """Check ``password`` against ``phc`` in the calling thread (see :func:`hash_blocking`).

    A stored hash that is malformed, or not Argon2, matches nothing.
    """
    secret = encode(password)
    try:
        argon.verify(phc, secret)
    except VerifyMismatchError:
        return Verdict(False)
    except (InvalidHashError, VerificationError):
        # A malformed or foreign hash: the account cannot log in until
        # its password is reset (chatd-admin reset-password).
        return Verdict(False)
    if argon.check_needs_rehash(phc):
        return Verdict(True, argon.hash(secret))
    return Verdict(True)


class Passwords:
    """Hashing and verification in a thread pool, ``concurrency`` at a time.

    ``threadpool`` defaults to the reactor's (``reactor.getThreadPool()``,
    started and stopped with the reactor).  ``argon`` defaults to
    :func:`default_argon`; tests pass cheap parameters.  ``max_queued``,
    when set, bounds the requests waiting for a slot: one more fails at
    once with ``ChatError(server_busy)`` instead of waiting behind
    thousands of others.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorThreads,
        threadpool: ThreadPool | None = None,
        argon: argon2.PasswordHasher | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_queued: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be 1 or more")
        self.reactor = reactor
        self._threadpool = threadpool
        self.argon = argon if argon is not None else default_argon()
        self.concurrency = concurrency
        self.max_queued = max_queued
        self._semaphore = DeferredSemaphore(concurrency)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Hashes and verifications running or waiting for a slot."""
        return self._in_flight

    @property
    def threadpool(self) -> ThreadPool:
        """The pool the work runs in."""
        if self._threadpool is None:
            self._threadpool = self.reactor.getThreadPool()
        return self._threadpool

    def needs_rehash(self, phc: str) -> bool:
        """Whether ``phc`` was made with other parameters than the current ones (cheap)."""
        try:
            return self.argon.check_needs_rehash(phc)
        except (InvalidHashError, VerificationError, ValueError):
            return True

    def hash(self, password: str | bytes) -> Deferred[str]:
        """``password``'s Argon2id PHC string, computed in the pool.

        Fails with ``ChatError(weak_password)`` at once, without hashing,
        for a password over :data:`MAX_PASSWORD_BYTES` bytes (the other
        weak-password rules are the caller's, :func:`check_password`).
        """
        if too_long(password):
            return fail(ChatError(messages.WEAK_PASSWORD, f"The password is too long: at most {MAX_PASSWORD_BYTES} bytes of UTF-8."))
        return self._run(hash_blocking, self.argon, password)

    def verify(self, phc: str, password: str | bytes) -> Deferred[Verdict]:
        """Whether ``password`` matches ``phc``, checked in the pool.

        A password over :data:`MAX_PASSWORD_BYTES` bytes matches nothing
        and is not hashed.  On a match with outdated parameters the
        :class:`Verdict` carries the new hash.
        """
        if too_long(password):
            return succeed(Verdict(False))
        return self._run(verify_blocking, self.argon, phc, password)

    def _run(self, work: Callable[..., _T], *args: object) -> Deferred[_T]:
        if self.max_queued is not None and self._in_flight - self.concurrency >= self.max_queued:
            return fail(ChatError(messages.SERVER_BUSY, "The server is busy checking passwords; try again shortly."))
        pool = self.threadpool

        def in_thread() -> Deferred[_T]:
            return deferToThreadPool(self.reactor, pool, work, *args)

        async def guarded() -> _T:
            self._in_flight += 1
            try:
                return await self._semaphore.run(in_thread)
            finally:
                self._in_flight -= 1

        return Deferred.fromCoroutine(guarded())

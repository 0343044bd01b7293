"""Passwords (issue 16): the weak_password rules, Argon2id PHC strings,
hashing in the thread pool behind a semaphore, never on the reactor."""

from __future__ import annotations

import threading
import time

import argon2
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd import messages
from chatd.accounts import passwords
from chatd.accounts.passwords import MAX_PASSWORD_BYTES, Passwords, Verdict, check_password, password_problem, too_long
from chatd.messages import ChatError
from tests.accounts_support import CountingArgon, SyncReactor


class WeakPasswordTests(SynchronousTestCase):
    def code(self, password: str, name: str = "alice", min_bytes: int = 8) -> str | None:
        try:
            check_password(password, name, min_bytes)
        except ChatError as error:
            self.assertNotIn(password or "\x01", error.text)  # the sentence never quotes it
            return error.code
        return None

    def test_good_passwords(self) -> None:
        self.assertIsNone(self.code("correct horse"))
        self.assertIsNone(self.code("x" * MAX_PASSWORD_BYTES))
        self.assertIsNone(self.code("ééééé", min_bytes=10))  # 10 bytes of UTF-8, 5 code points

    def test_short(self) -> None:
        self.assertEqual(self.code(""), messages.WEAK_PASSWORD)
        self.assertEqual(self.code("seven77"), messages.WEAK_PASSWORD)
        self.assertEqual(self.code("éééé", min_bytes=9), messages.WEAK_PASSWORD)  # 8 bytes
        self.assertIsNone(self.code("abc", min_bytes=3))
        self.assertIn("at least 8 bytes", password_problem("short", "alice") or "")

    def test_too_long_in_bytes(self) -> None:
        self.assertEqual(self.code("x" * (MAX_PASSWORD_BYTES + 1)), messages.WEAK_PASSWORD)
        self.assertEqual(self.code("é" * 513), messages.WEAK_PASSWORD)  # 1026 bytes, 513 code points
        self.assertTrue(too_long(b"x" * 1025))
        self.assertFalse(too_long("é" * 512))
        self.assertIn("too long", password_problem("x" * 2000, "alice") or "")

    def test_nul(self) -> None:
        self.assertEqual(self.code("long enough\x00"), messages.WEAK_PASSWORD)

    def test_equal_to_the_name(self) -> None:
        self.assertEqual(self.code("AliceBob", name="alicebob"), messages.WEAK_PASSWORD)
        self.assertEqual(self.code("alicebob", name="AliceBob"), messages.WEAK_PASSWORD)
        self.assertIsNone(self.code("alicebob1", name="alicebob"))

    def test_order_long_before_nul(self) -> None:
        self.assertIn("too long", password_problem("\x00" * 2000, "alice") or "")
        self.assertIn("U+0000", password_problem("\x00", "alice") or "")


class SyncPoolTests(SynchronousTestCase):
    """The pool's logic with a synchronous stand-in for the threads."""

    def setUp(self) -> None:
        self.argon = CountingArgon()
        self.reactor = SyncReactor()
        self.passwords = Passwords(self.reactor, argon=self.argon)  # type: ignore[arg-type]

    def test_phc_string_round_trip(self) -> None:
        phc = self.successResultOf(self.passwords.hash("correct horse"))
        self.assertTrue(phc.startswith("$argon2id$v=19$m=8,t=1,p=1$"), phc)
        self.assertNotIn("correct horse", phc)
        self.assertEqual(self.successResultOf(self.passwords.verify(phc, "correct horse")), Verdict(True))
        self.assertEqual(self.successResultOf(self.passwords.verify(phc, "wrong horse")), Verdict(False))
        self.assertEqual(self.reactor.pool.jobs, 3)  # type: ignore[attr-defined]

    def test_non_ascii_and_lone_surrogate(self) -> None:
        phc = self.successResultOf(self.passwords.hash("pässwörd\ud800"))
        self.assertEqual(self.successResultOf(self.passwords.verify(phc, "pässwörd\ud800")), Verdict(True))
        self.assertEqual(self.successResultOf(self.passwords.verify(phc, "pässwörd")), Verdict(False))
        # Bytes (what twisted.cred carries) are the same password.
        self.assertEqual(self.successResultOf(self.passwords.verify(phc, "pässwörd\ud800".encode("utf-8", "surrogatepass"))), Verdict(True))

    def test_malformed_hash_matches_nothing(self) -> None:
        self.assertEqual(self.successResultOf(self.passwords.verify("not a hash", "whatever1")), Verdict(False))
        self.assertEqual(self.successResultOf(self.passwords.verify("$argon2id$v=19$m=8,t=1,p=1$AAAA$BBBB", "x")), Verdict(False))

    def test_over_1024_bytes_never_hashed(self) -> None:
        huge = "x" * (MAX_PASSWORD_BYTES + 1)
        failure = self.failureResultOf(self.passwords.hash(huge), ChatError)
        self.assertEqual(failure.value.code, messages.WEAK_PASSWORD)
        phc = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(huge)
        self.assertEqual(self.successResultOf(self.passwords.verify(phc, huge)), Verdict(False))
        self.assertEqual(self.argon.calls, 0)
        self.assertEqual(self.reactor.pool.jobs, 0)  # type: ignore[attr-defined]

    def test_rehash_when_parameters_change(self) -> None:
        old = argon2.PasswordHasher(time_cost=1, memory_cost=16, parallelism=1).hash("correct horse")
        self.assertTrue(self.passwords.needs_rehash(old))
        verdict = self.successResultOf(self.passwords.verify(old, "correct horse"))
        self.assertTrue(verdict.matches)
        assert verdict.rehashed is not None
        self.assertTrue(verdict.rehashed.startswith("$argon2id$v=19$m=8,t=1,p=1$"))
        self.assertFalse(self.passwords.needs_rehash(verdict.rehashed))
        self.assertEqual(self.successResultOf(self.passwords.verify(verdict.rehashed, "correct horse")), Verdict(True))
        # A wrong password is not re-hashed.
        self.assertEqual(self.successResultOf(self.passwords.verify(old, "wrong horse")), Verdict(False))
        self.assertTrue(self.passwords.needs_rehash("garbage"))

    def test_default_parameters_are_argon2id(self) -> None:
        argon = passwords.default_argon()
        self.assertEqual(argon.type, argon2.Type.ID)
        self.assertGreaterEqual(argon.memory_cost, 19 * 1024)  # OWASP's floor for Argon2id

    def test_concurrency_must_be_positive(self) -> None:
        self.assertRaises(ValueError, Passwords, self.reactor, concurrency=0)


class GatedArgon(CountingArgon):
    """Hashes only once the test opens the gate; counts how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if not self.gate.wait(10):
                raise RuntimeError("the test never opened the gate")
            return super().hash(password, salt=salt)
        finally:
            with self.lock:
                self.running -= 1


class ThreadedTests(TestCase):
    """Real threads and the real reactor (trial runs it)."""

    def pool(self, size: int = 4) -> ThreadPool:
        pool = ThreadPool(minthreads=0, maxthreads=size, name="test-passwords")
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_hashing_runs_off_the_reactor_thread(self) -> Deferred[None]:
        argon = CountingArgon()
        pool = Passwords(reactor, self.pool(), argon=argon)  # type: ignore[arg-type]
        reactor_thread = threading.current_thread()

        async def work() -> None:
            phc = await pool.hash("correct horse")
            verdict = await pool.verify(phc, "correct horse")
            self.assertTrue(verdict.matches)
            self.assertEqual(argon.calls, 2)
            self.assertNotIn(reactor_thread, argon.threads)
            self.assertTrue(all("test-passwords" in thread.name for thread in argon.threads), [t.name for t in argon.threads])

        return Deferred.fromCoroutine(work())

    def test_default_pool_is_the_reactors(self) -> Deferred[None]:
        argon = CountingArgon()
        pool = Passwords(reactor, argon=argon)  # type: ignore[arg-type]
        self.assertIs(pool.threadpool, reactor.getThreadPool())  # type: ignore[attr-defined]
        reactor_thread = threading.current_thread()

        async def work() -> None:
            await pool.hash("correct horse")
            self.assertEqual(len(argon.threads), 1)
            self.assertIsNot(argon.threads[0], reactor_thread)

        return Deferred.fromCoroutine(work())

    def test_at_most_two_at_once(self) -> Deferred[None]:
        argon = GatedArgon()
        pool = Passwords(reactor, self.pool(size=6), argon=argon, concurrency=2)  # type: ignore[arg-type]
        results = [pool.hash(f"password {i}") for i in range(5)]
        self.assertEqual(pool.in_flight, 5)

        async def work() -> None:
            # Wait (bounded) until the pool is as busy as it may get.
            deadline = time.monotonic() + 5
            while argon.running < 2 and time.monotonic() < deadline:
                await _sleep(0.01)
            await _sleep(0.05)  # a third would have started by now if allowed
            self.assertEqual(argon.most, 2)
            argon.gate.set()
            hashes = await gatherResults(results)
            self.assertEqual(len(set(hashes)), 5)
            self.assertEqual(argon.most, 2)
            self.assertEqual(pool.in_flight, 0)

        return Deferred.fromCoroutine(work())

    def test_queue_limit_answers_server_busy(self) -> Deferred[None]:
        argon = GatedArgon()
        pool = Passwords(reactor, self.pool(), argon=argon, concurrency=1, max_queued=2)  # type: ignore[arg-type]
        waiting = [pool.hash(f"password {i}") for i in range(3)]  # one runs, two wait
        refused = pool.hash("one too many")
        failure = self.failureResultOf(refused, ChatError)
        self.assertEqual(failure.value.code, messages.SERVER_BUSY)
        self.assertNotIn("one too many", failure.value.text)
        argon.gate.set()

        async def work() -> None:
            await gatherResults(waiting)
            self.assertEqual(argon.hashed, 3)

        return Deferred.fromCoroutine(work())


def _sleep(seconds: float) -> Deferred[None]:
    done: Deferred[None] = Deferred()
    reactor.callLater(seconds, done.callback, None)
    return done

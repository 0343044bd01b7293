"""The login throttle and the registration rate (PROTOCOL.md section 6.4)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from chatd.accounts.throttle import IAuthThrottle, LocalThrottle, SlidingCounter, address_key


class LoginThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.throttle = LocalThrottle(self.clock)

    def allowed(self, address: str = "192.0.2.1", account: str = "alice") -> bool:
        return bool(self.successResultOf(self.throttle.login_allowed(address, account)))

    def failed_login(self, address: str = "192.0.2.1", account: str = "alice", times: int = 1) -> None:
        for _ in range(times):
            self.successResultOf(self.throttle.login_failed(address, account))

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthThrottle, self.throttle))

    def test_five_failures_from_one_address(self) -> None:
        self.failed_login(account="a", times=1)
        self.failed_login(account="b", times=3)
        self.assertTrue(self.allowed(account="c"))
        self.failed_login(account="d")
        self.assertFalse(self.allowed(account="c"))  # 5 from this address, each name once or more
        self.assertTrue(self.allowed(address="192.0.2.2", account="c"))

    def test_five_failures_for_one_account_from_many_addresses(self) -> None:
        for i in range(4):
            self.failed_login(address=f"192.0.2.{i}", account="Alice")
        self.assertTrue(self.allowed(address="198.51.100.1", account="alice"))
        self.failed_login(address="192.0.2.9", account="ALICE")
        self.assertFalse(self.allowed(address="198.51.100.1", account="alice"))
        self.assertTrue(self.allowed(address="198.51.100.1", account="bob"))

    def test_window_is_the_preceding_60_seconds(self) -> None:
        self.failed_login(times=4)
        self.clock.advance(30)
        self.failed_login()
        self.assertFalse(self.allowed())
        self.clock.advance(29.9)
        self.assertFalse(self.allowed())
        self.clock.advance(0.1)  # the first four are 60 s old: out of the window
        self.assertTrue(self.allowed())
        self.clock.advance(30)
        self.assertTrue(self.allowed())

    def test_refusals_do_not_count(self) -> None:
        self.failed_login(times=5)
        for _ in range(100):
            self.assertFalse(self.allowed())  # asking is not failing
        self.clock.advance(60)
        self.assertTrue(self.allowed())

    def test_ipv4_mapped_address_is_the_ipv4_one(self) -> None:
        self.assertEqual(address_key("::FFFF:192.0.2.1"), "192.0.2.1")
        self.assertEqual(address_key("2001:DB8::1"), "2001:db8::1")
        self.failed_login(address="::ffff:192.0.2.1", account="a", times=5)
        self.assertFalse(self.allowed(address="192.0.2.1", account="b"))

    def test_memory_bounded(self) -> None:
        for i in range(1000):
            self.failed_login(address=f"10.0.{i // 256}.{i % 256}", account=f"user{i}")
        self.assertEqual(self.throttle.tracked(), 2000)
        self.clock.advance(61)
        self.failed_login(address="10.9.9.9", account="late")
        self.assertEqual(self.throttle.tracked(), 2)  # the old entries went
        capped = LocalThrottle(self.clock, max_keys=10)
        for i in range(100):
            capped.login_failed(f"10.1.0.{i}", f"name{i}")
        self.assertEqual(capped.tracked(), 20)


class RegisterRateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LocalThrottle(self.clock, register_rate=3)

    def reserve(self, address: str = "192.0.2.1") -> bool:
        return bool(self.successResultOf(self.throttle.reserve_registration(address)))

    def test_three_per_address_per_minute(self) -> None:
        self.assertEqual([self.reserve() for _ in range(4)], [True, True, True, False])
        self.assertTrue(self.reserve("192.0.2.2"))
        self.clock.advance(59)
        self.assertFalse(self.reserve())
        self.clock.advance(1)
        self.assertTrue(self.reserve())

    def test_released_reservation_gives_its_place_back(self) -> None:
        self.assertTrue(self.reserve())
        self.assertTrue(self.reserve())
        self.assertTrue(self.reserve())
        self.successResultOf(self.throttle.release_registration("192.0.2.1"))
        self.assertTrue(self.reserve())
        self.assertFalse(self.reserve())

    def test_zero_means_no_limit(self) -> None:
        throttle = LocalThrottle(self.clock, register_rate=0)
        self.assertTrue(all(self.successResultOf(throttle.reserve_registration("192.0.2.1")) for _ in range(50)))
        self.successResultOf(throttle.release_registration("192.0.2.1"))
        self.assertEqual(throttle.tracked(), 0)

    def test_negative_rate_refused(self) -> None:
        self.assertRaises(ValueError, LocalThrottle, self.clock, register_rate=-1)


class SlidingCounterTests(SynchronousTestCase):
    def test_keeps_at_most_limit_per_key(self) -> None:
        counter = SlidingCounter(limit=3, window=10)
        for moment in range(10):
            counter.add("k", float(moment))
        self.assertEqual(counter.count("k", 9.0), 3)
        self.assertTrue(counter.full("k", 9.0))
        self.assertFalse(counter.full("k", 17.5))  # 7 left the window; 8 and 9 are in it
        self.assertEqual(counter.count("k", 17.5), 2)

    def test_limit_must_be_positive(self) -> None:
        self.assertRaises(ValueError, SlidingCounter, 0)

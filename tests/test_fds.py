"""Open files fitted to --max-connections at start (chatd.fds)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from chatd.fds import RESERVED, fit_connections


class FakeLimits:
    """resource's RLIMIT_NOFILE calls, over a soft and a hard limit."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, allowed: bool = True) -> None:
        self.soft, self.hard, self.allowed = soft, hard, allowed

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if not self.allowed:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


class FitConnectionsTests(SynchronousTestCase):
    def test_soft_limit_raised_for_the_cap(self) -> None:
        limits = FakeLimits(1024, 524288)
        self.assertEqual(fit_connections(10000, limits), (10000, 10000 + RESERVED))
        self.assertEqual(limits.soft, 10000 + RESERVED)

    def test_cap_lowered_to_the_hard_limit(self) -> None:
        limits = FakeLimits(1024, 4096)
        self.assertEqual(fit_connections(10000, limits), (4096 - RESERVED, 4096))

    def test_cap_lowered_when_raising_is_refused(self) -> None:
        limits = FakeLimits(1024, 524288, allowed=False)
        self.assertEqual(fit_connections(10000, limits), (1024 - RESERVED, 1024))

    def test_a_cap_that_fits_is_kept(self) -> None:
        limits = FakeLimits(20000, 20000)
        self.assertEqual(fit_connections(100, limits), (100, 20000))
        self.assertEqual(limits.soft, 20000)  # never lowered

    def test_no_cap_becomes_what_fits(self) -> None:
        limits = FakeLimits(1024, 8192)
        self.assertEqual(fit_connections(0, limits), (8192 - RESERVED, 8192))

    def test_unlimited_hard_limit(self) -> None:
        limits = FakeLimits(1024, FakeLimits.RLIM_INFINITY)
        self.assertEqual(fit_connections(10000, limits), (10000, 10000 + RESERVED))


class MakeServiceTests(SynchronousTestCase):
    def test_cap_fitted_to_the_open_files_limit(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from chatd import tap

        self.patch(tap, "fit_connections", lambda wanted: (500, 500 + RESERVED))
        options = tap.Options()
        options.parseOptions(["--port", "7001", "--history", "memory", "--max-connections", "10000"])
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factory = reactor.tcpServers[0][1]
        self.assertEqual(factory.config.max_connections, 500)
        self.assertEqual(factory.caps.max_connections, 500)

"""Per-connection limits that need a little state: rates, request budget,
send queue.

All read time from the reactor clock they are given, so tests drive them
with ``task.Clock``.  That clock is the wall clock in production, which
can step backwards (NTP, a VM resumed): every interval is clamped at 0, so
a backward step never takes tokens away or makes anyone wait for it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` per second.

    ``rate`` 0 means no limit.
    """

    def __init__(self, clock: Any, rate: float, burst: float) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = clock.seconds()

    @property
    def unlimited(self) -> bool:
        """Whether this bucket limits nothing."""
        return self.rate <= 0

    def available(self) -> bool:
        """Whether a token is there to take (takes none)."""
        if self.unlimited:
            return True
        self._refill()
        # Tolerance: at epoch-sized clock values, 0.1 s elapsed may come
        # out as 0.0999999 s.
        return self._tokens >= 1 - 1e-6

    def take(self) -> None:
        """Take one token (call after :meth:`available` said yes)."""
        if not self.unlimited:
            self._refill()
            self._tokens -= 1

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + _elapsed(self._updated, now) * self.rate)
        self._updated = now


class FloodMeter:
    """Counts rate-limit rejections, forgiving them at ``rate`` per second.

    A client over the rate by a little never reaches ``limit``; one that
    keeps sending at several times the rate does, within seconds.
    """

    def __init__(self, clock: Any, rate: float, limit: float) -> None:
        self.clock = clock
        self.rate = rate
        self.limit = limit
        self._level = 0.0
        self._updated = clock.seconds()

    def reject(self) -> bool:
        """Record one rejection; True when the flood limit is passed."""
        now = self.clock.seconds()
        self._level = max(0.0, self._level - _elapsed(self._updated, now) * self.rate) + 1
        self._updated = now
        return self._level > self.limit


def _elapsed(since: float, now: float) -> float:
    """Seconds from ``since`` to ``now``; 0 if the clock went backwards."""
    return max(0.0, now - since)


class RequestBudget(TokenBucket):
    """Every request costs work; each connection has a budget of it.

    Like ergo's "fakelag": a connection holds up to ``burst`` units,
    refilled at ``rate`` units per second.  Handling a request charges its
    cost, and the balance may go below zero (one expensive request is
    never refused for its size alone); while it is below zero the
    connection's next request waits (:meth:`wait`).  ``rate`` 0 turns the
    budget off.
    """

    @property
    def balance(self) -> float:
        """Units left now (negative: in debt)."""
        if not self.unlimited:
            self._refill()
        return self._tokens

    def wait(self) -> float:
        """Seconds until the next request may be handled (0: now)."""
        if self.unlimited:
            return 0.0
        balance = self.balance
        # The tolerance keeps float rounding from rescheduling forever.
        return 0.0 if balance > -1e-6 else -balance / self.rate

    def charge(self, cost: float) -> None:
        """Take ``cost`` units for a request being handled."""
        if not self.unlimited:
            self._tokens = self.balance - cost

    def behind(self, queued_cost: float) -> float:
        """Seconds of refill that ``queued_cost`` more units would need
        beyond the balance: how far a connection's input is ahead of it."""
        if self.unlimited:
            return 0.0
        return max(0.0, queued_cost - self.balance) / self.rate


@implementer(IPushProducer)
class SendQueueMeter:
    """How much output a connection holds unsent, from the producer API.

    The transport calls ``pauseProducing`` when its buffer passes its
    ``bufferSize`` and ``resumeProducing`` when the buffer is empty
    again.  While paused, the unsent output is at most the buffer size at
    the pause plus everything written since: that is :attr:`unsent`.
    The kernel's socket buffer is not counted (the transport cannot see it).
    """

    def __init__(self, buffer_size: int, on_resume: Callable[[], None] | None = None) -> None:
        self.buffer_size = buffer_size
        self.backlogged = False
        self._since_pause = 0
        self._on_resume = on_resume

    @property
    def unsent(self) -> int:
        """Upper bound of the bytes the transport holds (0 when flowing)."""
        return self.buffer_size + self._since_pause if self.backlogged else 0

    def wrote(self, size: int) -> None:
        """Count ``size`` bytes handed to the transport."""
        if self.backlogged:
            self._since_pause += size

    def pauseProducing(self) -> None:
        """The transport's buffer is full.

        Twisted calls this on *every* write while its buffer is over
        ``bufferSize``, not only on the first: only the first starts the
        count, or a reader that never reads would never be measured.
        """
        if not self.backlogged:
            self.backlogged = True
            self._since_pause = 0

    def resumeProducing(self) -> None:
        """The transport's buffer is empty."""
        self.backlogged = False
        self._since_pause = 0
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.backlogged = False

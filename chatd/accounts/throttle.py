"""The login throttle and the registration rate (PROTOCOL.md section 6.4).

- A login carrying a password is refused (``rate_limited``), before any
  hashing, when 5 or more ``auth_failed`` answers to logins carrying a
  password were given in the preceding 60 s to the same address or for
  the same account name.  Those refusals do not count; neither does a
  login without a password (the caller simply does not report it).
- An address may register ``--register-rate`` accounts per 60 s (0: no
  limit).

:class:`IAuthThrottle` is the contract, every answer a Deferred, so that
a cluster can keep the counters in Redis (keys with an expiry, shared by
every node); :class:`LocalThrottle` keeps them in this process, on an
injectable clock, in memory that stays bounded: entries older than the
window are dropped as new ones come, and at most ``max_keys`` addresses
or names are tracked per counter (the least recently seen go first).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

#: ``auth_failed`` answers within :data:`WINDOW` that make the next login ``rate_limited``.
LOGIN_FAILURES = 5

#: The window of both counters, in seconds.
WINDOW = 60.0

#: ``--register-rate``'s default: registrations per address per :data:`WINDOW`.
DEFAULT_REGISTER_RATE = 3

#: The most addresses or names one local counter tracks at once.
MAX_KEYS = 100_000


class IAuthThrottle(Interface):
    """Counters of failed logins and of registrations, per address and per name.

    ``address`` is the client's IP address as text (see
    :func:`address_key`); ``account`` an account name in any case.
    """

    def login_allowed(address: str, account: str) -> Deferred[bool]:
        """Whether a login with a password may be checked now (False: ``rate_limited``)."""

    def login_failed(address: str, account: str) -> Deferred[None]:
        """An ``auth_failed`` answer was given to a login with a password."""

    def reserve_registration(address: str) -> Deferred[bool]:
        """Take one of ``address``'s registrations of the window; False: none left (``rate_limited``).

        The registration counts from now on; give it back with
        :meth:`release_registration` if it does not happen after all.
        """

    def release_registration(address: str) -> Deferred[None]:
        """A reserved registration did not happen (refused, or failed)."""


def address_key(host: str) -> str:
    """The address a client is counted under: an IPv4 address mapped
    into IPv6 (``::ffff:192.0.2.1``) counts as the IPv4 one."""
    lowered = host.lower()
    if lowered.startswith("::ffff:") and "." in lowered:
        return lowered[len("::ffff:") :]
    return lowered


class SlidingCounter:
    """Events per key within the last ``window`` seconds, at most ``limit`` remembered per key.

    Only the newest ``limit`` times of a key matter to "``limit`` or more
    in the window", so no key holds more.  Keys are kept in the order they
    were last counted: those whose newest event left the window are at the
    front and are dropped there, a few at each call.
    """

    def __init__(self, limit: int, window: float = WINDOW, max_keys: int = MAX_KEYS) -> None:
        if limit < 1:
            raise ValueError("limit must be 1 or more")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many keys are tracked now."""
        return len(self._times)

    def count(self, key: str, now: float) -> int:
        """How many events of ``key`` lie in the window ending at ``now`` (at most ``limit``)."""
        self._expire(now)
        times = self._times.get(key)
        if times is None:
            return 0
        return sum(1 for moment in times if moment > now - self.window)

    def full(self, key: str, now: float) -> bool:
        """Whether ``key`` had ``limit`` or more events in the window."""
        return self.count(key, now) >= self.limit

    def add(self, key: str, now: float) -> None:
        """Count one event of ``key`` at ``now``."""
        self._expire(now)
        times = self._times.pop(key, None)
        if times is None:
            times = deque(maxlen=self.limit)
        times.append(now)
        self._times[key] = times
        while len(self._times) > self.max_keys:
            self._times.popitem(last=False)

    def remove_last(self, key: str) -> None:
        """Forget ``key``'s newest event (one that did not happen after all)."""
        times = self._times.get(key)
        if times:
            times.pop()
            if not times:
                del self._times[key]

    def _expire(self, now: float) -> None:
        # The front key was counted least recently: once its newest event
        # is in the window, every later key's is too.
        while self._times:
            key, times = next(iter(self._times.items()))
            if times and times[-1] > now - self.window:
                return
            del self._times[key]


@implementer(IAuthThrottle)
class LocalThrottle:
    """:class:`IAuthThrottle` in this process (one node), on ``clock``.

    ``register_rate`` 0 means no registration limit.
    """

    def __init__(
        self,
        clock: IReactorTime,
        register_rate: int = DEFAULT_REGISTER_RATE,
        failures: int = LOGIN_FAILURES,
        window: float = WINDOW,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if register_rate < 0:
            raise ValueError("register_rate must be 0 or more")
        self.clock = clock
        self.register_rate = register_rate
        self._by_address = SlidingCounter(failures, window, max_keys)
        self._by_account = SlidingCounter(failures, window, max_keys)
        self._registrations = SlidingCounter(register_rate, window, max_keys) if register_rate else None

    def tracked(self) -> int:
        """Addresses and names tracked now, over all counters (for tests and metrics)."""
        counters = [self._by_address, self._by_account] + ([self._registrations] if self._registrations else [])
        return sum(len(counter) for counter in counters)

    def login_allowed(self, address: str, account: str) -> Deferred[bool]:
        """False once 5 failures came from ``address`` or for ``account`` in the window."""
        now = self.clock.seconds()
        blocked = self._by_address.full(address_key(address), now) or self._by_account.full(account.lower(), now)
        return succeed(not blocked)

    def login_failed(self, address: str, account: str) -> Deferred[None]:
        """Count a failure for the address and for the account name."""
        now = self.clock.seconds()
        self._by_address.add(address_key(address), now)
        self._by_account.add(account.lower(), now)
        return succeed(None)

    def reserve_registration(self, address: str) -> Deferred[bool]:
        """Take a registration of ``address``'s window, if one is left."""
        if self._registrations is None:
            return succeed(True)
        now = self.clock.seconds()
        key = address_key(address)
        if self._registrations.full(key, now):
            return succeed(False)
        self._registrations.add(key, now)
        return succeed(True)

    def release_registration(self, address: str) -> Deferred[None]:
        """Give back the newest reservation of ``address``."""
        if self._registrations is not None:
            self._registrations.remove_last(address_key(address))
        return succeed(None)

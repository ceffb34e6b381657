"""Login throttling: failed attempts per client address, and per user name, in a moving window."""
from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import time
from typing import Iterator

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

import concurrency
from errors import TooManyRequestsError

# An attempt held back only by others still being checked waits about one bcrypt for them.
IN_FLIGHT_RETRY_AFTER_S = 1


class LoginAttempt:
    """One admitted login attempt; call failed() when its credentials were wrong."""

    def __init__(self) -> None:
        self.wrong = False

    def failed(self) -> None:
        self.wrong = True


class LoginThrottle:
    """Admit a login attempt only while its address and its user name have failures to spare.

    Only failures count, so a correct login is never locked out by earlier successes. The
    moving window (limits' MovingWindowRateLimiter) holds finished failures. limits cannot give a
    moving-window entry back, so hit() before bcrypt would charge correct logins too; and clear()
    on success would also forget failures from that address still being checked, and let anyone
    sharing the address (a NAT) wipe an attacker's count by logging in. Instead an attempt being
    checked holds a reservation here: it is admitted only while failures + reservations + 1 fit
    the limit, and admit-and-reserve, like record-and-release, happen under one lock, so of 30
    concurrent wrong attempts at most 5 are checked. Both live in this process's memory, as
    Flask-Limiter's memory:// storage did.

    The per-user-name limit caps guessing spread over many addresses. Its price: such a spread
    attack also holds the real user back until the window frees.
    """

    def __init__(self, max_failures_per_address: int, max_failures_per_user: int, window_s: int):
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items = (RateLimitItemPerSecond(max_failures_per_address, window_s, namespace="login-address"),
                       RateLimitItemPerSecond(max_failures_per_user, window_s, namespace="login-user"))
        self._in_flight: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = concurrency.Lock()

    @contextlib.contextmanager
    def attempt(self, address: str, username: str) -> Iterator[LoginAttempt]:
        """Reserve a slot for one attempt or raise TooManyRequestsError; record it if it failed."""
        # The user name is whatever the client sent (up to the 1 MiB body): key on a digest.
        user = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()
        keys = list(zip(self._items, (address or "unknown", user)))
        with self._lock:
            wait_s = max(self._wait_s(item, key) for item, key in keys)
            if wait_s:
                raise TooManyRequestsError("too many failed login attempts; try again later", retry_after_s=wait_s)
            for item, key in keys:
                self._in_flight[item.namespace, key] += 1
        attempt = LoginAttempt()
        try:
            yield attempt
        finally:
            with self._lock:
                for item, key in keys:
                    if attempt.wrong:
                        # Fits: the reservation kept its slot free, and the window only empties.
                        self._limiter.hit(item, key)
                    self._in_flight[item.namespace, key] -= 1
                    if not self._in_flight[item.namespace, key]:
                        del self._in_flight[item.namespace, key]

    def _wait_s(self, item: RateLimitItem, key: str) -> int:
        """Return 0 when one more attempt fits under `item` for `key`, else seconds to wait (>= 1)."""
        in_flight = self._in_flight[item.namespace, key]  # a Counter: 0 when absent, nothing stored
        stats = self._limiter.get_window_stats(item, key)
        if stats.remaining - in_flight >= 1:
            return 0
        if stats.remaining >= 1:  # failures leave room; attempts being checked take it
            return IN_FLIGHT_RETRY_AFTER_S
        # reset_time: when the oldest failure in the window leaves it, freeing a slot.
        return max(1, math.ceil(stats.reset_time - time.time()))

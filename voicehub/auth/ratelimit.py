"""An in-memory token bucket per remote address, for the unauthenticated auth endpoints.

Invariant: a key may take at most ``burst`` tokens at once and ``rate`` per second on
average; at most ``max_keys`` buckets are kept (the least recently used is dropped, so a
flood of addresses cannot grow memory without bound - a dropped bucket starts full,
which only errs on the side of serving). Limits are per process and reset on restart;
the durable defence against guessing is the per-account lockout.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        burst: int,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if burst < 1 or rate < 0:
            raise ValueError("burst must be at least 1 and rate non-negative")
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str | None) -> bool:
        """Take one token for ``key``; False when its bucket is empty (refuse the request)."""
        k = key or "?"
        now = self.clock()
        tokens, at = self._buckets.pop(k, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[k] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok

    def retry_after(self, key: str | None) -> float:
        """Seconds until ``key`` has a token again (0 if it has one now)."""
        entry = self._buckets.get(key or "?")
        if entry is None:
            return 0.0
        tokens, at = entry
        tokens = min(float(self.burst), tokens + max(0.0, self.clock() - at) * self.rate)
        if tokens >= 1.0:
            return 0.0
        return float("inf") if self.rate <= 0 else (1.0 - tokens) / self.rate

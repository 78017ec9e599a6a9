"""Local rate limiting of one route: a token bucket per key, in a bounded LRU.

A bucket holds up to `burst` tokens and gains `rate` tokens a second; a request
takes one token or is refused (429 `rate_limited`). Buckets are kept per key (the
whole route, a client IP, or a header's value); at most `max_keys` of them, the
least recently used dropped first, so a flood of distinct keys costs bounded memory
(a dropped key starts again with a full bucket, which errs on letting requests in).

Theory of operation
-------------------

Time is passed in (`now`, monotonic seconds: `Clock.now()`), so the decisions are
pure and tests step a `FakeClock`. A bucket is two floats, `tokens` and `at` (the
time `tokens` was computed); refill is lazy, on the next `take`::

    tokens = min(burst, tokens + (now - at) * rate)
    take(key, now)   tokens >= 1  -> tokens -= 1, allowed
                     tokens <  1  -> refused; retry_after = (1 - tokens) / rate
    reset            seconds until the bucket is full again: (burst - tokens) / rate

`update_config` keeps the buckets (a reload does not hand every client a fresh
burst) and clips their tokens to a lowered `burst`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateDecision", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What one `take` decided; `limit`, `remaining` and `reset` are the values of the
    RateLimit-Limit, -Remaining and -Reset headers."""

    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float


class RateLimiter:
    """Token buckets of one route; one object per route, kept across reloads."""

    __slots__ = ("_rate", "_burst", "_max_keys", "_buckets", "refused")

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        #: Requests refused since this limiter was made.
        self.refused = 0
        self.update_config(rate, burst, max_keys)

    def update_config(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        buckets = self._buckets
        for bucket in buckets.values():
            bucket[0] = min(bucket[0], burst)
        while len(buckets) > max_keys:
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> RateDecision:
        """Take one token from `key`'s bucket, if it has one."""
        rate, burst = self._rate, self._burst
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = [float(burst), now]
            if len(buckets) > self._max_keys:
                buckets.popitem(last=False)  # the least recently used
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(float(burst), bucket[0] + elapsed * rate)
        bucket[1] = now
        tokens = bucket[0]
        if tokens >= 1.0:
            tokens = bucket[0] = tokens - 1.0
            return RateDecision(True, burst, int(tokens), (burst - tokens) / rate, 0.0)
        self.refused += 1
        return RateDecision(False, burst, 0, (burst - tokens) / rate, (1.0 - tokens) / rate)

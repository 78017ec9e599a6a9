"""Admission per cluster: `max_requests` in flight and `max_pending` waiting for a
connection (Envoy's circuit-breaker thresholds, which are limits, not breakers).

Owns the two gauges (`active`, `pending`) and the overflow counters of one cluster.
Over a limit the caller answers at once with 503 `overflow` and `Retry-After: 1`:
there is no queue, because a queue in front of an overloaded cluster only turns
its overload into latency for everyone.

Theory of operation
-------------------

Two counters, each with one way in and one way out; every transition is below::

    try_admit()      active <  max_requests   -> active += 1, None (admitted)
                     active >= max_requests   -> overflows["max_requests"] += 1,
                                                 "max_requests"
    done()                                    -> active -= 1
    pending_enter()  pending <  max_pending   -> pending += 1, True
                     pending >= max_pending   -> overflows["max_pending"] += 1, False
    pending_exit()                            -> pending -= 1

A pending request is also active: it was admitted and now waits for a connection.
Every admitted request calls `done()` exactly once, and every `pending_enter()`
that returned True is paired with one `pending_exit()`, so both gauges return to
zero when the cluster is idle. `enabled=False` admits everything but still counts,
so that a reload turning limits on starts from the true numbers.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from sidecar.config.resilience import LimitsConfig

__all__ = ["LIMIT_NAMES", "MAX_PENDING", "MAX_REQUESTS", "ClusterLimits"]

MAX_REQUESTS: Final = "max_requests"
MAX_PENDING: Final = "max_pending"
LIMIT_NAMES: tuple[str, ...] = (MAX_REQUESTS, MAX_PENDING)
# Disabled limits become this bound instead of a branch on the hot path.
_UNLIMITED: Final = 1 << 62


class ClusterLimits:
    """Admission of one cluster; one object per cluster, kept across reloads.

    Gauges: `active` (requests in flight), `pending` (waiting for a connection).
    Counter: `overflows[limit name]`, requests refused by each limit.
    """

    __slots__ = ("_max_requests", "_max_pending", "_overflows", "overflows", "active",
                 "pending")

    def __init__(self, config: LimitsConfig) -> None:
        self.active = 0
        self.pending = 0
        self._overflows = dict.fromkeys(LIMIT_NAMES, 0)
        #: Read-only view for metrics; the same object for the life of the cluster.
        self.overflows = MappingProxyType(self._overflows)
        self.update_config(config)

    def update_config(self, config: LimitsConfig) -> None:
        """Take new limits. Gauges and counters stay; requests over a lowered limit
        finish normally, and new ones wait until the count drops below it."""
        self._max_requests = config.max_requests if config.enabled else _UNLIMITED
        self._max_pending = config.max_pending if config.enabled else _UNLIMITED

    def try_admit(self) -> str | None:
        """Admit one request (None), or name the limit it is over."""
        if self.active >= self._max_requests:
            self._overflows[MAX_REQUESTS] += 1
            return MAX_REQUESTS
        self.active += 1
        return None

    def done(self) -> None:
        """An admitted request is over (answered, failed or cancelled)."""
        self.active -= 1

    def pending_enter(self) -> bool:
        """An admitted request starts waiting for a connection; False: over max_pending."""
        if self.pending >= self._max_pending:
            self._overflows[MAX_PENDING] += 1
            return False
        self.pending += 1
        return True

    def pending_exit(self) -> None:
        """A waiting request got its connection, or gave up."""
        self.pending -= 1

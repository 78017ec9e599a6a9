"""Active health checks, the decisions: is an endpoint healthy, judged by its recent checks.

Owns the per-endpoint health state machine, the recent check results shown by the
admin API, which statuses pass, when the next check is due, and panic mode. No
I/O: the prober (elsewhere) sends the GET, then calls `HealthState.record()` with
what happened, and sleeps `next_delay()`.

Theory of operation
-------------------

All moves are decided by `_decide` (h11's Rule 1: one place)::

                    first passing check
      UNKNOWN ---------------------------------> HEALTHY
         |                                       |    ^
         | `unhealthy_threshold` failed          |    |
         | checks in a row                       |    |
         v      `unhealthy_threshold` failed     |    |
      UNHEALTHY <--- checks in a row ------------+    |
         |                                            |
         +--- `healthy_threshold` passing checks -----+
                         in a row

* UNKNOWN: never passed a check yet. Not usable: a new endpoint of a checked
  cluster takes traffic only after its first passing check, so one pass is
  enough here (the cluster's threshold is for recovering, not for joining).
* HEALTHY: `unhealthy_threshold` failed checks in a row make it UNHEALTHY; one
  pass in between starts the count again.
* UNHEALTHY: `healthy_threshold` passes in a row make it HEALTHY again.

Counts of passes and failures in a row survive a reload (`update_config`); new
thresholds apply from the next check.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass

from sidecar.config.resilience import HealthCheckConfig
from sidecar.core.clock import Clock

__all__ = ["CheckResult", "HealthChange", "HealthState", "HealthStatus", "in_panic",
           "status_passes"]


class HealthStatus(enum.Enum):
    """What active checks say of an endpoint."""

    UNKNOWN = 1  # never passed a check yet
    HEALTHY = 2
    UNHEALTHY = 3


@dataclass(frozen=True, slots=True)
class HealthChange:
    """One change of health: from, to, why, and when (monotonic seconds)."""

    previous: HealthStatus
    status: HealthStatus
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check, as the admin API shows it; `at_wall` is Unix time."""

    at_wall: float
    passed: bool
    status: int | None
    latency: float
    error: str


def status_passes(ranges: tuple[tuple[int, int], ...], status: int) -> bool:
    """Whether `status` is in one of the inclusive `(low, high)` ranges."""
    for low, high in ranges:
        if low <= status <= high:
            return True
    return False


def in_panic(healthy: int, total: int, threshold: float) -> bool:
    """Panic mode: fewer than `threshold` x `total` endpoints are healthy (never for 0)."""
    return total > 0 and healthy < threshold * total


def _checks(count: int, what: str) -> str:
    return f"{count} consecutive {what} check{'' if count == 1 else 's'}"


_UNKNOWN, _HEALTHY, _UNHEALTHY = HealthStatus.UNKNOWN, HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


class HealthState:
    """The active-check health of one endpoint.

    Parameters:
        config: the cluster's `health_check`; `update_config` replaces it.
        clock: `now()` stamps changes, `wall()` stamps the results kept for the admin API.
        history: how many recent results to keep (default 16).
    """

    __slots__ = ("_clock", "_config", "_failed", "_history", "_passed", "_ranges",
                 "_reason", "_since", "_status")

    def __init__(self, config: HealthCheckConfig, clock: Clock, history: int = 16) -> None:
        if history < 1:
            raise ValueError("history must keep at least one result")
        self._clock = clock
        self._config = config
        # The config's property parses the ranges on every read; a check needs them each time.
        self._ranges = config.status_ranges
        self._status = _UNKNOWN
        self._reason = ""
        self._since = clock.now()
        self._passed = 0  # passing checks in a row
        self._failed = 0  # failed checks in a row
        self._history: deque[CheckResult] = deque(maxlen=history)

    @property
    def config(self) -> HealthCheckConfig:
        return self._config

    @property
    def status(self) -> HealthStatus:
        return self._status

    @property
    def usable(self) -> bool:
        """Whether checks allow traffic: only HEALTHY (an UNKNOWN endpoint has not passed yet)."""
        return self._status is _HEALTHY

    @property
    def reason(self) -> str:
        """Why the status is what it is ("" before the first change)."""
        return self._reason

    @property
    def since(self) -> float:
        """Monotonic time of the last change (or of the creation)."""
        return self._since

    @property
    def consecutive_passes(self) -> int:
        return self._passed

    @property
    def consecutive_failures(self) -> int:
        return self._failed

    def passes(self, status: int) -> bool:
        """Whether a check answered with `status` passes (`expected_statuses`)."""
        return status_passes(self._ranges, status)

    def next_delay(self, rng: random.Random) -> float:
        """Seconds until the next check: `interval`, randomly longer or shorter by `jitter`."""
        config = self._config
        return max(0.0, config.interval + rng.uniform(-config.jitter, config.jitter))

    def last_results(self) -> tuple[CheckResult, ...]:
        """The kept check results, newest first."""
        return tuple(reversed(self._history))

    def record(self, passed: bool, *, status: int | None, latency: float,
               error: str = "") -> HealthChange | None:
        """Add one check's result; returns the change of status it made, if any.

        `status` is the answer's status (None when there was none: refused, timed out);
        `error` says what went wrong when there was no status to show.
        """
        self._history.append(CheckResult(self._clock.wall(), passed, status, latency, error))
        if passed:
            self._passed += 1
            self._failed = 0
        else:
            self._failed += 1
            self._passed = 0
        decided = self._decide(passed, status, error)
        if decided is None:
            return None
        new, reason = decided
        now = self._clock.now()
        change = HealthChange(self._status, new, reason, now)
        self._status = new
        self._reason = reason
        self._since = now
        return change

    def update_config(self, config: HealthCheckConfig) -> None:
        """Take a reloaded config; the status, counts and history are kept."""
        self._config = config
        self._ranges = config.status_ranges

    def _decide(self, passed: bool, status: int | None,
                error: str) -> tuple[HealthStatus, str] | None:
        """The state machine: the new status and its reason after a check, or None."""
        current = self._status
        if passed:
            if current is _UNKNOWN:
                return _HEALTHY, "first passing check"
            if current is _UNHEALTHY and self._passed >= self._config.healthy_threshold:
                return _HEALTHY, _checks(self._passed, "passing")
            return None
        if current is not _UNHEALTHY and self._failed >= self._config.unhealthy_threshold:
            what = f"status {status}" if status is not None else (error or "no answer")
            return _UNHEALTHY, f"{_checks(self._failed, 'failed')}: {what}"
        return None

"""Active health-check decisions, played through the state table with a FakeClock; no I/O."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sidecar.config.resilience import HealthCheckConfig
from sidecar.core.clock import FakeClock
from sidecar.core.health import (
    CheckResult,
    HealthChange,
    HealthState,
    HealthStatus,
    in_panic,
    status_passes,
)

UNKNOWN, HEALTHY, UNHEALTHY = HealthStatus.UNKNOWN, HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


def make(history: int = 16, **config: Any) -> tuple[HealthState, FakeClock]:
    clock = FakeClock(wall_offset=1.7e9)
    return HealthState(HealthCheckConfig(path="/healthz", **config), clock, history), clock


def passes(state: HealthState, n: int) -> list[HealthChange]:
    return [c for c in (state.record(True, status=200, latency=0.01) for _ in range(n))
            if c is not None]


def fails(state: HealthState, n: int, status: int | None = 500,
          error: str = "") -> list[HealthChange]:
    return [c for c in (state.record(False, status=status, latency=0.02, error=error)
                        for _ in range(n)) if c is not None]


def unhealthy(state: HealthState) -> None:
    fails(state, state.config.unhealthy_threshold)
    assert state.status is UNHEALTHY


def test_new_endpoint_is_unknown_and_not_usable() -> None:
    state, clock = make()
    assert state.status is UNKNOWN and not state.usable
    assert (state.reason, state.since, state.last_results()) == ("", clock.now(), ())


def test_unknown_becomes_healthy_on_its_first_passing_check() -> None:
    state, clock = make(healthy_threshold=5)
    clock.advance(2)
    assert passes(state, 1) == [HealthChange(UNKNOWN, HEALTHY, "first passing check",
                                             clock.now())]
    assert state.usable and (state.reason, state.since) == ("first passing check", clock.now())
    assert passes(state, 3) == []


def test_unknown_failures_below_threshold_then_a_pass_is_healthy() -> None:
    state, _ = make(unhealthy_threshold=3)
    assert fails(state, 2) == [] and state.status is UNKNOWN
    assert [c.reason for c in passes(state, 1)] == ["first passing check"]


def test_unknown_becomes_unhealthy_after_unhealthy_threshold() -> None:
    state, clock = make(unhealthy_threshold=3)
    assert fails(state, 2) == []
    assert fails(state, 1) == [HealthChange(UNKNOWN, UNHEALTHY,
                                            "3 consecutive failed checks: status 500",
                                            clock.now())]
    assert not state.usable


@pytest.mark.parametrize(("status", "error", "said"), [
    (503, "", "status 503"),
    (None, "timeout", "timeout"),
    (None, "connection refused", "connection refused"),
    (None, "", "no answer"),
])
def test_the_unhealthy_reason_says_what_the_last_check_saw(status: int | None, error: str,
                                                          said: str) -> None:
    state, _ = make(unhealthy_threshold=2)
    passes(state, 1)
    assert [c.reason for c in fails(state, 2, status, error)] == [
        f"2 consecutive failed checks: {said}"]


def test_healthy_needs_unhealthy_threshold_failures_in_a_row() -> None:
    state, clock = make(unhealthy_threshold=3)
    passes(state, 1)
    assert fails(state, 2) == [] and passes(state, 1) == [] and fails(state, 2) == []
    assert state.status is HEALTHY and state.consecutive_failures == 2
    clock.advance(5)
    assert fails(state, 1) == [HealthChange(HEALTHY, UNHEALTHY,
                                            "3 consecutive failed checks: status 500",
                                            clock.now())]
    assert fails(state, 5) == []  # already unhealthy


def test_one_failure_threshold_is_singular() -> None:
    state, _ = make(unhealthy_threshold=1, healthy_threshold=1)
    passes(state, 1)
    assert fails(state, 1)[0].reason == "1 consecutive failed check: status 500"
    assert passes(state, 1)[0].reason == "1 consecutive passing check"


def test_unhealthy_needs_healthy_threshold_passes_in_a_row() -> None:
    state, clock = make(healthy_threshold=2)
    unhealthy(state)
    assert passes(state, 1) == [] and not state.usable
    assert fails(state, 1) == []  # the run of passes starts again
    assert passes(state, 1) == [] and state.consecutive_passes == 1
    clock.advance(1)
    assert passes(state, 1) == [HealthChange(UNHEALTHY, HEALTHY, "2 consecutive passing checks",
                                             clock.now())]
    assert state.usable


def test_history_is_bounded_and_newest_first() -> None:
    state, clock = make(history=3)
    for i in range(5):
        state.record(i % 2 == 0, status=200 + i, latency=i / 10, error=f"e{i}")
        clock.advance(1)
    results = state.last_results()
    assert [r.status for r in results] == [204, 203, 202]
    assert results[0] == CheckResult(at_wall=1_000 + 4 + 1.7e9, passed=True, status=204,
                                     latency=0.4, error="e4")
    assert [r.passed for r in results] == [True, False, True]


def test_history_must_keep_something() -> None:
    with pytest.raises(ValueError):
        make(history=0)


def test_passes_against_expected_statuses() -> None:
    state, _ = make(expected_statuses=("200-299", 404))
    assert [s for s in (199, 200, 250, 299, 300, 404, 405, 500) if state.passes(s)] == [
        200, 250, 299, 404]
    default, _ = make()
    assert default.passes(200) and default.passes(399) and not default.passes(400)


def test_status_passes_is_a_pure_helper() -> None:
    assert status_passes(((200, 204), (301, 301)), 301)
    assert not status_passes(((200, 204),), 205)
    assert not status_passes((), 200)


def test_next_delay_is_interval_with_jitter() -> None:
    state, _ = make(interval=5, jitter=0.5)
    rng = random.Random(7)
    delays = [state.next_delay(rng) for _ in range(1000)]
    assert 4.5 <= min(delays) < 4.55 and 5.45 < max(delays) <= 5.5
    no_jitter, _ = make(interval=2, jitter=0)
    assert no_jitter.next_delay(rng) == 2.0


def test_update_config_keeps_status_counts_and_history() -> None:
    state, _ = make(unhealthy_threshold=5, expected_statuses=(200,))
    passes(state, 1)
    fails(state, 2)
    state.update_config(HealthCheckConfig(path="/ready", unhealthy_threshold=3,
                                          expected_statuses=(200, 503)))
    assert state.status is HEALTHY and state.consecutive_failures == 2
    assert len(state.last_results()) == 3 and state.passes(503)
    assert state.config.path == "/ready"
    assert fails(state, 1)[0].reason == "3 consecutive failed checks: status 500"


@pytest.mark.parametrize(("healthy", "total", "threshold", "panic"), [
    (0, 0, 0.5, False),
    (1, 4, 0.5, True),
    (2, 4, 0.5, False),
    (0, 3, 0.0, False),
    (0, 3, 0.1, True),
    (10, 10, 1.0, False),
    (9, 10, 1.0, True),
])
def test_in_panic(healthy: int, total: int, threshold: float, panic: bool) -> None:
    assert in_panic(healthy, total, threshold) is panic

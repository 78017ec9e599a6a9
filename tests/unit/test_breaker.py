"""The circuit breaker, played through its transition table with a FakeClock; no I/O."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sidecar.config.resilience import CircuitBreakerConfig
from sidecar.core.breaker import BreakerState, CircuitBreaker, Transition, classify_status
from sidecar.core.clock import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FixedJitter(random.Random):
    """uniform(a, b) always lands at the same place: 0 = a, 1 = b, 0.5 = no jitter."""

    def __init__(self, at: float = 0.5) -> None:
        super().__init__(0)
        self.at = at

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.at


def make(rng: random.Random | None = None, **config: Any) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(**config), clock,
                             rng if rng is not None else FixedJitter())
    return breaker, clock


def fail(breaker: CircuitBreaker, n: int, kind: str = "gateway_error") -> list[Transition]:
    """n failures; the transitions they made."""
    return [t for t in (breaker.on_failure(kind) for _ in range(n)) if t is not None]


def succeed(breaker: CircuitBreaker, n: int) -> list[Transition]:
    return [t for t in (breaker.on_success() for _ in range(n)) if t is not None]


def open_breaker(breaker: CircuitBreaker) -> Transition:
    transitions = fail(breaker, breaker.config.consecutive_failures)
    assert len(transitions) == 1 and transitions[0].state is OPEN
    return transitions[0]


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    clock.advance(breaker.retry_after())
    assert breaker.state is HALF_OPEN


# ---------------------------------------------------------------- CLOSED


def test_new_breaker_is_closed_and_allows() -> None:
    breaker, clock = make()
    assert breaker.state is CLOSED and breaker.allow()
    assert (breaker.reason, breaker.since) == ("", clock.now())
    assert breaker.retry_after() == 0.0 and breaker.open_until == 0.0
    assert (breaker.requests, breaker.failures, breaker.trips) == (0, 0, 0)
    assert breaker.poll() is None
    assert [s.value for s in BreakerState] == [1, 2, 3]


def test_slotted_no_instance_dict() -> None:
    breaker, _ = make()
    assert not hasattr(breaker, "__dict__")
    with pytest.raises(AttributeError):
        Transition(CLOSED, OPEN, "x", 0.0).reason = "y"  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "words"), [
    ("connect_failure", "connect failures"),
    ("reset", "resets"),
    ("timeout", "timeouts"),
    ("gateway_error", "gateway errors"),
    ("5xx", "5xx responses"),
])
def test_consecutive_failures_open_with_the_kind_in_the_reason(kind: str, words: str) -> None:
    breaker, clock = make(failure_on=("connect_failure", "reset", "timeout", "gateway_error",
                                      "5xx"))
    assert fail(breaker, 4, kind) == []
    clock.advance(1.5)
    assert fail(breaker, 1, kind) == [Transition(CLOSED, OPEN, f"5 consecutive {words}",
                                                 clock.now())]
    assert breaker.state is OPEN and not breaker.allow()
    assert (breaker.reason, breaker.since, breaker.trips) == (f"5 consecutive {words}",
                                                            clock.now(), 1)


def test_a_run_of_mixed_kinds_says_failures() -> None:
    breaker, _ = make()
    fail(breaker, 2, "timeout")
    fail(breaker, 2, "reset")
    assert fail(breaker, 1, "timeout")[0].reason == "5 consecutive failures"


def test_one_failure_threshold_is_singular() -> None:
    breaker, _ = make(consecutive_failures=1)
    assert fail(breaker, 1, "timeout")[0].reason == "1 consecutive timeout"


def test_a_success_ends_the_run() -> None:
    breaker, _ = make()
    fail(breaker, 4)
    succeed(breaker, 1)
    assert fail(breaker, 4) == []
    assert breaker.state is CLOSED
    assert fail(breaker, 1)[0].reason == "5 consecutive gateway errors"


def test_failure_on_filters_kinds_by_default_5xx_is_a_success() -> None:
    breaker, _ = make()
    assert breaker.is_failure("gateway_error") and not breaker.is_failure("5xx")
    fail(breaker, 4, "gateway_error")
    assert fail(breaker, 10, "5xx") == []  # the endpoint answered: the run is over
    assert fail(breaker, 4, "gateway_error") == []
    assert (breaker.requests, breaker.failures, breaker.state) == (18, 8, CLOSED)


def test_failure_on_with_5xx_counts_it() -> None:
    breaker, _ = make(failure_on=("5xx",))
    assert breaker.is_failure("5xx") and not breaker.is_failure("timeout")
    assert fail(breaker, 20, "timeout") == []
    assert fail(breaker, 5, "5xx")[0].reason == "5 consecutive 5xx responses"


def test_unknown_failure_kind_is_a_bug() -> None:
    breaker, _ = make()
    with pytest.raises(ValueError, match="unknown failure kind 'oops'"):
        breaker.on_failure("oops")


@pytest.mark.parametrize(("status", "kind"), [
    (502, "gateway_error"), (503, "gateway_error"), (504, "gateway_error"),
    (500, "5xx"), (501, "5xx"), (505, "5xx"), (599, "5xx"),
    (200, None), (404, None), (499, None), (600, None), (100, None),
])
def test_classify_status(status: int, kind: str | None) -> None:
    assert classify_status(status) == kind


# ---------------------------------------------------------------- the window


def rate_breaker(**config: Any) -> tuple[CircuitBreaker, FakeClock]:
    """A breaker that opens on the failure rate only."""
    return make(consecutive_failures=1000, **config)


def test_failure_rate_opens_once_the_window_holds_min_requests() -> None:
    breaker, clock = rate_breaker(failure_rate=0.61, min_requests=20, window=10)
    succeed(breaker, 8)
    assert fail(breaker, 12) == []  # 12 of 20 = 0.60, below 0.61
    assert fail(breaker, 1) == [Transition(CLOSED, OPEN, "failure rate 0.62 over 10 s",
                                           clock.now())]  # 13 of 21


def test_failure_rate_needs_min_requests() -> None:
    breaker, _ = rate_breaker(failure_rate=0.5, min_requests=20)
    assert fail(breaker, 19) == []  # all failed, but only 19 requests
    assert fail(breaker, 1)[0].reason == "failure rate 1.00 over 10 s"


def test_failure_rate_reached_exactly_opens() -> None:
    breaker, _ = rate_breaker(failure_rate=0.5, min_requests=20, window=2.5)
    succeed(breaker, 10)
    assert fail(breaker, 9) == []
    assert fail(breaker, 1)[0].reason == "failure rate 0.50 over 2.5 s"


def test_failures_older_than_the_window_expire() -> None:
    breaker, clock = rate_breaker(min_requests=20, window=10)
    fail(breaker, 19)
    clock.advance(10)  # every bucket is stale: zeroed in one step
    assert fail(breaker, 19) == []
    clock.advance(5)  # these 19 are still inside the window
    assert fail(breaker, 1)[0].reason == "failure rate 1.00 over 10 s"


def test_the_window_slides_one_bucket_at_a_time() -> None:
    # One failure a second: a 10 s window never holds more than 10.
    breaker, clock = rate_breaker(min_requests=11, window=10)
    for _ in range(30):
        assert fail(breaker, 1) == []
        clock.advance(1)
    breaker, clock = rate_breaker(min_requests=10, window=10)
    for _ in range(9):
        assert fail(breaker, 1) == []
        clock.advance(1)
    assert fail(breaker, 1)[0].reason == "failure rate 1.00 over 10 s"


def test_successes_fall_out_of_the_window_too() -> None:
    breaker, clock = rate_breaker(min_requests=10, failure_rate=0.5)
    succeed(breaker, 100)
    clock.advance(9.5)
    assert fail(breaker, 9) == []  # 9 of 109
    clock.advance(1)  # the successes' bucket is out: 9 of 9, still below min_requests
    assert fail(breaker, 1)[0].reason == "failure rate 1.00 over 10 s"


# ---------------------------------------------------------------- OPEN and its time


def test_open_lasts_open_duration_then_half_opens_lazily() -> None:
    breaker, clock = make(open_duration=5)
    opened = open_breaker(breaker)
    assert breaker.retry_after() == 5.0 and breaker.open_until == opened.at + 5
    clock.advance(4.999)
    assert not breaker.allow() and breaker.state is OPEN
    assert breaker.retry_after() == pytest.approx(0.001)
    assert breaker.poll() is None
    clock.advance(0.001)
    assert breaker.allow()  # moves to HALF_OPEN and takes the probe slot
    assert breaker.state is HALF_OPEN
    assert (breaker.reason, breaker.since) == ("open time elapsed", clock.now())
    assert breaker.retry_after() == 0.0 and breaker.open_until == 0.0
    assert breaker.poll() == Transition(OPEN, HALF_OPEN, "open time elapsed", clock.now())
    assert breaker.poll() is None  # reported once


def test_poll_makes_the_move_itself() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.poll() == Transition(OPEN, HALF_OPEN, "open time elapsed", clock.now())


def test_an_unreported_move_is_dropped_by_a_later_transition() -> None:
    breaker, clock = make(close_after=1)
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.allow()
    closed = breaker.on_success()
    assert closed == Transition(HALF_OPEN, CLOSED, "probe succeeded", clock.now())
    assert breaker.poll() is None


@pytest.mark.parametrize(("at", "factor"), [(0.0, 0.9), (0.5, 1.0), (1.0, 1.1)])
def test_open_time_jitter_is_ten_percent(at: float, factor: float) -> None:
    breaker, _ = make(FixedJitter(at), open_duration=5)
    open_breaker(breaker)
    assert breaker.retry_after() == pytest.approx(5 * factor)


def test_seeded_jitter_stays_within_bounds_and_spreads() -> None:
    times = set()
    for seed in range(200):
        breaker, _ = make(random.Random(seed), open_duration=5)
        open_breaker(breaker)
        times.add(breaker.retry_after())
    assert 4.5 <= min(times) < 4.6 and 5.4 < max(times) <= 5.5
    assert len(times) == 200


def fail_probe(breaker: CircuitBreaker, clock: FakeClock, kind: str = "timeout") -> Transition:
    half_open(breaker, clock)
    assert breaker.allow()
    transition = breaker.on_failure(kind)
    assert transition is not None
    return transition


def test_each_failed_probe_doubles_the_open_time_up_to_the_cap() -> None:
    breaker, clock = make(open_duration=5, max_open_duration=60)
    open_breaker(breaker)
    seen = [breaker.retry_after()]
    for _ in range(6):
        fail_probe(breaker, clock)
        seen.append(breaker.retry_after())
    assert seen == [5, 10, 20, 40, 60, 60, 60]
    assert breaker.trips == 7


def test_the_cap_keeps_its_jitter() -> None:
    rng = FixedJitter(1.0)
    breaker, clock = make(rng, open_duration=5, max_open_duration=12)
    open_breaker(breaker)
    for _ in range(3):
        fail_probe(breaker, clock)
    assert breaker.retry_after() == pytest.approx(12 * 1.1)
    rng.at = 0.0
    fail_probe(breaker, clock)
    assert breaker.retry_after() == pytest.approx(12 * 0.9)


def test_closing_resets_the_doubling() -> None:
    breaker, clock = make(open_duration=5, close_after=1)
    open_breaker(breaker)
    fail_probe(breaker, clock)
    fail_probe(breaker, clock)
    assert breaker.retry_after() == 20
    half_open(breaker, clock)
    assert breaker.allow()
    assert breaker.on_success() is not None
    open_breaker(breaker)
    assert breaker.retry_after() == 5


def test_outcomes_while_open_count_but_move_nothing() -> None:
    breaker, _ = make()
    open_breaker(breaker)
    assert fail(breaker, 10) == [] and succeed(breaker, 10) == []
    assert breaker.state is OPEN
    assert (breaker.requests, breaker.failures, breaker.trips) == (25, 15, 1)


# ---------------------------------------------------------------- HALF_OPEN


def test_probe_failure_reopens_for_twice_as_long() -> None:
    breaker, clock = make(open_duration=5)
    open_breaker(breaker)
    assert fail_probe(breaker, clock, "reset") == Transition(HALF_OPEN, OPEN,
                                                            "probe failed: reset", clock.now())
    assert breaker.state is OPEN and not breaker.allow()
    assert breaker.retry_after() == 10 and breaker.trips == 2


def test_close_after_successful_probes() -> None:
    breaker, clock = make(close_after=2)
    open_breaker(breaker)
    half_open(breaker, clock)
    assert breaker.allow() and not breaker.allow()  # one probe at a time (default)
    assert breaker.on_success() is None and breaker.state is HALF_OPEN
    assert breaker.allow()
    clock.advance(0.2)
    assert breaker.on_success() == Transition(HALF_OPEN, CLOSED, "probe succeeded",
                                              clock.now())
    assert breaker.allow() and breaker.allow()
    # The window started again: a single failure is not a rate of 1.0.
    assert fail(breaker, 4) == []


def test_half_open_admits_half_open_requests_at_once() -> None:
    breaker, clock = make(half_open_requests=2, close_after=3)
    open_breaker(breaker)
    half_open(breaker, clock)
    assert [breaker.allow() for _ in range(3)] == [True, True, False]
    breaker.release_probe()  # a client went away: its slot comes back
    assert breaker.allow() and not breaker.allow()
    assert breaker.on_success() is None
    assert breaker.allow() and not breaker.allow()
    succeed(breaker, 1)
    assert breaker.on_success() == Transition(HALF_OPEN, CLOSED, "probe succeeded",
                                              clock.now())


def test_release_probe_never_goes_below_zero_nor_acts_outside_half_open() -> None:
    breaker, clock = make()
    breaker.release_probe()
    open_breaker(breaker)
    breaker.release_probe()
    half_open(breaker, clock)
    for _ in range(3):
        breaker.release_probe()
    assert breaker.allow() and not breaker.allow()


def test_an_uncounted_kind_from_a_probe_is_a_success() -> None:
    breaker, clock = make(close_after=1)
    open_breaker(breaker)
    half_open(breaker, clock)
    assert breaker.allow()
    assert breaker.on_failure("5xx") == Transition(HALF_OPEN, CLOSED, "probe succeeded",
                                                   clock.now())


def test_outcomes_with_no_probe_in_flight_are_stragglers() -> None:
    breaker, clock = make(close_after=1)
    open_breaker(breaker)
    half_open(breaker, clock)
    assert breaker.on_success() is None and breaker.on_failure("timeout") is None
    assert breaker.state is HALF_OPEN


# ---------------------------------------------------------------- admin


def test_trip_with_a_duration() -> None:
    breaker, clock = make(open_duration=5)
    assert breaker.trip(duration=30) == Transition(CLOSED, OPEN, "tripped by admin",
                                                   clock.now())
    assert breaker.retry_after() == 30 and breaker.trips == 1
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow() and breaker.state is HALF_OPEN


def test_trip_without_duration_uses_the_current_open_time() -> None:
    breaker, clock = make(FixedJitter(1.0), open_duration=5)
    assert breaker.trip("draining").reason == "draining"
    assert breaker.retry_after() == pytest.approx(5.5)


def test_trip_while_open_restarts_the_open_time() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(3)
    assert breaker.trip(duration=100) == Transition(OPEN, OPEN, "tripped by admin",
                                                    clock.now())
    assert breaker.retry_after() == 100 and breaker.trips == 2


def test_trip_from_half_open_keeps_probes_from_leaking() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    half_open(breaker, clock)
    assert breaker.allow()
    breaker.trip(duration=1)
    clock.advance(1)
    assert breaker.allow()  # the old probe's slot was not carried over


@pytest.mark.parametrize("duration", [0.0, -1.0])
def test_trip_rejects_a_non_positive_duration(duration: float) -> None:
    breaker, _ = make()
    with pytest.raises(ValueError, match="positive"):
        breaker.trip(duration=duration)
    assert breaker.state is CLOSED


def test_reset_closes_and_forgets_counts_and_doubling() -> None:
    breaker, clock = make(open_duration=5)
    open_breaker(breaker)
    fail_probe(breaker, clock)
    clock.advance(1)
    assert breaker.reset() == Transition(OPEN, CLOSED, "reset by admin", clock.now())
    assert breaker.allow() and breaker.retry_after() == 0
    fail(breaker, 4)
    assert breaker.reset("operator").previous is CLOSED
    assert fail(breaker, 4) == []  # the first 4 were forgotten
    assert fail(breaker, 1)[0].reason == "5 consecutive gateway errors"
    assert breaker.retry_after() == 5  # not 20: the doubling was forgotten too
    assert (breaker.requests, breaker.failures, breaker.trips) == (15, 15, 3)


# ---------------------------------------------------------------- reloads and disabled


def test_update_config_keeps_state_and_counts() -> None:
    breaker, clock = make()
    fail(breaker, 4)
    assert breaker.update_config(CircuitBreakerConfig(consecutive_failures=5, close_after=3)) \
        is None
    assert fail(breaker, 1)[0].reason == "5 consecutive gateway errors"
    until = breaker.open_until
    breaker.update_config(CircuitBreakerConfig(open_duration=1))
    assert breaker.state is OPEN and breaker.open_until == until
    assert breaker.config.open_duration == 1


def test_update_config_lower_threshold_applies_on_the_next_failure() -> None:
    breaker, _ = make()
    fail(breaker, 4)
    breaker.update_config(CircuitBreakerConfig(consecutive_failures=2))
    assert breaker.state is CLOSED
    assert fail(breaker, 1)[0].reason == "5 consecutive gateway errors"


def test_update_config_changes_failure_on() -> None:
    breaker, _ = make()
    breaker.update_config(CircuitBreakerConfig(failure_on=("5xx",)))
    assert fail(breaker, 10, "timeout") == []
    assert fail(breaker, 5, "5xx") != []


def test_update_config_new_window_restarts_the_window() -> None:
    breaker, _ = rate_breaker(min_requests=20)
    fail(breaker, 19)
    breaker.update_config(CircuitBreakerConfig(consecutive_failures=1000, window=20))
    assert fail(breaker, 19) == []
    assert fail(breaker, 1)[0].reason == "failure rate 1.00 over 20 s"


def test_disabled_never_opens_but_counts() -> None:
    breaker, _ = make(enabled=False)
    assert fail(breaker, 100) == [] and fail(breaker, 100, "5xx") == []
    assert breaker.allow() and breaker.state is CLOSED
    assert (breaker.requests, breaker.failures, breaker.trips) == (200, 100, 0)
    with pytest.raises(ValueError, match="disabled"):
        breaker.trip()
    assert breaker.reset().state is CLOSED


def test_disabling_by_reload_closes_and_enabling_starts_clean() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    assert breaker.update_config(CircuitBreakerConfig(enabled=False)) == Transition(
        OPEN, CLOSED, "breaker disabled", clock.now())
    assert breaker.allow() and fail(breaker, 10) == []
    assert breaker.update_config(CircuitBreakerConfig()) is None
    assert fail(breaker, 4) == []  # the 10 failures while disabled were not kept
    assert fail(breaker, 1) != []

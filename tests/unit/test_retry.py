"""Retries: failed tries in, decisions out (retry or not, why, after how long).

Seeded `random.Random`, no clock, no sleeps: the outage simulation at the end steps
its own event queue.
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any, cast

import pytest

from sidecar.config.resilience import LimitsConfig, RetryBudgetConfig, RetryConfig
from sidecar.core.clock import FakeClock
from sidecar.core.limits import ClusterLimits
from sidecar.core.retry import (
    CONNECT_FAILURE,
    GATEWAY_ERROR,
    IDEMPOTENT_METHODS,
    RESET,
    RETRIABLE_STATUS_CODES,
    SERVER_ERROR,
    STALE,
    TIMEOUT,
    AttemptPlan,
    BodyReplay,
    NoRetry,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
    backoff_delay,
    classify_status,
    replay_refusal,
    try_timeout,
)

B = BodyReplay


class Top(random.Random):
    """Always draws the upper bound: the backoff ceiling itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


def policy(*, allow: bool = False, rng: random.Random | None = None,
           **config: Any) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**config), rng or random.Random(7),
                       retry_non_idempotent=allow)


def plan(method: str = "GET", budget: RetryBudget | None = None, *, allow: bool = False,
         **config: Any) -> AttemptPlan:
    return policy(allow=allow, **config).plan(method, budget)


def budget(clock: FakeClock | None = None, **config: Any) -> RetryBudget:
    """A budget with only its concurrency rule unless the test asks for more: no floor
    rate, and no requests recorded (so the rate rule allows nothing)."""
    config.setdefault("min_retry_rate", 0)
    return RetryBudget(RetryBudgetConfig(**config), clock or FakeClock())


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(("status", "kind"), [
    (200, None), (304, None), (404, None), (499, None),
    (500, SERVER_ERROR), (501, SERVER_ERROR), (502, GATEWAY_ERROR), (503, GATEWAY_ERROR),
    (504, GATEWAY_ERROR), (505, SERVER_ERROR), (599, SERVER_ERROR),
])
def test_classify_status(status: int, kind: str | None) -> None:
    assert classify_status(status) == kind


def test_idempotent_methods_are_rfc_9110() -> None:
    assert IDEMPOTENT_METHODS == {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
    assert not {"POST", "PATCH", "CONNECT"} & IDEMPOTENT_METHODS


# ---------------------------------------------------------------- the replay rule

# (idempotent, sent, route allows non-idempotent, body) -> refusal
REPLAY_RULE = [
    (True, True, False, B.NONE, None),
    (True, True, False, B.BUFFERED, None),
    (True, True, False, B.UNREAD, None),
    (True, True, False, B.KEPT, None),
    (True, True, False, B.LOST, NoRetry.BODY_NOT_REPLAYABLE),
    (True, False, False, B.LOST, NoRetry.BODY_NOT_REPLAYABLE),
    (False, True, False, B.NONE, NoRetry.NON_IDEMPOTENT),
    (False, True, False, B.BUFFERED, NoRetry.NON_IDEMPOTENT),
    (False, True, False, B.KEPT, NoRetry.NON_IDEMPOTENT),
    # May it be sent twice is asked before can it be.
    (False, True, False, B.LOST, NoRetry.NON_IDEMPOTENT),
    # Never left: any method, if the body is still whole (or was never read).
    (False, False, False, B.NONE, None),
    (False, False, False, B.BUFFERED, None),
    (False, False, False, B.UNREAD, None),
    (False, False, False, B.KEPT, None),
    (False, False, False, B.LOST, NoRetry.BODY_NOT_REPLAYABLE),
    # The route allows it: any method, if the body is still whole.
    (False, True, True, B.BUFFERED, None),
    (False, True, True, B.KEPT, None),
    (False, True, True, B.LOST, NoRetry.BODY_NOT_REPLAYABLE),
]


@pytest.mark.parametrize(("idempotent", "sent", "allow", "body", "refusal"), REPLAY_RULE)
def test_replay_rule(idempotent: bool, sent: bool, allow: bool, body: BodyReplay,
                     refusal: NoRetry | None) -> None:
    assert replay_refusal(idempotent=idempotent, sent=sent, allow_non_idempotent=allow,
                          body=body) == refusal


@pytest.mark.parametrize(("idempotent", "sent", "allow", "body", "refusal"), REPLAY_RULE)
def test_plans_follow_the_replay_rule(idempotent: bool, sent: bool, allow: bool,
                                      body: BodyReplay, refusal: NoRetry | None) -> None:
    p = plan("PUT" if idempotent else "POST", allow=allow)
    decision = p.decide(RESET, sent=sent, body=body)
    assert decision.retry is (refusal is None)
    assert decision.reason == (refusal or RESET)


@pytest.mark.parametrize("sent", [True, False])
def test_a_connect_failure_never_left_whatever_the_caller_says(sent: bool) -> None:
    decision = plan("POST").decide(CONNECT_FAILURE, sent=sent, body=B.BUFFERED)
    assert decision.retry and decision.reason == CONNECT_FAILURE


# ---------------------------------------------------------------- what is retried


@pytest.mark.parametrize(("config", "kind", "status", "reason"), [
    # Defaults: connect_failure, reset, timeout, gateway_error.
    ({}, CONNECT_FAILURE, None, CONNECT_FAILURE),
    ({}, RESET, None, RESET),
    ({}, TIMEOUT, None, TIMEOUT),
    ({}, GATEWAY_ERROR, None, GATEWAY_ERROR),
    ({}, None, 502, GATEWAY_ERROR),
    ({}, None, 503, GATEWAY_ERROR),
    ({}, None, 504, GATEWAY_ERROR),
    ({}, None, 500, NoRetry.NOT_RETRIABLE),
    ({}, None, 404, NoRetry.NOT_RETRIABLE),
    ({}, None, 200, NoRetry.NOT_RETRIABLE),
    ({}, None, None, NoRetry.NOT_RETRIABLE),
    ({}, SERVER_ERROR, None, NoRetry.NOT_RETRIABLE),
    ({}, "protocol", None, NoRetry.NOT_RETRIABLE),
    # The kind wins over the status when both are given.
    ({}, CONNECT_FAILURE, 200, CONNECT_FAILURE),
    # 5xx covers every 500-599 and, within it, gateway errors.
    ({"retry_on": ["5xx"]}, None, 500, SERVER_ERROR),
    ({"retry_on": ["5xx"]}, None, 599, SERVER_ERROR),
    ({"retry_on": ["5xx"]}, None, 503, GATEWAY_ERROR),
    ({"retry_on": ["5xx"]}, GATEWAY_ERROR, None, GATEWAY_ERROR),
    ({"retry_on": ["5xx"]}, RESET, None, NoRetry.NOT_RETRIABLE),
    ({"retry_on": ["5xx"]}, None, 499, NoRetry.NOT_RETRIABLE),
    ({"retry_on": ["timeout"]}, None, 503, NoRetry.NOT_RETRIABLE),
    ({"retry_on": ["retriable_status_codes"], "retriable_status_codes": [409, 503]},
     None, 409, RETRIABLE_STATUS_CODES),
    ({"retry_on": ["retriable_status_codes"], "retriable_status_codes": [409, 503]},
     None, 503, GATEWAY_ERROR),
    ({"retry_on": ["retriable_status_codes"], "retriable_status_codes": [409]},
     None, 410, NoRetry.NOT_RETRIABLE),
    ({"enabled": False}, CONNECT_FAILURE, None, NoRetry.DISABLED),
    ({"enabled": False}, None, 503, NoRetry.DISABLED),
])
def test_what_is_retried(config: dict[str, Any], kind: str | None, status: int | None,
                         reason: str) -> None:
    p = policy(**config)
    decision = p.plan("GET").decide(kind, status, sent=True, body=B.NONE)
    assert decision.reason == reason
    assert decision.retry is (reason not in NoRetry.__members__.values())
    if status is not None and kind is None:
        assert p.retries_status(status) is decision.retry


def test_max_retries_bounds_the_counted_retries() -> None:
    p = plan(max_retries=2)
    assert [p.decide(None, 503, sent=True, body=B.NONE).retry for _ in range(3)] == \
        [True, True, False]
    assert p.decide(None, 503, sent=True, body=B.NONE).reason == NoRetry.MAX_RETRIES
    assert p.retries == 2 and p.attempt == 3


def test_max_retries_zero_means_one_try() -> None:
    decision = plan(max_retries=0).decide(CONNECT_FAILURE, sent=False, body=B.NONE)
    assert decision == RetryDecision(False, NoRetry.MAX_RETRIES)


def test_a_retry_needs_time_for_its_backoff() -> None:
    p = plan(rng=Top(), backoff_base=0.1, backoff_max=0.1)
    assert p.decide(RESET, sent=True, body=B.NONE, remaining=0.1).reason == NoRetry.DEADLINE
    assert p.retries == 0
    assert p.decide(RESET, sent=True, body=B.NONE, remaining=0.11).retry
    assert p.decide(RESET, sent=True, body=B.NONE, remaining=None).retry


def test_budget_exhausted() -> None:
    b = budget(min_concurrent=1, ratio=0.1)
    first, second = plan("GET", b), plan("GET", b)
    assert first.decide(RESET, sent=True, body=B.NONE, active_requests=2).retry
    refused = second.decide(RESET, sent=True, body=B.NONE, active_requests=2)
    assert refused == RetryDecision(False, NoRetry.BUDGET_EXHAUSTED)
    assert second.retries == 0 and b.refused == 1 and b.retries_in_flight == 1
    first.finish()
    assert b.retries_in_flight == 0
    assert second.decide(RESET, sent=True, body=B.NONE, active_requests=2).retry


def test_checks_run_in_the_documented_order() -> None:
    # Not retriable beats everything; max_retries beats the replay rule; the replay rule
    # beats the deadline; the deadline beats the budget (which is left untouched).
    b = budget(min_concurrent=0)
    lost_post: dict[str, Any] = {"sent": True, "body": B.LOST, "active_requests": 0,
                                 "remaining": 0.0}
    assert plan("POST", b).decide(None, 404, **lost_post).reason == NoRetry.NOT_RETRIABLE
    assert plan("POST", b, max_retries=0).decide(RESET, **lost_post).reason == \
        NoRetry.MAX_RETRIES
    assert plan("POST", b).decide(RESET, **lost_post).reason == NoRetry.NON_IDEMPOTENT
    assert plan("GET", b).decide(RESET, **lost_post).reason == NoRetry.BODY_NOT_REPLAYABLE
    kept_get: dict[str, Any] = dict(lost_post, body=B.KEPT)
    assert plan("GET", b).decide(RESET, **kept_get).reason == NoRetry.DEADLINE
    assert b.refused == 0
    assert plan("GET", b).decide(RESET, **dict(kept_get, remaining=None)).reason == \
        NoRetry.BUDGET_EXHAUSTED


def test_every_refusal_is_reachable_and_shared() -> None:
    seen: set[str] = set()
    cases: list[tuple[AttemptPlan, dict[str, Any]]] = [
        (plan(enabled=False), {}),
        (plan(), {"kind": None, "status": 404}),
        (plan(max_retries=0), {}),
        (plan("POST"), {}),
        (plan(), {"body": B.LOST}),
        (plan(), {"remaining": 0.0}),
        (plan(budget=budget(min_concurrent=0)), {}),
    ]
    for p, overrides in cases:
        args: dict[str, Any] = {"kind": RESET, "status": None, "sent": True, "body": B.NONE,
                                **overrides}
        first = p.decide(**args)
        # Refusals are built once: judging a failure allocates no decision.
        assert p.decide(**args) is first
        seen.add(first.reason)
    assert seen == set(NoRetry)


# ---------------------------------------------------------------- the stale connection


def test_stale_is_retried_once_for_free() -> None:
    b = budget(min_concurrent=0)  # no budget at all: the stale retry needs none
    p = plan("GET", b, max_retries=1)
    decision = p.decide(STALE, sent=True, body=B.BUFFERED, endpoint="a")
    assert decision == RetryDecision(True, STALE, 0.0)
    assert p.retries == 0 and p.stale_retried and p.attempt == 2
    assert p.tried == ()  # the same endpoint may take the replay
    assert b.retries_in_flight == 0 and b.refused == 0
    # max_retries is intact: the next failure is judged as usual.
    assert p.decide(RESET, sent=True, body=B.BUFFERED).reason == NoRetry.BUDGET_EXHAUSTED


def test_stale_does_not_count_against_max_retries() -> None:
    p = plan("GET", max_retries=2)
    assert p.decide(STALE, sent=True, body=B.NONE).retry
    assert p.decide(RESET, sent=True, body=B.NONE).retry
    assert p.decide(RESET, sent=True, body=B.NONE).retry
    assert p.decide(RESET, sent=True, body=B.NONE).reason == NoRetry.MAX_RETRIES
    assert p.attempt == 4


def test_stale_is_retried_even_with_retries_disabled() -> None:
    p = plan("GET", enabled=False)
    assert p.decide(STALE, sent=True, body=B.NONE).reason == STALE
    assert p.decide(STALE, sent=True, body=B.NONE).reason == NoRetry.DISABLED


def test_a_second_stale_is_a_reset() -> None:
    p = plan("GET")
    assert p.decide(STALE, sent=True, body=B.NONE).reason == STALE
    second = p.decide(STALE, sent=True, body=B.NONE)
    assert second.retry and second.reason == RESET and p.retries == 1


@pytest.mark.parametrize(("method", "body", "allow", "reason"), [
    ("GET", B.NONE, False, STALE),
    ("PUT", B.BUFFERED, False, STALE),
    ("DELETE", B.KEPT, False, STALE),
    ("GET", B.LOST, False, NoRetry.BODY_NOT_REPLAYABLE),
    # Idempotent only, as RFC 9112 9.3.1 asks: otherwise it is a plain reset...
    ("POST", B.BUFFERED, False, NoRetry.NON_IDEMPOTENT),
    # ...that a route allowing non-idempotent retries does retry, counted.
    ("POST", B.BUFFERED, True, RESET),
])
def test_stale_rule(method: str, body: BodyReplay, allow: bool, reason: str) -> None:
    p = plan(method, allow=allow)
    assert p.decide(STALE, sent=True, body=body).reason == reason
    assert p.stale_retried is (reason == STALE)


# ---------------------------------------------------------------- endpoints tried


def test_tried_endpoints_are_recorded_only_when_a_retry_follows() -> None:
    p = plan("GET", max_retries=2)
    assert not p.tried
    assert p.decide(RESET, sent=True, body=B.NONE, endpoint="a").retry
    assert list(p.tried) == ["a"]
    assert p.decide(None, 503, sent=True, body=B.NONE, endpoint="b").retry
    assert list(p.tried) == ["a", "b"]
    assert not p.decide(RESET, sent=True, body=B.NONE, endpoint="c").retry
    assert list(p.tried) == ["a", "b"]


def test_no_endpoint_no_record() -> None:
    p = plan("GET")
    assert p.decide(RESET, sent=True, body=B.NONE).retry
    assert p.tried == ()


# ---------------------------------------------------------------- backoff and time


@pytest.mark.parametrize(("retry_number", "ceiling"), [
    (1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (6, 0.25), (100, 0.25),
    (10_000, 0.25),  # no float overflow
])
def test_backoff_ceiling_doubles_up_to_the_cap(retry_number: int, ceiling: float) -> None:
    assert backoff_delay(retry_number, 0.025, 0.25, Top()) == pytest.approx(ceiling)


@pytest.mark.parametrize("retry_number", [1, 2, 3, 4, 5])
def test_backoff_is_full_jitter_below_the_ceiling(retry_number: int) -> None:
    rng = random.Random(retry_number)
    ceiling = min(0.25, 0.025 * 2 ** (retry_number - 1))
    delays = [backoff_delay(retry_number, 0.025, 0.25, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Spread over the whole range, not clustered at the top (equal jitter) or the ceiling.
    assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
    assert sum(delays) / len(delays) == pytest.approx(ceiling / 2, rel=0.1)


def test_backoff_is_deterministic_with_a_seed() -> None:
    assert [backoff_delay(2, 0.025, 0.25, random.Random(3)) for _ in range(2)] == \
        [backoff_delay(2, 0.025, 0.25, random.Random(3))] * 2


def test_plan_delays_grow_per_counted_retry() -> None:
    p = plan("GET", rng=Top(), max_retries=4, backoff_base=0.1, backoff_max=0.3)
    delays = []
    for kind in (RESET, STALE, RESET, RESET, RESET):
        delays.append(p.decide(kind, sent=True, body=B.NONE).delay)
    # The stale retry goes at once and does not move the doubling on.
    assert delays == pytest.approx([0.1, 0.0, 0.2, 0.3, 0.3])


@pytest.mark.parametrize(("per_try", "remaining", "expected"), [
    (None, 5.0, 5.0), (1.0, 5.0, 1.0), (10.0, 5.0, 5.0), (5.0, 5.0, 5.0), (1.0, 0.0, 0.0),
])
def test_try_timeout(per_try: float | None, remaining: float, expected: float) -> None:
    assert try_timeout(per_try, remaining) == expected
    config: dict[str, Any] = {} if per_try is None else {"per_try_timeout": per_try}
    assert policy(**config).try_timeout(remaining) == expected


# ---------------------------------------------------------------- the budget


@pytest.mark.parametrize(("ratio", "min_concurrent", "active", "allowed"), [
    (0.2, 3, 0, 3), (0.2, 3, 8, 3), (0.2, 3, 15, 3), (0.2, 3, 20, 4), (0.2, 3, 100, 20),
    (0.2, 0, 4, 0), (0.2, 0, 5, 1), (0.2, 0, 9, 1),  # rounded down, like Envoy
    (0.29, 0, 100, 29),  # 0.29 * 100 is 28.999... in floating point
    (1.0, 0, 7, 7), (2.0, 1, 3, 6),
])
def test_budget_allows_max_of_min_and_ratio(ratio: float, min_concurrent: int, active: int,
                                            allowed: int) -> None:
    b = budget(ratio=ratio, min_concurrent=min_concurrent)
    assert b.allowed(active) == allowed
    granted = sum(b.try_acquire(active) for _ in range(allowed + 5))
    assert granted == allowed and b.retries_in_flight == allowed and b.refused == 5
    for _ in range(allowed):
        b.release()
    assert b.retries_in_flight == 0


def test_budget_disabled_allows_all_and_still_counts() -> None:
    b = budget(enabled=False, min_concurrent=0)
    assert all(b.try_acquire(0) for _ in range(50))
    assert b.retries_in_flight == 50 and b.refused == 0
    # Turned on by a reload, it starts from the true count.
    b.update_config(RetryBudgetConfig(min_concurrent=3))
    assert not b.try_acquire(10) and b.refused == 1 and b.retries_in_flight == 50


def test_budget_survives_reload() -> None:
    b = budget(min_concurrent=2)
    assert b.try_acquire(0) and b.try_acquire(0) and not b.try_acquire(0)
    b.update_config(RetryBudgetConfig(min_concurrent=3, min_retry_rate=0))
    assert b.retries_in_flight == 2 and b.refused == 1
    assert b.try_acquire(0) and not b.try_acquire(0)
    assert b.refused == 2


def test_a_plan_holds_one_slot_per_retry_until_its_try_ends() -> None:
    b = budget(min_concurrent=5)
    p = plan("GET", b, max_retries=3)
    assert p.decide(RESET, sent=True, body=B.NONE).retry
    assert b.retries_in_flight == 1
    # Judging the retry's outcome gives its slot back before asking for the next one.
    assert p.decide(RESET, sent=True, body=B.NONE).retry
    assert b.retries_in_flight == 1
    assert not p.decide(None, 404, sent=True, body=B.NONE).retry
    assert b.retries_in_flight == 0
    p.finish()
    p.finish()  # idempotent
    assert b.retries_in_flight == 0


def test_a_connect_failure_retry_takes_no_slot() -> None:
    b = budget(min_concurrent=0)
    p = plan("GET", b)
    assert p.decide(CONNECT_FAILURE, sent=False, body=B.NONE).retry
    assert b.retries_in_flight == 0 and b.refused == 0
    p.finish()
    assert b.retries_in_flight == 0


def test_finish_after_a_successful_retry_releases() -> None:
    b = budget()
    p = plan("GET", b)
    assert p.decide(RESET, sent=True, body=B.NONE).retry
    p.finish()  # the retry answered 200: the proxy never calls decide again
    assert b.retries_in_flight == 0


# ---------------------------------------------------------------- an outage


def simulate_outage(*, clients: int, requests: int, budget: RetryBudget | None,
                    failure: tuple[str | None, int | None], try_time: float,
                    clock: FakeClock | None = None) -> float:
    """Every try fails; returns tries seen by the upstream per client request.

    `clients` each send a request, and the next as soon as one is over (a closed loop,
    the harshest case: the load does not drop as answers fail). A try takes
    `try_time`; a retry waits its backoff first. Time is an event queue; `clock` (the
    budget's, if it has one) is moved to each event's time.
    """
    if clock is None and budget is not None:
        clock = cast(FakeClock, budget.clock)
    start_time = clock.now() if clock is not None else 0.0
    limits = ClusterLimits(LimitsConfig())
    retry_policy = RetryPolicy(RetryConfig(), random.Random(1))
    kind, status = failure
    sent = kind != CONNECT_FAILURE
    queue: list[tuple[float, int, int]] = []
    order = itertools.count()
    plans: dict[int, AttemptPlan] = {}
    started = tries = 0

    def start(client: int, now: float) -> None:
        nonlocal started, tries
        if started < requests:
            assert limits.try_admit() is None
            if budget is not None:
                budget.on_request(start_time + now)
            plans[client] = retry_policy.plan("GET", budget)
            started += 1
            tries += 1
            heapq.heappush(queue, (now + try_time, next(order), client))

    for client in range(clients):
        start(client, 0.0)
    while queue:
        now, _, client = heapq.heappop(queue)
        if clock is not None:
            clock.advance(start_time + now - clock.now())
        decision = plans[client].decide(kind, status, sent=sent, body=B.NONE,
                                        active_requests=limits.active)
        if decision.retry:
            tries += 1
            heapq.heappush(queue, (now + decision.delay + try_time, next(order), client))
        else:
            plans.pop(client).finish()
            limits.done()
            start(client, now)
    assert limits.active == 0
    assert budget is None or budget.retries_in_flight == 0
    return tries / started


REFUSED = (CONNECT_FAILURE, None)  # fails in well under a millisecond
UNAVAILABLE = (None, 503)


@pytest.mark.parametrize("failure", [REFUSED, UNAVAILABLE])
def test_without_a_budget_an_outage_triples_the_load(failure: tuple[str | None, int | None]
                                                     ) -> None:
    assert simulate_outage(clients=8, requests=2000, budget=None, failure=failure,
                           try_time=0.01) == 3.0


def test_outage_with_8_clients_fast_failures_stays_under_1_2x() -> None:
    # Answers fail far faster than the backoff, so the few retries in flight are
    # mostly waiting; the rate rule then allows 0.2 retries per request, no more.
    ratio = simulate_outage(clients=8, requests=5000, budget=budget(), failure=UNAVAILABLE,
                            try_time=0.0005)
    assert ratio <= 1.21


def test_refused_connections_are_retried_outside_the_budget() -> None:
    # Tries, not arrivals: a refused connection reaches no application, so its retries
    # (bounded by max_retries) are free of the budget.
    ratio = simulate_outage(clients=8, requests=2000, budget=budget(), failure=REFUSED,
                            try_time=0.0005)
    assert ratio == 3.0


@pytest.mark.parametrize("min_concurrent", [0, 1])
def test_outage_with_8_clients_slow_failures_and_a_low_floor_stays_under_1_2x(
        min_concurrent: int) -> None:
    # Each try as long as a whole backoff and more: 20% of 8 active requests is one
    # retry in flight (8 tries per 7 requests), and the rate rule's 0.2 retries per
    # request is the larger allowance: about 1.2.
    ratio = simulate_outage(clients=8, requests=5000, budget=budget(min_concurrent=min_concurrent),
                            failure=UNAVAILABLE, try_time=1.0)
    assert ratio <= 1.21


def test_outage_with_8_clients_slow_failures_default_floor() -> None:
    # With only 8 clients the floor (min_concurrent 3) is above 20%: up to 3 of the 8
    # requests retry at once, so the bound is 8 tries per 5 requests, never 3 per 1.
    ratio = simulate_outage(clients=8, requests=5000, budget=budget(), failure=UNAVAILABLE,
                            try_time=1.0)
    assert ratio <= 8 / 5


@pytest.mark.parametrize("failure", [UNAVAILABLE, (RESET, None)])
def test_outage_with_many_clients_is_bounded_by_the_ratio(
        failure: tuple[str | None, int | None]) -> None:
    # 20% of the active requests retrying at once: at most 1 / (1 - 0.2) = 1.25x.
    ratio = simulate_outage(clients=100, requests=20_000, budget=budget(), failure=failure,
                            try_time=1.0)
    assert ratio <= 1.25


# ---------------------------------------------------------------- the budget's rate rules


def test_a_burst_is_let_through_by_the_retries_the_recent_traffic_earned() -> None:
    clock = FakeClock()
    b = budget(clock, min_concurrent=3)  # 0.2 x 8 active -> 3 in flight by concurrency
    for _ in range(40):
        b.on_request(clock.now())
    # 8 clients stuck on one hung endpoint time out at once: 8 retries.
    assert all(b.try_acquire(8) for _ in range(8))  # 0.2 x 40 requests = 8 earned
    assert not b.try_acquire(8) and b.refused == 1


def test_the_floor_rate_allows_retries_whatever_the_traffic() -> None:
    clock = FakeClock()
    b = budget(clock, min_concurrent=0, min_retry_rate=10)
    assert all(b.try_acquire(0) for _ in range(10))
    assert not b.try_acquire(0)
    clock.advance(1.0)  # the next second
    assert b.try_acquire(0)


def test_earned_retries_expire_with_the_window() -> None:
    clock = FakeClock()
    b = budget(clock, min_concurrent=0, interval=10.0)
    for _ in range(10):
        b.on_request(clock.now())
    clock.advance(10.0)  # every bucket of those requests has left the window
    assert not b.try_acquire(1)
    b.on_request(clock.now())
    b.on_request(clock.now())
    b.on_request(clock.now())
    b.on_request(clock.now())
    b.on_request(clock.now())
    assert b.try_acquire(1) and not b.try_acquire(1)  # 0.2 x 5 = 1


def test_a_long_gap_clears_the_window_in_bounded_work() -> None:
    clock = FakeClock()
    b = budget(clock, min_concurrent=0)
    b.on_request(clock.now())
    clock.advance(1e9)
    assert not b.try_acquire(1)  # zeroes 10 buckets, not 1e9 of them


def test_full_budget_under_an_outage_is_ratio_plus_the_floor_rate() -> None:
    # Every rule on (the defaults). Fast failures from 8 clients for a few seconds: the
    # tries stay near (1 + ratio) per request; the floor rate adds at most 10 a second.
    clock = FakeClock()
    default = RetryBudget(RetryBudgetConfig(), clock)
    begin = clock.now()
    ratio = simulate_outage(clients=8, requests=20_000, budget=default,
                            failure=UNAVAILABLE, try_time=0.002, clock=clock)
    seconds = clock.now() - begin
    assert ratio <= 1.2 + 0.05 + 10 * seconds / 20_000

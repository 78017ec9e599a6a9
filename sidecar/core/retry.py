"""Retries: whether a failed upstream attempt is tried again, after how long, and the
per-cluster retry budget that keeps retries from multiplying an outage.

Owns, each in one place:

* the failure kinds a try can end with, and `classify_status` for answers;
* the replayable-body rule (`replay_refusal`): a try may be repeated only if the
  request may be sent twice (idempotent, or it provably never left, or the route
  allows it) *and* can be sent twice (its body is still whole);
* the attempt plan of one request (`AttemptPlan`): its retry count, the free retry
  of a stale pooled connection, the endpoints already tried, the budget slot held;
* full-jitter exponential backoff (`backoff_delay`) and the time of one try
  (`try_timeout`);
* `RetryBudget`: retries in flight per cluster <= max(min_concurrent,
  ratio x active requests), Envoy's retry budget.

Decide, then await: everything here is synchronous and pure. The proxy performs
the waits and the tries; the random delays come from an injected `random.Random`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Final

from sidecar.config.resilience import RetryBudgetConfig, RetryConfig
from sidecar.core.clock import Clock, SystemClock

__all__ = [
    "CONNECT_FAILURE",
    "GATEWAY_ERROR",
    "GATEWAY_STATUSES",
    "IDEMPOTENT_METHODS",
    "RESET",
    "RETRIABLE_STATUS_CODES",
    "SERVER_ERROR",
    "STALE",
    "TIMEOUT",
    "AttemptPlan",
    "BodyReplay",
    "NoRetry",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "backoff_delay",
    "classify_status",
    "replay_refusal",
    "try_timeout",
]

# ---------------------------------------------------------------- failure kinds

# The names are config's `FAILURE_KINDS` (the retry_on values), spelled once here.
CONNECT_FAILURE: Final = "connect_failure"
RESET: Final = "reset"
TIMEOUT: Final = "timeout"
GATEWAY_ERROR: Final = "gateway_error"
SERVER_ERROR: Final = "5xx"
RETRIABLE_STATUS_CODES: Final = "retriable_status_codes"
#: A reused keep-alive connection closed before any byte of the response: the
#: request never reached the application. Not a config value: it is a transport
#: detail, retried once for free (see `AttemptPlan`).
STALE: Final = "stale"

GATEWAY_STATUSES: Final = frozenset({502, 503, 504})
_SERVER_STATUSES: Final = frozenset(range(500, 600))

#: RFC 9110 9.2.2: sending one of these twice has the effect of sending it once.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def classify_status(status: int) -> str | None:
    """The failure kind of an upstream answer: gateway_error (502-504), 5xx, or None."""
    if status in GATEWAY_STATUSES:
        return GATEWAY_ERROR
    if 500 <= status <= 599:
        return SERVER_ERROR
    return None


# ---------------------------------------------------------------- the replay rule


class BodyReplay(enum.Enum):
    """What is left of the request body for another try."""

    #: No body at all.
    NONE = "none"
    #: Read whole before the first try (a `bytes` body): replayable.
    BUFFERED = "buffered"
    #: Streamed, and no byte of it has been pulled yet: nothing to replay.
    UNREAD = "unread"
    #: Streamed, pulled, and kept whole because it fit `retry_buffer_bytes`.
    KEPT = "kept"
    #: Streamed past `retry_buffer_bytes`: the bytes sent are gone, the first
    #: answer stands.
    LOST = "lost"


class NoRetry(enum.StrEnum):
    """Why a failed try is not tried again (a metric label: short and stable)."""

    DISABLED = "disabled"
    NOT_RETRIABLE = "not_retriable"
    MAX_RETRIES = "max_retries"
    NON_IDEMPOTENT = "non_idempotent"
    BODY_NOT_REPLAYABLE = "body_not_replayable"
    DEADLINE = "deadline"
    BUDGET_EXHAUSTED = "budget_exhausted"


def replay_refusal(*, idempotent: bool, sent: bool, allow_non_idempotent: bool,
                   body: BodyReplay) -> NoRetry | None:
    """Why this request must not be sent again, or None if it may.

    The one place of the rule, used by retries and by the cluster fallback.

    * May it be sent twice? Yes if its method is idempotent, or if it provably
      never left (`sent=False`: the connection failed, or the pool refused it),
      or if the route says `retry_non_idempotent`.
    * Can it be sent twice? Yes unless its body was streamed past the replay
      buffer (`BodyReplay.LOST`).
    """
    if sent and not (idempotent or allow_non_idempotent):
        return NoRetry.NON_IDEMPOTENT
    if body is BodyReplay.LOST:
        return NoRetry.BODY_NOT_REPLAYABLE
    return None


# ---------------------------------------------------------------- time


def backoff_delay(retry_number: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**(retry_number - 1))).

    Full rather than equal jitter because it spreads clients that failed together
    the most (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
    """
    # The exponent is clamped only so that a huge retry_number cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(retry_number - 1, 64))
    return rng.uniform(0.0, ceiling)


def try_timeout(per_try_timeout: float | None, remaining: float) -> float:
    """Time for one try: the per-try timeout, never beyond what the request has left."""
    if per_try_timeout is None or per_try_timeout > remaining:
        return remaining
    return per_try_timeout


# ---------------------------------------------------------------- budget


class RetryBudget:
    """How many retries one cluster may make, so that retries never multiply an outage.

    Theory of operation
    -------------------

    A retry may go when any of three rules allows it, checked in this order:

    1. **Concurrency** (Envoy's retry budget): retries in flight stay below
       max(`min_concurrent`, `ratio` x active requests).
    2. **Rate** (the Gateway API's GEP-3388 budget): retries over the last `interval`
       stay below `ratio` x the requests sent to the cluster in that interval.
    3. **Floor rate**: fewer than `min_retry_rate` retries a second, whatever the
       traffic.

    Rule 1 alone refuses the burst of retries a partial outage causes before a
    breaker ejects the failing endpoint (8 clients stuck on one hung endpoint all
    time out at once, and 3 slots are not 8); rules 2 and 3 let that burst through
    from what the recent traffic earned. Under a full outage rules 2 and 3 bound
    the tries to about (1 + ratio) x the requests plus `min_retry_rate` a second,
    and rule 1 adds at most `min_concurrent` retries at a time.

    The window is a ring of 10 buckets of `interval / 10`, zeroed lazily: O(1) per
    request and fixed memory. One budget per cluster, kept across reloads
    (`update_config`). A retry holds a concurrency slot from the moment it is
    admitted (through its backoff) until its try ends; `AttemptPlan` pairs every
    `try_acquire` with one `release`. `enabled=False` allows every retry, but still
    counts, so that turning the budget on by a reload finds the true numbers.

    Counters: `retries_in_flight` (gauge), `refused` (total retries refused).
    """

    __slots__ = ("_ratio", "_min", "_enabled", "_min_rate", "_width", "_clock", "_epoch",
                 "_requests", "_retries", "_request_sum", "_retry_sum", "retries_in_flight",
                 "refused")

    _BUCKETS: Final = 10

    def __init__(self, config: RetryBudgetConfig, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self.retries_in_flight = 0
        self.refused = 0
        self._requests = [0] * self._BUCKETS
        self._retries = [0] * self._BUCKETS
        self._request_sum = self._retry_sum = 0
        self._epoch = 0
        self._width = 1.0
        self.update_config(config)

    def update_config(self, config: RetryBudgetConfig) -> None:
        """Take new limits; the slots held and the counters stay (the window restarts
        if its length changed)."""
        self._enabled = config.enabled
        self._ratio = config.ratio
        self._min = config.min_concurrent
        self._min_rate = config.min_retry_rate
        width = config.interval / self._BUCKETS
        if width != self._width:
            self._width = width
            self._requests = [0] * self._BUCKETS
            self._retries = [0] * self._BUCKETS
            self._request_sum = self._retry_sum = 0
            self._epoch = 0

    def allowed(self, active_requests: int) -> int:
        """Retries allowed in flight at once with this many active requests (rule 1)."""
        # Rounded down like Envoy. The epsilon keeps e.g. 0.29 x 100 (28.999...) at 29.
        return max(self._min, int(self._ratio * active_requests + 1e-9))

    @property
    def clock(self) -> Clock:
        return self._clock

    def on_request(self, now: float) -> None:
        """A request was admitted to the cluster (its first try, not a retry)."""
        index = self._roll(now)
        self._requests[index] += 1
        self._request_sum += 1

    def try_acquire(self, active_requests: int) -> bool:
        """Take a slot for one retry. `active_requests`: the cluster's requests in
        flight (`ClusterLimits.active`), the one asking included."""
        index = self._roll(self._clock.now())
        if (self._enabled and self.retries_in_flight >= self.allowed(active_requests)
                and self._retry_sum >= self._ratio * self._request_sum
                and self._retries[index] >= self._min_rate * self._width):
            self.refused += 1
            return False
        self.retries_in_flight += 1
        self._retries[index] += 1
        self._retry_sum += 1
        return True

    def release(self) -> None:
        """Give back the slot of a retry whose try has ended."""
        self.retries_in_flight -= 1

    def _roll(self, now: float) -> int:
        """The bucket of `now`, after zeroing those that fell out of the window."""
        epoch = int(now // self._width)
        gone = epoch - self._epoch
        if gone:
            buckets = self._BUCKETS
            for step in range(1, min(gone, buckets) + 1):
                i = (self._epoch + step) % buckets
                self._request_sum -= self._requests[i]
                self._retry_sum -= self._retries[i]
                self._requests[i] = self._retries[i] = 0
            self._epoch = epoch
        return epoch % self._BUCKETS


# ---------------------------------------------------------------- policy and plan


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Try again (after `delay` seconds) or not; `reason` says why.

    When `retry` is true, `reason` is the failure being retried (a failure kind,
    `retriable_status_codes`, or `stale`); otherwise it is a `NoRetry`.
    """

    retry: bool
    reason: str
    delay: float = 0.0


# Refusals and the stale retry carry no per-request data: built once, never per call.
_REFUSED: dict[NoRetry, RetryDecision] = {r: RetryDecision(False, r) for r in NoRetry}
_STALE_RETRY = RetryDecision(True, STALE)


class RetryPolicy:
    """A route's retry rules, built once per configuration and shared by its requests.

    `config`: the route's (or cluster's) `RetryConfig`. `rng`: the source of the
    backoff jitter (seeded in tests). `retry_non_idempotent`: the route allows
    retrying a request that left even if its method is not idempotent.
    """

    __slots__ = ("config", "rng", "allow_non_idempotent", "per_try_timeout", "buffer_bytes",
                 "_kinds", "_statuses")

    def __init__(self, config: RetryConfig, rng: random.Random, *,
                 retry_non_idempotent: bool = False) -> None:
        self.config = config
        self.rng = rng
        self.allow_non_idempotent = retry_non_idempotent
        # What every request reads, copied out of the config model: compiled, an
        # attribute of this class is a C field, one of the model a generic lookup.
        self.per_try_timeout = config.per_try_timeout
        self.buffer_bytes = config.retry_buffer_bytes
        retry_on = set(config.retry_on)
        # Precomputed so that judging a try is two set lookups.
        kinds = {k for k in retry_on if k != RETRIABLE_STATUS_CODES}
        statuses: set[int] = set()
        if SERVER_ERROR in retry_on:
            kinds.add(GATEWAY_ERROR)  # every gateway error is also a 5xx
            statuses |= _SERVER_STATUSES
        if GATEWAY_ERROR in retry_on:
            statuses |= GATEWAY_STATUSES
        if RETRIABLE_STATUS_CODES in retry_on:
            statuses.update(config.retriable_status_codes)
        # Disabled retries retry nothing, so `retries_status` needs no branch of its own.
        self._kinds = frozenset(kinds) if config.enabled else frozenset()
        self._statuses = frozenset(statuses) if config.enabled else frozenset()

    def retries_status(self, status: int) -> bool:
        """True if an answer with this status may be retried: the proxy holds such an
        answer back instead of streaming it to the client."""
        return status in self._statuses

    def plan(self, method: str, budget: RetryBudget | None = None) -> AttemptPlan:
        """The attempt plan of one request. Make it when the first try fails: the
        success path then allocates nothing for retries."""
        return AttemptPlan(self, method, budget)

    def backoff(self, retry_number: int) -> float:
        """The delay before retry number `retry_number` (1 for the first retry)."""
        config = self.config
        return backoff_delay(retry_number, config.backoff_base, config.backoff_max, self.rng)

    def try_timeout(self, remaining: float) -> float:
        """Time for the next try, given the time the request has left."""
        return try_timeout(self.config.per_try_timeout, remaining)


class AttemptPlan:
    """What to do after each failed try of one request.

    Theory of operation
    -------------------

    The proxy makes one try, and on failure asks `decide()` with what happened:
    a failure kind (`connect_failure`, `reset`, `timeout`, `stale`...) or the
    status of an answer, whether the request provably never left (`sent`), and
    what is left of its body. `decide()` is the only transition; it checks, in
    this order, and the first line that applies gives the decision::

        failure                  condition                            decision
        -----------------------  -----------------------------------  -----------------------
        stale                    first stale of this request,         RETRY now, free: not
                                 idempotent method, body not LOST     counted, no budget,
                                                                      same endpoint allowed
        stale (otherwise)        judged as `reset` by the lines below
        any                      config.enabled is false              NO disabled
        kind or status           not in retry_on                      NO not_retriable
        any                      max_retries retries made             NO max_retries
        any                      replay_refusal(...)                  NO non_idempotent |
                                                                      NO body_not_replayable
        any                      backoff delay >= remaining time      NO deadline
        not connect_failure      budget refuses a slot                NO budget_exhausted
        any                      (otherwise)                          RETRY after the backoff

    A counted retry holds one budget slot from the decision, through its backoff,
    until its try ends (like Envoy: a retry waiting its backoff still counts, which
    is what bounds the tries of a fast-failing outage): the next `decide()` or
    `finish()` gives it back. A retry of a connect failure takes no slot: that
    request reached no application, and the budget exists to bound the arrivals an
    outage multiplies. Call `finish()` when the request is over,
    whatever the outcome.

    The stale retry is free because it is a transport detail: the request never
    reached the application, and the pool always makes the replay on a fresh
    connection (which cannot be stale). It stays idempotent-only, as RFC 9112
    9.3.1 asks of automatic retries, because "never reached" is inferred, not
    known.

    `tried` holds the endpoints of the tries that led to a counted retry, so the
    balancer can pick another one when it can; it stays the shared empty tuple
    until the first retry.
    """

    __slots__ = ("_policy", "_idempotent", "_budget", "_holding", "retries", "stale_retried",
                 "tried")

    def __init__(self, policy: RetryPolicy, method: str,
                 budget: RetryBudget | None = None) -> None:
        self._policy = policy
        self._idempotent = method in IDEMPOTENT_METHODS
        self._budget = budget
        self._holding = False
        #: Counted retries decided so far.
        self.retries = 0
        #: The free retry of a stale pooled connection was used.
        self.stale_retried = False
        self.tried: tuple[object, ...] = ()

    @property
    def attempt(self) -> int:
        """The number of the next (or current) try: 1 for the first."""
        return 1 + self.retries + self.stale_retried

    def decide(self, kind: str | None, status: int | None = None, *, sent: bool,
               body: BodyReplay, endpoint: object = None, active_requests: int = 0,
               remaining: float | None = None) -> RetryDecision:
        """Judge the try that just failed; see the class docstring for the order.

        `kind`: a failure kind, or None when an answer with `status` came back.
        `sent`: false when the request provably never left (connect failure, the
        pool refused it). `endpoint`: the one tried, recorded in `tried` if a
        retry follows. `active_requests`: the cluster's requests in flight, for
        the budget. `remaining`: the request's time left, if it has a deadline.
        """
        self._release()  # the try being judged is over, and with it its slot
        policy = self._policy
        if kind == STALE:
            if not self.stale_retried and self._idempotent and body is not BodyReplay.LOST:
                self.stale_retried = True
                return _STALE_RETRY
            kind = RESET
        if not policy.config.enabled:
            return _REFUSED[NoRetry.DISABLED]
        reason: str
        if kind is not None:
            if kind not in policy._kinds:
                return _REFUSED[NoRetry.NOT_RETRIABLE]
            reason = kind
        elif status is not None and status in policy._statuses:
            reason = classify_status(status) or RETRIABLE_STATUS_CODES
        else:
            return _REFUSED[NoRetry.NOT_RETRIABLE]
        if self.retries >= policy.config.max_retries:
            return _REFUSED[NoRetry.MAX_RETRIES]
        # A connect failure never left, whatever the caller says.
        refusal = replay_refusal(idempotent=self._idempotent,
                                 sent=sent and kind != CONNECT_FAILURE,
                                 allow_non_idempotent=policy.allow_non_idempotent, body=body)
        if refusal is not None:
            return _REFUSED[refusal]
        delay = policy.backoff(self.retries + 1)
        if remaining is not None and delay >= remaining:
            return _REFUSED[NoRetry.DEADLINE]
        budget = self._budget
        # A connect failure reached no application: retrying it elsewhere multiplies
        # nothing at the upstreams (the budget's reason to exist), so it needs no slot.
        if budget is not None and reason != CONNECT_FAILURE:
            if not budget.try_acquire(active_requests):
                return _REFUSED[NoRetry.BUDGET_EXHAUSTED]
            self._holding = True
        self.retries += 1
        if endpoint is not None:
            self.tried += (endpoint,)
        return RetryDecision(True, reason, delay)

    def finish(self) -> None:
        """The request is over: give back the budget slot of its last retry, if any."""
        self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            assert self._budget is not None
            self._budget.release()

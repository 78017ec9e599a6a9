"""The per-endpoint circuit breaker: when to stop sending to an endpoint, and when to try again.

Owns the breaker's state machine, its failure counting (a run of failures and a
failure rate over a sliding window) and the time an endpoint stays OPEN. Pure:
time comes from a `Clock`, jitter from an injected `random.Random`, and nothing
here does I/O or keeps a timer. The data plane asks `allow()` before it sends,
and reports the outcome with `on_success()` / `on_failure(kind)`.

Theory of operation
-------------------

Three states, and every move between them is in `_TRANSITIONS` (applied only by
`CircuitBreaker._fire`, the one place that assigns the state, h11's Rule 1)::

                 N failures in a row, or
                 failure rate >= R over `window`
      CLOSED ------------------------------------> OPEN <---------------+
        ^                                           |                   |
        |                    open time elapsed      |   a probe failed  |
        |                   (seen lazily: allow(),  |   (open time      |
        |                    state, poll())         v    doubles)       |
        +--------------------------------------- HALF_OPEN -------------+
              `close_after` probes succeeded

      trip():  any state -> OPEN          reset(), or disabled by a reload: -> CLOSED

* CLOSED: every request is allowed. Failures are counted twice: a run of
  consecutive failures (any success ends the run), and a ring of 10 time
  buckets, each `window / 10` long, so that the failure rate over the last
  window costs O(1) time and fixed memory (the window slides in steps of
  `window / 10`, so it spans between 0.9 and 1 window). Buckets older than the window are
  zeroed lazily, when the clock shows they have fallen out of it. The rate
  counts only once the window holds `min_requests` requests, so that one failed
  request out of one does not open the breaker.
* OPEN: nothing is allowed until `open_until`. The first opening lasts
  `open_duration`; each failed probe doubles it (capped at `max_open_duration`),
  as Envoy multiplies its ejection time and Linkerd backs off its failure
  accrual. Each opening is then stretched or shrunk by up to 10 % at random, so
  that the sidecars that saw one endpoint fail together do not all probe it at
  the same instant. There is no timer: the first caller that looks after
  `open_until` moves the breaker to HALF_OPEN.
* HALF_OPEN: live requests are the probes. At most `half_open_requests` are in
  flight at once (`allow()` takes a slot, an outcome or `release_probe()` gives
  it back). `close_after` successes close the breaker and forget the doubling;
  one failure opens it again for twice as long. An outcome that arrives with no
  probe in flight (or while OPEN) is from a request sent before the breaker
  opened; it counts in the totals and moves nothing.

What is a failure: an outcome whose kind is in `config.failure_on`. Any other
outcome (a 500 when only gateway errors count, say) means the endpoint answered,
and counts as a success.

Every call that changes the state returns a `Transition`, so that the caller
publishes the event; the lazy OPEN -> HALF_OPEN move made inside `allow()` or a
`state` read is returned by the next `poll()` instead (see `poll`).

A disabled breaker (`enabled: false`) is always CLOSED and allows everything; it
keeps only the `requests` and `failures` totals, so that switching it on by a
reload starts from a clean window.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from sidecar.config.resilience import FAILURE_KINDS, CircuitBreakerConfig
from sidecar.core.clock import Clock
from sidecar.core.retry import classify_status  # the one mapping of answers to kinds

__all__ = ["BreakerState", "CircuitBreaker", "Transition", "classify_status"]

_BUCKETS = 10
# The open time doubles per failed probe; past 2**32 times it is capped anyway, and
# bounding the exponent keeps the float product finite.
_MAX_DOUBLINGS = 32
_JITTER = 0.1

_PLURAL = {"connect_failure": "connect failures", "reset": "resets", "timeout": "timeouts",
           "gateway_error": "gateway errors", "5xx": "5xx responses", "": "failures"}
_SINGULAR = {"connect_failure": "connect failure", "reset": "reset", "timeout": "timeout",
             "gateway_error": "gateway error", "5xx": "5xx response", "": "failure"}
_KNOWN_KINDS = frozenset(FAILURE_KINDS)


class BreakerState(enum.Enum):
    """The breaker's state; the values are those of the admin API's enum."""

    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state: what it was, what it is, why, and when (monotonic seconds)."""

    previous: BreakerState
    state: BreakerState
    reason: str
    at: float


class _Event(enum.Enum):
    FAILURES = "a failure threshold was crossed"
    OPEN_ELAPSED = "the open time elapsed"
    PROBES_SUCCEEDED = "enough probes succeeded"
    PROBE_FAILED = "a probe failed"
    ADMIN_TRIP = "an admin tripped the breaker"
    ADMIN_RESET = "an admin reset the breaker"
    DISABLED = "a reload disabled the breaker"


_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# Rule 1: every move of the state machine is listed here, and only `_fire` applies it.
# A pair that is missing is a bug in this module, and raises KeyError.
_TRANSITIONS: dict[tuple[BreakerState, _Event], BreakerState] = {
    (_CLOSED, _Event.FAILURES): _OPEN,
    (_OPEN, _Event.OPEN_ELAPSED): _HALF_OPEN,
    (_HALF_OPEN, _Event.PROBES_SUCCEEDED): _CLOSED,
    (_HALF_OPEN, _Event.PROBE_FAILED): _OPEN,
    **{(state, _Event.ADMIN_TRIP): _OPEN for state in BreakerState},
    **{(state, _Event.ADMIN_RESET): _CLOSED for state in BreakerState},
    **{(state, _Event.DISABLED): _CLOSED for state in BreakerState},
}


def _run_reason(count: int, kind: str) -> str:
    """"5 consecutive gateway errors"; kind "" means the run mixed kinds."""
    return f"{count} consecutive {(_SINGULAR if count == 1 else _PLURAL)[kind]}"


class CircuitBreaker:
    """The circuit breaker of one endpoint.

    Parameters:
        config: the cluster's `circuit_breaker` settings; `update_config` replaces them.
        clock: `now()` times the window and the open time.
        rng: the jitter of the open time (seeded in tests).

    Counters, totals since creation: `requests` (outcomes reported), `failures`
    (outcomes that counted as failures) and `trips` (entries into OPEN, by
    failures or by an admin).
    """

    __slots__ = (
        "_bucket_failures", "_bucket_requests", "_clock", "_config", "_enabled",
        "_failure_on", "_head", "_open_until", "_probe_successes", "_probes", "_reason",
        "_reopens", "_rng", "_run", "_run_kind", "_since", "_state", "_unreported",
        "_width", "_window_failures", "_window_requests", "failures", "requests", "trips",
    )

    def __init__(self, config: CircuitBreakerConfig, clock: Clock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._config = config
        self._enabled = config.enabled
        self._failure_on = frozenset(config.failure_on)
        now = clock.now()
        self._state = _CLOSED
        self._reason = ""
        self._since = now
        self._open_until = 0.0
        self._reopens = 0  # failed probes since the breaker last closed: the doublings
        self._probes = 0  # probes in flight (HALF_OPEN)
        self._probe_successes = 0
        self._unreported: Transition | None = None
        # The current run of failures, and its kind ("" once the kinds were mixed).
        self._run = 0
        self._run_kind = ""
        # The window: per-bucket counts, their running sums, and the epoch (now //
        # width) of the newest bucket. Bucket `e % _BUCKETS` holds epoch e.
        self._bucket_requests = [0] * _BUCKETS
        self._bucket_failures = [0] * _BUCKETS
        self._window_requests = 0
        self._window_failures = 0
        self._width = config.window / _BUCKETS
        self._head = int(now // self._width)
        self.requests = 0
        self.failures = 0
        self.trips = 0

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state, after moving an OPEN breaker whose time has passed to HALF_OPEN."""
        if self._state is _OPEN:
            self._advance(self._clock.now())
        return self._state

    @property
    def reason(self) -> str:
        """Why the breaker is in its state ("" for a new breaker), e.g. "5 consecutive timeouts"."""
        return self._reason

    @property
    def since(self) -> float:
        """Monotonic time of the last transition (or of the creation)."""
        return self._since

    @property
    def open_until(self) -> float:
        """Monotonic time at which an OPEN breaker half-opens; 0.0 when it is not OPEN."""
        return self._open_until if self.state is _OPEN else 0.0

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker half-opens; 0.0 when it is not OPEN."""
        if self.state is not _OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock.now())

    def is_failure(self, kind: str) -> bool:
        """Whether an outcome of this kind counts as a failure (it is in `failure_on`)."""
        return kind in self._failure_on

    # ------------------------------------------------------------------ data plane

    def allow(self) -> bool:
        """May a request go to this endpoint now? In HALF_OPEN a True takes a probe slot.

        Whoever gets True must report the outcome (`on_success`/`on_failure`) or call
        `release_probe()`, else a HALF_OPEN breaker runs out of slots.
        """
        state = self._state
        if state is _CLOSED:
            return True
        if state is _OPEN:
            self._advance(self._clock.now())
            if self._state is _OPEN:
                return False
        if self._probes < self._config.half_open_requests:
            self._probes += 1
            return True
        return False

    def release_probe(self) -> None:
        """Give back a probe slot taken by `allow()` whose request ended with no outcome."""
        if self._state is _HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def on_success(self) -> Transition | None:
        """The endpoint answered. Returns the transition if the breaker closed."""
        self.requests += 1
        state = self._state
        if state is _CLOSED:
            if self._enabled:
                self._run = 0
                self._count(self._clock.now(), 0)
            return None
        # With no probe in flight, this is a request sent before the breaker opened;
        # it says nothing about the endpoint's recovery, so it cannot close it.
        if state is _HALF_OPEN and self._probes > 0:
            self._probes -= 1
            self._probe_successes += 1
            if self._probe_successes >= self._config.close_after:
                return self._fire(_Event.PROBES_SUCCEEDED, "probe succeeded", self._clock.now())
        return None

    def on_failure(self, kind: str) -> Transition | None:
        """A request failed with `kind` (one of FAILURE_KINDS); a kind not in `failure_on`
        counts as a success. Returns the transition if the breaker opened."""
        if kind not in self._failure_on:
            if kind not in _KNOWN_KINDS:
                raise ValueError(f"unknown failure kind {kind!r}: use one of {FAILURE_KINDS}")
            return self.on_success()
        self.requests += 1
        self.failures += 1
        if not self._enabled:
            return None
        state = self._state
        if state is _CLOSED:
            now = self._clock.now()
            if self._run == 0:
                self._run_kind = kind
            elif kind != self._run_kind:
                self._run_kind = ""
            self._run += 1
            self._count(now, 1)
            config = self._config
            if self._run >= config.consecutive_failures:
                return self._fire(_Event.FAILURES, _run_reason(self._run, self._run_kind), now)
            requests = self._window_requests
            if requests >= config.min_requests:
                rate = self._window_failures / requests
                if rate >= config.failure_rate:
                    return self._fire(_Event.FAILURES, f"failure rate {rate:.2f} over "
                                                       f"{config.window:g} s", now)
            return None
        if state is _HALF_OPEN and self._probes > 0:
            self._probes -= 1
            return self._fire(_Event.PROBE_FAILED, f"probe failed: {kind}", self._clock.now())
        return None  # OPEN: a request sent before the breaker opened

    def poll(self) -> Transition | None:
        """Apply the time-driven OPEN -> HALF_OPEN move if it is due, and report it.

        That move has no caller of its own: it happens inside whichever of `allow()`,
        `state`, `retry_after()` or `poll()` first sees the time has passed. The
        transition is kept until `poll()` returns it (once), so calling `poll()` before
        `allow()` publishes every transition. A kept transition is dropped when a later
        one happens, so that events are never reported out of order.
        """
        if self._state is _OPEN:
            self._advance(self._clock.now())
        transition, self._unreported = self._unreported, None
        return transition

    # ------------------------------------------------------------------ admin

    def trip(self, reason: str = "tripped by admin",
             duration: float | None = None) -> Transition:
        """Force the breaker OPEN, for `duration` seconds (exactly) or the current open time.

        From OPEN too (the open time restarts), so the result is always a Transition.
        Raises ValueError when the breaker is disabled (it never opens) or `duration`
        is not positive.
        """
        if not self._enabled:
            raise ValueError("the circuit breaker of this cluster is disabled")
        if duration is not None and not duration > 0:
            raise ValueError(f"duration must be positive, not {duration}")
        return self._fire(_Event.ADMIN_TRIP, reason, self._clock.now(), duration)

    def reset(self, reason: str = "reset by admin") -> Transition:
        """Force the breaker CLOSED, forgetting its failures and the open-time doubling.

        From CLOSED too (the counts are cleared), so the result is always a Transition.
        The totals (`requests`, `failures`, `trips`) are kept.
        """
        return self._fire(_Event.ADMIN_RESET, reason, self._clock.now())

    def update_config(self, config: CircuitBreakerConfig) -> Transition | None:
        """Take a reloaded config; the state and the counts survive.

        A changed `window` restarts the window's counts (its buckets change size); an
        OPEN breaker keeps its `open_until`. Disabling closes the breaker (returned as
        a Transition with reason "breaker disabled").
        """
        old, self._config = self._config, config
        self._enabled = config.enabled
        self._failure_on = frozenset(config.failure_on)
        now = self._clock.now()
        if config.window != old.window:
            self._width = config.window / _BUCKETS
            self._clear_window(now)
        if not config.enabled:
            if self._state is not _CLOSED:
                return self._fire(_Event.DISABLED, "breaker disabled", now)
            self._run = 0
            self._clear_window(now)
        return None

    # ------------------------------------------------------------------ internals

    def _advance(self, now: float) -> None:
        if self._state is _OPEN and now >= self._open_until:
            self._unreported = self._fire(_Event.OPEN_ELAPSED, "open time elapsed", now)

    def _fire(self, event: _Event, reason: str, now: float,
              open_for: float | None = None) -> Transition:
        """The one place that changes the state, with what entering each state does."""
        previous = self._state
        state = _TRANSITIONS[previous, event]
        if state is _OPEN:
            if event is _Event.PROBE_FAILED:
                self._reopens += 1
            self._open_until = now + (open_for if open_for is not None else self._open_time())
            self.trips += 1
        elif state is _CLOSED:
            self._reopens = 0
        # Counts belong to the state they were made in: a new CLOSED starts from an
        # empty window (old failures must not re-open it at once), a new HALF_OPEN
        # from no probes.
        self._probes = 0
        self._probe_successes = 0
        self._run = 0
        self._clear_window(now)
        self._state = state
        self._reason = reason
        self._since = now
        self._unreported = None
        return Transition(previous, state, reason, now)

    def _open_time(self) -> float:
        config = self._config
        base = min(config.open_duration * 2.0 ** min(self._reopens, _MAX_DOUBLINGS),
                   config.max_open_duration)
        # Jitter after the cap, so that breakers at the cap do not all probe in step.
        return base * self._rng.uniform(1.0 - _JITTER, 1.0 + _JITTER)

    def _count(self, now: float, failed: int) -> None:
        """Add one outcome to the window, first zeroing the buckets that fell out of it."""
        epoch = int(now // self._width)
        if epoch > self._head:
            self._roll(epoch)
        slot = epoch % _BUCKETS
        self._bucket_requests[slot] += 1
        self._bucket_failures[slot] += failed
        self._window_requests += 1
        self._window_failures += failed

    def _roll(self, epoch: int) -> None:
        if epoch - self._head >= _BUCKETS:
            self._zero_buckets()
        else:
            head = self._head
            requests, failures = self._bucket_requests, self._bucket_failures
            while head < epoch:  # at most _BUCKETS - 1 steps, and only once per bucket
                head += 1
                slot = head % _BUCKETS
                self._window_requests -= requests[slot]
                self._window_failures -= failures[slot]
                requests[slot] = 0
                failures[slot] = 0
        self._head = epoch

    def _clear_window(self, now: float) -> None:
        self._zero_buckets()
        self._head = int(now // self._width)

    def _zero_buckets(self) -> None:
        for slot in range(_BUCKETS):
            self._bucket_requests[slot] = 0
            self._bucket_failures[slot] = 0
        self._window_requests = 0
        self._window_failures = 0

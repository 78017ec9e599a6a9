"""Runtime state of endpoints: one `Host` per endpoint, one `HostSet` per cluster.

The registry owns *which* endpoints exist and what an operator set for them
(`OperatorStatus`: ACTIVE, DISABLED, DRAINING; persisted). A `Host` owns what the
sidecar *observed* and uses at run time: requests in flight, its connection pool,
its `CircuitBreaker` and, in a checked cluster, its `HealthState`. None of it is
persisted. A `HostSet` holds a cluster's hosts, its balancer, and `usable`: the
tuple the balancer picks from.

Theory of operation
-------------------
* `usable` is rebuilt (copy-on-write) whenever anything that decides it changes, so
  the hot path reads a tuple, takes no lock and never sees a list being mutated.
  A host is usable when the operator has it ACTIVE, its breaker is not OPEN, and,
  in a cluster with active health checks, its checks pass. **Panic mode**: when
  fewer than `panic_threshold` of the ACTIVE hosts pass their checks, the checks
  are ignored for the cluster (they may be what is broken). Open breakers are never
  ignored: they saw real traffic fail.
* Time moves breakers from OPEN to HALF_OPEN, and slow start ramps weights. There
  are no timers: `wake_at` is the earliest time an open breaker may half-open or a
  ramp takes its next step, and `pick(now)` rebuilds once that time has passed, one
  float comparison per request otherwise.
* **Slow start** (`slow_start`): a host that just became usable (added, healthy
  again, breaker closed, re-enabled) gets a weight ramping from 10 % to 100 % of
  its own over that time, in ten steps, like HAProxy's `slowstart`.
* Everything that changes what a host is (a breaker transition, a health change,
  panic entered or left, the API status) is reported as data, a `HostEvent`, to the
  set's `listener` (the registry publishes them on the event bus). This module
  only decides.
* A HostSet and its Hosts live as long as the cluster and endpoint do in the
  registry: a reload changes their settings in place, so counters, pools, breaker
  and health state survive it. The balancer is rebuilt only when `lb_policy` changes.
* The API's `EndpointStatus` is computed, never stored: the operator's status wins
  (DISABLED, DRAINING); an ACTIVE endpoint that is not usable because of what the
  sidecar observed is UNHEALTHY.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.config.model import ClusterSettings
from sidecar.core.addresses import UpstreamAddress
from sidecar.core.balancer import Balancer, make_balancer
from sidecar.core.breaker import BreakerState, CircuitBreaker, Transition
from sidecar.core.clock import Clock, SystemClock
from sidecar.core.health import HealthChange, HealthState, in_panic
from sidecar.core.limits import ClusterLimits
from sidecar.core.retry import RetryBudget

__all__ = ["EndpointStatus", "Host", "HostEvent", "HostEventKind", "HostSet", "OperatorStatus"]


class EndpointStatus(enum.IntEnum):
    """What the admin API shows. Numbers equal the proto enum's, so conversion is a cast."""

    ACTIVE = 1
    UNHEALTHY = 2
    DISABLED = 3
    DRAINING = 4


class OperatorStatus(enum.IntEnum):
    """What an operator (or the config) set. Numbers equal `EndpointStatus`'s."""

    ACTIVE = 1
    DISABLED = 3
    DRAINING = 4


class _Closeable(Protocol):
    def close(self) -> None: ...


class HostEventKind(enum.Enum):
    STATUS = "status"  # the API status changed (previous_status says from what)
    BREAKER = "breaker"  # a breaker transition (transition)
    HEALTH = "health"  # a health status change (health)
    PANIC = "panic"  # panic mode entered or left (panic)


@dataclass(frozen=True, slots=True)
class HostEvent:
    kind: HostEventKind
    cluster: str
    host: Host | None
    reason: str
    previous_status: EndpointStatus | None = None
    transition: Transition | None = None
    health: HealthChange | None = None
    panic: bool | None = None


class Host:
    """One endpoint at run time. The data plane writes `active_requests` and `pool`."""

    __slots__ = ("cluster", "id", "address", "authority", "base_weight", "_lb_weight",
                 "usable_since", "operator", "active_requests", "pool",
                 "breaker", "health", "usable", "requests", "failures", "_status")

    def __init__(self, cluster: str, endpoint_id: str, address: UpstreamAddress, weight: int,
                 operator: OperatorStatus, breaker: CircuitBreaker,
                 health: HealthState | None = None) -> None:
        self.cluster = cluster
        self.id = endpoint_id
        self.address = address
        #: The Host header that names this endpoint, encoded once (not per request).
        self.authority = address.authority.encode()
        #: The configured weight; `weight` is what the balancer uses (less while the
        #: host is in slow start).
        self.base_weight = self._lb_weight = weight
        #: When the host last became usable (monotonic), for slow start.
        self.usable_since = 0.0
        self.operator = operator
        self.active_requests = 0
        #: The endpoint's connection pool, made by the data plane on first use.
        self.pool: _Closeable | None = None
        self.breaker = breaker
        #: None when the cluster has no active health checks.
        self.health = health
        #: Whether requests may go here now; set by `HostSet.rebuild`.
        self.usable = False
        #: Upstream attempts sent here and how many failed (for the admin API).
        self.requests = 0
        self.failures = 0
        self._status: EndpointStatus | None = None  # until its set first rebuilds

    @property
    def weight(self) -> int:
        """The weight the balancer uses: the configured one, scaled during slow start."""
        return self._lb_weight

    @weight.setter
    def weight(self, value: int) -> None:
        """Set the configured weight (the next `HostSet.rebuild` applies slow start)."""
        self.base_weight = self._lb_weight = value

    @property
    def status(self) -> EndpointStatus:
        """The API status, as of the last `HostSet.rebuild`."""
        return self._status or EndpointStatus(self.operator)

    @property
    def observed_reason(self) -> str:
        """Why the sidecar keeps an ACTIVE host out of rotation ("" when it does not)."""
        if self.breaker.state is BreakerState.OPEN:
            return f"breaker open: {self.breaker.reason}"
        health = self.health
        if health is not None and not health.usable:
            return f"health {health.status.name.lower()}: {health.reason}"
        return ""

    def close_pool(self) -> None:
        """Close idle connections now; connections in use close when released."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    def __repr__(self) -> str:
        return f"<Host {self.cluster}/{self.id} {self.status.name} active={self.active_requests}>"


HostListener = Callable[[HostEvent], None]
_PANIC_ENTER = "fewer than %.0f%% of the endpoints pass their health checks: checks ignored"
_PANIC_LEAVE = "enough endpoints pass their health checks again"


class HostSet:
    """One cluster's hosts, the tuple of those requests may go to, and the decisions
    that change it."""

    __slots__ = ("name", "settings", "hosts", "usable", "panic", "wake_at", "listener",
                 "limits", "budget", "_balancer", "_policy", "_rng", "_clock")

    def __init__(self, name: str, settings: ClusterSettings, *, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 listener: HostListener | None = None) -> None:
        self.name = name
        self.settings = settings
        self.hosts: dict[str, Host] = {}
        self.usable: tuple[Host, ...] = ()
        self.panic = False
        #: Earliest time an OPEN breaker may half-open (inf when none is open).
        self.wake_at = math.inf
        self.listener = listener
        #: Admission (max_requests, max_pending) and the retry budget of the cluster.
        self.limits = ClusterLimits(settings.limits)
        self._clock = clock or SystemClock()
        self.budget = RetryBudget(settings.retry_budget, self._clock)
        self._rng = rng or random.Random()
        self._policy = settings.lb_policy
        self._balancer: Balancer = make_balancer(settings.lb_policy, self._rng)

    # ------------------------------------------------------------ membership

    def new_host(self, endpoint_id: str, address: UpstreamAddress, weight: int,
                 operator: OperatorStatus) -> Host:
        """A host with this cluster's breaker and health settings (not added yet)."""
        check = self.settings.health_check
        return Host(self.name, endpoint_id, address, weight, operator,
                    CircuitBreaker(self.settings.circuit_breaker, self._clock, self._rng),
                    HealthState(check, self._clock) if check is not None else None)

    def configure(self, settings: ClusterSettings) -> None:
        """New cluster settings (a reload): state stays; the balancer changes only with
        the policy; health checking starts or stops with `health_check`."""
        self.settings = settings
        self.limits.update_config(settings.limits)
        self.budget.update_config(settings.retry_budget)
        if settings.lb_policy != self._policy:
            self._policy = settings.lb_policy
            self._balancer = make_balancer(settings.lb_policy, self._rng)
        check = settings.health_check
        for host in self.hosts.values():
            transition = host.breaker.update_config(settings.circuit_breaker)
            if transition is not None:
                self._emit(HostEvent(HostEventKind.BREAKER, self.name, host,
                                     transition.reason, transition=transition))
            if check is None:
                host.health = None
            elif host.health is None:
                # Checks just turned on: like a new endpoint, it waits for a passing check.
                host.health = HealthState(check, self._clock)
            else:
                host.health.update_config(check)
        self.rebuild("config changed")

    def add(self, host: Host) -> None:
        self.hosts[host.id] = host
        self.rebuild("added")

    def remove(self, endpoint_id: str) -> Host | None:
        host = self.hosts.pop(endpoint_id, None)
        if host is not None:
            self.rebuild("removed")
        return host

    # ------------------------------------------------------------ decisions

    def rebuild(self, reason: str) -> None:
        """Recompute every host's usability and status, `usable` (sorted by id, so every
        sidecar sees the same order), panic mode and `wake_at`; report what changed."""
        hosts = [host for _, host in sorted(self.hosts.items())]
        active = [h for h in hosts if h.operator is OperatorStatus.ACTIVE]
        checked = self.settings.health_check is not None
        panic = False
        if checked and active:
            passing = sum(1 for h in active if h.health is None or h.health.usable)
            panic = in_panic(passing, len(active), self.settings.panic_threshold)
        if panic is not self.panic:
            self.panic = panic
            self._emit(HostEvent(
                HostEventKind.PANIC, self.name, None,
                _PANIC_ENTER % (self.settings.panic_threshold * 100) if panic else _PANIC_LEAVE,
                panic=panic))
        wake_at = math.inf
        usable = []
        now = self._clock.now()
        for host in hosts:
            was_usable = host.usable
            breaker = host.breaker
            if breaker.state is BreakerState.OPEN:
                wake_at = min(wake_at, breaker.open_until)
                ok = False
            else:
                health = host.health
                ok = panic or health is None or health.usable
            host.usable = ok and host.operator is OperatorStatus.ACTIVE
            if host.usable:
                if not was_usable:
                    host.usable_since = now
                usable.append(host)
            status = (EndpointStatus(host.operator) if host.operator is not OperatorStatus.ACTIVE
                      else EndpointStatus.ACTIVE if ok else EndpointStatus.UNHEALTHY)
            if status is not host._status:
                previous, host._status = host._status, status
                if previous is not None:  # a new host's first status is no change
                    self._emit(HostEvent(HostEventKind.STATUS, self.name, host,
                                         host.observed_reason or reason,
                                         previous_status=previous))
        ramp_step = self._slow_start(usable, now)
        if ramp_step:
            wake_at = min(wake_at, now + ramp_step)
        self.usable = tuple(usable)
        self.wake_at = wake_at

    def _slow_start(self, usable: list[Host], now: float) -> float:
        """Weights for slow start: a host usable for less than `slow_start` gets a weight
        ramping linearly from 10 % to 100 % of its own. While any host ramps, every
        weight is scaled by 10 so that a weight-1 host can have a tenth of its share.
        Returns the time to the next step of the ramp (0: nobody ramps)."""
        window = self.settings.slow_start
        ramping = window is not None and any(
            now - h.usable_since < window for h in usable)
        if not ramping:
            for host in usable:
                host._lb_weight = host.base_weight
            return 0.0
        assert window is not None
        for host in usable:
            elapsed = now - host.usable_since
            share = 1.0 if elapsed >= window else 0.1 + 0.9 * elapsed / window
            host._lb_weight = max(1, round(host.base_weight * 10 * share))
        return window / 10  # the ramp moves in ten steps

    def pick(self, now: float, exclude: Sequence[Host] = ()) -> Host | None:
        """The host for the next attempt, its breaker's permission taken (a HALF_OPEN
        breaker admits only so many probes). Hosts in `exclude` (tried already) only
        when nothing else is usable."""
        if now >= self.wake_at:
            self._wake()  # a breaker's open time passed, or a slow-start step
        usable = self.usable
        if exclude and len(usable) > len(exclude):
            others = tuple(h for h in usable if h not in exclude)
            if others:
                usable = others
        host = self._balancer.pick(usable)
        if host is None or host.breaker.allow():
            return host
        # A HALF_OPEN host with its probe slots taken: any other that allows.
        for other in usable:
            if other is not host and other.breaker.allow():
                return other
        return None

    def retry_after(self) -> float:
        """Seconds until the first open breaker half-opens (0 if none is open)."""
        return max(0.0, self.wake_at - self._clock.now()) if self.wake_at < math.inf else 0.0

    # ------------------------------------------------------------ outcomes

    def on_success(self, host: Host) -> None:
        host.requests += 1
        transition = host.breaker.on_success()
        if transition is not None:
            self._breaker_moved(host, transition)

    def on_failure(self, host: Host, kind: str) -> None:
        host.requests += 1
        breaker = host.breaker
        if breaker.is_failure(kind):
            host.failures += 1
        transition = breaker.on_failure(kind)
        if transition is not None:
            self._breaker_moved(host, transition)

    def release(self, host: Host) -> None:
        """An attempt ended with no outcome (cancelled): give back its probe slot."""
        host.breaker.release_probe()

    def trip(self, host: Host, reason: str, duration: float | None = None) -> Transition:
        transition = host.breaker.trip(reason, duration)
        self._breaker_moved(host, transition)
        return transition

    def reset(self, host: Host, reason: str) -> Transition:
        transition = host.breaker.reset(reason)
        self._breaker_moved(host, transition)
        return transition

    def on_check(self, host: Host, passed: bool, *, status: int | None, latency: float,
                 error: str = "") -> HealthChange | None:
        """An active health check's result (ignored if checks are off meanwhile)."""
        health = host.health
        if health is None:
            return None
        change = health.record(passed, status=status, latency=latency, error=error)
        if change is not None:
            self._emit(HostEvent(HostEventKind.HEALTH, self.name, host, change.reason,
                                 health=change))
            self.rebuild(change.reason)
        return change

    # ------------------------------------------------------------ internals

    def _wake(self) -> None:
        for host in self.hosts.values():
            transition = host.breaker.poll()
            if transition is not None:
                self._emit(HostEvent(HostEventKind.BREAKER, self.name, host,
                                     transition.reason, transition=transition))
        self.rebuild("open time elapsed")

    def _breaker_moved(self, host: Host, transition: Transition) -> None:
        # A lazy OPEN -> HALF_OPEN move may be pending: report it first, in order.
        pending = host.breaker.poll()
        if pending is not None and pending is not transition:
            self._emit(HostEvent(HostEventKind.BREAKER, self.name, host, pending.reason,
                                 transition=pending))
        self._emit(HostEvent(HostEventKind.BREAKER, self.name, host, transition.reason,
                             transition=transition))
        self.rebuild(transition.reason)

    def _emit(self, event: HostEvent) -> None:
        if self.listener is not None:
            self.listener(event)

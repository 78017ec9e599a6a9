"""Prometheus metrics of the sidecar: a collector over plain counters (served by admin.http).

The data path counts into plain Python ints and lists (one event loop, no locks);
a custom prometheus-client `Collector` turns them into metric families when
scraped. prometheus_client's own Counter/Histogram take a lock per update, which
the hot path does not need. Labels are route and cluster *names* from the
configuration or registry, never raw paths, so cardinality is bounded.

Exposed (all prefixed `sidecar_`):

* `requests_total{route,cluster,code_class}`: finished requests; code_class 2xx..5xx.
* `request_duration_seconds{route,cluster}`: histogram, first byte in to last byte out.
* `active_requests`: requests in flight on the listener.
* `upstream_errors_total{cluster,kind}`: failed upstream tries; kind is connect, reset,
  timeout, protocol, stale (a pooled connection the upstream had closed; replayed for free).
* `retries_total{cluster,reason}`: retries made, by the failure retried.
* `retries_refused_total{cluster,reason}`: retries not made because the budget was spent.
* `overflows_total{cluster,limit}`: requests refused by max_requests / max_pending.
* `breaker_transitions_total{cluster,state}`: breaker transitions, by the state entered.
* `fallbacks_total{route,kind}`: answers given by a fallback; kind is cache, cluster, static.

From the registry (`registry`, read when scraped):

* `breaker_state{cluster,endpoint,state}`: 1 for the state each endpoint's breaker is in.
* `panic_mode{cluster}`: 1 while a cluster ignores its failing health checks.
* `endpoints{cluster,status}`: endpoints per cluster and status.
* `cluster_active_requests{cluster}`, `cluster_pending_requests{cluster}`: the cluster
  limits' gauges (admitted requests in flight; those waiting for a connection).
* `retry_budget_in_flight{cluster}`: retries holding a slot of the cluster's retry budget.
* `config_info{version,source}`.

From the health checker (`checker`, read when scraped), for every cluster checked now
or ever (every result appears, 0 until seen):

* `health_checks_total{cluster,result}`: active checks; result is passed, failed,
  timeout, error (`sidecar.dataplane.checker.RESULTS`).
* `health_check_duration_seconds{cluster}`: summary (`_sum`, `_count`) of check latency.

And `build_info{version,data_path}` (data_path: compiled, interpreted or mixed;
`sidecar.compiled`), `config_loads_total{result}`, `config_last_load_timestamp_seconds`, and
`config_load_failures_total{reason}`: configurations a reload rejected, by the stage
that failed (io, render, validate: `CONFIG_FAILURE_REASONS`, each 0 until seen).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from .stats import Stats
from .window import Window, bucket_of

if TYPE_CHECKING:
    from sidecar.registry import Registry

__all__ = ["CONFIG_FAILURE_REASONS", "DURATION_BUCKETS", "CheckCounters", "Metrics", "RequestStats"]

# Typed as a tuple of any length: mypyc would otherwise keep it as a fixed-size one
# and box a new tuple for every `bucket_of` call.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CODE_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: The `reason` label values of `sidecar_config_load_failures_total`: where a rejected
#: configuration failed (`sidecar.reload.LOAD_STAGES`).
CONFIG_FAILURE_REASONS = ("io", "render", "validate")


@functools.cache
def _build_labels() -> tuple[str, str]:
    """(version, data path) of the running build: found once, on the first scrape."""
    from sidecar.compiled import state, version

    return version(), state()


class RequestStats:
    """Counters of one (route, cluster) pair, and its rolling window (GetStats)."""

    __slots__ = ("codes", "buckets", "total_seconds", "rolling")

    def __init__(self, rolling: Window | None = None) -> None:
        self.codes = [0] * 6  # index status // 100; 0 unused
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # last one is +Inf
        self.total_seconds = 0.0
        #: The pair's window in `Metrics.rolling`, kept here so that the data path
        #: reaches it with the lookup it makes anyway (`Metrics.stats`).
        self.rolling = rolling if rolling is not None else Window()

    def observe(self, status: int, seconds: float, now: float | None = None) -> None:
        """A request ended with `status` after `seconds`; given `now` (when it ended),
        it goes into the rolling window too (a 5xx is a failure there): one call for
        both on the hot path."""
        self.codes[status // 100 if 100 <= status < 600 else 5] += 1
        self.buckets[bucket_of(DURATION_BUCKETS, seconds)] += 1
        self.total_seconds += seconds
        if now is not None:
            self.rolling.record(now, status < 500, seconds)


class CheckCounters(Protocol):
    """What the collector reads of the health checker (`HealthChecker` has these)."""

    @property
    def checks(self) -> Mapping[tuple[str, str], int]:
        """(cluster, result) -> checks done."""

    @property
    def latency_sum(self) -> Mapping[str, float]:
        """cluster -> seconds spent in checks."""

    @property
    def latency_count(self) -> Mapping[str, int]:
        """cluster -> checks timed."""


class Metrics(Collector):
    """All of the sidecar's metrics; register it in a CollectorRegistry to expose them."""

    def __init__(self, rolling: Stats | None = None) -> None:
        self._stats: dict[tuple[str, str], RequestStats] = {}
        #: The rolling windows behind GetStats (`sidecar.observe.stats`).
        self.rolling = rolling if rolling is not None else Stats()
        self.active_requests = 0
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        self.retries_refused: dict[tuple[str, str], int] = {}
        self.overflows: dict[tuple[str, str], int] = {}
        self.breaker_transitions: dict[tuple[str, str], int] = {}
        self.fallbacks: dict[tuple[str, str], int] = {}
        self.config_loads = {"success": 0, "failure": 0}
        self.config_load_failures = dict.fromkeys(CONFIG_FAILURE_REASONS, 0)
        self.config_last_load = 0.0
        self.registry: Registry | None = None
        #: The active health checker, whose counters are exposed (None: no such families).
        self.checker: CheckCounters | None = None

    def stats(self, route: str, cluster: str) -> RequestStats:
        key = (route, cluster)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = RequestStats(self.rolling.pair(route, cluster))
        return stats

    def upstream_error(self, cluster: str, kind: str) -> None:
        key = (cluster, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def retry(self, cluster: str, reason: str) -> None:
        key = (cluster, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    def retry_refused(self, cluster: str, reason: str) -> None:
        key = (cluster, reason)
        self.retries_refused[key] = self.retries_refused.get(key, 0) + 1

    def overflow(self, cluster: str, limit: str) -> None:
        key = (cluster, limit)
        self.overflows[key] = self.overflows.get(key, 0) + 1

    def breaker_transition(self, cluster: str, state: str) -> None:
        key = (cluster, state)
        self.breaker_transitions[key] = self.breaker_transitions.get(key, 0) + 1

    def fallback(self, route: str, kind: str) -> None:
        """A fallback (`kind`: cache, cluster, static) answered a request of `route`."""
        key = (route, kind)
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    def config_loaded(self, ok: bool, when: float, reason: str = "") -> None:
        """A configuration was loaded, or (ok False) rejected at stage `reason`, one of
        `CONFIG_FAILURE_REASONS` (anything else counts as "validate": the label stays
        bounded)."""
        self.config_loads["success" if ok else "failure"] += 1
        if not ok:
            key = reason if reason in CONFIG_FAILURE_REASONS else "validate"
            self.config_load_failures[key] += 1
        if ok:
            self.config_last_load = when

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("sidecar_requests", "Requests handled, by route, cluster "
                                       "and status class.", labels=["route", "cluster",
                                                                    "code_class"])
        duration = HistogramMetricFamily("sidecar_request_duration_seconds",
                                         "Time from request received to response sent.",
                                         labels=["route", "cluster"], unit="seconds")
        for (route, cluster), stats in sorted(self._stats.items()):
            for i, name in enumerate(_CODE_CLASSES, start=1):
                if stats.codes[i]:
                    requests.add_metric([route, cluster, name], stats.codes[i])
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), stats.buckets,
                                    strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([route, cluster], buckets, stats.total_seconds)
        yield requests
        yield duration
        yield GaugeMetricFamily("sidecar_active_requests", "Requests in flight.",
                                value=self.active_requests)
        errors = CounterMetricFamily("sidecar_upstream_errors", "Failed upstream tries, by "
                                     "cluster and kind (connect, reset, timeout, stale).",
                                     labels=["cluster", "kind"])
        for (cluster, kind), count in sorted(self.upstream_errors.items()):
            errors.add_metric([cluster, kind], count)
        yield errors
        for name, doc, label, counts in (
                ("sidecar_retries", "Retries made, by cluster and the failure retried.",
                 "reason", self.retries),
                ("sidecar_retries_refused", "Retries not made because the cluster's retry "
                 "budget was spent.", "reason", self.retries_refused),
                ("sidecar_overflows", "Requests refused at once by a cluster limit.",
                 "limit", self.overflows),
                ("sidecar_breaker_transitions", "Circuit breaker transitions, by the state "
                 "entered.", "state", self.breaker_transitions)):
            family = CounterMetricFamily(name, doc, labels=["cluster", label])
            for (cluster, value), count in sorted(counts.items()):
                family.add_metric([cluster, value], count)
            yield family
        fallbacks = CounterMetricFamily("sidecar_fallbacks", "Answers given by a fallback, by "
                                        "route and kind (cache, cluster, static).",
                                        labels=["route", "kind"])
        for (route, kind), count in sorted(self.fallbacks.items()):
            fallbacks.add_metric([route, kind], count)
        yield fallbacks
        loads = CounterMetricFamily("sidecar_config_loads", "Configuration loads, by result.",
                                    labels=["result"])
        for result, count in sorted(self.config_loads.items()):
            loads.add_metric([result], count)
        yield loads
        failures = CounterMetricFamily("sidecar_config_load_failures", "Configurations a "
                                       "reload rejected, by the stage that failed (io, "
                                       "render, validate).", labels=["reason"])
        for reason, count in sorted(self.config_load_failures.items()):
            failures.add_metric([reason], count)
        yield failures
        yield GaugeMetricFamily("sidecar_config_last_load_timestamp_seconds",
                                "When the serving configuration was loaded (Unix time).",
                                value=self.config_last_load)
        build = GaugeMetricFamily("sidecar_build_info", "The running build; value is always "
                                  "1. data_path: compiled (mypyc), interpreted or mixed.",
                                  labels=["version", "data_path"])
        build.add_metric(list(_build_labels()), 1)
        yield build
        if self.registry is not None:
            yield from self._collect_registry(self.registry)
        if self.checker is not None:
            yield from self._collect_checks(self.checker, self.registry)

    def _collect_registry(self, registry: Registry) -> Iterator[Metric]:
        from sidecar.core.breaker import BreakerState
        from sidecar.registry import EndpointStatus

        endpoints = GaugeMetricFamily("sidecar_endpoints", "Endpoints by cluster and status.",
                                      labels=["cluster", "status"])
        breakers = GaugeMetricFamily("sidecar_breaker_state", "1 for the state each "
                                     "endpoint's circuit breaker is in.",
                                     labels=["cluster", "endpoint", "state"])
        panic = GaugeMetricFamily("sidecar_panic_mode", "1 while the cluster ignores its "
                                  "failing health checks (too few endpoints pass).",
                                  labels=["cluster"])
        active = GaugeMetricFamily("sidecar_cluster_active_requests", "Requests admitted to "
                                   "the cluster and not finished (its max_requests gauge).",
                                   labels=["cluster"])
        pending = GaugeMetricFamily("sidecar_cluster_pending_requests", "Admitted requests "
                                    "waiting for a connection (its max_pending gauge).",
                                    labels=["cluster"])
        budget = GaugeMetricFamily("sidecar_retry_budget_in_flight", "Retries in flight "
                                   "holding a slot of the cluster's retry budget.",
                                   labels=["cluster"])
        for name in sorted(registry.clusters):
            members = registry.clusters[name]
            counts = dict.fromkeys(EndpointStatus, 0)
            for endpoint_id in sorted(members.endpoints):
                endpoint = members.endpoints[endpoint_id]
                counts[endpoint.status] += 1
                current = endpoint.host.breaker.state
                for state in BreakerState:
                    breakers.add_metric([name, endpoint_id, state.name.lower()],
                                        1 if state is current else 0)
            for status, count in counts.items():
                endpoints.add_metric([name, status.name.lower()], count)
            hosts = members.hosts
            panic.add_metric([name], 1 if hosts.panic else 0)
            active.add_metric([name], hosts.limits.active)
            pending.add_metric([name], hosts.limits.pending)
            budget.add_metric([name], hosts.budget.retries_in_flight)
        yield endpoints
        yield breakers
        yield panic
        yield active
        yield pending
        yield budget
        info = registry.config_info
        if info is not None:
            config = GaugeMetricFamily("sidecar_config_info", "The serving configuration; "
                                       "value is always 1.", labels=["version", "source"])
            config.add_metric([info.version[:12], info.source], 1)
            yield config

    @staticmethod
    def _collect_checks(checker: CheckCounters, registry: Registry | None) -> Iterator[Metric]:
        from sidecar.dataplane.checker import RESULTS

        counts = checker.checks
        clusters = {cluster for cluster, _ in counts} | set(checker.latency_count)
        if registry is not None:  # checked clusters show zeros before their first check
            clusters.update(name for name, members in registry.clusters.items()
                            if members.hosts.settings.health_check is not None)
        checks = CounterMetricFamily("sidecar_health_checks", "Active health checks, by "
                                     "cluster and result (passed, failed, timeout, error).",
                                     labels=["cluster", "result"])
        duration = SummaryMetricFamily("sidecar_health_check_duration_seconds", "Time "
                                       "active health checks took (connect, request, "
                                       "bounded body read; timeouts included).",
                                       labels=["cluster"], unit="seconds")
        results = (*RESULTS, *sorted({r for _, r in counts} - set(RESULTS)))
        for cluster in sorted(clusters):
            for result in results:
                checks.add_metric([cluster, result], counts.get((cluster, result), 0))
            duration.add_metric([cluster], checker.latency_count.get(cluster, 0),
                                checker.latency_sum.get(cluster, 0.0))
        yield checks
        yield duration

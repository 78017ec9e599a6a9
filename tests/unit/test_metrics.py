"""Metrics: counts recorded on the hot path in, Prometheus text exposition out."""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.model import parse_config
from sidecar.core.clock import FakeClock
from sidecar.dataplane.checker import RESULTS, HealthChecker
from sidecar.observe.metrics import DURATION_BUCKETS, Metrics, RequestStats
from sidecar.registry import ConfigInfo, EndpointStatus, Registry

PROMTOOL = "/usr/bin/promtool"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> str:
    registry = CollectorRegistry()
    registry.register(metrics)
    return generate_latest(registry).decode("utf-8")


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def named(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in found.items() if n == name}


def buckets(found: Samples, route: str, cluster: str) -> list[tuple[float, float]]:
    out = []
    for labels, count in named(found, "sidecar_request_duration_seconds_bucket").items():
        d = dict(labels)
        if (d["route"], d["cluster"]) == (route, cluster):
            out.append((float(d["le"]), count))
    return sorted(out)


def types(text: str) -> dict[str, str]:
    return {line.split()[2]: line.split()[3] for line in text.splitlines()
            if line.startswith("# TYPE")}


# ------------------------------------------------------------ request counters


def test_empty_metrics_expose_every_family() -> None:
    text = scrape(Metrics())
    assert types(text) == {
        "sidecar_requests_total": "counter",
        "sidecar_request_duration_seconds": "histogram",
        "sidecar_active_requests": "gauge",
        "sidecar_upstream_errors_total": "counter",
        "sidecar_retries_total": "counter",
        "sidecar_retries_refused_total": "counter",
        "sidecar_overflows_total": "counter",
        "sidecar_breaker_transitions_total": "counter",
        "sidecar_fallbacks_total": "counter",
        "sidecar_config_loads_total": "counter",
        "sidecar_config_load_failures_total": "counter",
        "sidecar_config_last_load_timestamp_seconds": "gauge",
        "sidecar_build_info": "gauge",
    }
    found = samples(text)
    assert named(found, "sidecar_requests_total") == {}
    assert value(found, "sidecar_active_requests") == 0


def test_requests_counted_by_route_cluster_and_code_class() -> None:
    metrics = Metrics()
    api = metrics.stats("api", "web")
    for status in (200, 201, 204, 301, 404, 499, 500, 503, 504, 101):
        api.observe(status, 0.01)
    metrics.stats("static", "files").observe(200, 0.01)
    found = samples(scrape(metrics))
    assert named(found, "sidecar_requests_total") == {
        frozenset({("route", "api"), ("cluster", "web"), ("code_class", "1xx")}): 1,
        frozenset({("route", "api"), ("cluster", "web"), ("code_class", "2xx")}): 3,
        frozenset({("route", "api"), ("cluster", "web"), ("code_class", "3xx")}): 1,
        frozenset({("route", "api"), ("cluster", "web"), ("code_class", "4xx")}): 2,
        frozenset({("route", "api"), ("cluster", "web"), ("code_class", "5xx")}): 3,
        frozenset({("route", "static"), ("cluster", "files"), ("code_class", "2xx")}): 1,
    }


@pytest.mark.parametrize(("status", "index"), [(100, 1), (199, 1), (200, 2), (399, 3),
                                               (400, 4), (599, 5), (0, 5), (99, 5), (600, 5),
                                               (999, 5)])
def test_status_outside_100_599_counts_as_5xx(status: int, index: int) -> None:
    stats = RequestStats()
    stats.observe(status, 0.0)
    assert stats.codes[index] == 1 and sum(stats.codes) == 1


def test_stats_is_one_object_per_route_and_cluster() -> None:
    metrics = Metrics()
    assert metrics.stats("a", "b") is metrics.stats("a", "b")
    assert metrics.stats("a", "b") is not metrics.stats("a", "c")


def test_errors_before_routing_are_labelled_empty() -> None:
    metrics = Metrics()
    metrics.stats("", "").observe(404, 0.001)
    found = samples(scrape(metrics))
    assert value(found, "sidecar_requests_total", route="", cluster="", code_class="4xx") == 1


# ------------------------------------------------------------ duration histogram


@pytest.mark.parametrize("seconds", [0.0, 0.0001, *DURATION_BUCKETS,
                                     0.1000001, 0.75, 29.999, 30.0001, 3600.0])
def test_histogram_le_placement(seconds: float) -> None:
    metrics = Metrics()
    metrics.stats("r", "c").observe(200, seconds)
    found = samples(scrape(metrics))
    got = buckets(found, "r", "c")
    assert [le for le, _ in got] == [*DURATION_BUCKETS, math.inf]
    for le, count in got:
        assert count == (1 if seconds <= le else 0), (le, seconds)
    assert value(found, "sidecar_request_duration_seconds_count", route="r", cluster="c") == 1
    assert value(found, "sidecar_request_duration_seconds_sum", route="r",
                 cluster="c") == pytest.approx(seconds)


def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    stats = metrics.stats("r", "c")
    observed = [0.0003, 0.0003, 0.004, 0.2, 0.2, 0.2, 1.0, 7.0, 45.0]
    for seconds in observed:
        stats.observe(200, seconds)
    found = samples(scrape(metrics))
    got = dict(buckets(found, "r", "c"))
    for le, count in got.items():
        assert count == sum(1 for s in observed if s <= le)
    counts = [count for _, count in sorted(got.items())]
    assert counts == sorted(counts)
    assert got[math.inf] == len(observed)
    assert value(found, "sidecar_request_duration_seconds_count", route="r",
                 cluster="c") == len(observed)
    assert value(found, "sidecar_request_duration_seconds_sum", route="r",
                 cluster="c") == pytest.approx(sum(observed))


def test_histogram_le_labels_are_exposed_as_written() -> None:
    metrics = Metrics()
    metrics.stats("r", "c").observe(200, 0.3)
    text = scrape(metrics)
    for le in ('le="0.0005"', 'le="0.1"', 'le="1.0"', 'le="30.0"', 'le="+Inf"'):
        assert le in text


def test_histograms_are_per_route_and_cluster() -> None:
    metrics = Metrics()
    metrics.stats("a", "x").observe(200, 0.001)
    metrics.stats("b", "x").observe(200, 5.0)
    metrics.stats("b", "x").observe(500, 5.0)
    found = samples(scrape(metrics))
    assert value(found, "sidecar_request_duration_seconds_count", route="a", cluster="x") == 1
    assert value(found, "sidecar_request_duration_seconds_count", route="b", cluster="x") == 2
    assert dict(buckets(found, "b", "x"))[2.5] == 0


# ------------------------------------------------------------ other families


def test_active_requests_gauge() -> None:
    metrics = Metrics()
    metrics.active_requests = 3
    assert value(samples(scrape(metrics)), "sidecar_active_requests") == 3


def test_upstream_errors_by_cluster_and_kind() -> None:
    metrics = Metrics()
    for cluster, kind in [("web", "connect"), ("web", "connect"), ("web", "timeout"),
                          ("api", "reset"), ("api", "protocol")]:
        metrics.upstream_error(cluster, kind)
    found = samples(scrape(metrics))
    assert named(found, "sidecar_upstream_errors_total") == {
        frozenset({("cluster", "web"), ("kind", "connect")}): 2,
        frozenset({("cluster", "web"), ("kind", "timeout")}): 1,
        frozenset({("cluster", "api"), ("kind", "reset")}): 1,
        frozenset({("cluster", "api"), ("kind", "protocol")}): 1,
    }


def test_config_loads_and_last_load_time() -> None:
    metrics = Metrics()
    metrics.config_loaded(True, 1_700_000_000.0)
    metrics.config_loaded(False, 1_700_000_100.0)  # a failure does not move the timestamp
    metrics.config_loaded(True, 1_700_000_200.0)
    metrics.config_loaded(False, 1_700_000_300.0)
    found = samples(scrape(metrics))
    assert value(found, "sidecar_config_loads_total", result="success") == 2
    assert value(found, "sidecar_config_loads_total", result="failure") == 2
    # Without a reason, a failure counts as "validate"; every reason shows, 0 until seen.
    assert named(found, "sidecar_config_load_failures_total") == {
        frozenset({("reason", "io")}): 0, frozenset({("reason", "render")}): 0,
        frozenset({("reason", "validate")}): 2}
    assert value(found, "sidecar_config_last_load_timestamp_seconds") == 1_700_000_200.0


def test_endpoints_gauge_from_the_registry() -> None:
    registry = Registry(FakeClock())
    registry.register("web", "http://h:1")
    registry.register("web", "http://h:2")
    registry.register("web", "http://h:3", status=EndpointStatus.DISABLED)
    registry.register("api", "http://h:1")
    registry.set_status("api", "h:1", EndpointStatus.DRAINING, "deploy")
    metrics = Metrics()
    metrics.registry = registry
    text = scrape(metrics)
    assert types(text)["sidecar_endpoints"] == "gauge"
    found = samples(text)
    expected = {("web", "active"): 2, ("web", "unhealthy"): 0, ("web", "disabled"): 1,
                ("web", "draining"): 0, ("api", "active"): 0, ("api", "unhealthy"): 0,
                ("api", "disabled"): 0, ("api", "draining"): 1}
    assert named(found, "sidecar_endpoints") == {
        frozenset({("cluster", c), ("status", s)}): n for (c, s), n in expected.items()}
    assert "sidecar_config_info" not in types(text)  # no config loaded yet


def test_endpoints_gauge_follows_registry_changes() -> None:
    registry = Registry(FakeClock())
    metrics = Metrics()
    metrics.registry = registry
    assert named(samples(scrape(metrics)), "sidecar_endpoints") == {}
    registry.register("dyn", "http://h:1")
    assert value(samples(scrape(metrics)), "sidecar_endpoints", cluster="dyn",
                 status="active") == 1
    registry.deregister("dyn", "h:1")
    assert named(samples(scrape(metrics)), "sidecar_endpoints") == {}


def test_config_info_with_short_version() -> None:
    registry = Registry(FakeClock())
    registry.config_info = ConfigInfo("0123456789abcdef" * 4, "/etc/sidecar.jsonnet", 1.0, 2, 3)
    metrics = Metrics()
    metrics.registry = registry
    found = samples(scrape(metrics))
    assert named(found, "sidecar_config_info") == {
        frozenset({("version", "0123456789ab"), ("source", "/etc/sidecar.jsonnet")}): 1}


def test_no_registry_no_endpoint_families() -> None:
    text = scrape(Metrics())
    for family in ("sidecar_endpoints", "sidecar_config_info", "sidecar_breaker_state",
                   "sidecar_panic_mode", "sidecar_cluster_active_requests",
                   "sidecar_cluster_pending_requests", "sidecar_retry_budget_in_flight",
                   "sidecar_health_checks", "sidecar_health_check_duration_seconds"):
        assert family not in text


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.stats('we"ird\\route', "c").observe(200, 0.1)
    found = samples(scrape(metrics))
    assert value(found, "sidecar_requests_total", route='we"ird\\route', cluster="c",
                 code_class="2xx") == 1


# ------------------------------------------------------------ resilience families


def configured(*clusters: dict[str, Any]) -> Registry:
    """A registry holding these clusters, applied like a config file."""
    config = parse_config({"clusters": list(clusters),
                           "routes": [{"prefix": "/", "cluster": clusters[0]["name"]}]})
    registry = Registry(FakeClock())
    registry.apply_config(config, ConfigInfo("v1", "test.jsonnet", 1.0, len(clusters), 1))
    return registry


CHECKED = {"path": "/healthz", "healthy_threshold": 1, "unhealthy_threshold": 1}


@pytest.mark.parametrize(("method", "family", "label"), [
    ("retry", "sidecar_retries_total", "reason"),
    ("retry_refused", "sidecar_retries_refused_total", "reason"),
    ("overflow", "sidecar_overflows_total", "limit"),
    ("breaker_transition", "sidecar_breaker_transitions_total", "state"),
])
def test_cluster_counters(method: str, family: str, label: str) -> None:
    metrics = Metrics()
    count = getattr(metrics, method)
    for cluster, value_ in [("web", "a"), ("web", "a"), ("web", "b"), ("api", "a")]:
        count(cluster, value_)
    text = scrape(metrics)
    assert types(text)[family] == "counter"
    assert named(samples(text), family) == {
        frozenset({("cluster", "web"), (label, "a")}): 2,
        frozenset({("cluster", "web"), (label, "b")}): 1,
        frozenset({("cluster", "api"), (label, "a")}): 1,
    }


def test_fallbacks_by_route_and_kind() -> None:
    metrics = Metrics()
    for route, kind in [("api", "cache"), ("api", "cache"), ("api", "static"),
                        ("/", "cluster")]:
        metrics.fallback(route, kind)
    text = scrape(metrics)
    assert types(text)["sidecar_fallbacks_total"] == "counter"
    assert named(samples(text), "sidecar_fallbacks_total") == {
        frozenset({("route", "api"), ("kind", "cache")}): 2,
        frozenset({("route", "api"), ("kind", "static")}): 1,
        frozenset({("route", "/"), ("kind", "cluster")}): 1,
    }


def test_breaker_state_is_one_hot_per_endpoint() -> None:
    registry = Registry(FakeClock())
    registry.register("web", "http://h:1")
    registry.register("web", "http://h:2")
    hosts = registry.clusters["web"].hosts
    hosts.trip(hosts.hosts["h:2"], "test")
    metrics = Metrics()
    metrics.registry = registry
    text = scrape(metrics)
    assert types(text)["sidecar_breaker_state"] == "gauge"
    expected = {("h:1", "closed"): 1, ("h:1", "open"): 0, ("h:1", "half_open"): 0,
                ("h:2", "closed"): 0, ("h:2", "open"): 1, ("h:2", "half_open"): 0}
    assert named(samples(text), "sidecar_breaker_state") == {
        frozenset({("cluster", "web"), ("endpoint", e), ("state", s)}): n
        for (e, s), n in expected.items()}
    hosts.reset(hosts.hosts["h:2"], "test")
    found = samples(scrape(metrics))
    assert value(found, "sidecar_breaker_state", cluster="web", endpoint="h:2",
                 state="closed") == 1
    assert value(found, "sidecar_breaker_state", cluster="web", endpoint="h:2",
                 state="open") == 0


def test_panic_mode_per_cluster() -> None:
    registry = configured(
        {"name": "web", "health_check": CHECKED,
         "endpoints": [{"url": "http://h:1"}, {"url": "http://h:2"}]},
        {"name": "plain", "endpoints": [{"url": "http://h:3"}]})
    metrics = Metrics()
    metrics.registry = registry
    text = scrape(metrics)
    assert types(text)["sidecar_panic_mode"] == "gauge"
    # Nothing has passed a check yet: fewer than half pass, so the checks are ignored.
    assert named(samples(text), "sidecar_panic_mode") == {
        frozenset({("cluster", "web")}): 1, frozenset({("cluster", "plain")}): 0}
    hosts = registry.clusters["web"].hosts
    for host in list(hosts.hosts.values()):
        hosts.on_check(host, True, status=200, latency=0.01)
    assert value(samples(scrape(metrics)), "sidecar_panic_mode", cluster="web") == 0


def test_cluster_request_gauges_and_retry_budget() -> None:
    registry = Registry(FakeClock())
    registry.register("web", "http://h:1")
    registry.register("api", "http://h:1")
    metrics = Metrics()
    metrics.registry = registry
    text = scrape(metrics)
    for family in ("sidecar_cluster_active_requests", "sidecar_cluster_pending_requests",
                   "sidecar_retry_budget_in_flight"):
        assert types(text)[family] == "gauge"
        assert named(samples(text), family) == {
            frozenset({("cluster", "web")}): 0, frozenset({("cluster", "api")}): 0}
    hosts = registry.clusters["web"].hosts
    for _ in range(3):
        assert hosts.limits.try_admit() is None
    assert hosts.limits.pending_enter()
    assert hosts.budget.try_acquire(3) and hosts.budget.try_acquire(3)
    found = samples(scrape(metrics))
    assert value(found, "sidecar_cluster_active_requests", cluster="web") == 3
    assert value(found, "sidecar_cluster_pending_requests", cluster="web") == 1
    assert value(found, "sidecar_retry_budget_in_flight", cluster="web") == 2
    assert value(found, "sidecar_cluster_active_requests", cluster="api") == 0
    hosts.limits.pending_exit()
    for _ in range(3):
        hosts.limits.done()
    hosts.budget.release()
    hosts.budget.release()
    found = samples(scrape(metrics))
    for family in ("sidecar_cluster_active_requests", "sidecar_cluster_pending_requests",
                   "sidecar_retry_budget_in_flight"):
        assert value(found, family, cluster="web") == 0


def test_health_checks_from_the_checker() -> None:
    registry = configured(
        {"name": "web", "health_check": CHECKED, "endpoints": [{"url": "http://h:1"}]},
        {"name": "fresh", "health_check": CHECKED, "endpoints": [{"url": "http://h:2"}]},
        {"name": "plain", "endpoints": [{"url": "http://h:3"}]})
    checker = HealthChecker(registry)  # not started: only its counters are read
    checker.checks.update({("web", "passed"): 5, ("web", "timeout"): 2,
                           ("gone", "error"): 1})  # "gone": a cluster since removed
    checker.latency_sum.update({"web": 1.25, "gone": 0.5})
    checker.latency_count.update({"web": 7, "gone": 1})
    metrics = Metrics()
    metrics.registry = registry
    metrics.checker = checker
    text = scrape(metrics)
    assert types(text)["sidecar_health_checks_total"] == "counter"
    assert types(text)["sidecar_health_check_duration_seconds"] == "summary"
    found = samples(text)
    counts = {("web", "passed"): 5, ("web", "timeout"): 2, ("gone", "error"): 1}
    assert named(found, "sidecar_health_checks_total") == {
        frozenset({("cluster", c), ("result", r)}): counts.get((c, r), 0)
        for c in ("web", "fresh", "gone") for r in RESULTS}  # "plain" is not checked
    assert named(found, "sidecar_health_check_duration_seconds_count") == {
        frozenset({("cluster", "web")}): 7, frozenset({("cluster", "fresh")}): 0,
        frozenset({("cluster", "gone")}): 1}
    assert named(found, "sidecar_health_check_duration_seconds_sum") == {
        frozenset({("cluster", "web")}): 1.25, frozenset({("cluster", "fresh")}): 0.0,
        frozenset({("cluster", "gone")}): 0.5}


def test_health_checks_without_a_registry_show_the_counted_clusters() -> None:
    metrics = Metrics()
    metrics.checker = SimpleNamespace(checks={("web", "failed"): 1}, latency_sum={"web": 0.2},
                                      latency_count={"web": 1})
    found = samples(scrape(metrics))
    assert value(found, "sidecar_health_checks_total", cluster="web", result="failed") == 1
    assert value(found, "sidecar_health_checks_total", cluster="web", result="passed") == 0
    assert value(found, "sidecar_health_check_duration_seconds_sum",
                 cluster="web") == pytest.approx(0.2)


# ------------------------------------------------------------ promtool


def busy_metrics() -> Metrics:
    registry = Registry(FakeClock())
    registry.register("web", "http://h:1")
    registry.register("web", "http://h:2", status=EndpointStatus.DISABLED)
    registry.config_info = ConfigInfo("abcdef0123456789", "config.jsonnet", 1.0, 1, 1)
    metrics = Metrics()
    metrics.registry = registry
    metrics.active_requests = 2
    for status, seconds in [(200, 0.004), (404, 0.1), (502, 31.0), (200, 0.5)]:
        metrics.stats("api", "web").observe(status, seconds)
    metrics.stats("/", "files").observe(304, 0.0002)
    metrics.upstream_error("web", "connect")
    metrics.retry("web", "gateway_error")
    metrics.retry_refused("web", "budget_exhausted")
    metrics.overflow("web", "max_requests")
    metrics.breaker_transition("web", "open")
    metrics.fallback("api", "cache")
    hosts = registry.clusters["web"].hosts
    hosts.trip(hosts.hosts["h:1"], "test")
    assert hosts.limits.try_admit() is None and hosts.budget.try_acquire(1)
    checker = HealthChecker(registry)
    checker.checks[("web", "passed")] = 3
    checker.latency_sum["web"], checker.latency_count["web"] = 0.03, 3
    metrics.checker = checker
    metrics.config_loaded(True, 1_700_000_000.0)
    metrics.config_loaded(False, 1_700_000_001.0)
    return metrics


@pytest.mark.skipif(not os.path.exists(PROMTOOL), reason=f"{PROMTOOL} is not installed")
@pytest.mark.parametrize("make", [Metrics, busy_metrics])
def test_promtool_check_metrics(make: Callable[[], Metrics]) -> None:
    text = scrape(make())
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""

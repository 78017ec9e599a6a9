"""/metrics end to end: a real sidecar, real traffic (answers, retries, a dead cluster,
an overflow, a fallback, active health checks), scraped over HTTP from the admin port.

The text must pass `promtool check metrics`, every sidecar family must carry exactly
its documented label names with bounded values (route and cluster names, endpoint
ids, enum values; never a request path), and the gauges must return to zero once
the traffic is over.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Sidecar
from sidecar.dataplane.checker import RESULTS

from .conftest import Gate, base_url, refused_url, url_of

PROMTOOL = "/usr/bin/promtool"
WAIT = 10.0  # the most a wait may take; it normally ends in milliseconds
CHECK = {"path": "/healthz", "interval": 0.05, "jitter": 0, "timeout": 1,
         "healthy_threshold": 1, "unhealthy_threshold": 1}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: Every sidecar family of the exposition and its label names (histogram/summary
#: samples add `le`; those are checked by the sample names below).
FAMILIES: dict[str, tuple[str, set[str]]] = {
    "sidecar_requests": ("counter", {"route", "cluster", "code_class"}),
    "sidecar_request_duration_seconds": ("histogram", {"route", "cluster"}),
    "sidecar_active_requests": ("gauge", set()),
    "sidecar_upstream_errors": ("counter", {"cluster", "kind"}),
    "sidecar_retries": ("counter", {"cluster", "reason"}),
    "sidecar_retries_refused": ("counter", {"cluster", "reason"}),
    "sidecar_overflows": ("counter", {"cluster", "limit"}),
    "sidecar_breaker_transitions": ("counter", {"cluster", "state"}),
    "sidecar_fallbacks": ("counter", {"route", "kind"}),
    "sidecar_config_loads": ("counter", {"result"}),
    "sidecar_config_load_failures": ("counter", {"reason"}),
    "sidecar_config_last_load_timestamp_seconds": ("gauge", set()),
    "sidecar_build_info": ("gauge", {"version", "data_path"}),
    "sidecar_endpoints": ("gauge", {"cluster", "status"}),
    "sidecar_breaker_state": ("gauge", {"cluster", "endpoint", "state"}),
    "sidecar_panic_mode": ("gauge", {"cluster"}),
    "sidecar_cluster_active_requests": ("gauge", {"cluster"}),
    "sidecar_cluster_pending_requests": ("gauge", {"cluster"}),
    "sidecar_retry_budget_in_flight": ("gauge", {"cluster"}),
    "sidecar_config_info": ("gauge", {"version", "source"}),
    "sidecar_health_checks": ("counter", {"cluster", "result"}),
    "sidecar_health_check_duration_seconds": ("summary", {"cluster"}),
}
#: The values a label may take in this test's sidecar.
BOUNDED = {
    "route": {"api", "dead", "slow"},
    "cluster": {"web", "down", "slow"},
    "endpoint": {"ok", "closed", "gate"},
    "code_class": {"1xx", "2xx", "3xx", "4xx", "5xx"},
    "kind": {"connect", "reset", "timeout", "protocol", "stale", "cache", "cluster",
             "static"},
    "state": {"closed", "open", "half_open"},
    "status": {"active", "unhealthy", "disabled", "draining"},
    "limit": {"max_requests", "max_pending"},
    "result": {*RESULTS, "success", "failure"},
}
GAUGES = ("sidecar_cluster_active_requests", "sidecar_cluster_pending_requests",
          "sidecar_retry_budget_in_flight")


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


class Scraper:
    """Scrapes the admin port like Prometheus (which asks for, and inflates, compression)."""

    def __init__(self, client: aiohttp.ClientSession, sidecar: Sidecar) -> None:
        self.client = client
        self.url = f"http://127.0.0.1:{sidecar.ports['admin_http']}/metrics"

    async def text(self, accept: str | None = None) -> str:
        headers = {"Accept": accept} if accept else {}
        async with self.client.get(self.url, headers=headers) as response:
            assert response.status == 200
            return await response.text()

    async def until(self, predicate: Callable[[Samples], bool]) -> Samples:
        """Scrape until `predicate` holds of the samples (state changes in the event loop
        between scrapes: health checks, the end of a request); the samples."""
        async with asyncio.timeout(WAIT):
            while True:
                found = samples(await self.text())
                if predicate(found):
                    return found
                await asyncio.sleep(0.01)


@pytest.fixture
async def sidecar(start_upstream: Callable[..., Awaitable[Any]],
                  start_sidecar: Callable[[dict[str, Any]], Awaitable[Sidecar]]) -> Any:
    ok, _ = await start_upstream()
    gate = Gate()
    slow, _ = await start_upstream(gate.app())
    sidecar = await start_sidecar({
        "clusters": [
            {"name": "web", "health_check": CHECK,
             "endpoints": [{"url": url_of(ok), "id": "ok"}]},
            {"name": "down", "health_check": CHECK,
             "circuit_breaker": {"consecutive_failures": 1},
             "endpoints": [{"url": refused_url(), "id": "closed"}]},
            {"name": "slow", "limits": {"max_requests": 1},
             "endpoints": [{"url": url_of(slow), "id": "gate"}]},
        ],
        "routes": [
            {"name": "dead", "prefix": "/dead", "cluster": "down",
             "fallback": {"static": {"status": 503, "body": "try later"}}},
            {"name": "slow", "prefix": "/slow", "prefix_rewrite": "/", "cluster": "slow"},
            {"name": "api", "prefix": "/", "cluster": "web"},
        ],
    })
    return sidecar, gate


async def test_scrape_after_traffic(sidecar: tuple[Sidecar, Gate],
                                    client: aiohttp.ClientSession) -> None:
    app, gate = sidecar
    async with aiohttp.ClientSession() as session:  # `client` does not inflate
        await scrape_after_traffic(app, gate, Scraper(session, app), client)


async def scrape_after_traffic(app: Sidecar, gate: Gate, scraper: Scraper,
                               client: aiohttp.ClientSession) -> None:
    url = base_url(app)

    # Health checks: "web" passes (so it leaves panic mode), "down" is refused.
    await scraper.until(lambda f: (
        (value(f, "sidecar_health_checks_total", cluster="web", result="passed") or 0) >= 1
        and (value(f, "sidecar_health_checks_total", cluster="down", result="error") or 0) >= 1
        and value(f, "sidecar_panic_mode", cluster="web") == 0))

    for path in ("/", "/a?x=1", "/b/c"):
        async with client.get(url + path) as response:
            assert response.status == 200
    async with client.get(url + "/status/503") as response:  # tried 3 times
        assert response.status == 503
    async with client.get(url + "/dead/x") as response:  # refused, then the static fallback
        assert response.status == 503
        assert response.headers["X-Sidecar-Fallback"] == "static"
        assert await response.text() == "try later"

    # One request parked in "slow" (max_requests 1): the gauge shows it; a second overflows.
    parked = asyncio.ensure_future(client.get(url + "/slow"))
    await asyncio.wait_for(gate.arrived.wait(), WAIT)
    await scraper.until(lambda f: value(f, "sidecar_cluster_active_requests", cluster="slow")
                        == 1 and value(f, "sidecar_active_requests") == 1)
    async with client.get(url + "/slow") as response:
        assert response.status == 503
    gate.release.set()
    async with await parked as response:
        assert response.status == 200

    # Everything finished: every gauge is back to zero.
    found = await scraper.until(lambda f: all(
        value(f, name, cluster=c) == 0 for name in GAUGES for c in ("web", "down", "slow"))
        and value(f, "sidecar_active_requests") == 0)

    assert value(found, "sidecar_requests_total", route="api", cluster="web",
                 code_class="2xx") == 3
    assert value(found, "sidecar_retries_total", cluster="web", reason="gateway_error") == 2
    assert value(found, "sidecar_overflows_total", cluster="slow", limit="max_requests") == 1
    assert value(found, "sidecar_fallbacks_total", route="dead", kind="static") == 1
    assert (value(found, "sidecar_upstream_errors_total", cluster="down", kind="connect")
            or 0) >= 1
    assert value(found, "sidecar_breaker_transitions_total", cluster="down", state="open") == 1
    assert value(found, "sidecar_breaker_state", cluster="down", endpoint="closed",
                 state="open") == 1
    assert value(found, "sidecar_breaker_state", cluster="web", endpoint="ok",
                 state="closed") == 1
    assert value(found, "sidecar_panic_mode", cluster="down") == 1
    assert value(found, "sidecar_panic_mode", cluster="slow") == 0
    assert value(found, "sidecar_endpoints", cluster="web", status="active") == 1
    assert value(found, "sidecar_endpoints", cluster="down", status="unhealthy") == 1
    for cluster in ("web", "down"):
        checks = sum(value(found, "sidecar_health_checks_total", cluster=cluster,
                           result=r) or 0 for r in RESULTS)
        assert value(found, "sidecar_health_check_duration_seconds_count",
                     cluster=cluster) == checks
        assert (value(found, "sidecar_health_check_duration_seconds_sum", cluster=cluster)
                or 0) > 0
    # "slow" has no health_check: no check series for it.
    assert value(found, "sidecar_health_check_duration_seconds_count", cluster="slow") is None

    text = await scraper.text()
    check_families(text)
    check_promtool(text)
    # Prometheus asks for OpenMetrics when it can: that form must parse too.
    om = await scraper.text("application/openmetrics-text; version=1.0.0; charset=utf-8")
    names = {family.name for family in openmetrics_families(om)}
    assert {"sidecar_health_checks", "sidecar_health_check_duration_seconds",
            "sidecar_fallbacks", "sidecar_retry_budget_in_flight"} <= names


def check_families(text: str) -> None:
    """Each sidecar family: its type, exactly its label names, bounded label values."""
    seen: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sidecar_"):
            continue
        assert family.name in FAMILIES, f"undocumented family {family.name}"
        kind, labels = FAMILIES[family.name]
        seen[family.name] = family.type
        assert family.type == kind, family.name
        for sample in family.samples:
            names = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
            assert names == labels, (sample.name, sample.labels)
            for label, label_value in sample.labels.items():
                if label in BOUNDED:
                    assert label_value in BOUNDED[label], (sample.name, label, label_value)
    assert set(seen) == set(FAMILIES)


def check_promtool(text: str) -> None:
    if not os.path.exists(PROMTOOL):
        pytest.skip(f"{PROMTOOL} is not installed")
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""

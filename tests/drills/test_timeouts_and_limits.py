"""Drills: a hanging endpoint under a per-try timeout, the max_requests limit, and a
cluster whose every endpoint fails.

Real upstreams on 127.0.0.1, a real sidecar, concurrent clients. Counts, not timings:
every wait is on something that happened (a bus event, a request arriving upstream, a
response), bounded by `support.WAIT`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sidecar.core.breaker import BreakerState

from ..integration.conftest import Gate, base_url, url_of
from .support import (
    CLIENTS,
    HangingServer,
    Pulse,
    breaker_entered,
    cluster,
    fetch,
    host_of,
    load,
    routed,
    scrape,
)

REQUESTS = 200
ROUTE = "/"  # an unnamed route is named by its prefix


# ---------------------------------------------------------------- drill 1


async def test_hanging_endpoint_is_cut_by_per_try_timeout_then_ejected(
        start_upstream, start_sidecar, client):
    """One of three endpoints accepts connections and never answers; only
    `retry.per_try_timeout` is set. 200 GETs from 8 clients.

    No request fails, and the hanging endpoint gets 8-11 attempts. Round robin sends
    every third pick to the hanging endpoint, so within a few milliseconds all 8
    clients are stuck there; their per-try timeouts fire together (same deadline-wheel
    tick) and all 8 need a retry at once. The retry budget's concurrency rule alone,
    max(3, 0.2 x 8 active) = 3 in flight, would refuse 5 of them (measured: 1-5 of
    200 failed before the budget had its rate rules); its rate rules (retries per
    request over 10 s, and 10 retries a second whatever the traffic) let the burst
    through. The 5th timeout opens the breaker (timeout is in `failure_on` by
    default); after that the endpoint is out of rotation.
    """
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    hang = HangingServer()
    hang_url = await hang.start()
    try:
        sidecar = await start_sidecar(routed(cluster(
            "app", [url_of(a), url_of(b), hang_url], retry={"per_try_timeout": 0.2})))
        pulse = Pulse().follow(sidecar)
        result = await load(client, base_url(sidecar) + "/", REQUESTS)
        metrics = await scrape(client, sidecar)
    finally:
        await hang.close()

    host = host_of(sidecar, "app", "e2")
    failed = [o for o in result.outcomes if o.status != 200]
    print(f"\n[drill 1] failed={len(failed)}/{REQUESTS} hanging attempts={hang.requests}")
    assert failed == []
    timeouts = metrics.value("sidecar_upstream_errors_total", cluster="app", kind="timeout")
    retried = metrics.total("sidecar_retries_total", cluster="app")
    refused = metrics.total("sidecar_retries_refused_total", cluster="app")
    assert timeouts == host.requests == hang.requests  # every attempt there timed out
    assert retried == timeouts and refused == 0
    assert metrics.value("sidecar_retry_budget_in_flight", cluster="app") == 0

    # The breaker opened on timeouts, and bounded the attempts: at most 5 recorded while
    # CLOSED (the 5th opens it) plus those of the other 7 clients in flight at that
    # moment; then only HALF_OPEN probes (none unless the ~5 s open time elapsed).
    opened = await pulse.event(breaker_entered(BreakerState.OPEN, "e2"))
    assert opened.reason == "5 consecutive timeouts"
    probes = len([e for e in pulse.events if breaker_entered(BreakerState.HALF_OPEN, "e2")(e)])
    assert host.breaker.trips >= 1
    assert hang.requests <= 5 + (CLIENTS - 1) + probes
    # A timed-out try's connection is closed, never reused: one connection per attempt.
    assert hang.connections == hang.requests
    limits = sidecar.registry.clusters["app"].hosts.limits
    assert (limits.active, limits.pending, host.active_requests) == (0, 0, 0)
    # The good endpoints never failed.
    for endpoint_id in ("e0", "e1"):
        good = host_of(sidecar, "app", endpoint_id)
        assert good.failures == 0 and good.breaker.state is BreakerState.CLOSED


# ---------------------------------------------------------------- drill 4


class CountingGate(Gate):
    """conftest's Gate (parks GET / until `release`), counting arrivals."""

    def __init__(self, pulse: Pulse) -> None:
        super().__init__()
        self.count = 0
        self._pulse = pulse

    async def _handle(self, request: web.Request) -> web.Response:
        self.count += 1
        self._pulse.poke()
        return await super()._handle(request)


async def test_max_requests_overflow_answers_at_once_and_gauges_return_to_zero(
        start_upstream, start_sidecar, client):
    pulse = Pulse()
    gate = CountingGate(pulse)
    server, _ = await start_upstream(gate.app())
    sidecar = await start_sidecar(routed(cluster("app", [url_of(server)],
                                                 limits={"max_requests": 4})))
    url = base_url(sidecar) + "/"
    limits = sidecar.registry.clusters["app"].hosts.limits
    host = host_of(sidecar, "app", "e0")
    try:
        tasks = [asyncio.create_task(fetch(client, url)) for _ in range(10)]
        for task in tasks:
            task.add_done_callback(lambda _: pulse.poke())
        # 4 parked at the upstream, and the 6 others already answered, while none of
        # the 4 can finish: the 503s did not wait for anything.
        await pulse.until(lambda: gate.count == 4 and sum(t.done() for t in tasks) == 6)
        refused = [t.result() for t in tasks if t.done()]
        assert [(o.status, o.code, o.retry_after) for o in refused] == [
            (503, "overflow", "1")] * 6
        assert (limits.active, host.active_requests, sidecar.metrics.active_requests) == (
            4, 4, 4)
        during = await scrape(client, sidecar)
        assert during.value("sidecar_active_requests") == 4
        assert during.value("sidecar_overflows_total", cluster="app",
                            limit="max_requests") == 6
        assert limits.overflows["max_requests"] == 6
    finally:
        gate.release.set()
    async with asyncio.timeout(8):
        outcomes = await asyncio.gather(*tasks)
    assert sorted(o.status for o in outcomes) == [200] * 4 + [503] * 6
    assert gate.count == 4  # the refused requests never reached the upstream
    # Each admitted request gives its slot back before its response is written.
    assert (limits.active, limits.pending, host.active_requests,
            sidecar.metrics.active_requests) == (0, 0, 0, 0)
    after = await scrape(client, sidecar)
    assert after.value("sidecar_active_requests") == 0
    for code_class, count in (("2xx", 4), ("5xx", 6)):
        assert after.value("sidecar_requests_total", route=ROUTE, cluster="app",
                           code_class=code_class) == count
    # The limit is free again: a new request is admitted.
    again = await fetch(client, url)
    assert again.status == 200


# ---------------------------------------------------------------- drill 6


def answering(status: int, arrivals: list[str]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        arrivals.append(request.path)
        return web.Response(status=status, text="down")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_every_endpoint_failing_fails_fast_without_reaching_upstreams(
        start_upstream, start_sidecar, client, record_property):
    arrivals: list[str] = []
    servers = [(await start_upstream(answering(503, arrivals)))[0] for _ in range(3)]
    sidecar = await start_sidecar(routed(cluster("app", [url_of(s) for s in servers])))
    pulse = Pulse().follow(sidecar)
    hosts = [host_of(sidecar, "app", f"e{i}") for i in range(3)]

    def all_open() -> bool:
        return all(h.breaker.state is BreakerState.OPEN for h in hosts)

    url = base_url(sidecar) + "/"
    # Phase 1: load until every breaker is open (5 gateway errors in a row each).
    warmup = await load(client, url, 400, stop=all_open)
    await pulse.until(all_open)
    assert set(warmup.statuses) == {503}
    opened = [e for e in pulse.events if breaker_entered(BreakerState.OPEN)(e)]
    assert {e.endpoint.id for e in opened if e.endpoint is not None} == {"e0", "e1", "e2"}
    assert {e.reason for e in opened} == {"5 consecutive gateway errors"}

    # Phase 2: 200 requests with every breaker open.
    mark, before = len(pulse.events), len(arrivals)
    result = await load(client, url, REQUESTS)
    reached = len(arrivals) - before
    probes = len([e for e in pulse.events[mark:]
                  if breaker_entered(BreakerState.HALF_OPEN)(e)])
    p50, p99 = result.percentile(0.5), result.percentile(0.99)
    record_property("fail_fast_p50_ms", round(p50 * 1000, 3))
    record_property("fail_fast_p99_ms", round(p99 * 1000, 3))
    print(f"\n[drill 6] warmup={len(warmup.outcomes)} warmup arrivals={before} "
          f"phase-2 arrivals={reached} probes={probes} "
          f"p50={p50 * 1000:.2f}ms p99={p99 * 1000:.2f}ms")
    assert {(o.status, o.code) for o in result.outcomes} == {(503, "no_healthy_upstream")}
    assert all(1 <= int(o.retry_after or 0) <= 6 for o in result.outcomes)  # 5 s +-10 %
    # Nothing reached the upstreams but HALF_OPEN probes (one per half-open, default
    # half_open_requests 1; none unless the ~5 s open time elapsed).
    assert reached <= probes
    if probes == 0:  # the usual case: the open time (~5 s) outlasts the whole drill
        metrics = await scrape(client, sidecar)
        for i in range(3):
            assert metrics.value("sidecar_breaker_state", cluster="app", endpoint=f"e{i}",
                                 state="open") == 1
        assert metrics.value("sidecar_endpoints", cluster="app", status="unhealthy") == 3

"""Drill: an operator trips and resets circuit breakers through a real gRPC call against
a running sidecar, and the traffic follows.

Real upstreams on 127.0.0.1, a real sidecar; counts of requests each upstream received.
"""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.core.breaker import BreakerState
from sidecar.events import EventKind
from sidecar.registry import EndpointStatus

from ..integration.conftest import base_url, url_of
from .support import (
    WAIT,
    Pulse,
    Scrape,
    admin_stub,
    breaker_entered,
    cluster,
    fetch,
    host_of,
    load,
    scrape,
)

TRIP_SECONDS = 30  # exact (no jitter): far longer than the drill, so no probe happens


def breaker_gauges(metrics: Scrape, cluster_name: str,
                   endpoint_id: str) -> dict[str, float | None]:
    return {state: metrics.value("sidecar_breaker_state", cluster=cluster_name,
                                 endpoint=endpoint_id, state=state)
            for state in ("closed", "open", "half_open")}


async def test_trip_and_reset_breaker_over_grpc_steer_traffic(start_upstream, start_sidecar,
                                                             client):
    servers = [await start_upstream(name=name) for name in ("a", "b", "c")]
    solo, solo_seen = await start_upstream(name="solo")
    sidecar = await start_sidecar({
        "clusters": [cluster("app", [url_of(s) for s, _ in servers]),
                     cluster("solo", [url_of(solo)])],
        "routes": [{"prefix": "/solo", "cluster": "solo"}, {"prefix": "/", "cluster": "app"}]})
    pulse = Pulse().follow(sidecar)
    app_url, solo_url = base_url(sidecar) + "/x", base_url(sidecar) + "/solo"
    seen_b = servers[1][1]

    warm = await load(client, app_url, 30)
    assert warm.statuses == [200] * 30
    assert {o.served_by for o in warm.outcomes} == {"a", "b", "c"}

    async with admin_stub(sidecar) as stub:
        # --- trip e1 (server b) of a three-endpoint cluster.
        mark = len(pulse.events)
        before = time.time()
        tripped = await stub.TripBreaker(api.TripBreakerRequest(
            cluster="app", id="e1", duration=Duration(seconds=TRIP_SECONDS)), timeout=WAIT)
        endpoint = tripped.endpoint
        assert (endpoint.breaker_state, endpoint.breaker_reason) == (
            res.BREAKER_STATE_OPEN, "tripped by admin")
        assert endpoint.status == res.ENDPOINT_STATUS_UNHEALTHY
        half_open_at = endpoint.breaker_half_open_time.ToNanoseconds() / 1e9
        assert before + TRIP_SECONDS - 1 <= half_open_at <= time.time() + TRIP_SECONDS + 1
        # The call returned after the change was published.
        opened = [e for e in pulse.events[mark:] if breaker_entered(BreakerState.OPEN, "e1")(e)]
        assert [e.reason for e in opened] == ["tripped by admin"]
        assert any(e.kind is EventKind.ENDPOINT_STATUS_CHANGED and e.endpoint is not None
                   and e.endpoint.status is EndpointStatus.UNHEALTHY
                   for e in pulse.events[mark:])

        arrived_b = len(seen_b.requests)
        result = await load(client, app_url, 60)
        assert result.statuses == [200] * 60
        assert {o.served_by for o in result.outcomes} == {"a", "c"}
        assert len(seen_b.requests) == arrived_b  # not one request to the tripped endpoint
        metrics = await scrape(client, sidecar)
        assert breaker_gauges(metrics, "app", "e1") == {"closed": 0, "open": 1, "half_open": 0}
        assert breaker_gauges(metrics, "app", "e0") == {"closed": 1, "open": 0, "half_open": 0}
        assert metrics.value("sidecar_breaker_transitions_total", cluster="app",
                             state="open") == 1
        assert metrics.value("sidecar_endpoints", cluster="app", status="unhealthy") == 1

        # --- trip the only endpoint of a cluster: 503 at once, with Retry-After.
        await stub.TripBreaker(api.TripBreakerRequest(
            cluster="solo", id="e0", duration=Duration(seconds=TRIP_SECONDS)), timeout=WAIT)
        arrived_solo = len(solo_seen.requests)
        refused = await load(client, solo_url, 20)
        assert {(o.status, o.code) for o in refused.outcomes} == {(503, "no_healthy_upstream")}
        # Seconds until the breaker half-opens, rounded up.
        assert {o.retry_after for o in refused.outcomes} <= {str(TRIP_SECONDS),
                                                             str(TRIP_SECONDS - 1)}
        assert len(solo_seen.requests) == arrived_solo

        # --- reset both: they take traffic again.
        mark = len(pulse.events)
        reset = await stub.ResetBreaker(api.ResetBreakerRequest(cluster="app", id="e1"),
                                        timeout=WAIT)
        assert (reset.endpoint.breaker_state, reset.endpoint.breaker_reason,
                reset.endpoint.status) == (res.BREAKER_STATE_CLOSED, "reset by admin",
                                           res.ENDPOINT_STATUS_ACTIVE)
        assert not reset.endpoint.HasField("breaker_half_open_time")
        closed = [e for e in pulse.events[mark:] if breaker_entered(BreakerState.CLOSED, "e1")(e)]
        assert [e.reason for e in closed] == ["reset by admin"]
        await stub.ResetBreaker(api.ResetBreakerRequest(cluster="solo", id="e0"), timeout=WAIT)

    result = await load(client, app_url, 60)
    assert result.statuses == [200] * 60
    assert {o.served_by for o in result.outcomes} == {"a", "b", "c"}
    assert len(seen_b.requests) > arrived_b
    assert (await fetch(client, solo_url)).status == 200
    assert len(solo_seen.requests) == arrived_solo + 1
    metrics = await scrape(client, sidecar)
    assert breaker_gauges(metrics, "app", "e1") == {"closed": 1, "open": 0, "half_open": 0}
    assert breaker_gauges(metrics, "solo", "e0") == {"closed": 1, "open": 0, "half_open": 0}
    assert metrics.value("sidecar_breaker_transitions_total", cluster="app",
                         state="closed") == 1
    assert metrics.value("sidecar_endpoints", cluster="app", status="active") == 3
    assert host_of(sidecar, "app", "e1").breaker.trips == 1

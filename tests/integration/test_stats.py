"""GetStats end to end: real upstreams, a real sidecar, requests through its listener,
and the RPC over a real grpc.aio channel.

Every count here is exact: a request is recorded before its answer is written, so
once the client has its answer the figures include it (no waiting, no sleeps).
Time-dependent behaviour (slots expiring) is tested with a fake clock in
tests/unit/test_window.py and test_stats.py.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar

from .conftest import base_url, refused_url, url_of

OK_REQUESTS = 12
FAILED_REQUESTS = 3


@pytest.fixture
async def sidecar(start_upstream: Any, start_sidecar: Any) -> Sidecar:
    upstream, _ = await start_upstream()
    started: Sidecar = await start_sidecar({
        "clusters": [
            {"name": "users", "endpoints": [{"url": url_of(upstream), "id": "u1"}]},
            # Refuses every connection: each request is tried 3 times (2 retries).
            {"name": "dead", "endpoints": [{"url": refused_url(), "id": "d1"}]},
            {"name": "idle", "endpoints": [{"url": url_of(upstream), "id": "i1"}]},
        ],
        "routes": [
            {"prefix": "/dead", "cluster": "dead", "name": "dead_api"},
            {"prefix": "/idle", "cluster": "idle", "name": "idle_api"},
            # One try only, so that a 503 is one attempt and one failed request.
            {"prefix": "/", "cluster": "users", "name": "users_api",
             "retry": {"enabled": False}},
        ],
    })
    return started


@pytest.fixture
async def stub(sidecar: Sidecar) -> AsyncIterator[api_grpc.AdminServiceStub]:
    address = f"127.0.0.1:{sidecar.ports['admin_grpc']}"
    async with grpc.aio.insecure_channel(address) as channel:
        yield api_grpc.AdminServiceStub(channel)


async def traffic(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    base = base_url(sidecar)
    for i in range(OK_REQUESTS):
        async with client.get(f"{base}/hello/{i}") as response:
            assert response.status == 200
    for _ in range(FAILED_REQUESTS):
        async with client.get(f"{base}/status/503") as response:
            assert response.status == 503
    async with client.get(f"{base}/status/404") as response:  # the app's answer: a success
        assert response.status == 404
    async with client.get(f"{base}/dead/x") as response:
        assert response.status in (502, 503)


def by_name(rows: Any) -> dict[str, res.ResourceStats]:
    return {row.name: row for row in rows}


def seconds(value: Duration) -> float:
    return float(value.seconds + value.nanos / 1e9)


async def get_stats(stub: api_grpc.AdminServiceStub, **fields: Any) -> api.GetStatsResponse:
    response: api.GetStatsResponse = await stub.GetStats(api.GetStatsRequest(**fields),
                                                         timeout=10)
    return response


async def test_counts_rates_latencies_and_retries(sidecar: Sidecar, stub: Any,
                                                  client: aiohttp.ClientSession) -> None:
    await traffic(sidecar, client)
    response = await get_stats(stub)
    assert seconds(response.window) == 60.0
    now = datetime.datetime.now(datetime.UTC).timestamp()
    assert abs(response.time.seconds - now) < 60

    routes = by_name(response.routes)
    assert [(r.cluster, r.name) for r in response.routes] == [
        ("dead", "dead_api"), ("idle", "idle_api"), ("users", "users_api")]
    users = routes["users_api"]
    total = OK_REQUESTS + FAILED_REQUESTS + 1
    assert (users.requests, users.successes, users.retries) == (
        total, OK_REQUESTS + 1, 0)
    assert users.success_rate == pytest.approx((OK_REQUESTS + 1) / total)
    assert users.requests_per_second > 0
    p50, p90, p99 = (seconds(users.latency_p50), seconds(users.latency_p90),
                     seconds(users.latency_p99))
    assert 0 < p50 <= p90 <= p99 < 10
    assert users.breaker_trips == 0

    dead = routes["dead_api"]
    assert (dead.requests, dead.successes, dead.retries) == (1, 0, 2)
    assert dead.success_rate == 0.0

    idle = routes["idle_api"]  # listed with no requests
    assert (idle.requests, idle.successes, idle.retries) == (0, 0, 0)
    assert not idle.HasField("success_rate")
    assert not idle.HasField("latency_p50") and not idle.HasField("latency_p99")

    clusters = by_name(response.clusters)
    assert [c.name for c in response.clusters] == ["dead", "idle", "users"]
    assert clusters["users"].requests == total
    assert clusters["users"].successes == OK_REQUESTS + 1
    assert clusters["dead"].retries == 2
    assert clusters["idle"].requests == 0

    endpoints = by_name(response.endpoints)
    assert [(e.cluster, e.name) for e in response.endpoints] == [
        ("dead", "d1"), ("idle", "i1"), ("users", "u1")]
    # An attempt per request; the app's 404 is no failure for the breaker, its 503 is.
    u1 = endpoints["u1"]
    assert (u1.requests, u1.successes, u1.retries) == (total, OK_REQUESTS + 1, 0)
    assert seconds(u1.latency_p50) <= seconds(u1.latency_p99)
    d1 = endpoints["d1"]  # three refused connections: the try and two retries
    assert (d1.requests, d1.successes, d1.retries) == (3, 0, 2)
    assert endpoints["i1"].requests == 0


async def test_a_tripped_breaker_counts_once(sidecar: Sidecar, stub: Any) -> None:
    await stub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u1"), timeout=10)
    response = await get_stats(stub)
    assert by_name(response.endpoints)["u1"].breaker_trips == 1
    assert by_name(response.endpoints)["i1"].breaker_trips == 0
    assert by_name(response.clusters)["users"].breaker_trips == 1
    assert all(r.breaker_trips == 0 for r in response.routes)
    await stub.ResetBreaker(api.ResetBreakerRequest(cluster="users", id="u1"), timeout=10)
    assert by_name((await get_stats(stub)).endpoints)["u1"].breaker_trips == 1


async def test_kind_and_cluster_filters(sidecar: Sidecar, stub: Any,
                                        client: aiohttp.ClientSession) -> None:
    await traffic(sidecar, client)
    routes = await get_stats(stub, kind=res.STATS_KIND_ROUTE)
    assert len(routes.routes) == 3 and not routes.clusters and not routes.endpoints
    clusters = await get_stats(stub, kind=res.STATS_KIND_CLUSTER)
    assert len(clusters.clusters) == 3 and not clusters.routes and not clusters.endpoints
    endpoints = await get_stats(stub, kind=res.STATS_KIND_ENDPOINT)
    assert len(endpoints.endpoints) == 3 and not endpoints.routes and not endpoints.clusters

    users = await get_stats(stub, cluster="users")
    assert [r.name for r in users.routes] == ["users_api"]
    assert [c.name for c in users.clusters] == ["users"]
    assert [e.name for e in users.endpoints] == ["u1"]
    assert users.routes[0].requests == OK_REQUESTS + FAILED_REQUESTS + 1
    nothing = await get_stats(stub, cluster="nope")
    assert not nothing.routes and not nothing.clusters and not nothing.endpoints


async def test_endpoints_are_those_registered_now(sidecar: Sidecar, stub: Any,
                                                  start_upstream: Any,
                                                  client: aiohttp.ClientSession) -> None:
    upstream, _ = await start_upstream()
    endpoint = res.Endpoint(cluster="idle", url=url_of(upstream), id="i2")
    await stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=endpoint), timeout=10)
    for _ in range(4):  # round robin over i1 and i2
        async with client.get(f"{base_url(sidecar)}/idle/x") as response:
            assert response.status == 200
    idle = by_name((await get_stats(stub, cluster="idle")).endpoints)
    assert (idle["i1"].requests, idle["i2"].requests) == (2, 2)
    await stub.DeregisterEndpoint(api.DeregisterEndpointRequest(cluster="idle", id="i2"),
                                  timeout=10)
    after = await get_stats(stub, cluster="idle")
    assert [e.name for e in after.endpoints] == ["i1"]
    assert after.clusters[0].requests == 4  # the cluster keeps its requests


@pytest.mark.parametrize(("window", "covers"), [
    (Duration(seconds=15), 20.0), (Duration(seconds=10), 10.0), (Duration(nanos=1), 10.0),
    (Duration(seconds=90), 90.0), (Duration(seconds=600), 600.0), (Duration(), 60.0),
])
async def test_the_window_is_rounded_up_to_whole_slots(stub: Any, window: Duration,
                                                       covers: float) -> None:
    response = await get_stats(stub, window=window)
    assert seconds(response.window) == covers


@pytest.mark.parametrize("request_fields", [
    {"window": Duration(seconds=660)},
    {"window": Duration(seconds=600, nanos=1)},
    {"window": Duration(seconds=-1)},
    {"kind": 7},
])
async def test_bad_requests_are_invalid_argument(stub: Any,
                                                 request_fields: dict[str, Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_stats(stub, **request_fields)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details()

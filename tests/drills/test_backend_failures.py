"""Failure drills: what the application sees when a backend fails, with no resilience
config at all (the defaults must protect it).

Real upstreams on 127.0.0.1, a real sidecar, many concurrent clients. Counts, not timings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.core.breaker import BreakerState

from ..integration.conftest import Seen, base_url, echo_app, refused_url, url_of

CLIENTS, REQUESTS = 8, 400


def counting_app(status: int, arrivals: list[str]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        arrivals.append(request.method)
        await request.read()
        return web.Response(status=status, text="down")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def load(client: aiohttp.ClientSession, url: str, method: str = "GET",
               total: int = REQUESTS) -> list[int]:
    statuses: list[int] = []
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            async with client.request(method, url, data=b"x" if method == "POST" else None
                                      ) as resp:
                await resp.read()
                statuses.append(resp.status)

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return statuses


def cluster(*urls: str) -> dict[str, Any]:
    return {"clusters": [{"name": "app", "endpoints": [
                {"url": url, "id": f"e{i}"} for i, url in enumerate(urls)]}],
            "routes": [{"prefix": "/", "cluster": "app"}]}


async def test_refusing_endpoint_never_reaches_the_client(start_upstream, start_sidecar,
                                                          client):
    a, seen_a = await start_upstream(name="a")
    b, seen_b = await start_upstream(name="b")
    sidecar = await start_sidecar(cluster(url_of(a), url_of(b), refused_url()))
    statuses = await load(client, base_url(sidecar) + "/")
    assert statuses == [200] * REQUESTS  # connect failures are retried outside the budget
    host = sidecar.registry.endpoint("app", "e2").host
    assert host.breaker.state is not BreakerState.CLOSED or host.breaker.trips >= 1
    # After 5 consecutive connect failures the breaker opens; probes only after that.
    assert host.requests <= 5 + 2 * max(1, host.breaker.trips)


async def test_endpoint_answering_503_is_retried_and_ejected(start_upstream, start_sidecar,
                                                             client):
    arrivals: list[str] = []
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    bad, _ = await start_upstream(counting_app(503, arrivals))
    sidecar = await start_sidecar(cluster(url_of(a), url_of(b), url_of(bad)))
    statuses = await load(client, base_url(sidecar) + "/")
    # Before the breaker opens, 8 clients can need more retries at once than the
    # budget's concurrency floor of 3; its rate rules let that burst through.
    assert statuses == [200] * REQUESTS
    assert len(arrivals) <= 10  # ejected after 5 gateway errors, then probes only


async def test_post_beside_a_503_endpoint_arrives_exactly_once(start_sidecar, client):
    arrivals: list[str] = []
    good_seen = Seen()
    good_app = echo_app(good_seen, "good")
    from aiohttp.test_utils import TestServer

    good = TestServer(good_app, host="127.0.0.1")
    bad = TestServer(counting_app(503, arrivals), host="127.0.0.1")
    await good.start_server()
    await bad.start_server()
    try:
        sidecar = await start_sidecar(cluster(url_of(good), url_of(bad)))
        statuses = await load(client, base_url(sidecar) + "/", "POST", total=100)
        # A POST that reached the 503 endpoint is not retried (not idempotent): the
        # client gets the 503, and no POST arrives twice anywhere.
        assert len(statuses) == 100
        assert statuses.count(503) == len(arrivals)
        assert set(statuses) <= {200, 503}
    finally:
        await good.close()
        await bad.close()


async def test_every_endpoint_failing_fails_fast_with_retry_after(start_sidecar, client):
    arrivals: list[str] = []
    from aiohttp.test_utils import TestServer

    servers = [TestServer(counting_app(503, arrivals), host="127.0.0.1") for _ in range(3)]
    for server in servers:
        await server.start_server()
    try:
        sidecar = await start_sidecar(cluster(*(url_of(s) for s in servers)))
        url = base_url(sidecar) + "/"
        statuses = await load(client, url)
        assert set(statuses) == {503}
        # Retries never multiply the outage: budget and breakers bound the arrivals.
        assert len(arrivals) <= 1.25 * REQUESTS + 20
        async with client.get(url) as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["error"]["code"] == "no_healthy_upstream"
            assert int(resp.headers["Retry-After"]) >= 1
    finally:
        for server in servers:
            await server.close()

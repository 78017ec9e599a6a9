"""Route fallbacks end to end: cache, another cluster, a static answer, in that order,
each marked with X-Sidecar-Fallback; and never for an answer the application meant."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar.events import Event, EventKind

from .conftest import base_url, refused_url, url_of


class Switch:
    """An upstream answering 200 with a counter until `status` is set otherwise."""

    def __init__(self) -> None:
        self.status = 200
        self.calls = 0

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.calls += 1
            await request.read()
            return web.Response(status=self.status, text=f"answer {self.calls}",
                                headers={"X-From": "app"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


def config(url: str, fallback: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    return {"clusters": [{"name": "app", "endpoints": [{"url": url}], **cluster},
                         {"name": "spare", "endpoints": []}],
            "routes": [{"name": "api", "prefix": "/", "cluster": "app", "fallback": fallback}]}


async def test_static_fallback_when_the_cluster_cannot_connect(start_sidecar, client):
    sidecar = await start_sidecar(config(refused_url(), {
        "static": {"status": 200, "body": "{\"items\": []}",
                   "headers": {"Content-Type": "application/json"}}}))
    events: list[Event] = []
    sidecar.registry.bus.subscribe(events.append)
    for _ in range(3):
        async with client.get(base_url(sidecar) + "/items") as resp:
            assert resp.status == 200
            assert resp.headers["X-Sidecar-Fallback"] == "static"
            assert resp.headers["Content-Type"] == "application/json"
            assert await resp.text() == "{\"items\": []}"
    used = [e for e in events if e.kind is EventKind.FALLBACK_USED]
    assert len(used) == 1  # the activation, not every request
    assert (used[0].route, used[0].fallback, used[0].reason) == ("api", "static",
                                                                  "connect_failure")
    assert sidecar.metrics.fallbacks[("api", "static")] == 3


async def test_cache_answers_the_last_good_get_then_static(start_upstream, start_sidecar,
                                                         client):
    switch = Switch()
    server, _ = await start_upstream(switch.app())
    sidecar = await start_sidecar(config(url_of(server), {
        "cache": {}, "static": {"status": 503, "body": "down"}}))
    url = base_url(sidecar)
    async with client.get(url + "/users?id=1") as resp:
        assert (resp.status, await resp.text()) == (200, "answer 1")
        assert "X-Sidecar-Fallback" not in resp.headers
    switch.status = 503  # the application's own gateway error: the cache answers
    async with client.get(url + "/users?id=1") as resp:
        assert (resp.status, await resp.text()) == (200, "answer 1")
        assert resp.headers["X-Sidecar-Fallback"] == "cache"
        assert resp.headers["X-From"] == "app"
    async with client.get(url + "/users?id=2") as resp:  # never seen: static
        assert (resp.status, await resp.text()) == (503, "down")
        assert resp.headers["X-Sidecar-Fallback"] == "static"
    async with client.post(url + "/users?id=1", data=b"x") as resp:  # cache is GET only
        assert resp.headers["X-Sidecar-Fallback"] == "static"


async def test_cluster_fallback_sends_the_request_to_another_cluster(start_upstream,
                                                                     start_sidecar, client):
    spare = Switch()
    server, _ = await start_upstream(spare.app())
    data = config(refused_url(), {"cluster": "spare"})
    data["clusters"][1]["endpoints"] = [{"url": url_of(server)}]
    sidecar = await start_sidecar(data)
    async with client.post(base_url(sidecar) + "/orders", data=b"{}") as resp:
        # Never reached the first cluster, so even a POST may go to the spare.
        assert resp.status == 200 and await resp.text() == "answer 1"
        assert resp.headers["X-Sidecar-Fallback"] == "cluster"


async def test_an_answer_the_application_meant_stands(start_upstream, start_sidecar,
                                                      client):
    switch = Switch()
    switch.status = 500
    server, _ = await start_upstream(switch.app())
    sidecar = await start_sidecar(config(url_of(server), {"static": {"status": 200}}))
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 500 and "X-Sidecar-Fallback" not in resp.headers


async def test_without_a_fallback_the_gateway_error_stands(start_upstream, start_sidecar,
                                                          client):
    switch = Switch()
    switch.status = 503
    server, _ = await start_upstream(switch.app())
    data = config(url_of(server), {"static": {}})
    del data["routes"][0]["fallback"]
    sidecar = await start_sidecar(data)
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 503 and await resp.text() == f"answer {switch.calls}"


async def test_max_pending_refuses_a_request_that_would_wait_for_a_connection(
        start_upstream, start_sidecar, client):
    switch = Switch()
    server, _ = await start_upstream(switch.app())
    data = config(url_of(server), {"static": {"status": 200, "body": "spare"}},
                  limits={"max_pending": 0})
    sidecar = await start_sidecar(data)
    async with client.get(base_url(sidecar) + "/") as resp:
        # No idle connection and no room to wait for one: refused at once, and the
        # route's fallback answers an overflow like any cluster that cannot serve.
        assert (resp.status, await resp.text()) == (200, "spare")
        assert resp.headers["X-Sidecar-Fallback"] == "static"
    limits = sidecar.registry.clusters["app"].hosts.limits
    assert (limits.active, limits.pending) == (0, 0)
    assert sidecar.metrics.overflows[("app", "max_pending")] == 1
    assert switch.calls == 0


async def test_overflow_without_fallback_is_503_with_retry_after(start_upstream,
                                                                 start_sidecar, client):
    switch = Switch()
    server, _ = await start_upstream(switch.app())
    data = config(url_of(server), {"static": {}}, limits={"max_pending": 0})
    del data["routes"][0]["fallback"]
    sidecar = await start_sidecar(data)
    async with client.get(base_url(sidecar) + "/") as resp:
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "overflow"
        assert resp.headers["Retry-After"] == "1"

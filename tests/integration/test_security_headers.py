"""security_headers on a route: set on every answer of the route (the upstream's own
values replaced), a null field left alone, other routes untouched."""

from __future__ import annotations

from aiohttp import web

from .conftest import base_url, refused_url, url_of


def app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"X-Frame-Options": "ALLOWALL",
                                                "X-Upstream": "kept"})

    application = web.Application()
    application.router.add_get("/{tail:.*}", handle)
    return application


async def test_route_security_headers(start_upstream, start_sidecar, client):
    server, _ = await start_upstream(app())
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]},
                     {"name": "dead", "endpoints": [{"url": refused_url()}]}],
        "routes": [
            {"name": "secure", "prefix": "/secure", "cluster": "app",
             "security_headers": {"referrer_policy": None}},
            {"name": "down", "prefix": "/down", "cluster": "dead",
             "security_headers": {}, "fallback": {"static": {"status": 503}}},
            {"name": "plain", "prefix": "/", "cluster": "app"}]})
    url = base_url(sidecar)
    async with client.get(url + "/secure/x") as resp:
        assert resp.status == 200
        assert resp.headers["Strict-Transport-Security"] == (
            "max-age=31536000; includeSubDomains")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers.getall("X-Frame-Options") == ["DENY"]  # the upstream's replaced
        assert "Referrer-Policy" not in resp.headers  # null: left alone
        assert resp.headers["X-Upstream"] == "kept"
    async with client.get(url + "/down/x") as resp:  # a fallback answer carries them too
        assert resp.headers["X-Sidecar-Fallback"] == "static"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    async with client.get(url + "/x") as resp:
        assert resp.headers.getall("X-Frame-Options") == ["ALLOWALL"]
        assert "Strict-Transport-Security" not in resp.headers


async def test_a_bad_header_value_is_a_located_config_error(start_sidecar) -> None:
    import pytest

    from sidecar.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        await start_sidecar({
            "clusters": [{"name": "app", "endpoints": [{"url": refused_url()}]}],
            "routes": [{"prefix": "/", "cluster": "app",
                        "security_headers": {"hsts": "a\r\nb"}}]})
    assert "routes[0].security_headers.hsts" in str(caught.value)

"""The status page over plain HTTP (no browser): its JSON, the /events stream's framing
and bounds, authentication and sessions, and the headers. A real sidecar on port 0,
real gRPC calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from admin.sse import message_dict
from admin.web_auth import COOKIE_PREFIX, LOGIN_BURST
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.app import Sidecar

from .conftest import Pulse, refused_url, url_of
from .status_support import (
    Tokens,
    admin_url,
    grpc_stub,
    new_tokens,
    page_config,
    read_frame,
    register,
)

Start = Any  # the start_sidecar / start_upstream fixtures


async def _sidecar(start_sidecar: Start, start_upstream: Start, **admin: Any) -> Sidecar:
    upstream, _ = await start_upstream()
    config = page_config(url_of(upstream), refused_url())
    if admin:
        config["admin"] = admin
    sidecar: Sidecar = await start_sidecar(config)
    return sidecar


def _channel(sidecar: Sidecar) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.ports['admin_grpc']}")


# ---------------------------------------------------------------- the JSON


async def test_api_status_shows_state_clusters_routes_and_recent_events(
        start_sidecar: Start, start_upstream: Start, client: aiohttp.ClientSession) -> None:
    sidecar = await _sidecar(start_sidecar, start_upstream)
    async with _channel(sidecar) as channel:
        stub = grpc_stub(channel)
        await stub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u2"), timeout=5)
        listed = await stub.ListEndpoints(api.ListEndpointsRequest(cluster="users"), timeout=5)
        info = await stub.GetServerInfo(api.GetServerInfoRequest(), timeout=5)
    async with client.get(admin_url(sidecar, "/api/status")) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()

    assert body["server"]["state"] == "SERVER_STATE_READY"
    assert body["server"]["config"] == message_dict(info.config)
    assert body["server"]["startTime"] == message_dict(info)["startTime"]  # one Operations
    [cluster] = body["clusters"]
    assert (cluster["name"], cluster["lbPolicy"], cluster["circuitBreaker"]) == (
        "users", "round_robin", True)
    # The endpoints exactly as ListEndpoints gives them (times measured apart aside).
    rpc = [message_dict(e) for e in listed.endpoints]
    for page, expected in zip(cluster["endpoints"], rpc, strict=True):
        for field in ("breakerSince", "breakerHalfOpenTime"):  # monotonic -> wall, apart
            assert (field in page) == (field in expected)
            page.pop(field, None)
            expected.pop(field, None)
        assert page == expected
    u2 = cluster["endpoints"][1]
    assert (u2["id"], u2["breakerState"], u2["breakerReason"]) == (
        "u2", "BREAKER_STATE_OPEN", "tripped by admin")
    assert [(r["name"], r["prefix"], r["cluster"]) for r in body["routes"]] == [
        ("users", "/users", "users"), ("all", "/", "users")]
    # Recent events from the very first: the endpoints added, the config, the trip.
    kinds = [next(k for k in e if k not in ("sequence", "time")) for e in body["events"]]
    assert kinds[:3] == ["endpointAdded", "endpointAdded", "configLoaded"]
    # The trip: the breaker opens, so the endpoint's status turns UNHEALTHY.
    assert kinds[3:] == ["lifecycleChanged", "breakerChanged", "endpointStatusChanged"]
    assert body["events"][4]["breakerChanged"]["reason"] == "tripped by admin"
    assert int(body["events"][-1]["sequence"]) == body["sequence"]
    assert "breaker_changed" in body["eventKinds"]
    assert body["auth"] == {"enabled": False, "name": "", "role": ""}


async def test_api_stats_is_get_stats_as_json(start_sidecar: Start, start_upstream: Start,
                                              client: aiohttp.ClientSession) -> None:
    sidecar = await _sidecar(start_sidecar, start_upstream)
    listener = f"http://127.0.0.1:{sidecar.ports['listener']}"
    for _ in range(3):
        async with client.get(f"{listener}/users/x") as response:
            await response.read()
    async with client.get(admin_url(sidecar, "/api/stats?window=1m")) as response:
        assert response.status == 200
        stats = await response.json()
    assert stats["window"] == "60s"
    routes = {r["name"]: r for r in stats["routes"]}
    assert int(routes["users"]["requests"]) >= 3  # u2 refuses: retried on u1
    assert {e["name"] for e in stats["endpoints"]} == {"u1", "u2"}
    for bad in ("0", "11m", "soon", "-1m"):
        async with client.get(admin_url(sidecar, f"/api/stats?window={bad}")) as response:
            assert response.status == 400, bad
            assert (await response.json())["error"]["code"] == "invalid_argument"


# ---------------------------------------------------------------- /events


async def test_events_stream_a_snapshot_then_each_event_as_json(
        start_sidecar: Start, start_upstream: Start, client: aiohttp.ClientSession) -> None:
    sidecar = await _sidecar(start_sidecar, start_upstream)
    extra, _ = await start_upstream()
    async with client.get(admin_url(sidecar, "/events")) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["Cache-Control"] == "no-store"
        async with asyncio.timeout(10):
            first = await read_frame(stream)
            assert first.event == "snapshot"
            assert first.id == str(sidecar.registry.sequence)
            assert [e["id"] for e in first.data["snapshot"]["endpoints"]] == ["u1", "u2"]
            # Observed state is in the snapshot, as in WatchStatus.
            assert first.data["snapshot"]["endpoints"][0]["breakerState"] == "BREAKER_STATE_CLOSED"

            async with _channel(sidecar) as channel:
                stub = grpc_stub(channel)
                await register(stub, "users", url_of(extra), "u3")
                await stub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u3"),
                                       timeout=5)
            added = await read_frame(stream)
            assert added.event == "endpoint_added"
            assert int(added.id) == int(first.id) + 1
            assert added.data["event"]["sequence"] == added.id
            assert added.data["event"]["endpointAdded"]["endpoint"]["id"] == "u3"
            tripped = await read_frame(stream)
            assert tripped.event == "breaker_changed"
            change = tripped.data["event"]["breakerChanged"]
            assert (change["state"], change["reason"]) == ("BREAKER_STATE_OPEN",
                                                           "tripped by admin")


async def test_events_streams_are_bounded_and_freed_when_the_browser_leaves(
        start_sidecar: Start, start_upstream: Start) -> None:
    sidecar = await _sidecar(start_sidecar, start_upstream, max_watchers=1)
    stream = sidecar.status_page.stream
    async with aiohttp.ClientSession() as first:
        async with first.get(admin_url(sidecar, "/events")) as response:
            assert response.status == 200
            async with asyncio.timeout(10):
                assert (await read_frame(response)).event == "snapshot"
            async with aiohttp.ClientSession() as second:
                async with second.get(admin_url(sidecar, "/events")) as refused:
                    assert refused.status == 503
                    assert refused.headers["Retry-After"] == "10"
                    body = await refused.json()
                    assert body["error"]["code"] == "too_many_streams"
    # The first client closed its connection: the stream ends and frees its slot at
    # once (the admin HTTP server cancels a lost connection's handler).
    async with asyncio.timeout(10):
        await stream.wait_streams(0)
    assert not sidecar.status_page.hub.watchers
    async with aiohttp.ClientSession() as third:
        async with third.get(admin_url(sidecar, "/events")) as response:
            assert response.status == 200


async def test_shutdown_ends_open_streams_at_once(start_sidecar: Start,
                                                  start_upstream: Start) -> None:
    sidecar = await _sidecar(start_sidecar, start_upstream)
    async with aiohttp.ClientSession() as session:
        async with session.get(admin_url(sidecar, "/events")) as response:
            async with asyncio.timeout(10):
                assert (await read_frame(response)).event == "snapshot"
                # aiohttp would wait up to 60 s for a handler still running; the page's
                # streams end when the admin app shuts down.
                await sidecar.stop(drain_timeout=1.0)
                events = []
                with pytest.raises(EOFError):
                    while True:
                        events.append((await read_frame(response)).event)
    assert "lifecycle_changed" in events  # draining, then the stream ended


# ---------------------------------------------------------------- headers


async def test_page_headers_and_assets(start_sidecar: Start, start_upstream: Start,
                                       client: aiohttp.ClientSession) -> None:
    sidecar = await _sidecar(start_sidecar, start_upstream)
    for path in ("/", "/status"):
        async with client.get(admin_url(sidecar, path)) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            html = await response.text()
            assert '<script src="/static/status.js" defer></script>' in html
            assert "<noscript>" in html and "http" not in html.replace("http-equiv", "")
    for path, kind in (("/static/status.js", "text/javascript"),
                       ("/static/status.css", "text/css")):
        async with client.get(admin_url(sidecar, path)) as response:
            assert (response.status, response.content_type) == (200, kind)
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    # The probes and the metrics are not the page's: unchanged.
    for path in ("/metrics", "/live", "/ready"):
        async with client.get(admin_url(sidecar, path)) as response:
            assert response.status == 200
            assert "Content-Security-Policy" not in response.headers
    # Without admin.auth there is nothing to log in to.
    async with client.get(admin_url(sidecar, "/login"), allow_redirects=False) as response:
        assert (response.status, response.headers["Location"]) == (303, "/")


# ---------------------------------------------------------------- authentication


@pytest.fixture
def tokens() -> Tokens:
    return new_tokens()


async def _secured(start_sidecar: Start, start_upstream: Start, tokens: Tokens,
                   directory: Path) -> Sidecar:
    return await _sidecar(start_sidecar, start_upstream, auth=tokens.auth_config(directory))


async def test_with_auth_nothing_but_static_files_is_reachable_without_credentials(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    for path in ("/", "/status"):
        async with client.get(admin_url(sidecar, path), allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/login")
    for path in ("/api/status", "/api/stats", "/events"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"},
                        {"Authorization": f"Basic {tokens.read}"}):
            async with client.get(admin_url(sidecar, path), headers=headers) as response:
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await response.json())["error"]["code"] == "unauthenticated"
    # A forged or stale session id is no session.
    cookie = {f"{COOKIE_PREFIX}{sidecar.ports['admin_http']}": "forged"}
    async with client.get(admin_url(sidecar, "/api/status"), cookies=cookie) as response:
        assert response.status == 401
    async with client.get(admin_url(sidecar, "/static/status.css")) as response:
        assert response.status == 200
    for path in ("/metrics", "/live", "/ready"):  # as before: open
        async with client.get(admin_url(sidecar, path)) as response:
            assert response.status == 200


async def test_bearer_token_with_the_read_role_sees_everything(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    headers = {"Authorization": f"Bearer {tokens.read}"}
    async with client.get(admin_url(sidecar, "/api/status"), headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["auth"] == {"enabled": True, "name": "viewer",
                                                   "role": "read"}
    async with client.get(admin_url(sidecar, "/"), headers=headers) as response:
        assert response.status == 200
    async with client.get(admin_url(sidecar, "/api/stats"), headers=headers) as response:
        assert response.status == 200
    async with client.get(admin_url(sidecar, "/events"), headers=headers) as response:
        assert response.status == 200
        async with asyncio.timeout(10):
            assert (await read_frame(response)).event == "snapshot"


async def test_login_sets_a_session_cookie_and_logout_ends_it(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    name = f"{COOKIE_PREFIX}{sidecar.ports['admin_http']}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(admin_url(sidecar, "/login")) as response:
            assert response.status == 200
            form = await response.text()
            assert 'name="token"' in form and 'type="password"' in form
        async with browser.post(admin_url(sidecar, "/login"), data={"token": "x" * 30},
                                allow_redirects=False) as response:
            assert response.status == 401
            assert "That token was refused." in await response.text()
            assert name not in response.cookies
        async with browser.post(admin_url(sidecar, "/login"), data={"token": tokens.read},
                                allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/")
            cookie = response.cookies[name]
            raw = response.headers["Set-Cookie"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
        assert cookie["path"] == "/" and int(cookie["max-age"]) > 0
        assert tokens.read not in raw  # the cookie holds a session id, not the token
        session_id = cookie.value
        async with browser.get(admin_url(sidecar, "/api/status")) as response:
            assert response.status == 200
            assert (await response.json())["auth"]["name"] == "viewer"
        async with browser.get(admin_url(sidecar, "/events")) as response:
            async with asyncio.timeout(10):
                assert (await read_frame(response)).event == "snapshot"
        async with browser.post(admin_url(sidecar, "/logout"),
                                allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/login")
    # The session is gone on the server, not just in that browser.
    async with aiohttp.ClientSession() as other:
        async with other.get(admin_url(sidecar, "/api/status"),
                             cookies={name: session_id}) as response:
            assert response.status == 401


async def test_a_session_ends_when_its_token_is_rotated(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    async with client.post(admin_url(sidecar, "/login"), data={"token": tokens.read},
                           allow_redirects=False) as response:
        assert response.status == 303
        session = {key: morsel.value for key, morsel in response.cookies.items()}
    async with client.get(admin_url(sidecar, "/api/status"), cookies=session) as response:
        assert response.status == 200
    (tmp_path / "read.token").write_text(new_tokens().read + "-rotated\n")
    async with client.get(admin_url(sidecar, "/api/status"), cookies=session) as response:
        assert response.status == 401
    assert len(sidecar.status_page.auth.sessions) == 0


async def test_login_from_another_site_is_refused(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    own = f"http://127.0.0.1:{sidecar.ports['admin_http']}"
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        async with client.post(admin_url(sidecar, "/login"), data={"token": tokens.read},
                               headers=headers, allow_redirects=False) as response:
            assert response.status == 403, headers
            assert "Set-Cookie" not in response.headers
    async with client.post(admin_url(sidecar, "/login"), data={"token": tokens.read},
                           headers={"Origin": own, "Sec-Fetch-Site": "same-origin"},
                           allow_redirects=False) as response:
        assert response.status == 303


async def test_login_attempts_are_rate_limited_per_client(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    for _ in range(LOGIN_BURST):
        async with client.post(admin_url(sidecar, "/login"), data={"token": "x" * 30},
                               allow_redirects=False) as response:
            assert response.status == 401
    # Past the burst even the right token waits: the limit is on attempts, not failures.
    async with client.post(admin_url(sidecar, "/login"), data={"token": tokens.read},
                           allow_redirects=False) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert "Set-Cookie" not in response.headers
        assert "Too many attempts" in await response.text()
    # A bearer token is not a login attempt: scripts are not held back by the form's limit.
    async with client.get(admin_url(sidecar, "/api/status"),
                          headers={"Authorization": f"Bearer {tokens.read}"}) as response:
        assert response.status == 200


async def test_registering_needs_grpc_admin_while_the_page_only_reads(
        start_sidecar: Start, start_upstream: Start, tokens: Tokens, tmp_path: Path,
        client: aiohttp.ClientSession) -> None:
    sidecar = await _secured(start_sidecar, start_upstream, tokens, tmp_path)
    pulse = Pulse().follow(sidecar)
    async with _channel(sidecar) as channel:
        await register(grpc_stub(channel), "users", "http://127.0.0.1:9", "u9", tokens.admin)
    await pulse.event(lambda e: e.endpoint is not None and e.endpoint.id == "u9")
    pulse.close()
    headers = {"Authorization": f"Bearer {tokens.read}"}
    async with client.get(admin_url(sidecar, "/api/status"), headers=headers) as response:
        ids = [e["id"] for e in (await response.json())["clusters"][0]["endpoints"]]
    assert ids == ["u1", "u2", "u9"]
    # No route of the page changes anything: no PUT/DELETE, and POST only logs in/out.
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        async with client.request(method, admin_url(sidecar, "/api/status"),
                                  headers=headers) as response:
            assert response.status == 405, method


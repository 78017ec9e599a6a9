"""Active health checks end to end: real upstreams whose health endpoint the tests flip,
a real sidecar, and waits on what changed (bus events, requests received), never sleeps."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.app import Sidecar
from sidecar.core.health import HealthStatus
from sidecar.core.hosts import Host
from sidecar.dataplane.checker import USER_AGENT
from sidecar.errors import EndpointNotFound, NoHealthCheck
from sidecar.events import Event, EventKind
from sidecar.registry import EndpointStatus

from .conftest import LOOPBACK_ADDRESSES, Pulse, base_url

# Fast checks: every 50 ms, no jitter, so a threshold is crossed in a fraction of a second.
FAST = {"path": "/healthz", "interval": 0.05, "jitter": 0, "timeout": 1,
        "healthy_threshold": 2, "unhealthy_threshold": 3}
# Slow checks: after the first (at once), none for the length of a test.
SLOW = {**FAST, "interval": 30}
WAIT = 10.0  # the most any wait may take: generous, a wait normally ends in milliseconds


class Upstream:
    """An upstream with a health endpoint (/healthz) the test controls; other paths echo."""

    def __init__(self, name: str, pulse: Pulse) -> None:
        self.name = name
        self.status = 200
        self.hang = False  # park health checks until `release` is set
        self.endless = False  # answer health checks with a body that never ends
        self.release = asyncio.Event()
        self.checks: list[dict[str, Any]] = []  # health checks received
        self.traffic: list[str] = []  # other requests received (paths)
        self._pulse = pulse
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.server.scheme == "https" else "http"
        return f"{scheme}://127.0.0.1:{self.server.port}"

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.checks.append({"headers": dict(request.headers), "path": request.path_qs})
        self._pulse.poke()
        if self.hang:
            await self.release.wait()
        headers = {"Set-Cookie": "session=1; Path=/"}
        if 300 <= self.status < 400:
            headers["Location"] = "/elsewhere"
        if self.endless:
            response = web.StreamResponse(status=self.status, headers=headers)
            await response.prepare(request)
            chunk = b"x" * 65536
            for _ in range(1024):  # 64 MiB at most; the checker hangs up long before
                await response.write(chunk)
            return response
        return web.Response(status=self.status, text="health", headers=headers)

    async def _other(self, request: web.Request) -> web.Response:
        self.traffic.append(request.path_qs)
        self._pulse.poke()
        return web.json_response({"server": self.name})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app


UpstreamFactory = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def pulse() -> AsyncIterator[Pulse]:
    pulse = Pulse()
    yield pulse
    pulse.close()


@pytest.fixture
async def upstreams(pulse: Pulse) -> AsyncIterator[UpstreamFactory]:
    started: list[Upstream] = []

    async def start(name: str, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        upstream = Upstream(name, pulse)
        upstream.server = TestServer(upstream.app(), host="127.0.0.1")
        await upstream.server.start_server(ssl=ssl_context)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.release.set()  # parked handlers finish, so the server closes at once
        assert upstream.server is not None
        await upstream.server.close()


@pytest.fixture
async def run(start_sidecar: Callable[..., Awaitable[Sidecar]],
              pulse: Pulse) -> Callable[..., Awaitable[Sidecar]]:
    async def start(config: dict[str, Any], path: str | None = None) -> Sidecar:
        sidecar = await start_sidecar(config, path)
        pulse.follow(sidecar)
        return sidecar

    return start


def cluster(name: str, *endpoints: Upstream, **settings: Any) -> dict[str, Any]:
    return {"name": name, **settings,
            "endpoints": [{"url": e.url, "id": e.name} for e in endpoints]}


def routed(*clusters: dict[str, Any]) -> dict[str, Any]:
    return {"clusters": list(clusters), "routes": [{"prefix": "/", "cluster": clusters[0]["name"]}]}


def host_of(sidecar: Sidecar, cluster: str, endpoint_id: str) -> Host:
    return sidecar.registry.endpoint(cluster, endpoint_id).host


def health_is(sidecar: Sidecar, cluster: str, endpoint_id: str,
              status: HealthStatus) -> Callable[[], bool]:
    def check() -> bool:
        health = host_of(sidecar, cluster, endpoint_id).health
        return health is not None and health.status is status

    return check


def health_change(endpoint_id: str, status: HealthStatus) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.kind is EventKind.HEALTH_CHANGED and event.endpoint is not None
                and event.endpoint.id == endpoint_id and event.health is not None
                and event.health.status is status)

    return match


def status_change(endpoint_id: str, status: EndpointStatus) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.kind is EventKind.ENDPOINT_STATUS_CHANGED and event.endpoint is not None
                and event.endpoint.id == endpoint_id and event.endpoint.status is status)

    return match


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def checks_reach(pulse: Pulse, upstream: Upstream, count: int) -> None:
    await pulse.until(lambda: len(upstream.checks) >= count)


def checker_tasks(name: str = "health-check") -> Iterator[asyncio.Task[Any]]:
    return (t for t in asyncio.all_tasks() if t.get_name().startswith(name))


# ---------------------------------------------------------------- thresholds


async def test_unhealthy_after_n_failures_healthy_after_m_passes(upstreams, run, pulse):
    up = await upstreams("a")
    sidecar = await run(routed(cluster("app", up, panic_threshold=0, health_check=FAST)))
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))
    assert sidecar.registry.get("app", "a").status is EndpointStatus.ACTIVE
    assert (await get(base_url(sidecar) + "/x"))[1] == {"server": "a"}

    mark = len(pulse.events)
    up.status = 500
    change = await pulse.event(health_change("a", HealthStatus.UNHEALTHY), after=mark)
    assert change.reason == "3 consecutive failed checks: status 500"
    assert change.health is not None and change.health.previous is HealthStatus.HEALTHY
    # The first health change after the flip: nothing moved before the third failure.
    assert [e for e in pulse.events[mark:] if e.kind is EventKind.HEALTH_CHANGED] == [change]
    await pulse.event(status_change("a", EndpointStatus.UNHEALTHY), after=mark)
    assert sidecar.registry.get("app", "a").status is EndpointStatus.UNHEALTHY
    status, body = await get(base_url(sidecar) + "/x")
    assert status == 503  # no panic (threshold 0): an unhealthy endpoint takes no traffic
    assert up.traffic == ["/x"]

    mark = len(pulse.events)
    up.status = 200
    change = await pulse.event(health_change("a", HealthStatus.HEALTHY), after=mark)
    assert change.reason == "2 consecutive passing checks"
    back = await pulse.event(status_change("a", EndpointStatus.ACTIVE), after=mark)
    assert back.previous_status is EndpointStatus.UNHEALTHY
    assert sidecar.registry.get("app", "a").status is EndpointStatus.ACTIVE
    assert (await get(base_url(sidecar) + "/y"))[1] == {"server": "a"}


async def test_timeout_counts_as_failure(upstreams, run, pulse):
    up = await upstreams("a")
    sidecar = await run(routed(cluster("app", up, panic_threshold=0, health_check={
        **FAST, "timeout": 0.2, "unhealthy_threshold": 2})))
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))
    mark = len(pulse.events)
    up.hang = True
    change = await pulse.event(health_change("a", HealthStatus.UNHEALTHY), after=mark)
    assert change.reason == "2 consecutive failed checks: timed out after 0.2s"
    health = host_of(sidecar, "app", "a").health
    assert health is not None
    last = health.last_results()[0]
    assert (last.passed, last.status, last.error) == (False, None, "timed out after 0.2s")
    assert last.latency > 0.15  # the timeout, within the loop timer's resolution
    assert sidecar.checker.checks[("app", "timeout")] >= 2


async def test_expected_statuses_and_redirects_not_followed(upstreams, run, pulse):
    up = await upstreams("a")
    up.status = 418
    sidecar = await run(routed(cluster("app", up, panic_threshold=0, health_check={
        **FAST, "expected_statuses": [418, "200-204"]})))
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))
    mark = len(pulse.events)
    up.status = 302  # passes the default 200-399, not this list
    change = await pulse.event(health_change("a", HealthStatus.UNHEALTHY), after=mark)
    assert change.reason == "3 consecutive failed checks: status 302"
    up.status = 204
    await pulse.event(health_change("a", HealthStatus.HEALTHY), after=mark)
    assert up.traffic == []  # the Location of the 302s was never fetched
    assert {c["path"] for c in up.checks} == {"/healthz"}


# ---------------------------------------------------------------- what a check sends


async def test_check_headers_and_checks_are_not_traffic(upstreams, run, pulse):
    named, plain = await upstreams("named"), await upstreams("plain")
    sidecar = await run(routed(
        cluster("named", named, health_check={**FAST, "host": "health.internal"}),
        cluster("plain", plain, health_check=FAST)))
    # One check at a time per endpoint: the fourth arrives after the third was recorded.
    await pulse.until(lambda: len(named.checks) >= 4 and len(plain.checks) >= 4)
    assert named.checks[0]["headers"]["Host"] == "health.internal"
    assert plain.checks[0]["headers"]["Host"] == f"127.0.0.1:{plain.server.port}"
    for check in named.checks + plain.checks:
        headers = check["headers"]
        assert headers["User-Agent"] == USER_AGENT
        assert headers["Connection"] == "close"
        assert "Cookie" not in headers  # the Set-Cookie of every answer is not kept
        assert "Accept-Encoding" not in headers
        assert check["path"] == "/healthz"
    # Checks are not traffic: no request metrics, no upstream attempts counted.
    for name in ("named", "plain"):
        host = host_of(sidecar, name, name)
        assert (host.requests, host.failures, host.active_requests) == (0, 0, 0)
        assert sidecar.checker.checks[(name, "passed")] >= 3
        assert sidecar.checker.latency_count[name] >= 3
        assert sidecar.checker.latency_sum[name] > 0
    admin = f"http://127.0.0.1:{sidecar.ports['admin_http']}"
    async with aiohttp.ClientSession() as session, session.get(admin + "/metrics") as resp:
        text = await resp.text()
    assert "sidecar_requests_total{" not in text
    assert named.traffic == plain.traffic == []


async def test_endless_body_is_read_only_in_part(upstreams, run, pulse):
    up = await upstreams("a")
    up.endless = True
    sidecar = await run(routed(cluster("app", up, health_check={**SLOW, "timeout": 5})))
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))
    health = host_of(sidecar, "app", "a").health
    assert health is not None
    assert health.last_results()[0].status == 200


# ---------------------------------------------------------------- membership


async def test_new_endpoint_takes_traffic_only_after_its_first_passing_check(
        upstreams, run, pulse):
    a, b = await upstreams("a"), await upstreams("b")
    sidecar = await run(routed(cluster("app", a, panic_threshold=0, health_check=SLOW)))
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))

    b.hang = True  # its first check is parked until released
    sidecar.registry.register("app", b.url, endpoint_id="b")
    await pulse.until(lambda: len(b.checks) == 1)  # at once, not after the 30 s interval
    assert sidecar.registry.get("app", "b").status is EndpointStatus.UNHEALTHY
    for i in range(6):
        assert (await get(base_url(sidecar) + f"/before/{i}"))[1] == {"server": "a"}
    assert b.traffic == []

    mark = len(pulse.events)
    b.release.set()
    change = await pulse.event(health_change("b", HealthStatus.HEALTHY), after=mark)
    assert change.reason == "first passing check"
    assert sidecar.registry.get("app", "b").status is EndpointStatus.ACTIVE
    served = {(await get(base_url(sidecar) + f"/after/{i}"))[1]["server"] for i in range(6)}
    assert served == {"a", "b"}
    assert len(b.traffic) == 3  # round robin over a and b


async def test_removed_endpoint_is_no_longer_checked(upstreams, run, pulse):
    a, b = await upstreams("a"), await upstreams("b")
    sidecar = await run(routed(cluster("app", a, health_check=FAST)))
    sidecar.registry.register("app", b.url, endpoint_id="b")
    await pulse.until(lambda: len(b.checks) >= 2)
    assert sidecar.checker.checked == {("app", "a"), ("app", "b")}
    [task] = checker_tasks("health-check app/b")

    sidecar.registry.deregister("app", "b")
    assert sidecar.checker.checked == {("app", "a")}
    await asyncio.wait({task}, timeout=WAIT)
    assert task.cancelled()
    # A check in flight when it was removed may still land: let a few of a's pass first,
    # then b must get none while a gets three more.
    await checks_reach(pulse, a, len(a.checks) + 3)
    seen = len(b.checks)
    await checks_reach(pulse, a, len(a.checks) + 3)
    assert len(b.checks) == seen

    await sidecar.stop(drain_timeout=0)
    assert sidecar.checker.checked == frozenset()
    assert list(checker_tasks()) == []


async def test_reload_turns_checks_on_changes_interval_and_turns_them_off(
        upstreams, run, pulse, tmp_path: Path):
    up = await upstreams("a")
    path = tmp_path / "sidecar.json"

    def write(health_check: dict[str, Any] | None) -> None:
        settings = {"health_check": health_check} if health_check else {}
        path.write_text(json.dumps({**LOOPBACK_ADDRESSES, **routed(cluster("app", up,
                                                                           **settings))}))

    write(None)
    sidecar = await run({}, str(path))
    assert sidecar.checker.checked == frozenset()

    write(SLOW)
    await sidecar.reload("test")
    assert sidecar.checker.checked == {("app", "a")}
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))  # checked at once
    assert len(up.checks) == 1

    write(FAST)  # 30 s -> 50 ms: applies now, not after the 30 s already being waited
    await sidecar.reload("test")
    await pulse.until(lambda: len(up.checks) >= 4)

    [task] = checker_tasks("health-check app/a")
    write(None)
    await sidecar.reload("test")
    assert sidecar.checker.checked == frozenset()
    await asyncio.wait({task}, timeout=WAIT)
    assert task.cancelled()
    assert host_of(sidecar, "app", "a").health is None
    assert sidecar.registry.get("app", "a").status is EndpointStatus.ACTIVE


# ---------------------------------------------------------------- readiness


async def test_local_app_readiness_follows_its_health(upstreams, run, pulse):
    up = await upstreams("a")
    up.status = 500
    sidecar = await run(routed(cluster("app", up, local_app=True, health_check=FAST)))
    ready = f"http://127.0.0.1:{sidecar.ports['admin_http']}/ready"
    # Never passed a check: not ready, although panic mode lets it take traffic.
    status, body = await get(ready)
    assert (status, body) == (503, {"status": "not_ready", "state": "ready",
                                    "reason": "local app cluster 'app' has no healthy endpoint"})

    up.status = 200
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))
    assert (await get(ready))[0] == 200

    up.status = 500
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.UNHEALTHY))
    assert host_of(sidecar, "app", "a") in sidecar.registry.clusters["app"].hosts.usable  # panic
    assert (await get(ready))[0] == 503


async def test_local_app_without_checks_is_ready_with_an_active_endpoint(upstreams, run):
    up = await upstreams("a")
    other = await upstreams("other")
    sidecar = await run(routed(cluster("app", up, local_app=True), cluster("other", other)))
    ready = f"http://127.0.0.1:{sidecar.ports['admin_http']}/ready"
    assert (await get(ready))[0] == 200
    sidecar.registry.set_status("app", "a", EndpointStatus.DISABLED, "test")
    assert await get(ready) == (503, {
        "status": "not_ready", "state": "ready",
        "reason": "local app cluster 'app' has no healthy endpoint"})
    sidecar.registry.set_status("other", "other", EndpointStatus.DISABLED, "test")
    sidecar.registry.set_status("app", "a", EndpointStatus.ACTIVE, "test")
    assert (await get(ready))[0] == 200  # only the local app counts


# ---------------------------------------------------------------- check_now


async def test_check_now(upstreams, run, pulse):
    up = await upstreams("a")
    plain = await upstreams("plain")
    sidecar = await run(routed(cluster("app", up, panic_threshold=0, health_check=SLOW),
                               cluster("plain", plain)))
    await pulse.until(health_is(sidecar, "app", "a", HealthStatus.HEALTHY))
    checker = sidecar.checker

    result = await checker.check_now("app", "a")
    assert (result.passed, result.status, result.error) == (True, 200, "")
    assert result.latency > 0

    up.status = 503
    result = await checker.check_now("app", "a")
    assert (result.passed, result.status, result.error) == (False, 503, "")
    health = host_of(sidecar, "app", "a").health
    assert health is not None
    assert health.consecutive_failures == 1  # recorded like a scheduled check
    assert health.last_results()[0].status == 503
    assert checker.checks[("app", "failed")] == 1
    assert len(up.checks) == 3  # the scheduled one and the two asked for

    with socket.socket() as closed:  # bound, never listening: connection refused
        closed.bind(("127.0.0.1", 0))
        sidecar.registry.register("app", f"http://127.0.0.1:{closed.getsockname()[1]}",
                                  endpoint_id="gone")
        result = await checker.check_now("app", "gone")
    assert (result.passed, result.status) == (False, None)
    assert result.error.startswith("connect failed")

    with pytest.raises(NoHealthCheck, match="cluster 'plain' has no health_check"):
        await checker.check_now("plain", "plain")
    with pytest.raises(EndpointNotFound):
        await checker.check_now("app", "nope")


# ---------------------------------------------------------------- https


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_endpoints_are_checked_with_the_cluster_tls(upstreams, run, pulse, ca,
                                                                tmp_path: Path):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream.test").configure_cert(context)
    good = await upstreams("good", context)
    bad = await upstreams("bad", context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sidecar = await run(routed(
        cluster("good", good, health_check=SLOW,
                tls={"ca_file": str(ca_file), "server_name": "upstream.test"}),
        # The certificate does not name 127.0.0.1: every check fails.
        cluster("bad", bad, health_check={**FAST, "unhealthy_threshold": 1},
                tls={"ca_file": str(ca_file)})))
    await pulse.until(health_is(sidecar, "good", "good", HealthStatus.HEALTHY))
    assert good.checks[0]["headers"]["Host"] == f"127.0.0.1:{good.server.port}"

    def bad_result() -> Any:
        health = host_of(sidecar, "bad", "bad").health
        return health is not None and health.last_results() and health.last_results()[0]

    result = await pulse.until(bad_result)
    assert (result.passed, result.status) == (False, None)
    assert result.error.startswith("tls: certificate refused: "), result.error
    assert bad.checks == []

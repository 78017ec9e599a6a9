"""The running sidecar: registry changes, reloads, metrics and readiness, end to end."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess

import pytest
from aiohttp import web

from sidecar.errors import ConfigError

from .conftest import Gate, base_url, raw_request, url_of, wait_until


async def test_registered_endpoint_takes_traffic_and_deregistered_gets_none(
        start_upstream, start_sidecar, client):
    first, _ = await start_upstream(name="first")
    second, _ = await start_upstream(name="second")
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(first), "id": "first"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    sidecar.registry.register("app", url_of(second), endpoint_id="second")
    served = set()
    for _ in range(4):
        async with client.get(base_url(sidecar) + "/") as resp:
            served.add((await resp.json())["server"])
    assert served == {"first", "second"}
    sidecar.registry.deregister("app", "second")
    for _ in range(4):
        async with client.get(base_url(sidecar) + "/") as resp:
            assert (await resp.json())["server"] == "first"


async def test_dynamic_cluster_via_orchestrator_addressing(start_upstream, start_sidecar,
                                                           client):
    server, _ = await start_upstream(name="billing")
    sidecar = await start_sidecar({})
    async with client.get(base_url(sidecar) + "/orchestrator/billing/invoices") as resp:
        assert resp.status == 404
    sidecar.registry.register("billing", url_of(server))
    async with client.get(base_url(sidecar) + "/orchestrator/billing/invoices") as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "/invoices"


async def test_in_flight_request_finishes_after_deregistration(start_upstream, start_sidecar,
                                                               client):
    gate = Gate("done")
    server, _ = await start_upstream(gate.app())
    sidecar = await start_sidecar({"clusters": [{"name": "app"}],
                                   "routes": [{"prefix": "/", "cluster": "app"}]})
    sidecar.registry.register("app", url_of(server), endpoint_id="slow")

    async def call() -> tuple[int, str]:
        async with client.get(base_url(sidecar) + "/") as resp:
            return resp.status, await resp.text()

    task = asyncio.ensure_future(call())
    await asyncio.wait_for(gate.arrived.wait(), 5)
    sidecar.registry.deregister("app", "slow")
    gate.release.set()
    assert await asyncio.wait_for(task, 5) == (200, "done")
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "no_healthy_upstream"


async def test_reload_swaps_routes_and_bad_config_keeps_the_old(start_upstream, start_sidecar,
                                                                client, tmp_path):
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    path = tmp_path / "sidecar.json"

    def write(routes_to: str, extra: str = "") -> None:
        path.write_text(json.dumps({
            "listener": {"address": "127.0.0.1:0"},
            "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
            "clusters": [{"name": "a", "endpoints": [{"url": url_of(a)}]},
                         {"name": "b", "endpoints": [{"url": url_of(b)}]}],
            "routes": [{"prefix": "/", "cluster": routes_to}]})[:-1] + extra + "}")

    write("a")
    sidecar = await start_sidecar({}, path=str(path))
    version = sidecar.registry.config_info.version
    async with client.get(base_url(sidecar) + "/") as resp:
        assert (await resp.json())["server"] == "a"

    write("b", ', "bogus": 1')
    with pytest.raises(ConfigError) as info:
        await sidecar.reload("test")
    assert info.value.source == str(path)
    assert any(issue.path == "bogus" for issue in info.value.issues)
    assert sidecar.registry.config_info.version == version
    async with client.get(base_url(sidecar) + "/") as resp:
        assert (await resp.json())["server"] == "a"

    write("b")
    await sidecar.reload("test")
    assert sidecar.registry.config_info.version != version
    async with client.get(base_url(sidecar) + "/") as resp:
        assert (await resp.json())["server"] == "b"
    assert sidecar.metrics.config_loads == {"success": 2, "failure": 1}


async def test_metrics_ready_and_live(start_upstream, start_sidecar, client):
    server, _ = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"name": "all", "prefix": "/", "cluster": "app"}]})
    for path in ("/", "/x", "/status/503"):
        async with client.get(base_url(sidecar) + path) as resp:
            await resp.read()
    admin = f"http://127.0.0.1:{sidecar.ports['admin_http']}"
    async with client.get(admin + "/ready") as resp:
        assert resp.status == 200
    async with client.get(admin + "/live") as resp:
        assert resp.status == 200
    async with client.get(admin + "/metrics", headers={"Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'sidecar_requests_total{cluster="app",code_class="2xx",route="all"} 2.0' in text
    assert 'sidecar_requests_total{cluster="app",code_class="5xx",route="all"} 1.0' in text
    assert 'sidecar_request_duration_seconds_count{cluster="app",route="all"} 3.0' in text
    assert 'sidecar_endpoints{cluster="app",status="active"} 1.0' in text
    assert "sidecar_active_requests 0.0" in text
    assert "/x" not in text  # labels are names, never raw paths
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make test installs it)")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_drain_finishes_in_flight_request_and_stops_accepting(start_upstream,
                                                                    start_sidecar, client):
    gate = Gate("finished")
    server, _ = await start_upstream(gate.app())
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})

    async def call() -> tuple[int, str]:
        async with client.get(base_url(sidecar) + "/") as resp:
            return resp.status, await resp.text()

    task = asyncio.ensure_future(call())
    await asyncio.wait_for(gate.arrived.wait(), 5)
    stopping = asyncio.ensure_future(sidecar.stop(drain_timeout=5))
    await asyncio.sleep(0)  # let stop() close the listening socket
    assert sidecar.readiness()[0] is False
    gate.release.set()
    assert await asyncio.wait_for(task, 5) == (200, "finished")
    await asyncio.wait_for(stopping, 10)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])


async def test_access_log_is_opt_in_and_structured(start_upstream, start_sidecar, client,
                                                   caplog):
    server, _ = await start_upstream()
    quiet = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"name": "all", "prefix": "/", "cluster": "app"}]})
    loud = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"name": "all", "prefix": "/", "cluster": "app"}],
        "logging": {"access_log": True}})
    caplog.set_level("INFO", logger="sidecar.access")
    async with client.get(base_url(quiet) + "/q") as resp:
        await resp.read()
    assert [r for r in caplog.records if r.name == "sidecar.access"] == []
    async with client.get(base_url(loud) + "/p?x=1") as resp:
        request_id = resp.headers["X-Request-Id"]
        await resp.read()
    (record,) = [r for r in caplog.records if r.name == "sidecar.access"]
    assert record.request_id == request_id
    assert (record.method, record.path, record.status) == ("GET", "/p?x=1", 200)
    assert (record.route, record.cluster) == ("all", "app")
    assert record.duration_seconds >= 0


async def test_file_change_reloads_config(start_upstream, start_sidecar, client, tmp_path):
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    path = tmp_path / "sidecar.json"

    def config(cluster: str, connect_timeout: float) -> str:
        return json.dumps({
            "listener": {"address": "127.0.0.1:0"},
            "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
            "clusters": [{"name": "a", "endpoints": [{"url": url_of(a)}],
                          "connect_timeout": connect_timeout},
                         {"name": "b", "endpoints": [{"url": url_of(b)}]}],
            "routes": [{"prefix": "/", "cluster": cluster}]})

    path.write_text(config("a", 1.0))
    sidecar = await start_sidecar({}, path=str(path))
    async with client.get(base_url(sidecar) + "/") as resp:
        assert (await resp.json())["server"] == "a"
    loaded = asyncio.Event()
    sidecar.registry.bus.subscribe(
        lambda event: event.kind.value == "config_loaded" and loaded.set())
    sidecar.start_background(watch=True)
    # The watcher has no "ready" signal: rewrite the file until a reload is seen.
    for _ in range(40):
        path.write_text(config("b", 2.5))
        try:
            await asyncio.wait_for(loaded.wait(), 0.5)
            break
        except TimeoutError:
            continue
    assert loaded.is_set()
    async with client.get(base_url(sidecar) + "/") as resp:
        assert (await resp.json())["server"] == "b"
    pool = sidecar.registry.clusters["a"].routable[0].pool
    assert pool._connect_timeout == 2.5  # new cluster settings reach open pools


async def test_http10_client_without_host_gets_the_endpoint_host(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    reply = await raw_request(sidecar.ports["listener"], b"GET /h HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200")
    hosts = [v for n, v in seen.requests[0]["headers"] if n.lower() == b"host"]
    assert hosts == [f"127.0.0.1:{server.port}".encode()]


async def test_nothing_lost_while_endpoints_and_config_churn(start_upstream, start_sidecar,
                                                             client, tmp_path):
    """Registrations, deregistrations and reloads under load never fail a request that
    a healthy endpoint could serve."""
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    path = tmp_path / "sidecar.json"

    def write(timeout: str) -> None:
        path.write_text(json.dumps({
            "listener": {"address": "127.0.0.1:0"},
            "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
            "clusters": [{"name": "app", "endpoints": [{"url": url_of(a), "id": "a"}],
                          "timeout": timeout}],
            "routes": [{"prefix": "/", "cluster": "app"}]}))

    write("5s")
    sidecar = await start_sidecar({}, path=str(path))
    statuses: list[int] = []

    async def load() -> None:
        for _ in range(40):
            async with client.post(base_url(sidecar) + "/x", data=b"payload") as resp:
                await resp.read()
                statuses.append(resp.status)

    async def churn() -> None:
        for i in range(30):
            sidecar.registry.register("app", url_of(b), endpoint_id="b")
            await asyncio.sleep(0)
            write("6s" if i % 2 else "5s")
            await sidecar.reload("test")
            sidecar.registry.deregister("app", "b")
            await asyncio.sleep(0)

    await asyncio.gather(churn(), *(load() for _ in range(8)))
    assert statuses == [200] * 320


async def test_client_gone_mid_request_frees_the_upstream_connection(start_upstream,
                                                                     start_sidecar):
    gate = Gate()
    server, _ = await start_upstream(gate.app())
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"name": "all", "prefix": "/", "cluster": "app"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(gate.arrived.wait(), 5)
    assert sidecar.metrics.active_requests == 1
    writer.close()  # the client gives up
    endpoint = sidecar.registry.clusters["app"].routable[0]
    async with asyncio.timeout(5):
        while sidecar.metrics.active_requests or endpoint.pool.active_count:
            await asyncio.sleep(0.01)  # the cancellation travels through two event-loop turns
    assert endpoint.active_requests == 0
    stats = sidecar.metrics.stats("all", "app")
    assert stats.codes[4] == 1  # recorded as 499, client closed request
    gate.release.set()


async def _keep_alive_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              path: str) -> bytes:
    """One request on an open keep-alive connection; its whole answer (Content-Length)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        return head + await reader.readexactly(length)


async def test_a_later_keep_alive_request_times_out_and_can_be_cancelled(start_upstream,
                                                                         start_sidecar):
    # Requests after the first on a keep-alive connection are answered by the task
    # that parked after the first one (a future per request, not a task): their
    # deadlines and the client's leaving must reach them as they reach a first one.
    gate = Gate()
    app = gate.app()

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    app.router.add_get("/fast", fast)
    server, _ = await start_upstream(app)
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}],
                      "timeout": "200ms"}],
        "routes": [{"name": "all", "prefix": "/", "cluster": "app"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
    assert b" 200 " in await _keep_alive_request(reader, writer, "/fast")
    assert b" 504 " in await _keep_alive_request(reader, writer, "/")  # parked upstream
    assert b" 200 " in await _keep_alive_request(reader, writer, "/fast")  # still served
    gate.arrived.clear()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(gate.arrived.wait(), 5)
    writer.close()  # the client gives up on its fourth request
    endpoint = sidecar.registry.clusters["app"].routable[0]
    await wait_until(lambda: not (sidecar.metrics.active_requests
                                  or endpoint.pool.active_count))
    assert endpoint.active_requests == 0
    codes = sidecar.metrics.stats("all", "app").codes
    assert (codes[2], codes[4], codes[5]) == (2, 1, 1)  # 200 x2, 499, 504
    gate.release.set()

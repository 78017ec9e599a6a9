"""Drain through the API and the lifecycle on a real sidecar: the Drain RPC with slow
streamed requests in flight, /ready, GetServerInfo and WatchStatus following
STARTING -> READY -> DRAINING -> STOPPED, `sidecarctl drain`, and reload failures as
WatchStatus events and a metric. No sleeps: tests wait on bus events, bounded."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from admin import ctl
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar
from sidecar.events import Event, EventKind

from .conftest import LOOPBACK_ADDRESSES, Pulse, base_url, merge, url_of

SLOW = 20  # slow streamed requests in flight during the drain
CHUNK = b"x" * 1000
CHUNKS_AFTER = 10


class SlowStreams:
    """An upstream: GET /slow streams one chunk, waits for `release`, then the rest;
    GET /fast answers at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = 0
        self.all_started = asyncio.Event()
        self.release = asyncio.Event()

    async def slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(CHUNK)
        self.started += 1
        if self.started >= self.expected:
            self.all_started.set()
        await self.release.wait()
        for _ in range(CHUNKS_AFTER):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    async def fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/fast", self.fast)
        return app


def config_for(upstream: str) -> dict[str, Any]:
    return {"clusters": [{"name": "app", "endpoints": [{"url": upstream, "id": "a1"}]}],
            "routes": [{"prefix": "/", "cluster": "app"}]}


@pytest.fixture
async def pulse() -> AsyncIterator[Pulse]:
    p = Pulse()
    yield p
    p.close()


def lifecycle(pulse: Pulse) -> list[tuple[str, str, str]]:
    return [(e.previous_state, e.state, e.reason) for e in pulse.events
            if e.kind is EventKind.LIFECYCLE_CHANGED]


def drain_finished(event: Event) -> bool:
    return event.kind is EventKind.LIFECYCLE_CHANGED and event.reason.startswith(
        "drain finished")


async def ready(sidecar: Sidecar, client: aiohttp.ClientSession) -> tuple[int, Any]:
    async with client.get(f"http://127.0.0.1:{sidecar.ports['admin_http']}/ready") as resp:
        return resp.status, await resp.json()


async def next_event(stream: Any, kind: str) -> res.StatusEvent:
    """The next StatusEvent on a WatchStatus stream whose change is `kind`, bounded."""
    async with asyncio.timeout(10):
        while True:
            message = await stream.read()
            assert message is not grpc.aio.EOF
            if message.WhichOneof("kind") == "event" and \
                    message.event.WhichOneof("change") == kind:
                return message.event


async def test_drain_rpc_lets_slow_streams_finish_and_keeps_the_admin_plane(
        start_upstream: Any, start_sidecar: Any, client: aiohttp.ClientSession,
        pulse: Pulse) -> None:
    upstream = SlowStreams(SLOW)
    server, _ = await start_upstream(upstream.app())
    sidecar: Sidecar = await start_sidecar(config_for(url_of(server)))
    pulse.follow(sidecar)
    assert sidecar.state == "ready"
    assert await ready(sidecar, client) == (200, {
        "status": "ready", "state": "ready", "reason": "config loaded, listener serving"})

    # An idle keep-alive connection, which the drain closes at once.
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
    writer.write(b"GET /fast HTTP/1.1\r\nHost: app\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"fast"

    async def slow_call() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as own:  # one connection each
            async with own.get(base_url(sidecar) + "/slow") as resp:
                return resp.status, await resp.read()

    calls = [asyncio.ensure_future(slow_call()) for _ in range(SLOW)]
    await asyncio.wait_for(upstream.all_started.wait(), 10)

    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        stub = api_grpc.AdminServiceStub(channel)
        watch = stub.WatchStatus(api.WatchStatusRequest(cluster="app"))
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.WhichOneof("kind") == "snapshot"

        answer = await stub.Drain(api.DrainRequest(deadline=Duration(seconds=30)))
        assert answer.started and answer.state == res.SERVER_STATE_DRAINING
        assert answer.deadline_time.seconds > 0
        assert sidecar.state == "draining"

        # WatchStatus (of one cluster, too) streams the lifecycle change.
        event = await next_event(watch, "lifecycle_changed")
        assert (event.lifecycle_changed.previous_state, event.lifecycle_changed.state,
                event.lifecycle_changed.reason) == (res.SERVER_STATE_READY,
                                                    res.SERVER_STATE_DRAINING, "Drain RPC")
        # /ready says the state and why; GetServerInfo agrees.
        status, body = await ready(sidecar, client)
        assert (status, body["status"], body["state"]) == (503, "not_ready", "draining")
        assert body["reason"] == "draining: Drain RPC"
        info = await stub.GetServerInfo(api.GetServerInfoRequest())
        assert info.state == res.SERVER_STATE_DRAINING
        assert info.state_reason == "draining: Drain RPC"
        # No new connections; the idle keep-alive one is closed.
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        # The requests in flight finish, whole.
        upstream.release.set()
        results = await asyncio.wait_for(asyncio.gather(*calls), 15)
        assert results == [(200, CHUNK * (1 + CHUNKS_AFTER))] * SLOW
        finished = await pulse.event(drain_finished)
        assert finished.state == finished.previous_state == "draining"
        event = await next_event(watch, "lifecycle_changed")
        assert event.lifecycle_changed.reason.startswith("drain finished")

        # The admin plane stays up; a second Drain changes nothing.
        again = await stub.Drain(api.DrainRequest(deadline=Duration(seconds=1)))
        assert not again.started and again.state == res.SERVER_STATE_DRAINING
        assert again.deadline_time == answer.deadline_time
        assert (await stub.GetServerInfo(api.GetServerInfoRequest())).state == \
            res.SERVER_STATE_DRAINING
        watch.cancel()

    # A stop (SIGTERM) after the RPC's drain: STOPPED, no second drain.
    await sidecar.stop()
    assert sidecar.state == "stopped"
    assert [(before, after) for before, after, _ in lifecycle(pulse)] == [
        ("ready", "draining"), ("draining", "draining"), ("draining", "stopped")]


async def test_drain_deadline_cuts_off_what_is_left(
        start_upstream: Any, start_sidecar: Any, pulse: Pulse) -> None:
    upstream = SlowStreams(1)  # never released
    server, _ = await start_upstream(upstream.app())
    sidecar: Sidecar = await start_sidecar(config_for(url_of(server)))
    pulse.follow(sidecar)

    async def stuck() -> Any:
        async with aiohttp.ClientSession() as own:
            async with own.get(base_url(sidecar) + "/slow") as resp:
                return await resp.read()

    call = asyncio.ensure_future(stuck())
    await asyncio.wait_for(upstream.all_started.wait(), 10)
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        stub = api_grpc.AdminServiceStub(channel)
        for bad in (Duration(), Duration(seconds=-1), Duration(seconds=3601)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Drain(api.DrainRequest(deadline=bad))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert sidecar.state == "ready"  # a refused call changes nothing
        answer = await stub.Drain(api.DrainRequest(deadline=Duration(nanos=200_000_000)))
        assert answer.started
        await pulse.event(drain_finished)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(call, 5)
    upstream.release.set()


async def sidecarctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_sidecarctl_drain(start_upstream: Any, start_sidecar: Any, pulse: Pulse) -> None:
    server, _ = await start_upstream(SlowStreams(1).app())
    sidecar: Sidecar = await start_sidecar(config_for(url_of(server)))
    pulse.follow(sidecar)
    target = ["--target", f"127.0.0.1:{sidecar.ports['admin_grpc']}"]
    code, out, err = await sidecarctl(*target, "drain", "--deadline", "2s")
    assert (code, err) == (0, "")
    assert out.startswith("draining (state DRAINING); requests in flight are cut off at ")
    await pulse.event(drain_finished)
    code, out, err = await sidecarctl(*target, "drain")
    assert (code, err) == (0, "") and out.startswith("already draining (state DRAINING)")
    code, out, err = await sidecarctl(*target, "-o", "json", "drain")
    assert code == 0 and json.loads(out)["started"] is False
    code, out, err = await sidecarctl(*target, "info")
    assert code == 0 and "DRAINING" in out and "drain finished" in out
    code, out, err = await sidecarctl(*target, "drain", "--deadline", "0")
    assert code != 0 and "greater than 0" in err


# ---------------------------------------------------------------- reload failures


async def test_reload_failures_are_events_and_a_metric(
        start_sidecar: Any, tmp_path: Path, client: aiohttp.ClientSession,
        pulse: Pulse) -> None:
    path = tmp_path / "sidecar.json"
    good = merge(LOOPBACK_ADDRESSES, config_for("http://127.0.0.1:9"))
    path.write_text(json.dumps(good))
    sidecar: Sidecar = await start_sidecar({}, str(path))
    pulse.follow(sidecar)
    version = sidecar._version()
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        stub = api_grpc.AdminServiceStub(channel)
        watch = stub.WatchStatus(api.WatchStatusRequest(cluster="app"))
        assert (await asyncio.wait_for(watch.read(), 5)).WhichOneof("kind") == "snapshot"

        bad = merge(good, {"routes": [{"prefix": "/", "cluster": "missing"}]})
        path.write_text(json.dumps(bad))
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await stub.ReloadConfig(api.ReloadConfigRequest())
        assert rejected.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        event = (await next_event(watch, "config_rejected")).config_rejected
        assert (event.source, event.stage, event.trigger) == (str(path), "validate",
                                                              "ReloadConfig RPC")
        assert [(i.path, i.message) for i in event.issues] == [
            ("routes[0].cluster", "unknown cluster 'missing'")]

        path.write_text("{ not json")
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ReloadConfig(api.ReloadConfigRequest())
        assert (await next_event(watch, "config_rejected")).config_rejected.stage == "render"

        path.unlink()
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ReloadConfig(api.ReloadConfigRequest())
        event = (await next_event(watch, "config_rejected")).config_rejected
        assert event.stage == "io" and event.issues[0].message
        watch.cancel()

    assert sidecar._version() == version  # the serving config stayed
    rejected_events = pulse.since(0, EventKind.CONFIG_REJECTED)
    assert [e.stage for e in rejected_events] == ["validate", "render", "io"]
    async with client.get(f"http://127.0.0.1:{sidecar.ports['admin_http']}/metrics",
                          headers={"Accept-Encoding": "identity"}) as resp:
        text = await resp.text()
    for reason in ("io", "render", "validate"):
        assert f'sidecar_config_load_failures_total{{reason="{reason}"}} 1.0' in text
    assert 'sidecar_config_loads_total{result="failure"} 3.0' in text

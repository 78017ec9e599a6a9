"""Operations through the API on a real sidecar: ValidateConfig, ReloadConfig,
SetLogLevel, GetServerInfo, over grpc.aio and through sidecarctl, and the
loop refusal with the sidecar's real ports."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from admin import ctl
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar
from sidecar.observe.logs import set_level

from .conftest import LOOPBACK_ADDRESSES, base_url, merge, url_of

CONFIG: dict[str, Any] = {
    "clusters": [{"name": "app", "endpoints": [{"url": "http://127.0.0.1:9", "id": "a1"}]}],
    "routes": [{"prefix": "/", "cluster": "app"}],
}


@pytest.fixture
def restore_log_level() -> Iterator[None]:
    level = logging.getLogger("sidecar").level
    yield
    for name in ("sidecar", "admin"):
        logging.getLogger(name).setLevel(level)


@pytest.fixture
async def running(start_sidecar: Any, tmp_path: Path
                  ) -> AsyncIterator[tuple[Sidecar, Path, api_grpc.AdminServiceStub]]:
    path = tmp_path / "sidecar.json"
    path.write_text(json.dumps(merge(LOOPBACK_ADDRESSES, CONFIG)))
    sidecar: Sidecar = await start_sidecar({}, str(path))
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        yield sidecar, path, api_grpc.AdminServiceStub(channel)


async def test_validate_config_json_and_path(
        running: tuple[Sidecar, Path, api_grpc.AdminServiceStub], tmp_path: Path) -> None:
    sidecar, path, stub = running
    same = await stub.ValidateConfig(api.ValidateConfigRequest(path=str(path)))
    assert same.valid and not same.changed and same.version == sidecar._version()
    bad = {**CONFIG, "routes": [{"prefix": "/", "cluster": "missing"}]}
    answer = await stub.ValidateConfig(api.ValidateConfigRequest(config_json=json.dumps(bad)))
    assert not answer.valid and answer.version == ""
    assert [(i.path, i.message) for i in answer.issues] == [
        ("routes[0].cluster", "unknown cluster 'missing'")]
    other = merge(CONFIG, {"logging": {"level": "debug"}})
    changed = await stub.ValidateConfig(api.ValidateConfigRequest(
        config_json=json.dumps(merge(LOOPBACK_ADDRESSES, other))))
    assert changed.valid and changed.changed
    not_json = await stub.ValidateConfig(api.ValidateConfigRequest(config_json="{"))
    assert not not_json.valid and "not JSON" in not_json.issues[0].message
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.ValidateConfig(api.ValidateConfigRequest())
    assert empty.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # Nothing was applied.
    assert sidecar.config.routes[0].cluster == "app"


async def test_reload_config_applies_and_a_bad_file_keeps_serving(
        running: tuple[Sidecar, Path, api_grpc.AdminServiceStub], start_upstream: Any,
        client: Any) -> None:
    sidecar, path, stub = running
    unchanged = await stub.ReloadConfig(api.ReloadConfigRequest())
    assert not unchanged.changed and unchanged.config.version == sidecar._version()

    server, _ = await start_upstream()
    good = merge(LOOPBACK_ADDRESSES, {
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server), "id": "a1"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    path.write_text(json.dumps(good))
    reloaded = await stub.ReloadConfig(api.ReloadConfigRequest())
    assert reloaded.changed and reloaded.config.version == sidecar._version()
    async with client.get(base_url(sidecar) + "/x") as resp:
        assert resp.status == 200

    path.write_text(json.dumps({**good, "routes": [{"prefix": "/", "cluster": "nope"}]}))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ReloadConfig(api.ReloadConfigRequest())
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "routes[0].cluster: unknown cluster 'nope'" in (refused.value.details() or "")
    assert sidecar._version() == reloaded.config.version
    async with client.get(base_url(sidecar) + "/x") as resp:
        assert resp.status == 200  # the old routes keep serving


async def test_reload_without_a_file_is_a_failed_precondition(start_sidecar: Any) -> None:
    sidecar = await start_sidecar(CONFIG)
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api_grpc.AdminServiceStub(channel).ReloadConfig(api.ReloadConfigRequest())
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "without a configuration file" in (refused.value.details() or "")


async def test_set_log_level_and_revert(
        running: tuple[Sidecar, Path, api_grpc.AdminServiceStub],
        restore_log_level: None) -> None:
    _, _, stub = running
    set_level("info")
    answer = await stub.SetLogLevel(api.SetLogLevelRequest(level=res.LOG_LEVEL_DEBUG))
    assert (answer.level, answer.previous_level) == (res.LOG_LEVEL_DEBUG, res.LOG_LEVEL_INFO)
    assert not answer.HasField("revert_time")
    assert logging.getLogger("sidecar").level == logging.DEBUG
    timed = api.SetLogLevelRequest(level=res.LOG_LEVEL_ERROR)
    timed.duration.FromMilliseconds(50)
    answer = await stub.SetLogLevel(timed)
    assert answer.previous_level == res.LOG_LEVEL_DEBUG and answer.HasField("revert_time")
    assert logging.getLogger("sidecar").level == logging.ERROR
    deadline = asyncio.get_running_loop().time() + 10
    while logging.getLogger("sidecar").level != logging.DEBUG:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    for bad in (api.SetLogLevelRequest(), api.SetLogLevelRequest(level=99)):  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetLogLevel(bad)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_get_server_info(running: tuple[Sidecar, Path, api_grpc.AdminServiceStub]
                               ) -> None:
    sidecar, _, stub = running
    info = await stub.GetServerInfo(api.GetServerInfoRequest())
    assert info.pid == os.getpid()
    assert info.state == res.SERVER_STATE_READY
    assert info.config.version == sidecar._version()
    assert info.version and info.uptime.ToNanoseconds() >= 0
    assert info.state_reason == "config loaded, listener serving"


async def test_registering_the_sidecars_own_ports_is_refused(
        running: tuple[Sidecar, Path, api_grpc.AdminServiceStub]) -> None:
    sidecar, _, stub = running
    for port in (sidecar.ports["listener"], sidecar.ports["admin_http"]):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=res.Endpoint(
                cluster="app", url=f"http://localhost:{port}")))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "would loop" in (refused.value.details() or "")


async def sidecarctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_sidecarctl_operations(running: tuple[Sidecar, Path, api_grpc.AdminServiceStub],
                                     tmp_path: Path, restore_log_level: None) -> None:
    sidecar, path, _ = running
    target = ["--target", f"127.0.0.1:{sidecar.ports['admin_grpc']}"]
    code, out, err = await sidecarctl(*target, "config", "validate", str(path))
    assert (code, err) == (0, "") and "it is what is serving" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"routes": [{"prefix": "/", "cluster": "nope"}]}))
    code, out, err = await sidecarctl(*target, "config", "validate", "--path", str(bad))
    assert code == 1 and out == f"{bad}: routes[0].cluster: unknown cluster 'nope'\n"
    code, out, err = await sidecarctl(*target, "config", "reload")
    assert (code, err) == (0, "") and out.startswith("unchanged: version ")
    code, out, err = await sidecarctl(*target, "log-level", "warning", "--duration", "1h")
    assert (code, err) == (0, "") and out.startswith("log level warning (was ")
    assert " until " in out
    code, out, err = await sidecarctl(*target, "info")
    assert (code, err) == (0, "")
    assert "state:" in out and "READY" in out and "log level: warning" in out
    code, out, err = await sidecarctl(*target, "-o", "json", "info")
    assert json.loads(out)["pid"] == os.getpid()


async def test_twenty_reloads_under_load_fail_no_request(
        running: tuple[Sidecar, Path, api_grpc.AdminServiceStub], start_upstream: Any,
        client: Any) -> None:
    """ReloadConfig while 8 clients send requests: every request succeeds, and the
    breakers, pools and counters of the endpoints carry over (changed in place)."""
    sidecar, path, stub = running
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    base = merge(LOOPBACK_ADDRESSES, {
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(a), "id": "a1"},
                                                   {"url": url_of(b), "id": "b1"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    path.write_text(json.dumps(base))
    await stub.ReloadConfig(api.ReloadConfigRequest())
    host = sidecar.registry.endpoint("app", "a1").host
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            async with client.get(base_url(sidecar) + "/x") as resp:
                await resp.read()
                statuses.append(resp.status)

    workers = [asyncio.ensure_future(load()) for _ in range(8)]
    try:
        for i in range(20):  # each reload changes the version: a timeout and a route
            changed = merge(base, {"cluster_defaults": {"timeout": 10 + i}})
            changed["routes"] = [{"name": f"all{i}", "prefix": "/", "cluster": "app"}]
            path.write_text(json.dumps(changed))
            reloaded = await stub.ReloadConfig(api.ReloadConfigRequest())
            assert reloaded.changed
            await asyncio.wait_for(_until(statuses, len(statuses) + 8), 10)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert len(statuses) > 160 and set(statuses) == {200}
    assert sidecar.registry.endpoint("app", "a1").host is host  # runtime state kept


async def _until(statuses: list[int], count: int) -> None:
    """Until `count` answers have come: progress, not time, ends the wait."""
    while len(statuses) < count:
        await asyncio.sleep(0)  # yield to the clients

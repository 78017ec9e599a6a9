"""AdminServer wiring: grpc.health.v1 fed by config loads, reflection, binding, hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from admin.server import SERVICE_NAMES, AdminServer
from admin.service import SERVICE_NAME
from admin.testing import load_config, serve
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.registry import Registry

CONFIG = {"clusters": [{"name": "users", "endpoints": [{"url": "http://127.0.0.1:8081"}]}],
          "routes": [{"prefix": "/", "cluster": "users"}]}
TIMEOUT = 5.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def check(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    return response.status  # type: ignore[no-any-return]


async def test_health_not_serving_until_config_loaded() -> None:
    registry = Registry()
    async with serve(registry) as (_, target), grpc.aio.insecure_channel(target) as channel:
        assert await check(channel, "") == NOT_SERVING
        assert await check(channel, SERVICE_NAME) == NOT_SERVING
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        first = await asyncio.wait_for(watch.read(), TIMEOUT)
        assert first.status == NOT_SERVING

        load_config(registry, CONFIG)

        second = await asyncio.wait_for(watch.read(), TIMEOUT)
        assert second.status == SERVING
        assert await check(channel, "") == SERVING
        watch.cancel()


async def test_health_serving_when_config_already_loaded() -> None:
    registry = Registry()
    load_config(registry, CONFIG)
    async with serve(registry) as (_, target), grpc.aio.insecure_channel(target) as channel:
        assert await check(channel, "") == SERVING
        assert await check(channel, SERVICE_NAME) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(channel, "no.such.Service")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stop_reports_not_serving() -> None:
    registry = Registry()
    load_config(registry, CONFIG)
    async with serve(registry) as (server, target), \
            grpc.aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).status == SERVING
        stopping = asyncio.create_task(server.stop(1))
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).status == NOT_SERVING
        await asyncio.wait_for(stopping, TIMEOUT)


async def test_reflection_lists_the_services() -> None:
    async with serve(Registry()) as (_, target), grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
        ]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests),
                                                                timeout=TIMEOUT)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == set(SERVICE_NAMES)
    assert {"sidecar.admin.v1.AdminService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto  # resolvable


async def test_start_returns_the_bound_port_and_rejects_a_taken_one() -> None:
    registry = Registry()
    async with serve(registry) as (server, target):
        assert target == f"127.0.0.1:{server.port}"
        second = AdminServer(registry, lambda: "{}")
        with pytest.raises(OSError, match="cannot listen"):
            await second.start(target)
        await second.stop(0)
        with pytest.raises(RuntimeError, match="already started"):
            await server.start("127.0.0.1:0")


async def test_interceptors_hook() -> None:
    seen: list[str] = []

    class Recorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(
                self, continuation: Callable[[Any], Awaitable[Any]],
                handler_call_details: Any) -> Any:
            seen.append(handler_call_details.method)
            return await continuation(handler_call_details)

    registry = Registry()
    load_config(registry, CONFIG)
    async with serve(registry, interceptors=[Recorder()]) as (_, target), \
            grpc.aio.insecure_channel(target) as channel:
        await api_grpc.AdminServiceStub(channel).GetConfig(api.GetConfigRequest(),
                                                           timeout=TIMEOUT)
    assert seen == ["/sidecar.admin.v1.AdminService/GetConfig"]

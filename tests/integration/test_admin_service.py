"""AdminService unary RPCs on a real grpc.aio server (127.0.0.1:0) over a real Registry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from admin.server import AdminServer
from admin.testing import SAMPLE_CONFIG, load_config, serve
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.registry import EndpointStatus, Registry

CONFIG = SAMPLE_CONFIG
CONFIG_JSON = json.dumps({"rendered": True})


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    load_config(registry, CONFIG)
    return registry


@pytest.fixture
async def server(registry: Registry) -> AsyncIterator[tuple[AdminServer, str]]:
    async with serve(registry, lambda: CONFIG_JSON) as running:
        yield running


@pytest.fixture
async def stub(server: tuple[AdminServer, str]) -> AsyncIterator[api_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(server[1]) as channel:
        yield api_grpc.AdminServiceStub(channel)


def state(registry: Registry) -> tuple[Any, ...]:
    return tuple(registry.list()), registry.sequence


async def register(stub: api_grpc.AdminServiceStub, **fields: Any) -> res.Endpoint:
    response = await stub.RegisterEndpoint(
        api.RegisterEndpointRequest(endpoint=res.Endpoint(**fields)), timeout=5)
    return response.endpoint


# ---------------------------------------------------------------- happy paths


async def test_register_get_list_deregister(stub: api_grpc.AdminServiceStub,
                                            registry: Registry) -> None:
    added = await register(stub, cluster="users", url="http://127.0.0.1:9000",
                           labels={"zone": "b"}, source=res.ENDPOINT_SOURCE_CONFIG,
                           active_requests=7)
    assert (added.cluster, added.id, added.url, added.weight) == (
        "users", "127.0.0.1:9000", "http://127.0.0.1:9000", 1)
    assert added.status == res.ENDPOINT_STATUS_ACTIVE
    assert added.source == res.ENDPOINT_SOURCE_ADMIN  # output-only input ignored
    assert added.active_requests == 0
    assert dict(added.labels) == {"zone": "b"}
    assert added.create_time.seconds > 0
    assert registry.get("users", "127.0.0.1:9000").url == "http://127.0.0.1:9000"

    got = (await stub.GetEndpoint(api.GetEndpointRequest(cluster="users", id="127.0.0.1:9000"),
                                  timeout=5)).endpoint
    assert got == added

    listed = await stub.ListEndpoints(api.ListEndpointsRequest(cluster="users"), timeout=5)
    assert [e.id for e in listed.endpoints] == ["127.0.0.1:9000", "u1", "u2"]
    assert listed.total_size == 3 and listed.next_page_token == ""

    removed = (await stub.DeregisterEndpoint(
        api.DeregisterEndpointRequest(cluster="users", id="127.0.0.1:9000"), timeout=5)).endpoint
    assert removed.id == "127.0.0.1:9000"
    assert [e.id for e in registry.list("users")] == ["u1", "u2"]


async def test_register_with_every_field(stub: api_grpc.AdminServiceStub,
                                         registry: Registry) -> None:
    added = await register(stub, cluster="new-cluster", url="https://Example.COM", id="ex",
                           weight=1000, status=res.ENDPOINT_STATUS_DISABLED)
    assert (added.id, added.url, added.weight) == ("ex", "https://example.com", 1000)
    assert added.status == res.ENDPOINT_STATUS_DISABLED
    assert registry.get("new-cluster", "ex").status is EndpointStatus.DISABLED


async def test_list_everything_and_by_status(stub: api_grpc.AdminServiceStub,
                                             registry: Registry) -> None:
    everything = await stub.ListEndpoints(api.ListEndpointsRequest(), timeout=5)
    assert [(e.cluster, e.id) for e in everything.endpoints] == [
        ("orders", "o1"), ("users", "u1"), ("users", "u2")]
    registry.observe("users", "u2", ok=False, reason="health check failed")
    unhealthy = await stub.ListEndpoints(
        api.ListEndpointsRequest(status=res.ENDPOINT_STATUS_UNHEALTHY), timeout=5)
    assert [e.id for e in unhealthy.endpoints] == ["u2"] and unhealthy.total_size == 1


async def test_get_config(stub: api_grpc.AdminServiceStub, registry: Registry) -> None:
    response = await stub.GetConfig(api.GetConfigRequest(), timeout=5)
    assert registry.config_info is not None
    assert response.config.version == registry.config_info.version
    assert response.config.source == "<test>"
    assert (response.config.cluster_count, response.config.route_count) == (2, 2)
    assert response.config.load_time.seconds == 1_700_000_000
    assert response.config_json == CONFIG_JSON


async def test_get_config_before_any_config_is_failed_precondition() -> None:
    async with serve(Registry()) as (_, target), grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api_grpc.AdminServiceStub(channel).GetConfig(api.GetConfigRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no configuration" in (caught.value.details() or "")


# ---------------------------------------------------------------- errors


async def expect_error(registry: Registry, code: grpc.StatusCode, match: str,
                       call: Any) -> None:
    before = state(registry)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert match in (caught.value.details() or "")
    assert state(registry) == before, "a failed call changed the registry"


@pytest.mark.parametrize(("fields", "code", "match"), [
    ({"cluster": "users", "url": "ftp://127.0.0.1:9000"}, "INVALID_ARGUMENT", "scheme"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000/path"}, "INVALID_ARGUMENT", "path"),
    ({"cluster": "users", "url": ""}, "INVALID_ARGUMENT", "URL is required"),
    ({"cluster": "", "url": "http://127.0.0.1:9000"}, "INVALID_ARGUMENT", "cluster is required"),
    ({"cluster": "bad name!", "url": "http://127.0.0.1:9000"}, "INVALID_ARGUMENT",
     "invalid cluster name"),
    ({"cluster": "users", "url": "http://127.0.0.1:70000"}, "INVALID_ARGUMENT", "port"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000", "weight": 0}, "INVALID_ARGUMENT",
     "weight 0"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000", "weight": 1001}, "INVALID_ARGUMENT",
     "weight 1001"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000", "status": 2}, "INVALID_ARGUMENT",
     "ACTIVE or DISABLED"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000", "id": "bad id"}, "INVALID_ARGUMENT",
     "invalid endpoint id"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000", "labels": {"k" * 64: "v"}},
     "INVALID_ARGUMENT", "label"),
    ({"cluster": "users", "url": "http://127.0.0.1:9000", "id": "u1"}, "ALREADY_EXISTS",
     "'u1' already exists"),
    ({"cluster": "users", "url": "http://127.0.0.1:8081", "id": "other"}, "ALREADY_EXISTS",
     "already in cluster 'users' as endpoint 'u1'"),
])
async def test_register_errors(stub: api_grpc.AdminServiceStub, registry: Registry,
                               fields: dict[str, Any], code: str, match: str) -> None:
    await expect_error(registry, grpc.StatusCode[code], match, stub.RegisterEndpoint(
        api.RegisterEndpointRequest(endpoint=res.Endpoint(**fields)), timeout=5))


async def test_register_unknown_status_number(stub: api_grpc.AdminServiceStub,
                                              registry: Registry) -> None:
    endpoint = res.Endpoint(cluster="users", url="http://127.0.0.1:9000")
    endpoint.status = 42  # type: ignore[assignment]
    await expect_error(registry, grpc.StatusCode.INVALID_ARGUMENT, "unknown endpoint status",
                       stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=endpoint),
                                             timeout=5))


async def test_register_same_id_twice(stub: api_grpc.AdminServiceStub,
                                      registry: Registry) -> None:
    await register(stub, cluster="users", url="http://127.0.0.1:9000", id="x")
    await expect_error(registry, grpc.StatusCode.ALREADY_EXISTS, "already exists",
                       stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=res.Endpoint(
                           cluster="users", url="http://127.0.0.1:9001", id="x")), timeout=5))
    # Same URL under another id, spelled differently (normalised before comparing).
    await expect_error(registry, grpc.StatusCode.ALREADY_EXISTS, "already in cluster",
                       stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=res.Endpoint(
                           cluster="users", url="HTTP://127.0.0.1:9000/", id="y")), timeout=5))


@pytest.mark.parametrize(("cluster", "endpoint_id", "code", "match"), [
    ("users", "nope", "NOT_FOUND", "no endpoint 'nope'"),
    ("nope", "u1", "NOT_FOUND", "cluster 'nope'"),
    ("", "u1", "INVALID_ARGUMENT", "cluster is required"),
    ("users", "", "INVALID_ARGUMENT", "id is required"),
])
async def test_get_and_deregister_errors(stub: api_grpc.AdminServiceStub, registry: Registry,
                                         cluster: str, endpoint_id: str, code: str,
                                         match: str) -> None:
    await expect_error(registry, grpc.StatusCode[code], match, stub.GetEndpoint(
        api.GetEndpointRequest(cluster=cluster, id=endpoint_id), timeout=5))
    await expect_error(registry, grpc.StatusCode[code], match, stub.DeregisterEndpoint(
        api.DeregisterEndpointRequest(cluster=cluster, id=endpoint_id), timeout=5))


async def test_deregister_config_endpoint_is_failed_precondition(
        stub: api_grpc.AdminServiceStub, registry: Registry) -> None:
    await expect_error(registry, grpc.StatusCode.FAILED_PRECONDITION, "configuration file",
                       stub.DeregisterEndpoint(
                           api.DeregisterEndpointRequest(cluster="users", id="u1"), timeout=5))


@pytest.mark.parametrize(("request_fields", "match"), [
    ({"page_size": -1}, "page_size"),
    ({"page_size": 1001}, "page_size"),
    ({"page_token": "garbage"}, "not a token"),
    ({"status": 9}, "unknown endpoint status"),
])
async def test_list_errors(stub: api_grpc.AdminServiceStub, registry: Registry,
                           request_fields: dict[str, Any], match: str) -> None:
    await expect_error(registry, grpc.StatusCode.INVALID_ARGUMENT, match,
                       stub.ListEndpoints(api.ListEndpointsRequest(**request_fields), timeout=5))


# ---------------------------------------------------------------- paging


@pytest.mark.parametrize("page_size", [1, 2, 3])
async def test_pagination(stub: api_grpc.AdminServiceStub, registry: Registry,
                          page_size: int) -> None:
    for port in range(9001, 9005):
        registry.register("users", f"http://127.0.0.1:{port}")
    expected = [(e.cluster, e.id) for e in registry.list()]
    assert len(expected) == 7
    seen: list[tuple[str, str]] = []
    token = ""
    for _ in range(10):
        page = await stub.ListEndpoints(
            api.ListEndpointsRequest(page_size=page_size, page_token=token), timeout=5)
        assert page.total_size == 7 and len(page.endpoints) <= page_size
        seen += [(e.cluster, e.id) for e in page.endpoints]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected


async def test_page_token_with_other_filters(stub: api_grpc.AdminServiceStub,
                                             registry: Registry) -> None:
    first = await stub.ListEndpoints(api.ListEndpointsRequest(cluster="users", page_size=1),
                                     timeout=5)
    assert first.next_page_token
    await expect_error(registry, grpc.StatusCode.INVALID_ARGUMENT, "different filters",
                       stub.ListEndpoints(api.ListEndpointsRequest(
                           cluster="orders", page_size=1, page_token=first.next_page_token),
                           timeout=5))
    await expect_error(registry, grpc.StatusCode.INVALID_ARGUMENT, "different filters",
                       stub.ListEndpoints(api.ListEndpointsRequest(
                           cluster="users", status=res.ENDPOINT_STATUS_ACTIVE,
                           page_token=first.next_page_token), timeout=5))
    # The same filters with another page size are fine.
    rest = await stub.ListEndpoints(api.ListEndpointsRequest(
        cluster="users", page_size=5, page_token=first.next_page_token), timeout=5)
    assert [e.id for e in rest.endpoints] == ["u2"]


async def test_default_page_size_is_100(stub: api_grpc.AdminServiceStub,
                                        registry: Registry) -> None:
    for i in range(110):
        registry.register("bulk", f"http://10.0.{i // 200}.{i % 200 + 1}:80")
    page = await stub.ListEndpoints(api.ListEndpointsRequest(cluster="bulk"), timeout=5)
    assert len(page.endpoints) == 100 and page.total_size == 110 and page.next_page_token

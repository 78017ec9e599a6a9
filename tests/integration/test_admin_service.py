"""AdminService unary RPCs on a real grpc.aio server (127.0.0.1:0) over a real Registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from admin.server import AdminServer
from admin.testing import SAMPLE_CONFIG, load_config, serve
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.config.model import parse_config
from sidecar.core.health import CheckResult
from sidecar.core.routing import RouteMatch, RouteTable
from sidecar.events import Event, EventKind
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


# ---------------------------------------------------------------- resilience RPCs

RESILIENT = {
    "clusters": [
        {"name": "users", "endpoints": [
            {"url": "http://127.0.0.1:8081", "id": "u1"},
            {"url": "http://127.0.0.1:8082", "id": "u2", "labels": {"zone": "a"}}]},
        {"name": "checked", "health_check": {"path": "/healthz"},
         "endpoints": [{"url": "http://127.0.0.1:8091", "id": "c1"}]},
        {"name": "fragile", "circuit_breaker": {"enabled": False},
         "endpoints": [{"url": "http://127.0.0.1:8095", "id": "f1"}]},
    ],
    "routes": [{"prefix": "/users", "cluster": "users"},
               {"prefix": "/checked", "cluster": "checked"},
               {"name": "reports", "prefix": "/reports", "cluster": "users",
                "methods": ["POST"]}],
}


@pytest.fixture
def resilient() -> Registry:
    registry = Registry()
    load_config(registry, RESILIENT)
    return registry


@pytest.fixture
async def rstub(resilient: Registry) -> AsyncIterator[api_grpc.AdminServiceStub]:
    """AdminService with a health checker and a route table, as the sidecar wires them."""
    config = parse_config(RESILIENT)
    routes = RouteTable(config.routes, config.listener.orchestrator_prefix,
                        resilient.clusters.__contains__)

    async def check_health(cluster: str, endpoint_id: str) -> CheckResult:
        # What the checker does: one check, recorded like a scheduled one.
        host = resilient.endpoint(cluster, endpoint_id).host
        resilient.clusters[cluster].hosts.on_check(host, True, status=200, latency=0.003)
        assert host.health is not None
        return host.health.last_results()[0]

    def resolve(method: str, host: str, path: str) -> RouteMatch:
        return routes.match(host, method, path)

    async with serve(resilient, check_health=check_health, resolve=resolve) as (_, target), \
            grpc.aio.insecure_channel(target) as channel:
        yield api_grpc.AdminServiceStub(channel)


async def watch_events(call: Any, count: int) -> list[res.StatusEvent]:
    events = []
    for _ in range(count):
        message = await asyncio.wait_for(call.read(), 5)
        assert message is not grpc.aio.EOF and message.WhichOneof("kind") == "event"
        events.append(message.event)
    return events


def seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9


async def test_trip_and_reset_breaker(rstub: api_grpc.AdminServiceStub,
                                      resilient: Registry) -> None:
    call = rstub.WatchStatus(api.WatchStatusRequest(cluster="users"))
    first = await asyncio.wait_for(call.read(), 5)
    assert [(e.id, e.breaker_state) for e in first.snapshot.endpoints] == [
        ("u1", res.BREAKER_STATE_CLOSED), ("u2", res.BREAKER_STATE_CLOSED)]

    tripped = (await rstub.TripBreaker(api.TripBreakerRequest(
        cluster="users", id="u1", duration=Duration(seconds=30)), timeout=5)).endpoint
    assert (tripped.breaker_state, tripped.breaker_reason, tripped.status) == (
        res.BREAKER_STATE_OPEN, "tripped by admin", res.ENDPOINT_STATUS_UNHEALTHY)
    assert seconds(tripped.breaker_half_open_time) - seconds(tripped.breaker_since) == \
        pytest.approx(30, abs=0.01)
    assert resilient.get("users", "u1").status is EndpointStatus.UNHEALTHY
    got = (await rstub.GetEndpoint(api.GetEndpointRequest(cluster="users", id="u1"),
                                   timeout=5)).endpoint
    assert got == tripped  # observed times are stable from call to call

    breaker, status = await watch_events(call, 2)
    assert breaker.WhichOneof("change") == "breaker_changed"
    assert (breaker.breaker_changed.endpoint.id, breaker.breaker_changed.previous_state,
            breaker.breaker_changed.state, breaker.breaker_changed.reason) == (
        "u1", res.BREAKER_STATE_CLOSED, res.BREAKER_STATE_OPEN, "tripped by admin")
    assert (status.endpoint_status_changed.previous_status,
            status.endpoint_status_changed.endpoint.status,
            status.endpoint_status_changed.reason) == (
        res.ENDPOINT_STATUS_ACTIVE, res.ENDPOINT_STATUS_UNHEALTHY,
        "breaker open: tripped by admin")

    reset = (await rstub.ResetBreaker(api.ResetBreakerRequest(cluster="users", id="u1"),
                                      timeout=5)).endpoint
    assert (reset.breaker_state, reset.breaker_reason, reset.status) == (
        res.BREAKER_STATE_CLOSED, "reset by admin", res.ENDPOINT_STATUS_ACTIVE)
    assert not reset.HasField("breaker_half_open_time")
    breaker, status = await watch_events(call, 2)
    assert (breaker.breaker_changed.previous_state, breaker.breaker_changed.state,
            breaker.breaker_changed.reason) == (res.BREAKER_STATE_OPEN,
                                                res.BREAKER_STATE_CLOSED, "reset by admin")
    assert status.endpoint_status_changed.endpoint.status == res.ENDPOINT_STATUS_ACTIVE
    assert status.sequence == breaker.sequence + 1
    call.cancel()


async def test_trip_without_duration_uses_the_open_time(rstub: api_grpc.AdminServiceStub,
                                                        resilient: Registry) -> None:
    tripped = (await rstub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u2"),
                                       timeout=5)).endpoint
    open_time = resilient.clusters["users"].settings.circuit_breaker.open_duration
    assert seconds(tripped.breaker_half_open_time) - seconds(tripped.breaker_since) == \
        pytest.approx(open_time, rel=0.11)  # jittered by up to 10 %


@pytest.mark.parametrize(("fields", "code", "match"), [
    ({"cluster": "fragile", "id": "f1"}, "FAILED_PRECONDITION",
     "the circuit breaker of cluster 'fragile' is disabled"),
    ({"cluster": "users", "id": "nope"}, "NOT_FOUND", "no endpoint 'nope'"),
    ({"cluster": "users", "id": ""}, "INVALID_ARGUMENT", "id is required"),
    ({"cluster": "users", "id": "u1", "duration": Duration()}, "INVALID_ARGUMENT",
     "duration must be positive"),
    ({"cluster": "users", "id": "u1", "duration": Duration(seconds=90_000)},
     "INVALID_ARGUMENT", "at most 86400s"),
])
async def test_trip_breaker_errors(rstub: api_grpc.AdminServiceStub, resilient: Registry,
                                   fields: dict[str, Any], code: str, match: str) -> None:
    await expect_error(resilient, grpc.StatusCode[code], match,
                       rstub.TripBreaker(api.TripBreakerRequest(**fields), timeout=5))


async def test_reset_breaker_errors(rstub: api_grpc.AdminServiceStub,
                                    resilient: Registry) -> None:
    await expect_error(resilient, grpc.StatusCode.NOT_FOUND, "cluster 'nope'",
                       rstub.ResetBreaker(api.ResetBreakerRequest(cluster="nope", id="u1"),
                                          timeout=5))
    await expect_error(resilient, grpc.StatusCode.INVALID_ARGUMENT, "cluster is required",
                       rstub.ResetBreaker(api.ResetBreakerRequest(id="u1"), timeout=5))


async def test_observed_counts_in_get_and_list(rstub: api_grpc.AdminServiceStub,
                                               resilient: Registry) -> None:
    hosts = resilient.clusters["users"].hosts
    target = resilient.endpoint("users", "u2").host
    hosts.on_success(target)
    hosts.on_failure(target, "timeout")
    hosts.on_failure(target, "timeout")
    listed = await rstub.ListEndpoints(api.ListEndpointsRequest(cluster="users"), timeout=5)
    u2 = listed.endpoints[1]
    assert (u2.id, u2.request_count, u2.failure_count) == ("u2", 3, 2)
    assert u2.breaker_state == res.BREAKER_STATE_CLOSED
    assert u2.health == res.HEALTH_STATUS_UNSPECIFIED and len(u2.health_check_results) == 0


# ---------------------------------------------------------------- UpdateEndpoint


def update_request(cluster: str = "users", endpoint_id: str = "u2",
                   mask: list[str] | None = None, **fields: Any) -> api.UpdateEndpointRequest:
    request = api.UpdateEndpointRequest(cluster=cluster, id=endpoint_id, **fields)
    if mask is not None:
        request.update_mask.CopyFrom(FieldMask(paths=mask))
    return request


async def test_update_endpoint_with_field_mask(rstub: api_grpc.AdminServiceStub,
                                               resilient: Registry) -> None:
    events: list[Event] = []
    resilient.bus.subscribe(events.append)
    before = resilient.get("users", "u2")

    # Only the masked field changes, though others are set.
    updated = (await rstub.UpdateEndpoint(update_request(
        mask=["weight"], weight=7, labels={"zone": "b"}, status=res.ENDPOINT_STATUS_DISABLED),
        timeout=5)).endpoint
    assert (updated.weight, dict(updated.labels), updated.status) == (
        7, {"zone": "a"}, res.ENDPOINT_STATUS_ACTIVE)
    assert resilient.endpoint("users", "u2").host.weight == 7
    assert seconds(updated.update_time) >= before.update_time
    assert updated.breaker_state == res.BREAKER_STATE_CLOSED  # observed fields are set
    assert events == []  # neither the status nor membership changed

    # A masked field that is not set takes its default: no labels.
    updated = (await rstub.UpdateEndpoint(update_request(mask=["labels"]),
                                          timeout=5)).endpoint
    assert dict(updated.labels) == {} and updated.weight == 7

    updated = (await rstub.UpdateEndpoint(update_request(
        mask=["status", "labels"], status=res.ENDPOINT_STATUS_DRAINING,
        labels={"tier": "gold"}, reason="rolling restart"), timeout=5)).endpoint
    assert (updated.status, dict(updated.labels)) == (res.ENDPOINT_STATUS_DRAINING,
                                                      {"tier": "gold"})
    assert [(e.kind, e.previous_status, e.reason) for e in events] == [
        (EventKind.ENDPOINT_STATUS_CHANGED, EndpointStatus.ACTIVE, "rolling restart")]

    # No mask: the fields that are set.
    updated = (await rstub.UpdateEndpoint(update_request(status=res.ENDPOINT_STATUS_ACTIVE),
                                          timeout=5)).endpoint
    assert (updated.status, updated.weight, dict(updated.labels)) == (
        res.ENDPOINT_STATUS_ACTIVE, 7, {"tier": "gold"})
    assert events[-1].reason == "enabled by admin"

    # "*": everything, unset fields to their defaults.
    updated = (await rstub.UpdateEndpoint(update_request(mask=["*"], weight=3),
                                          timeout=5)).endpoint
    assert (updated.weight, dict(updated.labels), updated.status) == (
        3, {}, res.ENDPOINT_STATUS_ACTIVE)
    info = resilient.get("users", "u2")
    assert (info.weight, dict(info.labels), info.status) == (3, {}, EndpointStatus.ACTIVE)


async def test_update_persists_admin_endpoints(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    registry = Registry(state_file=str(state_file))
    load_config(registry, CONFIG)
    registry.register("users", "http://127.0.0.1:9000", endpoint_id="dyn")
    async with serve(registry) as (_, target), grpc.aio.insecure_channel(target) as channel:
        stub = api_grpc.AdminServiceStub(channel)
        await stub.UpdateEndpoint(update_request(endpoint_id="dyn", weight=9,
                                                 labels={"k": "v"},
                                                 status=res.ENDPOINT_STATUS_DISABLED),
                                  timeout=5)
    saved = json.loads(state_file.read_text())["endpoints"]
    assert [(e["id"], e["weight"], e["labels"], e["status"]) for e in saved] == [
        ("dyn", 9, {"k": "v"}, "DISABLED")]


@pytest.mark.parametrize(("request_args", "code", "match"), [
    ({"mask": ["url"]}, "INVALID_ARGUMENT", "update_mask: unknown path 'url'"),
    ({}, "INVALID_ARGUMENT", "nothing to update"),
    ({"mask": ["weight"], "weight": 0}, "INVALID_ARGUMENT", "weight 0 is out of range"),
    ({"weight": 1001}, "INVALID_ARGUMENT", "weight 1001 is out of range"),
    ({"labels": {"k" * 64: "v"}}, "INVALID_ARGUMENT", "label"),
    ({"status": res.ENDPOINT_STATUS_UNHEALTHY}, "INVALID_ARGUMENT", "UNHEALTHY is what"),
    # Validated together: a good weight does not go in with bad labels, nor a status
    # with a bad weight.
    ({"weight": 5, "labels": {"bad\nkey": "v"}}, "INVALID_ARGUMENT", "control characters"),
    ({"weight": 0, "status": res.ENDPOINT_STATUS_DISABLED, "mask": ["weight", "status"]},
     "INVALID_ARGUMENT", "weight 0"),
    ({"endpoint_id": "nope", "weight": 5}, "NOT_FOUND", "no endpoint 'nope'"),
    ({"cluster": "", "weight": 5}, "INVALID_ARGUMENT", "cluster is required"),
])
async def test_update_endpoint_errors(rstub: api_grpc.AdminServiceStub, resilient: Registry,
                                      request_args: dict[str, Any], code: str,
                                      match: str) -> None:
    await expect_error(resilient, grpc.StatusCode[code], match,
                       rstub.UpdateEndpoint(update_request(**request_args), timeout=5))


# ---------------------------------------------------------------- CheckEndpointHealth


async def test_check_endpoint_health(rstub: api_grpc.AdminServiceStub,
                                     resilient: Registry) -> None:
    before = (await rstub.GetEndpoint(api.GetEndpointRequest(cluster="checked", id="c1"),
                                      timeout=5)).endpoint
    assert before.health == res.HEALTH_STATUS_UNKNOWN and len(before.health_check_results) == 0
    response = await rstub.CheckEndpointHealth(
        api.CheckEndpointHealthRequest(cluster="checked", id="c1"), timeout=5)
    assert (response.result.passed, response.result.status_code, response.result.error) == (
        True, 200, "")
    assert response.result.latency.ToNanoseconds() == 3_000_000
    assert response.result.time.seconds > 0
    assert (response.endpoint.health, response.endpoint.health_reason) == (
        res.HEALTH_STATUS_HEALTHY, "first passing check")
    assert list(response.endpoint.health_check_results) == [response.result]


async def test_health_and_panic_events_reach_a_cluster_watcher(
        rstub: api_grpc.AdminServiceStub, resilient: Registry) -> None:
    call = rstub.WatchStatus(api.WatchStatusRequest(cluster="checked"))
    snapshot = (await asyncio.wait_for(call.read(), 5)).snapshot
    assert [(e.id, e.health) for e in snapshot.endpoints] == [("c1", res.HEALTH_STATUS_UNKNOWN)]
    assert resilient.clusters["checked"].hosts.panic  # its only endpoint never passed
    await rstub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u1"), timeout=5)
    await rstub.CheckEndpointHealth(api.CheckEndpointHealthRequest(cluster="checked", id="c1"),
                                    timeout=5)
    health, panic = await watch_events(call, 2)  # nothing of cluster users
    assert (health.health_changed.endpoint.id, health.health_changed.previous_status,
            health.health_changed.status, health.health_changed.reason) == (
        "c1", res.HEALTH_STATUS_UNKNOWN, res.HEALTH_STATUS_HEALTHY, "first passing check")
    assert (panic.panic_changed.cluster, panic.panic_changed.panic,
            panic.panic_changed.reason) == (
        "checked", False, "enough endpoints pass their health checks again")
    call.cancel()


@pytest.mark.parametrize(("cluster", "endpoint_id", "code", "match"), [
    ("users", "u1", "FAILED_PRECONDITION", "cluster 'users' has no active health checks"),
    ("checked", "nope", "NOT_FOUND", "no endpoint 'nope'"),
    ("checked", "", "INVALID_ARGUMENT", "id is required"),
])
async def test_check_endpoint_health_errors(rstub: api_grpc.AdminServiceStub,
                                            resilient: Registry, cluster: str,
                                            endpoint_id: str, code: str, match: str) -> None:
    await expect_error(resilient, grpc.StatusCode[code], match, rstub.CheckEndpointHealth(
        api.CheckEndpointHealthRequest(cluster=cluster, id=endpoint_id), timeout=5))


async def test_without_checker_or_route_table_is_failed_precondition(
        resilient: Registry) -> None:
    async with serve(resilient) as (_, target), grpc.aio.insecure_channel(target) as channel:
        stub = api_grpc.AdminServiceStub(channel)
        await expect_error(resilient, grpc.StatusCode.FAILED_PRECONDITION,
                           "active health checks are not available", stub.CheckEndpointHealth(
                               api.CheckEndpointHealthRequest(cluster="checked", id="c1"),
                               timeout=5))
        await expect_error(resilient, grpc.StatusCode.FAILED_PRECONDITION,
                           "route resolution is not available", stub.ResolveRoute(
                               api.ResolveRouteRequest(path="/users"), timeout=5))


# ---------------------------------------------------------------- ResolveRoute


async def test_resolve_route(rstub: api_grpc.AdminServiceStub, resilient: Registry) -> None:
    response = await rstub.ResolveRoute(api.ResolveRouteRequest(path="/users/42?x=1",
                                                                host="Example.com:8080"),
                                        timeout=5)
    assert (response.route, response.cluster, response.prefix, response.upstream_path) == (
        "/users", "users", "/users", "/users/42?x=1")
    assert [(c.endpoint.id, c.usable, c.reason) for c in response.candidates] == [
        ("u1", True, ""), ("u2", True, "")]
    assert response.endpoint.id == "u1" and not response.panic
    assert response.pick_reason.startswith("round_robin rotates over the 2 usable endpoints")

    await rstub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u1"), timeout=5)
    response = await rstub.ResolveRoute(api.ResolveRouteRequest(path="/users"), timeout=5)
    u1 = response.candidates[0]
    assert (u1.usable, u1.endpoint.breaker_state) == (False, res.BREAKER_STATE_OPEN)
    assert u1.reason.startswith("breaker open: tripped by admin; half-opens in ")
    assert response.endpoint.id == "u2"
    assert response.pick_reason == "the only usable endpoint (round_robin)"

    await rstub.UpdateEndpoint(update_request(status=res.ENDPOINT_STATUS_DISABLED), timeout=5)
    response = await rstub.ResolveRoute(api.ResolveRouteRequest(path="/users"), timeout=5)
    assert not response.HasField("endpoint")
    assert response.candidates[1].reason == "disabled by operator"
    assert response.pick_reason.startswith("no usable endpoint")

    # Dot-segments are removed as the data plane does; the method is case-sensitive.
    response = await rstub.ResolveRoute(api.ResolveRouteRequest(
        method="POST", path="/users/../reports/q3"), timeout=5)
    assert (response.route, response.upstream_path) == ("reports", "/reports/q3")


@pytest.mark.parametrize(("fields", "code", "match"), [
    ({"path": "/nope"}, "NOT_FOUND", "no route matches GET /nope (host (none)): the data "
                                     "plane answers 404 no_route"),
    ({"path": "/reports"}, "FAILED_PRECONDITION", "none allows GET; allowed: POST"),
    ({"path": "/reports", "method": "post"}, "FAILED_PRECONDITION", "none allows post"),
    ({"path": "/users", "method": "CONNECT"}, "FAILED_PRECONDITION", "never proxied"),
    ({"path": "users"}, "INVALID_ARGUMENT", "path must start with '/'"),
    ({"path": ""}, "INVALID_ARGUMENT", "path is required"),
    ({"path": "/", "method": "G T"}, "INVALID_ARGUMENT", "not an HTTP method"),
    ({"path": "/", "host": "a/b"}, "INVALID_ARGUMENT", "not a Host header"),
])
async def test_resolve_route_errors(rstub: api_grpc.AdminServiceStub, resilient: Registry,
                                    fields: dict[str, str], code: str, match: str) -> None:
    await expect_error(resilient, grpc.StatusCode[code], match,
                       rstub.ResolveRoute(api.ResolveRouteRequest(**fields), timeout=5))

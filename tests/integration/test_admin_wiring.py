"""The assembled sidecar wires the admin RPCs that need the data plane (health checks,
route resolution) to the real checker and the serving route table."""

from __future__ import annotations

import grpc

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res

from .conftest import url_of


async def test_check_endpoint_health_and_resolve_route_on_a_running_sidecar(
        start_upstream, start_sidecar):
    server, _ = await start_upstream(name="app")
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server), "id": "a"}],
                      "health_check": {"path": "/healthz", "interval": "30s", "jitter": 0}},
                     {"name": "plain", "endpoints": [{"url": url_of(server), "id": "p"}]}],
        "routes": [{"name": "api", "prefix": "/api", "cluster": "app"},
                   {"name": "rest", "prefix": "/", "cluster": "plain"}]})
    target = f"127.0.0.1:{sidecar.ports['admin_grpc']}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_grpc.AdminServiceStub(channel)
        checked = await stub.CheckEndpointHealth(
            api.CheckEndpointHealthRequest(cluster="app", id="a"), timeout=10)
        assert checked.result.passed and checked.result.status_code == 200
        assert checked.endpoint.health == res.HEALTH_STATUS_HEALTHY
        try:
            await stub.CheckEndpointHealth(
                api.CheckEndpointHealthRequest(cluster="plain", id="p"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "health_check is not set" in (exc.details() or "")
        else:
            raise AssertionError("a cluster without checks must refuse")
        resolved = await stub.ResolveRoute(
            api.ResolveRouteRequest(method="GET", host="x", path="/api/users?id=1"),
            timeout=10)
        assert (resolved.route, resolved.cluster) == ("api", "app")
        assert resolved.endpoint.id == "a"

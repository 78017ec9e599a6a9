"""`sidecar.admin.v1.AdminService` on grpc.aio: a thin translation layer.

Each RPC reads its request with `convert`, calls the registry (which validates
everything before changing anything) or an endpoint's `HostSet` (breakers), and
converts the result back. What the service needs from the rest of the sidecar
(the serving config, the health checker, the route table) it gets as callables, so
it imports nothing of the data plane. Errors leave through `convert.STATUS_CODES`
only; anything unmapped becomes INTERNAL via grpc.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.core.clock import Clock, SystemClock
from sidecar.errors import EndpointNotFound, InvalidEndpoint
from sidecar.events import Event
from sidecar.observe.stats import Stats
from sidecar.registry import Endpoint, EndpointInfo, Registry

from . import convert
from .ops import LogLevelTimer, Operations, current_log_level, software_version
from .watch import WatchHub

__all__ = ["SERVICE_NAME", "AdminService", "CheckHealth"]

SERVICE_NAME: str = api.DESCRIPTOR.services_by_name["AdminService"].full_name

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Handler = Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]

#: Runs one active health check of (cluster, endpoint id) now and returns its result.
CheckHealth = Callable[[str, str], Awaitable[convert.CheckResultLike]]


def _translate_errors(method: _Handler[_Request, _Response]) -> _Handler[_Request, _Response]:
    """Abort the call with the status `convert.STATUS_CODES` gives a domain error."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: _Request,
                      context: grpc.aio.ServicerContext) -> _Response:
        try:
            return await method(self, request, context)
        except convert.MAPPED_ERRORS as exc:
            await context.abort(*convert.status_for(exc))
            raise AssertionError("unreachable: abort raises") from None

    return wrapper


class AdminService(api_grpc.AdminServiceServicer):
    """The admin RPCs over one registry.

    Parameters:
        registry: the registry the RPCs read and change.
        config_json: returns the serving configuration as JSON (for GetConfig).
        watch_hub: tracks WatchStatus streams; one over `registry` if not given.
        check_health: runs a health check now (CheckEndpointHealth); None answers
            FAILED_PRECONDITION. Called only for an endpoint whose cluster has checks.
        resolve: routes (method, host, path) as the serving route table does
            (ResolveRoute), raising NoRoute or MethodNotAllowed; host arrives lower
            case without a port, path without dot-segments. None answers
            FAILED_PRECONDITION.
        clock: the registry's clock, to show the breakers' monotonic times as wall
            time; the system clock (the registry's default) if not given.
        own_addresses: the sidecar's own (bind host, bound port) pairs (listener,
            admin ports); registering an endpoint at one of them is refused (a loop).
        operations: validation, reload and lifecycle of the sidecar (ValidateConfig,
            ReloadConfig, GetServerInfo, Drain); None answers FAILED_PRECONDITION.
        stats: the rolling request statistics (GetStats); None answers
            FAILED_PRECONDITION.
    """

    def __init__(self, registry: Registry, config_json: Callable[[], str], *,
                 watch_hub: WatchHub | None = None, check_health: CheckHealth | None = None,
                 resolve: convert.Resolve | None = None, clock: Clock | None = None,
                 own_addresses: Callable[[], Sequence[tuple[str, int]]] | None = None,
                 operations: Operations | None = None, stats: Stats | None = None) -> None:
        self._registry = registry
        self._stats = stats
        self._operations = operations
        self.log_level = LogLevelTimer()
        self._own_addresses = own_addresses
        self._local_hosts = frozenset({socket.gethostname().lower()})
        self._config_json = config_json
        self.watch_hub = watch_hub or WatchHub(registry)
        self._check_health = check_health
        self._resolve = resolve
        self._clock = clock or SystemClock()
        self._wall = convert.WallTime(self._clock)

    # ------------------------------------------------------------ helpers

    def _live(self, cluster: str, endpoint_id: str) -> Endpoint:
        """The live endpoint; EndpointNotFound (NOT_FOUND) if there is none."""
        return self._registry.endpoint(convert.require("cluster", cluster),
                                       convert.require("id", endpoint_id))

    def _message(self, endpoint: Endpoint, info: EndpointInfo | None = None) -> res.Endpoint:
        """`endpoint` as the API shows it, with what was observed of it now."""
        return convert.endpoint_to_proto(info or endpoint.info(),
                                         convert.observed(endpoint.host, self._wall))

    def _observe(self, info: EndpointInfo) -> convert.Observed | None:
        members = self._registry.clusters.get(info.cluster)
        endpoint = members.endpoints.get(info.id) if members is not None else None
        return convert.observed(endpoint.host, self._wall) if endpoint is not None else None

    # ------------------------------------------------------------ RPCs

    @_translate_errors
    async def RegisterEndpoint(self, request: api.RegisterEndpointRequest,
                               context: grpc.aio.ServicerContext
                               ) -> api.RegisterEndpointResponse:
        args = convert.registration(request)
        if self._own_addresses is not None:
            own = convert.loops_back(args.url, self._own_addresses(), self._local_hosts)
            if own is not None:
                raise InvalidEndpoint(f"url {args.url!r} is this sidecar's own address "
                                      f"({own}): requests to it would loop")
        info = self._registry.register(args.cluster, args.url, endpoint_id=args.endpoint_id,
                                       weight=args.weight, status=args.status,
                                       labels=args.labels)
        endpoint = self._registry.endpoint(info.cluster, info.id)
        return api.RegisterEndpointResponse(endpoint=self._message(endpoint, info))

    @_translate_errors
    async def DeregisterEndpoint(self, request: api.DeregisterEndpointRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> api.DeregisterEndpointResponse:
        endpoint = self._live(request.cluster, request.id)
        info = self._registry.deregister(endpoint.cluster, endpoint.id)
        return api.DeregisterEndpointResponse(endpoint=self._message(endpoint, info))

    @_translate_errors
    async def GetEndpoint(self, request: api.GetEndpointRequest,
                          context: grpc.aio.ServicerContext) -> api.GetEndpointResponse:
        endpoint = self._live(request.cluster, request.id)
        return api.GetEndpointResponse(endpoint=self._message(endpoint))

    @_translate_errors
    async def ListEndpoints(self, request: api.ListEndpointsRequest,
                            context: grpc.aio.ServicerContext) -> api.ListEndpointsResponse:
        status = convert.status_filter(request.status)
        size = convert.page_size(request.page_size)
        matching = self._registry.list(request.cluster or None, status)
        page = convert.paginate(matching, cluster=request.cluster, status=status, size=size,
                                token=request.page_token)
        return api.ListEndpointsResponse(
            endpoints=[convert.endpoint_to_proto(e, self._observe(e)) for e in page.endpoints],
            next_page_token=page.next_page_token, total_size=page.total_size)

    async def WatchStatus(self, request: api.WatchStatusRequest,
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[api.WatchStatusResponse]:
        try:
            watcher = self.watch_hub.open(request.cluster)
        except convert.MAPPED_ERRORS as exc:
            await context.abort(*convert.status_for(exc))
            raise AssertionError("unreachable: abort raises") from None
        try:
            while (item := await watcher.next()) is not None:
                if isinstance(item, Event) and item.kind not in convert.STREAMED_KINDS:
                    continue
                # A snapshot is converted as soon as it is taken (no await between),
                # so what was observed of each endpoint is of the same moment.
                yield convert.watch_response(item, self._observe)
        finally:
            # Runs when the client cancels too (grpc.aio cancels this generator's task).
            watcher.close()

    @_translate_errors
    async def GetConfig(self, request: api.GetConfigRequest,
                        context: grpc.aio.ServicerContext) -> api.GetConfigResponse:
        info = self._registry.config_info
        if info is None:
            raise convert.ConfigNotLoaded("no configuration has been loaded yet")
        return api.GetConfigResponse(config=convert.config_info_to_proto(info),
                                     config_json=self._config_json())

    @_translate_errors
    async def UpdateEndpoint(self, request: api.UpdateEndpointRequest,
                             context: grpc.aio.ServicerContext) -> api.UpdateEndpointResponse:
        args = convert.update_request(request)  # judges the status: set_status cannot fail
        endpoint = self._registry.endpoint(args.cluster, args.endpoint_id)
        if args.weight is not None or args.labels is not None:
            # Validates weight and labels before changing anything.
            self._registry.update(args.cluster, args.endpoint_id, weight=args.weight,
                                  labels=args.labels)
        if args.status is not None:
            self._registry.set_status(args.cluster, args.endpoint_id, args.status, args.reason)
        return api.UpdateEndpointResponse(endpoint=self._message(endpoint))

    @_translate_errors
    async def TripBreaker(self, request: api.TripBreakerRequest,
                          context: grpc.aio.ServicerContext) -> api.TripBreakerResponse:
        endpoint = self._live(request.cluster, request.id)
        seconds = convert.trip_duration(request)
        if not endpoint.host.breaker.config.enabled:
            raise convert.NotConfigured(
                f"cannot trip the breaker of endpoint {endpoint.id!r}: the circuit breaker of "
                f"cluster {endpoint.cluster!r} is disabled (circuit_breaker.enabled is false)")
        hosts = self._registry.clusters[endpoint.cluster].hosts
        hosts.trip(endpoint.host, "tripped by admin", seconds)
        return api.TripBreakerResponse(endpoint=self._message(endpoint))

    @_translate_errors
    async def ResetBreaker(self, request: api.ResetBreakerRequest,
                           context: grpc.aio.ServicerContext) -> api.ResetBreakerResponse:
        endpoint = self._live(request.cluster, request.id)
        self._registry.clusters[endpoint.cluster].hosts.reset(endpoint.host, "reset by admin")
        return api.ResetBreakerResponse(endpoint=self._message(endpoint))

    @_translate_errors
    async def CheckEndpointHealth(self, request: api.CheckEndpointHealthRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> api.CheckEndpointHealthResponse:
        endpoint = self._live(request.cluster, request.id)
        members = self._registry.clusters[endpoint.cluster]
        if members.settings.health_check is None:
            raise convert.NotConfigured(
                f"cluster {endpoint.cluster!r} has no active health checks (its health_check "
                "is not set)")
        if self._check_health is None:
            raise convert.NotConfigured("active health checks are not available in this "
                                        "sidecar")
        result = await self._check_health(endpoint.cluster, endpoint.id)
        try:  # the endpoint may have gone while the check ran
            current = self._registry.endpoint(endpoint.cluster, endpoint.id)
        except EndpointNotFound:
            current = endpoint
        return api.CheckEndpointHealthResponse(result=convert.check_result_to_proto(result),
                                               endpoint=self._message(current))

    @_translate_errors
    async def ResolveRoute(self, request: api.ResolveRouteRequest,
                           context: grpc.aio.ServicerContext) -> api.ResolveRouteResponse:
        query = convert.route_query(request)
        if self._resolve is None:
            raise convert.NotConfigured("route resolution is not available in this sidecar")
        match = convert.resolve_route(self._resolve, query)
        return convert.resolution_to_proto(match, self._registry.clusters.get(match.cluster),
                                           self._wall)

    # ------------------------------------------------------------ operations

    def _ops(self) -> Operations:
        if self._operations is None:
            raise convert.NotConfigured("configuration operations are not available in "
                                        "this sidecar")
        return self._operations

    @_translate_errors
    async def ValidateConfig(self, request: api.ValidateConfigRequest,
                             context: grpc.aio.ServicerContext) -> api.ValidateConfigResponse:
        config_json, path = convert.config_source(request)
        result = await self._ops().validate(config_json, path)
        serving = self._registry.config_info
        return api.ValidateConfigResponse(
            valid=not result.issues, issues=[convert.issue_to_proto(i) for i in result.issues],
            version=result.version,
            changed=bool(result.version) and (serving is None
                                              or serving.version != result.version))

    @_translate_errors
    async def ReloadConfig(self, request: api.ReloadConfigRequest,
                           context: grpc.aio.ServicerContext) -> api.ReloadConfigResponse:
        before = self._registry.config_info
        await self._ops().reload()
        after = self._registry.config_info
        if after is None:
            raise convert.ConfigNotLoaded("no configuration has been loaded yet")
        return api.ReloadConfigResponse(config=convert.config_info_to_proto(after),
                                        changed=before is None or before.version != after.version)

    @_translate_errors
    async def SetLogLevel(self, request: api.SetLogLevelRequest,
                          context: grpc.aio.ServicerContext) -> api.SetLogLevelResponse:
        level, seconds = convert.log_level(request)
        previous = self.log_level.set(level, seconds)
        response = api.SetLogLevelResponse(
            level=convert.log_level_number(level),  # type: ignore[arg-type]
            previous_level=convert.log_level_number(previous))  # type: ignore[arg-type]
        if seconds is not None:
            response.revert_time.CopyFrom(convert.timestamp(self._wall(self._clock.now()
                                                                       + seconds)))
        return response

    @_translate_errors
    async def GetServerInfo(self, request: api.GetServerInfoRequest,
                            context: grpc.aio.ServicerContext) -> api.GetServerInfoResponse:
        return convert.server_info_to_proto(self._ops().info(), self._registry.config_info,
                                            current_log_level(), software_version())

    @_translate_errors
    async def Drain(self, request: api.DrainRequest,
                    context: grpc.aio.ServicerContext) -> api.DrainResponse:
        deadline = convert.drain_deadline(request)
        return convert.drain_to_proto(self._ops().drain(deadline))

    # ------------------------------------------------------------ stats

    @_translate_errors
    async def GetStats(self, request: api.GetStatsRequest,
                       context: grpc.aio.ServicerContext) -> api.GetStatsResponse:
        query = convert.stats_request(request)
        if self._stats is None:
            raise convert.NotConfigured("request statistics are not available in this sidecar")
        report = self._stats.query(query.kind, query.window_seconds, query.cluster)
        return convert.stats_response(report, self._clock.wall())

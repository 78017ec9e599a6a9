"""`sidecar.admin.v1.AdminService` on grpc.aio: a thin translation layer.

Each RPC reads its request with `convert`, calls the registry (which validates
everything before changing anything) and converts the result back. Errors leave
through `convert.STATUS_CODES` only; anything unmapped becomes INTERNAL via grpc.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.events import Event
from sidecar.registry import Registry

from . import convert
from .watch import WatchHub

__all__ = ["SERVICE_NAME", "AdminService"]

SERVICE_NAME: str = api.DESCRIPTOR.services_by_name["AdminService"].full_name

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Handler = Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]


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
    """

    def __init__(self, registry: Registry, config_json: Callable[[], str], *,
                 watch_hub: WatchHub | None = None) -> None:
        self._registry = registry
        self._config_json = config_json
        self.watch_hub = watch_hub or WatchHub(registry)

    @_translate_errors
    async def RegisterEndpoint(self, request: api.RegisterEndpointRequest,
                               context: grpc.aio.ServicerContext
                               ) -> api.RegisterEndpointResponse:
        args = convert.registration(request)
        info = self._registry.register(args.cluster, args.url, endpoint_id=args.endpoint_id,
                                       weight=args.weight, status=args.status,
                                       labels=args.labels)
        return api.RegisterEndpointResponse(endpoint=convert.endpoint_to_proto(info))

    @_translate_errors
    async def DeregisterEndpoint(self, request: api.DeregisterEndpointRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> api.DeregisterEndpointResponse:
        info = self._registry.deregister(convert.require("cluster", request.cluster),
                                         convert.require("id", request.id))
        return api.DeregisterEndpointResponse(endpoint=convert.endpoint_to_proto(info))

    @_translate_errors
    async def GetEndpoint(self, request: api.GetEndpointRequest,
                          context: grpc.aio.ServicerContext) -> api.GetEndpointResponse:
        info = self._registry.get(convert.require("cluster", request.cluster),
                                  convert.require("id", request.id))
        return api.GetEndpointResponse(endpoint=convert.endpoint_to_proto(info))

    @_translate_errors
    async def ListEndpoints(self, request: api.ListEndpointsRequest,
                            context: grpc.aio.ServicerContext) -> api.ListEndpointsResponse:
        status = convert.status_filter(request.status)
        size = convert.page_size(request.page_size)
        matching = self._registry.list(request.cluster or None, status)
        page = convert.paginate(matching, cluster=request.cluster, status=status, size=size,
                                token=request.page_token)
        return api.ListEndpointsResponse(
            endpoints=[convert.endpoint_to_proto(e) for e in page.endpoints],
            next_page_token=page.next_page_token, total_size=page.total_size)

    async def WatchStatus(self, request: api.WatchStatusRequest,
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[api.WatchStatusResponse]:
        watcher = self.watch_hub.open(request.cluster)
        try:
            while (item := await watcher.next()) is not None:
                if isinstance(item, Event) and item.kind not in convert.STREAMED_KINDS:
                    continue
                yield convert.watch_response(item)
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

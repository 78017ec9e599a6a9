"""The admin gRPC server: AdminService, grpc.health.v1 and server reflection on grpc.aio.

Health is pushed, not polled: the overall service ("") and AdminService report
NOT_SERVING until the registry has a configuration, and SERVING from the first
CONFIG_LOADED event on. `stop()` reports NOT_SERVING, ends every WatchStatus stream
and then stops the server with a grace period for unary calls in flight.

TLS and token auth are not wired yet: `server_credentials` and `interceptors` are
where they plug in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.core.clock import Clock
from sidecar.events import Event, EventKind
from sidecar.registry import Registry

from .convert import Resolve
from .service import SERVICE_NAME, AdminService, CheckHealth
from .watch import DEFAULT_MAX_QUEUE, WatchHub

__all__ = ["SERVICE_NAMES", "AdminServer"]

SERVICE_NAMES: tuple[str, ...] = (
    SERVICE_NAME,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)
_HEALTH_SERVICES = ("", SERVICE_NAME)


class AdminServer:
    """The admin plane's gRPC server for one registry.

    Parameters:
        registry: the endpoint registry the API manages.
        config_json: returns the serving configuration as JSON (GetConfig).
        interceptors: grpc.aio server interceptors (token auth goes here).
        server_credentials: TLS/mTLS credentials; None serves plaintext.
        max_watch_queue: events buffered per slow WatchStatus client before it
            gets a fresh snapshot instead.
        check_health, resolve, clock: see `AdminService` (CheckEndpointHealth,
            ResolveRoute, and the clock that turns breaker times into wall time).
    """

    def __init__(self, registry: Registry, config_json: Callable[[], str], *,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
                 server_credentials: grpc.ServerCredentials | None = None,
                 max_watch_queue: int = DEFAULT_MAX_QUEUE,
                 check_health: CheckHealth | None = None, resolve: Resolve | None = None,
                 clock: Clock | None = None) -> None:
        self._registry = registry
        self._interceptors = tuple(interceptors or ())
        self._credentials = server_credentials
        self.watch_hub = WatchHub(registry, max_queue=max_watch_queue)
        self.service = AdminService(registry, config_json, watch_hub=self.watch_hub,
                                    check_health=check_health, resolve=resolve, clock=clock)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._health_dirty = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return self._port

    async def start(self, address: str) -> int:
        """Bind `address` ("127.0.0.1:0" picks a free port), start serving, return the port."""
        if self._server is not None:
            raise RuntimeError("AdminServer already started")
        # so_reuseport off: a second sidecar on the same port must fail, not share it.
        server = grpc.aio.server(interceptors=self._interceptors,
                                 options=[("grpc.so_reuseport", 0)])
        api_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        try:
            if self._credentials is not None:
                port = int(server.add_secure_port(address, self._credentials))
            else:
                port = int(server.add_insecure_port(address))
        except RuntimeError as exc:
            port, error = 0, str(exc)
        else:
            error = "no port bound"
        if port == 0:
            await server.stop(None)
            raise OSError(f"admin gRPC server cannot listen on {address}: {error}")

        await self._apply_health()
        self._unsubscribe = self._registry.bus.subscribe(self._on_event)
        self._health_task = asyncio.create_task(self._health_pump(),
                                                name="admin-health")
        await server.start()
        self._server, self._port = server, port
        return port

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, end watch streams, then stop (unary calls get `grace` s)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self.health.enter_graceful_shutdown()
        self.watch_hub.close()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # ------------------------------------------------------------ health

    def _on_event(self, event: Event) -> None:
        if event.kind is EventKind.CONFIG_LOADED:
            self._health_dirty.set()

    async def _health_pump(self) -> None:
        # The registry calls listeners synchronously; HealthServicer.set is a coroutine.
        while True:
            await self._health_dirty.wait()
            self._health_dirty.clear()
            await self._apply_health()

    async def _apply_health(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING
                  if self._registry.config_info is not None
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in _HEALTH_SERVICES:
            await self.health.set(service, status)

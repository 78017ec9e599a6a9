"""The admin gRPC server: AdminService, grpc.health.v1 and server reflection on grpc.aio.

Health is pushed, not polled: the overall service ("") and AdminService report
NOT_SERVING until the registry has a configuration, and SERVING from the first
CONFIG_LOADED event on. `stop()` reports NOT_SERVING, ends every WatchStatus stream
and then stops the server with a grace period for unary calls in flight.

Security (`admin.auth`, `admin.tls`): every call goes through `auth.AdminInterceptor`
(credentials, roles, the audit log); TLS and mTLS through `grpc.ssl_server_credentials`.
`start()` refuses a non-loopback TCP address unless both are configured (the same
rule as the config model's), and binds `unix:PATH` with mode 0600, refusing a path
where another server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.config.admin import (
    DEFAULT_MAX_MESSAGE_BYTES,
    UNIX_PREFIX,
    AdminAuthConfig,
    AdminConfig,
    AdminTLSConfig,
    exposure_issue,
)
from sidecar.config.model import SidecarConfig
from sidecar.core.addresses import parse_host_port
from sidecar.core.clock import Clock
from sidecar.events import Event, EventKind
from sidecar.observe.stats import Stats
from sidecar.registry import Registry

from .audit import AuditLog
from .auth import AdminInterceptor, Authenticator
from .convert import Resolve
from .ops import Operations
from .service import SERVICE_NAME, AdminService, CheckHealth
from .watch import DEFAULT_MAX_QUEUE, DEFAULT_MAX_WATCHERS, WatchHub

__all__ = ["SERVICE_NAMES", "AdminServer", "own_addresses", "tls_credentials"]

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
        auth: `admin.auth`; None: every caller is admin (local addresses only).
        tls: `admin.tls`: TLS, and mTLS with `client_ca_file`; None serves plaintext.
        audit_log: record every mutating call on the logger `sidecar.audit`.
        max_watchers: WatchStatus streams at once; more get RESOURCE_EXHAUSTED.
        max_message_bytes: largest request message accepted.
        own_addresses: the sidecar's own (bind host, bound port) pairs; registering an
            endpoint there is refused (a loop).
        operations: ValidateConfig, ReloadConfig, GetServerInfo and Drain's access to the
            sidecar (`ops.SidecarOperations`); None answers FAILED_PRECONDITION.
        interceptors: more grpc.aio server interceptors, run after authentication.
        server_credentials: credentials built elsewhere (instead of `tls`).
        max_watch_queue: events buffered per slow WatchStatus client before it
            gets a fresh snapshot instead.
        check_health, resolve, clock, stats: see `AdminService` (CheckEndpointHealth,
            ResolveRoute, the clock that turns breaker times into wall time, GetStats).

    Raises OSError (`auth.AuthSetupError`) when a configured secret or TLS file
    cannot be used.
    """

    def __init__(self, registry: Registry, config_json: Callable[[], str], *,
                 auth: AdminAuthConfig | None = None, tls: AdminTLSConfig | None = None,
                 audit_log: bool = True, max_watchers: int = DEFAULT_MAX_WATCHERS,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 own_addresses: Callable[[], Sequence[tuple[str, int]]] | None = None,
                 operations: Operations | None = None,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
                 server_credentials: grpc.ServerCredentials | None = None,
                 max_watch_queue: int = DEFAULT_MAX_QUEUE,
                 check_health: CheckHealth | None = None, resolve: Resolve | None = None,
                 clock: Clock | None = None, stats: Stats | None = None) -> None:
        if tls is not None and server_credentials is not None:
            raise ValueError("give tls or server_credentials, not both")
        self._registry = registry
        self._auth_config = auth
        self._tls = tls
        self.authenticator = Authenticator(auth)
        self._interceptors = (AdminInterceptor(self.authenticator,
                                               AuditLog() if audit_log else None),
                              *(interceptors or ()))
        self._credentials = (tls_credentials(tls) if tls is not None
                             else server_credentials)
        self._max_message_bytes = max_message_bytes
        self.watch_hub = WatchHub(registry, max_queue=max_watch_queue,
                                  max_watchers=max_watchers)
        self.service = AdminService(registry, config_json, watch_hub=self.watch_hub,
                                    check_health=check_health, resolve=resolve, clock=clock,
                                    own_addresses=own_addresses, operations=operations,
                                    stats=stats)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._health_dirty = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @classmethod
    def from_config(cls, config: AdminConfig, registry: Registry,
                    config_json: Callable[[], str], **kwargs: object) -> AdminServer:
        """An AdminServer with `config`'s security and bounds (`kwargs`: the rest)."""
        return cls(registry, config_json, auth=config.auth, tls=config.tls,
                   audit_log=config.audit_log, max_watchers=config.max_watchers,
                   max_message_bytes=config.max_message_bytes,
                   **kwargs)  # type: ignore[arg-type]

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return self._port

    async def start(self, address: str) -> int:
        """Bind `address` ("127.0.0.1:0" picks a free port; "unix:PATH" a socket file,
        mode 0600), start serving, return the port (0 for a unix socket).

        Raises OSError when the address cannot be bound, and ValueError for a
        non-loopback TCP address without TLS and authentication."""
        if self._server is not None:
            raise RuntimeError("AdminServer already started")
        issue = exposure_issue(address, self._tls, self._auth_config)
        # Credentials built elsewhere count as TLS, with authentication configured.
        if issue is not None and not (self._credentials is not None
                                      and self._auth_config is not None):
            raise ValueError(f"admin: {issue}")
        # so_reuseport off: a second sidecar on the same port must fail, not share it.
        server = grpc.aio.server(interceptors=self._interceptors, options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self._max_message_bytes)])
        api_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        unix_path = address[len(UNIX_PREFIX):] if address.startswith(UNIX_PREFIX) else None
        try:
            if unix_path is not None:
                _refuse_live_socket(unix_path)
            with _private_files(unix_path is not None):
                if self._credentials is not None:
                    port = int(server.add_secure_port(address, self._credentials))
                else:
                    port = int(server.add_insecure_port(address))
            if unix_path is not None and port:
                os.chmod(unix_path, 0o600)  # already so (umask); also if umask was ignored
        except (RuntimeError, OSError) as exc:
            port, error = 0, str(exc)
        else:
            error = "no port bound"
        if port == 0:
            await server.stop(None)
            raise OSError(f"admin gRPC server cannot listen on {address}: {error}")
        if unix_path is not None:
            port = 0

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
        self.service.log_level.cancel()
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


# ------------------------------------------------------------ helpers


def own_addresses(config: SidecarConfig, ports: Mapping[str, int]
                  ) -> list[tuple[str, int]]:
    """The sidecar's own (bind host, bound port) pairs: the listener and the admin
    ports, as `Sidecar.ports` has them ("listener", "admin_grpc", "admin_http")."""
    pairs: list[tuple[str, int]] = []
    for key, address in (("listener", config.listener.address),
                         ("admin_grpc", config.admin.grpc_address),
                         ("admin_http", config.admin.http_address)):
        if address.startswith(UNIX_PREFIX):
            continue
        bound = parse_host_port(address, allow_zero_port=True)
        pairs.append((bound.host, ports.get(key) or bound.port))
    return pairs


def tls_credentials(tls: AdminTLSConfig) -> grpc.ServerCredentials:
    """Server credentials from `admin.tls`; with `client_ca_file`, client certificates
    signed by those CAs are required (mTLS). OSError names a file that cannot be read."""

    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise OSError(f"admin.tls.{what} {path!r}: {exc.strerror or exc}") from None

    chain = read(tls.cert_file, "cert_file")
    key = read(tls.key_file, "key_file")
    ca = read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def _refuse_live_socket(path: str) -> None:
    """grpc replaces an existing socket file: refuse one another server answers on,
    and any other kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return  # stale: left by a process that is gone
    finally:
        probe.close()
    raise OSError(f"another server is listening on {path}")


@contextlib.contextmanager
def _private_files(active: bool) -> Iterator[None]:
    """Create files with mode 0600 meanwhile: the socket is never reachable by
    others, not even between bind and chmod."""
    if not active:
        yield
        return
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)

"""The composition root: builds the sidecar from a config and runs its three listeners.

One process, one event loop (uvloop when installed): the data-plane listener
(llhttp on asyncio.Protocol + `Proxy`), the admin HTTP port (/metrics, /live,
/ready) and the admin gRPC server (grpc.aio). Lifecycle::

    STARTING -> READY -> DRAINING -> STOPPED

`Sidecar` owns the state (`state`, `state_reason`); every change is published on
the bus as a LIFECYCLE_CHANGED event (WatchStatus streams it), /ready answers 200
only in READY, and GetServerInfo reports it.

Reloads (file change, SIGHUP, admin RPC) render and validate the new file first;
a bad file is reported with its location (log, CONFIG_REJECTED event, the
`sidecar_config_load_failures_total{reason}` metric) and the serving config stays.
Drain (SIGTERM/SIGINT, or the Drain RPC): /ready turns 503, the listener stops
accepting, idle keep-alive connections close, requests in flight get up to
`listener.drain_timeout` (or the RPC's deadline) to finish. The Drain RPC stops
there, with the admin ports up; a stop signal then closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from aiohttp import web

from admin.http import make_admin_app
from admin.recent import RecentEvents
from sidecar.compiled import state as compiled_state
from sidecar.config.model import SidecarConfig, config_version
from sidecar.core.addresses import parse_host_port
from sidecar.core.routing import RouteMatch
from sidecar.dataplane.checker import HealthChecker
from sidecar.dataplane.listener import Listener
from sidecar.dataplane.proxy import DataPlaneState, Proxy
from sidecar.errors import ConfigError
from sidecar.events import Event, EventKind
from sidecar.observe.logs import set_level
from sidecar.observe.metrics import Metrics
from sidecar.observe.stats import Stats
from sidecar.registry import ConfigInfo, Registry
from sidecar.reload import ConfigSource, Reloader, load_stage

__all__ = ["LIFECYCLE_STATES", "Sidecar", "bound_port"]

#: The lifecycle states, in order.
LIFECYCLE_STATES = ("starting", "ready", "draining", "stopped")

log = logging.getLogger("sidecar")


class Sidecar:
    """Everything one sidecar process runs."""

    def __init__(self, source: ConfigSource, config: SidecarConfig) -> None:
        self.source = source
        self.config = config
        self.registry = Registry(state_file=config.admin.state_file)
        #: The last events on the bus, from the first: the status page shows them.
        self.recent_events = RecentEvents(self.registry.bus)
        #: Rolling request statistics (GetStats, the status page, `sidecarctl stat`).
        self.stats = Stats(routes=self._route_pairs, endpoints=self._endpoint_ids)
        self.metrics = Metrics(self.stats)
        self.metrics.registry = self.registry
        #: Active health checks; follows registrations and reloads through the bus.
        self.checker = HealthChecker(self.registry)
        self.metrics.checker = self.checker
        self.state = "starting"
        self.state_reason = "loading the configuration and binding the ports"
        self.proxy: Proxy | None = None
        self.ports: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._listener: Listener | None = None
        self._admin_runner: web.AppRunner | None = None
        self._admin_grpc: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._stopping = False
        self._drain_task: asyncio.Task[None] | None = None
        #: Wall time at which requests still in flight are cut off (0: no drain yet).
        self.drain_deadline = 0.0
        self.reloader = Reloader(source, self._apply, self._version, self._rejected)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from sidecar.dataplane.server import make_server

        config = self.config
        self.registry.bus.subscribe(self._count_event)
        self.registry.bus.subscribe(self.stats.on_event)
        self.registry.apply_config(config, self._info(config, config_version(config)))
        restored = self.registry.load_state()
        if restored:
            log.info("restored registered endpoints", extra={"count": restored})
        self.metrics.config_loaded(True, time.time())
        self.proxy = Proxy(self.registry, self.metrics,
                           DataPlaneState.build(config, self.registry))
        loop = asyncio.get_running_loop()

        admin = config.admin
        from admin.ops import SidecarOperations
        from admin.status import StatusPage

        # One Operations for the status page and the API: the same start time in both.
        operations = SidecarOperations(self)
        #: The status page on the admin HTTP port (admin/status.py).
        self.status_page = StatusPage.for_sidecar(self, operations, self.recent_events)
        self._admin_runner = web.AppRunner(make_admin_app(self.metrics, self.readiness,
                                                          lambda: self.state, self.status_page),
                                           # A browser that closes the status page ends
                                           # its /events stream (and frees its slot) now.
                                           access_log=None, handler_cancellation=True)
        await self._admin_runner.setup()
        http = parse_host_port(admin.http_address, allow_zero_port=True)
        site = web.TCPSite(self._admin_runner, http.host, http.port, reuse_address=True)
        await site.start()
        self.ports["admin_http"] = bound_port(site._server)

        from admin.server import AdminServer, own_addresses

        self._admin_grpc = AdminServer.from_config(
            admin, self.registry, self.config_json, check_health=self.checker.check_now,
            resolve=self._resolve_route, operations=operations, stats=self.stats,
            own_addresses=lambda: own_addresses(self.config, self.ports))
        self.ports["admin_grpc"] = await self._admin_grpc.start(admin.grpc_address)

        listen = parse_host_port(config.listener.address, allow_zero_port=True)
        self._listener = make_server(self.proxy, config.listener)
        self._server = await loop.create_server(self._listener, listen.host, listen.port,
                                                reuse_address=True, backlog=1024)
        self.ports["listener"] = bound_port(self._server)
        if self._drain_task is not None:  # a Drain RPC came while starting
            self._server.close()
        await self.checker.start()
        if self.state == "starting":  # a Drain RPC may have come first
            self._set_state("ready", "config loaded, listener serving")
        log.info("sidecar serving", extra={"listener": self.ports["listener"],
                                           "admin_grpc": self.ports["admin_grpc"],
                                           "admin_http": self.ports["admin_http"],
                                           "config_version": self._version()[:12],
                                           "config_source": self.source.name,
                                           "data_path": compiled_state()})

    def _set_state(self, state: str, reason: str) -> None:
        """The one place the lifecycle state changes: set it, log it, publish it."""
        previous, self.state, self.state_reason = self.state, state, reason
        log.info("lifecycle", extra={"state": state, "previous_state": previous,
                                     "reason": reason})
        self.registry.bus.publish(EventKind.LIFECYCLE_CHANGED, state=state,
                                  previous_state=previous, reason=reason)

    def drain(self, timeout: float | None = None, reason: str = "drain requested"
              ) -> tuple[bool, float]:
        """Start the drain, without stopping the admin ports; returns (whether this
        call started it, the wall time requests in flight are cut off). A drain under
        way (or done) is left alone. Call on the event loop."""
        if self._drain_task is not None or self.state == "stopped":
            return False, self.drain_deadline
        timeout = self.config.listener.drain_timeout if timeout is None else timeout
        self.drain_deadline = time.time() + timeout
        self._set_state("draining", reason)
        if self._server is not None:
            self._server.close()  # stop accepting now; open connections stay
        self._drain_task = asyncio.ensure_future(self._drain(timeout))
        return True, self.drain_deadline

    async def wait_drained(self) -> None:
        """Wait until the drain started by `drain()` has finished."""
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def _drain(self, timeout: float) -> None:
        log.info("draining", extra={"deadline_seconds": timeout})
        for task in self._tasks:  # no reloads while draining
            task.cancel()
        left = 0
        if self._listener is not None:
            # Idle connections close now; the others answer their request in flight
            # with `Connection: close`, then close; at the deadline the rest are cut.
            left = len(self._listener.connections)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.shutdown(timeout), timeout + 1)
        if self._server is not None:
            await self._server.wait_closed()
        if self.state == "draining":
            self._set_state("draining", f"drain finished: the listener is closed "
                                        f"({left} connection(s) were open)")

    async def stop(self, drain_timeout: float | None = None, reason: str = "stopping"
                   ) -> None:
        """Drain (unless a drain is under way already) and stop. Safe to call more
        than once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.drain(drain_timeout, reason)
        await self.wait_drained()
        await self.checker.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self._admin_grpc is not None:
            await self._admin_grpc.stop(1.0)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self._set_state("stopped", "stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _count_event(self, event: Event) -> None:
        """Metrics that count events published on the bus."""
        if event.kind is EventKind.BREAKER_CHANGED and event.breaker is not None:
            cluster = event.endpoint.cluster if event.endpoint is not None else ""
            self.metrics.breaker_transition(cluster, event.breaker.state.name.lower())

    def _route_pairs(self) -> list[tuple[str, str]]:
        """The serving routes' (name, cluster), for the stats (none before start)."""
        if self.proxy is None:
            return []
        return [(route.name, route.cluster) for route in self.proxy.state.routes.routes]

    def _endpoint_ids(self) -> dict[str, list[str]]:
        """The registry's clusters and their endpoint ids, for the stats."""
        return {name: list(members.endpoints) for name, members in self.registry.clusters.items()}

    def _resolve_route(self, method: str, host: str, path: str) -> RouteMatch:
        """ResolveRoute's question, answered by the serving route table."""
        assert self.proxy is not None
        return self.proxy.state.routes.match(host, method, path)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready only in READY, with every local app cluster healthy."""
        if self.state != "ready":
            return False, f"{self.state}: {self.state_reason}"
        # local_app: the application beside the sidecar must have an endpoint that takes
        # traffic and passes its health checks (without checks: one that takes traffic).
        for name, members in sorted(self.registry.clusters.items()):
            if members.settings.local_app and not any(
                    host.health is None or host.health.usable for host in members.hosts.usable):
                return False, f"local app cluster {name!r} has no healthy endpoint"
        return True, "config loaded, listener serving"

    def config_json(self) -> str:
        return self.config.model_dump_json(indent=2)

    def _info(self, config: SidecarConfig, version: str) -> ConfigInfo:
        return ConfigInfo(version, self.source.name, time.time(), len(config.clusters),
                          len(config.routes))

    def _version(self) -> str:
        """The serving config's version, as the registry recorded it when applied."""
        info = self.registry.config_info
        assert info is not None
        return info.version

    # ------------------------------------------------------------ reload

    async def reload(self, reason: str) -> SidecarConfig:
        """Reload the config source (see `sidecar.reload`); raises ConfigError and keeps
        the serving config when the new one is bad."""
        return await self.reloader.reload(reason)

    def _rejected(self, error: ConfigError, reason: str) -> None:
        """A reload refused a config: count it and publish it (the Reloader logged it)."""
        stage = load_stage(error)
        self.metrics.config_loaded(False, time.time(), stage)
        self.registry.bus.publish(EventKind.CONFIG_REJECTED, source=error.source, stage=stage,
                                  issues=tuple(error.issues), reason=reason)

    def _apply(self, config: SidecarConfig, version: str, reason: str) -> None:
        old = self.config
        restart_only = [name for name, before, after in (
            ("listener.address", old.listener.address, config.listener.address),
            ("admin.grpc_address", old.admin.grpc_address, config.admin.grpc_address),
            ("admin.http_address", old.admin.http_address, config.admin.http_address),
            ("admin.state_file", old.admin.state_file, config.admin.state_file),
            ("admin.auth", old.admin.auth, config.admin.auth),
            ("admin.tls", old.admin.tls, config.admin.tls),
            ("admin.max_watchers", old.admin.max_watchers, config.admin.max_watchers),
            ("admin.max_message_bytes", old.admin.max_message_bytes,
             config.admin.max_message_bytes),
        ) if before != after]
        if restart_only:
            log.warning("these fields change only on restart; the running values stay",
                        extra={"fields": restart_only})
        self.registry.apply_config(config, self._info(config, version))
        assert self.proxy is not None
        self.proxy.swap_state(DataPlaneState.build(config, self.registry))
        self.config = config
        set_level(config.logging.level)
        self.metrics.config_loaded(True, time.time())
        log.info("config loaded", extra={"reason": reason, "version": version[:12]})

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping:  # a second signal: the operator will not wait
            log.warning("second stop signal during drain: exiting now", extra={"signal": sig.name})
            logging.shutdown()
            os._exit(128 + sig.value)
        # After a Drain RPC, the drain under way goes on (its deadline holds).
        asyncio.ensure_future(self.stop(reason=f"stop signal {sig.name}"))

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload("SIGHUP"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def start_background(self, watch: bool) -> None:
        if watch and self.source.path is not None:
            self._tasks.append(asyncio.ensure_future(self.reloader.watch()))


def bound_port(server: Any) -> int:
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0



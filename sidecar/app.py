"""The composition root: builds the sidecar from a config and runs its three listeners.

One process, one event loop (uvloop when installed): the data-plane listener
(aiohttp low-level server + `Proxy`), the admin HTTP port (/metrics, /live,
/ready) and the admin gRPC server (grpc.aio). Lifecycle::

    STARTING -> SERVING -> DRAINING -> STOPPED

Reloads (file change, SIGHUP, admin RPC) render and validate the new file first;
a bad file is reported with its location and the serving config stays.
SIGTERM/SIGINT drain: /ready turns 503, the listener stops accepting, requests in
flight get up to `listener.drain_timeout` to finish, then everything closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .addresses import parse_host_port
from .config import SidecarConfig, config_version, parse_config
from .errors import ConfigError, ConfigIssue
from .logs import set_level, setup_logging
from .metrics import Metrics, make_admin_app
from .proxy import DataPlaneState, Proxy
from .registry import ConfigInfo, EventKind, Registry, RegistryEvent
from .tls import tls_issues

__all__ = ["ConfigSource", "Sidecar", "run_from_args"]

log = logging.getLogger("sidecar")


@dataclass
class ConfigSource:
    """Where the config comes from and how to (re)build it: a file plus flag overrides,
    or fixed data (embedded demo, quick mode)."""

    path: str | None = None
    data: dict[str, Any] | None = None
    ext_vars: dict[str, str] = field(default_factory=dict)
    jpath: list[str] = field(default_factory=list)
    overrides: Callable[[dict[str, Any]], dict[str, Any]] = lambda d: d
    label: str = "<flags>"

    @property
    def name(self) -> str:
        return self.path or self.label

    def load(self) -> SidecarConfig:
        """Render, override, validate. Raises ConfigError naming the file and field."""
        if self.path is not None:
            from .loader import render_data

            data = render_data(self.path, self.ext_vars, self.jpath)
        else:
            data = json.loads(json.dumps(self.data or {}))
        if not isinstance(data, dict):
            raise ConfigError(self.name, [ConfigIssue("", "the configuration must be an object")])
        config = parse_config(self.overrides(data), self.name)
        issues = tls_issues(config)
        if issues:
            raise ConfigError(self.name, issues)
        return config


class Sidecar:
    """Everything one sidecar process runs."""

    def __init__(self, source: ConfigSource, config: SidecarConfig) -> None:
        self.source = source
        self.config = config
        self.metrics = Metrics()
        self.registry = Registry(state_file=config.admin.state_file)
        self.metrics.registry = self.registry
        self.state = "starting"
        self.proxy: Proxy | None = None
        self.ports: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._web_server: web.Server | None = None
        self._admin_runner: web.AppRunner | None = None
        self._admin_grpc: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from .listener import make_server

        config = self.config
        self.registry.subscribe(self._on_registry_event)
        self.registry.apply_config(config, self._info(config, config_version(config)))
        restored = self.registry.load_state()
        if restored:
            log.info("restored registered endpoints", extra={"count": restored})
        self.metrics.config_loaded(True, time.time())
        self.proxy = Proxy(self.registry, self.metrics,
                           DataPlaneState.build(config, self.registry))
        loop = asyncio.get_running_loop()

        admin = config.admin
        self._admin_runner = web.AppRunner(make_admin_app(self.metrics, self.readiness),
                                           access_log=None)
        await self._admin_runner.setup()
        http = parse_host_port(admin.http_address, allow_zero_port=True)
        site = web.TCPSite(self._admin_runner, http.host, http.port, reuse_address=True)
        await site.start()
        self.ports["admin_http"] = _bound_port(site._server)

        from admin.server import AdminServer

        self._admin_grpc = AdminServer(self.registry, self.config_json)
        self.ports["admin_grpc"] = await self._admin_grpc.start(admin.grpc_address)

        listen = parse_host_port(config.listener.address, allow_zero_port=True)
        self._web_server = make_server(self.proxy, config.listener)
        self._server = await loop.create_server(self._web_server, listen.host, listen.port,
                                                reuse_address=True, backlog=1024)
        self.ports["listener"] = _bound_port(self._server)
        self.state = "serving"
        log.info("sidecar serving", extra={"listener": self.ports["listener"],
                                           "admin_grpc": self.ports["admin_grpc"],
                                           "admin_http": self.ports["admin_http"],
                                           "config_version": self._version()[:12],
                                           "config_source": self.source.name})

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Drain and stop. Safe to call more than once."""
        if self.state in ("draining", "stopped"):
            await self._stopped.wait()
            return
        self.state = "draining"
        timeout = self.config.listener.drain_timeout if drain_timeout is None else drain_timeout
        log.info("draining", extra={"deadline_seconds": timeout})
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()  # stop accepting; open connections stay
        if self._web_server is not None:
            # Lets each connection finish its request in flight, then closes it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._web_server.shutdown(timeout), timeout + 1)
        if self._server is not None:
            await self._server.wait_closed()
        if self.proxy is not None:
            self.proxy.close()
        if self._admin_grpc is not None:
            await self._admin_grpc.stop(1.0)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self.state = "stopped"
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def readiness(self) -> tuple[bool, str]:
        if self.state == "serving":
            return True, "config loaded, listener serving"
        return False, self.state

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

    def _on_registry_event(self, event: RegistryEvent) -> None:
        if event.kind is EventKind.ENDPOINT_REMOVED and event.endpoint and self.proxy:
            self.proxy.forget_endpoint(event.endpoint.cluster, event.endpoint.id)

    # ------------------------------------------------------------ reload

    async def reload(self, reason: str) -> SidecarConfig:
        """Load the source again and swap it in; on error keep serving the old config."""
        async with self._reload_lock:
            try:
                config = await asyncio.get_running_loop().run_in_executor(None, self.source.load)
            except ConfigError as exc:
                self.metrics.config_loaded(False, time.time())
                log.error("config rejected, keeping the serving config",
                          extra={"reason": reason, "source": exc.source,
                                 "issues": [str(i) for i in exc.issues]})
                raise
            version = config_version(config)
            if version == self._version():
                log.debug("config unchanged", extra={"reason": reason})
                return config
            self._apply(config, version, reason)
            return config

    def _apply(self, config: SidecarConfig, version: str, reason: str) -> None:
        old = self.config
        restart_only = [name for name, before, after in (
            ("listener.address", old.listener.address, config.listener.address),
            ("admin.grpc_address", old.admin.grpc_address, config.admin.grpc_address),
            ("admin.http_address", old.admin.http_address, config.admin.http_address),
            ("admin.state_file", old.admin.state_file, config.admin.state_file),
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

    async def watch_config(self) -> None:
        """Reload when anything changes in the config file's directory or a -J directory.

        Not recursive (a config beside a virtualenv must not watch thousands of files),
        and not filtered by name: a Kubernetes ConfigMap update is a rename of the
        `..data` symlink, not a write to the file. A reload that renders the same
        config is a no-op.
        """
        if self.source.path is None:
            return
        from watchfiles import awatch

        directories = {os.path.dirname(os.path.abspath(self.source.path))}
        directories.update(os.path.abspath(d) for d in self.source.jpath if os.path.isdir(d))
        async for _changes in awatch(*sorted(directories), debounce=200, recursive=False):
            with contextlib.suppress(ConfigError):
                await self.reload("file changed")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self.state == "draining":  # a second signal: the operator will not wait
            log.warning("second stop signal during drain: exiting now", extra={"signal": sig.name})
            logging.shutdown()
            os._exit(128 + sig.value)
        asyncio.ensure_future(self.stop())

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload("SIGHUP"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def start_background(self, watch: bool) -> None:
        if watch and self.source.path is not None:
            self._tasks.append(asyncio.ensure_future(self.watch_config()))


def _bound_port(server: Any) -> int:
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


# ---------------------------------------------------------------- command line


def _overrides(args: argparse.Namespace) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(data: dict[str, Any]) -> dict[str, Any]:
        if args.listen:
            data.setdefault("listener", {})["address"] = args.listen
        if args.admin_grpc:
            data.setdefault("admin", {})["grpc_address"] = args.admin_grpc
        if args.admin_http:
            data.setdefault("admin", {})["http_address"] = args.admin_http
        if args.log_level:
            data.setdefault("logging", {})["level"] = args.log_level
        if args.timeout is not None:
            data.setdefault("cluster_defaults", {})["timeout"] = args.timeout
            for cluster in data.get("clusters") or []:
                if isinstance(cluster, dict):
                    cluster["timeout"] = args.timeout
        return data

    return apply


def quick_config(upstream: str) -> dict[str, Any]:
    """`--upstream URL`: one cluster, one catch-all route."""
    return {"clusters": [{"name": "upstream", "endpoints": [{"url": upstream}]}],
            "routes": [{"name": "default", "prefix": "/", "cluster": "upstream"}]}


async def _run(args: argparse.Namespace) -> int:
    demo_runner: web.AppRunner | None = None
    overrides = _overrides(args)
    if args.config:
        source = ConfigSource(path=args.config, ext_vars=dict(args.ext_str), jpath=args.jpath,
                              overrides=overrides)
    elif args.upstream:
        source = ConfigSource(data=quick_config(args.upstream), overrides=overrides)
    else:
        from .demo import demo_app, demo_config

        demo_runner = web.AppRunner(demo_app(), access_log=None)
        await demo_runner.setup()
        site = web.TCPSite(demo_runner, "127.0.0.1", 0)
        await site.start()
        source = ConfigSource(data=demo_config(f"http://127.0.0.1:{_bound_port(site._server)}"),
                              overrides=overrides, label="<embedded>")
    try:
        config = source.load()
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{exc.source}: {issue}", file=sys.stderr)
        return 1
    setup_logging(config.logging.level)
    sidecar = Sidecar(source, config)
    try:
        await sidecar.start()
    except OSError as exc:
        log.error("cannot listen", extra={
            "error": str(exc),
            "hint": "another process has the port; choose others with --listen, "
                    "--admin-grpc, --admin-http (port 0 picks a free one)"})
        await sidecar.stop(0)
        return 1
    sidecar.install_signal_handlers()
    sidecar.start_background(watch=not args.no_watch)
    if demo_runner is not None:
        port = sidecar.ports["listener"]
        host = parse_host_port(config.listener.address, allow_zero_port=True).host
        print(f"\nsidecar demo is up. Try:\n"
              f"  curl -i http://{host}:{port}/hello\n"
              f"  curl -i 'http://{host}:{port}/api/users?id=7'    (rewritten to /v1/users)\n"
              f"  curl -s http://127.0.0.1:{sidecar.ports['admin_http']}/metrics | grep sidecar_\n"
              f"  .venv/bin/sidecarctl endpoints list\n"
              f"  .venv/bin/sidecarctl watch\n", file=sys.stderr, flush=True)
    await sidecar.wait_stopped()
    if demo_runner is not None:
        await demo_runner.cleanup()
    return 0


def tune_malloc() -> None:
    """Stop glibc from giving the heap top back after every response and taking it
    again for the next: with 64 KiB bodies that churn was a brk() per few requests,
    each followed by page faults on fresh pages. The cost is that up to 32 MiB freed
    after a burst stays mapped. No-op where glibc's mallopt is not available."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 32 * 1024 * 1024)
    mallopt(m_mmap_threshold, 4 * 1024 * 1024)


def run_from_args(args: argparse.Namespace) -> int:
    tune_malloc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(args))
    return uvloop.run(_run(args))

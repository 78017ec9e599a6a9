"""The admin HTTP port: /metrics for Prometheus, /live and /ready for the orchestrator,
and the live status page for people (`admin.status`).

aiohttp serves it in the sidecar's one event loop. `/metrics` exposes the sidecar's
collector plus the process, platform and GC collectors of prometheus-client. /metrics,
/live and /ready are open to anyone who reaches the port; the status page follows
`admin.auth`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.observe.metrics import Metrics

if TYPE_CHECKING:  # the page loads the generated API; the assembly imports it lazily
    from .status import StatusPage

__all__ = ["make_admin_app"]


def make_admin_app(metrics: Metrics, ready: Callable[[], tuple[bool, str]],
                   state: Callable[[], str] | None = None,
                   status: StatusPage | None = None) -> web.Application:
    """The admin HTTP port: /metrics, /live, /ready, and `status`'s page when given.

    `ready()` returns (is_ready, reason); /ready answers 200 when ready, 503 otherwise,
    with a JSON body: {"status": "ready" | "not_ready", "state": the lifecycle state
    from `state()` (when given), "reason": why}.
    """
    registry = CollectorRegistry()
    registry.register(metrics)
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    metrics_handler = make_aiohttp_handler(registry)

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready_handler(request: web.Request) -> web.Response:
        ok, reason = ready()
        body = {"status": "ready" if ok else "not_ready", "reason": reason}
        if state is not None:
            body["state"] = state()
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/live", live)
    app.router.add_get("/ready", ready_handler)
    if status is not None:
        status.mount(app)
    return app

"""The demo backend that `sidecar run` starts when no config is given (`make run`).

A tiny aiohttp app that echoes what it received, so a newcomer can see what the
sidecar forwarded: the rewritten path, X-Forwarded-*, Via, X-Request-Id.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["DEMO_MAX_BODY", "demo_app", "demo_config"]

# aiohttp's default client_max_size is 1 MiB: a bigger upload would get aiohttp's 413
# from the demo, through the sidecar, and look like the sidecar's limit.
DEMO_MAX_BODY = 64 * 1024 * 1024


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "service": "demo-backend",
        "method": request.method,
        "path": request.path_qs,
        "headers": dict(request.headers),
        "body_bytes": len(body),
    })


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def demo_app() -> web.Application:
    app = web.Application(client_max_size=DEMO_MAX_BODY)
    app.router.add_get("/healthz", _health)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


def demo_config(backend_url: str) -> dict[str, Any]:
    """The embedded default config: one cluster `demo` and a catch-all route to it."""
    return {
        "clusters": [{"name": "demo", "endpoints": [{"url": backend_url, "id": "demo-1"}],
                      "timeout": "5s"}],
        "routes": [
            {"name": "demo_api", "prefix": "/api", "cluster": "demo", "prefix_rewrite": "/v1",
             "methods": ["GET", "POST"]},
            {"name": "demo", "prefix": "/", "cluster": "demo"},
        ],
    }

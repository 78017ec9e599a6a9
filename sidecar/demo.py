"""The demo backend that `sidecar run` starts when no config is given (`make run`).

A tiny aiohttp app that echoes what it received, so a newcomer can see what the
sidecar forwarded: the rewritten path, X-Forwarded-*, Via, X-Request-Id.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["demo_app", "demo_config"]


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
    app = web.Application()
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

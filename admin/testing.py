"""Helpers for tests that need a real admin server (like `grpclib.testing`).

`serve()` runs an `AdminServer` on 127.0.0.1 with a free port and stops it on exit;
`load_config()` feeds a registry a parsed configuration the way a reload does.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from sidecar.config.model import SidecarConfig, config_version, parse_config
from sidecar.registry import ConfigInfo, Registry

from .server import AdminServer

__all__ = ["SAMPLE_CONFIG", "load_config", "serve"]

#: Two clusters, three endpoints: what the admin tests list, page and watch.
SAMPLE_CONFIG: dict[str, Any] = {
    "clusters": [
        {"name": "users", "endpoints": [
            {"url": "http://127.0.0.1:8081", "id": "u1"},
            {"url": "http://127.0.0.1:8082", "id": "u2", "labels": {"zone": "a"}}]},
        {"name": "orders", "endpoints": [{"url": "http://127.0.0.1:8091", "id": "o1"}]},
    ],
    "routes": [{"prefix": "/users", "cluster": "users"},
               {"prefix": "/orders", "cluster": "orders"}],
}


def load_config(registry: Registry, data: Mapping[str, Any], *, source: str = "<test>",
                load_time: float = 1_700_000_000.0) -> SidecarConfig:
    """Validate `data` and apply it to `registry` (emits CONFIG_LOADED); returns the config."""
    config = parse_config(data, source)
    info = ConfigInfo(config_version(config), source, load_time, len(config.clusters),
                      len(config.routes))
    registry.apply_config(config, info)
    return config


@contextlib.asynccontextmanager
async def serve(registry: Registry, config_json: Callable[[], str] | None = None,
                **kwargs: Any) -> AsyncIterator[tuple[AdminServer, str]]:
    """An AdminServer on 127.0.0.1:<free port>; yields (server, "127.0.0.1:port")."""
    server = AdminServer(registry, config_json or (lambda: json.dumps({})), **kwargs)
    port = await server.start("127.0.0.1:0")
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)

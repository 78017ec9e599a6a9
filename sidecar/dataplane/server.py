"""The data-plane listener, configured: `Listener` (llhttp on asyncio.Protocol) serving
`Proxy.handle` with the limits of `ListenerConfig`, which follow reloads.

Parse errors become the sidecar's JSON errors with the right status (414 for an
oversized request target, 431 for oversized or too many header fields, 408 for a
head that does not arrive in time or a body that stalls, 413 for a body over
`max_request_body_bytes`, 400 for everything else), and a handler crash a JSON 500
that says nothing about the crash: see `sidecar.dataplane.listener`. The limits the
proxy applies per request (`max_requests`, a route's body limit and rate limit) are
in `sidecar.dataplane.proxy`.
"""

from __future__ import annotations

from typing import Any

from sidecar.config.model import ListenerConfig
from sidecar.dataplane.listener import Listener
from sidecar.dataplane.proxy import DataPlaneState, Proxy

__all__ = ["listener_limits", "make_server"]


def listener_limits(listener: ListenerConfig) -> dict[str, Any]:
    """The `Listener.configure` arguments of a listener config."""
    return {
        "keepalive_timeout": listener.idle_timeout,
        "header_timeout": listener.request_header_timeout,
        "body_timeout": listener.request_body_timeout,
        "max_request_body_bytes": listener.max_request_body_bytes,
        "max_connections": listener.max_connections,
    }


def make_server(proxy: Proxy, listener: ListenerConfig) -> Listener:
    server = Listener(
        proxy.handle,
        max_uri_bytes=listener.max_uri_bytes,
        max_header_bytes=listener.max_header_bytes,
        max_headers=listener.max_headers,
        **listener_limits(listener),
    )

    def follow(state: DataPlaneState) -> None:
        server.configure(**listener_limits(state.config.listener))

    proxy.state_hooks.append(follow)  # a reload changes the limits, not the address
    return server

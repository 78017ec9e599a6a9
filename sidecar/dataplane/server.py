"""The data-plane listener, configured: `Listener` (llhttp on asyncio.Protocol) serving
`Proxy.handle` with the limits of `ListenerConfig`.

Parse errors become the sidecar's JSON errors with the right status (414 for an
oversized request target, 431 for oversized or too many header fields, 408 for a
head that does not arrive in time, 400 for everything else), and a handler crash a
JSON 500 that says nothing about the crash: see `sidecar.dataplane.listener`.
"""

from __future__ import annotations

from sidecar.config.model import ListenerConfig
from sidecar.dataplane.listener import Listener
from sidecar.dataplane.proxy import Proxy

__all__ = ["HEADER_TIMEOUT", "KEEPALIVE_TIMEOUT", "make_server"]

#: An idle keep-alive client connection closes after this (aiohttp's default, kept).
KEEPALIVE_TIMEOUT = 75.0
#: A request head must arrive whole within this, else 408.
HEADER_TIMEOUT = 60.0


def make_server(proxy: Proxy, listener: ListenerConfig) -> Listener:
    return Listener(
        proxy.handle,
        max_uri_bytes=listener.max_uri_bytes,
        max_header_bytes=listener.max_header_bytes,
        max_headers=listener.max_headers,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        header_timeout=HEADER_TIMEOUT,
    )

"""The data-plane listener: aiohttp's low-level server with the sidecar's error mapping.

aiohttp's request parser (llhttp, strict for requests) rejects malformed
messages before any handler runs. This module turns those rejections into the
sidecar's JSON errors with the right status: 414 for an oversized request
target, 431 for oversized or too many header fields, 400 for everything else;
and a handler crash into a JSON 500 that says nothing about the crash.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from sidecar.config.model import ListenerConfig
from sidecar.core.headers import new_request_id
from sidecar.dataplane.proxy import Proxy
from sidecar.dataplane.response import error_response
from sidecar.errors import BadRequest, HeadersTooLarge, InternalError, ProxyError, UriTooLong

__all__ = ["SidecarServer", "make_server"]

log = logging.getLogger("sidecar.listener")


class _Handler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        error: ProxyError
        if status == 500:
            log.error("request handler failed", exc_info=exc)
            error = InternalError()
        else:
            error = self._manager.classify(exc)  # type: ignore[union-attr]
        return error_response(error, new_request_id().decode(), keep_alive=False)


class SidecarServer(web.Server):
    """`web.Server` whose connections map parse errors to the sidecar's JSON errors."""

    def __init__(self, handler: Any, *, uri_limit: int, header_limit: int,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._uri_limit = uri_limit
        self._header_limit = header_limit

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def classify(self, exc: BaseException | None) -> ProxyError:
        if isinstance(exc, LineTooLong):
            # Which limit tripped tells a request line from a header line (the two
            # limits are kept distinct by make_server).
            return UriTooLong() if exc.args[1] == self._uri_limit else HeadersTooLarge()
        if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            return HeadersTooLarge()
        return BadRequest()


def make_server(proxy: Proxy, listener: ListenerConfig) -> SidecarServer:
    uri_limit = listener.max_uri_bytes
    header_limit = listener.max_header_bytes
    if uri_limit == header_limit:
        uri_limit += 1  # keep them distinguishable in LineTooLong
    return SidecarServer(
        proxy.handle,
        uri_limit=uri_limit,
        header_limit=header_limit,
        handler_cancellation=True,  # a client that goes away cancels its upstream request
        max_line_size=uri_limit,
        max_field_size=header_limit,
        max_headers=listener.max_headers,
        auto_decompress=False,  # bytes pass through; Content-Encoding is the app's business
        access_log=None,  # the sidecar has its own, opt-in access log
        keepalive_timeout=75.0,
    )

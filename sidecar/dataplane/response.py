"""Writing responses through aiohttp, and every aiohttp internal the data plane uses.

The proxy builds each response head as bytes in one pass (`core.headers`);
`ProxyResponse` hands that head straight to aiohttp's payload writer, so aiohttp adds
no Content-Type, Server or Date and re-serializes nothing. That needs a few private
attributes, all of them here (and the listener's in `server.py`), tested by the
suite on every aiohttp version the pin allows:

* `BaseRequest._message` (`.chunked`, `.upgrade`): framing of the request as parsed;
* `BaseRequest._payload_writer`: the connection's writer;
* `StreamResponse._req`, `._payload_writer`, `._keep_alive`, `._must_be_empty_body`,
  `._eof_sent`, `._send_headers_immediately`, and `StreamWriter._headers_buf`
  (what `write_headers()` would fill) in `ProxyResponse`.

When the listener moves off aiohttp (issue 8), this module is what changes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar.core.headers import build_response_head
from sidecar.errors import MethodNotAllowed, ProxyError

__all__ = ["ProxyResponse", "connection_field", "error_response", "is_chunked",
           "keeps_alive"]


def is_chunked(request: BaseRequest) -> bool:
    """The request body is chunked (Transfer-Encoding), as the parser saw it."""
    return bool(request._message.chunked)


def keeps_alive(request: BaseRequest) -> bool:
    """The client connection may carry another request after this one."""
    return request.keep_alive and not request._message.upgrade


class ProxyResponse(web.StreamResponse):
    """A response whose head is already serialized (by `build_response_head`).

    aiohttp's StreamResponse would add Content-Type, Server and Date defaults and
    re-serialize a multidict; a proxy must send the upstream's fields and nothing
    else, so this writes the prebuilt head and sets only the framing state.
    """

    # Set when the response was cut short after it started: what the metrics record.
    aborted_status: int | None = None

    def __init__(self, status: int, head: bytes, *, length: int | None, chunked: bool,
                 body: bytes | None = None, keep_alive: bool = True) -> None:
        super().__init__(status=status)
        self._head = head
        self._length = length
        self._chunked = chunked
        self._body_bytes = body
        if not keep_alive:
            self.force_close()
        # Complete responses go out with their body in one write.
        self._send_headers_immediately = body is None

    async def _start(self, request: BaseRequest) -> Any:
        self._req = request
        writer = self._payload_writer = request._payload_writer
        if self._keep_alive is None:
            self._keep_alive = request.keep_alive
        if not self._must_be_empty_body:
            if self._chunked:
                writer.enable_chunking()
            else:
                writer.length = self._length
        writer._headers_buf = self._head  # type: ignore[attr-defined]  # = write_headers()
        if self._send_headers_immediately:
            writer.send_headers()
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        body = self._body_bytes
        if body is not None and not data and not self._eof_sent:
            self._body_bytes = None
            data = b"" if self._must_be_empty_body else body
        await super().write_eof(data)


def connection_field(keep_alive: bool, version: bytes) -> bytes:
    """Say what happens to the client connection when HTTP's default would be wrong."""
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if version == b"1.0" else b""


def error_response(error: ProxyError, request_id: str, version: bytes = b"1.1",
                   *, keep_alive: bool = True, extra_headers: bytes = b"") -> ProxyResponse:
    """The JSON error body every sidecar-made error uses; never a library's message."""
    body = json.dumps({"error": {"code": error.code, "message": error.message,
                                 "request_id": request_id}}, separators=(",", ":")).encode()
    if isinstance(error, MethodNotAllowed):
        extra_headers += b"Allow: " + ", ".join(error.allowed).encode() + b"\r\n"
    if error.retry_after is not None:
        extra_headers += b"Retry-After: %d\r\n" % max(1, math.ceil(error.retry_after))
    framing = b"Content-Length: %d\r\n" % len(body) + connection_field(keep_alive, version)
    head = build_response_head(version, error.status, b"", (
        (b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")),
        framing=extra_headers + framing, request_id=request_id.encode())
    return ProxyResponse(error.status, head, length=len(body), chunked=False, body=body,
                         keep_alive=keep_alive)



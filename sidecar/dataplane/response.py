"""What the proxy hands the listener: a response whose head is already bytes.

The proxy builds each response head in one pass (`core.headers`); the listener
(`sidecar.dataplane.listener`) writes a complete response, head and body, in one
`transport.write`, and adds nothing (no Content-Type, Server or Date defaults).
A response whose body is still arriving is started with `Request.start` and fed
with `Request.write`; the listener frames chunks when the head said chunked.
"""

from __future__ import annotations

import json
import math

from sidecar.core.headers import build_response_head
from sidecar.errors import MethodNotAllowed, ProxyError, RateLimited

__all__ = ["ProxyResponse", "connection_field", "error_response"]


class ProxyResponse:
    """A response whose head is already serialized (by `build_response_head`).

    status: the status code (metrics, access log, empty-body rules).
    head: the status line and fields up to the blank line.
    body: the whole body, or None for a streamed one (see `Request.start`).
    chunked: a streamed body goes out in chunked framing.
    keep_alive: the head did not say `Connection: close`.
    """

    __slots__ = ("status", "head", "body", "chunked", "keep_alive", "started",
                 "aborted_status")

    def __init__(self, status: int, head: bytes, *, chunked: bool = False,
                 body: bytes | None = None, keep_alive: bool = True) -> None:
        self.status = status
        self.head = head
        self.body = body
        self.chunked = chunked
        self.keep_alive = keep_alive
        #: The head has been written (`Request.start`, or all of it: `Request.respond`).
        self.started = False
        #: Set when the response was cut short after it started: what the metrics record.
        self.aborted_status: int | None = None


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
    elif isinstance(error, RateLimited):
        extra_headers += b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\n" \
            b"RateLimit-Reset: %d\r\n" % (error.limit, error.remaining,
                                           max(1, math.ceil(error.reset)))
    if error.retry_after is not None:
        extra_headers += b"Retry-After: %d\r\n" % max(1, math.ceil(error.retry_after))
    framing = b"Content-Length: %d\r\n" % len(body) + connection_field(keep_alive, version)
    head = build_response_head(version, error.status, b"", (
        (b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")),
        framing=extra_headers + framing, request_id=request_id.encode())
    return ProxyResponse(error.status, head, body=body, keep_alive=keep_alive)

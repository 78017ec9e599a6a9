"""A request as the listener hands it to the proxy: its head, its body, the way back.

`Request` is what `sidecar.dataplane.listener` builds from llhttp's callbacks and what
`Proxy.handle` reads. It owns the request body's buffer and its flow control (the
proxy's reads wake on arrival; taking the bytes resumes reading from the client), the
body-size limit as bytes arrive, `100 Continue`, and the response's way back to the
client (`respond` for a complete response, `start`, `write` and `abort` for a
streamed one). The connection it belongs to is a `Channel`: the
listener's `_Connection`, which parses, schedules and writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final, Protocol

from sidecar.core.routing import valid_host
from sidecar.dataplane.response import ProxyResponse
from sidecar.errors import BadRequest, BodyTooLarge

__all__ = ["NO_BODY_STATUSES", "Channel", "Request", "absolute_form"]

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Responses that never have a body, whatever their header says (RFC 9112 6.3).
NO_BODY_STATUSES: Final = frozenset({204, 304})


class Channel(Protocol):
    """What a `Request` needs of its client connection (the listener's `_Connection`)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    #: Reading from the client is paused (flow control, or a request waiting its turn).
    reading_paused: bool

    def update_reading(self) -> None:
        """Pause or resume reading from the client, as the buffers now need."""

    async def send(self, data: bytes) -> None:
        """Write to the client, waiting while the transport's buffer is full."""

    def write_whole(self, request: Request, response: ProxyResponse) -> None:
        """Write a complete response (head and body, none for HEAD, 204 and 304)."""

    def abort(self) -> None:
        """Cut the connection."""


class Request:
    """One request as the listener parsed it: what the proxy reads, and the way back.

    method, raw_path (the request target as sent, decoded UTF-8 with surrogateescape
    so that encoding it back gives the same bytes), version (b"1.1" or b"1.0"),
    raw_headers (name and value bytes, as received), host (the Host field or None),
    request_id (X-Request-Id or None), content_length, chunked, keep_alive (the
    connection may carry another request; False for upgrades and during a drain),
    expect_continue, remote (the client's address).
    """

    __slots__ = ("method", "raw_path", "version", "raw_headers", "host", "request_id",
                 "traceparent", "added_fields", "task",
                 "expect_continue", "content_length", "chunked", "keep_alive", "remote",
                 "complete", "max_body", "_conn", "_chunks", "_buffered", "_waiter",
                 "_error", "_discard", "_response", "_received", "_limit_set",
                 "_last_read")

    method: str
    raw_path: str
    version: bytes
    keep_alive: bool

    def __init__(self, conn: Channel, remote: str, max_body: int, now: float) -> None:
        """A request whose head is still being parsed: the listener sets the fields it
        meets as llhttp reports them, and method, raw_path, version and keep_alive when
        the head is complete, before anyone else sees the request."""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.host: str | None = None
        self.request_id: str | None = None
        #: The client's W3C traceparent (None: absent); see `added_fields`.
        self.traceparent: str | None = None
        #: Header lines the proxy adds to the upstream request (a traceparent it starts).
        self.added_fields = b""
        #: The task answering this request (the listener's, per connection): the one a
        #: deadline cancels. None until the listener hands the request over.
        self.task: asyncio.Task[None] | None = None
        self.expect_continue = False
        self.content_length: int | None = None
        self.chunked = False
        self.remote = remote
        #: The whole body has been received (and parsed).
        self.complete = False
        #: Largest body accepted (`limit_body`); the listener's until the handler says.
        self.max_body = max_body
        self._received = 0  # body bytes received so far
        self._limit_set = False  # max_body is final: enforce it as bytes arrive
        self._last_read = now  # when body bytes last arrived (or could)
        self._conn = conn
        self._chunks: list[bytes] = []  # taken whole, never popped one by one
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._discard = False  # answered: body bytes still arriving are dropped
        self._response: ProxyResponse | None = None

    # ------------------------------------------------------------ body, for the proxy

    def limit_body(self, max_bytes: int) -> None:
        """Set the largest body this request may have (a route's override); a body
        already over it fails the next read with `BodyTooLarge`."""
        self.max_body = max_bytes
        self._check_limit()

    def _check_limit(self) -> None:
        self._limit_set = True
        if self._error is None and (
                self._received > self.max_body
                or (self.content_length or 0) > self.max_body):
            self._too_large()

    def _too_large(self) -> None:
        """Over `max_body`: drop what is buffered and what still arrives; the next read
        raises, and the connection closes after the answer."""
        self._discard = True
        self._chunks.clear()
        self._buffered = 0
        self.keep_alive = False
        self._fail(BodyTooLarge())
        conn = self._conn
        if conn.reading_paused:
            conn.update_reading()

    async def read(self) -> bytes:
        """The whole body."""
        if not self._limit_set:
            self._check_limit()
        while not self.complete:
            await self._wait()
        return self._take()

    def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in the pieces it arrives in."""
        if not self._limit_set:
            self._check_limit()
        return _BodyStream(self)

    def send_continue(self) -> None:
        """`100 Continue`, if the client asked for it and still waits (never to an
        HTTP/1.0 client: RFC 9110 15.2)."""
        if (self.expect_continue and self.version == b"1.1" and not self.complete
                and self._response is None):
            self.expect_continue = False
            self._last_read = self._conn.loop.time()
            transport = self._conn.transport
            if transport is not None and not transport.is_closing():
                transport.write(_CONTINUE)

    async def _wait(self) -> None:
        self._raise_error()
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        self._raise_error()

    def _raise_error(self) -> None:
        # A method, not `if self._error is not None` before and after the `await`: mypy
        # would narrow the attribute to None across it, and mypyc compile that in.
        error = self._error
        if error is not None:
            raise error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self) -> bytes:
        """Everything buffered, in one piece; reading from the client may resume."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        conn = self._conn
        if conn.reading_paused:
            conn.update_reading()
        return data

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    # ------------------------------------------------------------ response, for the proxy

    def respond(self, response: ProxyResponse) -> None:
        """Send a complete response now, before the handler returns.

        The proxy calls this as soon as an upstream's whole answer is in: the metrics,
        breaker and budget bookkeeping that follow (in the handler's `finally` blocks)
        then run while the client reads the answer, not before it is written, which
        takes them off the latency a client sees. The listener writes nothing more for
        it when the handler returns the same response."""
        self._response = response
        response.started = True
        self._conn.write_whole(self, response)

    async def start(self, response: ProxyResponse) -> None:
        """Write the head of a response whose body follows in `write` calls."""
        self._response = response
        response.started = True
        await self._conn.send(response.head)

    async def write(self, data: bytes) -> None:
        """A piece of a started response's body (framed as a chunk if chunked)."""
        response = self._response
        assert response is not None
        if not data or self.method == "HEAD" or response.status in NO_BODY_STATUSES:
            return
        if response.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        await self._conn.send(data)

    def abort(self) -> None:
        """Cut the client connection: a started response cannot end honestly."""
        self._conn.abort()


class _BodyStream:
    """`Request.stream()`: the body's pieces as they arrive. (A class, not an async
    generator: mypyc compiles classes.)"""

    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        self._request = request

    def __aiter__(self) -> _BodyStream:
        return self

    async def __anext__(self) -> bytes:
        request = self._request
        while True:
            if request._chunks:
                return request._take()
            if request.complete:
                raise StopAsyncIteration
            await request._wait()


def absolute_form(request: Request, target: str) -> tuple[str, str]:
    """The origin-form path and the authority of a target that is not a path.

    Absolute-form targets (RFC 9112 3.2.2) are accepted, and their authority replaces
    the request's Host field (routing, forwarding); anything else is 400."""
    lowered = target[:8].lower()
    if lowered.startswith("http://") or lowered.startswith("https://"):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        query = rest.find("?")
        if slash == -1 or (query != -1 and query < slash):
            end = query if query != -1 else len(rest)
            path = "/" + (rest[query:] if query != -1 else "")
        else:
            end = slash
            path = rest[slash:]
        authority = rest[:end]
        raw = authority.encode("utf-8", "surrogateescape")
        if not raw or not valid_host(raw):
            raise BadRequest("The request target's authority is invalid.")
        if authority != request.host:
            if request.host is None:
                request.raw_headers = [*request.raw_headers, (b"Host", raw)]
            else:
                request.raw_headers = [(name, raw if name.lower() == b"host" else value)
                                       for name, value in request.raw_headers]
            request.host = authority
        return path, authority
    raise BadRequest("The request target must be an absolute path.")

"""The data-plane listener: HTTP/1.1 on asyncio.Protocol with llhttp (httptools).

One `_Connection` per client connection parses requests with httptools'
`HttpRequestParser` (llhttp, strict) and hands each one, as a `Request`
(`sidecar.dataplane.request`, which owns its body buffer and the way back), to the
handler (`Proxy.handle`), which returns a `ProxyResponse` whose head is already
bytes. A complete response goes out in one `transport.write`.

What the listener guarantees, so the proxy does not have to:

* Strict parsing: llhttp rejects bad framing (Content-Length / Transfer-Encoding),
  chunk syntax, line endings, obs-fold, whitespace before a colon, control
  characters, bad request lines and versions; this module adds the version check
  (1.0 and 1.1 only), duplicate Host, the request-target limit (414) and the header
  field limits (431). Errors are the sidecar's JSON bodies, and close the connection.
* Keep-alive and pipelining: requests on one connection are answered in order, one
  at a time; a request that arrives while another is answered waits (and reading
  pauses until its turn). A request that ends the connection (`Connection: close`,
  HTTP/1.0 without keep-alive, an upgrade) is answered and the rest of the stream
  is never parsed. So is the `MAX_PIPELINED`-th request waiting on a connection: it
  is answered with `Connection: close` (one read of tiny pipelined requests would
  otherwise queue thousands of them), and the client retries the rest on a new
  connection, as RFC 9112 9.3.2 asks of a client that pipelines.
* Flow control both ways: request bodies are buffered up to `BODY_HIGH_WATER`,
  then the socket stops being read until the proxy has taken the bytes; response
  writes wait while the transport's buffer is full.
* A client that disconnects cancels its connection's task, and so the request in
  flight (the proxy records 499). The task is one per connection: it answers the
  requests in order, and waits for the next one while the connection is idle.
* Limits (each answered with the sidecar's JSON error, then the connection closes):
  a request body over `max_request_body_bytes` (the handler may set a route's own with
  `Request.limit_body`) is 413, by its Content-Length before anything is read, or
  counted as a streamed (chunked) body arrives: the handler's next read raises
  `BodyTooLarge`, so an upstream request fed from it is aborted, never ended as
  complete. A request head must arrive whole within `header_timeout` (408), a body
  must not stall for more than `body_timeout` between reads (408; not counted while
  reading is paused for flow control), an idle keep-alive connection closes after
  `keepalive_timeout`, and a new connection that sends nothing after `header_timeout`.
  One timer per listener sweeps all connections (every second, or a quarter of the
  shortest timeout), so no timer per request.
* `max_connections`: a connection accepted while that many are open is closed at
  once (Envoy's global connection limit): clients over the limit fail fast instead of
  waiting in the accept backlog, and the ones being served are not slowed down.
* Drain (`shutdown`): the listening socket is closed by the caller; idle
  connections close at once, connections with a request in flight answer it with
  `Connection: close` and close; whatever is left at the deadline is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, cast

import httptools

from sidecar.core.headers import name_filter, new_request_id
from sidecar.core.routing import valid_host
from sidecar.dataplane.request import NO_BODY_STATUSES, Request
from sidecar.dataplane.response import ProxyResponse, error_response
from sidecar.errors import (
    BadRequest,
    HeadersTooLarge,
    InternalError,
    ProxyError,
    RequestTimeout,
    TransferCodingNotImplemented,
    UriTooLong,
)

__all__ = ["BODY_HIGH_WATER", "MAX_PIPELINED", "Listener", "Request", "RequestTimeout"]

log = logging.getLogger("sidecar.listener")

#: A request body buffered past this pauses reading from the client.
BODY_HIGH_WATER: Final = 256 * 1024
#: ... and reading resumes once the proxy has taken it below this.
BODY_LOW_WATER: Final = 64 * 1024
#: After an answer that leaves client bytes unread (a parse error, a body never read),
#: the connection is half-closed and read (and discarded) this long before it closes:
#: closing a socket with unread input sends a reset, which can destroy the answer in
#: the client's receive buffer before the client reads it (nginx's lingering close).
LINGER_SECONDS: Final = 2.0
#: Requests parsed and not yet answered on one connection (the one being answered
#: included), at most; the last of them closes the connection (module docstring).
MAX_PIPELINED: Final = 64
#: Bytes read after a chunk header that no chunk data followed: a chunked body's
#: trailers, whose one field value httptools would buffer without end (at least the
#: head limit; a read is at most 256 KiB, so one read never passes it).
_MAX_TRAILER_BYTES: Final = 1024 * 1024
_LAST_CHUNK: Final = b"0\r\n\r\n"
# A body longer than this is not copied behind its head: head and body go to the
# transport as two buffers (uvloop sends them with one writev); a shorter one is
# cheaper to copy than to send as a second buffer.
_COPY_LIMIT: Final = 16 * 1024
_CRLF: Final = b"\r\n"
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}
# Field names the listener looks at (`name_filter`: a cheap test before lower()).
_WATCHED: Final = name_filter((b"host", b"x-request-id", b"traceparent", b"expect",
                               b"transfer-encoding", b"connection", b"content-length"))
Handler = Callable[["Request"], Awaitable[ProxyResponse]]


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp; the reason is in `_Connection._error`."""


class _Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self._handler = listener.handler
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        self._max_uri = listener.max_uri_bytes
        self._max_field = listener.max_header_bytes
        self._max_headers = listener.max_headers
        self._max_head = listener.max_uri_bytes + listener.max_headers * (
            listener.max_header_bytes + 4) + 64
        # The request whose head is being parsed (filled in by the callbacks below).
        self._head: Request | None = None
        self._url = b""
        self._in_head = False
        self._head_bytes = 0
        self._connection_field = False  # the head being parsed has a Connection field
        # Its Transfer-Encoding: a coding besides chunked, and whether chunked is last.
        self._other_codings = False
        self._chunked_last = False
        self._trailer_fields = 0  # of the request whose body is being read
        # Set by a chunk header until its data comes: what is read meanwhile may be
        # trailers (the last chunk), and is counted against _MAX_TRAILER_BYTES.
        self._maybe_trailers = False
        self._trailer_bytes = 0
        self._max_trailer_bytes = max(self._max_head, _MAX_TRAILER_BYTES)
        self._parsing: Request | None = None
        self._new: list[Request] = []  # requests whose heads this data_received parsed
        self._error: ProxyError | None = None
        # Answering.
        self._pipeline: deque[Request] = deque()
        self._active: Request | None = None
        self._task: asyncio.Task[None] | None = None  # answers requests, one at a time
        # Set while that task waits for the next request on this keep-alive connection.
        self._next_request: asyncio.Future[Request] | None = None
        self._pending_error: ProxyError | None = None
        self._ended = False  # no further request will be parsed on this connection
        self._draining = False
        self.reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.since = 0.0  # when it became idle, or when the current head began
        self._fresh = True  # no request has begun on this connection yet
        self._refused = False  # closed at accept: over max_connections
        self._linger: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        listener = self.listener
        if len(listener.connections) >= listener.max_connections:
            self._refused = self._ended = True
            listener.refused_connections += 1
            self.transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (tuple, list)) and peer:
            self._remote = str(peer[0])
        elif isinstance(peer, str):
            self._remote = peer
        self.since = self.loop.time()
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return  # the stream past a request that ended the connection: never parsed
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._parse_failed(HeadersTooLarge())
                return
        elif self._maybe_trailers:
            self._trailer_bytes += len(data)
            if self._trailer_bytes > self._max_trailer_bytes:
                self._parse_failed(HeadersTooLarge())
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._ended = True  # an upgrade (or CONNECT) is the last request
        except httptools.HttpParserError:
            if not self._ended:  # else: bytes after `Connection: close`, never read
                self._parse_failed(self._error or BadRequest())
        new = self._new
        if new:
            for request in new:
                self._dispatch(request)
            new.clear()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost cancels what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.listener.connections.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        self._ended = True
        error = ConnectionResetError("client connection lost")
        for request in (self._parsing, self._active):
            if request is not None and not request.complete:
                request._fail(error)
        self._pipeline.clear()
        self._parsing = self._active = self._head = None  # no cycles left for the collector
        task, self._task = self._task, None
        self._next_request = None
        if task is not None and not task.done():
            task.cancel()  # the client went away: so does its upstream request
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
            waiter.exception()  # retrieved here if nobody waits for it
        self.listener.connection_gone()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        now = self.since = self.loop.time()
        self._head = Request(self, self._remote, self.listener.max_request_body_bytes, now)
        self._url = b""
        self._in_head = True
        self._fresh = False
        self._head_bytes = 0
        self._connection_field = False
        self._other_codings = False
        self._trailer_fields = 0

    def on_url(self, url: bytes) -> None:
        url = self._url + url if self._url else url
        self._url = url
        if len(url) > self._max_uri:
            self._error = UriTooLong()
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._head
        if request is None:  # past the head: a trailer field of a chunked body
            self._on_trailer(name, value)
            return
        headers = request.raw_headers
        headers.append((name, value))
        if len(headers) > self._max_headers or len(name) + len(value) > self._max_field:
            self._error = HeadersTooLarge()
            raise _Stop
        if _WATCHED[name[0]] >> len(name) & 1:  # (llhttp: a name is never empty)
            lname = name.lower()
            if lname == b"host":
                if request.host is not None:
                    self._error = BadRequest("A request carries one Host header.")
                    raise _Stop
                if not valid_host(value):
                    self._error = BadRequest("The Host header is invalid.")
                    raise _Stop
                request.host = value.decode("latin-1")
            elif lname == b"x-request-id":
                request.request_id = value.decode("latin-1")
            elif lname == b"traceparent":
                request.traceparent = value.decode("latin-1")
            elif lname == b"expect":
                request.expect_continue = value.lower() == b"100-continue"
            elif lname == b"transfer-encoding":
                request.chunked = True  # llhttp accepts it only with chunked last
                coding = value.strip().lower()
                if coding != b"chunked":  # more codings than chunked: see below
                    self._other_codings = True
                    self._chunked_last = coding.rsplit(b",", 1)[-1].strip() == b"chunked"
                else:
                    self._chunked_last = True
            elif lname == b"connection":
                self._connection_field = True
            elif lname == b"content-length":
                request.content_length = int(value)  # llhttp checked: digits, one value

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field of a chunked request body is read and dropped: RFC 9110 6.5.1
        lets a recipient that removes the chunked coding discard trailers, and the body
        goes upstream with a bare last chunk (Envoy drops HTTP/1 request trailers by
        default too). Dropped, they still count against the limits on header fields."""
        self._trailer_fields += 1
        if self._trailer_fields > self._max_headers or len(name) + len(value) > self._max_field:
            self._error = HeadersTooLarge()
            raise _Stop

    def on_headers_complete(self) -> None:
        if self._other_codings and self._chunked_last:
            # `gzip, chunked`: the sidecar removes the chunked coding and would pass
            # the others off as the body's own bytes (RFC 9112 6.1: 501). Without
            # chunked last, llhttp rejects the head next (6.3: 400).
            self._error = TransferCodingNotImplemented()
            raise _Stop
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        if keep_alive and not self._connection_field:
            # llhttp keeps a request alive without a Connection field only if it is
            # HTTP/1.1 (1.0, 0.9 and 2.0 need "keep-alive"; other versions are parse
            # errors), so the version is known without get_http_version(), which
            # formats a new string per call (about 2 % of a small request).
            version = b"1.1"
        else:
            known = _VERSIONS.get(parser.get_http_version())
            if known is None:
                self._error = BadRequest("Unsupported HTTP version.")
                raise _Stop
            version = known
        self._in_head = False
        request = self._head
        assert request is not None
        self._head = None
        request.method = parser.get_method().decode("ascii")
        request.raw_path = self._url.decode("utf-8", "surrogateescape")
        request.version = version
        request.keep_alive = keep_alive and not parser.should_upgrade() and not self._draining
        self._parsing = request
        new = self._new
        new.append(request)
        if len(new) + len(self._pipeline) + (self._active is not None) >= MAX_PIPELINED:
            request.keep_alive = False  # the last one this connection takes

    def on_chunk_header(self) -> None:
        self._maybe_trailers = True  # until on_body: the last chunk has no data
        self._trailer_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._maybe_trailers = False
        request = self._parsing
        if request is None or request._discard:
            return
        request._last_read = self.loop.time()
        received = request._received = request._received + len(body)
        if received > request.max_body and request._limit_set:
            request._too_large()
            return
        request._chunks.append(body)
        request._buffered += len(body)
        request._wake()
        if request._buffered > BODY_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self._maybe_trailers = False  # (the next message begins with it off)
        request = self._parsing
        if request is None:
            return
        self._parsing = None
        request.complete = True
        request._wake()
        if not request.keep_alive:
            self._ended = True  # answer this one, then close: nothing after it is read
            raise _Stop

    # ------------------------------------------------------------ answering

    def _dispatch(self, request: Request) -> None:
        if self._active is None:
            self._active = request
            waiter = self._next_request
            if waiter is not None:  # the connection's task waits for its next request
                self._next_request = None
                waiter.set_result(request)
            else:
                self._task = self.loop.create_task(self._serve(request))
        else:
            self._pipeline.append(request)  # answered after the ones before it
            self.update_reading()

    def update_reading(self) -> None:
        """Read while the request being parsed has room and nothing waits its turn."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        parsing = self._parsing
        want_pause = bool(self._pipeline) or (
            parsing is not None and parsing._buffered > BODY_LOW_WATER)
        if want_pause != self.reading_paused:
            self.reading_paused = want_pause
            if want_pause:
                transport.pause_reading()
            else:
                transport.resume_reading()
                if parsing is not None:  # a stall starts counting from here
                    parsing._last_read = self.loop.time()

    async def _serve(self, request: Request) -> None:
        """Answer `request`, then the requests pipelined behind it, in order, then wait for
        the connection's next request: one task per connection, not per request."""
        transport = self.transport
        assert transport is not None
        while True:
            request.task = self._task  # this task: the one its deadlines cancel
            try:
                response = await self._handler(request)
            except asyncio.CancelledError:
                return  # the client went away
            except Exception as exc:  # a bug: say nothing about it to the client
                log.error("request handler failed", exc_info=exc)
                response = error_response(InternalError(), new_request_id().decode(),
                                          request.version, keep_alive=False)
                sent = request._response
                if sent is not None:
                    if sent.body is not None:  # sent whole: let it arrive, then close
                        self._ended = True
                        transport.close()
                    else:  # a streamed response, cut short: cut the connection
                        self.abort()
                    return
            if transport.is_closing():
                return
            if request._response is not None:  # streamed, or sent whole: end it
                if response.aborted_status is not None:
                    return
                if response.chunked and request.method != "HEAD" and (
                        response.status not in NO_BODY_STATUSES):
                    transport.write(_LAST_CHUNK)
            else:
                self.write_whole(request, response)
            if (not (response.keep_alive and request.keep_alive) or self._draining
                    or (request.expect_continue and not request.complete)):
                # (A client told neither 100 Continue nor the end of the exchange may
                # or may not send the body: the next bytes cannot be trusted as a head.)
                if request.complete:
                    self._ended = True
                    transport.close()
                else:
                    self._close_lingering()
                return
            if not request.complete:
                # Answered before its body was read: drop what is still to come.
                request._discard = True
                request._chunks.clear()
                request._buffered = 0
            if self._pipeline:
                request = self._active = self._pipeline.popleft()
                self.update_reading()
                continue
            self._active = None
            self.since = self.loop.time()
            if self.reading_paused:
                self.update_reading()
            if self._pending_error is not None:
                self._task = None
                self._write_error(self._pending_error)
                return
            # Idle: this task waits for the connection's next request (`_dispatch`)
            # instead of ending: a future per request costs less than a task per request.
            # A closing connection cancels it here (`connection_lost`).
            waiter = self._next_request = self.loop.create_future()
            try:
                request = await waiter
            except asyncio.CancelledError:
                return

    def write_whole(self, request: Request, response: ProxyResponse) -> None:
        """A complete response in one write (the body not for HEAD, 204 or 304)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = response.body
        if body and request.method != "HEAD" and response.status not in NO_BODY_STATUSES:
            if len(body) > _COPY_LIMIT:
                transport.writelines((response.head, body))  # uvloop: one writev
            else:
                transport.write(response.head + body)
        else:
            transport.write(response.head)

    async def send(self, data: bytes) -> None:
        """Write, and wait while the transport's buffer is over its high-water mark."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client connection lost")
        transport.write(data)
        if self._write_paused:
            waiter = self._drain_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None

    def _parse_failed(self, error: ProxyError) -> None:
        """A request that cannot be parsed: answered in its turn with `error`, then the
        connection closes."""
        self._ended = True
        transport = self.transport
        assert transport is not None
        if not self.reading_paused:
            self.reading_paused = True
            transport.pause_reading()
        parsing = self._parsing
        if parsing is not None and parsing not in self._new:
            # Its head was valid and it is being answered: its body fails instead.
            parsing.keep_alive = False
            parsing._fail(BadRequest())
            return
        # Requests whose head came in the same read as the error are answered first
        # only if they are whole.
        self._new = [r for r in self._new if r.complete]
        if self._active is None and not self._new:
            self._write_error(error)
        else:
            self._pending_error = error

    def _write_error(self, error: ProxyError) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        response = error_response(error, new_request_id().decode(), keep_alive=False)
        transport.write(response.head + (response.body or b""))
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close after the answer, reading and dropping what the client still sends
        (for up to `LINGER_SECONDS`, or until it closes its side)."""
        self._ended = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)

    # ------------------------------------------------------------ listener's sweeps

    def sweep(self, now: float) -> None:
        """Close an idle connection past its idle timeout; answer 408 to a head that
        takes too long, and to a body that stalls."""
        if self._ended:
            return
        listener = self.listener
        transport = self.transport
        assert transport is not None
        parsing = self._parsing
        if parsing is not None and not parsing.complete:
            if (self.reading_paused or now - parsing._last_read <= listener.body_timeout
                    or (parsing.expect_continue and parsing.version == b"1.1")):
                return  # flow control holds it, or the client waits for 100 Continue
            if parsing._discard or parsing is not self._active:
                self._ended = True  # answered already, or nobody reads it: just close
                transport.close()
            elif parsing._error is None:
                parsing.keep_alive = False
                parsing._fail(RequestTimeout("The request body did not arrive in time."))
            return
        if self._active is not None:
            return
        if self._in_head:
            if now - self.since > listener.header_timeout:
                self._parse_failed(RequestTimeout())
        elif now - self.since > (listener.header_timeout if self._fresh
                                 else listener.keepalive_timeout):
            self._ended = True
            transport.close()

    def drain(self) -> None:
        """Stop taking requests: close now if idle, else after the answer in flight."""
        self._draining = True
        transport = self.transport
        if transport is None:
            return
        if self._active is None:
            self._ended = True
            transport.close()
            return
        for request in (self._active, *self._pipeline):
            request.keep_alive = False  # its head says `Connection: close`
        self._pipeline.clear()

    def abort(self) -> None:
        self._ended = True
        if self.transport is not None:
            self.transport.abort()


class Listener:
    """The protocol factory for `loop.create_server`, and the drain of its connections."""

    def __init__(self, handler: Handler, *, max_uri_bytes: int = 8190,
                 max_header_bytes: int = 8190, max_headers: int = 100,
                 keepalive_timeout: float = 75.0, header_timeout: float = 10.0,
                 body_timeout: float = 30.0, max_request_body_bytes: int = 1 << 62,
                 max_connections: int = 10_000, sweep_interval: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.max_uri_bytes = max_uri_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._fixed_sweep = sweep_interval
        self.configure(keepalive_timeout=keepalive_timeout, header_timeout=header_timeout,
                       body_timeout=body_timeout,
                       max_request_body_bytes=max_request_body_bytes,
                       max_connections=max_connections)
        #: Connections closed at accept because `max_connections` were open.
        self.refused_connections = 0
        self.connections: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_gone: asyncio.Event | None = None

    def configure(self, *, keepalive_timeout: float, header_timeout: float,
                  body_timeout: float, max_request_body_bytes: int,
                  max_connections: int) -> None:
        """Take new limits (a reload): connections and requests already open keep the
        body limit they started with; timeouts apply from the next sweep."""
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_request_body_bytes = max_request_body_bytes
        self.max_connections = max_connections
        self.sweep_interval = self._fixed_sweep or min(
            1.0, max(0.01, min(keepalive_timeout, header_timeout, body_timeout) / 4))

    def __call__(self) -> _Connection:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)
        return _Connection(self)

    def _sweep(self) -> None:
        if not self.connections:
            self._sweeper = None  # the next connection starts it again
            return
        now = self.loop.time()
        for conn in tuple(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(self.sweep_interval, self._sweep)

    def connection_gone(self) -> None:
        if not self.connections and self._all_gone is not None:
            self._all_gone.set()

    async def shutdown(self, timeout: float) -> None:
        """Drain: idle connections close now, the others after their answer in flight;
        at `timeout` whatever is left is aborted."""
        self._all_gone = asyncio.Event()
        for conn in tuple(self.connections):
            conn.drain()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout)
            except TimeoutError:
                for conn in tuple(self.connections):
                    conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

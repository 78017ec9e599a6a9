"""One upstream HTTP/1.1 connection: an asyncio.Protocol fed through llhttp (httptools).

Theory of operation
-------------------
A connection serves one request at a time. Its state (``UpstreamConnection._state``)
moves like this; every transition is in this file::

    IDLE --roundtrip()--> WAIT_HEAD --final head parsed--> BODY --body complete--> DONE
      ^                       |  (1xx interim heads are dropped;                     |
      |                       |   HEAD/204/304 jump straight to DONE)                |
      +------------- release(reusable) by the pool <---------------------------------+
    any state --connection_lost / abort() / close()--> CLOSED   (never used again)

* The parser's callbacks run inside ``data_received``; they only append to lists and
  flip flags. The one waiting coroutine (request() waiting for the head, read() waiting
  for body bytes, or the body sender waiting for ``resume_writing``) is woken once, at the
  end of ``data_received``, so a response that arrives whole in one read is already
  ``complete`` when the caller resumes: it can answer with ``body()`` and one write.
* Errors never travel through futures (no "exception was never retrieved"): they are
  stored on the connection (before the head) or on the response (after it) and raised
  by the coroutine that looks. The waiter future only ever gets ``None``.
* A response is reusable only if it reached DONE, llhttp says keep-alive (HTTP/1.1
  without ``Connection: close``, or HTTP/1.0 with ``keep-alive``, and not
  close-delimited), and the request body went out completely.
* llhttp cannot be told that a response answers HEAD (httptools only lets
  ``on_headers_complete`` skip the body for upgrades), so for HEAD we stop it by raising
  from the callback and start a fresh parser: bytes after that head in the same read are
  dropped; anything arriving later is unsolicited and fails the connection.
* llhttp has no EOF call in httptools either, so close-delimited bodies (no
  Content-Length, not chunked) are completed here on a clean EOF; an EOF or reset
  anywhere else in a body is ``UpstreamReset``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Final, Protocol, cast

import httptools

from sidecar.errors import ProxyError, UpstreamProtocolError, UpstreamReset

__all__ = ["HIGH_WATER", "MAX_BYTES_BEFORE_HEAD", "MAX_RESPONSE_FIELDS",
           "MAX_RESPONSE_FIELD_BYTES", "StaleConnection", "UpstreamConnection",
           "UpstreamResponse"]

# Buffered response-body bytes above HIGH_WATER pause reading from the upstream socket.
# read() hands out everything buffered at once (fewer awaits and writes downstream), so
# the buffer is empty after it and reading resumes: the low-water mark is zero.
HIGH_WATER: Final = 256 * 1024
# A bytes body up to this size is sent with the head in one write (one syscall, one
# segment); above it the copy costs more than the extra write.
_COALESCE: Final = 64 * 1024
_SMALL_CHUNK: Final = 16 * 1024
# What an upstream may send before its answer is known, so that a broken or hostile
# one cannot grow the sidecar's memory without end (Envoy: 100 fields and 60 KiB by
# default; nginx: one 4-8 KiB buffer). Past them the response is a 502.
#: Fields in one response head, and in its trailers.
MAX_RESPONSE_FIELDS: Final = 200
#: Bytes of field names and values in one response head, and in its trailers: summed
#: once each is complete (a field count per field is cheaper; MAX_BYTES_BEFORE_HEAD
#: bounds a head meanwhile).
MAX_RESPONSE_FIELD_BYTES: Final = 64 * 1024
#: Bytes read while waiting for the final head (whole reads, interim heads included):
#: this bounds what llhttp's caller buffers for a field that never ends.
MAX_BYTES_BEFORE_HEAD: Final = 1024 * 1024

IDLE: Final = 0
WAIT_HEAD: Final = 1
BODY: Final = 2
DONE: Final = 3
CLOSED: Final = 4

_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class StaleConnection(UpstreamReset):
    """A reused connection ended before any byte of the response: the request never
    reached the application, so it may be replayed on a fresh connection (the proxy's
    attempt loop decides; the pool never retries by itself)."""


def _field_bytes(fields: list[tuple[bytes, bytes]]) -> int:
    """Bytes of the names and values of `fields`."""
    total = 0
    for name, value in fields:
        total += len(name) + len(value)
    return total


class _StopParser(Exception):
    """Raised from a parser callback to stop llhttp (HEAD) or reject a message."""


class _Pool(Protocol):
    """What a connection needs from its pool."""

    def _checkin(self, conn: UpstreamConnection, reusable: bool) -> None: ...
    def _lost(self, conn: UpstreamConnection) -> None: ...


class UpstreamResponse:
    """A response whose head has been parsed; the body follows through read() or body().

    ``headers`` are the raw (name, value) pairs in order as received (trailers of a
    chunked body are dropped). ``content_length`` and ``chunked`` describe the framing
    the upstream announced; HEAD, 204 and 304 responses have no body whatever they say.
    """

    __slots__ = ("status", "reason", "headers", "keep_alive", "complete", "_conn",
                 "_chunks", "_buffered", "_error", "_framing")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool, conn: UpstreamConnection) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.complete = False
        self._conn: UpstreamConnection | None = conn
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._error: ProxyError | None = None
        self._framing: tuple[int | None, bool] | None = None  # computed on first use

    def _scan_framing(self) -> tuple[int | None, bool]:
        # Lazy: the proxy's fast path (complete -> body()) never needs it.
        length: int | None = None
        chunked = False
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)  # llhttp has already rejected anything but digits
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        self._framing = (length, chunked)
        return self._framing

    @property
    def content_length(self) -> int | None:
        return (self._framing or self._scan_framing())[0]

    @property
    def chunked(self) -> bool:
        return (self._framing or self._scan_framing())[1]

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet handed out by read() (for tests and metrics)."""
        return self._buffered

    def body(self) -> bytes:
        """The whole body (what read() has not taken yet); only once ``complete``."""
        if self._error is not None:
            raise self._fresh_error()
        if not self.complete:
            raise RuntimeError("body() called before the response is complete; use read()")
        chunks = self._chunks
        if not chunks:
            return b""
        if len(chunks) == 1:
            return chunks[0]
        data = b"".join(chunks)
        self._chunks = [data]
        return data

    async def read(self) -> bytes:
        """The next piece of the body (everything buffered so far); b"" at its end."""
        while True:
            if self._error is not None:
                raise self._fresh_error()
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn.reading_paused:
                    conn.resume_reading()
                return data
            if self.complete:
                return b""
            conn = self._conn
            if conn is None:  # released or aborted before the end
                raise UpstreamReset()
            await conn.wait()

    def release(self) -> None:
        """Give the connection back: pooled if reusable, else closed. Idempotent."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.release(self.keep_alive and conn.reusable())

    def abort(self) -> None:
        """Close the connection now (client gone, timeout...). Idempotent."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abort()

    def _fresh_error(self) -> ProxyError:
        # A new instance per raise, so tracebacks do not pile up on one object.
        err = self._error
        assert err is not None
        fresh = type(err)()
        fresh.__cause__ = err.__cause__
        return fresh

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} complete={self.complete}>"


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; see the module docstring for states."""

    __slots__ = ("_pool", "_loop", "_transport", "_parser", "_state", "_resp", "_headers",
                 "_trailers", "_reason", "_waiter", "_error", "_head_request",
                 "_restart_parser", "_got_bytes", "_reused", "_body_sent", "_write_paused",
                 "reading_paused", "idle_since", "in_use", "_bytes_before_head")

    _transport: asyncio.Transport

    def __init__(self, pool: _Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._state = IDLE
        self._resp: UpstreamResponse | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []  # sink for trailers, dropped
        self._reason = b""
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None  # failure before a final head
        self._head_request = False
        self._restart_parser = False
        self._got_bytes = False
        self._reused = False
        self._body_sent = False
        self._write_paused = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.in_use = False
        self._bytes_before_head = 0  # read since the request went out (a limit)

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # no Nagle delay on small requests (asyncio and uvloop set it too)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._state == WAIT_HEAD:
            self._bytes_before_head += len(data)
            if self._bytes_before_head > MAX_BYTES_BEFORE_HEAD:
                self._fail(UpstreamProtocolError(), _StopParser("response head too large"))
                return
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS as exc:
            if self._restart_parser:  # we stopped llhttp after a HEAD response's head
                self._restart_parser = False
                self._parser = httptools.HttpResponseParser(self)
            elif (self._state == DONE and self._resp is not None
                  and self._resp.status in (204, 304)):
                # A 204 or 304 ends at its blank line whatever follows (RFC 9112 6.3):
                # the response stands, the connection is not used again. Bytes after
                # any other complete response mean its framing was wrong: it fails.
                self._state = CLOSED
                self._transport.abort()
            else:
                self._fail(UpstreamProtocolError(), exc)
                return
        if self._resp is not None:  # a head or body bytes: worth waking the caller
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost decides what EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        prev = self._state
        self._state = CLOSED
        self._write_paused = False
        if prev == IDLE:
            self._pool._lost(self)
        elif prev == WAIT_HEAD:
            if self._error is None:
                if self._reused and not self._got_bytes:
                    self._error = StaleConnection()
                else:
                    self._error = UpstreamReset()
                    self._error.__cause__ = exc
        elif prev == BODY:
            resp = self._resp
            assert resp is not None
            if resp._error is None:
                if exc is None and resp.content_length is None and not resp.chunked:
                    resp.complete = True  # close-delimited body: a clean EOF ends it
                else:
                    resp._error = UpstreamReset()
                    resp._error.__cause__ = exc
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # ------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        if self._state != WAIT_HEAD:  # a response nobody asked for, or bytes after one
            raise _StopParser("unsolicited response")
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # may arrive in pieces when split across reads

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 17 and name.lower() == b"transfer-encoding" and (
                value.strip().lower() != b"chunked"):
            # A coding besides chunked (gzip, identity, ...): the client would get the
            # coded bytes as the body once chunked is removed. nginx answers 502 too.
            raise _StopParser("transfer coding other than chunked")
        headers = self._headers
        headers.append((name, value))
        if len(headers) > MAX_RESPONSE_FIELDS:  # their bytes: at the end of the head
            raise _StopParser("too many response fields")

    def on_headers_complete(self) -> None:
        if _field_bytes(self._headers) > MAX_RESPONSE_FIELD_BYTES:
            raise _StopParser("response head too large")
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101 or status < 100:  # no upgrades through this client
                raise _StopParser(f"status {status}")
            return  # interim (100 Continue, 103 Early Hints): dropped, llhttp reads on
        if status > 599:
            raise _StopParser(f"status {status}")
        resp = UpstreamResponse(status, self._reason, self._headers,
                                parser.should_keep_alive(), self)
        self._resp = resp
        self._trailers.clear()
        self._headers = self._trailers
        if self._head_request:
            resp.complete = True
            self._state = DONE
            self._restart_parser = True
            raise _StopParser("HEAD")  # llhttp would otherwise expect Content-Length bytes
        self._state = BODY

    def on_body(self, data: bytes) -> None:
        resp = self._resp
        assert resp is not None
        resp._chunks.append(data)
        resp._buffered += len(data)
        if resp._buffered > HIGH_WATER and not self.reading_paused:
            self.pause_reading()

    def on_message_complete(self) -> None:
        trailers = self._trailers
        if trailers and _field_bytes(trailers) > MAX_RESPONSE_FIELD_BYTES:
            raise _StopParser("response trailers too large")
        if self._state == BODY:  # in WAIT_HEAD this is the end of an interim response
            self._state = DONE
            assert self._resp is not None
            self._resp.complete = True

    # ------------------------------------------------------------ used by the pool

    def usable(self) -> bool:
        return self._state == IDLE and not self._transport.is_closing()

    def reusable(self) -> bool:
        return self._state == DONE and self._body_sent and not self._transport.is_closing()

    async def roundtrip(self, head: bytes, body: bytes | AsyncIterator[bytes] | None,
                        chunked: bool, head_request: bool) -> UpstreamResponse:
        """Send one request; return once the final response head is parsed."""
        self._state = WAIT_HEAD
        self._head_request = head_request
        self._got_bytes = False
        self._bytes_before_head = 0
        transport = self._transport
        if body is None:
            transport.write(head)
            self._body_sent = True
        elif isinstance(body, bytes):
            if chunked:
                body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            if len(body) <= _COALESCE:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
            self._body_sent = True
        else:
            self._body_sent = False
            transport.write(head)
            await self._send_stream(body, chunked)
        while self._resp is None:
            err = self._error
            if err is not None:
                self.abort()
                raise err
            await self.wait()
        resp = self._resp
        if resp._error is not None:  # broken right behind the head: fail before the caller
            self.abort()             # commits to anything
            raise resp._fresh_error()
        return resp

    async def _send_stream(self, body: AsyncIterator[bytes], chunked: bool) -> None:
        transport = self._transport
        chunks = body.__aiter__()
        try:
            # Check before pulling each chunk: a final response already (e.g. 413) or a
            # dead connection stops the upload, without reading more from the caller's
            # source; the connection is then not reused (body incomplete).
            while not self._answered() and not transport.is_closing():
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if not chunk:
                    continue
                if not chunked:
                    transport.write(chunk)
                elif len(chunk) <= _SMALL_CHUNK:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    transport.write(b"%x\r\n" % len(chunk))
                    transport.write(chunk)
                    transport.write(b"\r\n")
                while self._write_paused and not self._answered() and self._state != CLOSED:
                    await self.wait()
            else:
                return  # stopped early (the loop condition failed, no break)
        except BaseException:
            self.abort()
            raise
        if chunked and not transport.is_closing():
            transport.write(b"0\r\n\r\n")
        self._body_sent = True

    def _answered(self) -> bool:
        # A method, not `self._resp is None` inline: mypy narrows an attribute across an
        # `await`, and mypyc compiles the narrowed type into a check that then fails.
        return self._resp is not None

    async def wait(self) -> None:
        """Sleep until data, a state change or writability; cancellation kills the conn."""
        fut = self._loop.create_future()
        self._waiter = fut
        try:
            await fut
        except BaseException:  # cancelled: the response can no longer be trusted
            self.abort()
            raise

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, err: ProxyError, cause: BaseException) -> None:
        err.__cause__ = cause
        resp = self._resp
        if resp is not None:
            resp._error = err
            resp.complete = False  # framing is broken: what came before is suspect too
        elif self._error is None:
            self._error = err
        if self._state != IDLE:  # an idle one stays IDLE so connection_lost unpools it
            self._state = CLOSED
        self._transport.abort()  # connection_lost follows, and will not override err
        self._wake()

    def pause_reading(self) -> None:
        self.reading_paused = True
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def make_idle(self, now: float) -> None:
        self._state = IDLE
        self._resp = None
        self._reused = True
        self.idle_since = now
        if self.reading_paused:  # an idle connection must notice the peer closing
            self.resume_reading()

    def release(self, reusable: bool) -> None:
        if self.in_use:
            self.in_use = False
            self._pool._checkin(self, reusable)

    def abort(self) -> None:
        """Drop the connection now; its response, if unfinished, reads as reset."""
        if self._state != CLOSED:
            self._state = CLOSED
            resp = self._resp
            if resp is not None and not resp.complete and resp._error is None:
                resp._error = UpstreamReset()
            self._transport.abort()
        self.release(False)

    def close(self) -> None:
        """Close an idle connection gracefully."""
        self._state = CLOSED
        self._transport.close()

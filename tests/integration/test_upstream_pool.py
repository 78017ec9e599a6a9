"""UpstreamPool against real servers on 127.0.0.1:0.

Crafted and malformed responses come from a raw ``asyncio.start_server`` that writes
exact bytes (``RawServer``); ordinary behaviour uses an aiohttp app in ``TestServer``.
Nothing sleeps to wait for state: tests await events set by the server or the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.core.addresses import UpstreamAddress
from sidecar.dataplane.connection import (
    HIGH_WATER,
    MAX_BYTES_BEFORE_HEAD,
    MAX_RESPONSE_FIELD_BYTES,
    MAX_RESPONSE_FIELDS,
    StaleConnection,
)
from sidecar.dataplane.pool import UpstreamPool, UpstreamResponse
from sidecar.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamReset

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GET = b"GET /x HTTP/1.1\r\nHost: upstream\r\n\r\n"
OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
PEERS = web.AppKey("peers", list)


class RawServer:
    """A TCP server running ``handler`` per connection; counts connections, closes all."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()  # set whenever a connection's handler finishes
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # __aexit__ cancelled us; ending normally avoids a 3.11 start_server log
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass
            self._tasks.discard(task)
            self.closed.set()

    def pool(self, **kwargs: object) -> UpstreamPool:
        kwargs.setdefault("connect_timeout", 5.0)
        return UpstreamPool(UpstreamAddress("http", "127.0.0.1", self.port), **kwargs)  # type: ignore[arg-type]


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def replies(*responses: bytes, then_close: bool = False) -> Handler:
    """A handler answering successive requests (bodiless) with the given bytes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_head(reader)
            writer.write(response)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection until the client closes it

    return handler


async def read_all(resp: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return b"".join(parts)


@pytest.fixture
async def aio_server() -> AsyncIterator[TestServer]:
    """An aiohttp upstream: /echo returns the request body's sha256, length and framing."""
    peers: list[object] = []  # the client address of each /hello request

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=b"hello world", headers={"X-Case": "Kept"})

    async def echo(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        framing = "chunked" if request.headers.get("Transfer-Encoding") else "length"
        return web.Response(text=f"{digest.hexdigest()} {size} {framing}")

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(64):
            await resp.write(bytes([i]) * 65536)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/hello", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/big", big)
    app[PEERS] = peers
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def aio_pool(server: TestServer, **kwargs: object) -> UpstreamPool:
    kwargs.setdefault("connect_timeout", 5.0)
    assert server.port is not None
    return UpstreamPool(UpstreamAddress("http", "127.0.0.1", server.port), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- reuse


async def test_sequential_requests_reuse_one_connection(aio_server: TestServer) -> None:
    pool = aio_pool(aio_server)
    try:
        for _ in range(3):
            resp = await pool.request(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (resp.status, resp.reason, resp.keep_alive) == (200, b"OK", True)
            assert resp.complete and resp.body() == b"hello world"
            assert (b"X-Case", b"Kept") in resp.headers  # raw names as received
            assert pool.active_count == 1
            resp.release()
            resp.release()  # idempotent
            assert (pool.active_count, pool.idle_count) == (0, 1)
        peers = aio_server.app[PEERS]
        assert len(peers) == 3 and len(set(peers)) == 1
    finally:
        pool.close()


async def test_raw_reuse_counts_accepted_connections() -> None:
    async with RawServer(replies(OK_HI, OK_HI)) as server:
        pool = server.pool()
        for _ in range(2):
            resp = await pool.request(GET)
            assert resp.body() == b"hi"
            resp.release()
        assert server.connections == 1
        pool.close()


async def test_concurrent_requests_use_separate_connections() -> None:
    both = asyncio.Event()
    arrived = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        await read_head(reader)
        arrived += 1
        if arrived == 2:
            both.set()
        await both.wait()  # hold the answer until both requests are in flight
        writer.write(OK_HI)
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        r1, r2 = await asyncio.gather(pool.request(GET), pool.request(GET))
        assert server.connections == 2 and pool.active_count == 2
        r1.release()
        r2.release()
        assert pool.idle_count == 2
        pool.close()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
], ids=["connection-close", "http10"])
async def test_response_not_kept_alive_is_not_reused(response: bytes) -> None:
    async with RawServer(replies(response)) as server:
        pool = server.pool()
        for _ in range(2):
            resp = await pool.request(GET)
            assert resp.complete and resp.body() == b"hi" and not resp.keep_alive
            resp.release()
            assert pool.idle_count == 0
        assert server.connections == 2
        pool.close()


async def test_http10_keep_alive_is_reused() -> None:
    response = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
    async with RawServer(replies(response, response)) as server:
        pool = server.pool()
        for _ in range(2):
            resp = await pool.request(GET)
            assert resp.keep_alive and resp.body() == b"hi"
            resp.release()
        assert server.connections == 1
        pool.close()


async def test_unfinished_response_is_closed_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await reader.read()  # never finishes the body; returns when the client closes

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert not resp.complete
        resp.release()
        await server.closed.wait()  # the client closed it
        assert (pool.idle_count, pool.active_count) == (0, 0)
        pool.close()


# ---------------------------------------------------------------- bodies


async def test_chunked_body_in_many_small_writes() -> None:
    pieces = [bytes([65 + i % 26]) * (i + 1) for i in range(200)]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\nX-Trailer: t\r\n\r\n")
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert resp.chunked and resp.content_length is None
        assert await read_all(resp) == b"".join(pieces)
        assert resp.complete and resp.headers == [(b"Transfer-Encoding", b"chunked")]
        resp.release()
        assert pool.idle_count == 1
        pool.close()


async def test_close_delimited_body_ends_at_eof() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(5):
            writer.write(b"part%d " % i)
            await writer.drain()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert not resp.keep_alive and resp.content_length is None and not resp.chunked
        assert await read_all(resp) == b"part0 part1 part2 part3 part4 "
        assert resp.complete
        resp.release()
        assert pool.idle_count == 0
        pool.close()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789",
], ids=["content-length", "chunked-between-chunks", "chunked-mid-chunk"])
async def test_truncated_body_raises_reset(response: bytes) -> None:
    async with RawServer(replies(response, then_close=True)) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        with pytest.raises(UpstreamReset):
            while await resp.read():
                pass
        assert not resp.complete
        with pytest.raises(UpstreamReset):
            resp.body()
        resp.release()
        assert (pool.idle_count, pool.active_count) == (0, 0)
        pool.close()


async def test_head_request_has_no_body_and_connection_is_reused() -> None:
    head_response = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with RawServer(replies(head_response, OK_HI)) as server:
        pool = server.pool()
        resp = await pool.request(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", head_request=True)
        assert resp.complete and resp.body() == b"" and resp.content_length == 1000
        assert await resp.read() == b""
        resp.release()
        resp = await pool.request(GET)
        assert resp.body() == b"hi"
        resp.release()
        assert server.connections == 1
        pool.close()


async def test_head_request_against_aiohttp(aio_server: TestServer) -> None:
    pool = aio_pool(aio_server)
    for _ in range(2):
        resp = await pool.request(b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n", head_request=True)
        assert resp.status == 200 and resp.complete and resp.body() == b""
        assert resp.content_length == 11
        resp.release()
    assert pool.idle_count == 1
    pool.close()


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(status: int) -> None:
    response = b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status
    async with RawServer(replies(response, OK_HI)) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert resp.status == status and resp.complete and resp.body() == b""
        resp.release()
        resp = await pool.request(GET)
        assert resp.body() == b"hi"
        resp.release()
        assert server.connections == 1
        pool.close()


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "separate-writes"])
async def test_interim_responses_are_skipped(split: bool) -> None:
    parts = [b"HTTP/1.1 100 Continue\r\n\r\n",
             b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
             b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        for part in parts if split else [b"".join(parts)]:
            writer.write(part)
            await writer.drain()
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert (resp.status, resp.reason) == (201, b"Created")
        assert resp.headers == [(b"Content-Length", b"2")]
        assert await read_all(resp) == b"hi"
        resp.release()
        assert pool.idle_count == 1
        pool.close()


# ---------------------------------------------------------------- malformed


MALFORMED = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\nhi\r\n0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "bad-status-code": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "bad-protocol": b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "status-out-of-range": b"HTTP/1.1 600 Nope\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "control-char-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "control-char-in-name": b"HTTP/1.1 200 OK\r\nX\x01A: b\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "negative-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
    "chunk-size-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffffff\r\nhi\r\n0\r\n\r\n",
    "chunk-missing-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"2\r\nhiX0\r\n\r\n",
    "garbage-after-response": OK_HI + b"GARBAGE",
    "second-unsolicited-response": OK_HI + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "data-after-connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                   b"Content-Length: 2\r\n\r\nhiMORE",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                           b"Connection: upgrade\r\n\r\n",
    "too-many-fields": b"HTTP/1.1 200 OK\r\n"
                       + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_RESPONSE_FIELDS))
                       + b"Content-Length: 0\r\n\r\n",
    "fields-too-large": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * (MAX_RESPONSE_FIELD_BYTES // 2)
                        + b"\r\nX-B: " + b"b" * (MAX_RESPONSE_FIELD_BYTES // 2)
                        + b"\r\nContent-Length: 0\r\n\r\n",
    "trailers-too-large": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
                          + b"".join(b"T-%d: v\r\n" % i for i in range(MAX_RESPONSE_FIELDS + 1))
                          + b"\r\n",
}


@pytest.mark.parametrize("response", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_response_raises_protocol_error(response: bytes) -> None:
    async with RawServer(replies(response)) as server:
        pool = server.pool()
        with pytest.raises(UpstreamProtocolError):
            resp = await pool.request(GET)
            try:  # errors found after the head surface on read
                await read_all(resp)
            finally:
                resp.release()
        await server.closed.wait()  # the client dropped the connection
        assert (pool.idle_count, pool.active_count) == (0, 0)
        pool.close()


async def test_a_head_at_the_limits_is_accepted() -> None:
    fields = MAX_RESPONSE_FIELDS - 1  # and Content-Length
    size = (MAX_RESPONSE_FIELD_BYTES - len(b"Content-Length0")) // fields
    value = b"v" * (size - len(b"X-000"))
    head = b"".join(b"X-%03d: %b\r\n" % (i, value) for i in range(fields))
    async with RawServer(replies(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 0\r\n\r\n")
                         ) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert len(resp.headers) == MAX_RESPONSE_FIELDS and resp.status == 200
        resp.release()
        pool.close()


async def test_a_head_that_never_ends_fails_once_it_passes_the_read_limit() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        chunk = b"a" * 65536
        for _ in range(MAX_BYTES_BEFORE_HEAD // len(chunk) + 2):
            writer.write(chunk)
            await writer.drain()
        await reader.read()

    async with RawServer(endless) as server:
        pool = server.pool()
        with pytest.raises(UpstreamProtocolError):
            await pool.request(GET)
        await server.closed.wait()  # the client dropped the connection
        assert (pool.idle_count, pool.active_count) == (0, 0)
        pool.close()


async def test_garbage_after_complete_response_fails_it() -> None:
    """Garbage arriving after the response was parsed (but before release) fails it."""
    sent = asyncio.Event()
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK_HI)
        await go.wait()
        writer.write(b"GARBAGE")
        await writer.drain()
        sent.set()
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        assert resp.complete
        go.set()
        await server.closed.wait()  # the client aborted the connection on the garbage
        assert sent.is_set()
        assert not resp.complete
        with pytest.raises(UpstreamProtocolError):
            await resp.read()
        resp.release()
        assert pool.idle_count == 0
        pool.close()


async def test_unsolicited_bytes_on_idle_connection_drop_it() -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK_HI)
        await go.wait()
        writer.write(OK_HI)  # nobody asked
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        resp.release()
        assert pool.idle_count == 1
        go.set()
        await server.closed.wait()
        assert pool.idle_count == 0
        pool.close()


# ---------------------------------------------------------------- stale connections


def serve_once_then_drop_next() -> Handler:
    """First connection: answer one request, then read the next and close unanswered."""
    first = True

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal first
        if first:
            first = False
            await read_head(reader)
            writer.write(OK_HI)
            await read_head(reader)  # the reused connection's request: drop it
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # RST, as a server whose keep-alive timer fired
        await replies(OK_HI)(reader, writer)

    return handler


async def test_stale_connection_raises_stale_and_fresh_connection_serves() -> None:
    async with RawServer(serve_once_then_drop_next()) as server:
        pool = server.pool()
        (await pool.request(GET)).release()
        with pytest.raises(StaleConnection):
            await pool.request(GET)
        resp = await pool.request(GET, fresh=True)
        assert resp.body() == b"hi"
        resp.release()
        assert server.connections == 2 and pool.idle_count == 1
        pool.close()


async def test_stale_connection_is_a_reset_to_callers_that_do_not_retry() -> None:
    async with RawServer(serve_once_then_drop_next()) as server:
        pool = server.pool()
        (await pool.request(GET)).release()
        with pytest.raises(UpstreamReset):
            await pool.request(GET)
        assert server.connections == 1
        assert (pool.idle_count, pool.active_count) == (0, 0)
        pool.close()


async def test_stale_bytes_body_is_replayed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            await serve_once_then_drop_next()(reader, writer)
            return
        head = await read_head(reader)
        assert b"Content-Length: 5" in head
        body = await reader.readexactly(5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        await reader.read()

    post = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    async with RawServer(handler) as server:
        pool = server.pool()
        (await pool.request(GET)).release()
        with pytest.raises(StaleConnection):
            await pool.request(post, b"hello")
        resp = await pool.request(post, b"hello", fresh=True)
        assert resp.body() == b"hello"
        resp.release()
        pool.close()


async def test_stale_streamed_body_raises_stale_and_pool_does_not_retry() -> None:
    async with RawServer(serve_once_then_drop_next()) as server:
        pool = server.pool()
        (await pool.request(GET)).release()
        head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        with pytest.raises(StaleConnection):
            await pool.request(head, _chunks([b"abc"]), chunked=True)
        assert server.connections == 1
        assert (pool.idle_count, pool.active_count) == (0, 0)
        pool.close()


async def test_reset_on_fresh_connection_is_never_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)  # close without answering

    async with RawServer(handler) as server:
        pool = server.pool()
        with pytest.raises(UpstreamReset) as caught:
            await pool.request(GET)
        assert not isinstance(caught.value, StaleConnection)  # a fresh one is never stale
        assert server.connections == 1
        pool.close()


async def test_reset_after_response_bytes_is_never_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK_HI)
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nCont")  # then close mid-head

    async with RawServer(handler) as server:
        pool = server.pool()
        (await pool.request(GET)).release()
        with pytest.raises(UpstreamReset) as caught:
            await pool.request(GET)
        assert not isinstance(caught.value, StaleConnection)  # response bytes had come
        assert server.connections == 1
        pool.close()


async def test_idle_connection_closed_by_peer_is_not_used() -> None:
    async with RawServer(replies(OK_HI, then_close=True)) as server:
        pool = server.pool()
        (await pool.request(GET)).release()
        await server.closed.wait()
        # Whether or not the client has seen the FIN yet, the request succeeds on a
        # fresh connection: discarded on checkout, or reported stale and replayed.
        try:
            resp = await pool.request(GET)
        except StaleConnection:
            resp = await pool.request(GET, fresh=True)
        assert resp.body() == b"hi"
        resp.release()
        assert server.connections == 2
        pool.close()


# ---------------------------------------------------------------- connecting


async def test_connect_refused_is_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        pool = UpstreamPool(UpstreamAddress("http", "127.0.0.1", port), connect_timeout=5.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamConnectError) as info:
            await pool.request(GET)
        assert loop.time() - started < 0.5
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert pool.active_count == 0
        pool.close()


async def test_dns_failure_is_connect_error() -> None:
    pool = UpstreamPool(UpstreamAddress("http", "nonexistent.invalid", 80), connect_timeout=2.0)
    with pytest.raises(UpstreamConnectError):
        await pool.request(GET)
    pool.close()


async def test_connect_timeout_is_connect_error_not_timeout() -> None:
    """A TLS handshake the server never answers: the connect timeout covers it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # swallow the ClientHello, never answer

    async with RawServer(handler) as server:
        pool = UpstreamPool(UpstreamAddress("https", "127.0.0.1", server.port),
                            connect_timeout=0.05, ssl_context=ssl.create_default_context())
        with pytest.raises(UpstreamConnectError) as info:
            await pool.request(GET)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert pool.active_count == 0
        pool.close()


async def test_caller_timeout_during_connect_stays_a_timeout() -> None:
    """The caller's own deadline is not turned into UpstreamConnectError, nothing leaks."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with RawServer(handler) as server:
        pool = UpstreamPool(UpstreamAddress("https", "127.0.0.1", server.port),
                            connect_timeout=5.0, ssl_context=ssl.create_default_context())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request(GET)
        await server.closed.wait()
        assert pool.active_count == 0
        pool.close()


async def test_tls_failure_is_connect_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(OK_HI)  # plain HTTP where a ServerHello was expected
        await reader.read()

    async with RawServer(handler) as server:
        pool = UpstreamPool(UpstreamAddress("https", "127.0.0.1", server.port),
                            connect_timeout=5.0)
        with pytest.raises(UpstreamConnectError):
            await pool.request(GET)
        pool.close()


async def test_closed_pool_refuses_new_connections() -> None:
    async with RawServer(replies(OK_HI)) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        pool.close()
        resp.release()  # in use during close(): closed on release, not pooled
        assert pool.idle_count == 0
        await server.closed.wait()
        with pytest.raises(UpstreamConnectError):
            await pool.request(GET)


# ---------------------------------------------------------------- request bodies


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_streamed_request_body_arrives_intact(aio_server: TestServer,
                                                    chunked: bool) -> None:
    parts = [os.urandom(n) for n in (1, 0, 100, 70_000, 0, 3, 1_000_000, 17)] * 4
    data = b"".join(parts)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(data)
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n"
    pool = aio_pool(aio_server)
    resp = await pool.request(head, _chunks(parts), chunked=chunked)
    expected = f"{hashlib.sha256(data).hexdigest()} {len(data)} "
    assert (await read_all(resp)).decode() == expected + ("chunked" if chunked else "length")
    resp.release()
    assert pool.idle_count == 1
    pool.close()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_bytes_request_body(aio_server: TestServer, chunked: bool) -> None:
    pool = aio_pool(aio_server)
    for data in (b"", b"small", os.urandom(200_000)):
        framing = (b"Transfer-Encoding: chunked" if chunked
                   else b"Content-Length: %d" % len(data))
        head = b"POST /echo HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n"
        resp = await pool.request(head, data, chunked=chunked)
        text = (await read_all(resp)).decode()
        assert text.startswith(f"{hashlib.sha256(data).hexdigest()} {len(data)} ")
        resp.release()
    assert pool.idle_count == 1
    pool.close()


async def test_early_response_stops_request_body() -> None:
    """A server that answers 413 without reading: sending stops, the connection is not kept."""
    produced = 0

    async def endless() -> AsyncGenerator[bytes, None]:
        nonlocal produced
        while True:
            produced += 1
            yield b"x" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.Event().wait()  # never read the body; cancelled at teardown

    async with RawServer(handler) as server:
        pool = server.pool()
        head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = endless()
        resp = await pool.request(head, body, chunked=True)
        assert resp.status == 413 and resp.complete
        resp.release()
        await body.aclose()
        assert pool.idle_count == 0  # request body incomplete: not reusable
        assert produced < 10_000
        pool.close()


async def test_failing_request_body_aborts_connection() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise RuntimeError("client went away")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        with pytest.raises(RuntimeError):
            await pool.request(head, broken(), chunked=True)
        await server.closed.wait()
        assert (pool.active_count, pool.idle_count) == (0, 0)
        pool.close()


# ---------------------------------------------------------------- flow control


async def test_large_response_read_slowly_pauses_reading() -> None:
    size = 8 * 1024 * 1024
    payload = os.urandom(size)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        view = memoryview(payload)
        for offset in range(0, size, 65536):
            writer.write(view[offset:offset + 65536])
            await writer.drain()
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        conn = resp._conn
        assert conn is not None
        async with asyncio.timeout(10):
            # Each turn of the loop delivers what has arrived (no method is patched to
            # signal the pause: compiled, the connection calls its own methods directly).
            while not conn.reading_paused:
                await asyncio.sleep(0)
        # The caller has not read: buffering stopped at the mark.
        assert HIGH_WATER < resp.buffered <= HIGH_WATER + 1024 * 1024
        digest = hashlib.sha256()
        total = 0
        while chunk := await resp.read():
            assert len(chunk) <= HIGH_WATER + 1024 * 1024
            digest.update(chunk)
            total += len(chunk)
            await asyncio.sleep(0)  # a slow consumer: let the producer run between reads
        assert total == size and digest.digest() == hashlib.sha256(payload).digest()
        resp.release()
        assert pool.idle_count == 1
        pool.close()


async def test_big_streamed_response_from_aiohttp(aio_server: TestServer) -> None:
    pool = aio_pool(aio_server)
    resp = await pool.request(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.chunked
    body = await read_all(resp)
    assert body == b"".join(bytes([i]) * 65536 for i in range(64))
    resp.release()
    assert pool.idle_count == 1
    pool.close()


# ---------------------------------------------------------------- cancellation and idle


async def test_cancelled_while_reading_body_closes_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                while await resp.read():
                    pass
        await server.closed.wait()
        assert (pool.active_count, pool.idle_count) == (0, 0)
        resp.release()
        resp.abort()
        with pytest.raises(UpstreamReset):
            await resp.read()
        pool.close()


async def test_cancelled_while_waiting_for_head_closes_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    async with RawServer(handler) as server:
        pool = server.pool()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request(GET)
        await server.closed.wait()
        assert (pool.active_count, pool.idle_count) == (0, 0)
        pool.close()


async def test_abort_closes_connection() -> None:
    async with RawServer(replies(OK_HI)) as server:
        pool = server.pool()
        resp = await pool.request(GET)
        resp.abort()
        resp.abort()
        await server.closed.wait()
        assert (pool.active_count, pool.idle_count) == (0, 0)
        pool.close()


async def test_idle_sweep_closes_old_connections() -> None:
    async with RawServer(replies(OK_HI)) as server:
        pool = server.pool(idle_timeout=60.0)
        (await pool.request(GET)).release()
        loop = asyncio.get_running_loop()
        pool.sweep_idle(now=loop.time() + 30)
        assert pool.idle_count == 1
        pool.sweep_idle(now=loop.time() + 61)
        assert pool.idle_count == 0
        await server.closed.wait()
        pool.close()


async def test_idle_timer_closes_connection() -> None:
    async with RawServer(replies(OK_HI)) as server:
        pool = server.pool(idle_timeout=0.01)
        (await pool.request(GET)).release()
        await server.closed.wait()  # closed by the pool's own timer
        assert pool.idle_count == 0
        pool.close()


async def test_max_idle_bounds_pool() -> None:
    both = asyncio.Event()
    arrived = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        await read_head(reader)
        arrived += 1
        if arrived == 2:
            both.set()
        await both.wait()
        writer.write(OK_HI)
        await reader.read()

    async with RawServer(handler) as server:
        pool = server.pool(max_idle=1)
        responses = await asyncio.gather(pool.request(GET), pool.request(GET))
        for resp in responses:
            resp.release()
        assert pool.idle_count == 1
        await server.closed.wait()
        pool.close()

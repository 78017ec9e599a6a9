"""UpstreamConnection and UpstreamPool bookkeeping, driven without sockets.

A ``FakeTransport`` records writes and flow-control calls; the tests feed response
bytes to ``data_received`` and check the states and what the caller sees, like a
playbook: events in, decisions out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.core.addresses import UpstreamAddress
from sidecar.dataplane.connection import (
    BODY,
    CLOSED,
    HIGH_WATER,
    IDLE,
    StaleConnection,
    UpstreamConnection,
    UpstreamResponse,
)
from sidecar.dataplane.pool import UpstreamPool
from sidecar.errors import UpstreamProtocolError, UpstreamReset

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


class FakeTransport:
    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.paused = False
        self.pauses = 0
        self.pause_on_write = False  # call pause_writing() after the next write but the head

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.writes.append(bytes(data))
        if self.pause_on_write and len(self.writes) > 1:
            self.pause_on_write = False
            self.conn.pause_writing()

    def is_closing(self) -> bool:
        return self.closing

    def _lose(self, exc: Exception | None = None) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, exc)

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)


class FakePool:
    def __init__(self) -> None:
        self.checkins: list[bool] = []
        self.lost: list[UpstreamConnection] = []

    def _checkin(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.checkins.append(reusable)
        if reusable:
            conn.make_idle(0.0)
        else:
            conn.abort()

    def _lost(self, conn: UpstreamConnection) -> None:
        self.lost.append(conn)


def connect() -> tuple[UpstreamConnection, FakeTransport, FakePool]:
    pool = FakePool()
    conn = UpstreamConnection(pool, asyncio.get_running_loop())
    transport = FakeTransport(conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.in_use = True
    return conn, transport, pool


async def start(conn: UpstreamConnection, head: bytes = GET, body: Any = None, *,
                chunked: bool = False, head_request: bool = False,
                ) -> asyncio.Task[UpstreamResponse]:
    task = asyncio.ensure_future(conn.roundtrip(head, body, chunked, head_request))
    await asyncio.sleep(0)  # let it write and park on its waiter
    return task


async def test_whole_response_in_one_read_is_complete_on_return() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    assert transport.sent == GET
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    resp = await task
    assert (resp.status, resp.reason, resp.complete, resp.keep_alive) == (200, b"OK", True, True)
    assert resp.headers == [(b"Content-Length", b"5"), (b"X-A", b"1")]
    assert resp.body() == b"hello" and resp.content_length == 5 and not resp.chunked
    resp.release()
    resp.release()
    assert pool.checkins == [True] and conn._state == IDLE


async def test_response_fed_one_byte_at_a_time() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    data = (b"HTTP/1.1 404 Not Found Here\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: dropped\r\n\r\n")
    for i in range(len(data)):
        conn.data_received(data[i:i + 1])
    resp = await task
    assert resp.reason == b"Not Found Here" and resp.chunked
    assert resp.headers == [(b"Transfer-Encoding", b"chunked")]  # trailers never leak in
    assert await resp.read() == b"abcde"
    assert await resp.read() == b""
    resp.release()
    assert pool.checkins == [True]


async def test_head_is_delivered_before_the_body() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
    resp = await task
    assert not resp.complete
    reader = asyncio.ensure_future(resp.read())
    await asyncio.sleep(0)
    assert not reader.done()
    conn.data_received(b"abc")
    assert await reader == b"abc"
    conn.data_received(b"def")
    assert await resp.read() == b"def" and resp.complete
    with pytest.raises(RuntimeError):
        UpstreamResponse(200, b"", [], True, conn).body()  # incomplete: use read()


async def test_interim_responses_then_final() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(0)
    assert not task.done()
    conn.data_received(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                       b"HTTP/1.1 204 No Content\r\n\r\n")
    resp = await task
    assert resp.status == 204 and resp.headers == [] and resp.complete


async def test_head_response_restarts_parser_and_connection_stays_usable() -> None:
    conn, transport, pool = connect()
    task = await start(conn, b"HEAD / HTTP/1.1\r\n\r\n", head_request=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    resp = await task
    assert resp.complete and resp.body() == b"" and resp.chunked
    resp.release()
    assert pool.checkins == [True]
    conn.in_use = True
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await task).body() == b"ok"


async def test_unsolicited_bytes_while_idle_close_the_connection() -> None:
    conn, transport, pool = connect()
    conn.in_use = False
    conn.make_idle(0.0)
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.aborted
    await asyncio.sleep(0)
    assert pool.lost == [conn] and conn._state == CLOSED


async def test_bytes_after_complete_response_fail_it() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    resp = await task
    assert resp.complete
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not resp.complete and transport.aborted
    with pytest.raises(UpstreamProtocolError):
        resp.body()
    resp.release()
    assert pool.checkins == [False]


async def test_close_delimited_body_completes_on_clean_eof_only() -> None:
    for exc, complete in ((None, True), (ConnectionResetError(), False)):
        conn, transport, pool = connect()
        task = await start(conn)
        conn.data_received(b"HTTP/1.1 200 OK\r\n\r\npartial")
        resp = await task
        assert conn._state == BODY and not resp.keep_alive
        conn.connection_lost(exc)
        assert resp.complete is complete
        if complete:
            assert resp.body() == b"partial"
        else:
            with pytest.raises(UpstreamReset):
                await resp.read()


async def test_stale_only_for_reused_connection_without_response_bytes() -> None:
    conn, transport, pool = connect()
    conn._reused = True
    task = await start(conn)
    conn.connection_lost(None)
    with pytest.raises(StaleConnection):
        await task
    assert pool.checkins == [False]

    conn, transport, pool = connect()
    conn._reused = True
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 2")
    conn.connection_lost(None)
    with pytest.raises(UpstreamReset):
        await task


async def test_reading_pauses_above_high_water_and_resumes_on_read() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (HIGH_WATER * 4))
    resp = await task
    piece = b"x" * (64 * 1024)
    while not transport.paused:
        conn.data_received(piece)
    assert resp.buffered == HIGH_WATER + len(piece) and conn.reading_paused
    assert len(await resp.read()) == HIGH_WATER + len(piece)
    assert not transport.paused and resp.buffered == 0
    assert transport.pauses == 1


async def test_idle_connection_is_resumed_when_pooled() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (HIGH_WATER + 1)
                       + b"x" * (HIGH_WATER + 1))
    resp = await task
    assert resp.complete and transport.paused
    resp.release()
    assert pool.checkins == [True] and not transport.paused


async def test_request_body_waits_for_drain() -> None:
    conn, transport, pool = connect()
    produced: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            produced.append(i)
            yield b"abc"

    transport.pause_on_write = True  # the first body write fills the buffer
    task = asyncio.ensure_future(conn.roundtrip(GET, body(), True, False))
    for _ in range(5):
        await asyncio.sleep(0)
    assert produced == [0] and transport.sent == GET + b"3\r\nabc\r\n"
    conn.resume_writing()
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.sent == GET + b"3\r\nabc\r\n" * 3 + b"0\r\n\r\n"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    resp = await task
    resp.release()
    assert pool.checkins == [True]


async def test_early_response_while_blocked_on_drain_stops_body() -> None:
    conn, transport, pool = connect()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        conn.pause_writing()
        yield b"def"
        raise AssertionError("not reached")

    task = asyncio.ensure_future(conn.roundtrip(GET, body(), False, False))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    conn.data_received(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    resp = await task
    assert resp.status == 413
    resp.release()
    assert pool.checkins == [False]  # body not fully sent: not reusable


@pytest.mark.parametrize(("body", "chunked", "wire"), [
    (b"hello", False, b"hello"),
    (b"hello", True, b"5\r\nhello\r\n0\r\n\r\n"),
    (b"", True, b"0\r\n\r\n"),
])
async def test_bytes_body_goes_out_in_one_write(body: bytes, chunked: bool, wire: bytes) -> None:
    conn, transport, pool = connect()
    await start(conn, GET, body, chunked=chunked)
    assert transport.writes == [GET + wire]
    conn.abort()


async def test_cancelled_wait_aborts_and_checks_in_once() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert transport.aborted and pool.checkins == [False]
    conn.abort()
    assert pool.checkins == [False]


async def test_abort_marks_unfinished_response_as_reset() -> None:
    conn, transport, pool = connect()
    task = await start(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    resp = await task
    resp.abort()
    resp.abort()
    assert pool.checkins == [False]
    with pytest.raises(UpstreamReset):
        await resp.read()
    await asyncio.sleep(0)  # connection_lost after our abort must not "complete" anything
    assert not resp.complete and conn._state == CLOSED


async def test_framing_properties() -> None:
    conn, _, _ = connect()

    def resp(*headers: tuple[bytes, bytes]) -> UpstreamResponse:
        return UpstreamResponse(200, b"", list(headers), True, conn)

    assert resp((b"content-LENGTH", b"12")).content_length == 12
    assert resp((b"Transfer-Encoding", b"gzip, Chunked ")).chunked
    assert not resp((b"Transfer-Encoding", b"chunked, gzip")).chunked
    assert resp().content_length is None and not resp().chunked


async def test_pool_checkout_discards_dead_idle_connections() -> None:
    pool = UpstreamPool(UpstreamAddress("http", "127.0.0.1", 9), connect_timeout=1.0)
    pool._loop = asyncio.get_running_loop()
    alive, alive_t, _ = connect()
    dead, dead_t, _ = connect()
    for conn in (alive, dead):
        conn._pool = pool
        conn.in_use = False
        conn.make_idle(0.0)
    pool._idle = [alive, dead]
    dead_t.closing = True  # the peer closed it; connection_lost not yet delivered
    assert pool._checkout() is alive
    assert (pool.active_count, pool.idle_count) == (1, 0)
    alive.release(True)
    assert pool.idle_count == 1
    pool.close()
    assert alive_t.closing and pool.idle_count == 0


async def test_pool_sweep_keeps_young_and_reschedules() -> None:
    pool = UpstreamPool(UpstreamAddress("http", "127.0.0.1", 9), connect_timeout=1.0,
                        idle_timeout=10.0, max_idle=2)
    loop = pool._loop = asyncio.get_running_loop()
    conns = []
    for _ in range(3):
        conn, transport, _ = connect()
        conn._pool = pool
        pool._active += 1
        conns.append((conn, transport))
    now = loop.time()
    for conn, _ in conns:
        conn.release(True)
    assert pool.idle_count == 2 and conns[2][1].aborted  # max_idle
    assert pool._sweep_handle is not None
    pool._idle[0].idle_since = now - 20  # pretend the oldest is stale
    pool._sweep_handle.cancel()
    pool._on_sweep()
    assert pool.idle_count == 1 and conns[0][1].closing and not conns[1][1].closing
    assert pool._sweep_handle is not None  # one timer, rescheduled for the survivor
    assert pool._sweep_handle.when() == pytest.approx(pool._idle[0].idle_since + 10.0)
    pool.close()
    assert pool._sweep_handle is None and conns[1][1].closing

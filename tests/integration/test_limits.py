"""Data-plane limits through a real sidecar and real clients on 127.0.0.1: request body
size (413), slow clients (408, idle close), max_connections, max_requests (503) and the
local rate limit (429). Timeouts are tiny and the tests wait on the connection closing
(bounded), never on a sleep."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.app import Sidecar

from .conftest import Gate, raw_request, url_of

KIB = 1024


def parse(reply: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


def error_code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


class RawUpstream:
    """An upstream that records the raw bytes of each connection and whether it ended,
    and answers 200 to a request it received whole (Content-Length or chunked)."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.closed: list[asyncio.Event] = []
        self.got_bytes = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        closed = asyncio.Event()
        self.received.append(data)
        self.closed.append(closed)
        try:
            while chunk := await reader.read(65536):
                data += chunk
                self.got_bytes.set()
                head, sep, body = bytes(data).partition(b"\r\n\r\n")
                if sep and (body.endswith(b"0\r\n\r\n") or b"content-length: 0" in head.lower()):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


StartSidecar = Callable[..., Awaitable[Sidecar]]


async def sidecar_for(start_sidecar: StartSidecar, url: str, listener: dict[str, Any] | None = None,
                      **route: Any) -> int:
    sidecar = await start_sidecar({
        "listener": listener or {},
        "clusters": [{"name": "app", "endpoints": [{"url": url}],
                      "retry": {"enabled": False}}],
        "routes": [{"prefix": "/", "cluster": "app", **route}]})
    return sidecar.ports["listener"]


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    chunks = []
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        except ConnectionError:
            pass
    return b"".join(chunks)


# ------------------------------------------------------------------ request body size


async def test_content_length_over_the_route_limit_is_413_before_reading(start_upstream,
                                                                        start_sidecar):
    server, seen = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), max_request_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    reply = await read_until_closed(reader)  # answered, then closed: no body was sent
    writer.close()
    status, fields, body = parse(reply)
    assert status == 413 and b" 100 " not in reply
    assert error_code(body) == "body_too_large"
    assert fields[b"connection"] == b"close"
    assert seen.requests == []


async def test_body_within_the_limit_passes(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), max_request_body_bytes=1000)
    reply = await raw_request(port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                                    b"Connection: close\r\n\r\n" + b"a" * 1000)
    assert parse(reply)[0] == 200
    assert seen.requests[0]["body"] == b"a" * 1000
    chunked = b"".join(b"64\r\n" + b"b" * 100 + b"\r\n" for _ in range(10)) + b"0\r\n\r\n"
    reply = await raw_request(port, b"POST /y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                    b"Connection: close\r\n\r\n" + chunked)
    assert parse(reply)[0] == 200
    assert seen.requests[1]["body"] == b"b" * 1000


@pytest.mark.parametrize("where", ["route", "listener"])
async def test_streamed_chunked_body_over_the_limit_is_413_and_the_upstream_aborted(
        start_sidecar, where):
    upstream = RawUpstream()
    url = await upstream.start()
    limit = 256 * KIB
    if where == "route":
        port = await sidecar_for(start_sidecar, url, max_request_body_bytes=limit)
    else:
        port = await sidecar_for(start_sidecar, url, {"max_request_body_bytes": limit})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%b\r\n" % (16 * KIB, b"z" * 16 * KIB)
    writer.write(piece * 4)  # 64 KiB: under the limit, streamed upstream
    await writer.drain()
    await asyncio.wait_for(upstream.got_bytes.wait(), 5)  # the upload has begun
    reply = b""
    try:
        for _ in range(64):  # 1 MiB more, in pieces: over the limit on the way
            writer.write(piece)
            await writer.drain()
            if reader.at_eof():
                break
    except ConnectionError:
        pass
    reply = await read_until_closed(reader)
    writer.close()
    status, fields, body = parse(reply)
    assert status == 413 and error_code(body) == "body_too_large"
    assert fields[b"connection"] == b"close"
    # The upstream connection was cut, never ended as a complete chunked body.
    await asyncio.wait_for(upstream.closed[0].wait(), 5)
    assert not upstream.received[0].endswith(b"0\r\n\r\n")
    assert len(upstream.received) == 1  # not retried
    await upstream.close()


async def test_route_may_allow_more_than_the_listener(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), {"max_request_body_bytes": 100},
                             max_request_body_bytes=200 * KIB)
    body = b"q" * (150 * KIB)
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    reply = await raw_request(port, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                    b"Connection: close\r\n\r\n" + chunked)
    assert parse(reply)[0] == 200
    assert seen.requests[0]["body"] == body


# ------------------------------------------------------------------ slow clients


async def test_half_a_head_is_408_then_closed(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), {"request_header_timeout": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
    reply = await read_until_closed(reader)
    writer.close()
    status, fields, body = parse(reply)
    assert status == 408 and error_code(body) == "request_timeout"
    assert fields[b"connection"] == b"close"
    assert seen.requests == []


async def test_connection_that_sends_nothing_is_closed(start_upstream, start_sidecar):
    server, _ = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), {"request_header_timeout": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await read_until_closed(reader) == b""
    writer.close()


@pytest.mark.parametrize("chunked", [False, True])
async def test_stalled_body_is_408_then_closed(start_sidecar, chunked):
    upstream = RawUpstream()
    url = await upstream.start()
    port = await sidecar_for(start_sidecar, url, {"request_body_timeout": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if chunked:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
    else:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
    reply = await read_until_closed(reader)  # the rest never comes
    writer.close()
    status, fields, body = parse(reply)
    assert status == 408 and error_code(body) == "request_timeout"
    assert fields[b"connection"] == b"close"
    for data, closed in zip(upstream.received, upstream.closed, strict=True):
        await asyncio.wait_for(closed.wait(), 5)
        assert not data.endswith(b"0\r\n\r\n")
    await upstream.close()


async def test_idle_keep_alive_connection_closes_after_idle_timeout(start_upstream,
                                                                   start_sidecar):
    server, _ = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), {"idle_timeout": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    reply = await read_until_closed(reader)  # the body, then the close
    writer.close()
    assert b"HTTP/1.1" not in reply


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def test_500_slow_clients_do_not_stop_others_and_memory_stays_bounded(
        start_upstream, start_sidecar, client):
    server, _ = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server))
    before = rss_bytes()
    slow = []
    for i in range(500):  # half a head, or a head and a trickle of body: held open
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " if i % 2 else
                     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab")
        slow.append(writer)
    for _ in range(20):
        async with client.get(f"http://127.0.0.1:{port}/ok") as resp:
            assert resp.status == 200
    grown = rss_bytes() - before  # the clients' side is in this process too
    print(f"RSS growth with 500 slow clients: {grown / 2**20:.1f} MiB")
    assert grown < 64 * 2**20
    for writer in slow:
        writer.close()


# ------------------------------------------------------------------ connection and request caps


async def test_connections_over_max_connections_are_closed_at_accept(start_upstream,
                                                                    start_sidecar):
    server, _ = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server), {"max_connections": 2})
    held = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        held.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await read_until_closed(reader) == b""  # closed without an answer
    writer.close()
    held.pop()[1].close()  # one closes: a new connection is served again
    async with asyncio.timeout(5):
        while True:
            reply = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                            b"Connection: close\r\n\r\n")
            if reply:
                break
    assert reply.startswith(b"HTTP/1.1 200")
    held.pop()[1].close()


async def test_requests_over_max_requests_get_503_overloaded(start_upstream, start_sidecar):
    gate = Gate()
    server, _ = await start_upstream(gate.app())
    port = await sidecar_for(start_sidecar, url_of(server), {"max_requests": 1})
    parked = asyncio.ensure_future(raw_request(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    await asyncio.wait_for(gate.arrived.wait(), 5)
    reply = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, fields, body = parse(reply)
    assert status == 503 and error_code(body) == "overloaded"
    assert fields[b"retry-after"] == b"1"
    gate.release.set()
    assert parse(await asyncio.wait_for(parked, 5))[0] == 200


# ------------------------------------------------------------------ rate limiting


async def test_rate_limit_answers_429_with_its_headers(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server),
                             rate_limit={"requests_per_second": 0.5, "burst": 2})
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert [parse(await raw_request(port, request))[0] for _ in range(2)] == [200, 200]
    status, fields, body = parse(await raw_request(port, request))
    assert status == 429 and error_code(body) == "rate_limited"
    assert fields[b"ratelimit-limit"] == b"2"
    assert fields[b"ratelimit-remaining"] == b"0"
    assert 1 <= int(fields[b"ratelimit-reset"]) <= 4
    assert 1 <= int(fields[b"retry-after"]) <= 2
    assert len(seen.requests) == 2


async def test_rate_limit_by_header_keeps_one_bucket_per_value(start_upstream, start_sidecar):
    server, _ = await start_upstream()
    port = await sidecar_for(start_sidecar, url_of(server),
                             rate_limit={"requests_per_second": 0.01, "burst": 1,
                                         "key": "header:X-User"})

    async def status(user: bytes) -> int:
        return parse(await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-User: %b\r\n"
                                             b"Connection: close\r\n\r\n" % user))[0]

    assert [await status(b"a"), await status(b"a"), await status(b"b")] == [200, 429, 200]


async def test_limits_follow_reloads(start_upstream, start_sidecar, tmp_path: Path):
    server, _ = await start_upstream()
    path = tmp_path / "sidecar.json"

    def write(route: dict[str, Any]) -> None:
        path.write_text(json.dumps({
            "listener": {"address": "127.0.0.1:0", "max_request_body_bytes": 10},
            "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
            "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
            "routes": [{"prefix": "/", "cluster": "app", **route}]}))

    write({})
    sidecar = await start_sidecar({}, path=str(path))
    port = sidecar.ports["listener"]
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nConnection: close\r\n\r\n" \
        + b"x" * 20
    get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert parse(await raw_request(port, post))[0] == 413
    write({"max_request_body_bytes": 20, "rate_limit": {"requests_per_second": 0.01,
                                                        "burst": 1}})
    await sidecar.reload("test")
    assert parse(await raw_request(port, post))[0] == 200
    assert parse(await raw_request(port, get))[0] == 429
    write({"max_request_body_bytes": 20})
    await sidecar.reload("test")
    assert parse(await raw_request(port, get))[0] == 200

"""The data-plane listener (llhttp on asyncio.Protocol): pipelining, flow control,
timeouts, drain, and the defects of the aiohttp-based listener it replaced."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar.dataplane.listener import BODY_HIGH_WATER, MAX_PIPELINED, Listener, Request
from sidecar.dataplane.response import ProxyResponse
from sidecar.errors import BadRequest

from .conftest import Gate, raw_request, url_of, wait_until

Handler = Callable[[Request], Awaitable[ProxyResponse]]


def plain(request: Request, text: bytes, status: int = 200) -> ProxyResponse:
    keep = request.keep_alive
    head = (b"HTTP/%b %d OK\r\nContent-Length: %d\r\n%b\r\n"
            % (request.version, status, len(text), b"" if keep else b"Connection: close\r\n"))
    return ProxyResponse(status, head, body=text, keep_alive=keep)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Listener, int]]]]:
    """Start a bare Listener around a test handler; returns it and its port."""
    servers: list[tuple[asyncio.Server, Listener]] = []

    async def start(handler: Handler, **limits: float) -> tuple[Listener, int]:
        listener = Listener(handler, **limits)  # type: ignore[arg-type]
        server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
        servers.append((server, listener))
        return listener, server.sockets[0].getsockname()[1]

    yield start
    for server, listener in servers:
        server.close()
        await listener.shutdown(1.0)
        await server.wait_closed()


def statuses(reply: bytes) -> list[int]:
    """The status of every response in `reply` (bodies here never look like heads)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


# ------------------------------------------------------------------ the bare listener


async def test_pipelined_requests_are_answered_in_order_one_at_a_time(serve):
    order: list[str] = []
    first_may_finish = asyncio.Event()

    async def handler(request: Request) -> ProxyResponse:
        order.append("start " + request.raw_path)
        if request.raw_path == "/1":
            await first_may_finish.wait()
        order.append("end " + request.raw_path)
        return plain(request, request.raw_path.encode())

    _, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await asyncio.sleep(0.05)
    assert order == ["start /1"]  # the second waits for the first
    first_may_finish.set()
    async with asyncio.timeout(5):
        reply = await reader.read()
    writer.close()
    assert order == ["start /1", "end /1", "start /2", "end /2", "start /3", "end /3"]
    bodies = [part.split(b"\r\n\r\n", 1)[1][:2] for part in reply.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_pipelined_body_waits_for_its_turn_and_arrives_whole(serve):
    async def handler(request: Request) -> ProxyResponse:
        if request.raw_path == "/slow":
            await asyncio.sleep(0.05)
        body = await request.read() if request.method == "POST" else b"-"
        return plain(request, body)

    _, port = await serve(handler)
    reply = await raw_request(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                                    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                    b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert statuses(reply) == [200, 200, 200]
    assert [part.rpartition(b"\r\n\r\n")[2][:5] for part in reply.split(b"HTTP/1.1 ")[1:]] \
        == [b"-", b"hello", b"abc"]


async def test_a_pipeline_deeper_than_the_cap_is_answered_up_to_it_then_closed(serve):
    paths: list[str] = []

    async def handler(request: Request) -> ProxyResponse:
        paths.append(request.raw_path)
        return plain(request, b"ok")

    _, port = await serve(handler)
    burst = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
                     for i in range(MAX_PIPELINED + 36))  # one write, so one or few reads
    reply = await raw_request(port, burst)
    # Each answered in order; the last one announces the close; nothing after it is
    # parsed (the client retries those on a new connection).
    assert paths == [f"/{i}" for i in range(MAX_PIPELINED)]
    assert statuses(reply) == [200] * MAX_PIPELINED
    assert reply.count(b"Connection: close") == 1
    assert reply.rindex(b"Connection: close") > reply.rindex(b"HTTP/1.1 200")


async def test_a_pipeline_within_the_cap_keeps_the_connection(serve):
    async def handler(request: Request) -> ProxyResponse:
        return plain(request, b"ok")

    _, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):  # the cap counts what waits, not what was answered before
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * (MAX_PIPELINED - 1))
        replies = [await reader.readuntil(b"\r\n\r\nok") for _ in range(MAX_PIPELINED - 1)]
        assert all(b"Connection: close" not in reply for reply in replies)
    writer.close()


async def test_http10_keep_alive_is_honoured(serve):
    async def handler(request: Request) -> ProxyResponse:
        keep = request.keep_alive
        head = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n%b\r\n" % (
            b"Connection: keep-alive\r\n" if keep else b"")
        return ProxyResponse(200, head, body=b"ok", keep_alive=keep)

    _, port = await serve(handler)
    reply = await raw_request(port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                    b"GET / HTTP/1.0\r\n\r\n")
    assert statuses(reply) == [200, 200]
    assert reply.count(b"Connection: keep-alive") == 1  # the second one closes


async def test_request_body_pauses_reading_until_the_handler_takes_it(serve):
    took = asyncio.Event()
    proceed = asyncio.Event()
    seen: list[int] = []

    async def handler(request: Request) -> ProxyResponse:
        took.set()
        await proceed.wait()
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        seen.append(total)
        return plain(request, b"%d" % total)

    listener, port = await serve(handler)
    size = 64 * 1024 * 1024  # more than loopback socket buffers hold
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    sent = 0
    block = b"a" * 65536

    async def send() -> None:
        nonlocal sent
        while sent < size:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    sending = asyncio.ensure_future(send())
    await asyncio.wait_for(took.wait(), 5)
    (conn,) = listener.connections
    await wait_until(lambda: conn.reading_paused)
    await asyncio.sleep(0.2)  # and it stays so: the client cannot send its 64 MiB
    assert conn.reading_paused
    assert conn._parsing is not None and conn._parsing._buffered < 4 * BODY_HIGH_WATER
    assert not sending.done()  # the client is held back by TCP
    proceed.set()
    await asyncio.wait_for(sending, 10)
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(len(str(size)))
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert body == str(size).encode() and seen == [size]


async def test_slow_reader_pauses_the_streamed_response(serve):
    writes = 0
    done = asyncio.Event()

    async def handler(request: Request) -> ProxyResponse:
        nonlocal writes
        response = ProxyResponse(200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                 chunked=True)
        await request.start(response)
        for _ in range(400):
            await request.write(b"x" * 65536)
            writes += 1
        done.set()
        return response

    listener, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: any(c._write_paused for c in listener.connections))
    await asyncio.sleep(0.2)  # and the handler stays held back
    assert 0 < writes < 400  # waiting on the client, not buffering 25 MiB
    received = 0
    async with asyncio.timeout(10):
        while not (done.is_set() and received >= 400 * 65536):
            received += len(await reader.read(1 << 20))
    writer.close()


async def test_handler_crash_is_json_500_and_closes(serve):
    async def handler(request: Request) -> ProxyResponse:
        raise RuntimeError("secret detail")

    _, port = await serve(handler)
    reply = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500")
    assert json.loads(body)["error"]["code"] == "internal_error"
    assert b"secret" not in reply


async def test_a_response_sent_before_the_handler_returns_is_written_once(serve):
    # Request.respond writes a complete response at once (the proxy sends an upstream's
    # answer before its bookkeeping); the listener then writes nothing more for it.
    may_return = asyncio.Event()

    async def handler(request: Request) -> ProxyResponse:
        response = plain(request, b"early " + request.raw_path.encode())
        request.respond(response)
        if request.raw_path == "/1":
            await may_return.wait()
        return response

    _, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"early /1")  # while the handler still runs
    may_return.set()
    writer.write(b"HEAD /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        rest = await reader.read()
    writer.close()
    assert first.startswith(b"HTTP/1.1 200") and first.count(b"HTTP/1.1") == 1
    assert rest.startswith(b"HTTP/1.1 200") and rest.count(b"HTTP/1.1") == 1
    assert rest.endswith(b"\r\n\r\n")  # HEAD: the head alone


async def test_a_handler_failing_after_its_response_was_sent_closes_cleanly(serve):
    # The client has a complete answer: it keeps it (no reset cutting it, no 500 after
    # it), and the connection closes since the handler's state is unknown.
    async def handler(request: Request) -> ProxyResponse:
        request.respond(plain(request, b"answered"))
        raise RuntimeError("bookkeeping bug")

    _, port = await serve(handler)
    reply = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nanswered")
    assert reply.count(b"HTTP/1.1") == 1


async def test_idle_keep_alive_connection_closes_after_the_idle_timeout(serve):
    async def handler(request: Request) -> ProxyResponse:
        return plain(request, b"ok")

    _, port = await serve(handler, keepalive_timeout=0.2, sweep_interval=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        assert await reader.read() == b""  # closed by the sidecar, no request pending
    writer.close()


async def test_slow_request_head_is_408(serve):
    async def handler(request: Request) -> ProxyResponse:
        return plain(request, b"ok")

    _, port = await serve(handler, header_timeout=0.2, sweep_interval=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    async with asyncio.timeout(5):
        reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


async def test_head_larger_than_every_limit_together_is_431_without_buffering_it(serve):
    async def handler(request: Request) -> ProxyResponse:
        return plain(request, b"ok")

    _, port = await serve(handler, max_header_bytes=1024, max_headers=10)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
    reply = b""
    try:
        for _ in range(100):  # one value, many writes: never completes a line
            writer.write(b"a" * 4096)
            await writer.drain()
        async with asyncio.timeout(5):
            reply = await reader.read()
    except ConnectionError:
        pass
    writer.close()
    assert reply.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
async def test_only_http_1x_is_served(serve, version, connection):
    async def handler(request: Request) -> ProxyResponse:
        return plain(request, b"ok")

    _, port = await serve(handler)
    reply = await raw_request(port, b"GET / HTTP/%b\r\nHost: x\r\n%b\r\n"
                                    % (version, connection))
    assert statuses(reply) == [400]


@pytest.mark.parametrize(("head", "version", "keep_alive"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", b"1.1", True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n", b"1.1", True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", b"1.1", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: close\r\n", b"1.1", True),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n", b"1.0", True),
    (b"GET / HTTP/1.0\r\nCONNECTION: Keep-Alive\r\n", b"1.0", True),
    (b"GET / HTTP/1.0\r\nUser-Agent: keep-alive\r\n", b"1.0", False),
    (b"GET / HTTP/1.0\r\n", b"1.0", False),
])
async def test_each_head_gets_its_version_and_persistence(serve, head, version, keep_alive):
    # The listener infers HTTP/1.1 from llhttp's keep-alive verdict when no Connection
    # field is present; every other head asks the parser for its version.
    seen: list[tuple[bytes, bool]] = []

    async def handler(request: Request) -> ProxyResponse:
        seen.append((request.version, request.keep_alive))
        return plain(request, b"ok")

    _, port = await serve(handler)
    closing = b"GET /end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await raw_request(port, head + b"\r\n" + (closing if keep_alive else b""))
    assert seen == [(version, keep_alive)] + ([(b"1.1", False)] if keep_alive else [])
    assert reply.startswith(b"HTTP/%b 200 OK\r\n" % version)


async def test_trailer_fields_of_a_chunked_body_are_read_and_dropped(serve):
    seen: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []

    async def handler(request: Request) -> ProxyResponse:
        body = b"".join([chunk async for chunk in request.stream()])
        seen.append((body, list(request.raw_headers)))
        return plain(request, body or b"-")

    _, port = await serve(handler)
    reply = await raw_request(port, b"POST /t HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n"
                                    b"3\r\nabc\r\n0\r\nChecksum: 1f\r\nHost: evil\r\n\r\n"
                                    b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(reply) == [200, 200]
    assert seen[0][0] == b"abc"
    # The head's fields only: a trailer never reaches the request's fields.
    assert seen[0][1] == [(b"Host", b"x"), (b"Transfer-Encoding", b"chunked")]
    assert seen[1][0] == b""


async def test_a_trailer_value_without_end_fails_the_body_instead_of_growing(serve):
    outcome: list[str] = []

    async def handler(request: Request) -> ProxyResponse:
        try:
            body = b"".join([chunk async for chunk in request.stream()])
        except BadRequest:
            outcome.append("refused")
            return plain(request, b"bad", 400)
        outcome.append("read")
        return plain(request, body)

    _, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\nX-Endless: ")
    for _ in range(40):  # 2.5 MiB of one value, past the 1 MiB allowance
        writer.write(b"a" * 65536)
        await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert outcome == ["refused"]
    assert reply.startswith(b"HTTP/1.1 400")


async def test_chunked_bodies_in_many_reads_are_not_taken_for_trailers(serve):
    async def handler(request: Request) -> ProxyResponse:
        body = b"".join([chunk async for chunk in request.stream()])
        return plain(request, b"%d" % len(body))

    _, port = await serve(handler, max_header_bytes=256, max_headers=8)  # a small head limit
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n")
    for _ in range(16):  # each chunk header in one write, its 256 KiB of data in the next
        writer.write(b"40000\r\n")
        await writer.drain()
        writer.write(b"b" * 0x40000 + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\nChecksum: 1\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"%d" % (16 * 0x40000))


@pytest.mark.parametrize("trailers", [
    b"".join(b"T%d: v\r\n" % i for i in range(4)),  # more fields than max_headers
    b"T: " + b"v" * 200 + b"\r\n",                    # a field over max_header_bytes
])
async def test_trailers_over_the_header_limits_are_431(serve, trailers):
    async def handler(request: Request) -> ProxyResponse:
        body = b"".join([chunk async for chunk in request.stream()])
        return plain(request, body)

    _, port = await serve(handler, max_header_bytes=100, max_headers=3)
    reply = await raw_request(port, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n"
                                    b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
    assert statuses(reply) == [431]


async def test_malformed_request_behind_a_good_one_is_answered_after_it(serve):
    async def handler(request: Request) -> ProxyResponse:
        await asyncio.sleep(0.05)
        return plain(request, b"ok")

    _, port = await serve(handler)
    reply = await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    assert statuses(reply) == [200, 400]


async def test_drain_closes_idle_connections_and_answers_in_flight_with_close(serve):
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: Request) -> ProxyResponse:
        if request.raw_path == "/slow":
            arrived.set()
            await release.wait()
        return plain(request, b"ok")

    listener, port = await serve(handler)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        await idle_reader.readuntil(b"ok")
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(arrived.wait(), 5)
    draining = asyncio.ensure_future(listener.shutdown(5))
    async with asyncio.timeout(5):
        assert await idle_reader.read() == b""  # the idle one is closed at once
    release.set()
    async with asyncio.timeout(5):
        reply = await busy_reader.read()
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"\r\nConnection: close\r\n" in reply
    await asyncio.wait_for(draining, 5)
    assert not listener.connections
    idle_writer.close()
    busy_writer.close()


async def test_drain_aborts_what_is_left_at_the_deadline(serve):
    arrived = asyncio.Event()

    async def handler(request: Request) -> ProxyResponse:
        arrived.set()
        await asyncio.sleep(30)
        return plain(request, b"late")

    listener, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(arrived.wait(), 5)
    await asyncio.wait_for(listener.shutdown(0.1), 5)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()


# ------------------------------------------------------------------ through the sidecar


@pytest.fixture
async def proxied(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    return sidecar.ports["listener"], seen


async def test_connection_close_with_a_pipelined_request_answers_the_first_only(proxied):
    port, seen = proxied
    reply = await raw_request(port, b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                    b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(reply) == [200]
    assert b"\r\nConnection: close\r\n" in reply
    assert [r["path"] for r in seen.requests] == ["/first"]


async def test_no_100_continue_to_an_http10_client(proxied):
    port, seen = proxied
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /e HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    await writer.drain()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await reader.readuntil(b"\r\n\r\n")  # nothing: no interim response
    writer.write(b"hello")
    await writer.drain()
    async with asyncio.timeout(5):
        reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.0 200") and b" 100 " not in reply
    assert seen.requests[-1]["body"] == b"hello"


async def test_100_continue_is_not_sent_when_the_body_is_already_here(proxied):
    port, seen = proxied
    reply = await raw_request(port, b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                    b"Expect: 100-continue\r\nConnection: close\r\n\r\nhello")
    assert statuses(reply) == [200]
    assert seen.requests[-1]["body"] == b"hello"


@pytest.mark.parametrize("status", [204, 304])
async def test_upstream_204_304_with_stray_bytes_is_delivered(start_sidecar, status):
    connections = 0

    async def sloppy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\nstray" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    upstream = await asyncio.start_server(sloppy, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": f"http://127.0.0.1:{port}"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    for _ in range(2):
        reply = await raw_request(sidecar.ports["listener"],
                                  b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d" % status) and body == b""
    assert connections == 2  # the connection that carried stray bytes is not reused
    upstream.close()
    await upstream.wait_closed()


@pytest.mark.parametrize("path", [b"/public/%2e%2e/admin/x", b"/public/%2E./admin/x",
                                  b"/public/.%2e/admin/x", b"/public/%2e%2E/admin/x"])
async def test_encoded_dot_segments_are_resolved_before_routing(start_upstream, start_sidecar,
                                                                path):
    public, seen_public = await start_upstream(name="public")
    admin, seen_admin = await start_upstream(name="admin")
    sidecar = await start_sidecar({
        "clusters": [{"name": "public", "endpoints": [{"url": url_of(public)}]},
                     {"name": "admin", "endpoints": [{"url": url_of(admin)}]}],
        "routes": [{"prefix": "/public", "cluster": "public"},
                   {"prefix": "/admin", "cluster": "admin", "methods": ["POST"]}]})
    port = sidecar.ports["listener"]
    reply = await raw_request(port, b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                              % path)
    assert statuses(reply) == [405]  # routed as /admin/x, which only allows POST
    reply = await raw_request(port, b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n" % path)
    assert statuses(reply) == [200]
    assert seen_public.requests == []
    assert [r["path"] for r in seen_admin.requests] == ["/admin/x"]


async def test_encoded_dots_that_are_not_segments_are_forwarded_decoded(proxied):
    port, seen = proxied
    reply = await raw_request(port, b"GET /a/%2efile?q=%2e%2e HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
    assert statuses(reply) == [200]
    assert seen.requests[-1]["path"] == "/a/.file?q=%2e%2e"  # the query is data


@pytest.mark.parametrize("path", [b"/public%2F..%2Fadmin/x", b"/public%2f..%2fadmin",
                                  b"/public%5C..%5Cadmin", b"/public\\..\\admin"])
async def test_encoded_slashes_and_backslashes_in_the_path_are_400(proxied, path):
    port, seen = proxied
    reply = await raw_request(port, b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path)
    assert statuses(reply) == [400]
    assert seen.requests == []


async def test_encoded_slash_in_the_query_is_data(proxied):
    port, seen = proxied
    reply = await raw_request(port, b"GET /a?next=%2Fb HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
    assert statuses(reply) == [200]
    assert seen.requests[-1]["path"] == "/a?next=%2Fb"


@pytest.mark.parametrize("target", [b"/a#frag", b"/a?x=1#frag", b"http://x.test/a#f"])
async def test_fragment_in_the_target_is_400(proxied, target):
    port, seen = proxied
    reply = await raw_request(port, b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    assert statuses(reply) == [400]
    assert seen.requests == []


async def test_absolute_form_authority_wins_over_host(start_upstream, start_sidecar):
    a, seen_a = await start_upstream(name="a")
    b, seen_b = await start_upstream(name="b")
    sidecar = await start_sidecar({
        "clusters": [{"name": "a", "endpoints": [{"url": url_of(a)}]},
                     {"name": "b", "endpoints": [{"url": url_of(b)}],
                      "preserve_host": True}],
        "routes": [{"name": "a", "host": "a.test", "prefix": "/", "cluster": "a"},
                   {"name": "b", "host": "b.test", "prefix": "/", "cluster": "b"}]})
    reply = await raw_request(sidecar.ports["listener"],
                              b"GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\n"
                              b"Connection: close\r\n\r\n")
    assert statuses(reply) == [200]
    assert seen_a.requests == []
    (request,) = seen_b.requests
    headers = {name.lower(): value for name, value in request["headers"]}
    assert request["path"] == "/x"
    assert headers[b"host"] == b"b.test"
    assert headers[b"x-forwarded-host"] == b"b.test"


async def test_absolute_form_gives_an_http10_request_its_host(start_upstream, start_sidecar):
    b, seen_b = await start_upstream(name="b")
    sidecar = await start_sidecar({
        "clusters": [{"name": "b", "endpoints": [{"url": url_of(b)}], "preserve_host": True}],
        "routes": [{"host": "b.test", "prefix": "/", "cluster": "b"}]})
    reply = await raw_request(sidecar.ports["listener"], b"GET http://b.test/x HTTP/1.0\r\n\r\n")
    assert statuses(reply) == [200]
    headers = {name.lower(): value for name, value in seen_b.requests[0]["headers"]}
    assert headers[b"host"] == b"b.test"


async def test_error_answer_to_head_has_no_body(proxied):
    port, _ = proxied
    reply = await raw_request(port, b"HEAD /x#y HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"Content-Length: " in head
    assert body == b""


async def test_drain_in_flight_request_gets_connection_close(start_upstream, start_sidecar):
    gate = Gate("finished")
    server, _ = await start_upstream(gate.app())
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(gate.arrived.wait(), 5)
    stopping = asyncio.ensure_future(sidecar.stop(drain_timeout=5))
    listener = sidecar._listener
    await wait_until(lambda: listener.connections and all(
        c._draining for c in listener.connections))
    gate.release.set()
    async with asyncio.timeout(5):
        reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"\r\nConnection: close\r\n" in reply and reply.endswith(b"finished")
    await asyncio.wait_for(stopping, 10)


async def test_unanswered_expect_100_continue_closes_after_the_answer(start_upstream,
                                                                     start_sidecar):
    """Refused before its body was asked for: the client may or may not send it, so the
    connection closes instead of reading a body as the next request."""
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/only", "cluster": "app"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    async with asyncio.timeout(5):
        reply = await reader.read()  # 404, then the sidecar closes
    writer.close()
    assert statuses(reply) == [404]
    assert seen.requests == []

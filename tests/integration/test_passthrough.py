"""The upstream client is a pass-through: no cookie jar, no redirects, strict framing,
keep-alive reuse, and a stale pooled connection retried only when that is safe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from .conftest import base_url, raw_request, url_of

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """A TCP server speaking whatever bytes the test writes; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def one_route(url: str) -> dict[str, object]:
    return {"clusters": [{"name": "app", "endpoints": [{"url": url}]}],
            "routes": [{"prefix": "/", "cluster": "app"}]}


async def test_no_cookie_jar_between_clients(start_upstream, start_sidecar, client):
    server, seen = await start_upstream()  # every echo response sets a=b
    sidecar = await start_sidecar(one_route(url_of(server)))
    for _ in range(2):
        async with client.get(base_url(sidecar) + "/") as resp:
            assert resp.headers["Set-Cookie"] == "a=b; Path=/"
        client.cookie_jar.clear()  # the client forgets; the sidecar must not remember
    assert all(not [v for n, v in r["headers"] if n.lower() == b"cookie"]
               for r in seen.requests)


async def test_redirects_are_passed_back_not_followed(start_upstream, start_sidecar):
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_get("/", redirect)
    server, _ = await start_upstream(app)
    sidecar = await start_sidecar(one_route(url_of(server)))
    reply = await raw_request(sidecar.ports["listener"],
                              b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 302")
    assert b"\r\nLocation: /elsewhere\r\n" in reply


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    # A coding besides chunked would reach the client as the body's own bytes.
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nabc",
], ids=["length-and-chunked", "gzip-chunked", "gzip-then-chunked", "gzip", "identity"])
async def test_bad_upstream_framing_is_502(raw_upstream, start_sidecar, client, response):
    async def both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    port = await raw_upstream(both)
    sidecar = await start_sidecar(one_route(f"http://127.0.0.1:{port}"))
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_protocol_error"


async def test_keep_alive_reuses_one_upstream_connection(raw_upstream, start_sidecar, client):
    accepted = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    port = await raw_upstream(keep_alive)
    sidecar = await start_sidecar(one_route(f"http://127.0.0.1:{port}"))
    for _ in range(5):
        async with client.get(base_url(sidecar) + "/") as resp:
            assert await resp.read() == b"ok"
    assert accepted == 1


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("DELETE", 200), ("POST", 502)])
async def test_stale_pooled_connection_is_retried_only_for_idempotent_methods(
        raw_upstream, start_sidecar, client, method, status):
    """The upstream answers the first request of each connection and drops the
    connection on the second (a keep-alive timeout racing the request): the sidecar
    sees EOF before any response byte on a reused connection."""
    accepted = 0

    async def one_per_connection(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    port = await raw_upstream(one_per_connection)
    sidecar = await start_sidecar(one_route(f"http://127.0.0.1:{port}"))
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 200
    async with client.request(method, base_url(sidecar) + "/again") as resp:
        body = await resp.read()
    if status == 200:
        assert (resp.status, body) == (200, b"ok")
        assert accepted == 2  # replayed once, on a fresh connection
    else:
        # Not replayed: the upstream may have acted on it. The client decides.
        assert resp.status == 502
        assert json.loads(body)["error"]["code"] == "upstream_reset"
        assert accepted == 1


async def test_chunked_upstream_to_http10_client_is_close_delimited(raw_upstream,
                                                                    start_sidecar):
    body = b"x" * 300_000  # over the one-write limit: streamed

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 50_000):
            part = body[i:i + 50_000]
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    port = await raw_upstream(chunked)
    sidecar = await start_sidecar(one_route(f"http://127.0.0.1:{port}"))
    reply = await raw_request(sidecar.ports["listener"], b"GET / HTTP/1.0\r\n\r\n")
    head, _, received = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert received == body  # complete, and ended by the close

    reply = await raw_request(sidecar.ports["listener"],
                              b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, received = reply.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert received.endswith(b"0\r\n\r\n")  # re-chunked for the HTTP/1.1 client


async def test_request_trailers_are_not_forwarded(raw_upstream, start_sidecar):
    received: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")  # the whole re-chunked body
        received.append(head + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    port = await raw_upstream(upstream)
    sidecar = await start_sidecar(one_route(f"http://127.0.0.1:{port}"))
    reply = await raw_request(sidecar.ports["listener"],
                              b"POST /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n0\r\nChecksum: 1f\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200")
    forwarded = received[0]
    assert b"Transfer-Encoding: chunked\r\n" in forwarded
    assert forwarded.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")  # a bare last chunk
    assert b"Checksum" not in forwarded

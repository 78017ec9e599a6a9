"""End-to-end data plane: real client -> real sidecar -> real aiohttp upstream."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json

import aiohttp
from aiohttp import web

from .conftest import base_url, raw_request, refused_url, url_of


def header(seen_headers: list[tuple[bytes, bytes]], name: str) -> list[str]:
    lname = name.lower().encode()
    return [v.decode() for n, v in seen_headers if n.lower() == lname]


async def test_forwards_method_path_query_and_end_to_end_headers(start_upstream, start_sidecar,
                                                                 client):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    async with client.get(base_url(sidecar) + "/a/b?x=1&y=%20z", headers={
            "Authorization": "Bearer secret", "X-API-Key": "k1", "Cookie": "s=1"}) as resp:
        assert resp.status == 200
        body = await resp.json()
        request_id = resp.headers["X-Request-Id"]
        assert resp.headers["Set-Cookie"] == "a=b; Path=/"
        assert resp.headers["X-Served-By"] == "echo"
        assert "1.1 sidecar" in resp.headers["Via"]
    assert body["path"] == "/a/b?x=1&y=%20z"
    got = seen.requests[0]["headers"]
    assert header(got, "Authorization") == ["Bearer secret"]
    assert header(got, "X-API-Key") == ["k1"]
    assert header(got, "Cookie") == ["s=1"]
    assert header(got, "X-Request-Id") == [request_id]
    assert len(request_id) == 32
    assert header(got, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(got, "X-Forwarded-Proto") == ["http"]
    assert header(got, "X-Forwarded-Host") == [f"127.0.0.1:{sidecar.ports['listener']}"]
    assert header(got, "Via") == ["1.1 sidecar"]
    # The upstream client is a pure pass-through: nothing of its own added.
    assert header(got, "User-Agent") == [resp.request_info.headers["User-Agent"]]
    assert header(got, "Accept-Encoding") == [resp.request_info.headers["Accept-Encoding"]]


async def test_drops_hop_by_hop_headers_and_appends_forwarding_chains(start_upstream,
                                                                      start_sidecar, client):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    async with client.get(base_url(sidecar) + "/", headers={
            "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "300",
            "TE": "trailers", "Proxy-Authorization": "Basic xyz", "Upgrade": "h2c",
            "X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https",
            "Via": "1.0 edge", "X-Request-Id": "client-id-1"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "client-id-1"
    got = seen.requests[0]["headers"]
    for name in ("X-Secret-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "Upgrade"):
        assert header(got, name) == [], name
    assert header(got, "X-Forwarded-For") == ["10.0.0.1, 127.0.0.1"]
    assert header(got, "X-Forwarded-Proto") == ["http"]  # from the connection, not the client
    assert header(got, "Via") == ["1.0 edge, 1.1 sidecar"]
    assert header(got, "X-Request-Id") == ["client-id-1"]


async def test_invalid_request_id_is_replaced(start_upstream, start_sidecar, client):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    async with client.get(base_url(sidecar) + "/", headers={"X-Request-Id": "x" * 300}) as resp:
        assert resp.status == 200
        assert len(resp.headers["X-Request-Id"]) == 32


async def test_prefix_rewrite_and_longest_prefix(start_upstream, start_sidecar, client):
    users, _ = await start_upstream(name="users")
    other, _ = await start_upstream(name="other")
    sidecar = await start_sidecar({
        "clusters": [{"name": "users", "endpoints": [{"url": url_of(users)}]},
                     {"name": "other", "endpoints": [{"url": url_of(other)}]}],
        "routes": [{"prefix": "/", "cluster": "other"},
                   {"prefix": "/api/users", "cluster": "users", "prefix_rewrite": "/v2/users"}]})
    async with client.get(base_url(sidecar) + "/api/users/42?q=1") as resp:
        assert (await resp.json()) == {"server": "users", "method": "GET",
                                       "path": "/v2/users/42?q=1", "body_bytes": 0}
    async with client.get(base_url(sidecar) + "/api/usersX") as resp:
        assert (await resp.json())["server"] == "other"


async def test_no_route_is_json_404_and_wrong_method_is_405_with_allow(start_upstream,
                                                                       start_sidecar, client):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/orders", "cluster": "app", "methods": ["GET", "POST"]}],
        "listener": {"orchestrator_prefix": None}})
    async with client.get(base_url(sidecar) + "/nothing") as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json"
        error = (await resp.json())["error"]
        assert error["code"] == "no_route"
        assert error["request_id"] == resp.headers["X-Request-Id"]
    async with client.delete(base_url(sidecar) + "/orders/1") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD, POST"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert seen.requests == []


async def test_orchestrator_addressing_works_without_routes(start_upstream, start_sidecar,
                                                            client):
    server, seen = await start_upstream(name="user_service")
    sidecar = await start_sidecar({
        "clusters": [{"name": "user_service", "endpoints": [{"url": url_of(server)}]}]})
    async with client.post(base_url(sidecar) + "/orchestrator/user_service/users/7?full=1",
                           data=b"hello") as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"server": "user_service", "method": "POST",
                                       "path": "/users/7?full=1", "body_bytes": 5}
    async with client.get(base_url(sidecar) + "/orchestrator/nope/users") as resp:
        assert resp.status == 404


async def test_streams_large_bodies_both_ways(start_upstream, start_sidecar, client):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    size = 8 * 1024 * 1024
    async with client.get(base_url(sidecar) + f"/big?size={size}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        received = 0
        async for chunk in resp.content.iter_any():
            received += len(chunk)
        assert received == size

    payload = bytes(range(256)) * 4096 * 3  # 3 MiB, streamed with Content-Length

    async with client.put(base_url(sidecar) + "/upload", data=io.BytesIO(payload)) as resp:
        assert (await resp.json())["body_bytes"] == len(payload)
    assert hashlib.sha256(seen.requests[-1]["body"]).digest() == hashlib.sha256(payload).digest()

    async def chunks():
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]

    async with client.post(base_url(sidecar) + "/upload-chunked", data=chunks()) as resp:
        assert (await resp.json())["body_bytes"] == len(payload)
    assert seen.requests[-1]["body"] == payload
    assert header(seen.requests[-1]["headers"], "Transfer-Encoding") == ["chunked"]


async def test_head_204_304_have_no_body(start_upstream, start_sidecar):
    server, _ = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    port = sidecar.ports["listener"]
    reply = await raw_request(port, b"HEAD /big?size=1000 HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 1000" in head
    assert body == b""
    for status in (204, 304):
        reply = await raw_request(port, f"GET /status/{status} HTTP/1.1\r\nHost: x\r\n"
                                        "Connection: close\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode())
        assert body == b""


async def test_keep_alive_and_http10_clients(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    port = sidecar.ports["listener"]
    two = (b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = await raw_request(port, two)
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    reply = await raw_request(port, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200")
    assert seen.requests[-1]["path"] == "/old"


async def test_expect_100_continue(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["listener"])
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    await writer.drain()
    async with asyncio.timeout(5):
        reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 200")
    assert seen.requests[-1]["body"] == b"hello"
    assert header(seen.requests[-1]["headers"], "Expect") == []


async def test_round_robin_across_endpoints(start_upstream, start_sidecar, client):
    a, _ = await start_upstream(name="a")
    b, _ = await start_upstream(name="b")
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(a)}, {"url": url_of(b)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    served = []
    for _ in range(6):
        async with client.get(base_url(sidecar) + "/") as resp:
            served.append((await resp.json())["server"])
    assert sorted(served) == ["a", "a", "a", "b", "b", "b"]
    assert all(served[i] != served[i + 1] for i in range(5))


async def test_refused_connection_is_fast_502(start_sidecar, client):
    refused = refused_url()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": refused}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert loop.time() - started < 1.0
    assert error["code"] == "upstream_connect_error"
    assert refused.rsplit(":", 1)[1] not in json.dumps(error)  # no internals leaked


async def test_slow_upstream_is_504(start_upstream, start_sidecar, client):
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/", hang)
    server, _ = await start_upstream(app)
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}], "timeout": "200ms"}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    async with client.get(base_url(sidecar) + "/") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
    never.set()


async def test_truncated_upstream_body_is_not_passed_off_as_complete(start_sidecar, client):
    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncating, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": f"http://127.0.0.1:{port}"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    try:
        async with client.get(base_url(sidecar) + "/") as resp:
            try:
                body = await resp.read()
            except aiohttp.ClientPayloadError:
                pass  # the connection was cut: the client knows the body is incomplete
            else:
                raise AssertionError(f"truncated body returned as complete ({len(body)} bytes)")
    finally:
        server.close()
        await server.wait_closed()


async def test_response_headers_are_not_invented(start_sidecar):
    """The upstream sends no Content-Type, Server or Date: none may appear."""
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, X-Hop\r\n"
                     b"X-Hop: 1\r\nContent-Encoding: gzip\r\n\r\nhi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": f"http://127.0.0.1:{port}"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    try:
        reply = await raw_request(sidecar.ports["listener"],
                                  b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        server.close()
        await server.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:]]
    assert body == b"hi"
    assert b"content-type" not in names and b"server" not in names
    assert b"x-hop" not in names
    assert b"content-encoding" in names


async def test_host_routes_beat_host_less_ones(start_upstream, start_sidecar, client):
    api, _ = await start_upstream(name="api")
    www, _ = await start_upstream(name="www")
    tenant, _ = await start_upstream(name="tenant")
    sidecar = await start_sidecar({
        "clusters": [{"name": "api", "endpoints": [{"url": url_of(api)}]},
                     {"name": "www", "endpoints": [{"url": url_of(www)}]},
                     {"name": "tenant", "endpoints": [{"url": url_of(tenant)}]}],
        "routes": [{"name": "www", "prefix": "/", "cluster": "www"},
                   {"name": "api", "prefix": "/", "host": "api.example.com", "cluster": "api"},
                   {"name": "tenants", "prefix": "/", "host": "*.tenants.example.com",
                    "cluster": "tenant"}]})
    for host, expected in (("api.example.com", "api"), ("API.example.com:8000", "api"),
                           ("a.tenants.example.com", "tenant"), ("example.com", "www"),
                           ("tenants.example.com", "www")):
        async with client.get(base_url(sidecar) + "/x", headers={"Host": host}) as resp:
            assert (await resp.json())["server"] == expected, host

#!/usr/bin/env python3
"""A reference peer: the latency floor of a Python proxy on this event loop.

`../shared/bench`'s python-ceiling (asyncio.Protocol + httptools both ways, uvloop, no
features) awaits each answer in a task. This one has no task and no future on the
path: the request goes upstream from the client's `data_received` and the answer back
from the upstream's. It is the shape a proxy written in callbacks (Envoy's, nginx's)
has, in Python, and what the sidecar's added latency is compared with in
docs/design.md. Not a product: bodies buffered, no timeouts, no header hygiene
beyond hop-by-hop fields, 502 when the upstream fails.

    callback_ceiling.py --port 18110 --upstream http://127.0.0.1:18080
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from urllib.parse import urlsplit

import httptools
import uvloop

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"content-length",
                        b"host"})
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"


def serialize(first_line: bytes, fields: list[tuple[bytes, bytes]], body: bytes,
              extra: bytes = b"") -> bytes:
    parts = [first_line, extra]
    for name, value in fields:
        if name.lower() not in HOP_BY_HOP:
            parts += [name, b": ", value, b"\r\n"]
    parts += [b"Content-Length: %d\r\n\r\n" % len(body), body]
    return b"".join(parts)


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream, answering one client at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, client: Client, data: bytes) -> None:
        self.client = client
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        client, self.client = self.client, None
        if client is not None:
            client.answer(BAD_GATEWAY)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        answer = serialize(b"HTTP/1.1 %d OK\r\n" % status, self.fields, b"".join(self.body))
        self.fields, self.body = [], []
        client, self.client = self.client, None
        if self.parser.should_keep_alive():
            self.pool.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        if client is not None:
            client.answer(answer)


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[Upstream] = []

    def forget(self, upstream: Upstream) -> None:
        if upstream in self.idle:
            self.idle.remove(upstream)

    def send(self, client: Client, data: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, data)
        else:  # a new connection: the only await, off the steady state
            asyncio.ensure_future(self._connect_and_send(client, data))

    async def _connect_and_send(self, client: Client, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Upstream(self), self.host,
                                                       self.port)
        except OSError:
            client.answer(BAD_GATEWAY)
            return
        upstream.send(client, data)


class Client(asyncio.Protocol):
    """One client connection: requests answered in order, one upstream exchange at a time."""

    def __init__(self, pool: Pool, authority: bytes) -> None:
        self.pool = pool
        self.host_field = b"Host: " + authority + b"\r\n"
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.waiting: deque[bytes] = deque()
        self.busy = False
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.fields, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        first_line = b"%b %b HTTP/1.1\r\n" % (self.parser.get_method(), self.url)
        self.waiting.append(serialize(first_line, self.fields, b"".join(self.body),
                                      self.host_field))
        if not self.busy:
            self.next()

    def next(self) -> None:
        if self.waiting:
            self.busy = True
            self.pool.send(self, self.waiting.popleft())
        else:
            self.busy = False

    def answer(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        self.next()


async def main(port: int, upstream: str) -> None:
    url = urlsplit(upstream)
    pool = Pool(url.hostname or "127.0.0.1", url.port or 80)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool, url.netloc.encode()), "127.0.0.1",
                                      port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.upstream))

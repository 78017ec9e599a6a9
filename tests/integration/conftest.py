"""Fixtures for integration tests: real upstreams and a real sidecar on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import atexit
import copy
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.app import Sidecar
from sidecar.events import Event, EventKind
from sidecar.reload import ConfigSource

LOOPBACK_ADDRESSES = {
    "listener": {"address": "127.0.0.1:0"},
    "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
}


@dataclass
class Seen:
    """What an echo upstream received."""

    requests: list[dict[str, Any]] = field(default_factory=list)


class Gate:
    """An upstream whose GET / parks every request until `release` is set."""

    def __init__(self, text: str = "done") -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self._text = text

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrived.set()
        await self.release.wait()
        return web.Response(text=self._text)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._handle)
        return app


class Pulse:
    """Wakes waiters whenever something happened (a bus event, a request upstream), so
    tests wait on what happens, never on a sleep. Every wait is bounded by `timeout`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.events: list[Event] = []
        self._unsubscribe: list[Callable[[], None]] = []

    def poke(self) -> None:
        self._event.set()

    def follow(self, sidecar: Sidecar) -> Pulse:
        def on_event(event: Event) -> None:
            self.events.append(event)
            self.poke()

        self._unsubscribe.append(sidecar.registry.bus.subscribe(on_event))
        return self

    async def until(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until `predicate()` is truthy (re-evaluated after every poke); its value."""
        async with asyncio.timeout(timeout):
            while True:
                self._event.clear()
                value = predicate()
                if value:
                    return value
                await self._event.wait()

    async def event(self, predicate: Callable[[Event], bool], after: int = 0) -> Event:
        """The first event from index `after` of `events` that matches."""
        def find() -> Event | None:
            return next((e for e in self.events[after:] if predicate(e)), None)

        event: Event = await self.until(find)
        return event

    def since(self, mark: int, kind: EventKind) -> list[Event]:
        return [e for e in self.events[mark:] if e.kind is kind]

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (bounded) until `predicate()` holds, polling: for a state nothing signals,
    instead of a guess at how long a loaded machine takes to reach it."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def echo_app(seen: Seen, name: str = "echo") -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.requests.append({"method": request.method, "path": request.path_qs,
                              "headers": list(request.raw_headers), "body": body,
                              "version": request.version})
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]))
        if request.path == "/big":
            size = int(request.query.get("size", 1 << 20))
            response = web.StreamResponse()
            response.content_length = size
            await response.prepare(request)
            chunk = b"x" * 65536
            sent = 0
            while sent < size:
                part = chunk[: min(65536, size - sent)]
                await response.write(part)
                sent += len(part)
            await response.write_eof()
            return response
        return web.json_response({"server": name, "method": request.method,
                                  "path": request.path_qs, "body_bytes": len(body)},
                                 headers={"X-Served-By": name, "Set-Cookie": "a=b; Path=/"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def start_upstream() -> AsyncIterator[Callable[..., Awaitable[tuple[TestServer, Seen]]]]:
    servers: list[TestServer] = []

    async def start(app: web.Application | None = None,
                    name: str = "echo") -> tuple[TestServer, Seen]:
        seen = Seen()
        server = TestServer(app or echo_app(seen, name), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server, seen

    yield start
    for server in servers:
        await server.close()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
async def start_sidecar() -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Sidecar]]]:
    started: list[Sidecar] = []

    async def start(config: dict[str, Any], path: str | None = None) -> Sidecar:
        if path is not None:
            source = ConfigSource(path=path)
        else:
            source = ConfigSource(data=merge(LOOPBACK_ADDRESSES, config))
        sidecar = Sidecar(source, source.load())
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.stop(drain_timeout=1.0)


#: Sockets bound and never listening, held for the whole run (see `refused_url`).
_REFUSING: list[socket.socket] = []


@atexit.register
def _release_refusing_ports() -> None:
    for sock in _REFUSING:
        sock.close()


def refused_url() -> str:
    """A loopback address where connections are refused, for as long as the tests run.

    The port stays bound (never listening: a connect gets a reset) rather than being
    closed after picking it: a port merely free when picked can be taken by any server
    started later, in this run or another, and the test would reach that instead."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def base_url(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.ports['listener']}"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress off: tests must see the bytes the sidecar sent.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def raw_request(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass

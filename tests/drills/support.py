"""Helpers shared by the drills: follow the bus, scrape /metrics, talk gRPC, run load.

Waits are on things that happen (bus events, requests arriving at an upstream), each
bounded by `WAIT`; nothing sleeps to let state settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar
from sidecar.core.breaker import BreakerState
from sidecar.core.health import HealthStatus
from sidecar.core.hosts import Host
from sidecar.events import Event, EventKind

from ..integration.conftest import Pulse  # noqa: F401  (the drills' one waiting helper)

WAIT = 8.0  # the most any one wait may take; a wait normally ends in milliseconds
CLIENTS = 8


# ---------------------------------------------------------------- event matchers


def breaker_entered(state: BreakerState, endpoint_id: str | None = None
                    ) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.kind is EventKind.BREAKER_CHANGED and event.breaker is not None
                and event.breaker.state is state and event.endpoint is not None
                and (endpoint_id is None or event.endpoint.id == endpoint_id))

    return match


def health_became(endpoint_id: str, status: HealthStatus) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.kind is EventKind.HEALTH_CHANGED and event.endpoint is not None
                and event.endpoint.id == endpoint_id and event.health is not None
                and event.health.status is status)

    return match


def panic_became(cluster: str, panic: bool) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.kind is EventKind.PANIC_CHANGED and event.cluster == cluster
                and event.panic is panic)

    return match


# ---------------------------------------------------------------- upstreams


class HealthUpstream:
    """An upstream whose /healthz status the test sets; every other path answers 200
    with its name and is counted as traffic."""

    def __init__(self, name: str, pulse: Pulse) -> None:
        self.name = name
        self.health_status = 200
        self.checks = 0
        self.traffic = 0
        self._pulse = pulse
        self.server = TestServer(self._app(), host="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def _health(self, request: web.Request) -> web.Response:
        self.checks += 1
        self._pulse.poke()
        return web.Response(status=self.health_status, text="health")

    async def _other(self, request: web.Request) -> web.Response:
        self.traffic += 1
        self._pulse.poke()
        return web.json_response({"server": self.name}, headers={"X-Served-By": self.name})

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app


@contextlib.asynccontextmanager
async def health_upstreams(pulse: Pulse, *names: str) -> AsyncIterator[list[HealthUpstream]]:
    ups = [HealthUpstream(name, pulse) for name in names]
    try:
        for up in ups:
            await up.server.start_server()
        yield ups
    finally:
        for up in ups:
            await up.server.close()


class HangingServer:
    """Accepts connections, reads what is sent, never answers. Counts request heads."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        buffered = b""
        try:
            while chunk := await reader.read(65536):
                buffered += chunk
                while b"\r\n\r\n" in buffered:  # GETs without a body: one head each
                    self.requests += 1
                    buffered = buffered.split(b"\r\n\r\n", 1)[1]
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()


# ---------------------------------------------------------------- config


def cluster(name: str, urls: list[str], **settings: Any) -> dict[str, Any]:
    return {"name": name, **settings,
            "endpoints": [{"url": url, "id": f"e{i}"} for i, url in enumerate(urls)]}


def routed(*clusters: dict[str, Any], prefixes: tuple[str, ...] = ("/",)) -> dict[str, Any]:
    return {"clusters": list(clusters),
            "routes": [{"prefix": prefix, "cluster": c["name"]}
                       for prefix, c in zip(prefixes, clusters, strict=False)]}


def host_of(sidecar: Sidecar, cluster_name: str, endpoint_id: str) -> Host:
    return sidecar.registry.endpoint(cluster_name, endpoint_id).host


# ---------------------------------------------------------------- load


@dataclass
class Outcome:
    status: int
    code: str = ""  # the sidecar's error code, for JSON error bodies
    retry_after: str | None = None
    served_by: str | None = None
    seconds: float = 0.0


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [o.status for o in self.outcomes]

    def count(self, status: int) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def percentile(self, q: float) -> float:
        times = sorted(o.seconds for o in self.outcomes)
        return times[min(len(times) - 1, int(q * len(times)))]


async def fetch(client: aiohttp.ClientSession, url: str, method: str = "GET") -> Outcome:
    start = time.perf_counter()
    async with client.request(method, url) as resp:
        body = await resp.read()
        outcome = Outcome(resp.status, retry_after=resp.headers.get("Retry-After"),
                          served_by=resp.headers.get("X-Served-By"))
    outcome.seconds = time.perf_counter() - start
    if resp.headers.get("Content-Type", "").startswith("application/json") and body:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            outcome.code = data["error"]["code"]
    return outcome


async def load(client: aiohttp.ClientSession, url: str, total: int,
               clients: int = CLIENTS, stop: Callable[[], bool] | None = None) -> Load:
    """`total` requests from `clients` concurrent workers (or fewer, once `stop()`)."""
    result = Load()
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            if stop is not None and stop():
                return
            result.outcomes.append(await fetch(client, url))

    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(worker() for _ in range(clients)))
    return result


# ---------------------------------------------------------------- admin


class Scrape:
    """One /metrics scrape: sample name + labels -> value."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of every `name` sample that has these labels (and maybe others)."""
        wanted = frozenset(labels.items())
        return sum(value for (sample, have), value in self.samples.items()
                   if sample == name and wanted <= have)


async def scrape(client: aiohttp.ClientSession, sidecar: Sidecar) -> Scrape:
    url = f"http://127.0.0.1:{sidecar.ports['admin_http']}/metrics"
    async with client.get(url, headers={"Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        return Scrape(await resp.text())


@contextlib.asynccontextmanager
async def admin_stub(sidecar: Sidecar) -> AsyncIterator[api_grpc.AdminServiceStub]:
    target = f"127.0.0.1:{sidecar.ports['admin_grpc']}"
    async with grpc.aio.insecure_channel(target) as channel:
        yield api_grpc.AdminServiceStub(channel)


async def list_endpoints(stub: api_grpc.AdminServiceStub, cluster_name: str
                         ) -> dict[str, res.Endpoint]:
    reply = await stub.ListEndpoints(api.ListEndpointsRequest(cluster=cluster_name),
                                     timeout=WAIT)
    return {e.id: e for e in reply.endpoints}


async def read_until(call: Any, match: Callable[[res.StatusEvent], bool],
                     seen: list[res.StatusEvent]) -> res.StatusEvent:
    """Read WatchStatus events (kept in `seen`) until one matches; bounded by WAIT."""
    async with asyncio.timeout(WAIT):
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "WatchStatus ended"
            if message.WhichOneof("kind") != "event":
                continue
            seen.append(message.event)
            if match(message.event):
                return message.event

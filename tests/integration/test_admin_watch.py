"""WatchStatus on a real grpc.aio server: snapshot first, events in order, filter, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from admin.server import AdminServer
from admin.testing import load_config, serve
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.events import Event
from sidecar.registry import Registry

CONFIG = {
    "clusters": [
        {"name": "users", "endpoints": [{"url": "http://127.0.0.1:8081", "id": "u1"}]},
        {"name": "orders", "endpoints": [{"url": "http://127.0.0.1:8091", "id": "o1"}]},
    ],
    "routes": [{"prefix": "/users", "cluster": "users"},
               {"prefix": "/orders", "cluster": "orders"}],
}
TIMEOUT = 5.0


class Subscriptions:
    """Spy on the registry's EventBus.subscribe: lets a test await a watcher's (un)subscription."""

    def __init__(self, registry: Registry) -> None:
        self.subscribed = asyncio.Event()
        self.unsubscribed = asyncio.Event()
        original = registry.bus.subscribe

        def subscribe(listener: Callable[[Event], None]) -> Callable[[], None]:
            unsubscribe = original(listener)
            self.subscribed.set()

            def wrapped() -> None:
                unsubscribe()
                self.unsubscribed.set()

            return wrapped

        registry.bus.subscribe = subscribe  # type: ignore[method-assign]


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    load_config(registry, CONFIG)
    return registry


@pytest.fixture
async def server(registry: Registry) -> AsyncIterator[tuple[AdminServer, str]]:
    async with serve(registry) as running:
        yield running


@pytest.fixture
async def stub(server: tuple[AdminServer, str]) -> AsyncIterator[api_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(server[1]) as channel:
        yield api_grpc.AdminServiceStub(channel)


async def read(call: Any) -> api.WatchStatusResponse:
    message = await asyncio.wait_for(call.read(), TIMEOUT)
    assert message is not grpc.aio.EOF, "stream ended"
    return message  # type: ignore[no-any-return]


async def read_event(call: Any) -> res.StatusEvent:
    message = await read(call)
    assert message.WhichOneof("kind") == "event"
    return message.event


async def test_snapshot_then_every_change_in_order(stub: api_grpc.AdminServiceStub,
                                                   registry: Registry) -> None:
    call = stub.WatchStatus(api.WatchStatusRequest())
    first = await read(call)
    assert first.WhichOneof("kind") == "snapshot"
    snapshot = first.snapshot
    assert [(e.cluster, e.id) for e in snapshot.endpoints] == [("orders", "o1"), ("users", "u1")]
    assert registry.config_info is not None
    assert snapshot.config.version == registry.config_info.version
    assert snapshot.sequence == registry.sequence

    registry.register("users", "http://127.0.0.1:9000", endpoint_id="new")
    registry.observe("users", "new", ok=False, reason="health check failed")
    registry.deregister("users", "new")
    load_config(registry, CONFIG, source="/etc/reloaded.json")

    added = await read_event(call)
    assert added.WhichOneof("change") == "endpoint_added"
    assert added.sequence == snapshot.sequence + 1
    assert added.endpoint_added.endpoint.id == "new"
    assert added.time.seconds > 0

    breaker = await read_event(call)
    assert breaker.WhichOneof("change") == "breaker_changed"
    assert (breaker.breaker_changed.previous_state, breaker.breaker_changed.state) == (
        res.BREAKER_STATE_CLOSED, res.BREAKER_STATE_OPEN)
    assert breaker.breaker_changed.reason == "health check failed"

    changed = await read_event(call)
    assert changed.WhichOneof("change") == "endpoint_status_changed"
    assert changed.endpoint_status_changed.previous_status == res.ENDPOINT_STATUS_ACTIVE
    assert changed.endpoint_status_changed.endpoint.status == res.ENDPOINT_STATUS_UNHEALTHY
    assert changed.endpoint_status_changed.reason == "breaker open: health check failed"

    removed = await read_event(call)
    assert removed.WhichOneof("change") == "endpoint_removed"
    assert removed.endpoint_removed.reason == "deregistered"

    loaded = await read_event(call)
    assert loaded.WhichOneof("change") == "config_loaded"
    assert loaded.config_loaded.config.source == "/etc/reloaded.json"
    # Every event on the bus is streamed: consecutive numbers.
    sequences = [e.sequence for e in (added, breaker, changed, removed, loaded)]
    assert sequences == list(range(snapshot.sequence + 1, snapshot.sequence + 6))
    call.cancel()


async def test_cluster_filter(stub: api_grpc.AdminServiceStub, registry: Registry) -> None:
    call = stub.WatchStatus(api.WatchStatusRequest(cluster="orders"))
    snapshot = (await read(call)).snapshot
    assert [e.id for e in snapshot.endpoints] == ["o1"]
    registry.register("users", "http://127.0.0.1:9000")  # filtered out
    registry.register("orders", "http://127.0.0.1:9001")
    load_config(registry, CONFIG)  # config events are always sent
    first = await read_event(call)
    assert first.endpoint_added.endpoint.cluster == "orders"
    second = await read_event(call)
    assert second.WhichOneof("change") == "config_loaded"
    call.cancel()


async def test_cancel_unsubscribes(server: tuple[AdminServer, str],
                                   stub: api_grpc.AdminServiceStub,
                                   registry: Registry) -> None:
    spy = Subscriptions(registry)
    call = stub.WatchStatus(api.WatchStatusRequest())
    await read(call)
    assert spy.subscribed.is_set() and len(server[0].watch_hub.watchers) == 1
    call.cancel()
    await asyncio.wait_for(spy.unsubscribed.wait(), TIMEOUT)
    assert server[0].watch_hub.watchers == frozenset()
    # The registry keeps working without the watcher.
    registry.register("users", "http://127.0.0.1:9000")


async def test_stop_ends_open_streams(registry: Registry) -> None:
    async with serve(registry) as (server, target), \
            grpc.aio.insecure_channel(target) as channel:
        call = api_grpc.AdminServiceStub(channel).WatchStatus(api.WatchStatusRequest())
        await read(call)
        # A long grace: stop() must end the stream itself, not wait the grace out.
        await asyncio.wait_for(server.stop(60), TIMEOUT)
        assert await asyncio.wait_for(call.read(), TIMEOUT) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_two_watchers_get_the_same_events(stub: api_grpc.AdminServiceStub,
                                                registry: Registry) -> None:
    calls = [stub.WatchStatus(api.WatchStatusRequest()) for _ in range(2)]
    for call in calls:
        await read(call)
    registry.register("users", "http://127.0.0.1:9000", endpoint_id="x")
    for call in calls:
        assert (await read_event(call)).endpoint_added.endpoint.id == "x"
        call.cancel()

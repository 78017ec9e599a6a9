"""WatchStatus queueing without gRPC: snapshot first, filtering, overflow, close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from admin.testing import load_config
from admin.watch import Snapshot, Watcher, WatchHub
from sidecar.core.clock import FakeClock
from sidecar.events import Event, EventKind
from sidecar.registry import Registry

CONFIG = {
    "clusters": [
        {"name": "users", "endpoints": [{"url": "http://127.0.0.1:8081", "id": "u1"}]},
        {"name": "orders", "endpoints": [{"url": "http://127.0.0.1:8091", "id": "o1"}]},
    ],
    "routes": [{"prefix": "/users", "cluster": "users"},
               {"prefix": "/orders", "cluster": "orders"}],
}


@pytest.fixture
def registry() -> Registry:
    registry = Registry(clock=FakeClock(1_700_000_000.0))
    load_config(registry, CONFIG)
    return registry


def register(registry: Registry, cluster: str, port: int) -> None:
    registry.register(cluster, f"http://127.0.0.1:{port}", endpoint_id=f"{cluster}-{port}")


def drain(watcher: Watcher) -> list[Snapshot | Event]:
    items = []
    while (item := watcher.pop_nowait()) is not None:
        items.append(item)
    return items


def test_first_item_is_a_snapshot_of_the_watched_cluster(registry: Registry) -> None:
    watcher = Watcher(registry, "users")
    item = watcher.pop_nowait()
    assert isinstance(item, Snapshot)
    assert [e.id for e in item.endpoints] == ["u1"]
    assert item.config is registry.config_info
    assert item.sequence == registry.sequence
    assert watcher.pop_nowait() is None


def test_events_between_subscribe_and_snapshot_are_in_the_snapshot_only(
        registry: Registry) -> None:
    watcher = Watcher(registry)  # subscribed, snapshot not taken yet
    register(registry, "users", 9001)
    items = drain(watcher)
    assert len(items) == 1 and isinstance(items[0], Snapshot)
    assert "users-9001" in [e.id for e in items[0].endpoints]
    assert items[0].sequence == registry.sequence


def test_events_follow_the_snapshot_in_order(registry: Registry) -> None:
    watcher = Watcher(registry)
    snapshot = watcher.pop_nowait()
    assert isinstance(snapshot, Snapshot)
    register(registry, "users", 9001)
    registry.observe("users", "users-9001", ok=False, reason="health check failed")
    registry.deregister("users", "users-9001")
    load_config(registry, CONFIG)
    events = drain(watcher)
    assert all(isinstance(e, Event) for e in events)
    assert [e.kind for e in events if isinstance(e, Event)] == [
        EventKind.ENDPOINT_ADDED, EventKind.BREAKER_CHANGED, EventKind.ENDPOINT_STATUS_CHANGED,
        EventKind.ENDPOINT_REMOVED, EventKind.CONFIG_LOADED]
    sequences = [e.sequence for e in events if isinstance(e, Event)]
    assert sequences == sorted(sequences) and sequences[0] == snapshot.sequence + 1


def test_cluster_filter_keeps_config_events(registry: Registry) -> None:
    watcher = Watcher(registry, "orders")
    watcher.pop_nowait()
    register(registry, "users", 9001)
    register(registry, "orders", 9002)
    load_config(registry, CONFIG)
    kinds = [(e.kind, e.endpoint.cluster if e.endpoint else None)
             for e in drain(watcher) if isinstance(e, Event)]
    assert kinds == [(EventKind.ENDPOINT_ADDED, "orders"), (EventKind.CONFIG_LOADED, None)]


def test_overflow_drops_the_queue_and_resnapshots(registry: Registry) -> None:
    watcher = Watcher(registry, max_queue=2)
    watcher.pop_nowait()
    for port in range(9001, 9011):  # 10 events for a queue of 2: never blocks, never grows
        register(registry, "users", port)
        assert watcher.pending <= 2
    assert watcher.overflows == 1
    items = drain(watcher)
    assert len(items) == 1 and isinstance(items[0], Snapshot)
    assert items[0].sequence == registry.sequence
    assert len(items[0].endpoints) == 12  # 2 from config + 10 registered
    # And it carries on with events after the fresh snapshot.
    registry.deregister("users", "users-9001")
    (event,) = drain(watcher)
    assert isinstance(event, Event) and event.kind is EventKind.ENDPOINT_REMOVED


def test_queue_up_to_the_limit_is_kept(registry: Registry) -> None:
    watcher = Watcher(registry, max_queue=3)
    watcher.pop_nowait()
    for port in (9001, 9002, 9003):
        register(registry, "users", port)
    assert watcher.overflows == 0
    assert len(drain(watcher)) == 3


def test_max_queue_must_be_positive(registry: Registry) -> None:
    with pytest.raises(ValueError):
        Watcher(registry, max_queue=0)


def counting_subscribe(registry: Registry) -> list[str]:
    """Record subscribe/unsubscribe calls on `registry`."""
    calls: list[str] = []
    original = registry.bus.subscribe

    def subscribe(listener: Callable[[Event], None]) -> Callable[[], None]:
        calls.append("subscribe")
        unsubscribe = original(listener)

        def wrapped() -> None:
            calls.append("unsubscribe")
            unsubscribe()

        return wrapped

    registry.bus.subscribe = subscribe  # type: ignore[method-assign]
    return calls


def test_close_unsubscribes_and_ends(registry: Registry) -> None:
    calls = counting_subscribe(registry)
    closed: list[Watcher] = []
    watcher = Watcher(registry, on_close=closed.append)
    watcher.pop_nowait()
    register(registry, "users", 9001)
    watcher.close()
    watcher.close()
    assert calls == ["subscribe", "unsubscribe"]
    assert closed == [watcher]
    assert watcher.closed and watcher.pending == 0
    register(registry, "users", 9002)
    assert watcher.pop_nowait() is None


def test_hub_close_ends_every_watcher(registry: Registry) -> None:
    calls = counting_subscribe(registry)
    hub = WatchHub(registry)
    first, second = hub.open(), hub.open("users")
    assert hub.watchers == {first, second}
    first.close()
    assert hub.watchers == {second}
    hub.close()
    assert second.closed and hub.watchers == frozenset() and hub.closed
    late = hub.open()
    assert late.closed and late.pop_nowait() is None
    assert calls.count("subscribe") == calls.count("unsubscribe") == 3


async def test_next_waits_for_an_event(registry: Registry) -> None:
    watcher = Watcher(registry)
    assert isinstance(await watcher.next(), Snapshot)
    waiting = asyncio.create_task(watcher.next())
    await asyncio.sleep(0)  # let it block on the empty queue (no timing involved)
    assert not waiting.done()
    register(registry, "users", 9001)
    event = await asyncio.wait_for(waiting, 5)
    assert isinstance(event, Event) and event.kind is EventKind.ENDPOINT_ADDED


async def test_next_returns_none_when_closed(registry: Registry) -> None:
    hub = WatchHub(registry)
    watcher = hub.open()
    await watcher.next()
    waiting = asyncio.create_task(watcher.next())
    await asyncio.sleep(0)
    hub.close()
    assert await asyncio.wait_for(waiting, 5) is None

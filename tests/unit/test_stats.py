"""Stats: what the data path records, summed per route, cluster and endpoint.

A real registry (its bus publishes the breaker trips and removals) and a real route
table feed the query; time is a FakeClock, so expiry is tested without sleeping.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.model import parse_config
from sidecar.core.clock import FakeClock
from sidecar.core.routing import RouteTable
from sidecar.observe.metrics import Metrics
from sidecar.observe.stats import DEFAULT_WINDOW, Stats, StatsReport, StatsRow
from sidecar.registry import ConfigInfo, Registry

START = 10_000.0


def make_config(orchestrator: bool = True) -> Any:
    return parse_config({
        "clusters": [
            {"name": "users", "endpoints": [{"url": "http://10.0.0.1:80", "id": "u1"},
                                            {"url": "http://10.0.0.2:80", "id": "u2"}]},
            {"name": "orders", "endpoints": [{"url": "http://10.0.0.3:80", "id": "o1"}]},
            {"name": "spare", "endpoints": []},
        ],
        "routes": [
            {"prefix": "/api/users", "cluster": "users", "name": "users_api"},
            {"prefix": "/admin/users", "cluster": "users", "name": "users_admin"},
            {"prefix": "/api/orders", "cluster": "orders", "name": "orders_api"},
        ],
        "listener": {"orchestrator_prefix": "/orchestrator/" if orchestrator else None},
    })


class World:
    """A registry and a route table, as the sidecar wires them to `Stats`."""

    def __init__(self, orchestrator: bool = True) -> None:
        self.clock = FakeClock(START, wall_offset=1_700_000_000.0 - START)
        self.registry = Registry(self.clock)
        config = make_config(orchestrator)
        self.registry.apply_config(config, ConfigInfo("v1", "test", 0.0, 3, 3))
        self.routes = RouteTable(config.routes, config.listener.orchestrator_prefix,
                                 self.registry.clusters.__contains__)
        self.stats = Stats(
            clock=self.clock,
            routes=lambda: [(r.name, r.cluster) for r in self.routes.routes],
            endpoints=lambda: {name: list(members.endpoints)
                               for name, members in self.registry.clusters.items()})
        self.registry.bus.subscribe(self.stats.on_event)

    def query(self, kind: str = "", window: float = DEFAULT_WINDOW,
              cluster: str = "") -> StatsReport:
        return self.stats.query(kind, window, cluster)


@pytest.fixture
def world() -> World:
    return World()


def row(rows: tuple[StatsRow, ...], name: str, cluster: str) -> StatsRow:
    (found,) = [r for r in rows if (r.name, r.cluster) == (name, cluster)]
    return found


def test_an_idle_sidecar_lists_every_route_cluster_and_endpoint_with_zeros(
        world: World) -> None:
    report = world.query()
    assert report.window == 60.0
    assert [(r.cluster, r.name) for r in report.routes] == [
        ("orders", "orders_api"), ("users", "users_admin"), ("users", "users_api")]
    assert [r.name for r in report.clusters] == ["orders", "spare", "users"]
    assert [(r.cluster, r.name) for r in report.endpoints] == [
        ("orders", "o1"), ("users", "u1"), ("users", "u2")]
    for r in (*report.routes, *report.clusters, *report.endpoints):
        assert (r.requests, r.successes, r.retries, r.breaker_trips) == (0, 0, 0, 0)
        assert r.success_rate is None and r.p50 is None and r.p90 is None and r.p99 is None
        assert r.requests_per_second == 0.0


def test_requests_are_counted_per_route_and_summed_per_cluster(world: World) -> None:
    users_api = world.stats.pair("users_api", "users")
    admin = world.stats.pair("users_admin", "users")
    now = START + 5
    for i in range(20):
        users_api.record(now, ok=i >= 5, seconds=0.010)  # 5 failures
    for _ in range(10):
        admin.record(now, ok=True, seconds=0.100)
    world.stats.retry("users_api", "users", "u1", now)
    world.clock.advance(20)
    report = world.query()
    api = row(report.routes, "users_api", "users")
    assert (api.requests, api.successes, api.retries) == (20, 15, 1)
    assert api.success_rate == pytest.approx(0.75)
    assert api.p50 == pytest.approx(0.010, rel=0.2)  # one value: known to its bucket
    assert api.breaker_trips == 0
    users = row(report.clusters, "users", "users")
    assert (users.requests, users.successes, users.retries) == (30, 25, 1)
    assert users.success_rate == pytest.approx(25 / 30)
    # Merged histograms: two thirds at 10 ms, one third at 100 ms.
    assert users.p50 == pytest.approx(0.010, rel=0.2)
    assert users.p90 == pytest.approx(0.100, rel=0.2)
    assert users.p50 <= users.p90 <= users.p99  # type: ignore[operator]
    # 30 requests over the 20 s since the start (less than the window).
    assert users.requests_per_second == pytest.approx(30 / 20)
    assert row(report.clusters, "orders", "orders").requests == 0
    assert row(report.endpoints, "u1", "users").retries == 1


def test_attempts_are_counted_per_endpoint(world: World) -> None:
    now = START + 1
    world.stats.attempt("users", "u1", now, 0.005, ok=True)
    world.stats.attempt("users", "u1", now, 0.005, ok=False)
    world.stats.attempt("users", "u2", now, 0.020, ok=True)
    report = world.query("endpoints")
    u1 = row(report.endpoints, "u1", "users")
    assert (u1.requests, u1.successes, u1.success_rate) == (2, 1, 0.5)
    assert u1.p99 == pytest.approx(0.005, rel=0.2)
    assert row(report.endpoints, "u2", "users").requests == 1
    assert row(report.endpoints, "o1", "orders").requests == 0


def test_breaker_trips_come_from_the_bus(world: World) -> None:
    hosts = world.registry.clusters["users"].hosts
    host = hosts.hosts["u1"]
    hosts.trip(host, "tripped by a test")
    hosts.reset(host, "reset by a test")  # CLOSED: not a trip
    hosts.trip(host, "again")
    report = world.query()
    assert row(report.endpoints, "u1", "users").breaker_trips == 2
    assert row(report.endpoints, "u2", "users").breaker_trips == 0
    assert row(report.clusters, "users", "users").breaker_trips == 2
    assert all(r.breaker_trips == 0 for r in report.routes)
    # The cluster keeps its trips after the endpoint is gone.
    world.registry.register("users", "http://10.0.0.9:80", endpoint_id="u9")
    hosts.trip(hosts.hosts["u9"], "tripped")
    world.registry.deregister("users", "u9")
    report = world.query()
    assert [r.name for r in report.endpoints if r.cluster == "users"] == ["u1", "u2"]
    assert row(report.clusters, "users", "users").breaker_trips == 3


def test_a_removed_endpoint_is_forgotten(world: World) -> None:
    world.registry.register("orders", "http://10.0.0.4:80", endpoint_id="o2")
    world.stats.attempt("orders", "o2", START, 0.01, ok=True)
    assert row(world.query("endpoints").endpoints, "o2", "orders").requests == 1
    world.registry.deregister("orders", "o2")
    assert ("orders", "o2") not in set(world.stats.endpoint_windows)
    # Registered again under the same id: a new endpoint, from zero.
    world.registry.register("orders", "http://10.0.0.4:80", endpoint_id="o2")
    assert row(world.query("endpoints").endpoints, "o2", "orders").requests == 0


def test_an_attempt_to_an_endpoint_no_longer_registered_is_pruned_at_query_time(
        world: World) -> None:
    world.stats.attempt("orders", "gone", START, 0.01, ok=True)  # raced its removal
    report = world.query()
    assert "gone" not in {r.name for r in report.endpoints}
    assert ("orders", "gone") not in set(world.stats.endpoint_windows)


def test_the_orchestrator_route_has_a_row_per_cluster_it_served(world: World) -> None:
    world.stats.pair("orchestrator", "orders").record(START, True, 0.01)
    world.stats.pair("orchestrator", "").record(START, False, 0.0)  # no such cluster: 404
    report = world.query("routes")
    assert [(r.cluster, r.name) for r in report.routes] == [
        ("orders", "orchestrator"), ("orders", "orders_api"), ("users", "users_admin"),
        ("users", "users_api")]
    world.clock.advance(61)
    assert "orchestrator" not in {r.name for r in world.query("routes").routes}
    assert "orchestrator" not in {r.name for r in World(orchestrator=False).query().routes}


def test_the_kind_and_cluster_filters(world: World) -> None:
    world.stats.pair("orders_api", "orders").record(START, True, 0.01)
    routes = world.query("routes")
    assert routes.routes and not routes.clusters and not routes.endpoints
    clusters = world.query("clusters")
    assert clusters.clusters and not clusters.routes and not clusters.endpoints
    endpoints = world.query("endpoints")
    assert endpoints.endpoints and not endpoints.routes and not endpoints.clusters
    orders = world.query(cluster="orders")
    assert [r.name for r in orders.routes] == ["orders_api"]
    assert [r.name for r in orders.clusters] == ["orders"]
    assert [r.name for r in orders.endpoints] == ["o1"]
    assert world.query(cluster="nope") == StatsReport(60.0)
    with pytest.raises(ValueError, match="unknown kind"):
        world.query("route")


@pytest.mark.parametrize(("window", "covers"), [(15, 20.0), (60, 60.0), (90, 90.0),
                                               (600, 600.0), (0.5, 10.0)])
def test_the_window_is_rounded_up_to_whole_slots(world: World, window: float,
                                                 covers: float) -> None:
    assert world.query(window=window).window == covers


@pytest.mark.parametrize("window", [0, -10, 601, 660])
def test_a_window_out_of_range_is_refused(world: World, window: float) -> None:
    with pytest.raises(ValueError, match="window"):
        world.query(window=window)


def test_old_requests_leave_the_window_and_expire_after_ten_minutes(world: World) -> None:
    world.clock.advance(1000)  # long after the start: rps over the whole window
    pair = world.stats.pair("users_api", "users")
    pair.record(world.clock.now(), True, 0.01)
    world.clock.advance(30)
    assert row(world.query(window=60).routes, "users_api", "users").requests == 1
    assert row(world.query(window=10).routes, "users_api", "users").requests == 0
    world.clock.advance(60)
    assert row(world.query(window=60).routes, "users_api", "users").requests == 0
    assert row(world.query(window=600).routes, "users_api", "users").requests == 1
    world.clock.advance(600)
    assert row(world.query(window=600).routes, "users_api", "users").requests == 0


def test_requests_per_second_divide_by_the_time_the_window_covers(world: World) -> None:
    world.clock.advance(1000 - (START + 1000) % 10 + 5)  # 5 s into a slot, long after start
    pair = world.stats.pair("users_api", "users")
    for _ in range(110):
        pair.record(world.clock.now(), True, 0.01)
    # 1 minute = the 5 s of the current slot + 5 whole slots before it.
    api = row(world.query(window=60).routes, "users_api", "users")
    assert api.requests_per_second == pytest.approx(110 / 55)


def test_metrics_hand_the_data_path_the_pairs_window() -> None:
    stats = Stats(clock=FakeClock(START))
    metrics = Metrics(stats)
    request_stats = metrics.stats("users_api", "users")
    assert request_stats.rolling is stats.pair("users_api", "users")
    assert metrics.stats("users_api", "users") is request_stats
    assert Metrics().rolling is not stats  # each sidecar its own


def test_the_stores_are_capped() -> None:
    stats = Stats(clock=FakeClock(START), max_keys=2,
                  endpoints=lambda: {"c": [f"e{i}" for i in range(5)]})
    for i in range(5):
        stats.attempt("c", f"e{i}", START, 0.01, ok=True)
    assert len(stats.endpoint_windows) == 2
    assert stats.endpoint_windows.dropped == 3
    report = stats.query("endpoints")
    assert [r.requests for r in report.endpoints] == [1, 1, 0, 0, 0]

"""The endpoint registry: admin calls and config reloads in, endpoints and events out."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.model import SidecarConfig, parse_config
from sidecar.core.clock import FakeClock
from sidecar.errors import (
    EndpointExists,
    EndpointNotFound,
    EndpointNotRemovable,
    InvalidEndpoint,
    RegistryError,
)
from sidecar.events import Event, EventKind
from sidecar.registry import ConfigInfo, EndpointInfo, EndpointSource, EndpointStatus, Registry

ACTIVE, DISABLED = EndpointStatus.ACTIVE, EndpointStatus.DISABLED
UNHEALTHY, DRAINING = EndpointStatus.UNHEALTHY, EndpointStatus.DRAINING
CONFIG, ADMIN = EndpointSource.CONFIG, EndpointSource.ADMIN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock)


@pytest.fixture
def events(registry: Registry) -> list[Event]:
    seen: list[Event] = []
    registry.bus.subscribe(seen.append)
    return seen


def config(*clusters: dict[str, Any], **extra: Any) -> SidecarConfig:
    return parse_config({"clusters": list(clusters), **extra})


def cluster(name: str, *endpoints: str | dict[str, Any], **settings: Any) -> dict[str, Any]:
    eps = [{"url": e} if isinstance(e, str) else e for e in endpoints]
    return {"name": name, "endpoints": eps, **settings}


def apply(registry: Registry, cfg: SidecarConfig, version: str = "v1") -> ConfigInfo:
    info = ConfigInfo(version, "test.jsonnet", 1_700_000_000.0, len(cfg.clusters),
                      len(cfg.routes))
    registry.apply_config(cfg, info)
    return info


def state(registry: Registry) -> tuple[list[EndpointInfo], list[str], int]:
    """Everything a failed call must leave alone."""
    return registry.list(), sorted(registry.clusters), registry.sequence


def ids(infos: list[EndpointInfo]) -> list[tuple[str, str]]:
    return [(i.cluster, i.id) for i in infos]


def routable_ids(registry: Registry, name: str) -> list[str]:
    return [e.id for e in registry.clusters[name].routable]


# ------------------------------------------------------------ register / get / list


def test_register_defaults(registry: Registry, clock: FakeClock) -> None:
    info = registry.register("web", "http://App.Local:8080")
    assert info == EndpointInfo("web", "app.local:8080", "http://app.local:8080", 1, ACTIVE,
                                ADMIN, {}, 1_000.0, 1_000.0, 0)
    assert registry.get("web", "app.local:8080") == info


def test_register_with_all_fields(registry: Registry) -> None:
    info = registry.register("web", "https://10.0.0.1:443/", endpoint_id="blue-1", weight=7,
                             status=DISABLED, labels={"zone": "a"})
    assert (info.id, info.url, info.weight, info.status, info.labels) == (
        "blue-1", "https://10.0.0.1", 7, DISABLED, {"zone": "a"})


def test_register_ipv6_default_id(registry: Registry) -> None:
    info = registry.register("web", "http://[::1]:9000")
    assert (info.id, info.url) == ("[::1]:9000", "http://[::1]:9000")


def test_register_copies_labels(registry: Registry) -> None:
    labels = {"zone": "a"}
    registry.register("web", "http://h:1", labels=labels)
    labels["zone"] = "b"
    assert registry.get("web", "h:1").labels == {"zone": "a"}
    registry.get("web", "h:1").labels["zone"] = "c"  # type: ignore[index]
    assert registry.get("web", "h:1").labels == {"zone": "a"}


def test_register_creates_a_dynamic_cluster_with_defaults(registry: Registry) -> None:
    registry.register("dyn", "http://h:1")
    members = registry.clusters["dyn"]
    assert not members.declared
    assert members.settings.lb_policy == "round_robin"


def test_list_is_ordered_by_cluster_then_id_and_filters(registry: Registry) -> None:
    registry.register("web", "http://h:2", endpoint_id="b")
    registry.register("api", "http://h:3", endpoint_id="z", status=DISABLED)
    registry.register("web", "http://h:1", endpoint_id="a", status=DISABLED)
    registry.register("api", "http://h:4", endpoint_id="c")
    assert ids(registry.list()) == [("api", "c"), ("api", "z"), ("web", "a"), ("web", "b")]
    assert ids(registry.list("web")) == [("web", "a"), ("web", "b")]
    assert ids(registry.list(status=DISABLED)) == [("api", "z"), ("web", "a")]
    assert ids(registry.list("api", ACTIVE)) == [("api", "c")]
    assert registry.list("nope") == []


def test_snapshot(registry: Registry) -> None:
    registry.register("web", "http://h:1")
    endpoints, info, sequence = registry.snapshot()
    assert (ids(endpoints), info, sequence) == ([("web", "h:1")], None, 1)
    assert registry.snapshot("other")[0] == []


# ------------------------------------------------------------ validation


@pytest.mark.parametrize(("cluster_name", "url", "kwargs"), [
    ("", "http://h:1", {}),
    ("bad name", "http://h:1", {}),
    ("a" * 64, "http://h:1", {}),
    ("-x", "http://h:1", {}),
    ("web", "", {}),
    ("web", "not a url", {}),
    ("web", "ftp://h:1", {}),
    ("web", "http://h:70000", {}),
    ("web", "http://h:0", {}),
    ("web", "http://h:port", {}),
    ("web", "http://user:pw@h:1", {}),
    ("web", "http://h:1/path", {}),
    ("web", "http://h:1?q=1", {}),
    ("web", "http://bad_host:1", {}),
    ("web", "http://h:1", {"weight": 0}),
    ("web", "http://h:1", {"weight": -1}),
    ("web", "http://h:1", {"weight": 1001}),
    ("web", "http://h:1", {"endpoint_id": "bad id"}),
    ("web", "http://h:1", {"endpoint_id": "-lead"}),
    ("web", "http://h:1", {"endpoint_id": "x" * 129}),
    ("web", "http://h:1", {"status": UNHEALTHY}),
    ("web", "http://h:1", {"status": DRAINING}),
    ("web", "http://h:1", {"labels": {"": "v"}}),
    ("web", "http://h:1", {"labels": {"k" * 64: "v"}}),
    ("web", "http://h:1", {"labels": {"k": "v" * 256}}),
    ("web", "http://h:1", {"labels": {f"k{i}": "v" for i in range(65)}}),
])
@pytest.mark.parametrize("existing", [False, True])
def test_invalid_registration_changes_nothing(registry: Registry, events: list[Event],
                                              cluster_name: str, url: str,
                                              kwargs: dict[str, Any], existing: bool) -> None:
    if existing:  # the target cluster exists (where the name is valid) and is untouched
        registry.register("web", "http://other:9", endpoint_id="other")
    before = state(registry)
    before_events = list(events)
    with pytest.raises(InvalidEndpoint) as info:
        registry.register(cluster_name, url, **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RegistryError)
    assert state(registry) == before
    assert events == before_events


def test_boundaries_that_are_valid(registry: Registry) -> None:
    registry.register("a" * 63, "http://h:65535", endpoint_id="x" * 128, weight=1000,
                      labels={"k" * 63: "v" * 255, **{f"k{i}": "" for i in range(63)}})
    registry.register("web", "http://h:1", weight=1)
    assert len(registry.list()) == 2


@pytest.mark.parametrize(("cluster_name", "endpoint_id"), [("web\n", ""), ("web", "id\n")])
def test_trailing_newline_in_names_is_rejected(registry: Registry, cluster_name: str,
                                               endpoint_id: str) -> None:
    with pytest.raises(InvalidEndpoint):
        registry.register(cluster_name, "http://h:1", endpoint_id=endpoint_id)
    assert registry.list() == []


def test_same_id_exists(registry: Registry, events: list[Event]) -> None:
    registry.register("web", "http://h:1", endpoint_id="x")
    before, n = state(registry), len(events)
    with pytest.raises(EndpointExists, match="'x'"):
        registry.register("web", "http://h:2", endpoint_id="x")
    assert (state(registry), len(events)) == (before, n)


@pytest.mark.parametrize("same_url", ["http://h:80", "http://H", "http://h/", "HTTP://h:80/"])
def test_same_url_exists_under_another_id(registry: Registry, same_url: str) -> None:
    registry.register("web", "http://h", endpoint_id="x")
    before = state(registry)
    with pytest.raises(EndpointExists, match="'x'"):
        registry.register("web", same_url, endpoint_id="y")
    assert state(registry) == before


def test_same_url_with_other_scheme_or_port_is_distinct(registry: Registry) -> None:
    registry.register("web", "http://h:1")
    registry.register("web", "https://h:1", endpoint_id="tls")
    registry.register("web", "http://h:2")
    assert len(registry.list("web")) == 3


def test_same_url_in_another_cluster_is_fine(registry: Registry) -> None:
    registry.register("web", "http://h:1")
    registry.register("api", "http://h:1")
    assert ids(registry.list()) == [("api", "h:1"), ("web", "h:1")]


def test_registering_over_a_config_endpoint_url_exists(registry: Registry) -> None:
    apply(registry, config(cluster("web", "http://h:1")))
    with pytest.raises(EndpointExists):
        registry.register("web", "http://h:1", endpoint_id="mine")


# ------------------------------------------------------------ not found / not removable


@pytest.mark.parametrize(("cluster_name", "endpoint_id"), [("nope", "h:1"), ("web", "nope")])
def test_not_found(registry: Registry, cluster_name: str, endpoint_id: str) -> None:
    registry.register("web", "http://h:1")
    before = state(registry)
    with pytest.raises(EndpointNotFound) as info:
        registry.get(cluster_name, endpoint_id)
    assert isinstance(info.value, LookupError)
    with pytest.raises(EndpointNotFound):
        registry.deregister(cluster_name, endpoint_id)
    with pytest.raises(EndpointNotFound):
        registry.set_status(cluster_name, endpoint_id, DISABLED, "x")
    assert state(registry) == before


def test_config_endpoints_are_not_removable(registry: Registry,
                                            events: list[Event]) -> None:
    apply(registry, config(cluster("web", {"url": "http://h:1", "id": "one"})))
    before, n = state(registry), len(events)
    with pytest.raises(EndpointNotRemovable):
        registry.deregister("web", "one")
    assert (state(registry), len(events)) == (before, n)


# ------------------------------------------------------------ deregister / dynamic clusters


def test_deregister_returns_the_endpoint_and_removes_it(registry: Registry) -> None:
    registry.register("web", "http://h:1", endpoint_id="a")
    registry.register("web", "http://h:2", endpoint_id="b")
    removed = registry.deregister("web", "a")
    assert (removed.id, removed.url) == ("a", "http://h:1")
    assert ids(registry.list()) == [("web", "b")]
    assert routable_ids(registry, "web") == ["b"]


def test_dynamic_cluster_is_removed_with_its_last_endpoint(registry: Registry) -> None:
    registry.register("dyn", "http://h:1")
    registry.register("dyn", "http://h:2")
    registry.deregister("dyn", "h:1")
    assert "dyn" in registry.clusters
    registry.deregister("dyn", "h:2")
    assert "dyn" not in registry.clusters
    registry.register("dyn", "http://h:1")  # and can come back
    assert "dyn" in registry.clusters


def test_declared_cluster_stays_when_empty(registry: Registry) -> None:
    apply(registry, config(cluster("web")))
    registry.register("web", "http://h:1")
    registry.deregister("web", "h:1")
    assert "web" in registry.clusters
    assert registry.clusters["web"].routable == ()


# ------------------------------------------------------------ status and routable


def test_routable_holds_only_active_endpoints_sorted_by_id(registry: Registry) -> None:
    registry.register("web", "http://h:3", endpoint_id="c")
    registry.register("web", "http://h:1", endpoint_id="a")
    registry.register("web", "http://h:2", endpoint_id="b", status=DISABLED)
    registry.register("web", "http://h:4", endpoint_id="d")
    assert routable_ids(registry, "web") == ["a", "c", "d"]
    registry.observe("web", "c", ok=False, reason="test")
    assert routable_ids(registry, "web") == ["a", "d"]
    registry.observe("web", "c", ok=True, reason="test")
    for status in (DRAINING, DISABLED):
        registry.set_status("web", "c", status, "test")
        assert routable_ids(registry, "web") == ["a", "d"]
    registry.set_status("web", "b", ACTIVE, "back")
    assert routable_ids(registry, "web") == ["a", "b", "d"]


def test_routable_is_a_new_tuple_on_every_change(registry: Registry) -> None:
    registry.register("web", "http://h:1", endpoint_id="a")
    first = registry.clusters["web"].routable
    registry.register("web", "http://h:2", endpoint_id="b")
    second = registry.clusters["web"].routable
    assert second is not first and [e.id for e in first] == ["a"]
    registry.set_status("web", "a", DISABLED, "x")
    third = registry.clusters["web"].routable
    assert third is not second and [e.id for e in second] == ["a", "b"]
    assert [e.id for e in third] == ["b"]


def test_set_status_updates_time_and_reports_previous(registry: Registry, clock: FakeClock,
                                                      events: list[Event]) -> None:
    registry.register("web", "http://h:1")
    clock.advance(5)
    info = registry.observe("web", "h:1", ok=False, reason="3 failed checks")
    assert (info.status, info.create_time, info.update_time) == (UNHEALTHY, 1_000.0, 1_005.0)
    breaker, last = events[-2:]
    assert (breaker.kind, breaker.reason) == (EventKind.BREAKER_CHANGED, "3 failed checks")
    assert (last.kind, last.previous_status, last.reason, last.endpoint) == (
        EventKind.ENDPOINT_STATUS_CHANGED, ACTIVE, "breaker open: 3 failed checks", info)


def test_set_status_to_the_same_status_is_a_no_op(registry: Registry, clock: FakeClock,
                                                  events: list[Event]) -> None:
    registry.register("web", "http://h:1")
    routable = registry.clusters["web"].routable
    clock.advance(5)
    n = len(events)
    info = registry.set_status("web", "h:1", ACTIVE, "again")
    assert (info.update_time, len(events)) == (1_000.0, n)
    assert registry.clusters["web"].routable is routable


def test_set_status_works_on_config_endpoints(registry: Registry) -> None:
    apply(registry, config(cluster("web", "http://h:1")))
    registry.set_status("web", "h:1", DRAINING, "deploy")
    assert registry.get("web", "h:1").status is DRAINING
    assert routable_ids(registry, "web") == []


# ------------------------------------------------------------ events


def test_events_are_delivered_in_order_with_increasing_sequence(
        registry: Registry, clock: FakeClock, events: list[Event]) -> None:
    registry.register("web", "http://h:1", endpoint_id="a")
    clock.advance(1)
    registry.set_status("web", "a", DISABLED, "maintenance")
    clock.advance(1)
    registry.deregister("web", "a")
    assert [(e.sequence, e.time, e.kind, e.reason) for e in events] == [
        (1, 1_000.0, EventKind.ENDPOINT_ADDED, "registered"),
        (2, 1_001.0, EventKind.ENDPOINT_STATUS_CHANGED, "maintenance"),
        (3, 1_002.0, EventKind.ENDPOINT_REMOVED, "deregistered"),
    ]
    assert registry.sequence == 3
    assert all(e.endpoint is not None and e.endpoint.id == "a" for e in events)
    assert events[1].previous_status is ACTIVE and events[1].endpoint.status is DISABLED  # type: ignore[union-attr]


def test_event_snapshots_do_not_change_later(registry: Registry,
                                             events: list[Event]) -> None:
    registry.register("web", "http://h:1")
    registry.set_status("web", "h:1", DISABLED, "x")
    assert events[0].endpoint is not None and events[0].endpoint.status is ACTIVE


def test_unsubscribe(registry: Registry) -> None:
    seen: list[Event] = []
    unsubscribe = registry.bus.subscribe(seen.append)
    registry.register("web", "http://h:1")
    unsubscribe()
    unsubscribe()  # twice is harmless
    registry.register("web", "http://h:2")
    assert len(seen) == 1
    assert registry.sequence == 2


def test_a_failing_listener_breaks_nothing(registry: Registry,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    seen: list[Event] = []
    registry.bus.subscribe(broken)
    registry.bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="sidecar.events"):
        info = registry.register("web", "http://h:1")
    assert registry.get("web", "h:1") == info
    assert [e.kind for e in seen] == [EventKind.ENDPOINT_ADDED]
    assert "event listener failed" in caplog.text


def test_listener_may_unsubscribe_while_being_called(registry: Registry) -> None:
    seen: list[int] = []
    holder: dict[str, Any] = {}

    def once(event: Event) -> None:
        seen.append(event.sequence)
        holder["unsubscribe"]()

    holder["unsubscribe"] = registry.bus.subscribe(once)
    registry.register("web", "http://h:1")
    registry.register("web", "http://h:2")
    assert seen == [1]


# ------------------------------------------------------------ apply_config


def test_apply_config_adds_declared_endpoints_and_emits(registry: Registry,
                                                        events: list[Event]) -> None:
    cfg = config(cluster("web", "http://h:1", {"url": "http://h:2", "id": "two", "weight": 3,
                                               "labels": {"v": "2"}}, lb_policy="random"))
    info = apply(registry, cfg)
    assert [(i.id, i.url, i.weight, i.source, i.status, i.labels)
            for i in registry.list("web")] == [
        ("h:1", "http://h:1", 1, CONFIG, ACTIVE, {}),
        ("two", "http://h:2", 3, CONFIG, ACTIVE, {"v": "2"}),
    ]
    members = registry.clusters["web"]
    assert members.declared and members.settings.lb_policy == "random"
    assert [e.id for e in members.routable] == ["h:1", "two"]
    assert [(e.sequence, e.kind, e.reason) for e in events] == [
        (1, EventKind.ENDPOINT_ADDED, "config"),
        (2, EventKind.ENDPOINT_ADDED, "config"),
        (3, EventKind.CONFIG_LOADED, ""),
    ]
    assert events[-1].config == info == registry.config_info


def test_apply_config_reconciles_config_endpoints(registry: Registry, clock: FakeClock,
                                                  events: list[Event]) -> None:
    apply(registry, config(cluster("web", {"url": "http://h:1", "id": "keep"},
                                   {"url": "http://h:2", "id": "drop"},
                                   {"url": "http://h:3", "id": "moved"})))
    registry.register("web", "http://h:9", endpoint_id="admin")
    registry.set_status("web", "keep", DISABLED, "operator")
    clock.advance(10)
    del events[:]
    apply(registry, config(cluster("web", {"url": "http://h:1", "id": "keep", "weight": 5,
                                           "labels": {"new": "1"}},
                                   {"url": "http://h:4", "id": "moved"},
                                   {"url": "http://h:5", "id": "added"})), "v2")
    by_id = {i.id: i for i in registry.list("web")}
    assert sorted(by_id) == ["added", "admin", "keep", "moved"]
    keep = by_id["keep"]
    assert (keep.weight, keep.labels, keep.create_time, keep.status) == (
        5, {"new": "1"}, 1_000.0, DISABLED)
    assert (by_id["moved"].url, by_id["moved"].create_time) == ("http://h:4", 1_010.0)
    assert by_id["admin"].source is ADMIN
    assert [e.id for e in registry.clusters["web"].routable] == ["added", "admin", "moved"]
    assert [(e.kind, e.endpoint.id if e.endpoint else None, e.reason) for e in events] == [
        (EventKind.ENDPOINT_REMOVED, "drop", "removed from config"),
        (EventKind.ENDPOINT_REMOVED, "moved", "removed from config"),
        (EventKind.ENDPOINT_ADDED, "moved", "config"),
        (EventKind.ENDPOINT_ADDED, "added", "config"),
        (EventKind.CONFIG_LOADED, None, ""),
    ]
    assert [e.sequence for e in events] == list(range(events[0].sequence,
                                                      events[0].sequence + 5))


def test_reapplying_the_same_config_changes_nothing_but_emits_config_loaded(
        registry: Registry, events: list[Event]) -> None:
    cfg = config(cluster("web", "http://h:1", "http://h:2"))
    apply(registry, cfg)
    before = registry.list()
    del events[:]
    apply(registry, cfg)
    assert registry.list() == before
    assert [e.kind for e in events] == [EventKind.CONFIG_LOADED]


def test_admin_endpoints_survive_reloads(registry: Registry) -> None:
    apply(registry, config(cluster("web", "http://h:1")))
    registry.register("web", "http://h:2", endpoint_id="admin", weight=4)
    registry.register("dyn", "http://h:3")
    apply(registry, config(cluster("web", "http://h:5")), "v2")
    assert ids(registry.list()) == [("dyn", "h:3"), ("web", "admin"), ("web", "h:5")]
    assert registry.get("web", "admin").weight == 4


@pytest.mark.parametrize("declared", [
    {"url": "http://h:2"},                   # the same URL under the default id
    {"url": "http://H:2/", "id": "other"},   # the same URL, normalised, another id
    {"url": "http://h:7", "id": "admin"},    # the same id, another URL
])
def test_admin_endpoint_replaced_when_config_declares_it(
        registry: Registry, events: list[Event], declared: dict[str, Any]) -> None:
    apply(registry, config(cluster("web", "http://h:1")))
    registry.register("web", "http://h:2", endpoint_id="admin")
    del events[:]
    apply(registry, config(cluster("web", "http://h:1", declared)), "v2")
    sources = {i.id: (i.source, i.url) for i in registry.list("web")}
    assert len(sources) == 2
    assert all(source is CONFIG for source, _ in sources.values())
    assert (EventKind.ENDPOINT_REMOVED, "admin", "replaced by an endpoint from config") in [
        (e.kind, e.endpoint.id if e.endpoint else None, e.reason) for e in events]


def test_cluster_removed_from_config_keeps_its_admin_endpoints(registry: Registry) -> None:
    apply(registry, config(cluster("web", "http://h:1", lb_policy="random", timeout="3s")))
    registry.register("web", "http://h:2", endpoint_id="admin")
    apply(registry, config(cluster_defaults={"lb_policy": "least_request"}), "v2")
    members = registry.clusters["web"]
    assert ids(registry.list()) == [("web", "admin")]
    assert not members.declared
    assert members.settings.lb_policy == "least_request" and members.settings.timeout == 15.0
    assert [e.id for e in members.routable] == ["admin"]
    registry.deregister("web", "admin")  # now dynamic: gone with its last endpoint
    assert "web" not in registry.clusters


def test_cluster_removed_from_config_without_admin_endpoints_is_gone(registry: Registry) -> None:
    apply(registry, config(cluster("web", "http://h:1"), cluster("empty")))
    apply(registry, config(), "v2")
    assert registry.list() == []
    assert registry.clusters == {}


def test_dynamic_cluster_becomes_declared(registry: Registry) -> None:
    registry.register("api", "http://h:1", endpoint_id="admin")
    apply(registry, config(cluster("api", "http://h:2", lb_policy="random")))
    members = registry.clusters["api"]
    assert members.declared and members.settings.lb_policy == "random"
    assert ids(registry.list()) == [("api", "admin"), ("api", "h:2")]
    registry.deregister("api", "admin")
    assert "api" in registry.clusters


def test_reload_gives_dynamic_clusters_the_new_defaults(registry: Registry) -> None:
    registry.register("dyn", "http://h:1")
    apply(registry, config(cluster_defaults={"lb_policy": "random"}))
    assert registry.clusters["dyn"].settings.lb_policy == "random"
    registry.register("later", "http://h:1")
    assert registry.clusters["later"].settings.lb_policy == "random"


def test_declared_cluster_settings_follow_the_config(registry: Registry) -> None:
    apply(registry, config(cluster("web", "http://h:1", timeout="2s")))
    apply(registry, config(cluster("web", "http://h:1", timeout="4s")), "v2")
    assert registry.clusters["web"].settings.timeout == 4.0


# ------------------------------------------------------------ state file


def saved(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1
    endpoints: list[dict[str, Any]] = data["endpoints"]
    return sorted(endpoints, key=lambda e: (e["cluster"], e["id"]))


def comparable(registry: Registry) -> list[tuple[Any, ...]]:
    return [(i.cluster, i.id, i.url, i.weight, i.status, i.source, i.labels)
            for i in registry.list()]


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    first = Registry(FakeClock(), state_file=str(path))
    apply(first, config(cluster("web", "http://h:1")))
    first.register("web", "http://h:2", endpoint_id="a", weight=3, labels={"zone": "x"})
    first.register("dyn", "https://h:3")
    first.register("dyn", "http://h:4", endpoint_id="gone")
    first.set_status("dyn", "h:3", DISABLED, "maintenance")
    first.deregister("dyn", "gone")
    assert [e["id"] for e in saved(path)] == ["h:3", "a"]  # only ADMIN endpoints
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp files left

    second = Registry(FakeClock(), state_file=str(path))
    assert second.load_state() == 2
    apply(second, config(cluster("web", "http://h:1")))
    assert comparable(second) == comparable(first)


def test_state_file_survives_restart_in_app_order(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    cfg = config(cluster("web", "http://h:1"))
    first = Registry(FakeClock(), state_file=str(path))
    apply(first, cfg)
    first.register("web", "http://h:2", endpoint_id="a")
    second = Registry(FakeClock(), state_file=str(path))
    apply(second, cfg)  # as app.start does: apply the config, then load the state
    assert second.load_state() == 1
    assert comparable(second) == comparable(first)


def test_state_file_written_on_each_admin_change(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    registry = Registry(FakeClock(), state_file=str(path))
    registry.register("web", "http://h:1")
    assert [e["status"] for e in saved(path)] == ["ACTIVE"]
    registry.set_status("web", "h:1", DISABLED, "x")
    assert [e["status"] for e in saved(path)] == ["DISABLED"]
    registry.deregister("web", "h:1")
    assert saved(path) == []


def test_load_state_skips_entries_that_conflict(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    registry = Registry(FakeClock(), state_file=str(path))
    apply(registry, config(cluster("web", "http://h:1")))
    path.write_text(json.dumps({"version": 1, "endpoints": [
        {"cluster": "web", "id": "dup", "url": "http://h:1", "weight": 1, "status": "ACTIVE",
         "labels": {}},
        {"cluster": "web", "id": "ok", "url": "http://h:2", "weight": 2, "status": "DISABLED",
         "labels": {"a": "b"}},
        {"cluster": "web", "id": "ok", "url": "http://h:3"},
    ]}))
    assert registry.load_state() == 1
    assert ids(registry.list()) == [("web", "h:1"), ("web", "ok")]
    ok = registry.get("web", "ok")
    assert (ok.weight, ok.status, ok.labels, ok.source) == (2, DISABLED, {"a": "b"}, ADMIN)


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    "[]",
    "null",
    '{"version": 1}',
    '{"endpoints": 5}',
    '{"endpoints": "x"}',
    '{"endpoints": [1, "x", null, {"cluster": "web"}, {"cluster": "", "url": "http://h:1", '
    '"id": "a"}, {"cluster": "web", "url": "http://h:1", "id": "a", "weight": "heavy"}, '
    '{"cluster": "web", "url": "http://h:1", "id": "a", "labels": {"k": 5}}]}',
    "\x00\xff garbage",
])
def test_corrupt_state_file_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content, encoding="latin-1")
    registry = Registry(FakeClock(), state_file=str(path))
    assert registry.load_state() == 0
    assert registry.list() == [] and registry.clusters == {}
    registry.register("web", "http://h:9")  # and the registry still works
    assert [e["id"] for e in saved(path)] == ["h:9"]


def test_corrupt_state_file_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_text("{nope")
    with caplog.at_level(logging.ERROR, logger="sidecar.registry"):
        assert Registry(FakeClock(), state_file=str(path)).load_state() == 0
    assert "state file unreadable" in caplog.text


def test_load_state_without_a_file(tmp_path: Path) -> None:
    assert Registry(FakeClock()).load_state() == 0
    assert Registry(FakeClock(), state_file=str(tmp_path / "missing.json")).load_state() == 0
    assert not (tmp_path / "missing.json").exists()


def test_no_state_file_is_written_without_a_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Registry(FakeClock()).register("web", "http://h:1")
    assert list(tmp_path.iterdir()) == []

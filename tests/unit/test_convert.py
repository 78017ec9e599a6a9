"""admin.convert without a server: messages, error table, request reading, paging."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from admin import convert
from admin.testing import SAMPLE_CONFIG, load_config
from admin.watch import Snapshot
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.core.breaker import BreakerState, Transition
from sidecar.core.clock import FakeClock
from sidecar.core.health import CheckResult, HealthChange, HealthStatus
from sidecar.core.hosts import Host
from sidecar.core.routing import RouteTable
from sidecar.errors import (
    ConfigIssue,
    EndpointExists,
    EndpointNotFound,
    EndpointNotRemovable,
    InvalidEndpoint,
    MethodNotAllowed,
    NoRoute,
    RegistryError,
    UnknownCluster,
)
from sidecar.events import Event, EventKind
from sidecar.registry import ConfigInfo, EndpointInfo, EndpointSource, EndpointStatus, Registry

INFO = EndpointInfo("users", "u1", "http://127.0.0.1:8081", 5, EndpointStatus.DRAINING,
                    EndpointSource.ADMIN, {"zone": "eu-1"}, 1_700_000_000.25, 1_700_000_001.5, 3)
CONFIG = ConfigInfo("abc123", "/etc/sidecar.jsonnet", 1_700_000_000.0, 2, 3)


def endpoint(cluster: str, endpoint_id: str) -> EndpointInfo:
    return EndpointInfo(cluster, endpoint_id, "http://h:1", 1, EndpointStatus.ACTIVE,
                        EndpointSource.CONFIG, {}, 0.0, 0.0, 0)


# ---------------------------------------------------------------- domain -> proto


@pytest.mark.parametrize(("seconds", "expected"), [
    (0.0, (0, 0)),
    (1.5, (1, 500_000_000)),
    (1_700_000_000.25, (1_700_000_000, 250_000_000)),
    (-1.25, (-2, 750_000_000)),
    (0.9999999999, (1, 0)),
])
def test_timestamp(seconds: float, expected: tuple[int, int]) -> None:
    ts = convert.timestamp(seconds)
    assert (ts.seconds, ts.nanos) == expected


@pytest.mark.parametrize("status", list(EndpointStatus))
def test_status_numbers_equal_the_proto_enum(status: EndpointStatus) -> None:
    assert res.EndpointStatus.Value(f"ENDPOINT_STATUS_{status.name}") == status.value


@pytest.mark.parametrize("source", list(EndpointSource))
def test_source_numbers_equal_the_proto_enum(source: EndpointSource) -> None:
    assert res.EndpointSource.Value(f"ENDPOINT_SOURCE_{source.name}") == source.value


def test_endpoint_to_proto() -> None:
    message = convert.endpoint_to_proto(INFO)
    assert (message.cluster, message.id, message.url, message.weight) == (
        "users", "u1", "http://127.0.0.1:8081", 5)
    assert message.status == res.ENDPOINT_STATUS_DRAINING
    assert message.source == res.ENDPOINT_SOURCE_ADMIN
    assert dict(message.labels) == {"zone": "eu-1"}
    assert message.create_time.ToNanoseconds() == 1_700_000_000_250_000_000
    assert message.update_time.ToNanoseconds() == 1_700_000_001_500_000_000
    assert message.active_requests == 3


def test_config_info_to_proto() -> None:
    message = convert.config_info_to_proto(CONFIG)
    assert (message.version, message.source, message.cluster_count, message.route_count) == (
        "abc123", "/etc/sidecar.jsonnet", 2, 3)
    assert message.load_time.seconds == 1_700_000_000


@pytest.mark.parametrize(("event", "field"), [
    (Event(7, 10.5, EventKind.ENDPOINT_ADDED, endpoint=INFO, reason="registered"),
     "endpoint_added"),
    (Event(7, 10.5, EventKind.ENDPOINT_REMOVED, endpoint=INFO, reason="deregistered"),
     "endpoint_removed"),
    (Event(7, 10.5, EventKind.ENDPOINT_STATUS_CHANGED, endpoint=INFO,
                   previous_status=EndpointStatus.ACTIVE, reason="draining"),
     "endpoint_status_changed"),
    (Event(7, 10.5, EventKind.CONFIG_LOADED, config=CONFIG), "config_loaded"),
])
def test_event_to_proto(event: Event, field: str) -> None:
    message = convert.event_to_proto(event)
    assert message.sequence == 7
    assert message.time.ToNanoseconds() == 10_500_000_000
    assert message.WhichOneof("change") == field


def test_event_details() -> None:
    changed = convert.event_to_proto(Event(
        1, 0.0, EventKind.ENDPOINT_STATUS_CHANGED, endpoint=INFO,
        previous_status=EndpointStatus.ACTIVE, reason="draining"))
    assert changed.endpoint_status_changed.previous_status == res.ENDPOINT_STATUS_ACTIVE
    assert changed.endpoint_status_changed.endpoint.status == res.ENDPOINT_STATUS_DRAINING
    assert changed.endpoint_status_changed.reason == "draining"
    removed = convert.event_to_proto(Event(
        1, 0.0, EventKind.ENDPOINT_REMOVED, endpoint=INFO, reason="deregistered"))
    assert removed.endpoint_removed.reason == "deregistered"
    loaded = convert.event_to_proto(Event(1, 0.0, EventKind.CONFIG_LOADED, config=CONFIG))
    assert loaded.config_loaded.config.version == "abc123"


def test_snapshot_and_watch_response() -> None:
    message = convert.watch_response(Snapshot([INFO], CONFIG, 42))
    assert message.WhichOneof("kind") == "snapshot"
    assert message.snapshot.sequence == 42
    assert [e.id for e in message.snapshot.endpoints] == ["u1"]
    assert message.snapshot.config.version == "abc123"
    assert not convert.snapshot_to_proto(Snapshot([], None, 0)).HasField("config")
    event = convert.watch_response(Event(43, 0.0, EventKind.CONFIG_LOADED, config=CONFIG))
    assert event.WhichOneof("kind") == "event" and event.event.sequence == 43


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("error", "code"), [
    (InvalidEndpoint("bad url"), grpc.StatusCode.INVALID_ARGUMENT),
    (convert.InvalidArgument("bad token"), grpc.StatusCode.INVALID_ARGUMENT),
    (EndpointExists("dup"), grpc.StatusCode.ALREADY_EXISTS),
    (EndpointNotFound("gone"), grpc.StatusCode.NOT_FOUND),
    (EndpointNotRemovable("config"), grpc.StatusCode.FAILED_PRECONDITION),
    (convert.ConfigNotLoaded("not yet"), grpc.StatusCode.FAILED_PRECONDITION),
])
def test_status_table(error: Exception, code: grpc.StatusCode) -> None:
    assert convert.status_for(error) == (code, str(error))
    assert isinstance(error, convert.MAPPED_ERRORS)


def test_subclass_inherits_the_code() -> None:
    class Special(EndpointNotFound):
        pass

    assert convert.status_for(Special("x")) == (grpc.StatusCode.NOT_FOUND, "x")


def test_unmapped_errors_say_nothing_inside() -> None:
    assert convert.status_for(RuntimeError("/secret/path")) == (
        grpc.StatusCode.INTERNAL, "internal error")
    assert not isinstance(RegistryError("base"), convert.MAPPED_ERRORS)


# ---------------------------------------------------------------- requests


def test_registration_defaults() -> None:
    args = convert.registration(api.RegisterEndpointRequest(
        endpoint=res.Endpoint(cluster="users", url="http://h:1")))
    assert args == convert.Registration("users", "http://h:1", "", 1, EndpointStatus.ACTIVE, {})


def test_registration_reads_every_input_field_and_ignores_output_only() -> None:
    args = convert.registration(api.RegisterEndpointRequest(endpoint=res.Endpoint(
        cluster="users", url="http://h:1", id="x", weight=7, status=res.ENDPOINT_STATUS_DISABLED,
        labels={"a": "b"}, source=res.ENDPOINT_SOURCE_CONFIG, active_requests=9)))
    assert args == convert.Registration("users", "http://h:1", "x", 7, EndpointStatus.DISABLED,
                                        {"a": "b"})


def test_registration_explicit_zero_weight_is_passed_for_the_registry_to_reject() -> None:
    args = convert.registration(api.RegisterEndpointRequest(
        endpoint=res.Endpoint(cluster="users", url="http://h:1", weight=0)))
    assert args.weight == 0


def test_registration_unknown_status() -> None:
    endpoint = res.Endpoint(cluster="users", url="http://h:1")
    endpoint.status = 99  # type: ignore[assignment]  # an enum number from a newer client
    with pytest.raises(convert.InvalidArgument, match="unknown endpoint status 99"):
        convert.registration(api.RegisterEndpointRequest(endpoint=endpoint))


def test_status_filter() -> None:
    assert convert.status_filter(0) is None
    assert convert.status_filter(2) is EndpointStatus.UNHEALTHY
    with pytest.raises(convert.InvalidArgument):
        convert.status_filter(17)


def test_require() -> None:
    assert convert.require("id", "x") == "x"
    with pytest.raises(convert.InvalidArgument, match="id is required"):
        convert.require("id", "")


# ---------------------------------------------------------------- paging


@pytest.mark.parametrize(("given", "used"), [(0, 100), (1, 1), (1000, 1000)])
def test_page_size(given: int, used: int) -> None:
    assert convert.page_size(given) == used


@pytest.mark.parametrize("given", [-1, 1001])
def test_page_size_out_of_range(given: int) -> None:
    with pytest.raises(convert.InvalidArgument, match="page_size"):
        convert.page_size(given)


def test_page_token_round_trip_and_filters() -> None:
    token = convert.encode_page_token("users", EndpointStatus.ACTIVE, ("users", "u1"))
    assert convert.decode_page_token(token, "users", EndpointStatus.ACTIVE) == ("users", "u1")
    assert convert.decode_page_token("", "users", None) is None
    with pytest.raises(convert.InvalidArgument, match="different filters"):
        convert.decode_page_token(token, "users", None)
    with pytest.raises(convert.InvalidArgument, match="different filters"):
        convert.decode_page_token(token, "orders", EndpointStatus.ACTIVE)


@pytest.mark.parametrize("token", ["not base64!", "e30", "W10", "eyJmIjoxfQ", "%%%"])
def test_page_token_garbage(token: str) -> None:
    with pytest.raises(convert.InvalidArgument, match="not a token"):
        convert.decode_page_token(token, "", None)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6])
def test_paginate_walks_every_item_once(size: int) -> None:
    items = [endpoint(c, i) for c in ("a", "b") for i in ("1", "2", "3")]
    seen: list[EndpointInfo] = []
    token = ""
    for _ in range(10):
        page = convert.paginate(items, cluster="", status=None, size=size, token=token)
        assert page.total_size == 6 and len(page.endpoints) <= size
        seen += page.endpoints
        token = page.next_page_token
        if not token:
            break
    assert seen == items


def test_paginate_survives_removal_of_the_last_item_shown() -> None:
    items = [endpoint("a", i) for i in ("1", "2", "3", "4")]
    first = convert.paginate(items, cluster="", status=None, size=2, token="")
    assert [e.id for e in first.endpoints] == ["1", "2"]
    remaining = [e for e in items if e.id != "2"]
    second = convert.paginate(remaining, cluster="", status=None, size=2,
                              token=first.next_page_token)
    assert [e.id for e in second.endpoints] == ["3", "4"] and second.next_page_token == ""


# ---------------------------------------------------------------- observed state

WALL_OFFSET = 1_700_000_000.0  # FakeClock: wall() = now() + this


def checked_registry(**cluster: Any) -> tuple[Registry, FakeClock]:
    """SAMPLE_CONFIG on a FakeClock, the users cluster with extra settings."""
    clock = FakeClock(1_000.0, wall_offset=WALL_OFFSET)
    registry = Registry(clock=clock)
    config = {**SAMPLE_CONFIG, "clusters": [
        {**SAMPLE_CONFIG["clusters"][0], **cluster}, *SAMPLE_CONFIG["clusters"][1:]]}
    load_config(registry, config)
    return registry, clock


def host(registry: Registry, endpoint_id: str, cluster: str = "users") -> Host:
    return registry.endpoint(cluster, endpoint_id).host


@pytest.mark.parametrize("state", list(BreakerState))
def test_breaker_state_numbers_equal_the_proto_enum(state: BreakerState) -> None:
    assert res.BreakerState.Value(f"BREAKER_STATE_{state.name}") == state.value


@pytest.mark.parametrize("status", list(HealthStatus))
def test_health_status_numbers_equal_the_proto_enum(status: HealthStatus) -> None:
    assert res.HealthStatus.Value(f"HEALTH_STATUS_{status.name}") == status.value


def test_wall_time_is_stable_and_follows_a_set_wall_clock() -> None:
    clock = FakeClock(500.0, wall_offset=WALL_OFFSET)
    wall = convert.WallTime(clock)
    assert wall(400.0) == WALL_OFFSET + 400.0
    clock.advance(10)
    assert wall(400.0) == WALL_OFFSET + 400.0
    jumped = FakeClock(500.0, wall_offset=WALL_OFFSET + 3600)  # the wall clock was set
    wall._clock = jumped
    assert wall(400.0) == WALL_OFFSET + 3600 + 400.0


def test_observed_of_a_new_endpoint() -> None:
    registry, clock = checked_registry()
    seen = convert.observed(host(registry, "u1"), convert.WallTime(clock))
    assert seen == convert.Observed(BreakerState.CLOSED, "", WALL_OFFSET + 1_000.0, None, None,
                                    "", (), 0, 0)


def test_observed_tripped_breaker_in_wall_time_and_counts() -> None:
    registry, clock = checked_registry()
    target = host(registry, "u1")
    hosts = registry.clusters["users"].hosts
    hosts.on_success(target)
    hosts.on_failure(target, "connect_failure")
    clock.advance(5)
    hosts.trip(target, "tripped by admin", 30.0)
    clock.advance(1)
    seen = convert.observed(target, convert.WallTime(clock))
    assert seen.breaker_state is BreakerState.OPEN
    assert seen.breaker_reason == "tripped by admin"
    assert seen.breaker_since == WALL_OFFSET + 1_005.0
    assert seen.breaker_half_open_time == WALL_OFFSET + 1_035.0
    assert (seen.request_count, seen.failure_count) == (2, 1)
    message = convert.endpoint_to_proto(registry.get("users", "u1"), seen)
    assert message.breaker_state == res.BREAKER_STATE_OPEN
    assert message.breaker_since.ToNanoseconds() == int((WALL_OFFSET + 1_005) * 1e9)
    assert message.breaker_half_open_time.seconds == int(WALL_OFFSET + 1_035)
    assert (message.request_count, message.failure_count) == (2, 1)
    assert message.health == res.HEALTH_STATUS_UNSPECIFIED
    assert message.status == res.ENDPOINT_STATUS_UNHEALTHY


def test_observed_health_and_its_results_newest_first() -> None:
    registry, clock = checked_registry(health_check={"path": "/healthz",
                                                     "unhealthy_threshold": 2})
    target = host(registry, "u1")
    hosts = registry.clusters["users"].hosts
    assert convert.observed(target, convert.WallTime(clock)).health is HealthStatus.UNKNOWN
    hosts.on_check(target, True, status=200, latency=0.004)
    clock.advance(5)
    hosts.on_check(target, False, status=None, latency=1.0, error="timed out")
    clock.advance(5)
    hosts.on_check(target, False, status=503, latency=0.002)
    seen = convert.observed(target, convert.WallTime(clock))
    assert seen.health is HealthStatus.UNHEALTHY
    assert seen.health_reason == "2 consecutive failed checks: status 503"
    message = convert.endpoint_to_proto(registry.get("users", "u1"), seen)
    assert message.health == res.HEALTH_STATUS_UNHEALTHY
    assert message.health_reason == seen.health_reason
    results = message.health_check_results
    assert [(r.passed, r.status_code, r.error) for r in results] == [
        (False, 503, ""), (False, 0, "timed out"), (True, 200, "")]
    assert results[0].time.seconds == int(WALL_OFFSET + 1_010)
    assert results[0].latency.ToNanoseconds() == 2_000_000
    assert results[1].latency.seconds == 1


def test_endpoint_without_observed_state_leaves_those_fields_unset() -> None:
    message = convert.endpoint_to_proto(INFO)
    assert message.breaker_state == res.BREAKER_STATE_UNSPECIFIED
    assert not message.HasField("breaker_since")
    assert not message.HasField("breaker_half_open_time")
    assert (message.request_count, len(message.health_check_results)) == (0, 0)


def test_check_result_to_proto() -> None:
    message = convert.check_result_to_proto(CheckResult(1_700_000_000.5, False, None, 1.25,
                                                        "connection refused"))
    assert message.time.ToNanoseconds() == 1_700_000_000_500_000_000
    assert (message.passed, message.status_code, message.error) == (
        False, 0, "connection refused")
    assert message.latency.ToNanoseconds() == 1_250_000_000


# ---------------------------------------------------------------- every event kind

TRANSITION = Transition(BreakerState.CLOSED, BreakerState.OPEN, "5 consecutive timeouts", 3.0)
CHANGE = HealthChange(HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, "3 consecutive failed "
                      "checks: status 503", 3.0)
SAMPLES: dict[EventKind, tuple[Event, str]] = {
    EventKind.ENDPOINT_ADDED: (Event(1, 0.0, EventKind.ENDPOINT_ADDED, endpoint=INFO),
                               "endpoint_added"),
    EventKind.ENDPOINT_REMOVED: (Event(1, 0.0, EventKind.ENDPOINT_REMOVED, endpoint=INFO),
                                 "endpoint_removed"),
    EventKind.ENDPOINT_STATUS_CHANGED: (
        Event(1, 0.0, EventKind.ENDPOINT_STATUS_CHANGED, endpoint=INFO,
              previous_status=EndpointStatus.ACTIVE), "endpoint_status_changed"),
    EventKind.CONFIG_LOADED: (Event(1, 0.0, EventKind.CONFIG_LOADED, config=CONFIG),
                              "config_loaded"),
    EventKind.BREAKER_CHANGED: (
        Event(1, 0.0, EventKind.BREAKER_CHANGED, endpoint=INFO, breaker=TRANSITION,
              reason=TRANSITION.reason), "breaker_changed"),
    EventKind.HEALTH_CHANGED: (
        Event(1, 0.0, EventKind.HEALTH_CHANGED, endpoint=INFO, health=CHANGE,
              reason=CHANGE.reason), "health_changed"),
    EventKind.PANIC_CHANGED: (
        Event(1, 0.0, EventKind.PANIC_CHANGED, cluster="users", panic=True,
              reason="too few healthy"), "panic_changed"),
    EventKind.FALLBACK_USED: (
        Event(1, 0.0, EventKind.FALLBACK_USED, cluster="users", route="users-api",
              fallback="cache", reason="no_healthy_upstream"), "fallback_used"),
    EventKind.LIFECYCLE_CHANGED: (
        Event(1, 0.0, EventKind.LIFECYCLE_CHANGED, state="draining", previous_state="ready",
              reason="Drain RPC"), "lifecycle_changed"),
    EventKind.CONFIG_REJECTED: (
        Event(1, 0.0, EventKind.CONFIG_REJECTED, source="/etc/sidecar.jsonnet",
              stage="validate", reason="SIGHUP",
              issues=(ConfigIssue("routes[0].cluster", "unknown cluster 'x'"),)),
        "config_rejected"),
    EventKind.STATE_FILE_CORRUPT: (
        Event(1, 0.0, EventKind.STATE_FILE_CORRUPT, source="/var/lib/s.json",
              moved_to="/var/lib/s.json.corrupt-20260101T000000Z", reason="bad JSON"),
        "state_file_corrupt"),
}


def test_every_event_kind_has_a_message() -> None:
    assert set(SAMPLES) == set(EventKind), "add a sample (and a mapping) for the new kind"
    assert convert.STREAMED_KINDS == frozenset(EventKind)
    fields = res.StatusEvent.DESCRIPTOR.oneofs_by_name["change"].fields
    assert {SAMPLES[kind][1] for kind in EventKind} == {f.name for f in fields}


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_event_kind_converts(kind: EventKind) -> None:
    event, field = SAMPLES[kind]
    message = convert.event_to_proto(event)
    assert message.WhichOneof("change") == field


def test_breaker_and_health_events() -> None:
    breaker = convert.event_to_proto(SAMPLES[EventKind.BREAKER_CHANGED][0]).breaker_changed
    assert (breaker.previous_state, breaker.state) == (res.BREAKER_STATE_CLOSED,
                                                       res.BREAKER_STATE_OPEN)
    assert breaker.reason == "5 consecutive timeouts"
    assert breaker.endpoint.id == "u1"
    assert not breaker.endpoint.HasField("breaker_since")  # events carry no observed state
    health = convert.event_to_proto(SAMPLES[EventKind.HEALTH_CHANGED][0]).health_changed
    assert (health.previous_status, health.status) == (res.HEALTH_STATUS_HEALTHY,
                                                       res.HEALTH_STATUS_UNHEALTHY)
    assert health.reason == CHANGE.reason and health.endpoint.cluster == "users"


def test_panic_and_fallback_events() -> None:
    panic = convert.event_to_proto(SAMPLES[EventKind.PANIC_CHANGED][0]).panic_changed
    assert (panic.cluster, panic.panic, panic.reason) == ("users", True, "too few healthy")
    left = convert.event_to_proto(Event(2, 0.0, EventKind.PANIC_CHANGED, cluster="users",
                                        panic=False)).panic_changed
    assert left.panic is False
    used = convert.event_to_proto(SAMPLES[EventKind.FALLBACK_USED][0]).fallback_used
    assert (used.route, used.cluster, used.kind, used.reason) == (
        "users-api", "users", res.FALLBACK_KIND_CACHE, "no_healthy_upstream")
    for name, number in (("cluster", res.FALLBACK_KIND_CLUSTER),
                         ("static", res.FALLBACK_KIND_STATIC),
                         ("carrier-pigeon", res.FALLBACK_KIND_UNSPECIFIED)):
        event = Event(3, 0.0, EventKind.FALLBACK_USED, fallback=name)
        assert convert.event_to_proto(event).fallback_used.kind == number


def test_lifecycle_and_config_rejected_events() -> None:
    life = convert.event_to_proto(SAMPLES[EventKind.LIFECYCLE_CHANGED][0]).lifecycle_changed
    assert (life.previous_state, life.state, life.reason) == (
        res.SERVER_STATE_READY, res.SERVER_STATE_DRAINING, "Drain RPC")
    for name in ("starting", "ready", "draining", "stopped"):
        assert convert.SERVER_STATES[name] != res.SERVER_STATE_UNSPECIFIED
    corrupt = convert.event_to_proto(
        SAMPLES[EventKind.STATE_FILE_CORRUPT][0]).state_file_corrupt
    assert (corrupt.path, corrupt.moved_to, corrupt.error) == (
        "/var/lib/s.json", "/var/lib/s.json.corrupt-20260101T000000Z", "bad JSON")
    bad = convert.event_to_proto(SAMPLES[EventKind.CONFIG_REJECTED][0]).config_rejected
    assert (bad.source, bad.stage, bad.trigger) == ("/etc/sidecar.jsonnet", "validate",
                                                    "SIGHUP")
    assert [(i.path, i.message) for i in bad.issues] == [
        ("routes[0].cluster", "unknown cluster 'x'")]


def test_drain_deadline() -> None:
    assert convert.drain_deadline(api.DrainRequest()) is None
    assert convert.drain_deadline(api.DrainRequest(deadline=Duration(seconds=2,
                                                                     nanos=500_000_000))) == 2.5
    for bad in (Duration(), Duration(seconds=-1), Duration(seconds=3601)):
        with pytest.raises(convert.InvalidArgument):
            convert.drain_deadline(api.DrainRequest(deadline=bad))


def test_snapshot_with_observed_state() -> None:
    registry, clock = checked_registry()
    wall = convert.WallTime(clock)
    endpoints, config, sequence = registry.snapshot("users")
    message = convert.snapshot_to_proto(
        Snapshot(endpoints, config, sequence),
        lambda info: convert.observed(registry.endpoint(info.cluster, info.id).host, wall))
    assert [e.breaker_state for e in message.endpoints] == [res.BREAKER_STATE_CLOSED] * 2


# ---------------------------------------------------------------- new errors


@pytest.mark.parametrize(("error", "code"), [
    (convert.NotConfigured("no checks"), grpc.StatusCode.FAILED_PRECONDITION),
    (convert.RouteNotFound("no route"), grpc.StatusCode.NOT_FOUND),
    (convert.RouteMethodNotAllowed("POST"), grpc.StatusCode.FAILED_PRECONDITION),
])
def test_status_table_new_errors(error: Exception, code: grpc.StatusCode) -> None:
    assert convert.status_for(error) == (code, str(error))


# ---------------------------------------------------------------- UpdateEndpoint


def update(mask: list[str] | None = None, **fields: Any) -> convert.Update:
    request = api.UpdateEndpointRequest(cluster="users", id="u1", **fields)
    if mask is not None:
        request.update_mask.CopyFrom(FieldMask(paths=mask))
    return convert.update_request(request)


def test_update_mask_selects_fields() -> None:
    args = update(["weight"], weight=7, labels={"a": "b"}, status=res.ENDPOINT_STATUS_DISABLED)
    assert (args.weight, args.labels, args.status) == (7, None, None)
    args = update(["labels"], weight=7)
    assert (args.weight, args.labels, args.status) == (None, {}, None)  # clears the labels
    args = update(["status", "labels"], status=res.ENDPOINT_STATUS_DRAINING, labels={"a": "b"})
    assert (args.weight, args.labels, args.status) == (None, {"a": "b"},
                                                       EndpointStatus.DRAINING)
    assert args.reason == "drain started by admin"


def test_update_star_is_every_field_with_defaults() -> None:
    args = update(["*"])
    assert (args.weight, args.labels, args.status, args.reason) == (
        1, {}, EndpointStatus.ACTIVE, "enabled by admin")


def test_update_without_mask_takes_the_fields_that_are_set() -> None:
    args = update(weight=3)
    assert (args.weight, args.labels, args.status) == (3, None, None)
    args = update(status=res.ENDPOINT_STATUS_DISABLED, reason="maintenance")
    assert (args.weight, args.status, args.reason) == (None, EndpointStatus.DISABLED,
                                                       "maintenance")
    assert update([], labels={"k": "v"}).labels == {"k": "v"}  # empty mask: not specified


def test_update_explicit_zero_weight_is_passed_for_the_registry_to_reject() -> None:
    assert update(["weight"], weight=0).weight == 0
    assert update(weight=0).weight == 0


@pytest.mark.parametrize(("mask", "fields", "match"), [
    (None, {}, "nothing to update"),
    (["weight", "url"], {}, "unknown path 'url'"),
    (["status"], {"status": res.ENDPOINT_STATUS_UNHEALTHY}, "UNHEALTHY is what the sidecar"),
    (["status"], {"status": 42}, "unknown endpoint status 42"),
    (["weight"], {"reason": "x" * 257}, "reason is longer than 256"),
])
def test_update_errors(mask: list[str] | None, fields: dict[str, Any], match: str) -> None:
    with pytest.raises(convert.InvalidArgument, match=match):
        update(mask, **fields)


@pytest.mark.parametrize(("cluster", "endpoint_id", "match"), [
    ("", "u1", "cluster is required"), ("users", "", "id is required")])
def test_update_requires_cluster_and_id(cluster: str, endpoint_id: str, match: str) -> None:
    with pytest.raises(convert.InvalidArgument, match=match):
        convert.update_request(api.UpdateEndpointRequest(cluster=cluster, id=endpoint_id,
                                                         weight=2))


# ---------------------------------------------------------------- TripBreaker


def trip(seconds: int | None = None, nanos: int = 0) -> float | None:
    request = api.TripBreakerRequest(cluster="users", id="u1")
    if seconds is not None:
        request.duration.CopyFrom(Duration(seconds=seconds, nanos=nanos))
    return convert.trip_duration(request)


def test_trip_duration() -> None:
    assert trip() is None
    assert trip(30) == 30.0
    assert trip(0, 500_000_000) == 0.5
    assert trip(86_400) == 86_400.0


@pytest.mark.parametrize(("seconds", "nanos", "match"), [
    (0, 0, "must be positive"),
    (-5, 0, "must be positive"),
    (1, -1, "malformed"),
    (0, 1_000_000_000, "malformed"),
    (86_401, 0, "at most 86400s"),
])
def test_trip_duration_errors(seconds: int, nanos: int, match: str) -> None:
    with pytest.raises(convert.InvalidArgument, match=match):
        trip(seconds, nanos)


# ---------------------------------------------------------------- ResolveRoute


def query(**fields: str) -> convert.RouteQuery:
    return convert.route_query(api.ResolveRouteRequest(**fields))


def test_route_query_defaults_and_normalization() -> None:
    assert query(path="/users") == convert.RouteQuery("GET", "", "/users")
    assert query(path="/a/./b/../users?x=1", host="API.Example.com:8443", method="POST") == \
        convert.RouteQuery("POST", "api.example.com", "/a/users?x=1")
    assert query(path="/", host="[::1]:80").host == "[::1]"
    assert query(path="/", host="[::1]").host == "[::1]"


@pytest.mark.parametrize(("fields", "match"), [
    ({"path": ""}, "path is required"),
    ({"path": "users"}, "must start with '/'"),
    ({"path": "http://h/users"}, "must start with '/'"),
    ({"path": "/a b"}, "spaces or control"),
    ({"path": "/a\nb"}, "spaces or control"),
    ({"path": "/", "method": "GE T"}, "not an HTTP method"),
    ({"path": "/", "method": "G" * 33}, "not an HTTP method"),
    ({"path": "/", "host": "a b"}, "not a Host header"),
    ({"path": "/", "host": "user@host"}, "not a Host header"),
    ({"path": "/", "host": "h:port"}, "port must be a number"),
    ({"path": "/", "host": "h:1:2"}, "port must be a number"),
    ({"path": "/", "host": "[::1]x"}, "port must be a number"),
    ({"path": "/", "host": "[::1"}, "not a Host header"),
    ({"path": "/", "host": ":80"}, "not a Host header"),
])
def test_route_query_errors(fields: dict[str, str], match: str) -> None:
    with pytest.raises(convert.InvalidArgument, match=match):
        query(**fields)


def routed_registry(**cluster: Any) -> tuple[Registry, FakeClock, RouteTable]:
    registry, clock = checked_registry(**cluster)
    config = load_config(registry, {**SAMPLE_CONFIG, "clusters": [
        {**SAMPLE_CONFIG["clusters"][0], **cluster}, *SAMPLE_CONFIG["clusters"][1:]],
        "routes": [*SAMPLE_CONFIG["routes"],
                   {"name": "reports", "prefix": "/reports", "cluster": "orders",
                    "methods": ["POST"], "prefix_rewrite": "/create"}],
        "listener": {"orchestrator_prefix": "/orchestrator/"}})
    routes = RouteTable(config.routes, config.listener.orchestrator_prefix,
                        registry.clusters.__contains__)
    return registry, clock, routes


def resolver(routes: RouteTable) -> convert.Resolve:
    return lambda method, host, path: routes.match(host, method, path)


def test_resolve_route_errors_say_what_matched() -> None:
    _, _, routes = routed_registry()
    resolve = resolver(routes)
    with pytest.raises(convert.RouteNotFound, match=r"no route matches GET /nope \(host "
                                                    r"\(none\)\): .* 404 no_route"):
        convert.resolve_route(resolve, convert.RouteQuery("GET", "", "/nope"))
    with pytest.raises(convert.RouteNotFound, match="404 unknown_cluster"):
        convert.resolve_route(resolve, convert.RouteQuery("GET", "", "/orchestrator/x/y"))
    with pytest.raises(convert.RouteMethodNotAllowed,
                       match="none allows GET; allowed: POST"):
        convert.resolve_route(resolve, convert.RouteQuery("GET", "h", "/reports/1"))
    with pytest.raises(convert.RouteMethodNotAllowed, match="CONNECT is never proxied"):
        convert.resolve_route(resolve, convert.RouteQuery("CONNECT", "", "/users"))


def test_resolve_route_passes_the_normalized_request() -> None:
    seen: list[tuple[str, str, str]] = []

    def resolve(method: str, host: str, path: str) -> Any:
        seen.append((method, host, path))
        raise NoRoute()

    with pytest.raises(convert.RouteNotFound):
        convert.resolve_route(resolve, query(path="/x/../users", host="Example.com:80"))
    assert seen == [("GET", "example.com", "/users")]
    assert issubclass(UnknownCluster, NoRoute) and issubclass(MethodNotAllowed, Exception)


def test_candidates_and_reasons() -> None:
    registry, clock = checked_registry(health_check={"path": "/healthz"})
    hosts = registry.clusters["users"].hosts
    u1, u2 = host(registry, "u1"), host(registry, "u2")
    assert convert.candidate(u1, panic=False) == (False, "health unknown: no passing check "
                                                         "yet")
    assert convert.candidate(u1, panic=True) == (
        True, "health unknown: no passing check yet; ignored, the cluster is in panic mode")
    hosts.on_check(u1, True, status=200, latency=0.001)
    assert convert.candidate(u1, panic=False) == (True, "")
    hosts.trip(u1, "tripped by admin", 10.0)
    clock.advance(4)
    assert convert.candidate(u1, panic=True) == (
        False, "breaker open: tripped by admin; half-opens in 6.0s")
    clock.advance(6)  # the open time passed: HALF_OPEN at the next pick
    assert convert.candidate(u1, panic=False) == (
        True, "breaker half-open: a few live requests probe it")
    registry.set_status("users", "u2", EndpointStatus.DISABLED, "maintenance")
    assert convert.candidate(u2, panic=True) == (False, "disabled by operator")
    registry.set_status("users", "u2", EndpointStatus.DRAINING, "bye")
    assert convert.candidate(u2, panic=True) == (False, "draining: takes no new requests")


def test_likely_pick() -> None:
    registry, _ = checked_registry()
    u1, u2 = host(registry, "u1"), host(registry, "u2")
    assert convert.likely_pick("round_robin", [])[0] is None
    assert convert.likely_pick("round_robin", [u2]) == (u2, "the only usable endpoint "
                                                            "(round_robin)")
    assert convert.likely_pick("round_robin", [u1, u2])[0] is u1  # equal weights: by id
    registry.update("users", "u2", weight=5)
    chosen, why = convert.likely_pick("random", [u1, u2])
    assert chosen is u2 and why.startswith("random picks at random among the 2 usable")
    u2.active_requests = 20  # 20/5 = 4 per weight against 1/1
    u1.active_requests = 1
    chosen, why = convert.likely_pick("least_request", [u1, u2])
    assert chosen is u1 and "fewest requests in flight per weight" in why


def test_resolution_to_proto() -> None:
    registry, clock, routes = routed_registry()
    registry.clusters["users"].hosts.trip(host(registry, "u1"), "5 consecutive connect "
                                                                "failures", 30.0)
    wall = convert.WallTime(clock)
    match = convert.resolve_route(resolver(routes), query(path="/users/42?x=1"))
    response = convert.resolution_to_proto(match, registry.clusters.get(match.cluster), wall)
    assert (response.route, response.cluster, response.prefix, response.upstream_path) == (
        "/users", "users", "/users", "/users/42?x=1")
    assert [(c.endpoint.id, c.usable, c.reason) for c in response.candidates] == [
        ("u1", False, "breaker open: 5 consecutive connect failures; half-opens in 30.0s"),
        ("u2", True, "")]
    assert response.candidates[0].endpoint.breaker_state == res.BREAKER_STATE_OPEN
    assert response.endpoint.id == "u2" and not response.panic
    assert response.pick_reason == "the only usable endpoint (round_robin)"

    match = convert.resolve_route(resolver(routes), query(path="/reports/7", method="POST"))
    response = convert.resolution_to_proto(match, registry.clusters.get(match.cluster), wall)
    assert (response.route, response.upstream_path) == ("reports", "/create/7")

    registry.set_status("orders", "o1", EndpointStatus.DISABLED, "maintenance")
    response = convert.resolution_to_proto(match, registry.clusters.get(match.cluster), wall)
    assert not response.HasField("endpoint")
    assert response.pick_reason.startswith("no usable endpoint: the data plane answers 503")
    assert [(c.usable, c.reason) for c in response.candidates] == [
        (False, "disabled by operator")]

    orchestrated = convert.resolve_route(resolver(routes),
                                         query(path="/orchestrator/orders/x"))
    assert (orchestrated.route.name, orchestrated.cluster, orchestrated.target) == (
        "orchestrator", "orders", "/x")
    gone = convert.resolution_to_proto(orchestrated, None, wall)
    assert gone.pick_reason == "cluster 'orders' has no endpoints: the data plane answers 404 " \
                               "no_route"
    assert len(gone.candidates) == 0

"""admin.convert without a server: messages, error table, request reading, paging."""

from __future__ import annotations

import grpc
import pytest

from admin import convert
from admin.watch import Snapshot
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.errors import (
    EndpointExists,
    EndpointNotFound,
    EndpointNotRemovable,
    InvalidEndpoint,
    RegistryError,
)
from sidecar.events import Event, EventKind
from sidecar.registry import ConfigInfo, EndpointInfo, EndpointSource, EndpointStatus

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

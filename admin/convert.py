"""Pure translation between the registry and the admin API's protobuf messages.

Everything the servicer needs that is not I/O lives here, so it is tested without
a server:

* domain objects -> messages (`endpoint_to_proto`, `event_to_proto`, ...), with
  float epoch seconds turned into `google.protobuf.Timestamp`;
* request fields -> registry arguments, rejecting what the registry cannot judge
  (unknown enum numbers, a missing required field);
* `STATUS_CODES`, the one table from errors to gRPC status codes;
* AIP-158 paging: page sizes and opaque page tokens bound to the request's filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.errors import EndpointExists, EndpointNotFound, EndpointNotRemovable, InvalidEndpoint
from sidecar.events import Event, EventKind
from sidecar.registry import ConfigInfo, EndpointInfo, EndpointStatus

from .watch import Snapshot, WatchItem

__all__ = [
    "STREAMED_KINDS",
    "DEFAULT_PAGE_SIZE",
    "MAPPED_ERRORS",
    "MAX_PAGE_SIZE",
    "STATUS_CODES",
    "ConfigNotLoaded",
    "InvalidArgument",
    "Page",
    "Registration",
    "config_info_to_proto",
    "decode_page_token",
    "encode_page_token",
    "endpoint_to_proto",
    "event_to_proto",
    "page_size",
    "paginate",
    "registration",
    "require",
    "snapshot_to_proto",
    "status_filter",
    "status_for",
    "timestamp",
    "watch_response",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


# ---------------------------------------------------------------- errors


class InvalidArgument(ValueError):
    """A request field the registry does not judge is malformed (token, enum, required)."""


class ConfigNotLoaded(RuntimeError):
    """No configuration is serving yet (the sidecar is still starting)."""


# The only place that decides which error becomes which gRPC status. Looked up along
# the exception's MRO, so a subclass inherits its parent's code.
STATUS_CODES: Mapping[type[Exception], grpc.StatusCode] = {
    InvalidEndpoint: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    EndpointExists: grpc.StatusCode.ALREADY_EXISTS,
    EndpointNotFound: grpc.StatusCode.NOT_FOUND,
    EndpointNotRemovable: grpc.StatusCode.FAILED_PRECONDITION,
    ConfigNotLoaded: grpc.StatusCode.FAILED_PRECONDITION,
}
MAPPED_ERRORS: tuple[type[Exception], ...] = tuple(STATUS_CODES)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message to send for `exc`; INTERNAL (without details) if unmapped."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


# ---------------------------------------------------------------- domain -> proto


def timestamp(seconds: float) -> Timestamp:
    """Float epoch seconds -> Timestamp, exact to the microsecond a float can hold."""
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, 0
    return Timestamp(seconds=whole, nanos=nanos)


def endpoint_to_proto(info: EndpointInfo) -> res.Endpoint:
    return res.Endpoint(
        cluster=info.cluster,
        id=info.id,
        url=info.url,
        weight=info.weight,
        status=int(info.status),  # type: ignore[arg-type]  # equal numbers by design
        source=int(info.source),  # type: ignore[arg-type]
        labels=dict(info.labels),
        create_time=timestamp(info.create_time),
        update_time=timestamp(info.update_time),
        active_requests=max(0, info.active_requests),
    )


def config_info_to_proto(info: ConfigInfo) -> res.ConfigInfo:
    return res.ConfigInfo(
        version=info.version,
        source=info.source,
        load_time=timestamp(info.load_time),
        cluster_count=info.cluster_count,
        route_count=info.route_count,
    )


def _endpoint_added(event: Event) -> dict[str, object]:
    assert event.endpoint is not None
    return {"endpoint_added": res.EndpointAdded(endpoint=endpoint_to_proto(event.endpoint))}


def _endpoint_removed(event: Event) -> dict[str, object]:
    assert event.endpoint is not None
    return {"endpoint_removed": res.EndpointRemoved(
        endpoint=endpoint_to_proto(event.endpoint), reason=event.reason)}


def _endpoint_status_changed(event: Event) -> dict[str, object]:
    assert event.endpoint is not None
    previous = int(event.previous_status) if event.previous_status is not None else 0
    return {"endpoint_status_changed": res.EndpointStatusChanged(
        endpoint=endpoint_to_proto(event.endpoint), previous_status=previous,  # type: ignore[arg-type]
        reason=event.reason)}


def _config_loaded(event: Event) -> dict[str, object]:
    assert event.config is not None
    return {"config_loaded": res.ConfigLoaded(config=config_info_to_proto(event.config))}


_EVENT_FIELDS: Mapping[EventKind, Callable[[Event], dict[str, object]]] = {
    EventKind.ENDPOINT_ADDED: _endpoint_added,
    EventKind.ENDPOINT_REMOVED: _endpoint_removed,
    EventKind.ENDPOINT_STATUS_CHANGED: _endpoint_status_changed,
    EventKind.CONFIG_LOADED: _config_loaded,
}
#: The event kinds WatchStatus streams; the bus carries more (breaker transitions,
#: health changes, panic) until the API has messages for them.
STREAMED_KINDS = frozenset(_EVENT_FIELDS)


def event_to_proto(event: Event) -> res.StatusEvent:
    change = _EVENT_FIELDS[event.kind](event)
    return res.StatusEvent(sequence=event.sequence, time=timestamp(event.time),
                           **change)  # type: ignore[arg-type]


def snapshot_to_proto(snapshot: Snapshot) -> res.StatusSnapshot:
    message = res.StatusSnapshot(endpoints=[endpoint_to_proto(e) for e in snapshot.endpoints],
                                 sequence=snapshot.sequence)
    if snapshot.config is not None:
        message.config.CopyFrom(config_info_to_proto(snapshot.config))
    return message


def watch_response(item: WatchItem) -> api.WatchStatusResponse:
    if isinstance(item, Snapshot):
        return api.WatchStatusResponse(snapshot=snapshot_to_proto(item))
    return api.WatchStatusResponse(event=event_to_proto(item))


# ---------------------------------------------------------------- requests


def require(name: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    return value


def _status(value: int, field: str) -> EndpointStatus:
    try:
        return EndpointStatus(value)
    except ValueError:
        raise InvalidArgument(f"{field}: unknown endpoint status {value}") from None


def status_filter(value: int) -> EndpointStatus | None:
    """A ListEndpoints status filter: UNSPECIFIED (0) matches every status."""
    return None if value == 0 else _status(value, "status")


@dataclass(frozen=True, slots=True)
class Registration:
    """RegisterEndpoint's arguments for `Registry.register`, defaults filled in."""

    cluster: str
    url: str
    endpoint_id: str
    weight: int
    status: EndpointStatus
    labels: dict[str, str]


def registration(request: api.RegisterEndpointRequest) -> Registration:
    """Read a RegisterEndpointRequest; output-only fields are ignored.

    Only what proto3 leaves to the reader is decided here (defaults for unset
    fields, unknown enum numbers); the registry validates the rest, all of it
    before changing anything.
    """
    endpoint = request.endpoint
    weight = endpoint.weight if endpoint.HasField("weight") else 1
    status = (EndpointStatus.ACTIVE if endpoint.status == 0
              else _status(endpoint.status, "endpoint.status"))
    return Registration(endpoint.cluster, endpoint.url, endpoint.id, weight, status,
                        dict(endpoint.labels))


# ---------------------------------------------------------------- paging (AIP-158)


def page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 0 to {MAX_PAGE_SIZE}, got {value}")
    return value or DEFAULT_PAGE_SIZE


def _filter_key(cluster: str, status: EndpointStatus | None) -> str:
    canonical = json.dumps([cluster, int(status or 0)], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(cluster: str, status: EndpointStatus | None,
                      last: tuple[str, str]) -> str:
    """An opaque token: resume after endpoint `last` (cluster, id), for these filters only."""
    payload = json.dumps({"f": _filter_key(cluster, status), "c": last[0], "i": last[1]},
                         separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, cluster: str,
                      status: EndpointStatus | None) -> tuple[str, str] | None:
    """The (cluster, id) to resume after, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        key, last = data["f"], (data["c"], data["i"])
        if not all(isinstance(v, str) for v in (key, *last)):
            raise TypeError
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not a token returned by ListEndpoints") from None
    if key != _filter_key(cluster, status):
        raise InvalidArgument("page_token was returned for different filters; "
                              "use the same cluster and status as the first call")
    return last


@dataclass(frozen=True, slots=True)
class Page:
    endpoints: list[EndpointInfo]
    next_page_token: str
    total_size: int


def paginate(matching: Sequence[EndpointInfo], *, cluster: str,
             status: EndpointStatus | None, size: int, token: str) -> Page:
    """One page of `matching` (ordered by cluster and id) after the token's position.

    The token holds the last key shown, not an offset, so endpoints added or
    removed between calls neither repeat nor skip the others.
    """
    after = decode_page_token(token, cluster, status)
    rest = [e for e in matching if after is None or (e.cluster, e.id) > after]
    page = rest[:size]
    more = len(rest) > size
    next_token = encode_page_token(cluster, status, (page[-1].cluster, page[-1].id)) if more else ""
    return Page(page, next_token, len(matching))

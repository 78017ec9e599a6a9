"""Pure translation between the registry and the admin API's protobuf messages.

Everything the servicer needs that is not I/O lives here, so it is tested without
a server:

* domain objects -> messages (`endpoint_to_proto`, `event_to_proto`, ...), with
  float epoch seconds turned into `google.protobuf.Timestamp`;
* what the sidecar observed of an endpoint (`Observed`: breaker, health, counts),
  read from its `Host`, with monotonic times turned into wall-clock time;
* request fields -> registry arguments, rejecting what the registry cannot judge
  (unknown enum numbers, a missing required field, a field mask, a duration);
* route resolution for ResolveRoute: the request as the data plane routes it,
  which endpoints may take it and why (`candidate`), and the likely pick, decided
  without taking a breaker's probe slot (`likely_pick`);
* `STATUS_CODES`, the one table from errors to gRPC status codes;
* AIP-158 paging: page sizes and opaque page tokens bound to the request's filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.config.admin import is_loopback_host
from sidecar.core.addresses import parse_upstream_url
from sidecar.core.breaker import BreakerState
from sidecar.core.clock import Clock
from sidecar.core.health import HealthStatus
from sidecar.core.hosts import Host, OperatorStatus
from sidecar.core.routing import RouteMatch, normalize_path
from sidecar.errors import (
    ConfigError,
    ConfigIssue,
    EndpointExists,
    EndpointNotFound,
    EndpointNotRemovable,
    InvalidEndpoint,
    MethodNotAllowed,
    NoHealthCheck,
    NoRoute,
)
from sidecar.events import Event, EventKind
from sidecar.observe.stats import DEFAULT_WINDOW, MAX_WINDOW, StatsReport, StatsRow
from sidecar.registry import ClusterMembers, ConfigInfo, EndpointInfo, EndpointStatus

from .ops import DrainStarted, NoConfigFile, ServerInfo
from .watch import Snapshot, TooManyWatchers, WatchItem

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAPPED_ERRORS",
    "MAX_PAGE_SIZE",
    "MAX_REASON",
    "MAX_TRIP_DURATION",
    "STATUS_CODES",
    "STREAMED_KINDS",
    "UPDATE_PATHS",
    "CheckResultLike",
    "ConfigNotLoaded",
    "InvalidArgument",
    "NotConfigured",
    "Observed",
    "Page",
    "Registration",
    "Resolve",
    "RouteMethodNotAllowed",
    "RouteNotFound",
    "RouteQuery",
    "Update",
    "WallTime",
    "candidate",
    "check_result_to_proto",
    "config_info_to_proto",
    "decode_page_token",
    "duration",
    "encode_page_token",
    "endpoint_to_proto",
    "event_to_proto",
    "likely_pick",
    "log_level",
    "log_level_number",
    "issue_to_proto",
    "config_source",
    "drain_deadline",
    "drain_to_proto",
    "server_info_to_proto",
    "LOG_LEVEL_NAMES",
    "SERVER_STATES",
    "STATS_KINDS",
    "StatsQuery",
    "stats_request",
    "stats_response",
    "loops_back",
    "observed",
    "page_size",
    "paginate",
    "registration",
    "require",
    "resolution_to_proto",
    "resolve_route",
    "route_query",
    "snapshot_to_proto",
    "status_filter",
    "status_for",
    "timestamp",
    "trip_duration",
    "update_request",
    "watch_response",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


# ---------------------------------------------------------------- errors


class InvalidArgument(ValueError):
    """A request field the registry does not judge is malformed (token, enum, required)."""


class ConfigNotLoaded(RuntimeError):
    """No configuration is serving yet (the sidecar is still starting)."""


class NotConfigured(RuntimeError):
    """What the call needs is switched off: the cluster's circuit breaker or health
    checks, or a service this sidecar was not given (health checker, route table)."""


class RouteNotFound(LookupError):
    """ResolveRoute: no route matches (the data plane answers 404)."""


class RouteMethodNotAllowed(RuntimeError):
    """ResolveRoute: routes match host and path, none allows the method (the data plane
    answers 405). FAILED_PRECONDITION, not NOT_FOUND: the route exists, and only a new
    configuration would let the call succeed."""


# The only place that decides which error becomes which gRPC status. Looked up along
# the exception's MRO, so a subclass inherits its parent's code.
STATUS_CODES: Mapping[type[Exception], grpc.StatusCode] = {
    InvalidEndpoint: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    EndpointExists: grpc.StatusCode.ALREADY_EXISTS,
    EndpointNotFound: grpc.StatusCode.NOT_FOUND,
    EndpointNotRemovable: grpc.StatusCode.FAILED_PRECONDITION,
    ConfigNotLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    NotConfigured: grpc.StatusCode.FAILED_PRECONDITION,
    NoHealthCheck: grpc.StatusCode.FAILED_PRECONDITION,
    RouteNotFound: grpc.StatusCode.NOT_FOUND,
    RouteMethodNotAllowed: grpc.StatusCode.FAILED_PRECONDITION,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    NoConfigFile: grpc.StatusCode.FAILED_PRECONDITION,
    TooManyWatchers: grpc.StatusCode.RESOURCE_EXHAUSTED,
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


def duration(seconds: float) -> Duration:
    """Float seconds -> Duration, to the nanosecond."""
    message = Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


class CheckResultLike(Protocol):
    """One active health check's result (`sidecar.core.health.CheckResult` is one)."""

    @property
    def at_wall(self) -> float: ...  # Unix time
    @property
    def passed(self) -> bool: ...
    @property
    def status(self) -> int | None: ...  # None: no answer
    @property
    def latency(self) -> float: ...  # seconds
    @property
    def error(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """What the sidecar observed of one endpoint at one moment; times are Unix time."""

    breaker_state: BreakerState
    breaker_reason: str
    breaker_since: float
    breaker_half_open_time: float | None  # only when OPEN
    health: HealthStatus | None  # None: the cluster has no active health checks
    health_reason: str
    health_results: tuple[CheckResultLike, ...]  # newest first
    request_count: int
    failure_count: int


class WallTime:
    """Monotonic readings of `clock` as Unix time: `t + (wall - now)`.

    The offset between the two clocks is measured once, and again only when it has
    moved by more than `tolerance` seconds (the wall clock was set), so the same
    moment shows as the same Timestamp from one call to the next.
    """

    __slots__ = ("_clock", "_offset", "_tolerance")

    def __init__(self, clock: Clock, tolerance: float = 0.5) -> None:
        self._clock = clock
        self._tolerance = tolerance
        self._offset: float | None = None

    def offset(self) -> float:
        current = self._clock.wall() - self._clock.now()
        if self._offset is None or abs(current - self._offset) > self._tolerance:
            self._offset = current
        return self._offset

    def __call__(self, monotonic: float) -> float:
        return monotonic + self.offset()


def observed(host: Host, wall: WallTime) -> Observed:
    """Read `host` now. `wall` must be over the clock the host's breaker uses: its
    times are monotonic.

    Reading the breaker's state moves an OPEN breaker whose time has passed to
    HALF_OPEN, as any reader does (the data plane reports that move on its next pick).
    """
    offset = wall.offset()
    breaker = host.breaker
    state = breaker.state
    health = host.health
    return Observed(
        breaker_state=state,
        breaker_reason=breaker.reason,
        breaker_since=breaker.since + offset,
        breaker_half_open_time=(breaker.open_until + offset
                                if state is BreakerState.OPEN else None),
        health=health.status if health is not None else None,
        health_reason=health.reason if health is not None else "",
        health_results=health.last_results() if health is not None else (),
        request_count=host.requests,
        failure_count=host.failures,
    )


def check_result_to_proto(result: CheckResultLike) -> res.HealthCheckResult:
    return res.HealthCheckResult(
        time=timestamp(result.at_wall),
        passed=result.passed,
        status_code=result.status or 0,
        latency=duration(max(0.0, result.latency)),
        error=result.error,
    )


def endpoint_to_proto(info: EndpointInfo, seen: Observed | None = None) -> res.Endpoint:
    """The endpoint's message; the observed fields only when `seen` is given (events
    carry none: their own fields say what changed)."""
    message = res.Endpoint(
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
    if seen is not None:
        message.breaker_state = seen.breaker_state.value  # type: ignore[assignment]
        message.breaker_reason = seen.breaker_reason
        message.breaker_since.CopyFrom(timestamp(seen.breaker_since))
        if seen.breaker_half_open_time is not None:
            message.breaker_half_open_time.CopyFrom(timestamp(seen.breaker_half_open_time))
        if seen.health is not None:
            message.health = seen.health.value  # type: ignore[assignment]
        message.health_reason = seen.health_reason
        message.health_check_results.extend(check_result_to_proto(r)
                                            for r in seen.health_results)
        message.request_count = max(0, seen.request_count)
        message.failure_count = max(0, seen.failure_count)
    return message


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


def _breaker_changed(event: Event) -> dict[str, object]:
    assert event.endpoint is not None and event.breaker is not None
    moved = event.breaker
    return {"breaker_changed": res.BreakerChanged(
        endpoint=endpoint_to_proto(event.endpoint),
        previous_state=moved.previous.value,  # type: ignore[arg-type]  # equal numbers
        state=moved.state.value,  # type: ignore[arg-type]
        reason=event.reason or moved.reason)}


def _health_changed(event: Event) -> dict[str, object]:
    assert event.endpoint is not None and event.health is not None
    change = event.health
    return {"health_changed": res.HealthChanged(
        endpoint=endpoint_to_proto(event.endpoint),
        previous_status=change.previous.value,  # type: ignore[arg-type]  # equal numbers
        status=change.status.value,  # type: ignore[arg-type]
        reason=event.reason or change.reason)}


def _panic_changed(event: Event) -> dict[str, object]:
    return {"panic_changed": res.PanicChanged(cluster=event.cluster, panic=bool(event.panic),
                                              reason=event.reason)}


_FALLBACK_KINDS: Mapping[str, int] = {
    "cache": res.FALLBACK_KIND_CACHE,
    "cluster": res.FALLBACK_KIND_CLUSTER,
    "static": res.FALLBACK_KIND_STATIC,
}


def _fallback_used(event: Event) -> dict[str, object]:
    return {"fallback_used": res.FallbackUsed(
        route=event.route, cluster=event.cluster,
        kind=_FALLBACK_KINDS.get(event.fallback, res.FALLBACK_KIND_UNSPECIFIED),  # type: ignore[arg-type]
        reason=event.reason)}


def _lifecycle_changed(event: Event) -> dict[str, object]:
    return {"lifecycle_changed": res.LifecycleChanged(
        previous_state=SERVER_STATES.get(event.previous_state,  # type: ignore[arg-type]
                                         res.SERVER_STATE_UNSPECIFIED),
        state=SERVER_STATES.get(event.state, res.SERVER_STATE_UNSPECIFIED),  # type: ignore[arg-type]
        reason=event.reason)}


def _config_rejected(event: Event) -> dict[str, object]:
    return {"config_rejected": res.ConfigRejected(
        source=event.source, stage=event.stage, trigger=event.reason,
        issues=[issue_to_proto(i) for i in event.issues])}


def _state_file_corrupt(event: Event) -> dict[str, object]:
    return {"state_file_corrupt": res.StateFileCorrupt(path=event.source,
                                                       moved_to=event.moved_to,
                                                       error=event.reason)}


_EVENT_FIELDS: Mapping[EventKind, Callable[[Event], dict[str, object]]] = {
    EventKind.ENDPOINT_ADDED: _endpoint_added,
    EventKind.ENDPOINT_REMOVED: _endpoint_removed,
    EventKind.ENDPOINT_STATUS_CHANGED: _endpoint_status_changed,
    EventKind.CONFIG_LOADED: _config_loaded,
    EventKind.BREAKER_CHANGED: _breaker_changed,
    EventKind.HEALTH_CHANGED: _health_changed,
    EventKind.PANIC_CHANGED: _panic_changed,
    EventKind.FALLBACK_USED: _fallback_used,
    EventKind.LIFECYCLE_CHANGED: _lifecycle_changed,
    EventKind.CONFIG_REJECTED: _config_rejected,
    EventKind.STATE_FILE_CORRUPT: _state_file_corrupt,
}
#: The event kinds WatchStatus streams: every kind the API has a message for (all of
#: them; a test keeps it so). A kind added to the bus before the API has a message
#: for it is skipped, not sent as a broken event.
STREAMED_KINDS = frozenset(_EVENT_FIELDS)


def event_to_proto(event: Event) -> res.StatusEvent:
    change = _EVENT_FIELDS[event.kind](event)
    return res.StatusEvent(sequence=event.sequence, time=timestamp(event.time),
                           **change)  # type: ignore[arg-type]


ObserveFn = Callable[[EndpointInfo], Observed | None]


def snapshot_to_proto(snapshot: Snapshot, observe: ObserveFn | None = None
                      ) -> res.StatusSnapshot:
    """`observe` adds what was observed of each endpoint; call this right after the
    snapshot is taken, before anything can change."""
    message = res.StatusSnapshot(
        endpoints=[endpoint_to_proto(e, observe(e) if observe is not None else None)
                   for e in snapshot.endpoints],
        sequence=snapshot.sequence)
    if snapshot.config is not None:
        message.config.CopyFrom(config_info_to_proto(snapshot.config))
    return message


def watch_response(item: WatchItem, observe: ObserveFn | None = None
                   ) -> api.WatchStatusResponse:
    if isinstance(item, Snapshot):
        return api.WatchStatusResponse(snapshot=snapshot_to_proto(item, observe))
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


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def loops_back(url: str, own: Sequence[tuple[str, int]],
               local_hosts: frozenset[str] = frozenset()) -> str | None:
    """Which of the sidecar's own addresses `url` points at, as "host:port", or None.

    `own` holds (bind host, bound port) of the listener and the admin ports. A URL
    loops when its port is bound there and its host is the bound host, any loopback
    name for a loopback or wildcard bind, or one of `local_hosts` (this machine's
    names) for a wildcard bind. A URL that does not parse is left to the registry.
    """
    try:
        target = parse_upstream_url(url)
    except ValueError:
        return None
    host = target.host.lower().strip("[]")
    for bind_host, port in own:
        if port != target.port or port == 0:
            continue
        bound = bind_host.lower().strip("[]")
        wildcard = bound in _WILDCARDS
        if (host == bound
                or (is_loopback_host(host) and (wildcard or is_loopback_host(bound)))
                or (wildcard and host in local_hosts)):
            return f"{bind_host}:{port}"
    return None


UPDATE_PATHS = ("weight", "status", "labels")
#: Longest `reason` a request may give (it goes into events and logs).
MAX_REASON = 256
_STATUS_REASONS: Mapping[EndpointStatus, str] = {
    EndpointStatus.ACTIVE: "enabled by admin",
    EndpointStatus.DISABLED: "disabled by admin",
    EndpointStatus.DRAINING: "drain started by admin",
}


@dataclass(frozen=True, slots=True)
class Update:
    """UpdateEndpoint's arguments; None for what is not to change."""

    cluster: str
    endpoint_id: str
    weight: int | None
    labels: dict[str, str] | None
    status: EndpointStatus | None
    reason: str


def _update_paths(request: api.UpdateEndpointRequest) -> set[str]:
    paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
    if not paths:  # AIP-134: no mask means every field that is set
        fields = {name for name, is_set in (("weight", request.HasField("weight")),
                                            ("status", request.status != 0),
                                            ("labels", bool(request.labels))) if is_set}
        if not fields:
            raise InvalidArgument("nothing to update: name weight, status or labels in "
                                  "update_mask, or set one of them")
        return fields
    fields = set()
    for path in paths:
        if path == "*":
            fields.update(UPDATE_PATHS)
        elif path in UPDATE_PATHS:
            fields.add(path)
        else:
            raise InvalidArgument(f"update_mask: unknown path {path!r}; use weight, status, "
                                  "labels or *")
    return fields


def update_request(request: api.UpdateEndpointRequest) -> Update:
    """Read an UpdateEndpointRequest: which fields change, and to what.

    The status is judged here (the registry's `set_status` comes after the weight and
    labels change, and must not fail then); the registry judges weight and labels,
    before it changes anything.
    """
    cluster = require("cluster", request.cluster)
    endpoint_id = require("id", request.id)
    fields = _update_paths(request)
    status = None
    if "status" in fields:
        status = (EndpointStatus.ACTIVE if request.status == 0
                  else _status(request.status, "status"))
        if status is EndpointStatus.UNHEALTHY:
            raise InvalidArgument("status: UNHEALTHY is what the sidecar observes; set "
                                  "ACTIVE, DISABLED or DRAINING")
    reason = request.reason
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"reason is longer than {MAX_REASON} characters")
    return Update(
        cluster, endpoint_id,
        weight=(request.weight if request.HasField("weight") else 1)
        if "weight" in fields else None,
        labels=dict(request.labels) if "labels" in fields else None,
        status=status,
        reason=reason or (_STATUS_REASONS[status] if status is not None else ""))


#: Longest TripBreaker duration: as long as any duration in the configuration. To
#: keep an endpoint out for longer, disable it.
MAX_TRIP_DURATION = 86_400.0


def trip_duration(request: api.TripBreakerRequest) -> float | None:
    """TripBreaker's duration in seconds; None when not given (the cluster's open time)."""
    if not request.HasField("duration"):
        return None
    given = request.duration
    seconds, nanos = given.seconds, given.nanos
    if not -999_999_999 <= nanos <= 999_999_999 or seconds * nanos < 0:
        raise InvalidArgument("duration is malformed: nanos must be within +-999999999 and "
                              "have the sign of seconds")
    value: float = seconds + nanos / 1e9
    if not value > 0:
        raise InvalidArgument(f"duration must be positive, got {value:g}s")
    if value > MAX_TRIP_DURATION:
        raise InvalidArgument(f"duration must be at most {MAX_TRIP_DURATION:g}s (24h), got "
                              f"{value:g}s; to keep an endpoint out longer, disable it")
    return value


# ---------------------------------------------------------------- operations

#: SetLogLevel's levels by enum number, and back.
LOG_LEVEL_NAMES: Mapping[int, str] = {
    res.LOG_LEVEL_DEBUG: "debug",
    res.LOG_LEVEL_INFO: "info",
    res.LOG_LEVEL_WARNING: "warning",
    res.LOG_LEVEL_ERROR: "error",
}
_LOG_LEVEL_NUMBERS = {name: number for number, name in LOG_LEVEL_NAMES.items()}
#: The app's lifecycle states (`sidecar.app.LIFECYCLE_STATES`) -> the API's.
SERVER_STATES: Mapping[str, int] = {
    "starting": res.SERVER_STATE_STARTING,
    "ready": res.SERVER_STATE_READY,
    "draining": res.SERVER_STATE_DRAINING,
    "stopped": res.SERVER_STATE_STOPPED,
}
MAX_LOG_LEVEL_DURATION = 86_400.0
MAX_DRAIN_DEADLINE = 3_600.0


def drain_deadline(request: api.DrainRequest) -> float | None:
    """Drain's deadline in seconds, or None for the listener's drain_timeout."""
    if not request.HasField("deadline"):
        return None
    seconds = float(request.deadline.seconds + request.deadline.nanos / 1e9)
    if not 0 < seconds <= MAX_DRAIN_DEADLINE:
        raise InvalidArgument(f"deadline must be positive and at most 1h, got {seconds:g}s")
    return seconds


def drain_to_proto(answer: DrainStarted) -> api.DrainResponse:
    return api.DrainResponse(
        state=SERVER_STATES.get(answer.state, res.SERVER_STATE_UNSPECIFIED),  # type: ignore[arg-type]
        started=answer.started, deadline_time=timestamp(answer.deadline_time))


def log_level(request: api.SetLogLevelRequest) -> tuple[str, float | None]:
    """SetLogLevel's (level name, duration in seconds or None)."""
    name = LOG_LEVEL_NAMES.get(request.level)
    if name is None:
        raise InvalidArgument("level is required: one of " + ", ".join(
            res.LogLevel.Name(n) for n in LOG_LEVEL_NAMES))
    if not request.HasField("duration"):
        return name, None
    seconds = request.duration.seconds + request.duration.nanos / 1e9
    if not 0 < seconds <= MAX_LOG_LEVEL_DURATION:
        raise InvalidArgument(f"duration must be positive and at most 24h, got {seconds:g}s")
    return name, seconds


def log_level_number(name: str) -> int:
    return _LOG_LEVEL_NUMBERS.get(name, res.LOG_LEVEL_UNSPECIFIED)


def config_source(request: api.ValidateConfigRequest) -> tuple[str | None, str | None]:
    """ValidateConfig's (config_json, path): exactly one is set."""
    which = request.WhichOneof("source")
    if which is None:
        raise InvalidArgument("give config_json or path")
    if which == "path":
        if not request.path:
            raise InvalidArgument("path is empty")
        return None, request.path
    return request.config_json, None


def issue_to_proto(issue: ConfigIssue) -> res.ConfigIssue:
    return res.ConfigIssue(path=issue.path, message=issue.message)


def server_info_to_proto(info: ServerInfo, config: ConfigInfo | None, level: str,
                         version: str) -> api.GetServerInfoResponse:
    message = api.GetServerInfoResponse(
        version=version, pid=info.pid, start_time=timestamp(info.start_time),
        uptime=duration(max(0.0, info.uptime)),
        state=SERVER_STATES.get(info.state, res.SERVER_STATE_UNSPECIFIED),  # type: ignore[arg-type]
        state_reason=info.state_reason,
        log_level=log_level_number(level))  # type: ignore[arg-type]
    if config is not None:
        message.config.CopyFrom(config_info_to_proto(config))
    return message


# ---------------------------------------------------------------- stats

#: The API's StatsKind -> `Stats.query`'s kind ("" for every kind).
STATS_KINDS: Mapping[int, str] = {
    res.STATS_KIND_UNSPECIFIED: "",
    res.STATS_KIND_ROUTE: "routes",
    res.STATS_KIND_CLUSTER: "clusters",
    res.STATS_KIND_ENDPOINT: "endpoints",
}


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """GetStats's request as `Stats.query` takes it."""

    kind: str
    window_seconds: float
    cluster: str


def stats_request(request: api.GetStatsRequest) -> StatsQuery:
    """GetStats's (kind, window, cluster); the window defaults to 1m (also when 0)."""
    kind = STATS_KINDS.get(request.kind)
    if kind is None:
        raise InvalidArgument(f"unknown kind {request.kind}: expected one of " + ", ".join(
            res.StatsKind.Name(n) for n in STATS_KINDS))
    seconds = DEFAULT_WINDOW
    if request.HasField("window"):
        given = request.window.seconds + request.window.nanos / 1e9
        if given < 0 or given > MAX_WINDOW:
            raise InvalidArgument(f"window must be between 0 and {MAX_WINDOW / 60:g}m, got "
                                  f"{given:g}s")
        if given > 0:
            seconds = given
    return StatsQuery(kind, seconds, request.cluster)


def _stats_row(row: StatsRow) -> res.ResourceStats:
    message = res.ResourceStats(name=row.name, cluster=row.cluster, requests=row.requests,
                                successes=row.successes,
                                requests_per_second=row.requests_per_second,
                                retries=row.retries, breaker_trips=row.breaker_trips)
    if row.success_rate is not None:
        message.success_rate = row.success_rate
    for field, seconds in (("latency_p50", row.p50), ("latency_p90", row.p90),
                           ("latency_p99", row.p99)):
        if seconds is not None:
            getattr(message, field).CopyFrom(duration(seconds))
    return message


def stats_response(report: StatsReport, time: float) -> api.GetStatsResponse:
    """A `Stats.query` report as GetStats answers it; `time`: when it was taken (Unix)."""
    return api.GetStatsResponse(
        window=duration(report.window), time=timestamp(time),
        routes=[_stats_row(row) for row in report.routes],
        clusters=[_stats_row(row) for row in report.clusters],
        endpoints=[_stats_row(row) for row in report.endpoints])


# ---------------------------------------------------------------- route resolution

#: The routing the data plane would do: (method, host, path) -> match; raises NoRoute
#: or MethodNotAllowed. `host` and `path` are as `route_query` normalized them.
Resolve = Callable[[str, str, str], RouteMatch]

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # an RFC 9110 token
_HOST = re.compile(r"[A-Za-z0-9._~\-]*|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """A ResolveRoute request as the data plane would route it."""

    method: str
    host: str  # lower case, without a port
    path: str  # dot-segments removed


def _route_host(value: str) -> str:
    """A Host header as the data plane routes on it: lower case, without a port."""
    bad = InvalidArgument(f"host {value!r} is not a Host header (name[:port])")
    if value.startswith("["):  # an IPv6 literal, "[::1]" or "[::1]:80"
        end = value.find("]") + 1
        if not end:
            raise bad
        name, port = value[:end], value[end:]
    else:
        name, colon, port = value.partition(":")
        port = colon + port
    if port and not (port.startswith(":") and _PORT.fullmatch(port[1:])):
        raise InvalidArgument(f"host {value!r}: the port must be a number")
    if (port and not name) or not _HOST.fullmatch(name):
        raise bad
    return name.lower()


def route_query(request: api.ResolveRouteRequest) -> RouteQuery:
    method = request.method or "GET"
    if not _METHOD.fullmatch(method):
        raise InvalidArgument(f"method {method!r} is not an HTTP method")
    path = require("path", request.path)
    if not path.startswith("/"):
        raise InvalidArgument(f"path must start with '/', got {path!r}")
    if any(c <= " " or c == "\x7f" for c in path):
        raise InvalidArgument("path must not contain spaces or control characters")
    if "/." in path:
        path = normalize_path(path)
    return RouteQuery(method, _route_host(request.host), path)


def resolve_route(resolve: Resolve, query: RouteQuery) -> RouteMatch:
    """Route `query` with `resolve`; the data plane's 404 and 405 become errors that
    say what matched."""
    where = f"{query.method} {query.path} (host {query.host or '(none)'})"
    if query.method == "CONNECT":
        raise RouteMethodNotAllowed("CONNECT is never proxied (the data plane answers 405)")
    try:
        return resolve(query.method, query.host, query.path)
    except NoRoute as exc:  # UnknownCluster too: /orchestrator/{no such cluster}/
        raise RouteNotFound(f"no route matches {where}: the data plane answers 404 "
                            f"{exc.code}") from None
    except MethodNotAllowed as exc:
        raise RouteMethodNotAllowed(
            f"routes match {where} but none allows {query.method}; allowed: "
            f"{', '.join(exc.allowed)} (the data plane answers 405)") from None


def candidate(host: Host, panic: bool) -> tuple[bool, str]:
    """Whether the balancer may pick `host` for a new request now, and why (not).

    The rules of `HostSet.rebuild`, read without changing anything: an OPEN breaker
    whose time has passed counts as HALF_OPEN, as it will at the next pick.
    """
    if host.operator is OperatorStatus.DISABLED:
        return False, "disabled by operator"
    if host.operator is OperatorStatus.DRAINING:
        return False, "draining: takes no new requests"
    breaker = host.breaker
    state = breaker.state
    if state is BreakerState.OPEN:
        return False, (f"breaker open: {breaker.reason}; half-opens in "
                       f"{breaker.retry_after():.1f}s")
    notes = []
    if state is BreakerState.HALF_OPEN:
        notes.append("breaker half-open: a few live requests probe it")
    health = host.health
    if health is not None and not health.usable:
        text = f"health {health.status.name.lower()}: {health.reason or 'no passing check yet'}"
        if not panic:
            return False, text
        notes.append(f"{text}; ignored, the cluster is in panic mode")
    return True, "; ".join(notes)


def likely_pick(policy: str, usable: Sequence[Host]) -> tuple[Host | None, str]:
    """The endpoint a request would most likely go to, and how it was chosen. The
    balancer is not asked (a pick moves round robin on and takes a probe slot)."""
    count = len(usable)
    if count == 0:
        return None, ("no usable endpoint: the data plane answers 503 no_healthy_endpoint, "
                      "or the route's fallback answers")
    if count == 1:
        return usable[0], f"the only usable endpoint ({policy})"
    if policy == "least_request":
        best = min(usable, key=lambda h: h.active_requests / h.weight)
        return best, (f"least_request: the fewest requests in flight per weight of the "
                      f"{count} usable endpoints (the balancer compares two at random)")
    best = max(usable, key=lambda h: h.weight)
    spread = "rotates over" if policy == "round_robin" else "picks at random among"
    return best, (f"{policy} {spread} the {count} usable endpoints by weight; named: the "
                  "heaviest, the first by id among equals")


def resolution_to_proto(match: RouteMatch, members: ClusterMembers | None,
                        wall: WallTime) -> api.ResolveRouteResponse:
    """ResolveRoute's answer: the match, and the cluster's endpoints as the balancer
    sees them now (`members` is None when the registry has no such cluster)."""
    route = match.route
    response = api.ResolveRouteResponse(route=route.name, cluster=match.cluster,
                                        prefix=route.prefix, upstream_path=match.target)
    if members is None:
        response.pick_reason = (f"cluster {match.cluster!r} has no endpoints: the data plane "
                                "answers 404 no_route")
        return response
    hosts = members.hosts
    response.panic = hosts.panic
    usable: list[Host] = []
    messages: dict[str, res.Endpoint] = {}
    for endpoint_id in sorted(members.endpoints):
        endpoint = members.endpoints[endpoint_id]
        ok, why = candidate(endpoint.host, hosts.panic)
        message = endpoint_to_proto(endpoint.info(), observed(endpoint.host, wall))
        response.candidates.add(endpoint=message, usable=ok, reason=why)
        messages[endpoint_id] = message
        if ok:
            usable.append(endpoint.host)
    chosen, response.pick_reason = likely_pick(members.settings.lb_policy, usable)
    if chosen is not None:
        response.endpoint.CopyFrom(messages[chosen.id])
    return response


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

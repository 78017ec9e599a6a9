"""`sidecarctl`: the command-line client of the admin API.

Talks to `sidecar.admin.v1.AdminService` through the betterproto2 typed sync stubs
(`admin/client/`, generated), on a plaintext channel, or TLS when `--ca-file` or a
client certificate is given. Credentials, each also from the environment:

* `--token-file FILE` ($SIDECARCTL_TOKEN_FILE), or $SIDECARCTL_TOKEN: sent as
  `authorization: Bearer TOKEN` metadata; refused over plaintext to a target that is
  not loopback or a unix: socket (it would cross the network in clear);
* `--ca-file FILE` ($SIDECARCTL_CA_FILE): the CAs that sign the sidecar's certificate;
* `--cert-file FILE`, `--key-file FILE` ($SIDECARCTL_CERT_FILE, $SIDECARCTL_KEY_FILE):
  a client certificate for mTLS;
* `--server-name NAME` ($SIDECARCTL_SERVER_NAME): the name to check in the sidecar's
  certificate, when it is not the target's host.

Command names, options, output and exit codes are a public interface:

* 0 success (and Ctrl-C, i.e. SIGINT, during `watch` and `stat --watch`);
* 1 the sidecar answered with an error, printed as one line on stderr:
  `sidecarctl: NOT_FOUND: no endpoint 'x' in cluster 'y'`;
* 2 usage error;
* 3 the sidecar could not be reached (UNAVAILABLE, or DEADLINE_EXCEEDED);
* 130 Ctrl-C during any other command.

`--timeout` is the deadline of each unary call, and for `watch` the time allowed
to connect (the stream itself has none: it runs until --count, Ctrl-C, or the
sidecar ending it).

`watch` stops on SIGINT by cancelling its call from a handler of its own, rather than
by a KeyboardInterrupt raised wherever the main thread happens to be; `stat --watch`
likewise stops at its next refresh (it waits between refreshes, or for the call in
flight, bounded by --timeout). Like CPython
itself, it leaves SIGINT alone when the process started with it ignored (a background
job of a non-interactive shell): such a job is not meant to stop on the terminal's
Ctrl-C.

`-o text` (default) prints aligned tables for people; `-o json` prints proto JSON
(betterproto2's `to_dict`) for scripts: one document, or one line per message for
`watch` and `stat --watch`.

`stat [routes|clusters|endpoints]` prints GetStats as `linkerd viz stat` does: one
row per resource over a window (`-w`, default 1m), success rate, requests a second,
latency quantiles in milliseconds, requests, retries and breaker trips. `--watch`
redraws it every --interval seconds: in place on a terminal (ANSI clear screen),
otherwise as successive tables separated by a blank line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import difflib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, Self

import grpc
from pydantic.warnings import PydanticDeprecatedSince212

from sidecar.cli import parse_args, parse_key_value

# betterproto2 0.10's generated oneof validators use a signature pydantic 2.12+
# deprecates (they still work); the warning is about generated code, not ours.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PydanticDeprecatedSince212)
    from .client.google.protobuf import FieldMask
    from .client.sidecar.admin.v1 import (
        AdminServiceStub,
        CheckEndpointHealthRequest,
        ConfigInfo,
        DeregisterEndpointRequest,
        DrainRequest,
        Endpoint,
        EndpointStatus,
        GetConfigRequest,
        GetEndpointRequest,
        GetServerInfoRequest,
        GetStatsRequest,
        GetStatsResponse,
        HealthCheckResult,
        HealthStatus,
        ListEndpointsRequest,
        ListEndpointsResponse,
        LogLevel,
        RegisterEndpointRequest,
        ReloadConfigRequest,
        ResetBreakerRequest,
        ResolveRouteRequest,
        ResourceStats,
        ServerState,
        SetLogLevelRequest,
        StatsKind,
        StatusEvent,
        StatusSnapshot,
        TripBreakerRequest,
        UpdateEndpointRequest,
        ValidateConfigRequest,
        WatchStatusRequest,
        WatchStatusResponse,
    )

__all__ = ["DEFAULT_TARGET", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNREACHABLE",
           "EXIT_USAGE", "build_parser", "main", "run"]

DEFAULT_TARGET = "127.0.0.1:9901"
DEFAULT_TIMEOUT = 10.0
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C outside `watch`, as shells report SIGINT
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_STATUSES = ("active", "unhealthy", "disabled", "draining")
_SETTABLE_STATUSES = ("active", "disabled", "draining")
_LOG_LEVELS = ("debug", "info", "warning", "error")


# ---------------------------------------------------------------- arguments

_CREDENTIAL_FLAGS = (
    ("--token-file", "SIDECARCTL_TOKEN_FILE",
     "file holding a bearer token for the admin API ($SIDECARCTL_TOKEN: the token itself)"),
    ("--ca-file", "SIDECARCTL_CA_FILE", "PEM CAs to verify the sidecar's certificate; "
                                        "turns TLS on"),
    ("--cert-file", "SIDECARCTL_CERT_FILE", "PEM client certificate (mTLS); turns TLS on"),
    ("--key-file", "SIDECARCTL_KEY_FILE", "PEM private key of --cert-file"),
    ("--server-name", "SIDECARCTL_SERVER_NAME",
     "name to check in the sidecar's certificate (default the target's host)"),
)


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def _uint32(value: str) -> int:
    number = int(value)
    if not 0 <= number < 2**32:
        raise argparse.ArgumentTypeError(f"must be 0 to {2**32 - 1}, got {value}")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _duration(value: str) -> float:
    """--duration: seconds, or a number with a unit ("500ms", "30s", "2m", "1h")."""
    from sidecar.config.types import parse_duration

    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = float(parse_duration(value))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    # The global options also work after the command ("endpoints list -o json"):
    # sub-parsers repeat them with SUPPRESS so they only override when given.
    def add_globals(parser: argparse.ArgumentParser, defaults: bool) -> None:
        def default(value: object) -> object:
            return value if defaults else argparse.SUPPRESS

        parser.add_argument("--target", metavar="HOST:PORT",
                            default=default(os.environ.get("SIDECAR_ADMIN", DEFAULT_TARGET)),
                            help="admin gRPC address (default $SIDECAR_ADMIN or "
                                 f"{DEFAULT_TARGET})")
        parser.add_argument("-o", "--output", choices=["text", "json"], default=default("text"),
                            help="output format (default text)")
        parser.add_argument("--timeout", metavar="SECONDS", type=_positive_float,
                            default=default(DEFAULT_TIMEOUT),
                            help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})")
        for flag, env, text in _CREDENTIAL_FLAGS:
            parser.add_argument(flag, metavar="FILE" if flag.endswith("file") else "NAME",
                                default=default(os.environ.get(env) or None),
                                help=f"{text} (default ${env})")

    common = argparse.ArgumentParser(add_help=False)
    add_globals(common, defaults=False)

    parser = argparse.ArgumentParser(prog="sidecarctl",
                                     description="Manage a running sidecar through its "
                                                 "admin gRPC API.")
    add_globals(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    endpoints = sub.add_parser("endpoints", help="list, get, register, deregister endpoints")
    ep_sub = endpoints.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = ep_sub.add_parser("list", parents=[common], help="list endpoints")
    ls.add_argument("--cluster", default="", help="only this cluster")
    ls.add_argument("--status", choices=_STATUSES, help="only endpoints with this status")
    ls.add_argument("--page-size", type=int, default=0, metavar="N",
                    help="endpoints per page (server default 100, at most 1000)")
    ls.add_argument("--page-token", default="", metavar="TOKEN",
                    help="continue from a previous page (the token -o json prints)")
    ls.add_argument("--all", action="store_true", help="fetch every page")
    get = ep_sub.add_parser("get", parents=[common], help="show one endpoint")
    get.add_argument("cluster")
    get.add_argument("id")
    reg = ep_sub.add_parser("register", parents=[common], help="add an endpoint")
    reg.add_argument("cluster")
    reg.add_argument("url", help="http://host:port or https://host:port")
    reg.add_argument("--id", default="", help="endpoint id (default host:port)")
    reg.add_argument("--weight", type=_uint32, metavar="N",
                     help="load-balancing weight 1-1000 (default 1)")
    reg.add_argument("--label", type=parse_key_value, action="append", default=[], metavar="K=V",
                     help="label; repeatable")
    reg.add_argument("--disabled", action="store_true",
                     help="register as DISABLED (no traffic until enabled)")
    dereg = ep_sub.add_parser("deregister", parents=[common], help="remove an endpoint")
    dereg.add_argument("cluster")
    dereg.add_argument("id")

    watch = sub.add_parser("watch", parents=[common],
                           help="print a snapshot, then every change as it happens")
    watch.add_argument("--cluster", default="", help="only endpoints of this cluster")
    watch.add_argument("--count", type=_count, metavar="N", help="stop after N events")

    config = sub.add_parser("config", help="the serving configuration")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    cget = config_sub.add_parser("get", parents=[common], help="show the serving configuration")
    cget.add_argument("--json", action="store_true",
                      help="print the configuration itself, as JSON")
    cdiff = config_sub.add_parser(
        "diff", parents=[common],
        help="what serving FILE would change: a unified diff of the serving configuration "
             "against FILE, both with every default filled in")
    cdiff.add_argument("file", metavar="FILE", help=".jsonnet or .json")
    cdiff.add_argument("--ext-str", metavar="KEY=VALUE", type=parse_key_value, action="append",
                       default=[], help="Jsonnet external variable; repeatable")
    cdiff.add_argument("-J", "--jpath", metavar="DIR", action="append", default=[],
                       help="extra Jsonnet library directory; repeatable")
    cdiff.add_argument("--exit-code", action="store_true",
                       help="exit 1 when there are differences (like git diff --exit-code)")

    cvalidate = config_sub.add_parser(
        "validate", parents=[common],
        help="have the sidecar validate a configuration (changes nothing): FILE rendered "
             "here, or --path, a file the sidecar reads")
    source = cvalidate.add_mutually_exclusive_group(required=True)
    source.add_argument("file", metavar="FILE", nargs="?", help=".jsonnet or .json, rendered "
                                                                  "here")
    source.add_argument("--path", metavar="PATH", help="a file on the sidecar's side")
    cvalidate.add_argument("--ext-str", metavar="KEY=VALUE", type=parse_key_value,
                           action="append", default=[],
                           help="Jsonnet external variable for FILE; repeatable")
    cvalidate.add_argument("-J", "--jpath", metavar="DIR", action="append", default=[],
                           help="extra Jsonnet library directory for FILE; repeatable")
    config_sub.add_parser("reload", parents=[common],
                          help="re-read the sidecar's configuration file now")

    level = sub.add_parser("log-level", parents=[common],
                           help="set the sidecar's log level, for a while or until changed")
    level.add_argument("level", choices=_LOG_LEVELS)
    level.add_argument("--duration", type=_duration, metavar="D",
                       help="put the previous level back after D, e.g. 10m (default: keep)")
    sub.add_parser("info", parents=[common],
                   help="version, pid, lifecycle state, uptime, serving config version")
    drain = sub.add_parser("drain", parents=[common],
                           help="start the drain (as SIGTERM does) without stopping the "
                                "sidecar: /ready turns 503, no new connections, requests in "
                                "flight finish")
    drain.add_argument("--deadline", type=_duration, metavar="D",
                       help="how long requests in flight get, e.g. 30s (default: the "
                            "listener's drain_timeout)")

    upd = ep_sub.add_parser("update", parents=[common],
                            help="change an endpoint's weight, status or labels")
    upd.add_argument("cluster")
    upd.add_argument("id")
    upd.add_argument("--weight", type=_uint32, metavar="N", help="load-balancing weight 1-1000")
    upd.add_argument("--status", choices=_SETTABLE_STATUSES,
                     help="active (takes traffic), disabled, or draining")
    labels = upd.add_mutually_exclusive_group()
    labels.add_argument("--label", type=parse_key_value, action="append", default=[],
                        metavar="K=V", help="label; repeatable; the given labels replace "
                                            "every label the endpoint has")
    labels.add_argument("--clear-labels", action="store_true", help="remove every label")
    upd.add_argument("--reason", default="",
                     help="why, recorded in the status change event (default "
                          "\"disabled by admin\" and the like)")
    upd.set_defaults(usage=upd.format_usage())

    breakers = sub.add_parser("breakers", help="list, trip and reset circuit breakers")
    br_sub = breakers.add_subparsers(dest="action", required=True, metavar="ACTION")
    bls = br_sub.add_parser("list", parents=[common], help="the breaker of every endpoint")
    bls.add_argument("--cluster", default="", help="only this cluster")
    trip = br_sub.add_parser("trip", parents=[common],
                             help="open an endpoint's breaker now: no new requests until "
                                  "it half-opens")
    trip.add_argument("cluster")
    trip.add_argument("id")
    trip.add_argument("--duration", type=_duration, metavar="D",
                      help="how long it stays open, e.g. 30s, 500ms, 2m (default: the "
                           "cluster's open time)")
    breset = br_sub.add_parser("reset", parents=[common],
                               help="close an endpoint's breaker now, forgetting its failures")
    breset.add_argument("cluster")
    breset.add_argument("id")

    health = sub.add_parser("health", help="active health checks")
    health_sub = health.add_subparsers(dest="action", required=True, metavar="ACTION")
    hcheck = health_sub.add_parser("check", parents=[common],
                                   help="run a health check of an endpoint now")
    hcheck.add_argument("cluster")
    hcheck.add_argument("id")

    route = sub.add_parser("route", help="routing")
    route_sub = route.add_subparsers(dest="action", required=True, metavar="ACTION")
    resolve = route_sub.add_parser("resolve", parents=[common],
                                   help="where a request would go, and which endpoints may "
                                        "take it (sends nothing)")
    resolve.add_argument("--method", type=str.upper, default="GET",
                         help="HTTP method (default GET)")
    resolve.add_argument("--host", default="",
                         help="Host header (default none: only routes without a host match)")
    resolve.add_argument("path", metavar="PATH", help="request path, e.g. /users/42?x=1")

    stat = sub.add_parser("stat", parents=[common],
                          help="request statistics per route, cluster or endpoint over a "
                               "recent window (like linkerd viz stat)")
    stat.add_argument("kind", nargs="?", choices=tuple(_STAT_KINDS), default="routes",
                      help="what to list (default routes)")
    stat.add_argument("-w", "--window", type=_duration, default=60.0, metavar="D",
                      help="how far back, up to 10m, rounded up to 10 s: 10s, 1m, 90s, 10m "
                           "(default 1m)")
    stat.add_argument("--cluster", default="", help="only this cluster")
    stat.add_argument("--watch", action="store_true",
                      help="refresh every --interval seconds until Ctrl-C")
    stat.add_argument("--interval", type=_positive_float, default=2.0, metavar="SECONDS",
                      help="seconds between refreshes with --watch (default 2)")
    return parser



# ---------------------------------------------------------------- formatting


def _time(value: datetime.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [headers, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


_ENDPOINT_COLUMNS = ("CLUSTER", "ID", "URL", "WEIGHT", "STATUS", "SOURCE", "ACTIVE", "LABELS")


def _endpoint_row(e: Endpoint) -> list[str]:
    return [e.cluster, e.id, e.url, str(e.weight or 0), e.status.name or "?",
            e.source.name or "?", str(e.active_requests), _labels(e.labels)]


def _endpoint_text(e: Endpoint) -> list[str]:
    return _fields([("cluster", e.cluster), ("id", e.id), ("url", e.url),
                    ("weight", str(e.weight or 0)), ("status", e.status.name or "?"),
                    ("source", e.source.name or "?"), ("labels", _labels(e.labels)),
                    ("created", _time(e.create_time)), ("updated", _time(e.update_time)),
                    ("active requests", str(e.active_requests))])


def _config_text(c: ConfigInfo | None) -> list[str]:
    if c is None:
        return ["no configuration loaded"]
    return _fields([("version", c.version), ("source", c.source),
                    ("loaded", _time(c.load_time)), ("clusters", str(c.cluster_count)),
                    ("routes", str(c.route_count))])


def _fields(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs) + 1
    return [f"{k + ':':<{width}} {v}" for k, v in pairs]


def _snapshot_text(s: StatusSnapshot) -> list[str]:
    version = s.config.version[:12] if s.config else "-"
    lines = [f"snapshot seq={s.sequence} config={version} endpoints={len(s.endpoints)}"]
    if s.endpoints:
        lines += ["  " + line for line in _table(_ENDPOINT_COLUMNS,
                                                 map(_endpoint_row, s.endpoints))]
    return lines


def _event_text(e: StatusEvent) -> str:
    head = f"seq={e.sequence} {_time(e.time)}"
    if e.endpoint_added is not None and e.endpoint_added.endpoint is not None:
        added = e.endpoint_added.endpoint
        return f"{head} added {added.cluster}/{added.id} {added.url} {added.status.name}"
    if e.endpoint_removed is not None and e.endpoint_removed.endpoint is not None:
        removed = e.endpoint_removed.endpoint
        return f"{head} removed {removed.cluster}/{removed.id} ({e.endpoint_removed.reason})"
    if e.endpoint_status_changed is not None and e.endpoint_status_changed.endpoint is not None:
        change = e.endpoint_status_changed
        changed = e.endpoint_status_changed.endpoint
        return (f"{head} status {changed.cluster}/{changed.id} {change.previous_status.name} -> "
                f"{changed.status.name} ({change.reason})")
    if e.config_loaded is not None and e.config_loaded.config is not None:
        c = e.config_loaded.config
        return (f"{head} config version={c.version[:12]} source={c.source} "
                f"clusters={c.cluster_count} routes={c.route_count}")
    if e.breaker_changed is not None and e.breaker_changed.endpoint is not None:
        moved, tripped = e.breaker_changed, e.breaker_changed.endpoint
        where = f"{tripped.cluster}/{tripped.id}"
        return (f"{head} breaker {where} {moved.previous_state.name} -> {moved.state.name} "
                f"({moved.reason})")
    if e.health_changed is not None and e.health_changed.endpoint is not None:
        health, checked = e.health_changed, e.health_changed.endpoint
        where = f"{checked.cluster}/{checked.id}"
        return (f"{head} health {where} {health.previous_status.name} -> "
                f"{health.status.name} ({health.reason})")
    if e.panic_changed is not None:
        panic = e.panic_changed
        return (f"{head} panic {panic.cluster} {'entered' if panic.panic else 'left'} "
                f"({panic.reason})")
    if e.fallback_used is not None:
        used = e.fallback_used
        return (f"{head} fallback route={used.route} cluster={used.cluster} "
                f"{used.kind.name} ({used.reason})")
    if e.lifecycle_changed is not None:
        life = e.lifecycle_changed
        return (f"{head} lifecycle {_state_name(life.previous_state)} -> "
                f"{_state_name(life.state)} ({life.reason})")
    if e.config_rejected is not None:
        bad = e.config_rejected
        issues = "; ".join(f"{i.path}: {i.message}" if i.path else i.message
                           for i in bad.issues)
        return (f"{head} config rejected source={bad.source} stage={bad.stage} "
                f"({bad.trigger}): {issues}")
    if e.state_file_corrupt is not None:
        corrupt = e.state_file_corrupt
        return (f"{head} state file {corrupt.path} unreadable ({corrupt.error}); moved to "
                f"{corrupt.moved_to or '-'}")
    return f"{head} unknown change"  # a kind newer than this client


def _state_name(value: ServerState) -> str:
    return "?" if value == ServerState.UNSPECIFIED else value.name


def _health_name(value: HealthStatus) -> str:
    return "-" if value == HealthStatus.UNSPECIFIED else value.name


def _seconds(value: datetime.timedelta | None) -> str:
    seconds = value.total_seconds() if value is not None else 0.0
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.3g}s"


def _check_text(where: str, r: HealthCheckResult | None) -> str:
    if r is None:
        return f"check {where}: no result"
    outcome = "passed" if r.passed else "failed"
    answer = f"status {r.status_code}" if r.status_code else (r.error or "no answer")
    return f"check {where}: {outcome}, {answer}, {_seconds(r.latency)}"


_BREAKER_COLUMNS = ("CLUSTER", "ID", "STATE", "SINCE", "HALF-OPENS", "REQUESTS", "FAILURES",
                    "REASON")


def _breaker_row(e: Endpoint) -> list[str]:
    return [e.cluster, e.id, e.breaker_state.name or "?", _time(e.breaker_since),
            _time(e.breaker_half_open_time), str(e.request_count), str(e.failure_count),
            e.breaker_reason or "-"]


_CANDIDATE_COLUMNS = ("ID", "URL", "WEIGHT", "USABLE", "BREAKER", "HEALTH", "ACTIVE", "REASON")

#: `stat KIND` -> the API's kind, and the first column's name.
_STAT_KINDS = {"routes": (StatsKind.ROUTE, "ROUTE"), "clusters": (StatsKind.CLUSTER, "CLUSTER"),
               "endpoints": (StatsKind.ENDPOINT, "ENDPOINT")}
_STAT_COLUMNS = ("SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P90", "LATENCY_P99", "REQUESTS",
                 "RETRIES")
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _ms(value: datetime.timedelta | None) -> str:
    if value is None:
        return "-"
    ms = value.total_seconds() * 1000
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def _stat_table(kind: str, rows: Sequence[ResourceStats]) -> list[str]:
    """GetStats rows as `linkerd viz stat` shows them."""
    first = _STAT_KINDS[kind][1]
    clusters = kind == "clusters"  # the name is the cluster: no second column
    trips = kind != "routes"  # a route has no breaker
    headers = [first, *([] if clusters else ["CLUSTER"]), *_STAT_COLUMNS,
               *(["TRIPS"] if trips else [])]
    lines = []
    for r in rows:
        success = f"{r.success_rate * 100:.2f}%" if r.success_rate is not None else "-"
        lines.append([r.name, *([] if clusters else [r.cluster]), success,
                      f"{r.requests_per_second:.1f}", _ms(r.latency_p50), _ms(r.latency_p90),
                      _ms(r.latency_p99), str(r.requests), str(r.retries),
                      *([str(r.breaker_trips)] if trips else [])])
    return _table(headers, lines)


def _window_text(value: datetime.timedelta | None) -> str:
    seconds = round(value.total_seconds()) if value is not None else 0
    return f"{seconds // 60}m" if seconds % 60 == 0 and seconds else f"{seconds}s"


# ---------------------------------------------------------------- commands


class _Ctl:
    def __init__(self, args: argparse.Namespace, stub: AdminServiceStub,
                 channel: grpc.Channel, out: IO[str], err: IO[str]) -> None:
        self.args = args
        self.stub = stub
        self.channel = channel
        self.out = out
        self.err = err
        self.json = args.output == "json"
        self.metadata: tuple[tuple[str, str], ...] = ()

    def emit(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def emit_json(self, data: Any, *, compact: bool = False) -> None:
        if compact:
            self.out.write(json.dumps(data, separators=(",", ":")) + "\n")
        else:
            self.out.write(json.dumps(data, indent=2) + "\n")
        self.out.flush()

    def endpoint(self, message: Endpoint | None, text: Callable[[Endpoint], list[str]]) -> None:
        endpoint = message or Endpoint()
        if self.json:
            self.emit_json(endpoint.to_dict(include_default_values=True))
        else:
            self.emit(text(endpoint))

    # ---- endpoints

    def endpoints_list(self) -> int:
        status = EndpointStatus[self.args.status.upper()] if self.args.status else None
        request = ListEndpointsRequest(cluster=self.args.cluster,
                                       status=status or EndpointStatus.UNSPECIFIED,
                                       page_size=self.args.page_size,
                                       page_token=self.args.page_token)
        response = self.stub.list_endpoints(request)
        endpoints = list(response.endpoints)
        while self.args.all and response.next_page_token:
            request.page_token = response.next_page_token
            response = self.stub.list_endpoints(request)
            endpoints += response.endpoints
        if self.args.all:
            response = ListEndpointsResponse(endpoints=endpoints, total_size=response.total_size)
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
            return EXIT_OK
        if endpoints:
            self.emit(_table(_ENDPOINT_COLUMNS, map(_endpoint_row, endpoints)))
        else:
            self.err.write("no endpoints\n")
        if response.next_page_token:
            self.err.write(f"showing {len(endpoints)} of {response.total_size}; --all for "
                             f"every page, or --page-token {response.next_page_token}\n")
        return EXIT_OK

    def endpoints_get(self) -> int:
        response = self.stub.get_endpoint(GetEndpointRequest(cluster=self.args.cluster,
                                                             id=self.args.id))
        self.endpoint(response.endpoint, _endpoint_text)
        return EXIT_OK

    def endpoints_register(self) -> int:
        endpoint = Endpoint(cluster=self.args.cluster, url=self.args.url, id=self.args.id,
                            weight=self.args.weight, labels=dict(self.args.label),
                            status=EndpointStatus.DISABLED if self.args.disabled
                            else EndpointStatus.UNSPECIFIED)
        response = self.stub.register_endpoint(RegisterEndpointRequest(endpoint=endpoint))
        self.endpoint(response.endpoint, lambda e: [
            f"registered {e.cluster}/{e.id} {e.url} weight={e.weight} {e.status.name}"])
        return EXIT_OK

    def endpoints_deregister(self) -> int:
        response = self.stub.deregister_endpoint(
            DeregisterEndpointRequest(cluster=self.args.cluster, id=self.args.id))
        self.endpoint(response.endpoint, lambda e: [f"deregistered {e.cluster}/{e.id} {e.url}"])
        return EXIT_OK

    # ---- watch

    def watch(self) -> int:
        """Until --count events, Ctrl-C (exit 0) or the sidecar ending the stream (exit 0)."""
        interrupt = _CancelOnSigint()
        try:
            with interrupt:
                # The stream has no deadline; --timeout bounds only reaching the sidecar.
                _connect(self.channel, self.args.timeout)
                # The channel's own multi-callable, not the generated stub's generator:
                # the SIGINT handler needs the call, to cancel it.
                call = self.channel.unary_stream(
                    _WATCH_STATUS, request_serializer=WatchStatusRequest.SerializeToString,
                    response_deserializer=WatchStatusResponse.FromString,
                )(WatchStatusRequest(cluster=self.args.cluster), metadata=self.metadata)
                interrupt.call = call
                try:
                    self._watch_stream(call, interrupt)
                finally:
                    call.cancel()  # --count reached, or an error: end the call now
        except grpc.RpcError as exc:
            if not (interrupt.interrupted and exc.code() is grpc.StatusCode.CANCELLED):
                raise
        except KeyboardInterrupt:  # Ctrl-C before the call started
            pass
        return EXIT_OK

    def _watch_stream(self, stream: Iterable[WatchStatusResponse],
                      interrupt: _CancelOnSigint) -> None:
        events = 0
        for message in stream:
            if interrupt.interrupted:
                return
            self._watch_message(message)
            if message.event is not None:
                events += 1
                if self.args.count is not None and events >= self.args.count:
                    return

    def _watch_message(self, message: WatchStatusResponse) -> None:
        if self.json:
            self.emit_json(message.to_dict(), compact=True)
        elif message.snapshot is not None:
            self.emit(_snapshot_text(message.snapshot))
        elif message.event is not None:
            self.emit([_event_text(message.event)])

    # ---- config

    def config_get(self) -> int:
        response = self.stub.get_config(GetConfigRequest())
        if self.args.json:
            try:
                self.emit_json(json.loads(response.config_json))
            except ValueError:
                self.emit([response.config_json])
        elif self.json:
            self.emit_json(response.to_dict(include_default_values=True))
        else:
            self.emit(_config_text(response.config))
        return EXIT_OK


    def config_diff(self) -> int:
        from sidecar.config.loader import load_config
        from sidecar.errors import ConfigError

        args = self.args
        try:
            loaded = load_config(args.file, dict(args.ext_str), args.jpath)
        except ConfigError as exc:
            for issue in exc.issues:
                self.err.write(f"{exc.source}: {issue}\n")
            return EXIT_ERROR
        response = self.stub.get_config(GetConfigRequest())
        running_version = response.config.version if response.config else ""
        proposed = loaded.config.model_dump_json(indent=2)
        diff = "".join(difflib.unified_diff(
            (response.config_json + "\n").splitlines(keepends=True),
            (proposed + "\n").splitlines(keepends=True),
            fromfile=f"serving (version {running_version[:12]})",
            tofile=f"{args.file} (version {loaded.version[:12]})"))
        if self.json:
            self.emit_json({"serving_version": running_version, "file_version": loaded.version,
                            "changed": bool(diff), "diff": diff})
        elif diff:
            self.out.write(diff)
            self.out.flush()
        else:
            self.emit([f"no changes: {args.file} is what is serving "
                       f"(version {loaded.version[:12]})"])
        return EXIT_ERROR if diff and args.exit_code else EXIT_OK


    # ---- operations

    def config_validate(self) -> int:
        args = self.args
        if args.path:
            request = ValidateConfigRequest(path=args.path)
            shown = args.path
        else:
            from sidecar.config.loader import render_data
            from sidecar.errors import ConfigError

            try:
                data = render_data(args.file, dict(args.ext_str), args.jpath)
            except ConfigError as exc:
                for issue in exc.issues:
                    self.err.write(f"{exc.source}: {issue}\n")
                return EXIT_ERROR
            request = ValidateConfigRequest(config_json=json.dumps(data))
            shown = args.file
        response = self.stub.validate_config(request)
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
        elif response.valid:
            change = ("differs from the serving one" if response.changed
                      else "is what is serving")
            self.emit([f"{shown}: ok (version {response.version[:12]}); it {change}"])
        else:
            self.emit([f"{shown}: {i.path}: {i.message}" if i.path else f"{shown}: {i.message}"
                       for i in response.issues])
        return EXIT_OK if response.valid else EXIT_ERROR

    def config_reload(self) -> int:
        response = self.stub.reload_config(ReloadConfigRequest())
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
        else:
            version = response.config.version[:12] if response.config else "-"
            self.emit([f"reloaded: version {version}" if response.changed
                       else f"unchanged: version {version}"])
        return EXIT_OK

    def log_level(self) -> int:
        duration = (datetime.timedelta(seconds=self.args.duration)
                    if self.args.duration is not None else None)
        response = self.stub.set_log_level(SetLogLevelRequest(
            level=LogLevel[self.args.level.upper()], duration=duration))
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
        else:
            until = (f" until {_time(response.revert_time)}, then "
                     f"{response.previous_level.name.lower()}"
                     if response.revert_time is not None else "")
            self.emit([f"log level {response.level.name.lower()} (was "
                       f"{response.previous_level.name.lower()}){until}"])
        return EXIT_OK

    def drain(self) -> int:
        deadline = (datetime.timedelta(seconds=self.args.deadline)
                    if self.args.deadline is not None else None)
        response = self.stub.drain(DrainRequest(deadline=deadline))
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
        else:
            what = "draining" if response.started else "already draining"
            self.emit([f"{what} (state {_state_name(response.state)}); requests in flight "
                       f"are cut off at {_time(response.deadline_time)}"])
        return EXIT_OK

    def info(self) -> int:
        r = self.stub.get_server_info(GetServerInfoRequest())
        if self.json:
            self.emit_json(r.to_dict(include_default_values=True))
            return EXIT_OK
        state = r.state.name if r.state != ServerState.UNSPECIFIED else "?"
        self.emit(_fields([
            ("version", r.version), ("pid", str(r.pid)), ("state", state),
            ("why", r.state_reason or "-"), ("started", _time(r.start_time)),
            ("uptime", _seconds(r.uptime)), ("log level", r.log_level.name.lower()),
            ("config", r.config.version[:12] if r.config else "-")]))
        return EXIT_OK

    # ---- endpoints update, breakers, health, route

    def endpoints_update(self) -> int:
        args = self.args
        paths = [name for name, given in (("weight", args.weight is not None),
                                          ("status", args.status is not None),
                                          ("labels", bool(args.label) or args.clear_labels))
                 if given]
        if not paths:
            self.err.write(f"{args.usage}sidecarctl endpoints update: error: nothing to "
                           "update: give --weight, --status, --label or --clear-labels\n")
            return EXIT_USAGE
        request = UpdateEndpointRequest(
            cluster=args.cluster, id=args.id, weight=args.weight,
            status=EndpointStatus[args.status.upper()] if args.status
            else EndpointStatus.UNSPECIFIED,
            labels=dict(args.label), update_mask=FieldMask(paths=paths), reason=args.reason)
        response = self.stub.update_endpoint(request)
        self.endpoint(response.endpoint, lambda e: [
            f"updated {e.cluster}/{e.id} weight={e.weight} {e.status.name} "
            f"labels={_labels(e.labels)}"])
        return EXIT_OK

    def breakers_list(self) -> int:
        request = ListEndpointsRequest(cluster=self.args.cluster, page_size=1000)
        response = self.stub.list_endpoints(request)
        endpoints = list(response.endpoints)
        while response.next_page_token:
            request.page_token = response.next_page_token
            response = self.stub.list_endpoints(request)
            endpoints += response.endpoints
        if self.json:
            self.emit_json(ListEndpointsResponse(endpoints=endpoints, total_size=len(endpoints))
                           .to_dict(include_default_values=True))
        elif endpoints:
            self.emit(_table(_BREAKER_COLUMNS, map(_breaker_row, endpoints)))
        else:
            self.err.write("no endpoints\n")
        return EXIT_OK

    def breakers_trip(self) -> int:
        duration = (datetime.timedelta(seconds=self.args.duration)
                    if self.args.duration is not None else None)
        response = self.stub.trip_breaker(TripBreakerRequest(
            cluster=self.args.cluster, id=self.args.id, duration=duration))
        self.endpoint(response.endpoint, lambda e: [
            f"tripped {e.cluster}/{e.id}: breaker {e.breaker_state.name} until "
            f"{_time(e.breaker_half_open_time)}, status {e.status.name}"])
        return EXIT_OK

    def breakers_reset(self) -> int:
        response = self.stub.reset_breaker(ResetBreakerRequest(cluster=self.args.cluster,
                                                               id=self.args.id))
        self.endpoint(response.endpoint, lambda e: [
            f"reset {e.cluster}/{e.id}: breaker {e.breaker_state.name}, status {e.status.name}"])
        return EXIT_OK

    def health_check(self) -> int:
        response = self.stub.check_endpoint_health(CheckEndpointHealthRequest(
            cluster=self.args.cluster, id=self.args.id))
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
            return EXIT_OK
        e = response.endpoint or Endpoint()
        lines = [_check_text(f"{self.args.cluster}/{self.args.id}", response.result)]
        health = _health_name(e.health)
        lines.append(f"health: {health} ({e.health_reason})" if e.health_reason
                     else f"health: {health}")
        lines.append(f"status: {e.status.name}")
        self.emit(lines)
        return EXIT_OK

    def route_resolve(self) -> int:
        response = self.stub.resolve_route(ResolveRouteRequest(
            method=self.args.method, host=self.args.host, path=self.args.path))
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True))
            return EXIT_OK
        picked = response.endpoint
        lines = _fields([
            ("route", response.route), ("cluster", response.cluster),
            ("prefix", response.prefix), ("upstream path", response.upstream_path),
            ("endpoint", f"{picked.id} {picked.url}" if picked is not None else "none"),
            ("why", response.pick_reason), ("panic", "yes" if response.panic else "no")])
        if response.candidates:
            lines.append("")
            lines += _table(_CANDIDATE_COLUMNS, (
                [c.endpoint.id, c.endpoint.url, str(c.endpoint.weight or 0),
                 "yes" if c.usable else "no", c.endpoint.breaker_state.name or "?",
                 _health_name(c.endpoint.health), str(c.endpoint.active_requests),
                 c.reason or "-"]
                for c in response.candidates if c.endpoint is not None))
        self.emit(lines)
        return EXIT_OK


    # ---- stat

    def stat(self) -> int:
        """One table; with --watch, one per --interval until Ctrl-C (exit 0)."""
        args = self.args
        request = GetStatsRequest(kind=_STAT_KINDS[args.kind][0],
                                  window=datetime.timedelta(seconds=args.window),
                                  cluster=args.cluster)
        if not args.watch:
            self._stat_show(self.stub.get_stats(request), first=True)
            return EXIT_OK
        stop = _StopOnSigint()
        with stop:
            first = True
            while not stop.stopped:
                response = self.stub.get_stats(request)
                if stop.stopped:
                    break
                self._stat_show(response, first=first)
                first = False
                stop.sleep(args.interval)
        return EXIT_OK

    def _stat_show(self, response: GetStatsResponse, *, first: bool) -> None:
        if self.json:
            self.emit_json(response.to_dict(include_default_values=True),
                           compact=self.args.watch)
            return
        rows = {"routes": response.routes, "clusters": response.clusters,
                "endpoints": response.endpoints}[self.args.kind]
        lines = _stat_table(self.args.kind, rows)
        if self.args.watch:
            # A caption: what the figures cover and when, so a redraw shows it moved.
            caption = (f"{self.args.kind} over the last {_window_text(response.window)} at "
                       f"{_time(response.time)} (Ctrl-C to stop)")
            if self.out.isatty():
                self.out.write(_CLEAR_SCREEN)
            elif not first:
                lines = ["", caption, *lines]
                caption = ""
            if caption:
                lines = [caption, *lines]
        self.emit(lines)


_WATCH_STATUS = "/sidecar.admin.v1.AdminService/WatchStatus"


class _OnSigint:
    """While entered, SIGINT calls `_handle` instead of raising KeyboardInterrupt.

    No-op outside the main thread (only it receives signals) and when SIGINT is
    ignored (see the module docstring): an ignored SIGINT stays ignored."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            # None: a handler not set from Python; the default is the closest.
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.default_int_handler)
            self._installed = False


class _StopOnSigint(_OnSigint):
    """While entered: SIGINT sets `stopped`, which a loop checks between steps; `sleep`
    waits between them and ends early on it.

    The handler only assigns a bool. It runs in the main thread between two bytecodes,
    wherever the loop happens to be: a `threading.Event.set()` there deadlocks when the
    loop is inside `Event.wait()`, whose lock it already holds."""

    #: How often `sleep` looks at `stopped`: the most a Ctrl-C waits.
    POLL = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    def _handle(self, signum: int, frame: object) -> None:
        self.stopped = True

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.POLL))


class _CancelOnSigint(_OnSigint):
    """While entered: SIGINT cancels `call` (or, before there is one, raises
    KeyboardInterrupt) and sets `interrupted`.

    Cancelling wakes the main thread from the stream, which then ends with CANCELLED.
    """

    def __init__(self) -> None:
        super().__init__()
        self.call: grpc.Future | None = None
        self.interrupted = False

    def _handle(self, signum: int, frame: object) -> None:
        self.interrupted = True
        if self.call is None:
            raise KeyboardInterrupt
        self.call.cancel()


class _Unreachable(Exception):
    pass


def _connect(channel: grpc.Channel, timeout: float) -> None:
    """Wait until `channel` is connected; _Unreachable on failure or after `timeout`."""
    final = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
             grpc.ChannelConnectivity.SHUTDOWN)
    reached: list[grpc.ChannelConnectivity] = []
    done = threading.Event()

    def on_change(state: grpc.ChannelConnectivity) -> None:
        if state in final:
            reached.append(state)
            done.set()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        if not done.wait(timeout):
            raise _Unreachable(f"no connection within {timeout:g}s")
        if reached[0] is not grpc.ChannelConnectivity.READY:
            raise _Unreachable("connection failed")
    finally:
        channel.unsubscribe(on_change)


_COMMANDS: dict[tuple[str, str | None], Callable[[_Ctl], int]] = {
    ("endpoints", "list"): _Ctl.endpoints_list,
    ("endpoints", "get"): _Ctl.endpoints_get,
    ("endpoints", "register"): _Ctl.endpoints_register,
    ("endpoints", "deregister"): _Ctl.endpoints_deregister,
    ("watch", None): _Ctl.watch,
    ("config", "get"): _Ctl.config_get,
    ("config", "diff"): _Ctl.config_diff,
    ("endpoints", "update"): _Ctl.endpoints_update,
    ("breakers", "list"): _Ctl.breakers_list,
    ("breakers", "trip"): _Ctl.breakers_trip,
    ("breakers", "reset"): _Ctl.breakers_reset,
    ("health", "check"): _Ctl.health_check,
    ("route", "resolve"): _Ctl.route_resolve,
    ("config", "validate"): _Ctl.config_validate,
    ("config", "reload"): _Ctl.config_reload,
    ("log-level", None): _Ctl.log_level,
    ("info", None): _Ctl.info,
    ("drain", None): _Ctl.drain,
    ("stat", None): _Ctl.stat,
}


_CallDetails = collections.namedtuple(
    "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                     "compression"))


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Give every unary call a deadline: the generated stubs take no timeout argument."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = _ClientCallDetails(details.method, self._timeout, details.metadata,
                                         details.credentials, details.wait_for_ready,
                                         details.compression)
        return continuation(details, request)


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Add the credentials' metadata (`authorization`) to every call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        if not self._metadata:
            return details
        return _ClientCallDetails(details.method, details.timeout,
                                  (*(details.metadata or ()), *self._metadata),
                                  details.credentials, details.wait_for_ready,
                                  details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _UsageError(Exception):
    pass


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _UsageError(f"{flag} {path}: {exc.strerror or exc}") from None


def _local_target(target: str) -> bool:
    from sidecar.config.admin import is_loopback_host
    from sidecar.core.addresses import parse_host_port

    if target.startswith(("unix:", "unix-abstract:")):
        return True
    try:
        return is_loopback_host(parse_host_port(target).host)
    except ValueError:
        return False


class _Connection:
    """How to reach the sidecar: target, TLS credentials, call metadata."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None,
                 options: list[tuple[str, str]],
                 metadata: tuple[tuple[str, str], ...]) -> None:
        self.target = target
        self.credentials = credentials
        self.options = options
        self.metadata = metadata

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Connection:
        token: str | None = None
        if args.token_file:
            token = _read(args.token_file, "--token-file").decode("utf-8", "replace").strip()
            if not token:
                raise _UsageError(f"--token-file {args.token_file}: the file is empty")
        elif os.environ.get("SIDECARCTL_TOKEN"):
            token = os.environ["SIDECARCTL_TOKEN"].strip()
        if bool(args.cert_file) != bool(args.key_file):
            raise _UsageError("--cert-file and --key-file go together")
        tls = bool(args.ca_file or args.cert_file)
        credentials = None
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(args.ca_file, "--ca-file") if args.ca_file else None,
                private_key=_read(args.key_file, "--key-file") if args.key_file else None,
                certificate_chain=(_read(args.cert_file, "--cert-file") if args.cert_file
                                   else None))
        elif token is not None and not _local_target(args.target):
            raise _UsageError(f"refusing to send a token in clear to {args.target}: give "
                              "--ca-file (TLS), or use a loopback or unix: target")
        options = ([("grpc.ssl_target_name_override", args.server_name)]
                   if tls and args.server_name else [])
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return cls(args.target, credentials, options, metadata)

    def open(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.target, self.credentials, options=self.options)
        return grpc.insecure_channel(self.target, options=self.options)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(argv: Sequence[str] | None, stdout: IO[str], stderr: IO[str]) -> int:
    """sidecarctl with explicit streams; returns the exit code."""
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parse_args(build_parser(), argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command = _COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        connection = _Connection.from_args(args)
    except _UsageError as exc:
        stderr.write(f"sidecarctl: error: {exc}\n")
        return EXIT_USAGE
    try:
        with connection.open() as channel:
            intercepted = grpc.intercept_channel(
                channel, _DefaultDeadline(args.timeout), _Metadata(connection.metadata))
            ctl = _Ctl(args, AdminServiceStub(intercepted), channel, stdout, stderr)
            ctl.metadata = connection.metadata
            return command(ctl)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        details = _one_line(exc.details() or "")
        if code in _UNREACHABLE:
            stderr.write(f"sidecarctl: {code.name}: cannot reach the sidecar at {args.target}"
                         f" ({details})\n")
            return EXIT_UNREACHABLE
        stderr.write(f"sidecarctl: {code.name}: {details}\n")
        return EXIT_ERROR
    except _Unreachable as exc:
        stderr.write(f"sidecarctl: UNAVAILABLE: cannot reach the sidecar at {args.target} "
                     f"({exc})\n")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, sys.stdout, sys.stderr)

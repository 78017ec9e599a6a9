"""`sidecarctl`: the command-line client of the admin API.

Talks to `sidecar.admin.v1.AdminService` through the betterproto2 typed sync stubs
(`admin/client/`, generated) on a plain `grpc.insecure_channel`.

Command names, options, output and exit codes are a public interface:

* 0 success (and Ctrl-C during `watch`);
* 1 the sidecar answered with an error, printed as one line on stderr:
  `sidecarctl: NOT_FOUND: no endpoint 'x' in cluster 'y'`;
* 2 usage error;
* 3 the sidecar could not be reached (UNAVAILABLE, or DEADLINE_EXCEEDED);
* 130 Ctrl-C during any other command.

`--timeout` is the deadline of each unary call, and for `watch` the time allowed
to connect (the stream itself has none: it runs until --count, Ctrl-C, or the
sidecar ending it).

`-o text` (default) prints aligned tables for people; `-o json` prints proto JSON
(betterproto2's `to_dict`) for scripts: one document, or one line per message for
`watch`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import difflib
import json
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import grpc
from pydantic.warnings import PydanticDeprecatedSince212

from sidecar.cli import parse_key_value

# betterproto2 0.10's generated oneof validators use a signature pydantic 2.12+
# deprecates (they still work); the warning is about generated code, not ours.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PydanticDeprecatedSince212)
    from .client.sidecar.admin.v1 import (
        AdminServiceStub,
        ConfigInfo,
        DeregisterEndpointRequest,
        Endpoint,
        EndpointStatus,
        GetConfigRequest,
        GetEndpointRequest,
        ListEndpointsRequest,
        ListEndpointsResponse,
        RegisterEndpointRequest,
        StatusEvent,
        StatusSnapshot,
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


# ---------------------------------------------------------------- arguments


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


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


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
    reg.add_argument("--label", type=_label, action="append", default=[], metavar="K=V",
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
    return f"{head} unknown change"  # a kind newer than this client


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
        try:
            # The stream has no deadline; --timeout bounds only reaching the sidecar.
            _connect(self.channel, self.args.timeout)
            stream = self.stub.watch_status(WatchStatusRequest(cluster=self.args.cluster))
            try:
                events = 0
                for message in stream:
                    self._watch_message(message)
                    if message.event is not None:
                        events += 1
                        if self.args.count is not None and events >= self.args.count:
                            break
            finally:
                # Closing the generator drops the call; closing the channel cancels it.
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        except KeyboardInterrupt:
            pass
        return EXIT_OK

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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(argv: Sequence[str] | None, stdout: IO[str], stderr: IO[str]) -> int:
    """sidecarctl with explicit streams; returns the exit code."""
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command = _COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        with grpc.insecure_channel(args.target) as channel:
            intercepted = grpc.intercept_channel(channel, _DefaultDeadline(args.timeout))
            return command(_Ctl(args, AdminServiceStub(intercepted), channel, stdout, stderr))
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

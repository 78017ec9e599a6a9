"""sidecarctl against a real admin server: commands, text and JSON output, exit codes.

Unary commands run in-process (`ctl.run` in a thread: the sync client must not
block the loop serving it); `watch` and Ctrl-C run as real subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from admin import ctl
from admin.__main__ import main
from admin.server import AdminServer
from admin.testing import SAMPLE_CONFIG, load_config, serve
from sidecar.cli import parse_key_value
from sidecar.config.model import parse_config
from sidecar.core.health import CheckResult
from sidecar.core.routing import RouteMatch, RouteTable
from sidecar.registry import EndpointStatus, Registry

ROOT = Path(__file__).resolve().parents[2]
CONFIG = SAMPLE_CONFIG
CONFIG_JSON = json.dumps({"clusters": ["users", "orders"]})
TIMEOUT = 10.0


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    load_config(registry, CONFIG, source="/etc/sidecar.jsonnet")
    return registry


@pytest.fixture
async def target(registry: Registry) -> AsyncIterator[str]:
    async with serve(registry, lambda: CONFIG_JSON) as (_, address):
        yield address


@pytest.fixture
def unreachable() -> Iterator[str]:
    """An address where nothing listens: a bound, never listening, socket."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def sidecarctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- endpoints


async def test_list_text(target: str) -> None:
    code, out, err = await sidecarctl("--target", target, "endpoints", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["CLUSTER", "ID", "URL", "WEIGHT", "STATUS", "SOURCE", "ACTIVE",
                                "LABELS"]
    assert lines[1].split() == ["orders", "o1", "http://127.0.0.1:8091", "1", "ACTIVE", "CONFIG",
                                "0", "-"]
    assert lines[3].split()[-1] == "zone=a"
    # Aligned: every row's URL starts in the same column.
    assert len({line.index("http") for line in lines[1:]}) == 1


async def test_list_json_filters_and_pages(target: str, registry: Registry) -> None:
    registry.set_status("users", "u2", EndpointStatus.DISABLED, "disabled by admin")
    code, out, _ = await sidecarctl("--target", target, "-o", "json", "endpoints", "list",
                                    "--cluster", "users", "--status", "disabled")
    assert code == 0
    data = json.loads(out)
    assert [e["id"] for e in data["endpoints"]] == ["u2"]
    assert data["endpoints"][0]["status"] == "ENDPOINT_STATUS_DISABLED"
    assert data["totalSize"] == 1 and data["nextPageToken"] == ""

    code, out, err = await sidecarctl("--target", target, "endpoints", "list", "--page-size",
                                      "1")
    assert code == 0 and len(out.splitlines()) == 2
    assert "showing 1 of 3" in err and "--page-token" in err

    # Options also work after the command.
    code, out, _ = await sidecarctl("endpoints", "list", "--page-size", "1", "--all",
                                    "--target", target, "-o", "json")
    data = json.loads(out)
    assert [e["id"] for e in data["endpoints"]] == ["o1", "u1", "u2"]
    assert data["totalSize"] == 3 and data["nextPageToken"] == ""

    code, out, _ = await sidecarctl("--target", target, "-o", "json", "endpoints", "list",
                                    "--page-size", "2")
    token = json.loads(out)["nextPageToken"]
    code, out, _ = await sidecarctl("--target", target, "-o", "json", "endpoints", "list",
                                    "--page-size", "2", "--page-token", token)
    assert [e["id"] for e in json.loads(out)["endpoints"]] == ["u2"]


async def test_list_empty(target: str) -> None:
    code, out, err = await sidecarctl("--target", target, "endpoints", "list", "--cluster", "x")
    assert (code, out, err) == (0, "", "no endpoints\n")


async def test_register_get_deregister(target: str, registry: Registry) -> None:
    code, out, err = await sidecarctl(
        "--target", target, "endpoints", "register", "users", "http://127.0.0.1:9000",
        "--id", "new", "--weight", "5", "--label", "zone=b", "--label", "tier=gold",
        "--disabled")
    assert (code, err) == (0, "")
    assert out == "registered users/new http://127.0.0.1:9000 weight=5 DISABLED\n"
    info = registry.get("users", "new")
    assert (info.weight, info.status, dict(info.labels)) == (
        5, EndpointStatus.DISABLED, {"zone": "b", "tier": "gold"})

    code, out, _ = await sidecarctl("--target", target, "endpoints", "get", "users", "new")
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["url"].strip() == "http://127.0.0.1:9000"
    assert fields["source"].strip() == "ADMIN"
    assert fields["labels"].strip() == "tier=gold,zone=b"

    code, out, _ = await sidecarctl("--target", target, "-o", "json", "endpoints", "get",
                                    "users", "new")
    data = json.loads(out)
    assert data["weight"] == 5 and data["labels"] == {"zone": "b", "tier": "gold"}
    assert data["source"] == "ENDPOINT_SOURCE_ADMIN" and data["activeRequests"] == 0

    code, out, _ = await sidecarctl("--target", target, "endpoints", "deregister", "users",
                                    "new")
    assert (code, out) == (0, "deregistered users/new http://127.0.0.1:9000\n")
    assert [e.id for e in registry.list("users")] == ["u1", "u2"]


async def test_register_json_defaults(target: str) -> None:
    code, out, _ = await sidecarctl("--target", target, "-o", "json", "endpoints", "register",
                                    "orders", "http://127.0.0.1:9100")
    data = json.loads(out)
    assert code == 0
    assert (data["id"], data["weight"], data["status"]) == (
        "127.0.0.1:9100", 1, "ENDPOINT_STATUS_ACTIVE")


# ---------------------------------------------------------------- errors and exit codes


@pytest.mark.parametrize(("argv", "expected"), [
    (["endpoints", "get", "users", "nope"],
     "sidecarctl: NOT_FOUND: no endpoint 'nope' in cluster 'users'\n"),
    (["endpoints", "deregister", "users", "u1"], "sidecarctl: FAILED_PRECONDITION: endpoint "
     "'u1' of cluster 'users' comes from the configuration file; remove it there\n"),
    (["endpoints", "register", "users", "http://127.0.0.1:8081"],
     "sidecarctl: ALREADY_EXISTS: http://127.0.0.1:8081 is already in cluster 'users' as "
     "endpoint 'u1'\n"),
    (["endpoints", "register", "users", "http://127.0.0.1:70000"],
     "sidecarctl: INVALID_ARGUMENT: url: port is out of range 1-65535 or not a number\n"),
    (["endpoints", "register", "users", "http://127.0.0.1:9000", "--weight", "0"],
     "sidecarctl: INVALID_ARGUMENT: weight 0 is out of range 1-1000\n"),
    (["endpoints", "list", "--page-size", "5000"],
     "sidecarctl: INVALID_ARGUMENT: page_size must be 0 to 1000, got 5000\n"),
])
async def test_server_errors_exit_1(target: str, registry: Registry, argv: list[str],
                                    expected: str) -> None:
    before = registry.list(), registry.sequence
    code, out, err = await sidecarctl("--target", target, *argv)
    assert (code, out, err) == (1, "", expected)
    assert (registry.list(), registry.sequence) == before


@pytest.mark.parametrize("argv", [
    [],
    ["endpoints"],
    ["endpoints", "register", "users"],
    ["endpoints", "register", "users", "http://h:1", "--weight", "-1"],
    ["endpoints", "register", "users", "http://h:1", "--label", "novalue"],
    ["endpoints", "list", "--status", "sleepy"],
    ["-o", "yaml", "endpoints", "list"],
    ["--timeout", "0", "endpoints", "list"],
    ["watch", "--count", "0"],
    ["frobnicate"],
])
async def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, out, err = await sidecarctl(*argv)
    assert code == 2 and out == ""
    assert "usage: sidecarctl" in err


async def test_help_exits_0() -> None:
    code, out, _ = await sidecarctl("endpoints", "register", "--help")
    assert code == 0 and "--label K=V" in out


@pytest.mark.parametrize("argv", [["endpoints", "list"], ["config", "get"], ["watch"]])
async def test_unreachable_exits_3(unreachable: str, argv: list[str]) -> None:
    code, out, err = await sidecarctl("--target", unreachable, "--timeout", "2", *argv)
    assert (code, out) == (3, "")
    assert err.startswith(f"sidecarctl: UNAVAILABLE: cannot reach the sidecar at {unreachable}")
    assert err.count("\n") == 1


@pytest.fixture
def silent() -> Iterator[str]:
    """An address that accepts TCP connections and never speaks HTTP/2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(("argv", "code_name"), [
    (["endpoints", "list"], "DEADLINE_EXCEEDED"),  # --timeout is each call's deadline
    (["watch"], "UNAVAILABLE"),  # the stream has none; --timeout bounds connecting
])
async def test_silent_sidecar_times_out_with_3(silent: str, argv: list[str],
                                               code_name: str) -> None:
    code, out, err = await sidecarctl("--target", silent, "--timeout", "0.3", *argv)
    assert (code, out) == (3, "")
    assert err.startswith(f"sidecarctl: {code_name}: cannot reach the sidecar at {silent}")


def test_target_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_ADMIN", "10.1.2.3:7000")
    assert ctl.build_parser().parse_args(["endpoints", "list"]).target == "10.1.2.3:7000"
    monkeypatch.delenv("SIDECAR_ADMIN")
    assert ctl.build_parser().parse_args(["endpoints", "list"]).target == "127.0.0.1:9901"


@pytest.mark.parametrize("argv", [["--frobnicate"], ["--frobnicate", "endpoints", "list"],
                                  ["endpoints", "--frobnicate"], ["watch", "--frobnicate"]])
async def test_unknown_argument_is_named(argv: list[str]) -> None:
    """Not "the following arguments are required: COMMAND"."""
    code, out, err = await sidecarctl(*argv)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == "sidecarctl: error: unrecognized arguments: --frobnicate"


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _actions(child)


def test_one_key_value_parser() -> None:
    """--label and --ext-str both use sidecar's parse_key_value: one parser, one message."""
    typed = {action.dest: action.type for action in _actions(ctl.build_parser())
             if action.metavar in ("K=V", "KEY=VALUE")}
    assert set(typed) == {"label", "ext_str"}
    assert set(typed.values()) == {parse_key_value}


def test_main_is_the_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 2
    assert "usage: sidecarctl config" in capsys.readouterr().err


# ---------------------------------------------------------------- config


async def test_config_get(target: str, registry: Registry) -> None:
    assert registry.config_info is not None
    code, out, _ = await sidecarctl("--target", target, "config", "get")
    assert code == 0
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert fields["version"] == registry.config_info.version
    assert fields["source"] == "/etc/sidecar.jsonnet"
    assert (fields["clusters"], fields["routes"]) == ("2", "2")
    assert fields["loaded"] == "2023-11-14T22:13:20.000Z"

    code, out, _ = await sidecarctl("--target", target, "config", "get", "--json")
    assert json.loads(out) == json.loads(CONFIG_JSON)

    code, out, _ = await sidecarctl("--target", target, "-o", "json", "config", "get")
    data = json.loads(out)
    assert data["config"]["version"] == registry.config_info.version
    assert data["config"]["loadTime"] == "2023-11-14T22:13:20Z"
    assert data["configJson"] == CONFIG_JSON


# ---------------------------------------------------------------- watch (subprocesses)


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Spawn children with SIGINT at its default, as a terminal's Ctrl-C finds them.

    A test runner started with SIGINT ignored (as a non-interactive shell starts a
    background job, `make test &`) would otherwise pass that on: fork/exec keeps an
    ignored signal ignored, and Python then leaves it so. The asyncio loop spawns with
    subprocess.Popen, which keeps it; uvloop spawns through libuv, which resets every
    signal. So `watch` ignored the test's SIGINT on the asyncio loop only, and the
    Ctrl-C test timed out in runs started that way (test_..._runner_ignores_sigint).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


async def spawn(*argv: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONWARNINGS="error", PYTHONUNBUFFERED="1")
    env.pop("SIDECAR_ADMIN", None)
    with sigint_not_ignored():
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "admin", *argv, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def readline(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert line, "sidecarctl exited early"
    return line.decode()


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_watch_count_text(target: str, registry: Registry) -> None:
    proc = await spawn("--target", target, "watch", "--count", "4")
    try:
        first = await readline(proc)
        assert first.startswith(f"snapshot seq={registry.sequence} config=")
        assert "endpoints=3" in first
        registry.register("users", "http://127.0.0.1:9000", endpoint_id="new")
        registry.observe("users", "new", ok=False, reason="health check failed")
        registry.deregister("users", "new")
        registry.register("users", "http://127.0.0.1:9001")  # after --count: not printed
    finally:
        code, out, err = await finish(proc)
    assert (code, err) == (0, "")
    events = [line for line in out.splitlines() if line.startswith("seq=")]
    assert len(events) == 4
    assert " added users/new http://127.0.0.1:9000 ACTIVE" in events[0]
    assert events[1].endswith(" breaker users/new CLOSED -> OPEN (health check failed)")
    assert " status users/new ACTIVE -> UNHEALTHY (breaker open: health check failed)" in events[2]
    assert events[3].endswith(" removed users/new (deregistered)")


async def test_watch_json_with_cluster_filter(target: str, registry: Registry) -> None:
    proc = await spawn("--target", target, "-o", "json", "watch", "--cluster", "orders",
                       "--count", "2")
    try:
        snapshot = json.loads(await readline(proc))
        assert [e["id"] for e in snapshot["snapshot"]["endpoints"]] == ["o1"]
        registry.register("users", "http://127.0.0.1:9000")  # other cluster: filtered
        registry.register("orders", "http://127.0.0.1:9001", endpoint_id="o2")
        load_config(registry, CONFIG)
    finally:
        code, out, err = await finish(proc)
    assert (code, err) == (0, "")
    added, loaded = (json.loads(line)["event"] for line in out.splitlines())
    assert added["endpointAdded"]["endpoint"]["id"] == "o2"
    assert loaded["configLoaded"]["config"]["source"] == "<test>"
    assert int(loaded["sequence"]) == int(added["sequence"]) + 1


async def test_watch_ctrl_c_exits_0(target: str) -> None:
    proc = await spawn("--target", target, "watch")
    try:
        assert (await readline(proc)).startswith("snapshot ")
        proc.send_signal(signal.SIGINT)
    finally:
        code, _, err = await finish(proc)
    assert (code, err) == (0, "")


async def test_watch_ctrl_c_exits_0_when_the_test_runner_ignores_sigint(target: str) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = await spawn("--target", target, "watch")
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert (await readline(proc)).startswith("snapshot ")
        proc.send_signal(signal.SIGINT)
    finally:
        code, _, err = await finish(proc)
    assert (code, err) == (0, "")


async def test_watch_ctrl_c_after_events_exits_0(target: str, registry: Registry) -> None:
    """SIGINT cancels the call wherever the main thread is: between events too."""
    proc = await spawn("--target", target, "-o", "json", "watch")
    try:
        assert "snapshot" in json.loads(await readline(proc))
        registry.register("users", "http://127.0.0.1:9000", endpoint_id="new")
        assert "event" in json.loads(await readline(proc))
        proc.send_signal(signal.SIGINT)
    finally:
        code, _, err = await finish(proc)
    assert (code, err) == (0, "")


def test_watch_sigint_handler_is_scoped_and_leaves_an_ignored_sigint_alone() -> None:
    runner = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupt = ctl._CancelOnSigint()
        with interrupt:
            assert signal.getsignal(signal.SIGINT) == interrupt._handle
            with pytest.raises(KeyboardInterrupt):  # no call yet: as Python's default
                signal.raise_signal(signal.SIGINT)
        assert interrupt.interrupted
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with ctl._CancelOnSigint():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, runner)


async def test_watch_ends_when_the_server_stops(registry: Registry) -> None:
    server = AdminServer(registry, lambda: "{}")
    port = await server.start("127.0.0.1:0")
    proc = await spawn("--target", f"127.0.0.1:{port}", "watch")
    try:
        assert (await readline(proc)).startswith("snapshot ")
    finally:
        await server.stop(5)
        code, _, err = await finish(proc)
    assert (code, err) == (0, "")


def test_module_entry_point_runs(unreachable: str) -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "admin", "--target", unreachable,
                             "--timeout", "2", "endpoints", "list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env=dict(os.environ, PYTHONWARNINGS="error"))
    assert result.returncode == 3, result.stderr
    assert "UNAVAILABLE" in result.stderr


async def test_config_diff_shows_what_serving_a_file_would_change(start_sidecar, tmp_path):
    from admin.ctl import run as ctl_run

    path = tmp_path / "sidecar.json"

    def write(prefix: str) -> None:
        path.write_text(json.dumps({
            "listener": {"address": "127.0.0.1:0"},
            "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
            "clusters": [{"name": "app", "endpoints": [{"url": "http://127.0.0.1:1"}]}],
            "routes": [{"prefix": prefix, "cluster": "app"}]}))

    write("/v1")
    sidecar = await start_sidecar({}, path=str(path))
    target = f"127.0.0.1:{sidecar.ports['admin_grpc']}"

    async def ctl(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(ctl_run, ["--target", target, *argv], out, err)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = await ctl("config", "diff", str(path), "--exit-code")
    assert code == 0
    assert out.startswith("no changes:")

    write("/v2")
    code, out, _ = await ctl("config", "diff", str(path), "--exit-code")
    assert code == 1
    assert '-      "prefix": "/v1",' in out and '+      "prefix": "/v2",' in out
    assert out.startswith("--- serving (version ")

    code, out, _ = await ctl("-o", "json", "config", "diff", str(path))
    assert code == 0
    report = json.loads(out)
    assert report["changed"] is True and report["serving_version"] != report["file_version"]

    path.write_text('{"routes": [{"cluster": "nope"}]}')
    code, _, err = await ctl("config", "diff", str(path))
    assert code == 1
    assert f"{path}: routes[0].cluster: unknown cluster 'nope'" in err


# ---------------------------------------------------------------- update, breakers, health, route

WIRED_CONFIG = {
    "clusters": [*SAMPLE_CONFIG["clusters"],
                 {"name": "checked", "health_check": {"path": "/healthz"},
                  "endpoints": [{"url": "http://127.0.0.1:8099", "id": "c1"}]}],
    "routes": [*SAMPLE_CONFIG["routes"],
               {"name": "reports", "prefix": "/reports", "cluster": "users",
                "methods": ["POST"], "prefix_rewrite": "/v2/reports"}],
}


@pytest.fixture
async def wired(registry: Registry) -> AsyncIterator[str]:
    """A server with a health checker and a route table, as the sidecar wires them."""
    config = parse_config(WIRED_CONFIG)
    load_config(registry, WIRED_CONFIG, source="/etc/sidecar.jsonnet")
    routes = RouteTable(config.routes, None, registry.clusters.__contains__)

    async def check_health(cluster: str, endpoint_id: str) -> CheckResult:
        host = registry.endpoint(cluster, endpoint_id).host
        registry.clusters[cluster].hosts.on_check(host, False, status=None, latency=1.0,
                                                  error="connection refused")
        assert host.health is not None
        return host.health.last_results()[0]

    def resolve(method: str, host: str, path: str) -> RouteMatch:
        return routes.match(host, method, path)

    async with serve(registry, lambda: CONFIG_JSON, check_health=check_health,
                     resolve=resolve) as (_, address):
        yield address


async def test_endpoints_update(target: str, registry: Registry) -> None:
    code, out, err = await sidecarctl("--target", target, "endpoints", "update", "users", "u2",
                                      "--weight", "5", "--status", "draining",
                                      "--label", "tier=gold", "--reason", "rolling restart")
    assert (code, err) == (0, "")
    assert out == "updated users/u2 weight=5 DRAINING labels=tier=gold\n"
    info = registry.get("users", "u2")
    assert (info.weight, info.status, dict(info.labels)) == (5, EndpointStatus.DRAINING,
                                                             {"tier": "gold"})

    # Only what is given changes: --clear-labels leaves weight and status alone.
    code, out, _ = await sidecarctl("--target", target, "-o", "json", "endpoints", "update",
                                    "users", "u2", "--clear-labels")
    data = json.loads(out)
    assert code == 0
    assert (data["weight"], data["status"], data["labels"]) == (5, "ENDPOINT_STATUS_DRAINING",
                                                                {})
    assert data["breakerState"] == "BREAKER_STATE_CLOSED"

    code, out, _ = await sidecarctl("--target", target, "endpoints", "update", "users", "u2",
                                    "--status", "active")
    assert (code, out) == (0, "updated users/u2 weight=5 ACTIVE labels=-\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["endpoints", "update", "users", "u2"], "nothing to update"),
    (["endpoints", "update", "users", "u2", "--label", "a=b", "--clear-labels"],
     "not allowed with argument"),
    (["endpoints", "update", "users", "u2", "--status", "unhealthy"], "invalid choice"),
    (["breakers", "trip", "users", "u1", "--duration", "0"], "must be greater than 0"),
    (["breakers", "trip", "users", "u1", "--duration", "soon"], "invalid duration"),
    (["breakers"], "required"),
    (["route", "resolve"], "required: PATH"),
])
async def test_new_commands_usage_errors(target: str, registry: Registry, argv: list[str],
                                         message: str) -> None:
    before = registry.list(), registry.sequence
    code, out, err = await sidecarctl("--target", target, *argv)
    assert (code, out) == (2, "")
    assert "usage: sidecarctl" in err and message in err
    assert (registry.list(), registry.sequence) == before


@pytest.mark.parametrize(("argv", "expected"), [
    (["endpoints", "update", "users", "u1", "--weight", "0"],
     "sidecarctl: INVALID_ARGUMENT: weight 0 is out of range 1-1000\n"),
    (["endpoints", "update", "users", "nope", "--weight", "2"],
     "sidecarctl: NOT_FOUND: no endpoint 'nope' in cluster 'users'\n"),
    (["breakers", "trip", "users", "nope"],
     "sidecarctl: NOT_FOUND: no endpoint 'nope' in cluster 'users'\n"),
    (["breakers", "reset", "nope", "u1"],
     "sidecarctl: NOT_FOUND: no endpoint 'u1' in cluster 'nope'\n"),
    (["health", "check", "users", "u1"], "sidecarctl: FAILED_PRECONDITION: cluster 'users' "
     "has no active health checks (its health_check is not set)\n"),
    (["route", "resolve", "/nope"], "sidecarctl: NOT_FOUND: no route matches GET /nope "
     "(host (none)): the data plane answers 404 no_route\n"),
    (["route", "resolve", "/reports"], "sidecarctl: FAILED_PRECONDITION: routes match GET "
     "/reports (host (none)) but none allows GET; allowed: POST (the data plane answers 405)\n"),
    (["route", "resolve", "reports"],
     "sidecarctl: INVALID_ARGUMENT: path must start with '/', got 'reports'\n"),
])
async def test_new_commands_server_errors_exit_1(wired: str, registry: Registry,
                                                 argv: list[str], expected: str) -> None:
    before = registry.list(), registry.sequence
    code, out, err = await sidecarctl("--target", wired, *argv)
    assert (code, out, err) == (1, "", expected)
    assert (registry.list(), registry.sequence) == before


_ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


async def test_breakers_trip_list_reset(target: str, registry: Registry) -> None:
    code, out, err = await sidecarctl("--target", target, "breakers", "trip", "users", "u1",
                                      "--duration", "30s")
    assert (code, err) == (0, "")
    assert re.fullmatch(rf"tripped users/u1: breaker OPEN until {_ISO}, status UNHEALTHY\n",
                        out)
    assert registry.endpoint("users", "u1").host.breaker.retry_after() == pytest.approx(30, abs=1)

    code, out, _ = await sidecarctl("--target", target, "breakers", "list")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["CLUSTER", "ID", "STATE", "SINCE", "HALF-OPENS", "REQUESTS",
                                "FAILURES", "REASON"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert set(rows) == {"o1", "u1", "u2"}
    assert rows["u1"][2] == "OPEN" and rows["u1"][-3:] == ["tripped", "by", "admin"]
    assert re.fullmatch(_ISO, rows["u1"][4])
    assert rows["u2"][2:3] + rows["u2"][4:] == ["CLOSED", "-", "0", "0", "-"]

    code, out, _ = await sidecarctl("--target", target, "-o", "json", "breakers", "list",
                                    "--cluster", "users")
    data = json.loads(out)
    assert [(e["id"], e["breakerState"]) for e in data["endpoints"]] == [
        ("u1", "BREAKER_STATE_OPEN"), ("u2", "BREAKER_STATE_CLOSED")]

    code, out, _ = await sidecarctl("--target", target, "breakers", "reset", "users", "u1")
    assert (code, out) == (0, "reset users/u1: breaker CLOSED, status ACTIVE\n")

    code, out, _ = await sidecarctl("--target", target, "-o", "json", "breakers", "trip",
                                    "users", "u2", "--duration", "1.5")
    data = json.loads(out)
    assert (data["breakerState"], data["breakerReason"], data["status"]) == (
        "BREAKER_STATE_OPEN", "tripped by admin", "ENDPOINT_STATUS_UNHEALTHY")


async def test_breakers_list_empty(target: str) -> None:
    code, out, err = await sidecarctl("--target", target, "breakers", "list", "--cluster", "x")
    assert (code, out, err) == (0, "", "no endpoints\n")


async def test_health_check(wired: str) -> None:
    code, out, err = await sidecarctl("--target", wired, "health", "check", "checked", "c1")
    assert (code, err) == (0, "")
    # Its only endpoint not healthy, the cluster is in panic mode: checks are ignored.
    assert out.splitlines() == ["check checked/c1: failed, connection refused, 1s",
                                "health: UNKNOWN", "status: ACTIVE"]

    code, out, _ = await sidecarctl("--target", wired, "-o", "json", "health", "check",
                                    "checked", "c1")
    data = json.loads(out)
    assert (data["result"]["passed"], data["result"]["statusCode"],
            data["result"]["error"], data["result"]["latency"]) == (
        False, 0, "connection refused", "1s")
    assert data["endpoint"]["health"] == "HEALTH_STATUS_UNKNOWN"
    assert len(data["endpoint"]["healthCheckResults"]) == 2


async def test_route_resolve(wired: str, registry: Registry) -> None:
    registry.clusters["users"].hosts.trip(registry.endpoint("users", "u1").host,
                                          "5 consecutive connect failures", 60.0)
    code, out, err = await sidecarctl("--target", wired, "route", "resolve", "--host",
                                      "api.example.com", "/users/7?full=1")
    assert (code, err) == (0, "")
    head, table = out.split("\n\n")
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in head.splitlines())}
    assert fields == {"route": "/users", "cluster": "users", "prefix": "/users",
                      "upstream path": "/users/7?full=1",
                      "endpoint": "u2 http://127.0.0.1:8082",
                      "why": "the only usable endpoint (round_robin)", "panic": "no"}
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "URL", "WEIGHT", "USABLE", "BREAKER", "HEALTH", "ACTIVE",
                                "REASON"]
    assert lines[1].split()[:7] == ["u1", "http://127.0.0.1:8081", "1", "no", "OPEN", "-", "0"]
    assert "breaker open: 5 consecutive connect failures; half-opens in" in lines[1]
    assert lines[2].split() == ["u2", "http://127.0.0.1:8082", "1", "yes", "CLOSED", "-", "0",
                                "-"]

    # The method is upper-cased, as HTTP clients send it.
    code, out, _ = await sidecarctl("--target", wired, "-o", "json", "route", "resolve",
                                    "--method", "post", "/reports/q3")
    data = json.loads(out)
    assert code == 0
    assert (data["route"], data["cluster"], data["upstreamPath"]) == (
        "reports", "users", "/v2/reports/q3")
    assert [(c["endpoint"]["id"], c["usable"]) for c in data["candidates"]] == [
        ("u1", False), ("u2", True)]
    assert data["endpoint"]["id"] == "u2" and data["panic"] is False

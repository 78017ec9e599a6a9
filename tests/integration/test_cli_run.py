"""`sidecar run` as a real process: signals, reloads, the demo, quick mode."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.cli import build_parser, main, run_from_args
from sidecar.compiled import state as compiled_state

from .conftest import Gate, url_of

EPHEMERAL = ["--listen", "127.0.0.1:0", "--admin-grpc", "127.0.0.1:0",
             "--admin-http", "127.0.0.1:0"]


class SidecarProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ports: dict[str, int] = {}
        self.stderr: list[bytes] = []  # every line read so far

    async def log_line(self, message: str, timeout: float = 15) -> dict[str, Any]:
        """Read stderr until a JSON log line with this message."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stderr.readline()
                self.stderr.append(line)
                if not line:
                    raise AssertionError(f"process ended before logging {message!r}")
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("message") == message:
                    return entry

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['listener']}"


@pytest.fixture
async def run_sidecar() -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> SidecarProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "run", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        procs.append(proc)
        sidecar = SidecarProcess(proc)
        serving = await sidecar.log_line("sidecar serving")
        sidecar.ports = {k: serving[k] for k in ("listener", "admin_grpc", "admin_http")}
        if env is None:  # the same files and environment as this process: the same build
            assert serving["data_path"] == compiled_state()
        return sidecar

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def write_config(path: Path, cluster_url: str, prefix: str = "/") -> None:
    path.write_text(json.dumps({
        "listener": {"address": "127.0.0.1:0"},
        "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
        "clusters": [{"name": "app", "endpoints": [{"url": cluster_url}]}],
        "routes": [{"prefix": prefix, "cluster": "app"}]}))


async def test_sighup_reloads_and_a_bad_file_keeps_the_serving_config(
        start_upstream, run_sidecar, client, tmp_path):
    server, _ = await start_upstream()
    path = tmp_path / "sidecar.json"
    write_config(path, url_of(server), prefix="/v1")
    sidecar = await run_sidecar("--config", str(path), "--no-watch")
    async with client.get(sidecar.url + "/v2/x") as resp:
        assert resp.status == 404

    write_config(path, url_of(server), prefix="/v2")
    sidecar.proc.send_signal(signal.SIGHUP)
    loaded = await sidecar.log_line("config loaded")
    assert loaded["reason"] == "SIGHUP"
    async with client.get(sidecar.url + "/v2/x") as resp:
        assert resp.status == 200

    path.write_text('{"clusters": [{"name": "app", "endpoints": [{"url": "ftp://x"}]}]}')
    sidecar.proc.send_signal(signal.SIGHUP)
    rejected = await sidecar.log_line("config rejected, keeping the serving config")
    assert rejected["source"] == str(path)
    assert any("clusters[0].endpoints[0].url" in issue for issue in rejected["issues"])
    async with client.get(sidecar.url + "/v2/x") as resp:
        assert resp.status == 200


async def test_sigterm_drains_in_flight_requests_then_exits_zero(start_upstream, run_sidecar,
                                                                 client):
    gate = Gate("drained")
    server, _ = await start_upstream(gate.app())
    sidecar = await run_sidecar("--upstream", url_of(server), *EPHEMERAL)

    async def call() -> tuple[int, str]:
        async with client.get(sidecar.url + "/") as resp:
            return resp.status, await resp.text()

    task = asyncio.ensure_future(call())
    await asyncio.wait_for(gate.arrived.wait(), 10)
    sidecar.proc.send_signal(signal.SIGTERM)
    await sidecar.log_line("draining")
    async with aiohttp.ClientSession() as other:  # /ready says so while draining
        async with other.get(f"http://127.0.0.1:{sidecar.ports['admin_http']}/ready") as resp:
            assert resp.status == 503
    gate.release.set()
    assert await asyncio.wait_for(task, 10) == (200, "drained")
    assert await asyncio.wait_for(sidecar.proc.wait(), 15) == 0


async def test_embedded_demo_answers_through_the_sidecar(run_sidecar, client):
    sidecar = await run_sidecar(*EPHEMERAL)
    async with client.get(sidecar.url + "/api/users?id=7") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["service"] == "demo-backend"
    assert body["path"] == "/v1/users?id=7"
    assert body["headers"]["Via"] == "1.1 sidecar"

    # Over aiohttp's default 1 MiB: the demo's own limit must not answer 413.
    size = 3 * 1024 * 1024
    async with client.post(sidecar.url + "/upload", data=io.BytesIO(b"x" * size)) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_bytes"] == size


async def test_bad_config_file_exits_1_naming_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"routes": [{"prefix": "/", "cluster": "missing"}]}')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", "--config", str(path), *EPHEMERAL,
        stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"{path}: routes[0].cluster: unknown cluster 'missing'" in stderr.decode()


async def test_second_signal_during_drain_exits_at_once(start_upstream, run_sidecar, client):
    gate = Gate()
    server, _ = await start_upstream(gate.app())
    sidecar = await run_sidecar("--upstream", url_of(server), *EPHEMERAL)

    async def call() -> None:
        try:
            async with client.get(sidecar.url + "/") as resp:
                await resp.read()
        except aiohttp.ClientError:
            pass  # cut off by the forced exit, as asked

    task = asyncio.ensure_future(call())
    await asyncio.wait_for(gate.arrived.wait(), 10)
    sidecar.proc.send_signal(signal.SIGTERM)
    await sidecar.log_line("draining")
    sidecar.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sidecar.proc.wait(), 10) == 128 + signal.SIGTERM
    gate.release.set()
    await asyncio.wait_for(task, 10)


async def test_run_flags_ext_str_timeout_and_log_level(start_upstream, run_sidecar, client,
                                                       tmp_path):
    gate = Gate()
    server, _ = await start_upstream(gate.app())
    path = tmp_path / "sidecar.jsonnet"
    path.write_text("""
        local sidecar = import 'sidecar.libsonnet';
        sidecar.config({
          clusters: [sidecar.cluster('app', [std.extVar('backend')], timeout='30s')],
          routes: [sidecar.route('/', 'app')],
        })""")
    sidecar = await run_sidecar("--config", str(path), "--ext-str", f"backend={url_of(server)}",
                                "--timeout", "0.3", "--log-level", "debug", "--no-watch",
                                *EPHEMERAL)
    async with client.get(sidecar.url + "/") as resp:  # --timeout beats the file's 30s
        assert resp.status == 504
    assert gate.arrived.is_set()
    sidecar.proc.send_signal(signal.SIGHUP)
    unchanged = await sidecar.log_line("config unchanged")  # an operator's SIGHUP is answered
    assert unchanged["level"] == "info" and unchanged["reason"] == "SIGHUP"
    gate.release.set()


# ---------------------------------------------------------------- flag mistakes


@pytest.mark.parametrize(("argv", "expected"), [
    (["--upstream", "127.0.0.1:8085"],
     "--upstream 127.0.0.1:8085: expected a URL like http://127.0.0.1:8085"),
    (["--upstream", "ftp://10.0.0.1"],
     "--upstream ftp://10.0.0.1: unsupported scheme 'ftp': use http:// or https://"),
    (["--listen", "8000"], "--listen 8000: expected HOST:PORT, e.g. 127.0.0.1:8000"),
    (["--admin-grpc", "localhost"],
     "--admin-grpc localhost: expected HOST:PORT, e.g. 127.0.0.1:9901"),
    (["--admin-http", "127.0.0.1:99999"], "--admin-http 127.0.0.1:99999: port 99999 is out "
     "of range 1-65535; expected HOST:PORT, e.g. 127.0.0.1:9902"),
    (["--timeout", "-5"], "--timeout -5: expected a positive number of seconds"),
    (["--timeout", "soon"], "--timeout soon: expected a positive number of seconds"),
    (["--timeout", "0"], "--timeout 0: expected a positive number of seconds"),
    # --upstream is quick mode, instead of a file: refused, not silently ignored.
    (["--config", "sidecar.json", "--upstream", "http://127.0.0.1:8085"],
     "argument --upstream: not allowed with argument --config"),
])
def test_flag_mistakes_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str],
                                              argv: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", *argv, "--no-watch"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sidecar run ")
    assert err.splitlines()[-1].startswith(f"sidecar run: error: {expected}")


def test_flag_mistakes_are_checked_by_run_from_args_too(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["run", "--listen", "8000"])
    assert run_from_args(args) == 2
    assert capsys.readouterr().err == (
        "sidecar run: error: --listen 8000: expected HOST:PORT, e.g. 127.0.0.1:8000\n")


@pytest.mark.parametrize("argv", [["--frobnicate"], ["--frobnicate", "run"],
                                  ["run", "--frobnicate"], ["config", "--frobnicate"]])
def test_unknown_argument_is_named(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Not "the following arguments are required: COMMAND"."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "sidecar: error: unrecognized arguments: --frobnicate")


def test_a_missing_command_is_still_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["config"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "sidecar config: error: the following arguments are required: ACTION")


async def test_bad_upstream_flag_exits_2_before_loading_anything() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", "--upstream", "127.0.0.1:8085", *EPHEMERAL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out) == (2, b"")
    assert err.decode().splitlines()[-1] == (
        "sidecar run: error: --upstream 127.0.0.1:8085: expected a URL like "
        "http://127.0.0.1:8085")


# ---------------------------------------------------------------- log levels


def _loggers(lines: list[bytes]) -> list[str]:
    """The logger of each JSON line; "<not json>" for anything else (gRPC's C core)."""
    names = []
    for line in lines:
        if line.strip():
            try:
                names.append(json.loads(line)["logger"])
            except ValueError:
                names.append("<not json>")
    return names


@pytest.mark.parametrize("library_level", [None, "debug"])
async def test_log_level_debug_is_the_sidecars_not_its_libraries(
        start_upstream, run_sidecar, library_level):
    server, _ = await start_upstream()
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRPC_VERBOSITY", "GRPC_TRACE", "SIDECAR_LIBRARY_LOG_LEVEL")}
    if library_level:
        env["SIDECAR_LIBRARY_LOG_LEVEL"] = library_level
    sidecar = await run_sidecar("--upstream", url_of(server), "--log-level", "debug",
                                *EPHEMERAL, env=env)
    # Its own session, closed before SIGTERM: no idle keep-alive connection to wait for.
    async with aiohttp.ClientSession() as client:
        async with client.get(sidecar.url + "/") as resp:  # the data plane, and aiohttp
            assert resp.status == 200
        async with client.get(f"http://127.0.0.1:{sidecar.ports['admin_http']}/ready") as resp:
            assert resp.status == 200
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.stderr is not None
    rest = await asyncio.wait_for(sidecar.proc.stderr.read(), 15)
    assert await asyncio.wait_for(sidecar.proc.wait(), 15) == 0
    loggers = _loggers(sidecar.stderr + rest.splitlines())
    others = sorted({name for name in loggers if name.split(".")[0] not in ("sidecar", "admin")})
    if library_level is None:
        assert others == []  # grpc logs a dozen debug lines at startup alone
    else:
        assert any(name.startswith("grpc") for name in others)  # asked for: shown

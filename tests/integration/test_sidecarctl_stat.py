"""`sidecarctl stat` against a real sidecar that has served real requests.

One-shot commands run in-process (`ctl.run` in a thread, as in test_sidecarctl.py);
`--watch` runs as a real subprocess stopped by SIGINT, once it has printed two tables
(it prints each as it is drawn: no sleeping in the test).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import sys
from typing import Any

import aiohttp
import pytest

from sidecar.app import Sidecar

from .conftest import base_url, url_of
from .test_sidecarctl import (
    ROOT,
    TIMEOUT,
    finish,
    readline,
    sidecarctl,
    sigint_not_ignored,
    spawn,
)

REQUESTS = 7


@pytest.fixture
async def sidecar(start_upstream: Any, start_sidecar: Any,
                  client: aiohttp.ClientSession) -> Sidecar:
    upstream, _ = await start_upstream()
    started: Sidecar = await start_sidecar({
        "clusters": [{"name": "users", "endpoints": [{"url": url_of(upstream), "id": "u1"}]},
                     {"name": "orders", "endpoints": [{"url": url_of(upstream), "id": "o1"}]}],
        "routes": [{"prefix": "/orders", "cluster": "orders", "name": "orders_api"},
                   {"prefix": "/", "cluster": "users", "name": "users_api",
                    "retry": {"enabled": False}}],
    })
    for i in range(REQUESTS):
        path = "/status/500" if i == 0 else f"/hello/{i}"
        async with client.get(base_url(started) + path) as response:
            assert response.status == (500 if i == 0 else 200)
    return started


@pytest.fixture
def target(sidecar: Sidecar) -> str:
    return f"127.0.0.1:{sidecar.ports['admin_grpc']}"


async def test_routes_table_is_the_default(target: str) -> None:
    code, out, err = await sidecarctl("--target", target, "stat")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["ROUTE", "CLUSTER", "SUCCESS", "RPS", "LATENCY_P50",
                              "LATENCY_P90", "LATENCY_P99", "REQUESTS", "RETRIES"]
    assert [row.split()[:2] for row in rows] == [["orders_api", "orders"],
                                                 ["users_api", "users"]]
    orders, users = (row.split() for row in rows)
    assert orders[2:] == ["-", "0.0", "-", "-", "-", "0", "0"]  # idle: listed, no figures
    assert users[2] == f"{(REQUESTS - 1) / REQUESTS * 100:.2f}%"
    assert all(cell.endswith("ms") for cell in users[4:7])
    assert users[7:] == [str(REQUESTS), "0"]
    # Aligned: every row's second column starts at the same place.
    assert len({len(re.match(r"\S+\s+", line).group()) for line in out.splitlines()}) == 1  # type: ignore[union-attr]


async def test_clusters_and_endpoints_show_trips(target: str) -> None:
    code, out, _ = await sidecarctl("--target", target, "stat", "clusters", "-w", "10m")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["CLUSTER", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P90",
                              "LATENCY_P99", "REQUESTS", "RETRIES", "TRIPS"]
    assert [row.split()[0] for row in rows] == ["orders", "users"]
    assert rows[1].split()[-3:] == [str(REQUESTS), "0", "0"]

    code, out, _ = await sidecarctl("--target", target, "breakers", "trip", "users", "u1")
    assert code == 0
    code, out, _ = await sidecarctl("--target", target, "stat", "endpoints", "-w", "90s",
                                    "--cluster", "users")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:2] == ["ENDPOINT", "CLUSTER"] and header.split()[-1] == "TRIPS"
    assert row.split()[:2] == ["u1", "users"]
    assert row.split()[-3:] == [str(REQUESTS), "0", "1"]


async def test_json_for_scripts(target: str) -> None:
    code, out, err = await sidecarctl("--target", target, "-o", "json", "stat", "routes",
                                      "-w", "15s", "--cluster", "users")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["window"] == "20s"  # rounded up to whole 10 s slots
    (users,) = data["routes"]
    assert users["name"] == "users_api" and int(users["requests"]) == REQUESTS
    assert users["successRate"] == pytest.approx((REQUESTS - 1) / REQUESTS)
    assert data["clusters"] == [] and data["endpoints"] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["stat", "-w", "11m"], "INVALID_ARGUMENT: window must be"),
])
async def test_a_bad_window_exits_1(target: str, argv: list[str], message: str) -> None:
    code, out, err = await sidecarctl("--target", target, *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"sidecarctl: {message}")


@pytest.mark.parametrize("argv", [["stat", "pods"], ["stat", "-w", "0"], ["stat", "-w", "x"],
                                  ["stat", "--watch", "--interval", "0"]])
async def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, _, err = await sidecarctl(*argv)
    assert code == 2 and "usage:" in err


async def test_watch_prints_tables_until_ctrl_c(target: str) -> None:
    proc = await spawn("--target", target, "stat", "--watch", "--interval", "0.05")
    try:
        # Not a terminal: successive tables separated by a blank line, no ANSI.
        first = await readline(proc)
        assert first.startswith("routes over the last 1m at ") and "\x1b" not in first
        assert (await readline(proc)).split()[0] == "ROUTE"
        lines = [await readline(proc) for _ in range(3)]  # two rows, then the blank line
        assert lines[2] == "\n"
        assert (await readline(proc)).startswith("routes over the last 1m at ")
        proc.send_signal(signal.SIGINT)
    finally:
        code, out, err = await finish(proc)
    assert (code, err) == (0, "")


async def test_watch_json_prints_one_document_a_line(target: str) -> None:
    proc = await spawn("--target", target, "-o", "json", "stat", "clusters", "--watch",
                       "--interval", "0.05")
    try:
        documents = [json.loads(await readline(proc)) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
    finally:
        code, _, err = await finish(proc)
    assert (code, err) == (0, "")
    for document in documents:
        assert [c["name"] for c in document["clusters"]] == ["orders", "users"]


async def test_watch_on_a_terminal_redraws_in_place(target: str) -> None:
    """On a TTY each refresh clears the screen (ANSI) and draws the table at the top."""
    controller, terminal = pty.openpty()
    env = dict(os.environ, PYTHONWARNINGS="error", PYTHONUNBUFFERED="1")
    try:
        with sigint_not_ignored():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "admin", "--target", target, "stat", "clusters",
                "--watch", "--interval", "0.05", cwd=ROOT, env=env, stdout=terminal,
                stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(terminal)
    clear = b"\x1b[H\x1b[2J"
    seen = b""
    try:
        async with asyncio.timeout(TIMEOUT):
            while seen.count(clear) < 3:
                seen += await asyncio.to_thread(os.read, controller, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        err = await asyncio.wait_for(proc.stderr.read(), TIMEOUT)
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(controller)
    assert (code, err) == (0, b"")
    screens = seen.split(clear)[1:3]  # two whole screens
    for screen in screens:
        lines = screen.decode().splitlines()
        assert lines[0].startswith("clusters over the last 1m at ")
        assert lines[1].split()[0] == "CLUSTER"
        assert [line.split()[0] for line in lines[2:4]] == ["orders", "users"]

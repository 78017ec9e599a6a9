"""A real sidecar whose state file is corrupt: it starts and serves, the file is
renamed aside and reported (log, STATE_FILE_CORRUPT event), and registrations are
saved to a fresh state file."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar
from sidecar.events import EventKind
from sidecar.reload import ConfigSource

from .conftest import LOOPBACK_ADDRESSES, Pulse, merge


async def test_corrupt_state_file_is_set_aside_and_the_sidecar_serves(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "endpoints": [{"cluster": "app", "url": ')  # truncated
    source = ConfigSource(data=merge(LOOPBACK_ADDRESSES, {
        "admin": {"state_file": str(state)},
        "clusters": [{"name": "app", "endpoints": [{"url": "http://127.0.0.1:9"}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]}))
    sidecar = Sidecar(source, source.load())
    pulse = Pulse().follow(sidecar)
    try:
        await sidecar.start()
        assert sidecar.state == "ready"
        [event] = pulse.since(0, EventKind.STATE_FILE_CORRUPT)
        assert event.source == str(state) and ".corrupt-" in event.moved_to
        assert Path(event.moved_to).read_text().endswith('"url": ')
        assert "state file unreadable, moved aside" in caplog.text
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
            stub = api_grpc.AdminServiceStub(channel)
            await stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=res.Endpoint(
                cluster="app", url="http://127.0.0.1:10", id="new")))
        saved = json.loads(state.read_text())["endpoints"]
        assert [e["id"] for e in saved] == ["new"]
    finally:
        pulse.close()
        await sidecar.stop(drain_timeout=1.0)

"""What the status page tests share: a sidecar config, tokens, and an SSE reader."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar


def page_config(*urls: str) -> dict[str, Any]:
    """One cluster "users" with endpoints u1, u2... at `urls`, and two routes."""
    return {
        "clusters": [{"name": "users", "endpoints": [
            {"url": url, "id": f"u{i}"} for i, url in enumerate(urls, 1)]}],
        "routes": [{"name": "users", "prefix": "/users", "cluster": "users"},
                   {"name": "all", "prefix": "/", "cluster": "users"}],
    }


@dataclass(frozen=True)
class Tokens:
    read: str
    admin: str

    def auth_config(self, directory: Path) -> dict[str, Any]:
        """admin.auth with a "viewer" (read) and an "ops" (admin) token file."""
        (directory / "read.token").write_text(self.read + "\n")
        (directory / "admin.token").write_text(self.admin + "\n")
        return {"tokens": [
            {"name": "viewer", "token_file": str(directory / "read.token"), "role": "read"},
            {"name": "ops", "token_file": str(directory / "admin.token"), "role": "admin"}]}


def new_tokens() -> Tokens:
    return Tokens(read=secrets.token_urlsafe(24), admin=secrets.token_urlsafe(24))


def admin_url(sidecar: Sidecar, path: str = "/") -> str:
    return f"http://127.0.0.1:{sidecar.ports['admin_http']}{path}"


def grpc_stub(channel: grpc.aio.Channel) -> api_grpc.AdminServiceStub:
    return api_grpc.AdminServiceStub(channel)


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


async def register(stub: api_grpc.AdminServiceStub, cluster: str, url: str, endpoint_id: str,
                   token: str | None = None) -> res.Endpoint:
    response = await stub.RegisterEndpoint(
        api.RegisterEndpointRequest(endpoint=res.Endpoint(cluster=cluster, url=url,
                                                          id=endpoint_id)),
        metadata=bearer(token), timeout=5)
    return response.endpoint


@dataclass(frozen=True)
class Frame:
    """One server-sent event."""

    id: str
    event: str
    data: dict[str, Any]


async def read_frame(response: aiohttp.ClientResponse) -> Frame:
    """The next event of an SSE stream; comments (heartbeats) and `retry:` are skipped."""
    fields: dict[str, str] = {}
    while True:
        raw = await response.content.readline()
        if not raw:
            raise EOFError("the stream ended")
        line = raw.decode().rstrip("\n")
        if line == "":
            if "data" in fields:
                return Frame(fields.get("id", ""), fields.get("event", "message"),
                             json.loads(fields["data"]))
            fields.clear()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")

"""https:// endpoints: verified against a CA file, with SNI, or (for tests) not at all."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestServer

from sidecar.errors import ConfigError
from sidecar.reload import ConfigSource

from .conftest import LOOPBACK_ADDRESSES, Seen, base_url, echo_app, merge


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[TestServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream.test").configure_cert(context)
    server = TestServer(echo_app(Seen(), "tls"), host="127.0.0.1")
    await server.start_server(ssl=context)
    yield server
    await server.close()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def config(server: TestServer, **tls: Any) -> dict[str, Any]:
    return {"clusters": [{"name": "secure", "tls": tls,
                          "endpoints": [{"url": f"https://127.0.0.1:{server.port}"}]}],
            "routes": [{"prefix": "/", "cluster": "secure"}]}


async def status_and_code(client: Any, url: str) -> tuple[int, str | None]:
    async with client.get(url) as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("code")


async def test_verified_against_ca_file_with_server_name(tls_upstream, ca_file, start_sidecar,
                                                         client):
    sidecar = await start_sidecar(config(tls_upstream, ca_file=ca_file,
                                         server_name="upstream.test"))
    async with client.get(base_url(sidecar) + "/hello") as resp:
        assert resp.status == 200
        assert (await resp.json())["server"] == "tls"


async def test_certificate_not_matching_the_address_is_refused(tls_upstream, ca_file,
                                                               start_sidecar, client):
    sidecar = await start_sidecar(config(tls_upstream, ca_file=ca_file))  # name: 127.0.0.1
    assert await status_and_code(client, base_url(sidecar) + "/") == (
        502, "upstream_connect_error")


async def test_unknown_ca_is_refused(tls_upstream, start_sidecar, client):
    sidecar = await start_sidecar(config(tls_upstream, server_name="upstream.test"))
    assert await status_and_code(client, base_url(sidecar) + "/") == (
        502, "upstream_connect_error")


async def test_verify_false_accepts_any_certificate(tls_upstream, start_sidecar, client):
    sidecar = await start_sidecar(config(tls_upstream, verify=False))
    assert await status_and_code(client, base_url(sidecar) + "/") == (200, None)


async def test_unreadable_ca_file_is_a_config_error_with_its_path(tmp_path):
    data = merge(LOOPBACK_ADDRESSES, {
        "clusters": [{"name": "secure", "tls": {"ca_file": str(tmp_path / "missing.pem")},
                      "endpoints": [{"url": "https://127.0.0.1:1"}]}]})
    with pytest.raises(ConfigError) as info:
        ConfigSource(data=data).load()
    assert [issue.path for issue in info.value.issues] == ["clusters[0].tls.ca_file"]


async def test_reload_with_new_tls_settings_uses_new_connections(tls_upstream, ca_file,
                                                                 start_sidecar, client,
                                                                 tmp_path):
    path = tmp_path / "sidecar.json"

    def write(**tls: Any) -> None:
        path.write_text(json.dumps(merge(LOOPBACK_ADDRESSES, config(tls_upstream, **tls))))

    write(verify=False)
    sidecar = await start_sidecar({}, path=str(path))
    assert await status_and_code(client, base_url(sidecar) + "/") == (200, None)
    write(ca_file=ca_file)  # verified now, and 127.0.0.1 is not the certificate's name
    await sidecar.reload("test")
    assert await status_and_code(client, base_url(sidecar) + "/") == (
        502, "upstream_connect_error")

"""The admin plane's configuration: sidecar.libsonnet's admin helpers write what the
models default to, and the exposure rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.admin import (
    AdminAuthConfig,
    AdminConfig,
    AdminJwtConfig,
    AdminTLSConfig,
    AdminTokenConfig,
    exposure_issue,
    is_loopback_host,
)
from sidecar.config.loader import render
from sidecar.config.model import parse_config


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("lib") / "admin.jsonnet"
    path.write_text("""\
local sidecar = import 'sidecar.libsonnet';
{
  admin: sidecar.admin(),
  token: sidecar.adminToken('ops', token_file='/run/secrets/ops'),
  jwt: sidecar.adminJwt('https://issuer', 'sidecar', key_file='/etc/jwt.pem'),
  tls: sidecar.adminTls('/etc/cert.pem', '/etc/key.pem'),
  auth: sidecar.adminAuth(tokens=[sidecar.adminToken('ops', token_env='OPS_TOKEN')]),
  secured: sidecar.admin(grpc_address='0.0.0.0:9901',
                         tls=sidecar.adminTls('/c', '/k', client_ca_file='/ca'),
                         auth=sidecar.adminAuth(client_cert_role='admin')),
}
""")
    return dict(json.loads(render(str(path))))


def non_empty(model: type[Any]) -> set[str]:
    return {name for name, info in model.model_fields.items()
            if info.is_required() or info.get_default(call_default_factory=True)
            not in (None, {})}


def test_helpers_write_the_model_defaults(library: dict[str, Any]) -> None:
    assert AdminConfig.model_validate(library["admin"]) == AdminConfig()
    assert AdminTokenConfig.model_validate(library["token"]) == AdminTokenConfig(
        name="ops", token_file="/run/secrets/ops")
    assert AdminJwtConfig.model_validate(library["jwt"]) == AdminJwtConfig(
        issuer="https://issuer", audience="sidecar", key_file="/etc/jwt.pem")
    assert AdminTLSConfig.model_validate(library["tls"]) == AdminTLSConfig(
        cert_file="/etc/cert.pem", key_file="/etc/key.pem")
    for key, model in (("admin", AdminConfig), ("token", AdminTokenConfig),
                       ("jwt", AdminJwtConfig), ("tls", AdminTLSConfig),
                       ("auth", AdminAuthConfig)):
        missing = non_empty(model) - set(library[key])
        assert not missing, f"sidecar.libsonnet does not write {model.__name__}.{missing}"
    secured = parse_config({"admin": library["secured"]}).admin
    assert secured.auth is not None and secured.auth.client_cert_role == "admin"


def test_loopback_hosts() -> None:
    assert all(map(is_loopback_host, ["localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))


def test_exposure_rule() -> None:
    tls = AdminTLSConfig(cert_file="c", key_file="k")
    mtls = AdminTLSConfig(cert_file="c", key_file="k", client_ca_file="ca")
    auth = AdminAuthConfig(tokens=(AdminTokenConfig(name="t", token_env="T"),))
    assert exposure_issue("127.0.0.1:9901", None, None) is None
    assert exposure_issue("unix:/run/admin.sock", None, None) is None
    assert exposure_issue("0.0.0.0:9901", tls, auth) is None
    assert exposure_issue("0.0.0.0:9901", mtls, None) is None
    assert "add admin.tls" in (exposure_issue("0.0.0.0:9901", None, auth) or "")
    assert "add admin.auth" in (exposure_issue("10.0.0.1:9901", tls, None) or "")


def test_unix_addresses(tmp_path: Path) -> None:
    assert parse_config({"admin": {"grpc_address": "unix:./admin.sock"}})
    for bad in ("unix:", "unix:relative", "unix:/dir/"):
        with pytest.raises(ValueError, match="grpc_address"):
            parse_config({"admin": {"grpc_address": bad}})

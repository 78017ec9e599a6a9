"""Pure pieces of the admin plane's security: bearer parsing, the role table,
identities from tokens, the loop check and audit redaction."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from admin.audit import redact
from admin.auth import Authenticator, AuthError, Identity, Role, bearer_token, required_role
from admin.convert import loops_back
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.config.admin import AdminAuthConfig

TOKEN = "t0ken-0123456789abcdef"


def test_bearer_token_parsing() -> None:
    assert bearer_token(()) is None
    assert bearer_token((("authorization", f"Bearer {TOKEN}"),)) == TOKEN
    assert bearer_token((("authorization", f"bearer  {TOKEN} "),)) == TOKEN
    for bad in ((("authorization", "Basic abc"),), (("authorization", "Bearer"),),
                (("authorization", "Bearer a"), ("authorization", "Bearer b"))):
        with pytest.raises(AuthError) as refused:
            bearer_token(bad)
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert TOKEN not in str(refused.value)


def test_role_table_edges() -> None:
    assert required_role("/grpc.health.v1.Health/Watch") is None
    assert required_role("/sidecar.admin.v1.AdminService/WatchStatus") is Role.READ
    assert required_role("/sidecar.admin.v1.AdminService/Drain") is Role.ADMIN
    assert required_role("/other.Service/Method") is Role.ADMIN
    assert required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") \
        is Role.READ


def test_authenticator_identities(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(TOKEN)
    auth = Authenticator(AdminAuthConfig.model_validate({"tokens": [
        {"name": "ops", "token_file": str(tmp_path / "t"), "role": "admin"}]}))
    assert auth.authenticate(TOKEN, "") == Identity("ops", Role.ADMIN, "token", "")
    assert auth.authenticate(TOKEN, "CN=x").subject == "CN=x"
    for token in (None, "wrong-0123456789abcdef", TOKEN + "x"):
        with pytest.raises(AuthError) as refused:
            auth.authenticate(token, "CN=x")
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    anonymous = Authenticator(None).authenticate(None, "")
    assert (anonymous.name, anonymous.role, anonymous.method) == ("anonymous", Role.ADMIN, "none")
    assert Authenticator(None).authenticate(None, "CN=ops").method == "cert"


def test_loops_back() -> None:
    own = [("127.0.0.1", 8000), ("0.0.0.0", 9902), ("10.0.0.5", 9901)]
    hosts = frozenset({"box"})
    assert loops_back("http://127.0.0.1:8000", own) == "127.0.0.1:8000"
    assert loops_back("http://localhost:8000", own) == "127.0.0.1:8000"
    assert loops_back("http://[::1]:9902", own) == "0.0.0.0:9902"
    assert loops_back("http://box:9902", own, hosts) == "0.0.0.0:9902"
    assert loops_back("https://10.0.0.5:9901", own) == "10.0.0.5:9901"
    assert loops_back("http://127.0.0.1:9901", own) is None  # bound on 10.0.0.5 only
    assert loops_back("http://127.0.0.1:8001", own) is None
    assert loops_back("http://box:8000", own, hosts) is None
    assert loops_back("not a url", own) is None


def test_redact() -> None:
    request = api.RegisterEndpointRequest(endpoint=res.Endpoint(
        cluster="c", url="http://u:p@h:1", labels={"k": "v" * 300}))
    shown = redact(request)
    assert shown["endpoint"]["url"] == "http://***@h:1"
    assert shown["endpoint"]["labels"]["k"].endswith("...<44 more>")
    assert redact(api.ValidateConfigRequest(config_json="{}")) == {
        "config_json": "<redacted 2 characters>"}
    assert redact(None) is None

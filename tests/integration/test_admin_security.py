"""Admin plane security against real grpc.aio servers on 127.0.0.1:0: bearer tokens,
JWT (signed here with PyJWT), TLS and mTLS (trustme), roles, the audit log, bounds,
unix sockets and the refusal to listen exposed without TLS and authentication."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from admin.auth import REQUIRED_ROLES, AuthSetupError, Role, required_role
from admin.server import AdminServer
from admin.service import SERVICE_NAME
from admin.testing import SAMPLE_CONFIG, load_config, serve
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import admin_service_pb2_grpc as api_grpc
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.config.admin import AdminAuthConfig, AdminTLSConfig
from sidecar.config.model import parse_config
from sidecar.errors import ConfigError
from sidecar.registry import Registry

from .conftest import wait_until

ADMIN_TOKEN = "admin-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
ISSUER, AUDIENCE = "https://issuer.test", "sidecar-admin"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    load_config(registry, SAMPLE_CONFIG)
    return registry


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    (tmp_path / "admin.token").write_text(f"\n  {ADMIN_TOKEN}\n")
    (tmp_path / "read.token").write_text(READ_TOKEN)
    return tmp_path


def token_auth(secrets: Path, **extra: Any) -> AdminAuthConfig:
    return AdminAuthConfig.model_validate({"tokens": [
        {"name": "ops", "token_file": str(secrets / "admin.token"), "role": "admin"},
        {"name": "dashboard", "token_file": str(secrets / "read.token"), "role": "read"},
    ], **extra})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# Every AdminService RPC with a request that passes authorization; a mutating one
# whose side effect does not matter here. Without operations (no app), the
# operations RPCs answer FAILED_PRECONDITION once authorized.
CALLS: dict[str, Any] = {
    "RegisterEndpoint": api.RegisterEndpointRequest(endpoint=res.Endpoint(
        cluster="users", url="http://127.0.0.1:8099", id="new")),
    "DeregisterEndpoint": api.DeregisterEndpointRequest(cluster="users", id="nope"),
    "GetEndpoint": api.GetEndpointRequest(cluster="users", id="u1"),
    "ListEndpoints": api.ListEndpointsRequest(),
    "WatchStatus": api.WatchStatusRequest(),
    "GetConfig": api.GetConfigRequest(),
    "UpdateEndpoint": api.UpdateEndpointRequest(cluster="users", id="u1", weight=3),
    "TripBreaker": api.TripBreakerRequest(cluster="users", id="u1"),
    "ResetBreaker": api.ResetBreakerRequest(cluster="users", id="u1"),
    "CheckEndpointHealth": api.CheckEndpointHealthRequest(cluster="users", id="u1"),
    "ResolveRoute": api.ResolveRouteRequest(path="/users"),
    "ValidateConfig": api.ValidateConfigRequest(config_json="{}"),
    "ReloadConfig": api.ReloadConfigRequest(),
    "SetLogLevel": api.SetLogLevelRequest(),  # no level: INVALID_ARGUMENT, after auth
    "GetServerInfo": api.GetServerInfoRequest(),
    "Drain": api.DrainRequest(),
    "GetStats": api.GetStatsRequest(),
}


def test_every_rpc_is_in_the_role_table_and_in_these_tests() -> None:
    methods = set(api.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert set(REQUIRED_ROLES) == methods == set(CALLS)
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/sidecar.admin.v1.AdminService/SomethingNew") is Role.ADMIN
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                         open_reflection=True) is None


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The audit log's records captured so far, in order."""
    return [r for r in caplog.records if r.name == "sidecar.audit"]


async def call(channel: grpc.aio.Channel, name: str, request: Any,
               metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """One RPC; for WatchStatus, its first message. Returns the status code."""
    stub = api_grpc.AdminServiceStub(channel)
    try:
        if name == "WatchStatus":
            stream = stub.WatchStatus(request, metadata=metadata)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await getattr(stub, name)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def token_server(registry: Registry, secrets: Path
                       ) -> AsyncIterator[tuple[AdminServer, grpc.aio.Channel]]:
    async with serve(registry, auth=token_auth(secrets)) as (server, address):
        async with grpc.aio.insecure_channel(address) as channel:
            yield server, channel


# ---------------------------------------------------------------- tokens and roles


async def test_every_rpc_without_or_with_a_wrong_token_is_unauthenticated(
        token_server: tuple[AdminServer, grpc.aio.Channel]) -> None:
    _, channel = token_server
    for name, request in CALLS.items():
        assert await call(channel, name, request) is UNAUTHENTICATED, name
        assert await call(channel, name, request, bearer("x" * 27)) is UNAUTHENTICATED, name
        assert await call(channel, name, request,
                          (("authorization", f"Basic {ADMIN_TOKEN}"),)) is UNAUTHENTICATED


async def test_read_role_reads_and_is_denied_every_mutating_rpc(
        token_server: tuple[AdminServer, grpc.aio.Channel]) -> None:
    _, channel = token_server
    for name, request in CALLS.items():
        code = await call(channel, name, request, bearer(READ_TOKEN))
        if REQUIRED_ROLES[name] is Role.ADMIN:
            assert code is PERMISSION_DENIED, name
        else:  # the service's own answer (ResolveRoute has no route table here)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION), name


async def test_admin_role_passes_authorization_everywhere(
        token_server: tuple[AdminServer, grpc.aio.Channel]) -> None:
    _, channel = token_server
    for name, request in CALLS.items():
        code = await call(channel, name, request, bearer(ADMIN_TOKEN))
        # The service's own answer (e.g. NOT_FOUND, no health checks), never auth's.
        assert code not in (UNAUTHENTICATED, PERMISSION_DENIED), name
    stub = api_grpc.AdminServiceStub(channel)
    got = await stub.GetEndpoint(api.GetEndpointRequest(cluster="users", id="new"),
                                 metadata=bearer(ADMIN_TOKEN))
    assert got.endpoint.url == "http://127.0.0.1:8099"


async def test_health_stays_open_and_reflection_needs_a_token(
        token_server: tuple[AdminServer, grpc.aio.Channel]) -> None:
    _, channel = token_server
    checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert checked.status == health_pb2.HealthCheckResponse.SERVING

    async def reflect(metadata: tuple[tuple[str, str], ...]) -> Any:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        stream = stub.ServerReflectionInfo(metadata=metadata)
        await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        try:
            return await stream.read()
        finally:
            stream.cancel()

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await reflect(())
    assert denied.value.code() is UNAUTHENTICATED
    answer = await reflect(bearer(READ_TOKEN))
    assert SERVICE_NAME in {s.name for s in answer.list_services_response.service}


async def test_reflection_open_where_configured(registry: Registry, secrets: Path) -> None:
    async with serve(registry, auth=token_auth(secrets, open_reflection=True)) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
            await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            answer = await stream.read()
            stream.cancel()
            assert answer.list_services_response.service
            assert await call(channel, "GetConfig", CALLS["GetConfig"]) is UNAUTHENTICATED


async def test_token_from_the_environment_and_a_rotated_file(
        registry: Registry, secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_TEST_TOKEN", "env-token-0123456789abcdef")
    auth = AdminAuthConfig.model_validate({"tokens": [
        {"name": "env", "token_env": "SIDECAR_TEST_TOKEN", "role": "admin"},
        {"name": "file", "token_file": str(secrets / "admin.token"), "role": "admin"}]})
    async with serve(registry, auth=auth) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            ok = grpc.StatusCode.OK
            assert await call(channel, "GetConfig", CALLS["GetConfig"],
                              bearer("env-token-0123456789abcdef")) is ok
            assert await call(channel, "GetConfig", CALLS["GetConfig"],
                              bearer(ADMIN_TOKEN)) is ok
            rotated = secrets / "admin.token"
            rotated.write_text("rotated-token-0123456789abcdef-longer")
            os.utime(rotated, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
            assert await call(channel, "GetConfig", CALLS["GetConfig"],
                              bearer(ADMIN_TOKEN)) is UNAUTHENTICATED
            assert await call(channel, "GetConfig", CALLS["GetConfig"],
                              bearer("rotated-token-0123456789abcdef-longer")) is ok


def test_unusable_secrets_fail_at_start(registry: Registry, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECAR_MISSING_TOKEN", raising=False)
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "empty").write_text("  \n")
    cases = [
        ({"token_file": str(tmp_path / "absent")}, "No such file"),
        ({"token_file": str(tmp_path / "short")}, "too short"),
        ({"token_file": str(tmp_path / "empty")}, "empty"),
        ({"token_env": "SIDECAR_MISSING_TOKEN"}, "SIDECAR_MISSING_TOKEN is not set"),
    ]
    for source, message in cases:
        auth = AdminAuthConfig.model_validate({"tokens": [{"name": "t", **source}]})
        with pytest.raises(AuthSetupError, match=message):
            AdminServer(registry, lambda: "{}", auth=auth)


def test_config_rejects_tokens_in_the_text_and_incomplete_auth() -> None:
    for admin, message in [
        ({"auth": {"tokens": [{"name": "t", "token": "secret"}]}}, "Extra inputs"),
        ({"auth": {"tokens": [{"name": "t"}]}}, "exactly one of token_file and token_env"),
        ({"auth": {}}, "auth needs tokens, jwt or client_cert_role"),
        ({"auth": {"jwt": {"issuer": "i", "audience": "a", "key_file": "k",
                           "algorithms": ["HS256"]}}}, "not allowed"),
        ({"auth": {"client_cert_role": "read"}}, "needs tls.client_ca_file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config({"admin": admin})


# ---------------------------------------------------------------- JWT


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300,
            "nbf": now - 5, "role": "admin"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


async def test_jwt_with_a_key_file(registry: Registry, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    key, other = rsa_key(), rsa_key()
    (tmp_path / "jwt.pem").write_bytes(public_pem(key))
    auth = AdminAuthConfig.model_validate({"jwt": {
        "key_file": str(tmp_path / "jwt.pem"), "issuer": ISSUER, "audience": AUDIENCE,
        "leeway": "30s"}})

    def sign(**overrides: Any) -> str:
        return jwt.encode(claims(**overrides), key, algorithm="RS256")

    now = int(time.time())
    ok, mutate = grpc.StatusCode.OK, ("TripBreaker", CALLS["TripBreaker"])
    async with serve(registry, auth=auth) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            async def code(token: str, name: str = "GetConfig") -> grpc.StatusCode:
                request = dict([mutate])[name] if name == mutate[0] else CALLS[name]
                result: grpc.StatusCode = await call(channel, name, request, bearer(token))
                return result

            caplog.set_level(logging.INFO, "sidecar.audit")
            assert await code(sign(), "TripBreaker") is ok
            assert await code(sign(role="read")) is ok
            assert await code(sign(role="read"), "TripBreaker") is PERMISSION_DENIED
            assert await code(sign(role=None)) is PERMISSION_DENIED
            assert await code(sign(role=["read", "admin"]), "TripBreaker") is ok
            # exp and nbf within the leeway pass; beyond it they do not.
            assert await code(sign(exp=now - 10)) is ok
            assert await code(sign(exp=now - 120)) is UNAUTHENTICATED
            assert await code(sign(nbf=now + 10)) is ok
            assert await code(sign(nbf=now + 120)) is UNAUTHENTICATED
            assert await code(sign(exp=None)) is UNAUTHENTICATED
            assert await code(sign(iss="https://evil.test")) is UNAUTHENTICATED
            assert await code(sign(aud="someone-else")) is UNAUTHENTICATED
            assert await code(jwt.encode(claims(), other, algorithm="RS256")) is UNAUTHENTICATED
            # The public key as an HMAC secret, and no signature at all: refused.
            forged = jwt.api_jws.PyJWS()
            header = {"alg": "none", "typ": "JWT"}
            unsigned = forged.encode(json.dumps(claims()).encode(), key=None, algorithm=None,
                                     headers=header)
            assert await code(unsigned) is UNAUTHENTICATED
    audit = audit_records(caplog)
    assert {(r.who, r.auth, r.result) for r in audit} >= {  # type: ignore[attr-defined]
        ("alice", "jwt", "OK"), ("alice", "jwt", "PERMISSION_DENIED")}
    for record in caplog.records:
        assert ADMIN_TOKEN not in record.getMessage()


async def test_jwt_with_a_jwks_file_and_a_nested_role_claim(registry: Registry,
                                                             tmp_path: Path) -> None:
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    keys = []
    for kid, key in (("k1", first), ("k2", second)):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    auth = AdminAuthConfig.model_validate({"jwt": {
        "jwks_file": str(tmp_path / "jwks.json"), "issuer": ISSUER, "audience": AUDIENCE,
        "role_claim": "realm_access.roles"}})
    nested = claims(role=None, realm_access={"roles": ["read", "offline"]})
    async with serve(registry, auth=auth) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            for kid, key in (("k1", first), ("k2", second)):
                token = jwt.encode(nested, key, algorithm="ES256", headers={"kid": kid})
                assert await call(channel, "ListEndpoints", CALLS["ListEndpoints"],
                                  bearer(token)) is grpc.StatusCode.OK
                assert await call(channel, "ResetBreaker", CALLS["ResetBreaker"],
                                  bearer(token)) is PERMISSION_DENIED
            wrong_kid = jwt.encode(nested, first, algorithm="ES256", headers={"kid": "k2"})
            no_kid = jwt.encode(nested, first, algorithm="ES256")
            for token in (wrong_kid, no_kid):
                assert await call(channel, "ListEndpoints", CALLS["ListEndpoints"],
                                  bearer(token)) is UNAUTHENTICATED


# ---------------------------------------------------------------- TLS and mTLS


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        self.root = root
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        client = self.ca.issue_cert("ops@example.test", common_name="ops")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.cert_file = self._write("server.pem",
                                     b"".join(c.bytes() for c in server.cert_chain_pems))
        self.key_file = self._write("server.key", server.private_key_pem.bytes())
        self.client_cert = self._write("client.pem",
                                       b"".join(c.bytes() for c in client.cert_chain_pems))
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def tls(self, mtls: bool = False) -> AdminTLSConfig:
        return AdminTLSConfig(cert_file=self.cert_file, key_file=self.key_file,
                              client_ca_file=self.ca_file if mtls else None)

    def channel(self, address: str, client_cert: bool = False) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca_file).read_bytes(),
            private_key=Path(self.client_key).read_bytes() if client_cert else None,
            certificate_chain=Path(self.client_cert).read_bytes() if client_cert else None)
        return grpc.aio.secure_channel(address, credentials)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def test_tls_with_a_token(registry: Registry, secrets: Path, pki: Pki) -> None:
    async with serve(registry, auth=token_auth(secrets), tls=pki.tls()) as (_, address):
        async with pki.channel(address) as channel:
            assert await call(channel, "GetConfig", CALLS["GetConfig"],
                              bearer(READ_TOKEN)) is grpc.StatusCode.OK
            assert await call(channel, "GetConfig", CALLS["GetConfig"]) is UNAUTHENTICATED
        async with grpc.aio.insecure_channel(address) as plain:
            assert await call(plain, "GetConfig", CALLS["GetConfig"],
                              bearer(READ_TOKEN)) is grpc.StatusCode.UNAVAILABLE


async def test_mtls_subject_is_the_identity(registry: Registry, pki: Pki,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sidecar.audit")
    async with serve(registry, tls=pki.tls(mtls=True)) as (_, address):
        async with pki.channel(address, client_cert=True) as channel:
            assert await call(channel, "ResetBreaker",
                              CALLS["ResetBreaker"]) is grpc.StatusCode.OK
        async with pki.channel(address, client_cert=False) as anonymous:
            assert await call(anonymous, "GetConfig",
                              CALLS["GetConfig"]) is grpc.StatusCode.UNAVAILABLE
    [record] = audit_records(caplog)
    assert record.auth == "cert"  # type: ignore[attr-defined]
    assert "CN=ops" in record.who  # type: ignore[attr-defined]
    assert record.subject == record.who  # type: ignore[attr-defined]


async def test_client_cert_role_with_tokens(registry: Registry, secrets: Path,
                                            pki: Pki) -> None:
    auth = token_auth(secrets, client_cert_role="read")
    async with serve(registry, auth=auth, tls=pki.tls(mtls=True)) as (_, address):
        async with pki.channel(address, client_cert=True) as channel:
            assert await call(channel, "GetConfig", CALLS["GetConfig"]) is grpc.StatusCode.OK
            assert await call(channel, "TripBreaker", CALLS["TripBreaker"]) is PERMISSION_DENIED
            assert await call(channel, "TripBreaker", CALLS["TripBreaker"],
                              bearer(ADMIN_TOKEN)) is grpc.StatusCode.OK


# ---------------------------------------------------------------- audit


async def test_audit_line_for_mutating_calls_only(
        token_server: tuple[AdminServer, grpc.aio.Channel],
        caplog: pytest.LogCaptureFixture) -> None:
    from sidecar.observe.logs import JsonFormatter

    _, channel = token_server
    caplog.set_level(logging.INFO, "sidecar.audit")
    register = api.RegisterEndpointRequest(endpoint=res.Endpoint(
        cluster="users", url="http://user:hunter2@127.0.0.1:8077", id="aud"))
    await call(channel, "RegisterEndpoint", register, bearer(ADMIN_TOKEN))
    await call(channel, "UpdateEndpoint", CALLS["UpdateEndpoint"], bearer(ADMIN_TOKEN))
    await call(channel, "ListEndpoints", CALLS["ListEndpoints"], bearer(ADMIN_TOKEN))
    await call(channel, "TripBreaker", CALLS["TripBreaker"], bearer(READ_TOKEN))
    await call(channel, "TripBreaker", CALLS["TripBreaker"])
    await call(channel, "ValidateConfig", api.ValidateConfigRequest(
        config_json=json.dumps({"secret": "x" * 40})), bearer(ADMIN_TOKEN))
    lines = [json.loads(JsonFormatter().format(r)) for r in audit_records(caplog)]
    summary = [(line["who"], line["rpc"], line["result"]) for line in lines]
    assert summary == [("ops", "RegisterEndpoint", "INVALID_ARGUMENT"),
                       ("ops", "UpdateEndpoint", "OK"),
                       ("dashboard", "TripBreaker", "PERMISSION_DENIED"),
                       ("-", "TripBreaker", "UNAUTHENTICATED"),
                       ("ops", "ValidateConfig", "FAILED_PRECONDITION")]
    assert lines[-1]["request"] == {"config_json": "<redacted 54 characters>"}
    first = lines[0]
    assert first["logger"] == "sidecar.audit"
    assert first["request"]["endpoint"]["url"] == "http://***@127.0.0.1:8077"
    assert lines[1]["request"] == {"cluster": "users", "id": "u1", "weight": 3}
    assert lines[1]["peer"].startswith("ipv4:127.0.0.1:")
    text = "\n".join(json.dumps(line) for line in lines)
    assert "hunter2" not in text and READ_TOKEN not in text and ADMIN_TOKEN not in text


async def test_an_aborted_calls_audit_line_is_written_before_the_client_has_its_status(
        token_server: tuple[AdminServer, grpc.aio.Channel],
        caplog: pytest.LogCaptureFixture) -> None:
    # grpc.aio's abort() sends the status at once: a line written after the servicer
    # raised could come after the client saw the outcome (this test held that race).
    _, channel = token_server
    caplog.set_level(logging.INFO, "sidecar.audit")
    refused = api.RegisterEndpointRequest(endpoint=res.Endpoint(
        cluster="users", url="not a url", id="bad"))
    for done in range(1, 31):
        assert await call(channel, "RegisterEndpoint", refused,
                          bearer(ADMIN_TOKEN)) is grpc.StatusCode.INVALID_ARGUMENT
        lines = audit_records(caplog)
        assert len(lines) == done
        assert lines[-1].result == "INVALID_ARGUMENT"  # type: ignore[attr-defined]


async def test_audit_log_can_be_turned_off(registry: Registry,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sidecar.audit")
    async with serve(registry, audit_log=False) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            assert await call(channel, "ResetBreaker", CALLS["ResetBreaker"]) is \
                grpc.StatusCode.OK
    assert not audit_records(caplog)


# ---------------------------------------------------------------- bounds


async def test_max_watchers(registry: Registry) -> None:
    async with serve(registry, max_watchers=2) as (server, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = api_grpc.AdminServiceStub(channel)
            streams = [stub.WatchStatus(api.WatchStatusRequest()) for _ in range(2)]
            for stream in streams:
                assert (await stream.read()).HasField("snapshot")
            third = stub.WatchStatus(api.WatchStatusRequest())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "admin.max_watchers" in (refused.value.details() or "")
            streams[0].cancel()
            await wait_until(lambda: len(server.watch_hub.watchers) == 1)
            fourth = stub.WatchStatus(api.WatchStatusRequest())
            assert (await fourth.read()).HasField("snapshot")
            fourth.cancel()
            streams[1].cancel()


async def test_max_message_size(registry: Registry) -> None:
    async with serve(registry, max_message_bytes=64 * 1024) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            big = api.ResolveRouteRequest(path="/" + "a" * 70_000)
            assert await call(channel, "ResolveRoute", big) is \
                grpc.StatusCode.RESOURCE_EXHAUSTED
            small = await call(channel, "ResolveRoute", CALLS["ResolveRoute"])
            assert small is grpc.StatusCode.FAILED_PRECONDITION  # no route table here


async def test_registering_the_sidecars_own_address_is_refused(registry: Registry) -> None:
    own = [("127.0.0.1", 8000), ("0.0.0.0", 9902)]
    async with serve(registry, own_addresses=lambda: own) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = api_grpc.AdminServiceStub(channel)
            for url in ("http://127.0.0.1:8000", "http://localhost:8000",
                        "http://127.0.0.1:9902", f"http://{socket.gethostname()}:9902"):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.RegisterEndpoint(api.RegisterEndpointRequest(
                        endpoint=res.Endpoint(cluster="users", url=url)))
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, url
                assert "loop" in (refused.value.details() or "")
            await stub.RegisterEndpoint(api.RegisterEndpointRequest(
                endpoint=res.Endpoint(cluster="users", url="http://127.0.0.1:8001")))


# ---------------------------------------------------------------- where it listens


async def test_unix_socket_mode_0600(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    server = AdminServer(registry, lambda: "{}")
    assert await server.start(f"unix:{path}") == 0
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            assert await call(channel, "GetConfig", CALLS["GetConfig"]) is grpc.StatusCode.OK
        second = AdminServer(registry, lambda: "{}")
        with pytest.raises(OSError, match="another server is listening"):
            await second.start(f"unix:{path}")
    finally:
        await server.stop(0)


async def test_refuses_an_exposed_address_without_tls_and_auth(
        registry: Registry, secrets: Path, pki: Pki) -> None:
    for kwargs in ({}, {"tls": pki.tls()}, {"auth": token_auth(secrets)}):
        server = AdminServer(registry, lambda: "{}", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="add admin"):
            await server.start("0.0.0.0:0")
    for kwargs in ({"tls": pki.tls(), "auth": token_auth(secrets)},
                   {"tls": pki.tls(mtls=True)}):
        server = AdminServer(registry, lambda: "{}", **kwargs)  # type: ignore[arg-type]
        port = await server.start("0.0.0.0:0")
        try:
            assert port > 0
        finally:
            await server.stop(0)


def test_config_refuses_an_exposed_address_saying_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"admin": {"grpc_address": "0.0.0.0:9901"}})
    message = str(refused.value)
    assert "admin.tls { cert_file, key_file }" in message
    assert "admin.auth { tokens or jwt }" in message
    with pytest.raises(ConfigError, match="add admin.auth"):
        parse_config({"admin": {"grpc_address": "10.0.0.1:9901",
                                "tls": {"cert_file": "c", "key_file": "k"}}})
    config = parse_config({"admin": {
        "grpc_address": "[::]:9901", "tls": {"cert_file": "c", "key_file": "k"},
        "auth": {"tokens": [{"name": "t", "token_env": "T"}]}}})
    assert config.admin.max_watchers == 64 and config.admin.audit_log is True
    for local in ("127.0.0.1:9901", "[::1]:9901", "localhost:9901", "unix:/run/s.sock"):
        assert parse_config({"admin": {"grpc_address": local}}).admin.grpc_address == local


async def test_sidecar_run_refuses_to_start_exposed(tmp_path: Path) -> None:
    import sys

    path = tmp_path / "exposed.json"
    path.write_text(json.dumps({"admin": {"grpc_address": "0.0.0.0:0",
                                          "http_address": "127.0.0.1:0"},
                                "listener": {"address": "127.0.0.1:0"}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", "--config", str(path),
        stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "is not a loopback address" in stderr.decode()
    assert "add admin.tls" in stderr.decode()



# ---------------------------------------------------------------- sidecarctl


async def sidecarctl(*argv: str) -> tuple[int, str, str]:
    import io

    from admin import ctl

    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def no_ctl_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("SIDECARCTL_TOKEN", "SIDECARCTL_TOKEN_FILE", "SIDECARCTL_CA_FILE",
                 "SIDECARCTL_CERT_FILE", "SIDECARCTL_KEY_FILE", "SIDECARCTL_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_sidecarctl_token_file_and_roles(registry: Registry, secrets: Path,
                                               no_ctl_env: pytest.MonkeyPatch) -> None:
    async with serve(registry, auth=token_auth(secrets)) as (_, address):
        code, out, err = await sidecarctl("--target", address, "endpoints", "list")
        assert code == 1 and err.startswith("sidecarctl: UNAUTHENTICATED: missing credentials")
        assert ADMIN_TOKEN not in err
        code, out, err = await sidecarctl("--target", address, "--token-file",
                                          str(secrets / "read.token"), "endpoints", "list")
        assert (code, err) == (0, "") and "u1" in out
        code, out, err = await sidecarctl("--target", address, "endpoints", "register",
                                          "users", "http://127.0.0.1:8055", "--token-file",
                                          str(secrets / "read.token"))
        assert code == 1 and err.startswith("sidecarctl: PERMISSION_DENIED: 'dashboard'")
        no_ctl_env.setenv("SIDECARCTL_TOKEN_FILE", str(secrets / "admin.token"))
        code, out, err = await sidecarctl("--target", address, "endpoints", "register",
                                          "users", "http://127.0.0.1:8055")
        assert (code, err) == (0, "") and out.startswith("registered users/127.0.0.1:8055")
        no_ctl_env.delenv("SIDECARCTL_TOKEN_FILE")
        no_ctl_env.setenv("SIDECARCTL_TOKEN", READ_TOKEN)
        code, out, err = await sidecarctl("--target", address, "config", "get")
        assert (code, err) == (0, "")


async def test_sidecarctl_watch_sends_the_token(registry: Registry, secrets: Path,
                                                no_ctl_env: pytest.MonkeyPatch) -> None:
    async with serve(registry, auth=token_auth(secrets)) as (server, address):
        code, _, err = await sidecarctl("--target", address, "watch", "--count", "1")
        assert code == 1 and "UNAUTHENTICATED" in err
        watching = asyncio.ensure_future(sidecarctl(
            "--target", address, "--token-file", str(secrets / "read.token"), "watch",
            "--count", "1"))
        await wait_until(lambda: bool(server.watch_hub.watchers))
        watcher = next(iter(server.watch_hub.watchers))
        await wait_until(lambda: watcher._last_sequence >= 0)
        registry.register("users", "http://127.0.0.1:8066")
        code, out, err = await asyncio.wait_for(watching, 20)
        assert (code, err) == (0, "")
        assert "added users/127.0.0.1:8066" in out


async def test_sidecarctl_tls_and_mtls(registry: Registry, secrets: Path, pki: Pki,
                                       no_ctl_env: pytest.MonkeyPatch) -> None:
    async with serve(registry, auth=token_auth(secrets),
                     tls=pki.tls(mtls=True)) as (_, address):
        flags = ["--ca-file", pki.ca_file, "--cert-file", pki.client_cert,
                 "--key-file", pki.client_key, "--token-file", str(secrets / "admin.token")]
        code, out, err = await sidecarctl("--target", address, *flags, "breakers", "reset",
                                          "users", "u1")
        assert (code, err) == (0, "") and out.startswith("reset users/u1")
        # No client certificate: the handshake fails.
        code, _, err = await sidecarctl("--target", address, "--timeout", "3",
                                        *flags[:2], *flags[-2:], "config", "get")
        assert code == 3
        # The same through the environment, with the certificate named for localhost.
        for name, value in (("CA_FILE", pki.ca_file), ("CERT_FILE", pki.client_cert),
                            ("KEY_FILE", pki.client_key), ("TOKEN", READ_TOKEN),
                            ("SERVER_NAME", "localhost")):
            no_ctl_env.setenv(f"SIDECARCTL_{name}", value)
        code, out, err = await sidecarctl("--target", address, "config", "get")
        assert (code, err) == (0, "") and "version:" in out


async def test_sidecarctl_usage_errors(secrets: Path, no_ctl_env: pytest.MonkeyPatch) -> None:
    code, _, err = await sidecarctl("--target", "10.1.2.3:9901", "--token-file",
                                    str(secrets / "read.token"), "config", "get")
    assert code == 2 and "refusing to send a token in clear" in err
    code, _, err = await sidecarctl("--cert-file", "x.pem", "config", "get")
    assert code == 2 and "--cert-file and --key-file go together" in err
    code, _, err = await sidecarctl("--ca-file", str(secrets / "absent.pem"), "config", "get")
    assert code == 2 and "absent.pem" in err


async def test_sidecar_run_exits_naming_an_unreadable_token_file(tmp_path: Path) -> None:
    import sys

    path = tmp_path / "auth.json"
    missing = tmp_path / "ops.token"
    path.write_text(json.dumps({
        "listener": {"address": "127.0.0.1:0"},
        "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0",
                  "auth": {"tokens": [{"name": "ops", "token_file": str(missing),
                                       "role": "admin"}]}}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "run", "--config", str(path),
        stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert f"admin.auth token 'ops': token_file '{missing}'" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_the_sidecar_wires_its_admin_config(start_sidecar: Any, secrets: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sidecar.audit")
    sidecar = await start_sidecar({
        "clusters": [{"name": "users", "endpoints": [{"url": "http://127.0.0.1:9",
                                                      "id": "u1"}]}],
        "routes": [{"prefix": "/", "cluster": "users"}],
        "admin": {"max_watchers": 1, "auth": {"tokens": [
            {"name": "ops", "token_file": str(secrets / "admin.token"), "role": "admin"}]}}})
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        assert await call(channel, "GetConfig", CALLS["GetConfig"]) is UNAUTHENTICATED
        assert await call(channel, "ResetBreaker", CALLS["ResetBreaker"],
                          bearer(ADMIN_TOKEN)) is grpc.StatusCode.OK
        stub = api_grpc.AdminServiceStub(channel)
        first = stub.WatchStatus(api.WatchStatusRequest(), metadata=bearer(ADMIN_TOKEN))
        assert (await first.read()).HasField("snapshot")
        assert await call(channel, "WatchStatus", CALLS["WatchStatus"],
                          bearer(ADMIN_TOKEN)) is grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        # Its own listener is refused as an endpoint.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RegisterEndpoint(api.RegisterEndpointRequest(endpoint=res.Endpoint(
                cluster="users", url=f"http://127.0.0.1:{sidecar.ports['listener']}")),
                metadata=bearer(ADMIN_TOKEN))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [r.who for r in audit_records(caplog)] == [  # type: ignore[attr-defined]
        "ops", "ops"]

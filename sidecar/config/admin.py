"""The admin plane's configuration: addresses, authentication, TLS and bounds.

Secrets never appear in the configuration text: tokens are read from files or
environment variables named here, keys and certificates from files. The admin API
can re-route a whole service, so the model refuses a non-loopback TCP
`grpc_address` unless TLS and authentication are configured (`exposure_issue`).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sidecar.config.types import FrozenModel as _Model
from sidecar.config.types import NonNegativeDuration
from sidecar.core.addresses import parse_host_port

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_WATCHERS",
    "UNIX_PREFIX",
    "AdminAuthConfig",
    "AdminConfig",
    "AdminJwtConfig",
    "AdminTLSConfig",
    "AdminTokenConfig",
    "Role",
    "exposure_issue",
    "is_loopback_host",
]

UNIX_PREFIX = "unix:"
DEFAULT_MAX_WATCHERS = 64
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

Role = Literal["read", "admin"]


def is_loopback_host(host: str) -> bool:
    """"localhost" or a loopback IP (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _tcp_address(value: str) -> str:
    parse_host_port(value, allow_zero_port=True)
    return value


def _grpc_address(value: str) -> str:
    if value.startswith(UNIX_PREFIX):
        path = value[len(UNIX_PREFIX):]
        if not path.startswith("/") and not path.startswith("."):
            raise ValueError(f"expected unix:/absolute/path or unix:./relative/path, "
                             f"got {value!r}")
        if "\x00" in path or path.endswith("/"):
            raise ValueError(f"invalid socket path in {value!r}")
        return value
    return _tcp_address(value)


class AdminTokenConfig(_Model):
    """One bearer token: clients send `authorization: Bearer TOKEN`."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.\-@]+$",
                      description="Who holds the token: the audit log's `who` (required).")
    token_file: str | None = Field(
        None, description="File holding the token (surrounding whitespace ignored); re-read "
                          "when it changes. Give this or token_env.")
    token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the token. Give this or token_file.")
    role: Role = Field("read", description="read: the read RPCs; admin: every RPC "
                                           "(default read).")

    @model_validator(mode="after")
    def _one_source(self) -> AdminTokenConfig:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("give exactly one of token_file and token_env (the token itself "
                             "never goes in the configuration)")
        return self


class AdminJwtConfig(_Model):
    """JSON Web Tokens (RFC 7519) sent as bearer tokens, verified with PyJWT."""

    key_file: str | None = Field(
        None, description="PEM public key (RSA, EC or Ed25519) the tokens are signed with. "
                          "Give this or jwks_file.")
    jwks_file: str | None = Field(
        None, description="JSON Web Key Set file; the token header's `kid` picks the key. "
                          "Give this or key_file.")
    issuer: str = Field(min_length=1, description="Required `iss` claim value.")
    audience: str = Field(min_length=1, description="Required `aud` claim value.")
    role_claim: str = Field(
        "role", min_length=1,
        description="Claim holding the role, 'read' or 'admin' (or a list holding them: the "
                    "highest counts); dots reach into objects ('realm_access.roles'). "
                    "Default 'role'.")
    leeway: NonNegativeDuration = Field(
        30.0, description="Clock skew allowed when checking `exp` and `nbf` (default 30s).")
    algorithms: tuple[str, ...] = Field(
        ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"),
        min_length=1, description="Signature algorithms accepted (default the asymmetric "
                                  "ones; 'none' and HMAC are refused).")

    @model_validator(mode="after")
    def _one_key(self) -> AdminJwtConfig:
        if (self.key_file is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of key_file and jwks_file")
        return self

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name.lower() == "none" or name.upper().startswith("HS"):
                raise ValueError(f"algorithm {name!r} is not allowed: use a public-key "
                                 "algorithm (RS256, ES256, EdDSA...)")
        return value


class AdminAuthConfig(_Model):
    """Who may call the admin API, and with which role. Every AdminService RPC
    (WatchStatus too) needs credentials; grpc.health.v1 stays open for probes."""

    tokens: tuple[AdminTokenConfig, ...] = Field(
        (), description="Static bearer tokens, each with a name and a role (default none).")
    jwt: AdminJwtConfig | None = Field(None, description="JWT bearer tokens (default null: "
                                                         "off).")
    client_cert_role: Role | None = Field(
        None, description="Role of a caller whose client certificate (tls.client_ca_file) "
                          "verified, when it sends no token (default null: a token is "
                          "needed as well).")
    open_reflection: bool = Field(
        False, description="Serve gRPC server reflection without credentials "
                           "(default false).")

    @model_validator(mode="after")
    def _some_method(self) -> AdminAuthConfig:
        if not self.tokens and self.jwt is None and self.client_cert_role is None:
            raise ValueError("auth needs tokens, jwt or client_cert_role; remove auth to "
                             "turn authentication off")
        names = [t.name for t in self.tokens]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate token name(s): {', '.join(duplicates)}")
        return self


class AdminTLSConfig(_Model):
    """TLS for the admin gRPC server; mTLS with `client_ca_file`."""

    cert_file: str = Field(description="PEM certificate chain of the server (required).")
    key_file: str = Field(description="PEM private key of the server (required).")
    client_ca_file: str | None = Field(
        None, description="PEM CAs that sign client certificates: every client must present "
                          "one (mTLS), and its subject is the caller's identity "
                          "(default null: no client certificates).")


def exposure_issue(address: str, tls: AdminTLSConfig | None,
                   auth: AdminAuthConfig | None) -> str | None:
    """Why the admin API must not listen on `address` as configured, or None.

    Loopback addresses and unix sockets are local. Anywhere else the API needs TLS
    and authentication: tokens or JWT, or client certificates (mTLS)."""
    if address.startswith(UNIX_PREFIX):
        return None
    host = parse_host_port(address, allow_zero_port=True).host
    if is_loopback_host(host):
        return None
    authenticated = auth is not None or (tls is not None and tls.client_ca_file is not None)
    if tls is not None and authenticated:
        return None
    missing = [what for what, absent in (
        ("admin.tls { cert_file, key_file }", tls is None),
        ("admin.auth { tokens or jwt } (or admin.tls.client_ca_file for client certificates)",
         not authenticated)) if absent]
    return (f"grpc_address {address!r} is not a loopback address, and the admin API can "
            f"re-route every service: add {' and '.join(missing)}, or listen on 127.0.0.1 "
            "or a unix: socket")


class AdminConfig(_Model):
    """The admin plane: gRPC API and the HTTP port for /metrics, /live, /ready."""

    grpc_address: str = Field(
        "127.0.0.1:9901",
        description="HOST:PORT of AdminService, or unix:PATH for a Unix socket (mode 0600). "
                    "A non-loopback address needs tls and auth.")
    http_address: str = Field("127.0.0.1:9902",
                              description="HOST:PORT of /metrics, /live and /ready.")
    state_file: str | None = Field(
        None, description="File keeping endpoints registered at run time across restarts.")
    auth: AdminAuthConfig | None = Field(
        None, description="Authentication and roles (default null: every local caller is "
                          "admin).")
    tls: AdminTLSConfig | None = Field(None, description="TLS, or mTLS (default null: "
                                                         "plaintext).")
    max_watchers: int = Field(
        DEFAULT_MAX_WATCHERS, ge=1, le=10_000,
        description="WatchStatus streams open at once; more get RESOURCE_EXHAUSTED "
                    "(default 64).")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024, le=64 * 1024 * 1024,
        description="Largest request message; larger gets RESOURCE_EXHAUSTED (default 4 MiB).")
    audit_log: bool = Field(
        True, description="One JSON line per mutating call on the logger sidecar.audit: who, "
                          "what, the request, the result (default true).")

    _check_http = field_validator("http_address")(_tcp_address)
    _check_grpc = field_validator("grpc_address")(_grpc_address)

    @model_validator(mode="after")
    def _secure_when_exposed(self) -> AdminConfig:
        issue = exposure_issue(self.grpc_address, self.tls, self.auth)
        if issue is not None:
            raise ValueError(issue)
        if (self.auth is not None and self.auth.client_cert_role is not None
                and (self.tls is None or self.tls.client_ca_file is None)):
            raise ValueError("auth.client_cert_role needs tls.client_ca_file (client "
                             "certificates)")
        return self

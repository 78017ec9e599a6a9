"""Who is calling the admin API, and may they: tokens, JWT, client certificates, roles.

Theory of operation
-------------------

`REQUIRED_ROLES` is the one table from RPC to the role it needs: `read` for the
RPCs that only look, `admin` for the ones that change something (and for any
AdminService method the table does not know: fail closed). grpc.health.v1 is always
open, so probes work; server reflection needs `read` unless configured open.

`AdminInterceptor` wraps every handler. Before the servicer runs it asks the
`Authenticator` for the caller's `Identity`:

* no `admin.auth`: every caller is admin (the address is local, or TLS with client
  certificates restricts who connects); the identity is the certificate subject
  (mTLS) or "anonymous";
* a bearer token (`authorization: Bearer TOKEN`): a static token, compared with every
  configured one in constant time, or else a JWT verified with PyJWT (signature,
  `iss`, `aud`, `exp`/`nbf` with leeway; the role from the configured claim);
* no token, a verified client certificate and `client_cert_role`: that role.

No usable credentials: UNAUTHENTICATED; a role below the RPC's: PERMISSION_DENIED.
Tokens never reach a log or an error message. Secret files (token files, key file,
JWKS) are read at start-up, where a missing or empty one is an error, and re-read
whenever they change on disk, so a rotated secret takes effect without a restart (a
file that became unreadable stops matching: fail closed).

Mutating calls (those needing `admin`), allowed or not, are written to the audit
log (`admin.audit`) with the status they ended with.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

if TYPE_CHECKING:
    import jwt
# PyJWT and cryptography (about 11 MiB of RSS) are imported only where a JWT is
# configured or checked: see the `import jwt` inside the functions below.

from sidecar.config.admin import AdminAuthConfig, AdminJwtConfig, AdminTokenConfig

from .audit import AuditLog

__all__ = [
    "ADMIN_SERVICE",
    "HEALTH_SERVICE",
    "MIN_TOKEN_LENGTH",
    "REFLECTION_SERVICES",
    "REQUIRED_ROLES",
    "AdminInterceptor",
    "AuthError",
    "AuthSetupError",
    "Authenticator",
    "Identity",
    "Role",
    "bearer_token",
    "certificate_subject",
    "required_role",
]

log = logging.getLogger("admin.auth")

ADMIN_SERVICE = "sidecar.admin.v1.AdminService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection",
                       "grpc.reflection.v1.ServerReflection")
MIN_TOKEN_LENGTH = 16


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    READ = 1
    ADMIN = 2

    @classmethod
    def parse(cls, name: str) -> Role:
        return cls[name.upper()]


#: The one table: AdminService RPC -> the role it needs. Read RPCs look; admin RPCs
#: change state (CheckEndpointHealth runs a probe whose result moves health state).
REQUIRED_ROLES: Mapping[str, Role] = {
    "GetEndpoint": Role.READ,
    "ListEndpoints": Role.READ,
    "WatchStatus": Role.READ,
    "GetConfig": Role.READ,
    "ResolveRoute": Role.READ,
    "RegisterEndpoint": Role.ADMIN,
    "DeregisterEndpoint": Role.ADMIN,
    "UpdateEndpoint": Role.ADMIN,
    "TripBreaker": Role.ADMIN,
    "ResetBreaker": Role.ADMIN,
    "CheckEndpointHealth": Role.ADMIN,
    "GetServerInfo": Role.READ,
    "GetStats": Role.READ,
    # Reads a file the sidecar can read, and its issues may quote it: admin only.
    "ValidateConfig": Role.ADMIN,
    "ReloadConfig": Role.ADMIN,
    "SetLogLevel": Role.ADMIN,
    "Drain": Role.ADMIN,
}


def required_role(method: str, *, open_reflection: bool = False) -> Role | None:
    """The role `method` ("/package.Service/Method") needs; None: open to anyone."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service == HEALTH_SERVICE:
        return None
    if service in REFLECTION_SERVICES:
        return None if open_reflection else Role.READ
    if service == ADMIN_SERVICE:
        return REQUIRED_ROLES.get(name, Role.ADMIN)
    return Role.ADMIN  # unknown services: fail closed


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller.

    name: token name, JWT `sub`, certificate subject, or "anonymous" (auth off).
    method: "token", "jwt", "cert" or "none".
    subject: the client certificate's subject under mTLS, else "".
    """

    name: str
    role: Role
    method: str
    subject: str = ""


class AuthError(Exception):
    """The call is refused: UNAUTHENTICATED or PERMISSION_DENIED, with a message that
    never contains a credential."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 identity: Identity | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.identity = identity


class AuthSetupError(OSError):
    """A secret named in the configuration cannot be used (missing, empty, malformed).
    An OSError, like the TLS files' errors: the sidecar fails to start, naming it."""


# ---------------------------------------------------------------- secrets on disk

_T = TypeVar("_T")


class _Watched(Generic[_T]):
    """A file parsed once, and again whenever it changes (inode, size or mtime).

    `strict` (start-up): errors raise AuthSetupError. Later, a file that became
    unreadable or invalid yields None (fail closed), logged once per change."""

    def __init__(self, path: str, parse: Callable[[bytes], _T], what: str) -> None:
        self._path = path
        self._parse = parse
        self._what = what
        self._stamp: tuple[int, int, int] | None = None
        self._value: _T | None = None
        self._failed_stamp: tuple[int, int, int] | None = None
        self._load(strict=True)

    def _load(self, *, strict: bool) -> None:
        try:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            with open(self._path, "rb") as f:
                value = self._parse(f.read())
        except (OSError, ValueError) as exc:
            message = f"{self._what} {self._path!r}: {_reason(exc)}"
            if strict:
                raise AuthSetupError(message) from None
            self._value, self._stamp = None, None
            if self._failed_stamp is None:
                log.warning("admin secret unusable; it matches nothing until fixed",
                            extra={"file": self._path, "what": self._what})
                self._failed_stamp = (0, 0, 0)
            return
        self._value, self._stamp, self._failed_stamp = value, stamp, None

    def get(self) -> _T | None:
        self._load(strict=False)
        return self._value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def _token_bytes(raw: bytes) -> bytes:
    token = raw.strip()
    if not token:
        raise ValueError("empty")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"too short to be a secret (at least {MIN_TOKEN_LENGTH} characters)")
    if b"\n" in token or b" " in token:
        raise ValueError("a token is one word (no spaces or line breaks)")
    return token


class _StaticToken:
    def __init__(self, config: AdminTokenConfig) -> None:
        self.name = config.name
        self.role = Role.parse(config.role)
        self._file: _Watched[bytes] | None = None
        self._env: bytes | None = None
        if config.token_file is not None:
            self._file = _Watched(config.token_file, _token_bytes,
                                  f"admin.auth token {config.name!r}: token_file")
        else:
            assert config.token_env is not None
            value = os.environ.get(config.token_env)
            if value is None:
                raise AuthSetupError(f"admin.auth token {config.name!r}: environment "
                                     f"variable {config.token_env} is not set")
            try:
                self._env = _token_bytes(value.encode())
            except ValueError as exc:
                raise AuthSetupError(f"admin.auth token {config.name!r}: environment "
                                     f"variable {config.token_env}: {exc}") from None

    def digest(self) -> bytes | None:
        secret = self._file.get() if self._file is not None else self._env
        return hashlib.sha256(secret).digest() if secret is not None else None


def _pem_key(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(raw)


@dataclass(frozen=True, slots=True)
class _Jwk:
    kid: str | None
    alg: str | None  # the key's own "alg", if it names one
    key: Any  # a cryptography public key


def _jwks(raw: bytes) -> tuple[_Jwk, ...]:
    """The signing keys of a JSON Web Key Set (keys marked `"use": "enc"` are not)."""
    import jwt

    try:
        document = json.loads(raw)
        entries = document["keys"]
        if not isinstance(entries, list):
            raise TypeError("keys is not a list")
        keys = tuple(_Jwk(entry.get("kid"), entry.get("alg"), jwt.PyJWK(entry).key)
                     for entry in entries
                     if isinstance(entry, dict) and entry.get("use", "sig") == "sig")
    except (ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
        raise ValueError(f"not a usable JSON Web Key Set: {exc}") from None
    if not keys:
        raise ValueError("the JSON Web Key Set has no signing key")
    return keys


class _JwtVerifier:
    def __init__(self, config: AdminJwtConfig) -> None:
        self._config = config
        self._key: _Watched[Any] | None = None
        self._jwks: _Watched[tuple[_Jwk, ...]] | None = None
        if config.key_file is not None:
            self._key = _Watched(config.key_file, _pem_key, "admin.auth.jwt.key_file")
        else:
            assert config.jwks_file is not None
            self._jwks = _Watched(config.jwks_file, _jwks, "admin.auth.jwt.jwks_file")

    def _key_for(self, header: Mapping[str, Any]) -> Any:
        import jwt

        if self._key is not None:
            key = self._key.get()
            if key is None:
                raise jwt.InvalidTokenError("no verification key")
            return key
        assert self._jwks is not None
        keys = self._jwks.get()
        if keys is None:
            raise jwt.InvalidTokenError("no verification key")
        kid = header.get("kid")
        if kid is None:
            if len(keys) != 1:
                raise jwt.InvalidTokenError("the token names no key (kid)")
            found = keys[0]
        else:
            matching = [k for k in keys if k.kid == kid]
            if not matching:
                raise jwt.InvalidTokenError("unknown key id")
            found = matching[0]
        if found.alg is not None and found.alg != header.get("alg"):
            raise jwt.InvalidTokenError("the token's algorithm is not its key's")
        return found.key

    def verify(self, token: str) -> dict[str, Any]:
        """The claims; jwt.PyJWTError when the token is not valid."""
        import jwt

        config = self._config
        header = jwt.get_unverified_header(token)
        claims: dict[str, Any] = jwt.decode(
            token, self._key_for(header), algorithms=list(config.algorithms),
            audience=config.audience, issuer=config.issuer, leeway=config.leeway,
            options={"require": ["exp", "iss", "aud"]})
        return claims

    def role(self, claims: Mapping[str, Any]) -> Role | None:
        value: Any = claims
        for part in self._config.role_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles = [Role.parse(v) for v in values if isinstance(v, str)
                 and v.upper() in Role.__members__]
        return max(roles) if roles else None


# ---------------------------------------------------------------- the authenticator


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the `authorization: Bearer TOKEN` metadata; None if absent.
    AuthError (UNAUTHENTICATED) if malformed or sent more than once."""
    values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                        "more than one authorization metadata entry")
    value = values[0]
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                        "authorization metadata must be 'Bearer TOKEN'")
    return token


class Authenticator:
    """Turns a call's credentials into an `Identity` for one `admin.auth` configuration.

    Parameters:
        config: `admin.auth`; None turns authentication off (every caller is admin).
    Raises AuthSetupError when a configured secret cannot be read.
    """

    def __init__(self, config: AdminAuthConfig | None) -> None:
        self.config = config
        self._tokens = [_StaticToken(t) for t in config.tokens] if config is not None else []
        self._jwt = (_JwtVerifier(config.jwt)
                     if config is not None and config.jwt is not None else None)
        self._cert_role = (Role.parse(config.client_cert_role)
                           if config is not None and config.client_cert_role else None)

    @property
    def open_reflection(self) -> bool:
        return self.config is None or self.config.open_reflection

    def _static(self, token: str) -> _StaticToken | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: _StaticToken | None = None
        for candidate in self._tokens:  # every one, no early exit
            digest = candidate.digest()
            if digest is not None and hmac.compare_digest(presented, digest):
                found = candidate
        return found

    def authenticate(self, token: str | None, subject: str) -> Identity:
        """The caller's identity from its bearer token (None: none sent) and client
        certificate subject ("" without mTLS); AuthError when not authenticated."""
        if self.config is None:
            return Identity(subject or "anonymous", Role.ADMIN, "cert" if subject else "none",
                            subject)
        if token is None:
            if subject and self._cert_role is not None:
                return Identity(subject, self._cert_role, "cert", subject)
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            "missing credentials: send 'authorization: Bearer TOKEN' metadata "
                            "(sidecarctl --token-file)")
        static = self._static(token)
        if static is not None:
            return Identity(static.name, static.role, "token", subject)
        if self._jwt is not None and token.count(".") == 2:
            import jwt

            try:
                claims = self._jwt.verify(token)
            except jwt.PyJWTError as exc:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                f"invalid token: {_jwt_reason(exc)}") from None
            sub = claims.get("sub")
            name = sub if isinstance(sub, str) and sub else "jwt"
            role = self._jwt.role(claims)
            if role is None:
                identity = Identity(name, Role.READ, "jwt", subject)
                raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                f"the token's {self._jwt._config.role_claim!r} claim holds no "
                                "role ('read' or 'admin')", identity)
            return Identity(name, role, "jwt", subject)
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "invalid token")


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    # PyJWT's messages name claims and checks, never the token itself.
    return str(exc) or type(exc).__name__


def certificate_subject(context: grpc.aio.ServicerContext) -> str:
    """The verified client certificate's subject (mTLS), else ""."""
    auth = context.auth_context()
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            raw = values[0]
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return ""


# ---------------------------------------------------------------- the interceptor

_Behaviour = Callable[..., Any]


class AdminInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and authorizes every call by `REQUIRED_ROLES`, and audits the
    mutating ones.

    Parameters:
        authenticator: the configured credentials (an Authenticator(None) for none).
        audit: where mutating calls are recorded; None records nothing.
    """

    def __init__(self, authenticator: Authenticator, audit: AuditLog | None = None) -> None:
        self._auth = authenticator
        self._audit = audit

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        required = required_role(method, open_reflection=self._auth.open_reflection)
        if handler is None or required is None:
            return handler
        metadata = tuple(details.invocation_metadata or ())
        return _wrap(handler, _Guard(self._auth, self._audit, method, required, metadata))


class _Guard:
    """One call's checks: admit (or abort) before the servicer, audit after."""

    def __init__(self, auth: Authenticator, audit: AuditLog | None, method: str,
                 required: Role, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.auth = auth
        self.audit = audit if required is Role.ADMIN else None
        self.method = method
        self.required = required
        self.metadata = metadata
        self.identity: Identity | None = None

    async def admit(self, context: grpc.aio.ServicerContext, request: Any) -> None:
        try:
            subject = certificate_subject(context)
            identity = self.auth.authenticate(bearer_token(self.metadata), subject)
            if identity.role < self.required:
                raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                f"{identity.name!r} has the {identity.role.name.lower()} "
                                f"role; {self.method.rpartition('/')[2]} needs "
                                f"{self.required.name.lower()}", identity)
        except AuthError as exc:
            self.identity = exc.identity
            self.record(context, request, exc.code)
            await context.abort(exc.code, str(exc))
            raise AssertionError("unreachable: abort raises") from None
        self.identity = identity

    def record(self, context: grpc.aio.ServicerContext, request: Any,
               code: grpc.StatusCode) -> None:
        if self.audit is not None:
            self.audit.record(self.identity, self.method, request, code, context.peer())

    def outcome(self, context: grpc.aio.ServicerContext, exc: BaseException | None
                ) -> grpc.StatusCode:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        if exc is None:
            return grpc.StatusCode.OK
        if isinstance(exc, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN


class _AuditedContext:
    """A unary call's context, handed to the servicer in place of grpc's: its `abort`
    writes the audit record first. grpc.aio's `abort()` sends the status to the client
    at once, so a record written once the handler has raised could come after the
    client has its answer: an audit trail must never lag the outcome it records.
    Everything else is grpc's context."""

    def __init__(self, context: grpc.aio.ServicerContext, guard: _Guard,
                 request: Any) -> None:
        self._context = context
        self._guard = guard
        self._request = request
        self.recorded = False

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
        if not self.recorded:
            self.recorded = True
            self._guard.record(self._context, self._request, code)
        await self._context.abort(code, details, trailing_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _wrap(handler: grpc.RpcMethodHandler, guard: _Guard) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await guard.admit(context, request)
            audited = _AuditedContext(context, guard, request)
            try:
                response = await inner(request, audited)
            except BaseException as exc:
                if not audited.recorded:
                    guard.record(context, request, guard.outcome(context, exc))
                raise
            guard.record(context, request, guard.outcome(context, None))
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, guard, stream_request=False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, guard, stream_request=True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    assert handler.stream_unary is not None
    inner_su = handler.stream_unary

    async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await guard.admit(context, None)
        return await inner_su(requests, context)

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


def _streaming(inner: _Behaviour, guard: _Guard, *, stream_request: bool) -> _Behaviour:
    """A response-streaming behaviour that admits first. Streaming RPCs are read
    RPCs: nothing to audit."""

    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await guard.admit(context, None if stream_request else request)
        result = inner(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        else:  # a coroutine that writes with context.write()
            await result

    return behaviour


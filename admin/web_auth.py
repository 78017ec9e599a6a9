"""Who may see the status page: admin.auth's credentials, carried by a browser.

With `admin.auth` configured, every request for the page or its data needs the read
role, checked by the same `Authenticator` as the gRPC API:

* `Authorization: Bearer TOKEN` (scripts, curl), checked on every request; or
* a session cookie set by the login form (browsers). `POST /login` checks the token
  and answers with a cookie holding a random session id, never the token: HttpOnly
  (no script reads it), SameSite=Strict (no other site sends it), Secure when the
  request came over TLS. The session table is in memory, bounded (`max_sessions`, the
  oldest dropped first) and each session expires (`lifetime`); a restart logs everyone
  out. Each request re-authenticates the session's token, so a token removed or
  rotated in its file, or a JWT that expired, ends the session at once.

The session ids are looked up by their SHA-256, so the table's lookups reveal nothing
of the ids through their timing. The login POST must come from the page itself: an
`Origin` (or `Sec-Fetch-Site`) naming another site is refused, so no other site can
log a browser in (login CSRF). Login attempts are rate limited per client address
(`LOGIN_BURST` at once, then `LOGIN_RATE` a second: 429 with Retry-After past that), so
the form is no faster a token guesser than the gRPC API. Credentials (a bearer header,
the login form) are refused over plain HTTP from another host (`cleartext_from_network`):
the admin HTTP port has no TLS, so a token sent across a network would travel in clear;
reach the page over loopback (a port forward) instead. Without `admin.auth` every
request is allowed, as the gRPC API allows every local caller.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from sidecar.config.admin import is_loopback_host
from sidecar.core.ratelimit import RateLimiter

from .auth import Authenticator, AuthError, Identity, Role

__all__ = ["CLEARTEXT_REFUSED", "DEFAULT_MAX_SESSIONS", "DEFAULT_SESSION_LIFETIME",
           "COOKIE_PREFIX", "LOGIN_BURST", "LOGIN_RATE", "Sessions", "WebAuth",
           "cleartext_from_network", "same_origin"]

DEFAULT_MAX_SESSIONS = 256
DEFAULT_SESSION_LIFETIME = 8 * 3600.0
#: The cookie is named after the admin HTTP port: browsers do not separate cookies by
#: port, and two sidecars on one host must not log each other's users out.
COOKIE_PREFIX = "sidecar_session_"
#: Login attempts a client address may make at once, then how many a second.
LOGIN_BURST = 10
LOGIN_RATE = 0.2


@dataclass(slots=True)
class _Session:
    token: str
    expires: float  # monotonic


class Sessions:
    """Logged-in browsers: session id -> the token that logged in, bounded and expiring."""

    def __init__(self, *, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 lifetime: float = DEFAULT_SESSION_LIFETIME,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1 or lifetime <= 0:
            raise ValueError("max_sessions and lifetime must be positive")
        self.max_sessions = max_sessions
        self.lifetime = lifetime
        self._clock = clock
        self._table: OrderedDict[bytes, _Session] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._table)

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode()).digest()

    def create(self, token: str) -> str:
        """A new session for `token` (already verified); returns its id."""
        self._expire()
        while len(self._table) >= self.max_sessions:
            self._table.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        self._table[self._key(session_id)] = _Session(token, self._clock() + self.lifetime)
        return session_id

    def token(self, session_id: str) -> str | None:
        """The token of a live session; None if unknown or expired."""
        key = self._key(session_id)
        session = self._table.get(key)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._table[key]
            return None
        return session.token

    def end(self, session_id: str) -> None:
        self._table.pop(self._key(session_id), None)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._table.items() if s.expires <= now]:
            del self._table[key]


#: Why credentials sent over plain HTTP from another host are refused.
CLEARTEXT_REFUSED = ("credentials are not accepted over plain HTTP from another host (the "
                     "token would cross the network in clear): reach the admin port over "
                     "loopback, e.g. through kubectl port-forward or an SSH tunnel")


def cleartext_from_network(request: web.Request) -> bool:
    """Whether the request came over plain HTTP from a peer that is not loopback
    (`is_loopback_host`; a dual-stack socket's IPv4-mapped loopback peer counts)."""
    if request.secure:
        return False
    remote = request.remote or ""  # no remote (not an IP socket): strict, not loopback
    try:
        mapped = ipaddress.IPv6Address(remote).ipv4_mapped
    except ValueError:
        mapped = None
    return not is_loopback_host(str(mapped) if mapped is not None else remote)


def same_origin(request: web.Request) -> bool:
    """Whether a state-changing request (login, logout) comes from this server's own
    pages: its Origin, when sent, names this scheme and host; else Sec-Fetch-Site, when
    sent, says same-origin (or none: typed by the user). Clients that send neither (curl)
    are not browsers and cannot be tricked into a request."""
    origin = request.headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        return (origin != "null" and parts.scheme == request.scheme
                and parts.netloc.lower() == request.host.lower())
    site = request.headers.get("Sec-Fetch-Site")
    return site is None or site in ("same-origin", "none")


class WebAuth:
    """Authenticates status page requests with `authenticator` (see the module doc)."""

    def __init__(self, authenticator: Authenticator, sessions: Sessions | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._authenticator = authenticator
        self.sessions = sessions or Sessions()
        self._clock = clock
        self._attempts = RateLimiter(LOGIN_RATE, LOGIN_BURST, max_keys=1024)

    def login_wait(self, request: web.Request) -> float:
        """Count a login attempt from the request's address: 0 if it may go ahead,
        else the seconds until it may try again."""
        decision = self._attempts.take(request.remote or "", self._clock())
        return 0.0 if decision.allowed else decision.retry_after

    @property
    def enabled(self) -> bool:
        return self._authenticator.config is not None

    def cookie_name(self, request: web.Request) -> str:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else 0
        return f"{COOKIE_PREFIX}{port}"

    def _verify(self, token: str) -> Identity:
        identity = self._authenticator.authenticate(token, "")
        if identity.role < Role.READ:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "the status page needs the read "
                            "role", identity)
        return identity

    def identify(self, request: web.Request) -> Identity | None:
        """The caller's identity; None when it sent no credentials (or its session has
        ended). AuthError when it sent a bearer token that is refused."""
        if not self.enabled:
            return self._authenticator.authenticate(None, "")
        header = request.headers.get("Authorization")
        if cleartext_from_network(request) and (
                header is not None or self.cookie_name(request) in request.cookies):
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, CLEARTEXT_REFUSED)
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                "the Authorization header must be 'Bearer TOKEN'")
            return self._verify(token.strip())
        session_id = request.cookies.get(self.cookie_name(request))
        if not session_id:
            return None
        session_token = self.sessions.token(session_id)
        if session_token is None:
            return None
        try:
            return self._verify(session_token)
        except AuthError:  # the token was rotated or removed, or the JWT expired
            self.sessions.end(session_id)
            return None

    def login(self, request: web.Request, response: web.StreamResponse, token: str
              ) -> Identity:
        """Verify `token` and set a session cookie on `response`; AuthError if refused."""
        identity = self._verify(token)
        session_id = self.sessions.create(token)
        response.set_cookie(self.cookie_name(request), session_id, path="/",
                            max_age=int(self.sessions.lifetime), httponly=True,
                            samesite="Strict", secure=request.secure)
        return identity

    def logout(self, request: web.Request, response: web.StreamResponse) -> None:
        name = self.cookie_name(request)
        session_id = request.cookies.get(name)
        if session_id:
            self.sessions.end(session_id)
        response.del_cookie(name, path="/", httponly=True, samesite="Strict",
                            secure=request.secure)

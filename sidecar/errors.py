"""Errors of the sidecar, each with the HTTP status and stable JSON code it maps to.

Hierarchy (double-inheriting builtins, like aiohttp's client errors)::

    SidecarError
     +-- ConfigError (ValueError)            a configuration was rejected
     +-- RegistryError                       a registry change was rejected
     |    +-- InvalidEndpoint (ValueError)
     |    +-- EndpointExists
     |    +-- EndpointNotFound (LookupError)
     |    +-- EndpointNotRemovable
     +-- ProxyError                          a request could not be proxied
          +-- NoRoute, MethodNotAllowed, NoHealthyEndpoint,
              UnknownCluster, Overflow, UpstreamConnectError, UpstreamTimeout,
              UpstreamProtocolError, UpstreamReset, BadRequest, ...

`ProxyError.status` and `.code` are what the client sees; `.message` is safe to
show (never an exception's text from a library, never a host name or a path
inside the sidecar).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "ConfigError",
    "ConfigIssue",
    "EndpointExists",
    "EndpointNotFound",
    "EndpointNotRemovable",
    "HeadersTooLarge",
    "InternalError",
    "InvalidEndpoint",
    "MethodNotAllowed",
    "NoHealthCheck",
    "NoHealthyEndpoint",
    "NoRoute",
    "Overflow",
    "Overloaded",
    "ProxyError",
    "RateLimited",
    "RegistryError",
    "RequestTimeout",
    "SidecarError",
    "TransferCodingNotImplemented",
    "UnknownCluster",
    "UpstreamConnectError",
    "UpstreamProtocolError",
    "UpstreamReset",
    "UpstreamTimeout",
    "UriTooLong",
]


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration: where (`path.to[0].field`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(SidecarError, ValueError):
    """A configuration was rejected; the serving one (if any) stays."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("\n".join(f"{source}: {issue}" for issue in issues))


# ---------------------------------------------------------------- registry


class RegistryError(SidecarError):
    """A registry change was rejected; nothing was changed."""


class InvalidEndpoint(RegistryError, ValueError):
    """The endpoint's fields are invalid (bad URL, empty cluster, bad port...)."""


class EndpointExists(RegistryError):
    """An endpoint with the same id, or the same URL, is already in the cluster."""


class EndpointNotFound(RegistryError, LookupError):
    """No endpoint with that cluster and id."""


class EndpointNotRemovable(RegistryError):
    """The endpoint comes from the configuration file; change the file instead."""


class NoHealthCheck(SidecarError):
    """A health check was asked for in a cluster without `health_check`."""


# ---------------------------------------------------------------- data plane


class ProxyError(SidecarError):
    """A request could not be proxied; `status` and `code` go to the client, and
    `retry_after` (seconds, rounded up) as a `Retry-After` header when set."""

    status: int = 502
    code: str = "bad_gateway"
    message: str = "The upstream could not be reached."
    retry_after: float | None = None

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"
    message = "The request is malformed."


class NoRoute(ProxyError):
    status = 404
    code = "no_route"
    message = "No route matches the request."


class MethodNotAllowed(ProxyError):
    status = 405
    code = "method_not_allowed"
    message = "The route does not allow this method."

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed
        super().__init__()


class UriTooLong(BadRequest):
    status = 414
    code = "uri_too_long"
    message = "The request target is too long."


class HeadersTooLarge(BadRequest):
    status = 431
    code = "headers_too_large"
    message = "The request headers are too large."


class BodyTooLarge(BadRequest):
    """The request body is over `max_request_body_bytes` (the route's, else the
    listener's): by its Content-Length, or counted as a streamed body arrives."""

    status = 413
    code = "body_too_large"
    message = "The request body is too large."


class TransferCodingNotImplemented(BadRequest):
    """A request body with a transfer coding besides a final chunked (`gzip, chunked`).
    The sidecar removes the chunked coding and would pass the others off as the
    body's own bytes, so it answers 501 as RFC 9112 6.1 asks (nginx and Envoy do too)."""

    status = 501
    code = "transfer_coding_not_implemented"
    message = "Only the chunked transfer coding is supported."


class RequestTimeout(BadRequest):
    """The request head did not arrive whole within `request_header_timeout`, or the
    body stalled for `request_body_timeout`."""

    status = 408
    code = "request_timeout"
    message = "The request head did not arrive in time."


class Overloaded(ProxyError):
    """The listener has `max_requests` requests in flight: refused at once."""

    status = 503
    code = "overloaded"
    message = "The sidecar is at its request limit; try again shortly."
    retry_after = 1.0


class RateLimited(ProxyError):
    """The route's local rate limit (token bucket) has no token for this request.

    `limit`, `remaining`, `reset` (seconds until the bucket is full again) become the
    `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers."""

    status = 429
    code = "rate_limited"
    message = "Too many requests; try again later."

    def __init__(self, retry_after: float, limit: int, remaining: int, reset: float) -> None:
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        super().__init__()


class InternalError(ProxyError):
    status = 500
    code = "internal_error"
    message = "The sidecar failed to handle the request."


class UnknownCluster(NoRoute):
    """`/orchestrator/{cluster}/...` named a cluster that does not exist."""

    code = "unknown_cluster"
    message = "No cluster has the name in the request path."


class NoHealthyEndpoint(ProxyError):
    """Every endpoint is out of rotation (breakers open, checks failing, disabled).

    `retry_after`: seconds until the first open breaker lets a probe through."""

    status = 503
    code = "no_healthy_upstream"
    message = "The cluster has no endpoint that can take the request."

    def __init__(self, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__()


class Overflow(ProxyError):
    """A cluster limit (`max_requests`, `max_pending`) is reached: refused at once."""

    status = 503
    code = "overflow"
    message = "The cluster is at its request limit; try again shortly."
    retry_after = 1.0

    def __init__(self, limit: str) -> None:
        self.limit = limit
        super().__init__()


class UpstreamConnectError(ProxyError):
    status = 502
    code = "upstream_connect_error"
    message = "The upstream refused or failed the connection."


class UpstreamReset(ProxyError):
    status = 502
    code = "upstream_reset"
    message = "The upstream closed the connection before a complete response."


class UpstreamProtocolError(ProxyError):
    status = 502
    code = "upstream_protocol_error"
    message = "The upstream sent a malformed response."


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"
    message = "The upstream did not answer in time."

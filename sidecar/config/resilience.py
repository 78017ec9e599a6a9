"""Configuration of the resilience layer: breakers, health checks, retries, limits, fallbacks.

These models are the public interface of issue 7 (field names are forever). Each is
frozen; `ClusterSettings` and `RouteConfig` (in `model`) hold them, so
`cluster_defaults` sets them for every cluster and for clusters created by
registration. Defaults protect a user who writes no resilience config at all:
breakers, retries with a budget and limits are on; active health checks are off
until a `health_check` with a `path` is given. `enabled: false` turns a default-on
feature off.

The pure decision objects in `sidecar.core` (breaker, health, retry, limits,
fallback) take these models as they are.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sidecar.config.types import Duration, FrozenModel, Name, NonNegativeDuration

__all__ = [
    "FAILURE_KINDS",
    "CacheFallbackConfig",
    "CircuitBreakerConfig",
    "FailureKind",
    "FallbackConfig",
    "HealthCheckConfig",
    "LimitsConfig",
    "RetryBudgetConfig",
    "RetryConfig",
    "RetryOn",
    "SecurityHeadersConfig",
    "StaticFallbackConfig",
    "parse_status_ranges",
]

#: What can go wrong with one upstream attempt. `gateway_error` is a 502, 503 or 504
#: answer; `5xx` is any 500-599 answer.
FailureKind = Literal["connect_failure", "reset", "timeout", "gateway_error", "5xx"]
FAILURE_KINDS: tuple[str, ...] = ("connect_failure", "reset", "timeout", "gateway_error", "5xx")
#: What a retry policy may retry on: a failure kind, or one of `retriable_status_codes`.
RetryOn = Literal["connect_failure", "reset", "timeout", "gateway_error", "5xx",
                  "retriable_status_codes"]
_DEFAULT_FAILURES: tuple[FailureKind, ...] = ("connect_failure", "reset", "timeout",
                                              "gateway_error")
_STATUS_RANGE = re.compile(r"^([1-5]\d\d)(?:-([1-5]\d\d))?$")


def parse_status_ranges(items: tuple[str | int, ...]) -> tuple[tuple[int, int], ...]:
    """("200-399", 404) -> ((200, 399), (404, 404)); raises ValueError naming the bad item."""
    out: list[tuple[int, int]] = []
    for item in items:
        match = _STATUS_RANGE.match(str(item).strip())
        if not match:
            raise ValueError(f"invalid status {item!r}: use a code like 200 or a range "
                             "like '200-399' (100-599)")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise ValueError(f"invalid status range {item!r}: the end is below the start")
        out.append((low, high))
    return tuple(out)


class CircuitBreakerConfig(FrozenModel):
    """Per-endpoint circuit breaker (CLOSED -> OPEN -> HALF_OPEN -> CLOSED). On by default."""

    enabled: bool = Field(True, description="false: never open (default true).")
    consecutive_failures: int = Field(
        5, ge=1, le=1000,
        description="Open after this many failures in a row (default 5).")
    failure_rate: float = Field(
        0.5, gt=0, le=1,
        description="Open when this share of the requests in `window` failed (default 0.5) ...")
    min_requests: int = Field(
        20, ge=1, le=1_000_000,
        description="... and `window` holds at least this many requests (default 20).")
    window: Duration = Field(10.0, description="Sliding window of the failure rate (default 10s).")
    open_duration: Duration = Field(
        5.0, description="First time spent OPEN; doubled after each failed probe, "
                         "with +-10% jitter (default 5s).")
    max_open_duration: Duration = Field(
        60.0, description="Cap of the doubled open time (default 60s).")
    half_open_requests: int = Field(
        1, ge=1, le=1000, description="Concurrent probe requests while HALF_OPEN (default 1).")
    close_after: int = Field(
        2, ge=1, le=1000,
        description="Successful probes that close the breaker (default 2); one failed "
                    "probe opens it again.")
    failure_on: tuple[FailureKind, ...] = Field(
        _DEFAULT_FAILURES,
        description="What counts as a failure (default connect_failure, reset, timeout, "
                    "gateway_error; add 5xx for any 500-599).")

    @field_validator("failure_on")
    @classmethod
    def _check_failure_on(cls, value: tuple[FailureKind, ...]) -> tuple[FailureKind, ...]:
        if not value:
            raise ValueError("name at least one failure kind (or set enabled: false)")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_open_durations(self) -> CircuitBreakerConfig:
        if self.max_open_duration < self.open_duration:
            raise ValueError("max_open_duration must not be below open_duration")
        return self


class HealthCheckConfig(FrozenModel):
    """Active HTTP health checks of every endpoint of a cluster. Off unless given."""

    path: str = Field(description="Path to GET on each endpoint, e.g. '/healthz' (required).")
    interval: Duration = Field(5.0, description="Time between checks of one endpoint "
                                                "(default 5s).")
    jitter: NonNegativeDuration = Field(
        0.5, description="Each interval is randomly longer or shorter by up to this much "
                         "(default 0.5s), so that checks do not arrive in lock-step.")
    timeout: Duration = Field(1.0, description="A check not answered in time fails "
                                               "(default 1s).")
    healthy_threshold: int = Field(
        2, ge=1, le=100,
        description="Passing checks in a row that make an unhealthy endpoint healthy "
                    "(default 2). A new endpoint needs only its first passing check.")
    unhealthy_threshold: int = Field(
        3, ge=1, le=100,
        description="Failing checks in a row that make an endpoint unhealthy (default 3).")
    expected_statuses: tuple[str | int, ...] = Field(
        ("200-399",), description="Statuses that pass: codes or ranges (default '200-399').")
    host: str | None = Field(None, description="Host header of the check; default the "
                                               "endpoint's host:port.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " \r\n\t#"):
            raise ValueError("must be an absolute path like '/healthz' (no spaces or '#')")
        return value

    @field_validator("expected_statuses")
    @classmethod
    def _check_statuses(cls, value: tuple[str | int, ...]) -> tuple[str | int, ...]:
        if not value:
            raise ValueError("give at least one status or range")
        parse_status_ranges(value)
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", value):
            raise ValueError(f"invalid host {value!r}")
        return value

    @property
    def status_ranges(self) -> tuple[tuple[int, int], ...]:
        return parse_status_ranges(self.expected_statuses)

    @model_validator(mode="after")
    def _check_timeout(self) -> HealthCheckConfig:
        if self.jitter >= self.interval:
            raise ValueError("jitter must be below interval")
        return self


class RetryConfig(FrozenModel):
    """When and how a failed upstream attempt is tried again. On by default."""

    enabled: bool = Field(True, description="false: one attempt only (default true).")
    retry_on: tuple[RetryOn, ...] = Field(
        _DEFAULT_FAILURES,
        description="Failures retried (default connect_failure, reset, timeout, "
                    "gateway_error; also 5xx, retriable_status_codes).")
    retriable_status_codes: tuple[int, ...] = Field(
        (), description="Statuses retried when retry_on has retriable_status_codes "
                        "(default none).")
    max_retries: int = Field(2, ge=0, le=10, description="Retries after the first try "
                                                         "(default 2).")
    per_try_timeout: Duration | None = Field(
        None, description="Time for one try; default none: the route's timeout bounds all "
                          "tries together.")
    backoff_base: Duration = Field(
        0.025, description="First retry waits a random time up to this, doubling per "
                           "retry (default 25ms).")
    backoff_max: Duration = Field(0.25, description="Cap of the backoff (default 250ms).")
    retry_buffer_bytes: int = Field(
        65_536, ge=0, le=16 * 1024 * 1024,
        description="A streamed request body is kept for replay up to this size; a larger "
                    "one is not retried (default 64 KiB).")

    @field_validator("retriable_status_codes")
    @classmethod
    def _check_codes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for code in value:
            if not 100 <= code <= 599:
                raise ValueError(f"invalid status {code}: use 100-599")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check(self) -> RetryConfig:
        if self.backoff_max < self.backoff_base:
            raise ValueError("backoff_max must not be below backoff_base")
        if "retriable_status_codes" in self.retry_on and not self.retriable_status_codes:
            raise ValueError("retry_on has retriable_status_codes but the list is empty")
        return self


class RetryBudgetConfig(FrozenModel):
    """How many retries a cluster may make. A retry may go when retries in flight are
    below max(min_concurrent, ratio x active requests), or retries over the last
    `interval` are below ratio x the requests of that interval, or fewer than
    `min_retry_rate` retries were made in the last second."""

    enabled: bool = Field(True, description="false: no budget, only max_retries bounds "
                                            "retries (default true).")
    ratio: float = Field(0.2, gt=0, le=10, description="Retries per request: in flight per "
                                                       "active request, and over `interval` "
                                                       "(default 0.2).")
    min_concurrent: int = Field(3, ge=0, le=100_000,
                                description="Retries always allowed at once (default 3).")
    interval: Duration = Field(10.0, description="Window of the retries-per-request ratio "
                                                 "(default 10s).")
    min_retry_rate: float = Field(10.0, ge=0, le=100_000,
                                  description="Retries a second always allowed, whatever the "
                                              "traffic (default 10; 0: none).")


class LimitsConfig(FrozenModel):
    """Admission per cluster: over a limit a request gets 503 `overflow` at once."""

    enabled: bool = Field(True, description="false: no limits (default true).")
    max_requests: int = Field(1024, ge=1, le=1_000_000,
                              description="Requests in flight to the cluster (default 1024).")
    max_pending: int = Field(1024, ge=0, le=1_000_000,
                             description="Requests waiting for a connection (default 1024).")


class CacheFallbackConfig(FrozenModel):
    """Answer with the last good 200 response to the same GET."""

    max_entries: int = Field(1000, ge=1, le=1_000_000, description="Responses kept "
                                                                   "(default 1000).")
    max_body_bytes: int = Field(65_536, ge=0, le=16 * 1024 * 1024,
                                description="Larger responses are not kept (default 64 KiB).")
    max_age: Duration = Field(300.0, description="Older responses are not used "
                                                 "(default 5m).")


class StaticFallbackConfig(FrozenModel):
    """A fixed answer."""

    status: int = Field(503, ge=200, le=599, description="Status (default 503).")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Response headers (default none).")
    body: str = Field("", description="Response body (default empty).")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, field_value in value.items():
            if not re.match(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$", name):
                raise ValueError(f"invalid header name {name!r}")
            if any(c in field_value for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: the value has a line break or NUL")
            if name.lower() in ("content-length", "transfer-encoding", "connection"):
                raise ValueError(f"header {name!r} is set by the sidecar")
        return value


class FallbackConfig(FrozenModel):
    """What answers when the route's cluster cannot; tried in order: cache, cluster, static."""

    cache: CacheFallbackConfig | None = Field(
        None, description="The last good response (default null: none).")
    cluster: Name | None = Field(
        None, description="Send the request to this declared cluster instead, not the "
                          "route's own (default null: none).")
    static: StaticFallbackConfig | None = Field(
        None, description="A fixed answer (default null: none).")

    @model_validator(mode="after")
    def _check_any(self) -> FallbackConfig:
        if self.cache is None and self.cluster is None and self.static is None:
            raise ValueError("give at least one of cache, cluster, static")
        return self


class SecurityHeadersConfig(FrozenModel):
    """Security headers set on a route's responses (the upstream's own value of the same
    header is replaced). Each field is the header's value, or null to leave it alone."""

    hsts: str | None = Field("max-age=31536000; includeSubDomains",
                             description="Strict-Transport-Security (default one year, "
                                         "subdomains included).")
    content_type_options: str | None = Field("nosniff", description="X-Content-Type-Options "
                                                                    "(default nosniff).")
    frame_options: str | None = Field("DENY", description="X-Frame-Options (default DENY).")
    referrer_policy: str | None = Field("no-referrer", description="Referrer-Policy (default "
                                                                   "no-referrer).")

    @field_validator("hsts", "content_type_options", "frame_options", "referrer_policy")
    @classmethod
    def _check_value(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "\r\n\0")):
            raise ValueError("a header value: not empty, no line break or NUL")
        return value

    def fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """The (name, value) pairs to set, in a fixed order."""
        pairs = (("Strict-Transport-Security", self.hsts),
                 ("X-Content-Type-Options", self.content_type_options),
                 ("X-Frame-Options", self.frame_options),
                 ("Referrer-Policy", self.referrer_policy))
        return tuple((n.encode(), v.encode("latin-1")) for n, v in pairs if v is not None)

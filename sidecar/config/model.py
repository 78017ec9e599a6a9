"""The configuration model: frozen pydantic models, validation with located errors, version hash.

A `SidecarConfig` is an immutable snapshot. A reload builds a new one and swaps a
single reference; requests in flight keep the snapshot they started with.

Durations are seconds, given as a number (`1.5`) or a string with a unit
(`"250ms"`, `"1.5s"`, `"2m"`, `"1h"`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from sidecar.config.admin import AdminConfig
from sidecar.config.resilience import (
    CircuitBreakerConfig,
    FallbackConfig,
    HealthCheckConfig,
    LimitsConfig,
    RetryBudgetConfig,
    RetryConfig,
    SecurityHeadersConfig,
)
from sidecar.config.types import NAME_PATTERN, Duration, Name, parse_duration
from sidecar.config.types import FrozenModel as _Model
from sidecar.core import names
from sidecar.core.addresses import parse_host_port, parse_upstream_url
from sidecar.errors import ConfigError, ConfigIssue

__all__ = [
    "AdminConfig",
    "ClusterConfig",
    "ClusterSettings",
    "EndpointConfig",
    "ListenerConfig",
    "LoggingConfig",
    "RateLimitConfig",
    "RouteConfig",
    "SidecarConfig",
    "UpstreamTLS",
    "config_version",
    "format_location",
    "parse_config",
    "parse_duration",
]

_METHOD = re.compile(r"^[A-Z][A-Z0-9_\-]{0,31}$")

# Endpoint and cluster fields are judged by sidecar.core.names, like registrations
# through the admin API; the JSON Schema states the same rules.
ClusterName = Annotated[str, AfterValidator(names.check_cluster_name), WithJsonSchema({
    "type": "string", "pattern": NAME_PATTERN,
    "description": "Letters, digits, '_', '.', '-' (not first: '.', '-'); at most 63.",
})]
EndpointId = Annotated[str, AfterValidator(names.check_endpoint_id), WithJsonSchema({
    "type": "string", "pattern": names.ENDPOINT_ID_PATTERN,
    "description": "Letters, digits, '_', '.', ':', '[', ']', '-' (not first: '.', ':', "
                   f"'-'); at most {names.MAX_ENDPOINT_ID}.",
})]
Weight = Annotated[int, AfterValidator(names.check_weight), WithJsonSchema({
    "type": "integer", "minimum": names.MIN_WEIGHT, "maximum": names.MAX_WEIGHT,
})]
Labels = Annotated[dict[str, str], AfterValidator(names.check_labels), WithJsonSchema({
    "type": "object", "maxProperties": names.MAX_LABELS,
    "propertyNames": {"minLength": 1, "maxLength": names.MAX_LABEL_KEY},
    "additionalProperties": {"type": "string", "maxLength": names.MAX_LABEL_VALUE},
})]


def _address(value: str) -> str:
    parse_host_port(value, allow_zero_port=True)
    return value


class ListenerConfig(_Model):
    """The data-plane listener."""

    address: str = Field("127.0.0.1:8000", description="HOST:PORT to accept requests on.")
    max_uri_bytes: int = Field(8190, ge=256, le=65_536,
                               description="Longest request target; longer gets 414.")
    max_header_bytes: int = Field(8190, ge=256, le=65_536,
                                  description="Longest header line; longer gets 431.")
    max_headers: int = Field(100, ge=8, le=1000,
                             description="Most request headers; more gets 431.")
    drain_timeout: Duration = Field(
        30.0, description="On SIGTERM, time given to requests in flight before exiting.")
    max_request_body_bytes: int = Field(
        10 * 1024 * 1024, ge=0, le=1 << 50,
        description="Largest request body; larger gets 413 body_too_large, counted as a "
                    "streamed body arrives (default 10 MiB). A route may override it.")
    request_header_timeout: Duration = Field(
        10.0, description="A request head must arrive whole within this, else 408 "
                          "request_timeout and close; a new connection that sends nothing "
                          "is closed after it (default 10s).")
    request_body_timeout: Duration = Field(
        30.0, description="Longest wait between two reads of a request body, else 408 "
                          "request_timeout and close (default 30s).")
    idle_timeout: Duration = Field(
        75.0, description="An idle keep-alive connection is closed after this "
                          "(default 75s).")
    max_connections: int = Field(
        10_000, ge=1, le=1_000_000,
        description="Client connections at once; a connection accepted over it is closed "
                    "at once (default 10000).")
    max_requests: int = Field(
        10_000, ge=1, le=1_000_000,
        description="Requests in flight across the listener; over it 503 overloaded with "
                    "Retry-After (default 10000).")
    trace_sampled: bool = Field(
        False, description="The sampled flag of a W3C traceparent the sidecar starts for "
                           "a request that has none (default false: the application's "
                           "tracer decides).")
    orchestrator_prefix: str | None = Field(
        "/orchestrator/",
        description="Earlier design's addressing: PREFIX{cluster}/{path} goes to that "
                    "cluster with PREFIX{cluster} stripped. null turns it off.")

    _check_address = field_validator("address")(_address)

    @field_validator("orchestrator_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("/") and value.endswith("/")):
            raise ValueError("must start and end with '/'")
        return value


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(False, description="One JSON line per request on stderr.")


class UpstreamTLS(_Model):
    """How `https://` endpoints are verified. `http://` endpoints ignore it."""

    ca_file: str | None = Field(
        None, description="PEM file of the CAs to trust; default the system's CAs.")
    server_name: str | None = Field(
        None, description="Name sent as SNI and checked in the certificate; default the "
                          "endpoint's host.")
    verify: bool = Field(
        True, description="Verify the certificate and name. false accepts any certificate: "
                          "for tests only, it defeats TLS.")


class ClusterSettings(_Model):
    """How requests to a cluster's endpoints behave. Also the defaults of clusters
    created by run-time registration."""

    lb_policy: Literal["round_robin", "least_request", "random"] = Field(
        "round_robin", description="How an endpoint is picked.")
    connect_timeout: Duration = Field(1.0, description="Time to open a connection.")
    timeout: Duration = Field(
        15.0, description="Time for the whole upstream exchange, until the response "
                          "is complete. A route may override it.")
    preserve_host: bool = Field(
        True, description="Send the client's Host upstream; false sends the endpoint's.")
    max_idle_connections: int = Field(
        64, ge=0, le=10_000, description="Idle keep-alive connections kept per endpoint.")
    idle_timeout: Duration = Field(60.0, description="Idle connections are closed after this.")
    tls: UpstreamTLS = Field(default_factory=UpstreamTLS,
                             description="Verification of https:// endpoints.")
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig,
        description="Per-endpoint circuit breaker (default on, with the defaults of its "
                    "fields; enabled: false turns it off).")
    health_check: HealthCheckConfig | None = Field(
        None, description="Active HTTP health checks of every endpoint (default null: off).")
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Retries of failed attempts (default on, with the defaults of its "
                    "fields); a route's retry replaces it.")
    retry_budget: RetryBudgetConfig = Field(
        default_factory=RetryBudgetConfig,
        description="Retries allowed at once across the cluster (default on: "
                    "max(3, 0.2 x active requests)).")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="Admission limits; over one a request gets 503 at once (default on: "
                    "1024 in flight, 1024 pending).")
    panic_threshold: float = Field(
        0.5, ge=0, le=1,
        description="When fewer than this share of the endpoints pass their active health "
                    "checks, the checks are ignored for this cluster and every endpoint "
                    "is used (default 0.5; 0 never ignores them).")
    slow_start: Duration | None = Field(
        None, description="An endpoint that just became usable gets a weight ramping from "
                          "10% to 100% over this time (default null: full weight at once).")
    local_app: bool = Field(
        False, description="This cluster is the application beside the sidecar: /ready "
                           "answers 503 while none of its endpoints is healthy "
                           "(default false). Not allowed in cluster_defaults.")


class EndpointConfig(_Model):
    url: str = Field(description="Base URL: http://host:port or https://host:port "
                                 "(required).")
    id: EndpointId | None = Field(
        None, description="Unique in the cluster; default null: the URL's 'host:port'.")
    weight: Weight = Field(1, description="Relative load-balancing weight, 1-1000 "
                                          "(default 1).")
    labels: Labels = Field(
        default_factory=dict,
        description="Free-form labels (default none): at most 64, keys 1-63 characters, "
                    "values at most 255, no control characters.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_upstream_url(value)
        return value

    @property
    def endpoint_id(self) -> str:
        return self.id or parse_upstream_url(self.url).host_port


class ClusterConfig(ClusterSettings):
    name: ClusterName
    endpoints: tuple[EndpointConfig, ...] = ()


class RateLimitConfig(_Model):
    """A route's local rate limit: a token bucket per key, refilled at
    `requests_per_second` up to `burst`; a request without a token gets 429."""

    requests_per_second: float = Field(
        gt=0, le=1_000_000, description="Tokens added per second (required).")
    burst: int = Field(
        0, ge=0, le=1_000_000,
        description="Bucket size: requests allowed at once (default 0: "
                    "requests_per_second rounded up, at least 1).")
    key: str = Field(
        "none", description="Whose bucket: 'none' (one for the route), 'client_ip', or "
                            "'header:NAME' (default 'none').")
    max_keys: int = Field(
        10_000, ge=1, le=10_000_000,
        description="Buckets kept, least recently used dropped first (default 10000).")

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        if value in ("none", "client_ip"):
            return value
        name = value[7:] if value.startswith("header:") else ""
        if not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", name):
            raise ValueError("must be 'none', 'client_ip' or 'header:NAME'")
        return "header:" + name.lower()

    @property
    def bucket_size(self) -> int:
        return self.burst or max(1, math.ceil(self.requests_per_second))


class RouteConfig(_Model):
    """Requests whose path starts with `prefix` (and host, methods match) go to `cluster`."""

    name: Name | None = Field(None, description="Metric label; default the prefix.")
    prefix: str = Field("/", description="Path prefix to match; longest prefix wins.")
    host: str | None = Field(
        None, description="Only this Host (port ignored); '*.example.com' matches subdomains.")
    methods: tuple[str, ...] | None = Field(None, description="Allowed methods; null = any.")
    cluster: Name
    prefix_rewrite: str | None = Field(
        None, description="Replaces the matched prefix before forwarding.")
    timeout: Duration | None = Field(None, description="Overrides the cluster's timeout "
                                                       "(default null: the cluster's).")
    retry: RetryConfig | None = Field(
        None, description="Replaces the cluster's retry policy as a whole for this route "
                          "(default null: the cluster's).")
    retry_non_idempotent: bool = Field(
        False, description="Also retry POST, PATCH and other non-idempotent requests "
                           "(default false: only GET, HEAD, OPTIONS, TRACE, PUT, DELETE).")
    fallback: FallbackConfig | None = Field(
        None, description="What answers when the cluster cannot (default null: the error "
                          "itself).")
    security_headers: SecurityHeadersConfig | None = Field(
        None, description="Security headers set on this route's responses (default null: "
                          "none; {} sets HSTS, nosniff, DENY and no-referrer).")
    max_request_body_bytes: int | None = Field(
        None, ge=0, le=1 << 50,
        description="Largest request body on this route; larger gets 413 (default null: "
                    "the listener's).")
    rate_limit: RateLimitConfig | None = Field(
        None, description="Local rate limit, 429 over it (default null: none).")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("prefix_rewrite")
    @classmethod
    def _check_rewrite(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one method, or null for any")
        for method in value:
            if not _METHOD.match(method):
                raise ValueError(f"invalid method {method!r} (use upper case, e.g. 'GET')")
        return tuple(dict.fromkeys(value))

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^(\*\.)?[A-Za-z0-9.\-]+$", value):
            raise ValueError(f"invalid host {value!r}")
        return value.lower()

    @property
    def route_name(self) -> str:
        return self.name or self.prefix


class SidecarConfig(_Model):
    """The whole configuration of one sidecar."""

    listener: ListenerConfig = Field(default_factory=ListenerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    cluster_defaults: ClusterSettings = Field(default_factory=ClusterSettings)
    clusters: tuple[ClusterConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()


def format_location(loc: tuple[int | str, ...]) -> str:
    """("routes", 1, "cluster") -> "routes[1].cluster"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _settings_issues(settings: ClusterSettings, path: str) -> list[ConfigIssue]:
    """Checks within one cluster's settings (or cluster_defaults')."""
    issues: list[ConfigIssue] = []
    per_try = settings.retry.per_try_timeout
    if per_try is not None and per_try > settings.timeout:
        issues.append(ConfigIssue(
            f"{path}.retry.per_try_timeout",
            f"per_try_timeout {_seconds(per_try)} is over the timeout "
            f"{_seconds(settings.timeout)}, which bounds all tries together"))
    return issues


def _route_issues(route: RouteConfig, path: str,
                  clusters: Mapping[str, ClusterConfig]) -> list[ConfigIssue]:
    """Checks of a route against its cluster: fallback, and retry against timeout."""
    issues: list[ConfigIssue] = []
    cluster = clusters.get(route.cluster)
    if route.fallback is not None and route.fallback.cluster is not None:
        if route.fallback.cluster == route.cluster:
            issues.append(ConfigIssue(f"{path}.fallback.cluster",
                                      f"the fallback cluster {route.cluster!r} is the "
                                      "route's own cluster"))
        elif route.fallback.cluster not in clusters:
            issues.append(ConfigIssue(f"{path}.fallback.cluster",
                                      f"unknown cluster {route.fallback.cluster!r}"))
    if cluster is None or (route.retry is None and route.timeout is None):
        return issues  # unknown cluster (reported), or the cluster's own check covers it
    retry = route.retry or cluster.retry
    timeout = route.timeout or cluster.timeout
    per_try = retry.per_try_timeout
    if per_try is not None and per_try > timeout:
        whose = "the route's" if route.timeout is not None else f"cluster {cluster.name!r}'s"
        if route.retry is not None:
            issues.append(ConfigIssue(
                f"{path}.retry.per_try_timeout",
                f"per_try_timeout {_seconds(per_try)} is over {whose} timeout "
                f"{_seconds(timeout)}, which bounds all tries together"))
        else:
            issues.append(ConfigIssue(
                f"{path}.timeout",
                f"timeout {_seconds(timeout)} is below the per_try_timeout "
                f"{_seconds(per_try)} of cluster {cluster.name!r}'s retry; set a "
                "retry on the route too"))
    return issues


def _reference_issues(config: SidecarConfig) -> list[ConfigIssue]:
    """Checks that span fields: names unique, routes pointing at declared clusters,
    fallback clusters, retry per-try timeouts within the timeouts that bound them."""
    issues: list[ConfigIssue] = _settings_issues(config.cluster_defaults, "cluster_defaults")
    if config.cluster_defaults.local_app:
        issues.append(ConfigIssue(
            "cluster_defaults.local_app",
            "must be false: set local_app on the declared cluster of the application; "
            "clusters created by registration come and go"))
    clusters: set[str] = set()
    for i, cluster in enumerate(config.clusters):
        issues.extend(_settings_issues(cluster, f"clusters[{i}]"))
        if cluster.name in clusters:
            issues.append(ConfigIssue(f"clusters[{i}].name",
                                      f"duplicate cluster name {cluster.name!r}"))
        clusters.add(cluster.name)
        ids: set[str] = set()
        urls: set[str] = set()
        for j, endpoint in enumerate(cluster.endpoints):
            url = parse_upstream_url(endpoint.url).url
            if endpoint.endpoint_id in ids:
                issues.append(ConfigIssue(f"clusters[{i}].endpoints[{j}].id",
                                          f"duplicate endpoint id {endpoint.endpoint_id!r}"))
            if url in urls:
                issues.append(ConfigIssue(f"clusters[{i}].endpoints[{j}].url",
                                          f"duplicate endpoint URL {url!r} in the cluster"))
            ids.add(endpoint.endpoint_id)
            urls.add(url)
    by_name = {c.name: c for c in reversed(config.clusters)}  # the first of duplicates
    route_names: set[str] = set()
    for i, route in enumerate(config.routes):
        if route.cluster not in clusters:
            issues.append(ConfigIssue(f"routes[{i}].cluster",
                                      f"unknown cluster {route.cluster!r}"))
        if route.route_name in route_names:
            issues.append(ConfigIssue(f"routes[{i}].name",
                                      f"duplicate route name {route.route_name!r}"))
        route_names.add(route.route_name)
        issues.extend(_route_issues(route, f"routes[{i}]", by_name))
    return issues


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> SidecarConfig:
    """Validate rendered config data; raise ConfigError listing every issue with its path."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, [ConfigIssue("", "the configuration must be a JSON object")])
    try:
        config = SidecarConfig.model_validate(data)
    except ValidationError as exc:
        issues = [ConfigIssue(format_location(tuple(err["loc"])),
                              err["msg"].removeprefix("Value error, "))
                  for err in exc.errors()]
        raise ConfigError(source, issues) from None
    issues = _reference_issues(config)
    if issues:
        raise ConfigError(source, issues)
    return config


def config_version(config: SidecarConfig) -> str:
    """Content hash of the validated config: equal behaviour, equal version."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()

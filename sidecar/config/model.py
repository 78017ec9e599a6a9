"""The configuration model: frozen pydantic models, validation with located errors, version hash.

A `SidecarConfig` is an immutable snapshot. A reload builds a new one and swaps a
single reference; requests in flight keep the snapshot they started with.

Durations are seconds, given as a number (`1.5`) or a string with a unit
(`"250ms"`, `"1.5s"`, `"2m"`, `"1h"`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from sidecar.config.types import Duration, Name, parse_duration
from sidecar.config.types import FrozenModel as _Model
from sidecar.core.addresses import parse_host_port, parse_upstream_url
from sidecar.errors import ConfigError, ConfigIssue

__all__ = [
    "AdminConfig",
    "ClusterConfig",
    "ClusterSettings",
    "EndpointConfig",
    "ListenerConfig",
    "LoggingConfig",
    "RouteConfig",
    "SidecarConfig",
    "UpstreamTLS",
    "config_version",
    "format_location",
    "parse_config",
    "parse_duration",
]

_METHOD = re.compile(r"^[A-Z][A-Z0-9_\-]{0,31}$")



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


class AdminConfig(_Model):
    """The admin plane: gRPC API and the HTTP port for /metrics, /live, /ready."""

    grpc_address: str = Field("127.0.0.1:9901", description="HOST:PORT of AdminService.")
    http_address: str = Field("127.0.0.1:9902",
                              description="HOST:PORT of /metrics, /live and /ready.")
    state_file: str | None = Field(
        None, description="File keeping endpoints registered at run time across restarts.")

    _check_addresses = field_validator("grpc_address", "http_address")(_address)


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


class EndpointConfig(_Model):
    url: str = Field(description="Base URL: http://host:port or https://host:port.")
    id: Name | None = Field(None, description="Unique in the cluster; default 'host:port'.")
    weight: int = Field(1, ge=1, le=1000)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_upstream_url(value)
        return value

    @property
    def endpoint_id(self) -> str:
        return self.id or parse_upstream_url(self.url).host_port


class ClusterConfig(ClusterSettings):
    name: Name
    endpoints: tuple[EndpointConfig, ...] = ()


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
    timeout: Duration | None = Field(None, description="Overrides the cluster's timeout.")

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

    def cluster(self, name: str) -> ClusterConfig | None:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        return None


def format_location(loc: tuple[int | str, ...]) -> str:
    """("routes", 1, "cluster") -> "routes[1].cluster"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _reference_issues(config: SidecarConfig) -> list[ConfigIssue]:
    """Checks that span fields: names unique, routes pointing at declared clusters."""
    issues: list[ConfigIssue] = []
    clusters: set[str] = set()
    for i, cluster in enumerate(config.clusters):
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
    names: set[str] = set()
    for i, route in enumerate(config.routes):
        if route.cluster not in clusters:
            issues.append(ConfigIssue(f"routes[{i}].cluster",
                                      f"unknown cluster {route.cluster!r}"))
        if route.route_name in names:
            issues.append(ConfigIssue(f"routes[{i}].name",
                                      f"duplicate route name {route.route_name!r}"))
        names.add(route.route_name)
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

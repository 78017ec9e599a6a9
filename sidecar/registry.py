"""The endpoint registry: which endpoints each cluster has, their status, and every change.

Endpoints come from two sources: the configuration file (`CONFIG`, reconciled on
every reload) and the admin API (`ADMIN`, kept across reloads and, with a state
file, across restarts). Every change is an `RegistryEvent` with a sequence
number, delivered synchronously to subscribers (the admin WatchStatus streams,
the data plane's pool cleanup).

The data plane reads `ClusterMembers.routable`, a tuple rebuilt on each change
(copy-on-write), so the hot path never sees a list being mutated and never locks.

Every mutating call validates everything first and changes nothing on error.
"""

from __future__ import annotations

import builtins
import enum
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.model import ClusterSettings, SidecarConfig
from sidecar.config.types import NAME_PATTERN
from sidecar.core.addresses import UpstreamAddress, parse_upstream_url
from sidecar.core.clock import Clock, SystemClock
from sidecar.errors import EndpointExists, EndpointNotFound, EndpointNotRemovable, InvalidEndpoint

__all__ = [
    "ClusterMembers",
    "ConfigInfo",
    "Endpoint",
    "EndpointInfo",
    "EndpointSource",
    "EndpointStatus",
    "EventKind",
    "Registry",
    "RegistryEvent",
]

log = logging.getLogger("sidecar.registry")
_NAME = re.compile(NAME_PATTERN)
_ENDPOINT_ID = re.compile(r"[A-Za-z0-9_\[\]][A-Za-z0-9_.:\[\]\-]{0,127}")
_MAX_LABEL_KEY, _MAX_LABEL_VALUE, _MAX_LABELS = 63, 255, 64


class EndpointStatus(enum.IntEnum):
    """Numbers equal the proto enum's, so conversion is a cast."""

    ACTIVE = 1
    UNHEALTHY = 2
    DISABLED = 3
    DRAINING = 4


class EndpointSource(enum.IntEnum):
    CONFIG = 1
    ADMIN = 2


class EventKind(enum.Enum):
    ENDPOINT_ADDED = "endpoint_added"
    ENDPOINT_REMOVED = "endpoint_removed"
    ENDPOINT_STATUS_CHANGED = "endpoint_status_changed"
    CONFIG_LOADED = "config_loaded"


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """An immutable view of an endpoint at one moment (what the admin API shows)."""

    cluster: str
    id: str
    url: str
    weight: int
    status: EndpointStatus
    source: EndpointSource
    labels: Mapping[str, str]
    create_time: float
    update_time: float
    active_requests: int


@dataclass(eq=False, slots=True)
class Endpoint:
    """A live endpoint. `active_requests` and `pool` belong to the data plane."""

    cluster: str
    id: str
    address: UpstreamAddress
    weight: int
    status: EndpointStatus
    source: EndpointSource
    labels: Mapping[str, str]
    create_time: float
    update_time: float
    active_requests: int = 0
    pool: Any = None

    def info(self) -> EndpointInfo:
        return EndpointInfo(self.cluster, self.id, self.address.url, self.weight, self.status,
                            self.source, dict(self.labels), self.create_time, self.update_time,
                            self.active_requests)


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    version: str
    source: str
    load_time: float
    cluster_count: int
    route_count: int


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    sequence: int
    time: float
    kind: EventKind
    endpoint: EndpointInfo | None = None
    previous_status: EndpointStatus | None = None
    reason: str = ""
    config: ConfigInfo | None = None


@dataclass(eq=False, slots=True)
class ClusterMembers:
    """One cluster's endpoints. `routable` is what the load balancer picks from."""

    name: str
    settings: ClusterSettings
    declared: bool  # in the config file; otherwise created by a registration
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    routable: tuple[Endpoint, ...] = ()

    def rebuild(self) -> None:
        self.routable = tuple(ep for ep in sorted(self.endpoints.values(), key=lambda e: e.id)
                              if ep.status is EndpointStatus.ACTIVE)


Listener = Callable[[RegistryEvent], None]


class Registry:
    """Endpoints by cluster, with validation, events and an optional state file."""

    def __init__(self, clock: Clock | None = None, state_file: str | None = None) -> None:
        self._clock = clock or SystemClock()
        self._state_file = state_file
        self.clusters: dict[str, ClusterMembers] = {}
        self.config_info: ConfigInfo | None = None
        self._defaults = ClusterSettings()
        self._sequence = 0
        self._listeners: list[Listener] = []

    # ------------------------------------------------------------ events

    @property
    def sequence(self) -> int:
        return self._sequence

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every event from now on; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        self._sequence += 1
        event = RegistryEvent(self._sequence, self._clock.wall(), kind, **fields)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken subscriber must not break the registry
                log.exception("registry listener failed")

    # ------------------------------------------------------------ queries

    def get(self, cluster: str, endpoint_id: str) -> EndpointInfo:
        return self._find(cluster, endpoint_id).info()

    def list(self, cluster: str | None = None,
             status: EndpointStatus | None = None) -> list[EndpointInfo]:
        """Endpoints ordered by (cluster, id), optionally filtered."""
        names = [cluster] if cluster else sorted(self.clusters)
        out: list[EndpointInfo] = []
        for name in names:
            members = self.clusters.get(name)
            if members is None:
                continue
            for endpoint_id in sorted(members.endpoints):
                endpoint = members.endpoints[endpoint_id]
                if status is None or endpoint.status is status:
                    out.append(endpoint.info())
        return out

    def snapshot(self, cluster: str | None = None
                 ) -> tuple[builtins.list[EndpointInfo], ConfigInfo | None, int]:
        return self.list(cluster), self.config_info, self._sequence

    def _find(self, cluster: str, endpoint_id: str) -> Endpoint:
        members = self.clusters.get(cluster)
        endpoint = members.endpoints.get(endpoint_id) if members else None
        if endpoint is None:
            raise EndpointNotFound(f"no endpoint {endpoint_id!r} in cluster {cluster!r}")
        return endpoint

    # ------------------------------------------------------------ admin mutations

    def register(self, cluster: str, url: str, *, endpoint_id: str = "", weight: int = 1,
                 status: EndpointStatus = EndpointStatus.ACTIVE,
                 labels: Mapping[str, str] | None = None) -> EndpointInfo:
        """Add an ADMIN endpoint; the cluster is created if the config does not declare it."""
        address, endpoint_id, labels = _validate(cluster, url, endpoint_id, weight, labels)
        if status not in (EndpointStatus.ACTIVE, EndpointStatus.DISABLED):
            raise InvalidEndpoint("status on registration must be ACTIVE or DISABLED")
        members = self.clusters.get(cluster)
        if members is not None:
            _check_unique(members, endpoint_id, address)
        else:
            members = ClusterMembers(cluster, self._defaults, declared=False)
            self.clusters[cluster] = members
        now = self._clock.wall()
        endpoint = Endpoint(cluster, endpoint_id, address, weight, status,
                            EndpointSource.ADMIN, labels, now, now)
        members.endpoints[endpoint_id] = endpoint
        members.rebuild()
        self._save_state()
        info = endpoint.info()
        self._emit(EventKind.ENDPOINT_ADDED, endpoint=info, reason="registered")
        return info

    def deregister(self, cluster: str, endpoint_id: str) -> EndpointInfo:
        endpoint = self._find(cluster, endpoint_id)
        if endpoint.source is EndpointSource.CONFIG:
            raise EndpointNotRemovable(
                f"endpoint {endpoint_id!r} of cluster {cluster!r} comes from the configuration "
                "file; remove it there")
        self._remove(endpoint, "deregistered")
        self._save_state()
        return endpoint.info()

    def set_status(self, cluster: str, endpoint_id: str, status: EndpointStatus,
                   reason: str) -> EndpointInfo:
        endpoint = self._find(cluster, endpoint_id)
        previous = endpoint.status
        if previous is status:
            return endpoint.info()
        endpoint.status = status
        endpoint.update_time = self._clock.wall()
        self.clusters[cluster].rebuild()
        if endpoint.source is EndpointSource.ADMIN:
            self._save_state()
        info = endpoint.info()
        self._emit(EventKind.ENDPOINT_STATUS_CHANGED, endpoint=info, previous_status=previous,
                   reason=reason)
        return info

    def _remove(self, endpoint: Endpoint, reason: str) -> None:
        members = self.clusters[endpoint.cluster]
        del members.endpoints[endpoint.id]
        members.rebuild()
        if not members.declared and not members.endpoints:
            del self.clusters[endpoint.cluster]
        self._emit(EventKind.ENDPOINT_REMOVED, endpoint=endpoint.info(), reason=reason)

    # ------------------------------------------------------------ configuration

    def apply_config(self, config: SidecarConfig, info: ConfigInfo) -> None:
        """Reconcile with a validated config: CONFIG endpoints follow the file, ADMIN ones stay.

        An ADMIN endpoint whose id or URL the new file now declares in the same
        cluster gives way to the file's. A cluster the file stops declaring keeps
        its ADMIN endpoints, with the cluster defaults.
        """
        self._defaults = config.cluster_defaults
        now = self._clock.wall()
        wanted = {c.name: c for c in config.clusters}
        admin_changed = False
        # Clusters no longer declared: drop CONFIG endpoints, keep ADMIN ones as dynamic.
        for name, members in list(self.clusters.items()):
            if name in wanted:
                continue
            members.declared = False  # so removing its last endpoint removes the cluster
            members.settings = self._defaults
            for endpoint in [e for e in members.endpoints.values()
                             if e.source is EndpointSource.CONFIG]:
                self._remove(endpoint, "removed from config")
            if not members.endpoints:
                self.clusters.pop(name, None)
        for name, cluster in wanted.items():
            found = self.clusters.get(name)
            if found is None:
                found = self.clusters[name] = ClusterMembers(name, cluster, declared=True)
            members = found
            members.declared = True
            members.settings = cluster
            declared = {e.endpoint_id: e for e in cluster.endpoints}
            declared_urls = {parse_upstream_url(e.url) for e in cluster.endpoints}
            for endpoint in list(members.endpoints.values()):
                keep = declared.get(endpoint.id)
                if endpoint.source is EndpointSource.CONFIG:
                    if keep is None or parse_upstream_url(keep.url) != endpoint.address:
                        self._remove(endpoint, "removed from config")
                elif endpoint.id in declared or endpoint.address in declared_urls:
                    self._remove(endpoint, "replaced by an endpoint from config")
                    admin_changed = True
            for endpoint_id, spec in declared.items():
                current = members.endpoints.get(endpoint_id)
                if current is not None:
                    current.weight = spec.weight
                    current.labels = dict(spec.labels)
                    continue
                endpoint = Endpoint(name, endpoint_id, parse_upstream_url(spec.url), spec.weight,
                                    EndpointStatus.ACTIVE, EndpointSource.CONFIG,
                                    dict(spec.labels), now, now)
                members.endpoints[endpoint_id] = endpoint
                self._emit(EventKind.ENDPOINT_ADDED, endpoint=endpoint.info(), reason="config")
            members.rebuild()
        self.config_info = info
        if admin_changed:
            # Only then: at start-up, before load_state(), saving would wipe the
            # registrations of the previous run.
            self._save_state()
        self._emit(EventKind.CONFIG_LOADED, config=info)

    # ------------------------------------------------------------ state file

    def load_state(self) -> int:
        """Re-register the ADMIN endpoints saved by an earlier run; returns how many."""
        if not self._state_file or not os.path.exists(self._state_file):
            return 0
        try:
            with open(self._state_file, encoding="utf-8") as f:
                saved = json.load(f)["endpoints"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("state file unreadable, ignored", extra={"path": self._state_file,
                                                              "error": str(exc)})
            return 0
        restored = 0
        for item in saved if isinstance(saved, list) else []:
            try:
                self.register(item["cluster"], item["url"], endpoint_id=item["id"],
                              weight=item.get("weight", 1),
                              status=EndpointStatus.DISABLED if item.get("status") == "DISABLED"
                              else EndpointStatus.ACTIVE,
                              labels=item.get("labels") or {})
                restored += 1
            except (KeyError, TypeError, ValueError, EndpointExists, InvalidEndpoint) as exc:
                log.warning("saved endpoint not restored", extra={"endpoint": item,
                                                                 "error": str(exc)})
        return restored

    def _save_state(self) -> None:
        if not self._state_file:
            return
        endpoints = [{"cluster": e.cluster, "id": e.id, "url": e.address.url, "weight": e.weight,
                      "status": e.status.name, "labels": dict(e.labels)}
                     for members in self.clusters.values() for e in members.endpoints.values()
                     if e.source is EndpointSource.ADMIN]
        directory = os.path.dirname(os.path.abspath(self._state_file))
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sidecar-state-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "endpoints": endpoints}, f, indent=1, sort_keys=True)
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.error("state file not written", extra={"path": self._state_file,
                                                      "error": str(exc)})


def _validate(cluster: str, url: str, endpoint_id: str, weight: int,
              labels: Mapping[str, str] | None) -> tuple[UpstreamAddress, str, dict[str, str]]:
    if not cluster:
        raise InvalidEndpoint("cluster is required")
    if not _NAME.fullmatch(cluster):
        raise InvalidEndpoint(f"invalid cluster name {cluster!r}: use letters, digits, "
                              "'_', '.', '-' (at most 63)")
    try:
        address = parse_upstream_url(url)
    except ValueError as exc:
        raise InvalidEndpoint(f"url: {exc}") from None
    endpoint_id = endpoint_id or address.host_port
    if not _ENDPOINT_ID.fullmatch(endpoint_id):
        raise InvalidEndpoint(f"invalid endpoint id {endpoint_id!r}")
    if not 1 <= weight <= 1000:
        raise InvalidEndpoint(f"weight {weight} is out of range 1-1000")
    clean = dict(labels or {})
    if len(clean) > _MAX_LABELS:
        raise InvalidEndpoint(f"at most {_MAX_LABELS} labels")
    for key, value in clean.items():
        if not key or len(key) > _MAX_LABEL_KEY or len(value) > _MAX_LABEL_VALUE:
            raise InvalidEndpoint(f"label {key!r}: keys are 1-63 characters, values at most 255")
    return address, endpoint_id, clean


def _check_unique(members: ClusterMembers, endpoint_id: str, address: UpstreamAddress) -> None:
    if endpoint_id in members.endpoints:
        raise EndpointExists(f"endpoint {endpoint_id!r} already exists in cluster "
                             f"{members.name!r}")
    for other in members.endpoints.values():
        if other.address == address:
            raise EndpointExists(f"{address.url} is already in cluster {members.name!r} "
                                 f"as endpoint {other.id!r}")


"""The endpoint registry: which endpoints each cluster has, and what operators set for them.

Endpoints come from two sources: the configuration file (`CONFIG`, reconciled on
every reload) and the admin API (`ADMIN`, kept across reloads and, with a state
file, across restarts). The registry owns membership and operator intent
(`OperatorStatus`: ACTIVE, DISABLED, DRAINING), which is what the state file keeps.
What the sidecar observes at run time (requests in flight, pools, health, breakers)
lives in each endpoint's `Host`, grouped per cluster in a `HostSet`
(`sidecar.core.hosts`); it is never persisted, and it survives reloads because a
reload changes clusters and endpoints in place.

Every change is published on the `EventBus` (`sidecar.events`), synchronously,
with its sequence number. The API's `EndpointStatus` is computed from intent and
observation; `observed()` is how an observer (breaker, health checker) says that
it changed what it observed, so the status event goes out.

Every mutating call validates everything first and changes nothing on error.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config.model import ClusterSettings, SidecarConfig
from sidecar.core.addresses import UpstreamAddress, parse_upstream_url
from sidecar.core.clock import Clock, SystemClock
from sidecar.core.hosts import (
    EndpointStatus,
    Host,
    HostEvent,
    HostEventKind,
    HostSet,
    OperatorStatus,
)
from sidecar.core.names import check_cluster_name, check_endpoint_id, check_labels, check_weight
from sidecar.errors import EndpointExists, EndpointNotFound, EndpointNotRemovable, InvalidEndpoint
from sidecar.events import EventBus, EventKind

__all__ = [
    "ClusterMembers",
    "ConfigInfo",
    "Endpoint",
    "EndpointInfo",
    "EndpointSource",
    "EndpointStatus",
    "OperatorStatus",
    "Registry",
]

log = logging.getLogger("sidecar.registry")
# Cluster names, endpoint ids, weights and labels: sidecar.core.names, the rules of
# the config model too.


class EndpointSource(enum.IntEnum):
    CONFIG = 1
    ADMIN = 2


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
    """A registered endpoint: identity and operator intent. Runtime state is in `host`."""

    cluster: str
    id: str
    address: UpstreamAddress
    weight: int
    operator: OperatorStatus
    source: EndpointSource
    labels: Mapping[str, str]
    create_time: float
    update_time: float
    host: Host

    @property
    def status(self) -> EndpointStatus:
        return self.host.status

    def info(self) -> EndpointInfo:
        return EndpointInfo(self.cluster, self.id, self.address.url, self.weight, self.status,
                            self.source, dict(self.labels), self.create_time, self.update_time,
                            self.host.active_requests)


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    version: str
    source: str
    load_time: float
    cluster_count: int
    route_count: int


@dataclass(eq=False, slots=True)
class ClusterMembers:
    """One cluster: its endpoints (intent) and its `HostSet` (runtime)."""

    name: str
    settings: ClusterSettings
    declared: bool  # in the config file; otherwise created by a registration
    hosts: HostSet
    endpoints: dict[str, Endpoint]

    @property
    def routable(self) -> tuple[Host, ...]:
        """What the load balancer picks from (see `HostSet.usable`)."""
        return self.hosts.usable

    def configure(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.hosts.configure(settings)




class Registry:
    """Endpoints by cluster, with validation, events and an optional state file."""

    def __init__(self, clock: Clock | None = None, state_file: str | None = None,
                 bus: EventBus | None = None) -> None:
        self._clock = clock or SystemClock()
        self._state_file = state_file
        self.bus = bus or EventBus(self._clock)
        self.clusters: dict[str, ClusterMembers] = {}
        self.config_info: ConfigInfo | None = None
        self._defaults = ClusterSettings()

    @property
    def sequence(self) -> int:
        return self.bus.sequence

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        self.bus.publish(kind, **fields)

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
        return self.list(cluster), self.config_info, self.bus.sequence

    def endpoint(self, cluster: str, endpoint_id: str) -> Endpoint:
        """The live endpoint (raises EndpointNotFound)."""
        return self._find(cluster, endpoint_id)

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
            members = self._members(cluster, self._defaults, declared=False)
            self.clusters[cluster] = members
        endpoint = self._add(members, endpoint_id, address, weight, OperatorStatus(status),
                             EndpointSource.ADMIN, labels)
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
        """Set the operator's status: ACTIVE, DISABLED or DRAINING (UNHEALTHY is observed,
        never set)."""
        endpoint = self._find(cluster, endpoint_id)
        if status is EndpointStatus.UNHEALTHY:
            raise InvalidEndpoint("UNHEALTHY is what the sidecar observes; set ACTIVE, "
                                  "DISABLED or DRAINING")
        operator = OperatorStatus(status)
        if endpoint.operator is operator:
            return endpoint.info()
        endpoint.operator = endpoint.host.operator = operator
        endpoint.update_time = self._clock.wall()
        # The status event, if the API status changed, comes from the rebuild.
        self.clusters[cluster].hosts.rebuild(reason)
        if endpoint.source is EndpointSource.ADMIN:
            self._save_state()
        return endpoint.info()

    def observe(self, cluster: str, endpoint_id: str, *, ok: bool,
                reason: str) -> EndpointInfo:
        """Take an endpoint out of rotation (ok=False: its breaker is tripped) or put it
        back (ok=True: its breaker is reset), as an observer that knows better would."""
        endpoint = self._find(cluster, endpoint_id)
        hosts = self.clusters[cluster].hosts
        if ok:
            hosts.reset(endpoint.host, reason)
        else:
            hosts.trip(endpoint.host, reason)
        return endpoint.info()

    # ------------------------------------------------------------ runtime events

    def _members(self, name: str, settings: ClusterSettings,
                 declared: bool) -> ClusterMembers:
        hosts = HostSet(name, settings, clock=self._clock, listener=self._on_host_event)
        return ClusterMembers(name, settings, declared, hosts, {})

    def _on_host_event(self, event: HostEvent) -> None:
        """What a HostSet decided, published with the endpoint's current view."""
        info = None
        if event.host is not None:
            members = self.clusters.get(event.cluster)
            endpoint = members.endpoints.get(event.host.id) if members else None
            if endpoint is None or endpoint.host is not event.host:
                return  # being added or removed: its own event says it
            info = endpoint.info()
        kind = event.kind
        if kind is HostEventKind.STATUS:
            assert event.host is not None
            endpoint = self.clusters[event.cluster].endpoints[event.host.id]
            endpoint.update_time = self._clock.wall()
            info = endpoint.info()
            self._emit(EventKind.ENDPOINT_STATUS_CHANGED, endpoint=info,
                       previous_status=event.previous_status, reason=event.reason)
        elif kind is HostEventKind.BREAKER:
            self._emit(EventKind.BREAKER_CHANGED, endpoint=info, reason=event.reason,
                       breaker=event.transition)
        elif kind is HostEventKind.HEALTH:
            self._emit(EventKind.HEALTH_CHANGED, endpoint=info, reason=event.reason,
                       health=event.health)
        else:
            self._emit(EventKind.PANIC_CHANGED, cluster=event.cluster, reason=event.reason,
                       panic=event.panic)

    def _add(self, members: ClusterMembers, endpoint_id: str, address: UpstreamAddress,
             weight: int, operator: OperatorStatus, source: EndpointSource,
             labels: Mapping[str, str]) -> Endpoint:
        now = self._clock.wall()
        host = members.hosts.new_host(endpoint_id, address, weight, operator)
        endpoint = Endpoint(members.name, endpoint_id, address, weight, operator, source,
                            labels, now, now, host)
        members.endpoints[endpoint_id] = endpoint
        members.hosts.add(host)
        return endpoint

    def _remove(self, endpoint: Endpoint, reason: str) -> None:
        members = self.clusters[endpoint.cluster]
        del members.endpoints[endpoint.id]
        members.hosts.remove(endpoint.id)
        # Idle connections close now; requests in flight keep theirs until released.
        endpoint.host.close_pool()
        if not members.declared and not members.endpoints:
            del self.clusters[endpoint.cluster]
        self._emit(EventKind.ENDPOINT_REMOVED, endpoint=endpoint.info(), reason=reason)

    # ------------------------------------------------------------ configuration

    def apply_config(self, config: SidecarConfig, info: ConfigInfo) -> None:
        """Reconcile with a validated config: CONFIG endpoints follow the file, ADMIN ones stay.

        An ADMIN endpoint whose id or URL the new file now declares in the same
        cluster gives way to the file's. A cluster the file stops declaring keeps
        its ADMIN endpoints, with the cluster defaults. Clusters and endpoints that
        stay are changed in place, so their runtime state (pools, counters,
        breakers) survives.
        """
        self._defaults = config.cluster_defaults
        wanted = {c.name: c for c in config.clusters}
        admin_changed = False
        # Clusters no longer declared: drop CONFIG endpoints, keep ADMIN ones as dynamic.
        for name, members in list(self.clusters.items()):
            if name in wanted:
                continue
            members.declared = False  # so removing its last endpoint removes the cluster
            members.configure(self._defaults)
            for endpoint in [e for e in members.endpoints.values()
                             if e.source is EndpointSource.CONFIG]:
                self._remove(endpoint, "removed from config")
            if not members.endpoints:
                self.clusters.pop(name, None)
        for name, cluster in wanted.items():
            found = self.clusters.get(name)
            if found is None:
                found = self.clusters[name] = self._members(name, cluster, declared=True)
            members = found
            members.declared = True
            members.configure(cluster)
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
                    current.weight = current.host.weight = spec.weight
                    current.labels = dict(spec.labels)
                    continue
                endpoint = self._add(members, endpoint_id, parse_upstream_url(spec.url),
                                     spec.weight, OperatorStatus.ACTIVE, EndpointSource.CONFIG,
                                     dict(spec.labels))
                self._emit(EventKind.ENDPOINT_ADDED, endpoint=endpoint.info(), reason="config")
            members.hosts.rebuild("config")
        self.config_info = info
        if admin_changed:
            # Only then: at start-up, before load_state(), saving would wipe the
            # registrations of the previous run.
            self._save_state()
        self._emit(EventKind.CONFIG_LOADED, config=info)

    # ------------------------------------------------------------ state file

    def load_state(self) -> int:
        """Re-register the ADMIN endpoints saved by an earlier run; returns how many.

        A state file that cannot be read or parsed is never fatal: it is renamed aside
        (`<path>.corrupt-<UTC time>`, kept for inspection), logged and published as a
        STATE_FILE_CORRUPT event, and the sidecar starts without its registrations.
        Entries that are well-formed JSON but invalid are skipped one by one."""
        if not self._state_file or not os.path.exists(self._state_file):
            return 0
        try:
            with open(self._state_file, encoding="utf-8") as f:
                saved = json.load(f)["endpoints"]
            if not isinstance(saved, list):
                raise TypeError(f"endpoints is a {type(saved).__name__}, not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._set_aside(exc)
            return 0
        restored = 0
        for item in saved:
            try:
                saved_status = item["status"] if "status" in item else "ACTIVE"
                info = self.register(
                    item["cluster"], item["url"], endpoint_id=item["id"],
                    weight=item.get("weight", 1),
                    status=EndpointStatus.DISABLED if saved_status == "DISABLED"
                    else EndpointStatus.ACTIVE,
                    labels=item.get("labels") or {})
                if saved_status == "DRAINING":  # an operator's drain outlives a restart
                    self.set_status(info.cluster, info.id, EndpointStatus.DRAINING,
                                    "restored from the state file")
                restored += 1
            except (KeyError, TypeError, ValueError, AttributeError, EndpointExists,
                    InvalidEndpoint) as exc:
                log.warning("saved endpoint not restored", extra={"endpoint": item,
                                                                 "error": str(exc)})
        return restored

    def _set_aside(self, error: BaseException) -> None:
        """Rename the unreadable state file aside; report it. Never raises."""
        path = str(self._state_file)
        what = f"{type(error).__name__}: {error}" if isinstance(error, KeyError) else str(error)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.wall()))
        moved_to = f"{path}.corrupt-{stamp}"
        n = 1
        while os.path.lexists(moved_to):
            n += 1
            moved_to = f"{path}.corrupt-{stamp}-{n}"
        try:
            os.rename(path, moved_to)
            _fsync_directory(os.path.dirname(os.path.abspath(path)))
        except OSError as exc:
            log.error("state file could not be renamed aside",
                      extra={"path": path, "error": str(exc)})
            moved_to = ""
        log.error("state file unreadable, moved aside; starting without its endpoints",
                  extra={"path": path, "moved_to": moved_to, "error": what})
        self._emit(EventKind.STATE_FILE_CORRUPT, source=path, moved_to=moved_to, reason=what)

    def _save_state(self) -> None:
        """Write the ADMIN endpoints: a temporary file, fsynced, renamed over the state
        file, then the directory fsynced, so a crash leaves the old file or the new."""
        if not self._state_file:
            return
        endpoints = [{"cluster": e.cluster, "id": e.id, "url": e.address.url, "weight": e.weight,
                      "status": e.operator.name, "labels": dict(e.labels)}
                     for members in self.clusters.values() for e in members.endpoints.values()
                     if e.source is EndpointSource.ADMIN]
        directory = os.path.dirname(os.path.abspath(self._state_file))
        tmp = ""
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sidecar-state-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "endpoints": endpoints}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_file)
            tmp = ""
            _fsync_directory(directory)
        except OSError as exc:
            log.error("state file not written", extra={"path": self._state_file,
                                                      "error": str(exc)})
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def update(self, cluster: str, endpoint_id: str, *, weight: int | None = None,
               labels: Mapping[str, str] | None = None) -> EndpointInfo:
        """Change an endpoint's weight and/or labels (None: unchanged), validated first.
        A CONFIG endpoint gets the file's values back on the next reload."""
        endpoint = self._find(cluster, endpoint_id)
        try:
            if weight is not None:
                check_weight(weight)
            clean = check_labels(labels) if labels is not None else None
        except ValueError as exc:
            raise InvalidEndpoint(str(exc)) from None
        if weight is not None:
            endpoint.weight = endpoint.host.weight = weight
        if clean is not None:
            endpoint.labels = clean
        endpoint.update_time = self._clock.wall()
        # A status event comes from the rebuild only if the status changed (it cannot here).
        self.clusters[cluster].hosts.rebuild("updated")
        if endpoint.source is EndpointSource.ADMIN:
            self._save_state()
        return endpoint.info()


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _validate(cluster: str, url: str, endpoint_id: str, weight: int,
              labels: Mapping[str, str] | None) -> tuple[UpstreamAddress, str, dict[str, str]]:
    """The rules of sidecar.core.names, as for endpoints in the config file. An empty
    `endpoint_id` means the default, the URL's "host:port" (valid by construction)."""
    try:
        check_cluster_name(cluster)
        try:
            address = parse_upstream_url(url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if endpoint_id:
            check_endpoint_id(endpoint_id)
        check_weight(weight)
        clean = check_labels(labels)
    except ValueError as exc:
        raise InvalidEndpoint(str(exc)) from None
    return address, endpoint_id or address.host_port, clean


def _check_unique(members: ClusterMembers, endpoint_id: str, address: UpstreamAddress) -> None:
    if endpoint_id in members.endpoints:
        raise EndpointExists(f"endpoint {endpoint_id!r} already exists in cluster "
                             f"{members.name!r}")
    for other in members.endpoints.values():
        if other.address == address:
            raise EndpointExists(f"{address.url} is already in cluster {members.name!r} "
                                 f"as endpoint {other.id!r}")


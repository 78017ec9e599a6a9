"""Runtime state of endpoints: one `Host` per endpoint, one `HostSet` per cluster.

The registry owns *which* endpoints exist and what an operator set for them
(`OperatorStatus`: ACTIVE, DISABLED, DRAINING; persisted). A `Host` owns what the
sidecar *observed* and uses at run time (requests in flight, its connection pool,
and the resilience state: breaker, health); none of it is persisted. A `HostSet`
holds a cluster's hosts, its balancer, and `usable`: the tuple the balancer picks
from.

Theory of operation
-------------------
* `usable` is rebuilt (copy-on-write) whenever anything that decides it changes, so
  the hot path reads a tuple, takes no lock and never sees a list being mutated.
* A HostSet and its Hosts live as long as the cluster and endpoint do in the
  registry: a config reload changes their settings in place, so counters, pools and
  breaker state survive it. The balancer is rebuilt only when `lb_policy` changes.
* The API's `EndpointStatus` is computed, never stored: the operator's status wins
  (DISABLED, DRAINING); an ACTIVE endpoint the sidecar observed failing is UNHEALTHY.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from typing import Protocol

from sidecar.config.model import ClusterSettings
from sidecar.core.addresses import UpstreamAddress
from sidecar.core.balancer import Balancer, make_balancer

__all__ = ["EndpointStatus", "Host", "HostSet", "OperatorStatus"]


class EndpointStatus(enum.IntEnum):
    """What the admin API shows. Numbers equal the proto enum's, so conversion is a cast."""

    ACTIVE = 1
    UNHEALTHY = 2
    DISABLED = 3
    DRAINING = 4


class OperatorStatus(enum.IntEnum):
    """What an operator (or the config) set. Numbers equal `EndpointStatus`'s."""

    ACTIVE = 1
    DISABLED = 3
    DRAINING = 4


class _Closeable(Protocol):
    def close(self) -> None: ...


class Host:
    """One endpoint at run time. The data plane writes `active_requests` and `pool`."""

    __slots__ = ("cluster", "id", "address", "weight", "operator", "active_requests", "pool",
                 "observed_ok", "observed_reason")

    def __init__(self, cluster: str, endpoint_id: str, address: UpstreamAddress, weight: int,
                 operator: OperatorStatus = OperatorStatus.ACTIVE) -> None:
        self.cluster = cluster
        self.id = endpoint_id
        self.address = address
        self.weight = weight
        self.operator = operator
        self.active_requests = 0
        #: The endpoint's connection pool, made by the data plane on first use.
        self.pool: _Closeable | None = None
        #: False while what the sidecar observed (health checks, breaker) keeps the
        #: endpoint out of rotation; `observed_reason` says why.
        self.observed_ok = True
        self.observed_reason = ""

    @property
    def status(self) -> EndpointStatus:
        if self.operator is not OperatorStatus.ACTIVE:
            return EndpointStatus(self.operator)
        return EndpointStatus.ACTIVE if self.observed_ok else EndpointStatus.UNHEALTHY

    def close_pool(self) -> None:
        """Close idle connections now; connections in use close when released."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    def __repr__(self) -> str:
        return f"<Host {self.cluster}/{self.id} {self.status.name} active={self.active_requests}>"


class HostSet:
    """One cluster's hosts, and the tuple of those requests may go to."""

    __slots__ = ("name", "settings", "hosts", "usable", "_balancer", "_policy", "_rng")

    def __init__(self, name: str, settings: ClusterSettings,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.settings = settings
        self.hosts: dict[str, Host] = {}
        self.usable: tuple[Host, ...] = ()
        self._rng = rng
        self._policy = settings.lb_policy
        self._balancer: Balancer = make_balancer(settings.lb_policy, rng)

    def configure(self, settings: ClusterSettings) -> None:
        """New cluster settings (a reload): state stays; the balancer changes only with
        the policy."""
        self.settings = settings
        if settings.lb_policy != self._policy:
            self._policy = settings.lb_policy
            self._balancer = make_balancer(settings.lb_policy, self._rng)
        self.rebuild()

    def add(self, host: Host) -> None:
        self.hosts[host.id] = host
        self.rebuild()

    def remove(self, endpoint_id: str) -> Host | None:
        host = self.hosts.pop(endpoint_id, None)
        if host is not None:
            self.rebuild()
        return host

    def rebuild(self) -> None:
        """Recompute `usable` (sorted by id, so every sidecar sees the same order)."""
        self.usable = tuple(
            host for _, host in sorted(self.hosts.items())
            if host.operator is OperatorStatus.ACTIVE and host.observed_ok)

    def pick(self, exclude: Sequence[Host] = ()) -> Host | None:
        """The host for the next attempt; hosts in `exclude` (tried already) only when
        nothing else is usable."""
        usable = self.usable
        if exclude and len(usable) > len(exclude):
            others = tuple(h for h in usable if h not in exclude)
            if others:
                usable = others
        return self._balancer.pick(usable)

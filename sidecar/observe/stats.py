"""Request statistics over recent windows, per route, cluster and endpoint (GetStats).

`Stats` owns what the data path records for GetStats, the status page and
`sidecarctl stat`, and answers their queries (`Stats.query` -> `StatsReport`). It
is pure like `sidecar.observe.window`, whose bounded rolling windows (10 s slots
over the last 10 minutes) hold the counts; time is the monotonic clock of
`sidecar.core.clock`, the same one the proxy uses.

What is recorded, and where (each on the hot path costs one `Window.record`):

* a finished request, once, on its (route, cluster) pair: the proxy gets the pair's
  window through `sidecar.observe.metrics.RequestStats.rolling`, which it fetches
  per request anyway. Success: a status below 500 (a client that went away, 499,
  is not a failure of the route).
* an upstream attempt on its endpoint, with its time up to the response head.
  Success: not a failure of the endpoint's `circuit_breaker.failure_on` kinds,
  exactly what the breaker counts. A stale pooled connection (replayed for free)
  is no one's fault: not an attempt, and its replay is not a retry.
* a retry on the (route, cluster) pair and on the endpoint whose failure is retried.
* a breaker trip (a BREAKER_CHANGED event into OPEN, from the bus: `on_event`) on
  the endpoint and on its cluster, so that a cluster keeps its trips after the
  endpoint is gone.

Cluster rows are not recorded: `query` sums the pairs of the cluster (histograms
merged), which keeps the hot path at one record per request. Rows list what exists
now: every route of the serving table that has a cluster (zeros when idle; the
orchestrator route, whose cluster comes from the path, once per cluster it served
in the window), every cluster of the registry, every endpoint registered now
(an endpoint removed from the registry is forgotten: ENDPOINT_REMOVED, and a prune
against the registry at query time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sidecar.core.breaker import BreakerState
from sidecar.core.clock import Clock, SystemClock
from sidecar.events import Event, EventKind

from .window import SLOT_SECONDS, Totals, Window, WindowStore, slots_for

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_WINDOW",
    "KINDS",
    "MAX_WINDOW",
    "Stats",
    "StatsReport",
    "StatsRow",
]

#: The kinds of rows a query may ask for ("" asks for all of them).
KINDS = ("routes", "clusters", "endpoints")
DEFAULT_WINDOW = 60.0
MAX_WINDOW = 600.0
#: Keys per store (route pairs, endpoints, clusters): a bound on memory whatever the
#: registry does (about 37 KiB a busy key at most: see `window.MAX_BYTES_PER_KEY`).
DEFAULT_MAX_KEYS = 1024

#: Routes of the serving table as (name, cluster); cluster "" for a route whose
#: cluster comes from the request (the orchestrator route).
RoutesSource = Callable[[], Iterable[tuple[str, str]]]
#: Clusters of the registry now, each with the ids of its endpoints.
EndpointsSource = Callable[[], Mapping[str, Iterable[str]]]


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One route, cluster or endpoint over the window (see `ResourceStats` in the API)."""

    name: str
    cluster: str
    requests: int
    successes: int
    #: successes / requests; None without requests.
    success_rate: float | None
    requests_per_second: float
    #: Latency quantiles in seconds; None without requests.
    p50: float | None
    p90: float | None
    p99: float | None
    retries: int
    breaker_trips: int


@dataclass(frozen=True, slots=True)
class StatsReport:
    """The answer to one query: the window it covers (seconds, whole slots), and the
    rows of each kind asked for (the others empty), each ordered by cluster, then name."""

    window: float
    routes: tuple[StatsRow, ...] = ()
    clusters: tuple[StatsRow, ...] = ()
    endpoints: tuple[StatsRow, ...] = ()


def _no_routes() -> Iterable[tuple[str, str]]:
    return ()


def _no_endpoints() -> Mapping[str, Iterable[str]]:
    return {}


class Stats:
    """The rolling statistics of one sidecar.

    Parameters:
        clock: monotonic time for queries and bus events (the system clock if not given).
        routes: the serving route table's (name, cluster) pairs, read at query time.
        endpoints: the registry's clusters and endpoint ids, read at query time.
        max_keys: the most keys each store keeps (route pairs, endpoints, clusters).
    """

    def __init__(self, *, clock: Clock | None = None, routes: RoutesSource | None = None,
                 endpoints: EndpointsSource | None = None,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._clock = clock or SystemClock()
        self._routes = routes or _no_routes
        self._endpoints = endpoints or _no_endpoints
        self._started = self._clock.now()
        self.pairs: WindowStore[tuple[str, str]] = WindowStore(max_keys)
        self.endpoint_windows: WindowStore[tuple[str, str]] = WindowStore(max_keys)
        self.cluster_trips: WindowStore[str] = WindowStore(max_keys)
        # The dict itself, for the per-attempt lookup without a method call.
        self._by_endpoint = self.endpoint_windows.windows

    # ------------------------------------------------------------ recording

    def pair(self, route: str, cluster: str) -> Window:
        """The window of a (route, cluster) pair, for the data path to keep and record
        finished requests into (`Window.record(now, status < 500, seconds)`)."""
        return self.pairs.add((route, cluster))

    def attempt(self, cluster: str, endpoint: str, now: float, seconds: float,
                ok: bool) -> None:
        """An upstream attempt to `endpoint` ended at `now` after `seconds`."""
        window = self._by_endpoint.get((cluster, endpoint))
        if window is None:
            window = self.endpoint_windows.add((cluster, endpoint))
        window.record(now, ok, seconds)

    def retry(self, route: str, cluster: str, endpoint: str, now: float) -> None:
        """A request of (route, cluster) is retried after its attempt to `endpoint` failed."""
        self.pairs.add((route, cluster)).retry(now)
        self.endpoint_windows.add((cluster, endpoint)).retry(now)

    def breaker_opened(self, cluster: str, endpoint: str, now: float) -> None:
        self.endpoint_windows.add((cluster, endpoint)).trip(now)
        self.cluster_trips.add(cluster).trip(now)

    def endpoint_removed(self, cluster: str, endpoint: str) -> None:
        self.endpoint_windows.drop((cluster, endpoint))

    def on_event(self, event: Event) -> None:
        """Subscribe this to the registry's bus: breaker trips, removed endpoints."""
        info = event.endpoint
        if info is None:
            return
        if event.kind is EventKind.BREAKER_CHANGED:
            if event.breaker is not None and event.breaker.state is BreakerState.OPEN:
                self.breaker_opened(info.cluster, info.id, self._clock.now())
        elif event.kind is EventKind.ENDPOINT_REMOVED:
            self.endpoint_removed(info.cluster, info.id)

    # ------------------------------------------------------------ reading

    def query(self, kind: str = "", window_seconds: float = DEFAULT_WINDOW,
              cluster: str = "", now: float | None = None) -> StatsReport:
        """Rows of `kind` ("routes", "clusters", "endpoints"; "" for all) over the last
        `window_seconds` (rounded up to whole 10 s slots, at most 10 minutes), of
        `cluster` only unless it is "". `now`: monotonic seconds (the clock's if None).

        Raises ValueError for an unknown kind or a window out of range."""
        if kind and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
        slots = slots_for(window_seconds)
        if now is None:
            now = self._clock.now()
        # Requests a second over the time the window covers: the current slot only
        # up to now, and no further back than the start (at least 1 s: no spikes).
        covered = (slots - 1) * SLOT_SECONDS + (now - (now // SLOT_SECONDS) * SLOT_SECONDS)
        span = max(1.0, min(covered, now - self._started))
        registered = {name: tuple(ids) for name, ids in self._endpoints().items()}
        self._prune(now, registered)

        def row(name: str, row_cluster: str, totals: Totals) -> StatsRow:
            requests = totals.requests
            return StatsRow(
                name, row_cluster, requests, totals.successes,
                totals.successes / requests if requests else None, requests / span,
                totals.quantile(0.5) if requests else None,
                totals.quantile(0.9) if requests else None,
                totals.quantile(0.99) if requests else None,
                totals.retries, totals.trips)

        def wanted(name: str) -> bool:
            return not cluster or name == cluster

        routes: list[StatsRow] = []
        clusters: list[StatsRow] = []
        endpoints: list[StatsRow] = []
        if kind in ("", "routes"):
            listed: set[tuple[str, str]] = set()
            dynamic: set[str] = set()
            for name, route_cluster in self._routes():
                if not route_cluster:
                    dynamic.add(name)
                elif wanted(route_cluster) and (name, route_cluster) not in listed:
                    listed.add((name, route_cluster))
                    window = self.pairs.get((name, route_cluster))
                    routes.append(row(name, route_cluster, window.totals(now, slots)
                                      if window is not None else Totals()))
            for (name, route_cluster), window in self.pairs.windows.items():
                if name in dynamic and route_cluster and wanted(route_cluster) \
                        and (name, route_cluster) not in listed:
                    totals = window.totals(now, slots)
                    if totals.requests or totals.retries:
                        routes.append(row(name, route_cluster, totals))
        if kind in ("", "clusters"):
            sums: dict[str, Totals] = {name: Totals() for name in registered if wanted(name)}
            for (_, pair_cluster), window in self.pairs.windows.items():
                into = sums.get(pair_cluster)
                if into is not None:
                    window.add_to(into, now, slots)
            for name, totals in sums.items():
                trips = self.cluster_trips.get(name)
                if trips is not None:
                    totals.trips += trips.totals(now, slots).trips
                clusters.append(row(name, name, totals))
        if kind in ("", "endpoints"):
            for name, ids in registered.items():
                if not wanted(name):
                    continue
                for endpoint_id in ids:
                    window = self.endpoint_windows.get((name, endpoint_id))
                    endpoints.append(row(endpoint_id, name, window.totals(now, slots)
                                         if window is not None else Totals()))
        order = _by_cluster_then_name
        return StatsReport(float(slots * SLOT_SECONDS), tuple(sorted(routes, key=order)),
                           tuple(sorted(clusters, key=order)),
                           tuple(sorted(endpoints, key=order)))

    def _prune(self, now: float, registered: Mapping[str, tuple[str, ...]]) -> None:
        """Forget endpoints that are not registered now, and trips of clusters that
        are gone once they expire. Route pairs are kept: the data path holds their
        windows (`RequestStats.rolling`), and they are as bounded as the metrics'."""
        live = {(name, endpoint_id) for name, ids in registered.items() for endpoint_id in ids}
        for key in [key for key in self.endpoint_windows if key not in live]:
            self.endpoint_windows.drop(key)
        self.cluster_trips.prune(now, keep=set(registered))


def _by_cluster_then_name(row: StatsRow) -> tuple[str, str]:
    return row.cluster, row.name

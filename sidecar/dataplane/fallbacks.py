"""What a route's fallbacks need at run time, beside the decisions of `core.fallback`.

`core/fallback.py` decides which fallback may answer (`FallbackPlan`) and keeps the
last good answers (`ResponseCache`); the proxy (`Proxy._forward`) runs the plan. This
module owns the run-time state around it, one owner for each piece:

* the routes' caches, kept across reloads while a route keeps a cache fallback (with
  the new bounds);
* the answers the sidecar makes itself (a cached or a static one), marked with
  `X-Sidecar-Fallback` and the route's own response fields;
* which routes are falling back now: FALLBACK_USED is published when a route starts
  falling back, not per request, so a busy route cannot flood the watchers; the
  route's next answer from its own cluster ends it.
"""

from __future__ import annotations

from sidecar.core.clock import Clock
from sidecar.core.fallback import CACHE, CLUSTER, STATIC, ResponseCache, fallback_header
from sidecar.core.headers import build_response_head
from sidecar.core.routing import Route
from sidecar.dataplane.request import Request
from sidecar.dataplane.response import ProxyResponse, connection_field
from sidecar.events import EventBus, EventKind
from sidecar.observe.metrics import Metrics

__all__ = ["FALLBACK_FIELDS", "Fallbacks"]

#: The `X-Sidecar-Fallback` line of an answer, by fallback kind.
FALLBACK_FIELDS = {kind: b"%s: %s\r\n" % fallback_header(kind)
                   for kind in (CACHE, CLUSTER, STATIC)}


class Fallbacks:
    """The proxy's fallback state: caches by route, and the routes falling back."""

    def __init__(self, metrics: Metrics, bus: EventBus, clock: Clock) -> None:
        self._metrics = metrics
        self._bus = bus
        self._clock = clock
        #: Last good answers of routes with a cache fallback, by route name.
        self._caches: dict[str, ResponseCache] = {}
        #: Routes answered by a fallback since their cluster last answered.
        self._falling_back: set[str] = set()

    def cache(self, route: Route) -> ResponseCache | None:
        """The route's last-good-answer cache; None when it has no cache fallback."""
        config = route.fallback.cache if route.fallback is not None else None
        if config is None:
            return None
        cache = self._caches.get(route.name)
        if cache is None:
            cache = self._caches[route.name] = ResponseCache(config, self._clock)
        elif cache.config is not config:
            cache.update_config(config)
        return cache

    def used(self, route: str, cluster: str, kind: str, reason: str) -> None:
        """A fallback of `kind` answered a request of `route` (whose `cluster` could not)."""
        self._metrics.fallback(route, kind)
        if route not in self._falling_back:
            self._falling_back.add(route)
            self._bus.publish(EventKind.FALLBACK_USED, route=route, cluster=cluster,
                              fallback=kind, reason=reason)

    def recovered(self, route: str) -> None:
        """The route's own cluster answered: its next fallback is news again."""
        self._falling_back.discard(route)

    @staticmethod
    def answer(request: Request, route: Route, status: int,
               headers: tuple[tuple[bytes, bytes], ...], body: bytes, kind: str, rid: bytes,
               version: bytes) -> ProxyResponse:
        """A fallback answer the sidecar makes (cache or static), marked as one."""
        keep_alive = request.keep_alive
        framing = (b"Content-Length: %d\r\n" % len(body) + FALLBACK_FIELDS[kind]
                   + route.set_fields + connection_field(keep_alive, version))
        head = build_response_head(version, status, b"", headers, framing=framing,
                                   request_id=rid, replace=route.set_names)
        return ProxyResponse(status, head, body=b"" if request.method == "HEAD" else body,
                             keep_alive=keep_alive)

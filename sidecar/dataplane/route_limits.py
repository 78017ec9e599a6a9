"""A route's own limits on a request, checked before it is forwarded: rate, then body.

The rate limit's decisions are `core.ratelimit.RateLimiter`'s (token buckets, pure);
this module owns the limiters, one per route with a `rate_limit`, kept across reloads
(the buckets stay, the new bounds apply) and dropped with the route's limit. It reads
the request for the bucket key (the client's address or a header) and sets the
request's body limit, which the listener enforces as the body arrives.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.config.model import RateLimitConfig
from sidecar.core.ratelimit import RateLimiter
from sidecar.core.routing import Route
from sidecar.dataplane.request import Request
from sidecar.errors import BodyTooLarge, RateLimited

__all__ = ["RouteLimits"]


class RouteLimits:
    """The rate limiters of the serving routes, by route name."""

    def __init__(self) -> None:
        self._limiters: dict[str, tuple[RateLimitConfig, RateLimiter]] = {}

    def keep_only(self, routes: Iterable[Route]) -> None:
        """A new route table: forget the limiters of routes that no longer have one."""
        limited = {route.name for route in routes if route.rate_limit is not None}
        for name in [name for name in self._limiters if name not in limited]:
            del self._limiters[name]

    def check(self, request: Request, route: Route, default_body_limit: int,
              now: float) -> None:
        """The route's rate limit (429), then its body limit (413); the orchestrator
        route has neither, so `default_body_limit` (the listener's) applies."""
        rate = route.rate_limit
        if rate is not None:
            decision = self._limiter(route.name, rate).take(_rate_key(request, rate.key), now)
            if not decision.allowed:
                raise RateLimited(decision.retry_after, decision.limit, decision.remaining,
                                  decision.reset)
        if request.content_length is None and not request.chunked:
            return  # no body (RFC 9112 6.3), so no body limit to apply
        limit = route.max_request_body_bytes
        if limit is None:
            limit = default_body_limit
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge()  # refused before a byte of it is read
        if limit != request.max_body:
            request.limit_body(limit)

    def _limiter(self, route: str, rate: RateLimitConfig) -> RateLimiter:
        entry = self._limiters.get(route)
        if entry is None:
            limiter = RateLimiter(rate.requests_per_second, rate.bucket_size, rate.max_keys)
            self._limiters[route] = (rate, limiter)
            return limiter
        limiter = entry[1]
        if entry[0] is not rate:  # a reload: keep the buckets, take the bounds
            limiter.update_config(rate.requests_per_second, rate.bucket_size, rate.max_keys)
            self._limiters[route] = (rate, limiter)
        return limiter


def _rate_key(request: Request, key: str) -> str:
    """Whose bucket: the route's one, the client's address, or a header's value
    (requests without the header share one bucket)."""
    if key == "none":
        return ""
    if key == "client_ip":
        return request.remote
    name = key[7:].encode()
    for field_name, value in request.raw_headers:
        if len(field_name) == len(name) and field_name.lower() == name:
            return "=" + value.decode("latin-1")
    return ""

"""The route table: (host, method, path) -> route, cluster and the path to send upstream.

Pure and immutable: built once per configuration, shared by every request that
started under it. No I/O, no aiohttp.

Matching rules:

* A route's `prefix` matches on a segment boundary: "/api/users" matches
  "/api/users", "/api/users/42" and "/api/users?x" but not "/api/usersX". A
  prefix that ends in "/" matches anything below it.
* The longest matching prefix wins; at equal length a route naming the exact
  host beats a wildcard host ("*.example.com"), which beats a route with no host.
* Among the routes that match host and path, the first (by the order above, then
  config order) that allows the method wins. If some matched host and path but
  none allows the method, the answer is 405 with the union of their methods.
* The earlier design's addressing, `{orchestrator_prefix}{cluster}/{path}`, is a
  built-in route (named "orchestrator") that competes by the same rules with
  prefix length of `orchestrator_prefix`; a declared route with a longer prefix
  wins. If the cluster named in the path does not exist, the answer is 404
  `unknown_cluster`: a shorter catch-all route never takes a request addressed to
  a cluster by name. The bare prefix with no cluster name is not a match.
* Routing decides on the path the upstream will get (`routable_path`): dot segments
  removed, also percent-encoded ones; an encoded slash or backslash, a raw backslash
  or a fragment is 400, never a route bypass. Host routes match the Host field
  without its port, lower-cased (`host_without_port`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sidecar.config.model import RateLimitConfig, RouteConfig
from sidecar.config.resilience import FallbackConfig, RetryConfig
from sidecar.config.types import NAME_PATTERN
from sidecar.errors import BadRequest, MethodNotAllowed, NoRoute, UnknownCluster

__all__ = ["ORCHESTRATOR_ROUTE", "Route", "RouteMatch", "RouteTable", "host_without_port",
           "normalize_path", "routable_path", "valid_host"]

ORCHESTRATOR_ROUTE = "orchestrator"
_CLUSTER_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A compiled route."""

    name: str
    prefix: str
    host: str | None
    methods: frozenset[str] | None
    cluster: str
    prefix_rewrite: str | None
    timeout: float | None
    order: int
    #: Replaces the cluster's retry policy when set.
    retry: RetryConfig | None = None
    retry_non_idempotent: bool = False
    fallback: FallbackConfig | None = None
    #: Header lines set on the route's responses (security_headers), and their
    #: lower-case names (the upstream's own values are dropped).
    set_fields: bytes = b""
    set_names: frozenset[bytes] = frozenset()
    #: The route's token bucket (None: no rate limit) and body limit (None: the
    #: listener's).
    rate_limit: RateLimitConfig | None = None
    max_request_body_bytes: int | None = None

    @classmethod
    def from_config(cls, config: RouteConfig, order: int) -> Route:
        methods = frozenset(config.methods) if config.methods is not None else None
        if methods is not None and "GET" in methods:
            methods = methods | {"HEAD"}  # HEAD is GET without a body (RFC 9110 9.3.2)
        pairs = config.security_headers.fields() if config.security_headers else ()
        return cls(config.route_name, config.prefix, config.host, methods, config.cluster,
                   config.prefix_rewrite, config.timeout, order, config.retry,
                   config.retry_non_idempotent, config.fallback,
                   b"".join(b"%s: %s\r\n" % pair for pair in pairs),
                   frozenset(name.lower() for name, _ in pairs), config.rate_limit,
                   config.max_request_body_bytes)

    def matches_path(self, path: str) -> bool:
        prefix = self.prefix
        if not path.startswith(prefix):
            return False
        if len(path) == len(prefix) or prefix.endswith("/"):
            return True
        return path[len(prefix)] in "/?"

    def matches_host(self, host: str) -> bool:
        if self.host is None:
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def rewrite(self, target: str) -> str:
        """Replace the matched prefix in `target` (path plus query) with prefix_rewrite."""
        if self.prefix_rewrite is None:
            return target
        rest = target[len(self.prefix):]
        new = self.prefix_rewrite
        if new.endswith("/") and rest.startswith("/"):
            rest = rest[1:]
        elif rest and not new.endswith("/") and rest[0] not in "/?":
            new += "/"
        return new + rest


class RouteMatch:
    """The route a request matched, the cluster that serves it, and the target (path
    and query) to send upstream. Made per request: a plain class with final attributes
    rather than a frozen dataclass, whose `__init__` (generated, setting each field
    through `object.__setattr__`) stays interpreted where the rest is compiled."""

    __slots__ = ("route", "cluster", "target")

    def __init__(self, route: Route, cluster: str, target: str) -> None:
        self.route: Final = route
        self.cluster: Final = cluster
        self.target: Final = target

    def __repr__(self) -> str:
        return f"RouteMatch(route={self.route.name!r}, cluster={self.cluster!r}, " \
               f"target={self.target!r})"


def _specificity(route: Route) -> tuple[int, int, int]:
    host_rank = 0 if route.host is None else (1 if route.host.startswith("*.") else 2)
    return (-len(route.prefix), -host_rank, route.order)


def normalize_path(target: str) -> str:
    """Remove dot-segments (RFC 3986 5.2.4) from the path part of `target`.

    Routing on "/api/public/../admin" must not route by "/api/public" while the
    upstream serves "/admin". Only called when the path contains "/.".
    """
    path, sep, query = target.partition("?")
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if segment == "..":
            if len(out) > 1:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
        elif segment == ".":
            if i == len(segments) - 1:
                out.append("")
        else:
            out.append(segment)
    normalized = "/".join(out) or "/"
    if not normalized.startswith("/"):
        normalized = "/" + normalized
    return normalized + sep + query


class RouteTable:
    """Routes of one configuration, in match order."""

    __slots__ = ("_routes", "_orchestrator", "_orchestrator_prefix", "_cluster_exists",
                 "uses_host")

    def __init__(self, routes: Sequence[RouteConfig], orchestrator_prefix: str | None,
                 cluster_exists: Callable[[str], bool]) -> None:
        compiled = [Route.from_config(r, i) for i, r in enumerate(routes)]
        self._orchestrator_prefix = orchestrator_prefix
        self._cluster_exists = cluster_exists
        self._orchestrator: Route | None = None
        if orchestrator_prefix:
            self._orchestrator = Route(ORCHESTRATOR_ROUTE, orchestrator_prefix, None, None, "",
                                       None, None, len(compiled))
            compiled.append(self._orchestrator)
        self._routes: tuple[Route, ...] = tuple(sorted(compiled, key=_specificity))
        # When no route names a host, callers may skip normalizing the Host header.
        self.uses_host = any(route.host is not None for route in compiled)

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def match(self, host: str, method: str, target: str) -> RouteMatch:
        """Route a request. `host` is lower case without port; `target` is path[?query].

        Raises NoRoute (404), UnknownCluster (404: the orchestrator prefix with a
        cluster name that does not exist) or MethodNotAllowed (405, with the allowed
        methods).
        """
        path = target.partition("?")[0] if "?" in target else target
        allowed: set[str] = set()
        any_method = False
        for route in self._routes:
            if not route.matches_path(path) or not route.matches_host(host):
                continue
            if route is self._orchestrator:
                found = self._match_orchestrator(target)
                if found is not None:
                    return found
                continue
            methods = route.methods
            if methods is None or method in methods:
                return RouteMatch(route, route.cluster, route.rewrite(target))
            allowed |= methods
            any_method = True
        if any_method:
            raise MethodNotAllowed(tuple(sorted(allowed)))
        raise NoRoute()

    def _match_orchestrator(self, target: str) -> RouteMatch | None:
        assert self._orchestrator is not None and self._orchestrator_prefix is not None
        rest = target[len(self._orchestrator_prefix):]
        end = len(rest)
        for sep in "/?":
            i = rest.find(sep)
            if i != -1 and i < end:
                end = i
        cluster = rest[:end]
        if not cluster:
            return None  # the bare prefix names no cluster: other routes may match
        if not _CLUSTER_NAME.fullmatch(cluster) or not self._cluster_exists(cluster):
            # Addressing a cluster by name and reaching a catch-all route instead
            # would send the request somewhere the client did not ask for.
            raise UnknownCluster()
        upstream = rest[end:]
        if not upstream.startswith("/"):
            upstream = "/" + upstream
        return RouteMatch(self._orchestrator, cluster, upstream)


def routable_path(target: str) -> str:
    """The origin-form target routing decides on, and the upstream gets.

    Dot segments are removed (RFC 3986 5.2.4), also when percent-encoded (`%2e%2e`,
    `%2E.`: `%2E` is an unreserved character, RFC 3986 6.2.2.2, so it is decoded):
    `/api/%2e%2e/admin` routes, and is forwarded, as `/admin`. An encoded slash or
    backslash (`%2F`, `%5C`) and a raw backslash in the path are refused (400): an
    upstream that decodes them would see a path other than the one routed. A `#`
    is not part of a request target (RFC 9112 3.2): 400.
    """
    if "%" not in target and "/." not in target and "\\" not in target and "#" not in target:
        return target  # the usual case
    if "#" in target:
        raise BadRequest("The request target must not contain a fragment.")
    path, sep, query = target.partition("?")
    if "%" in path:
        lowered = path.lower()
        if "%2f" in lowered or "%5c" in lowered:
            raise BadRequest("The request path must not contain an encoded slash.")
        if "%2e" in lowered:
            path = path.replace("%2e", ".").replace("%2E", ".")
    if "\\" in path:
        raise BadRequest("The request path must not contain a backslash.")
    if "/." in path:
        return normalize_path(path + sep + query)
    return path + sep + query if sep else path


# RFC 9110 4.2.3 / RFC 3986 3.2.2: uri-host [ ":" port ], where uri-host is an IP
# literal in brackets or a reg-name (unreserved, pct-encoded, sub-delims; IPv4
# addresses are reg-names too), and the port is digits, possibly none. A byte's class
# for `valid_host`: 0 never valid, 1 a reg-name character, 2 a digit, 3 the colon.
_HOST_BYTE_CLASS: Final = bytes([
    2 if 0x30 <= byte <= 0x39 else 3 if byte == 0x3A
    else 1 if chr(byte) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-._~%!$&'()*+,;="
    else 0
    for byte in range(256)])
_IP_LITERAL_HOST: Final = re.compile(rb"\[[0-9A-Za-z:.]+\](?::[0-9]*)?")


def valid_host(host: bytes) -> bool:
    """Whether `host` is a valid Host field value (or a target's authority): RFC 9112
    3.2 has a server answer 400 to any other, so no space, slash, backslash, `@`, second
    colon or non-ASCII byte reaches routing or an upstream's Host.

    A loop over a byte table, not a regular expression: compiled, a request costs
    about 2.6k instructions less (it runs for every request)."""
    if host[:1] == b"[":
        return _IP_LITERAL_HOST.fullmatch(host) is not None
    in_port = False
    for i in range(len(host)):
        kind = _HOST_BYTE_CLASS[host[i]]
        if kind == 2:
            continue
        if kind == 1 and not in_port:
            continue
        if kind == 3 and not in_port:
            in_port = True
            continue
        return False
    return True


def host_without_port(host: str) -> str:
    """The Host field without its port, lower-cased, as host routes match it."""
    if host.endswith("]"):
        return host.lower()
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name.lower()
    return host.lower()

"""The data-plane request handler: route, pick an endpoint, forward, stream back.

Theory of operation, per request:

0. Admit: over `listener.max_requests` in flight, 503 `overloaded` at once.
1. Validate what the listener's strict parser does not (Host, request target, CONNECT).
2. Route with the `RouteTable` of the snapshot current when the request arrived;
   a reload swaps `Proxy.state` and never touches a request in flight. Then the
   route's limits (`dataplane.route_limits`): its rate limit (429 `rate_limited`,
   `sidecar.core.ratelimit`) and its body limit (413 `body_too_large`: by
   Content-Length before anything is read, else counted by the listener as the body
   arrives). Routing decides on the path the upstream will get
   (`core.routing.routable_path`); an absolute-form target's authority replaces Host
   (`dataplane.request.absolute_form`).
3. Pick an endpoint from the cluster's routable tuple (registry, copy-on-write).
4. Build the upstream head in one pass (`headers.build_request_head`), send it with
   the body through the endpoint's `UpstreamPool`, under the total timeout.
5. If the whole upstream response has already arrived, answer with one write;
   otherwise stream the body with flow control (`Request.write` drains, the
   pool pauses the upstream socket when its buffer is full).

6. When the cluster cannot answer, the route's fallbacks may (`core.fallback` decides,
   `dataplane.fallbacks` keeps the caches and marks the answers).

Errors before the response starts become JSON bodies with the right status;
errors after it started abort the client connection, so a truncated body is
never passed off as complete.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final, cast

from sidecar.config.model import ClusterSettings, SidecarConfig
from sidecar.core.clock import Clock, SystemClock
from sidecar.core.fallback import (
    CACHE,
    CLUSTER,
    NO_HEALTHY_ENDPOINT,
    OVERFLOW,
    STATIC,
    FallbackPlan,
    ResponseCache,
)
from sidecar.core.headers import (
    build_request_head,
    build_response_head,
    new_request_id,
    new_traceparent,
    valid_request_id,
)
from sidecar.core.hosts import Host, HostSet
from sidecar.core.limits import MAX_PENDING, ClusterLimits
from sidecar.core.retry import (
    CONNECT_FAILURE,
    GATEWAY_ERROR,
    GATEWAY_STATUSES,
    IDEMPOTENT_METHODS,
    RESET,
    STALE,
    TIMEOUT,
    AttemptPlan,
    NoRetry,
    RetryDecision,
    RetryPolicy,
    classify_status,
    replay_refusal,
)
from sidecar.core.routing import (
    Route,
    RouteMatch,
    RouteTable,
    host_without_port,
    routable_path,
)
from sidecar.dataplane.body import BUFFER_REQUEST_BODY, RequestBody
from sidecar.dataplane.connection import StaleConnection
from sidecar.dataplane.deadlines import DeadlineWheel
from sidecar.dataplane.fallbacks import FALLBACK_FIELDS, Fallbacks
from sidecar.dataplane.pool import UpstreamPool, UpstreamResponse
from sidecar.dataplane.request import Request, absolute_form
from sidecar.dataplane.response import ProxyResponse, connection_field, error_response
from sidecar.dataplane.route_limits import RouteLimits
from sidecar.errors import (
    BadRequest,
    MethodNotAllowed,
    NoHealthyEndpoint,
    NoRoute,
    Overflow,
    Overloaded,
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from sidecar.observe.logs import access_logger, request_context
from sidecar.observe.metrics import Metrics
from sidecar.registry import ClusterMembers, Registry

__all__ = ["DataPlaneState", "Proxy"]

# Responses of known length up to this size are gathered and sent in one write.
BUFFER_RESPONSE_BODY: Final = 256 * 1024
_UPSTREAM_ERROR_KIND: Final[dict[type[ProxyError], str]] = {
    UpstreamConnectError: "connect",
    UpstreamReset: "reset",
    UpstreamTimeout: "timeout",
    UpstreamProtocolError: "protocol",
}
# Failure kind (sidecar.core.retry) -> the `kind` label of sidecar_upstream_errors_total.
_ERROR_METRIC_KIND: Final = {CONNECT_FAILURE: "connect", RESET: "reset", TIMEOUT: "timeout",
                             STALE: "stale"}
_NO_BODY: Final = RequestBody()
# Why a request may get its route's fallback (sidecar.core.fallback), by the error the
# cluster ended with: it could not serve, or its last try failed to connect or ended
# in a gateway error (502 for a reset or a malformed answer, 504 for a timeout).
_FALLBACK_REASONS: Final[dict[type[ProxyError], str]] = {
    NoHealthyEndpoint: NO_HEALTHY_ENDPOINT, Overflow: OVERFLOW,
    UpstreamConnectError: CONNECT_FAILURE, UpstreamReset: GATEWAY_ERROR,
    UpstreamProtocolError: GATEWAY_ERROR, UpstreamTimeout: GATEWAY_ERROR}
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
_METHODS: Final = {m: m.encode()
                   for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


_NO_NAMES: Final[frozenset[bytes]] = frozenset()


@functools.lru_cache(maxsize=256)
def _field_names(lines: bytes) -> frozenset[bytes]:
    """Lower-case names of the header lines the sidecar sets on a response (a route's
    security headers, the fallback marker): the upstream's own values are dropped.
    Few distinct values exist (routes x fallback kinds), so they are cached."""
    return frozenset(line.split(b":", 1)[0].lower()
                     for line in lines.split(b"\r\n") if line)


class _Pending:
    """A try waiting for a new connection: leaves `max_pending` once, when connected
    or when the try ends."""

    __slots__ = ("_limits",)

    def __init__(self, limits: ClusterLimits) -> None:
        self._limits: ClusterLimits | None = limits

    def __call__(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.pending_exit()


class _GatewayAnswer(Exception):
    """The upstream's own final 502/503/504, held back while a fallback is tried."""

    def __init__(self, upstream: UpstreamResponse, host: Host) -> None:
        self.upstream = upstream
        self.host = host


class _AttemptFailed(Exception):
    """One try failed before its response head: `kind` is a sidecar.core.retry failure
    kind, `error` what the client gets if no retry follows."""

    def __init__(self, kind: str, error: ProxyError) -> None:
        self.kind = kind
        self.error = error


@dataclass(eq=False)
class DataPlaneState:
    """What one configuration means to the data plane; replaced whole on reload.

    Runtime state that must outlive a reload (hosts, breakers, limits, the retry
    budget) is not here: it is in each cluster's `HostSet`."""

    config: SidecarConfig
    routes: RouteTable
    rng: random.Random = field(default_factory=random.Random)
    # A route's policy, with the cluster settings it was made for.
    _policies: dict[Route, tuple[RetryPolicy, ClusterSettings]] = field(default_factory=dict)
    _fallbacks: dict[str, FallbackPlan] = field(default_factory=dict)
    #: The listener limits every request reads, copied out of `config`: compiled, a
    #: field of this class is a C field, one of the config models a generic lookup.
    max_requests: int = field(init=False)
    max_request_body_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        listener = self.config.listener
        self.max_requests = listener.max_requests
        self.max_request_body_bytes = listener.max_request_body_bytes

    @classmethod
    def build(cls, config: SidecarConfig, registry: Registry) -> DataPlaneState:
        clusters = registry.clusters
        routes = RouteTable(config.routes, config.listener.orchestrator_prefix,
                            clusters.__contains__)
        return cls(config, routes)

    def fallback_plan(self, route: Route) -> FallbackPlan:
        """The route's fallbacks in order (made once per route and configuration)."""
        plan = self._fallbacks.get(route.name)
        if plan is None:
            plan = self._fallbacks[route.name] = FallbackPlan(route.fallback)
        return plan

    def retry_policy(self, route: Route, settings: ClusterSettings) -> RetryPolicy:
        """The route's retry policy: its own `retry`, else its cluster's (made once per
        route and cluster, then shared by their requests)."""
        cached = self._policies.get(route)  # routes hash by identity: no key to build
        if cached is not None and cached[1] is settings:
            return cached[0]
        policy = RetryPolicy(route.retry or settings.retry, self.rng,
                             retry_non_idempotent=route.retry_non_idempotent)
        self._policies[route] = (policy, settings)
        return policy


class Proxy:
    """The data-plane handler: `Listener(proxy.handle)` (sidecar.dataplane.listener)."""

    def __init__(self, registry: Registry, metrics: Metrics, state: DataPlaneState,
                 *, proto: bytes = b"http", clock: Clock | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.state = state
        self.access_log = state.config.logging.access_log
        self.trace_sampled = state.config.listener.trace_sampled
        self._proto = proto
        self._clock_source: Clock = clock or SystemClock()
        self._fallbacks = Fallbacks(metrics, registry.bus, self._clock_source)
        # The system clock's own builtin on the hot path: a bound method costs a frame.
        self._clock: Callable[[], float] = (
            time.monotonic if clock is None or isinstance(clock, SystemClock) else clock.now)
        self._deadlines = DeadlineWheel(asyncio.get_running_loop())
        self._route_limits = RouteLimits()
        #: Called with each new state (`sidecar.dataplane.server`: listener limits).
        self.state_hooks: list[Callable[[DataPlaneState], None]] = []

    def swap_state(self, state: DataPlaneState) -> None:
        """Serve a new configuration; requests in flight keep the state they started with.

        Pools follow their cluster's new settings; a pool whose TLS settings changed is
        closed, and the endpoint's next request makes a new one."""
        self.state = state
        self.access_log = state.config.logging.access_log
        self.trace_sampled = state.config.listener.trace_sampled
        self._route_limits.keep_only(state.routes.routes)
        for hook in self.state_hooks:
            hook(state)
        for members in self.registry.clusters.values():
            settings = members.settings
            for host in members.hosts.hosts.values():
                pool = cast("UpstreamPool | None", host.pool)
                if pool is None:
                    continue
                if settings.tls != pool.tls:
                    host.close_pool()
                    continue
                pool.configure(connect_timeout=settings.connect_timeout,
                               max_idle=settings.max_idle_connections,
                               idle_timeout=settings.idle_timeout)

    def close(self) -> None:
        self._deadlines.close()
        for members in self.registry.clusters.values():
            for host in members.hosts.hosts.values():
                host.close_pool()

    @staticmethod
    def _pool(host: Host, settings: ClusterSettings) -> UpstreamPool:
        pool = UpstreamPool(host.address, connect_timeout=settings.connect_timeout,
                            max_idle=settings.max_idle_connections,
                            idle_timeout=settings.idle_timeout, tls=settings.tls)
        host.pool = pool
        return pool

    async def handle(self, request: Request) -> ProxyResponse:
        start = self._clock()
        metrics = self.metrics
        metrics.active_requests += 1
        # The request id as bytes for the heads (decoded only for a log line or an
        # error): the client's when valid, else b"" until one is made below.
        incoming_id = request.request_id
        rid = (incoming_id.encode() if incoming_id is not None and valid_request_id(incoming_id)
               else b"")
        # W3C trace context: the client's traceparent passes through unchanged; without
        # one the sidecar starts a trace so that the application's tracer can join it.
        traceparent: str | bytes | None = request.traceparent
        if traceparent is None:
            started = new_traceparent(self.trace_sampled)
            request.added_fields = b"traceparent: " + started + b"\r\n"
            traceparent = started
            if not rid:  # a new trace's id, 128 random bits, names the request too
                rid = started[3:35]
        if not rid:
            rid = new_request_id()
        request_context.set((rid, traceparent))  # for any line logged meanwhile
        version = request.version
        route_name = cluster_name = ""
        status = 500
        try:
            state = self.state
            if metrics.active_requests > state.max_requests:
                raise Overloaded()
            method = request.method
            host = request.host
            if host is None:
                if version == b"1.1":
                    raise BadRequest("HTTP/1.1 requests need a Host header.")
                host = ""
            if method == "CONNECT":
                raise MethodNotAllowed(("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST",
                                        "PUT"))
            target = request.raw_path
            if not target.startswith("/"):
                target, host = absolute_form(request, target)
            target = routable_path(target)
            routes = state.routes
            match = routes.match(host_without_port(host) if routes.uses_host else "", method,
                                 target)
            route = match.route
            route_name, cluster_name = route.name, match.cluster
            self._route_limits.check(request, route, state.max_request_body_bytes,
                                     start)  # (microseconds ago: no second clock read)
            members = self.registry.clusters.get(match.cluster)
            if members is None:
                raise NoRoute()
            policy = state.retry_policy(route, members.settings)
            body = (await self._request_body(request, policy.buffer_bytes)
                    if request.chunked or request.content_length else _NO_BODY)
            if route.fallback is None:  # the common case: one cluster answers
                response = await self._serve(request, match, members, policy, body, rid,
                                             version, extra=route.set_fields)
            else:
                response = await self._forward(request, state, match, members, policy, body,
                                               rid, version)
            status = response.aborted_status or response.status
            return response
        except ProxyError as error:
            status = error.status
            keep_alive = (request.keep_alive
                          and not isinstance(error, BadRequest) and request.method != "CONNECT")
            return error_response(error, rid.decode(), version, keep_alive=keep_alive)
        except asyncio.CancelledError:
            status = 499  # the client went away while we waited on the upstream
            raise
        finally:
            metrics.active_requests -= 1
            end = self._clock()
            elapsed = end - start
            metrics.stats(route_name, cluster_name).observe(status, elapsed, end)
            if self.access_log:
                access_logger.info("request", extra={
                    "request_id": rid.decode(), "client": request.remote,
                    "method": request.method, "path": request.raw_path, "status": status,
                    "duration_seconds": round(elapsed, 6), "route": route_name,
                    "cluster": cluster_name})

    async def _forward(self, request: Request, state: DataPlaneState, match: RouteMatch,
                       members: ClusterMembers, policy: RetryPolicy, body: RequestBody,
                       rid: bytes, version: bytes) -> ProxyResponse:
        """A route with fallbacks: its cluster answers (`_serve`); when it cannot, the
        route's fallback may (`_fall_back`): the last good answer, another cluster, or a
        static one."""
        route = match.route
        extra = route.set_fields
        assert route.fallback is not None
        plan = state.fallback_plan(route)
        cache = self._fallbacks.cache(route)
        key = (route.name, request.host or "", match.target)
        store = None
        if cache is not None and plan.caches(request.method, 200):
            def store(upstream: UpstreamResponse, answer: bytes) -> None:
                cache.store(key, upstream.status, tuple(upstream.headers), answer)
        held: _GatewayAnswer | None = None
        failure: ProxyError | None = None
        try:
            response = await self._serve(request, match, members, policy, body, rid, version,
                                         gateway_fallback=True, store=store, extra=extra)
            self._fallbacks.recovered(route.name)  # the cluster answers again
            return response
        except _GatewayAnswer as answer:  # the upstream's own 502/503/504, held back
            held, reason = answer, GATEWAY_ERROR
        except ProxyError as error:
            reason = _FALLBACK_REASONS.get(type(error), "")
            if not reason:
                raise
            failure = error
        fallback = await self._fall_back(request, state, match, plan, cache, key, body,
                                         reason, rid, version)
        if fallback is not None:
            if held is not None:
                held.upstream.abort()
            return fallback
        if held is not None:
            return await self._respond_upstream(request, held.upstream, held.host, rid,
                                                version, match.cluster, extra=extra)
        assert failure is not None
        raise failure

    async def _fall_back(self, request: Request, state: DataPlaneState, match: RouteMatch,
                         plan: FallbackPlan, cache: ResponseCache | None, key: tuple[str, ...],
                         body: RequestBody, reason: str, rid: bytes,
                         version: bytes) -> ProxyResponse | None:
        """The first of the route's fallbacks that answers, or None."""
        route = match.route
        method = request.method
        sent = reason == GATEWAY_ERROR  # the others never reached an application
        can_resend = replay_refusal(idempotent=method in IDEMPOTENT_METHODS, sent=sent,
                                    allow_non_idempotent=route.retry_non_idempotent,
                                    body=body.state) is None
        for kind in plan.choose(method, can_resend=can_resend):
            response: ProxyResponse | None = None
            if kind == CACHE:
                entry = cache.lookup(key) if cache is not None else None
                if entry is not None:
                    response = self._fallbacks.answer(request, route, entry.status,
                                                      entry.headers, entry.body, CACHE, rid,
                                                      version)
            elif kind == CLUSTER:
                response = await self._serve_fallback_cluster(request, state, match, plan,
                                                              body, rid, version)
            elif plan.static is not None:
                static = plan.static
                response = self._fallbacks.answer(request, route, static.status,
                                                  static.headers, static.body, STATIC, rid,
                                                  version)
            if response is not None:
                self._fallbacks.used(route.name, match.cluster, kind, reason)
                return response
        return None

    async def _serve_fallback_cluster(self, request: Request, state: DataPlaneState,
                                      match: RouteMatch, plan: FallbackPlan, body: RequestBody,
                                      rid: bytes, version: bytes) -> ProxyResponse | None:
        other = self.registry.clusters.get(plan.cluster or "")
        if other is None:
            return None  # a registered cluster that has gone since the config was loaded
        policy = state.retry_policy(match.route, other.settings)
        try:
            return await self._serve(request, RouteMatch(match.route, other.name, match.target),
                                     other, policy, body, rid, version,
                                     extra=FALLBACK_FIELDS[CLUSTER] + match.route.set_fields)
        except ProxyError:
            return None  # a fallback does not fall back again; the next kind may answer

    async def _serve(self, request: Request, match: RouteMatch, members: ClusterMembers,
                     policy: RetryPolicy, body: RequestBody, rid: bytes, version: bytes, *,
                     gateway_fallback: bool = False,
                     store: Callable[[UpstreamResponse, bytes], None] | None = None,
                     extra: bytes = b"") -> ProxyResponse:
        """Admit -> attempt loop -> respond, on one cluster.

        The decisions are the core's: `HostSet.pick` (usable hosts, breakers),
        `ClusterLimits` (admission), `AttemptPlan.decide` (retry or not, backoff,
        budget, the body replay rule). This method only performs them.
        `gateway_fallback`: a final 502/503/504 answer is raised as `_GatewayAnswer`
        (held, not sent) so that a fallback may answer instead."""
        # The cluster's name and settings, read from its HostSet (compiled: C fields)
        # rather than from ClusterMembers (a Python class); they are the same objects.
        hosts = members.hosts
        cluster_name = hosts.name
        limits = hosts.limits
        over = limits.try_admit()
        if over is not None:
            self.metrics.overflow(cluster_name, over)
            raise Overflow(over)
        now = self._clock()
        hosts.budget.on_request(now)
        settings = hosts.settings
        deadline = self._deadlines.add(match.route.timeout or settings.timeout, request.task)
        plan: AttemptPlan | None = None
        try:
            method = request.method
            head_request = method == "HEAD"
            exclude: tuple[Host, ...] = ()
            fresh = False
            while True:
                host = hosts.pick(now, exclude)
                if host is None:
                    raise NoHealthyEndpoint(hosts.retry_after())
                head = self._request_head(request, match.target, host, settings, rid, version)
                kind: str | None = None
                upstream: UpstreamResponse | None = None
                host.active_requests += 1
                try:
                    upstream = await self._attempt(host, members, head, body.for_try(),
                                                   request, head_request, fresh, policy)
                except _AttemptFailed as failed:
                    kind = failed.kind
                    error = failed.error
                except BaseException:
                    hosts.release(host)  # no outcome (cancelled, refused): free its probe
                    raise
                finally:
                    host.active_requests -= 1
                if upstream is not None:
                    status = upstream.status
                    failure = classify_status(status)
                    if failure is None or not policy.retries_status(status):
                        # An answer the client gets. One that has all arrived is sent
                        # first, and the breaker and the stats learn while the client
                        # reads it (off its latency); for a streamed one they learn
                        # now, not when its body ends.
                        if upstream.complete and not (gateway_fallback
                                                      and status in GATEWAY_STATUSES):
                            response = self._whole(request, upstream, upstream.body(), rid,
                                                   version, store, extra)
                            self._learn(hosts, host, now, failure)
                            return response
                        self._learn(hosts, host, now, failure)
                        return await self._respond_upstream(request, upstream, host, rid,
                                                            version, cluster_name, store,
                                                            extra, gateway_fallback)
                    self._learn(hosts, host, now, failure)
                    if plan is None:
                        plan = policy.plan(method, hosts.budget)
                    decision = plan.decide(None, status, sent=True, body=body.state,
                                           endpoint=host, active_requests=limits.active)
                    if not decision.retry:
                        self._note_refusal(cluster_name, decision, failure)
                        return await self._respond_upstream(request, upstream, host, rid,
                                                            version, cluster_name, store,
                                                            extra, gateway_fallback)
                    upstream.abort()  # a retriable failure: its body is not wanted
                else:
                    if kind != STALE:
                        failure = (TIMEOUT if kind == TIMEOUT else
                                   CONNECT_FAILURE if kind == CONNECT_FAILURE else RESET)
                        self._learn(hosts, host, now, failure)
                    else:
                        hosts.release(host)
                    assert kind is not None
                    self.metrics.upstream_error(cluster_name, _ERROR_METRIC_KIND[kind])
                    if plan is None:
                        plan = policy.plan(method, hosts.budget)
                    decision = plan.decide(kind, sent=kind != CONNECT_FAILURE,
                                           body=body.state, endpoint=host,
                                           active_requests=limits.active)
                    if not decision.retry:
                        self._note_refusal(cluster_name, decision, kind)
                        raise error
                self.metrics.retry(cluster_name, decision.reason)
                fresh = decision.reason == STALE
                if not fresh:  # a stale connection's free replay is no retry in GetStats
                    self.metrics.rolling.retry(match.route.name, cluster_name, host.id,
                                               self._clock())
                    exclude = cast("tuple[Host, ...]", plan.tried)
                if decision.delay > 0:
                    await asyncio.sleep(decision.delay)
                now = self._clock()  # a retry: time has passed (the try, the backoff)
        except asyncio.CancelledError:
            # Our deadline, and nobody else's cancellation pending: a timeout.
            if deadline.expired and deadline.task.uncancel() == 0:
                self.metrics.upstream_error(cluster_name, "timeout")
                raise UpstreamTimeout() from None
            raise
        finally:
            self._deadlines.remove(deadline)
            if plan is not None:
                plan.finish()
            limits.done()

    def _learn(self, hosts: HostSet, host: Host, started: float, failure: str | None) -> None:
        """An attempt to `host` that started at `started` ended (its head came, or it
        failed as `failure`): the breaker (and outlier detection) learn the outcome,
        and the endpoint's rolling stats (GetStats) count it as the breaker judged it."""
        if failure is not None:
            hosts.on_failure(host, failure)
        else:
            hosts.on_success(host)
        end = self._clock()
        self.metrics.rolling.attempt(host.cluster, host.id, end, end - started,
                                     failure is None or not host.breaker.is_failure(failure))

    async def _attempt(self, host: Host, members: ClusterMembers, head: bytes,
                       body: bytes | AsyncIterator[bytes] | None, request: Request,
                       head_request: bool, fresh: bool, policy: RetryPolicy
                       ) -> UpstreamResponse:
        """One try on one host: its response once the head is in, or `_AttemptFailed`
        saying what went wrong. A `per_try_timeout` bounds the try alone. A try that
        must open a connection waits as one of the cluster's `max_pending`; over
        that limit it is refused at once (`Overflow`)."""
        # (A string: `cast(UpstreamPool | None, ...)` would build a union per request.)
        pool = cast("UpstreamPool | None", host.pool) or self._pool(host, members.settings)
        waiting: _Pending | None = None
        if fresh or pool.idle_count == 0:
            limits = members.hosts.limits
            if not limits.pending_enter():
                self.metrics.overflow(members.name, MAX_PENDING)
                raise Overflow(MAX_PENDING)
            waiting = _Pending(limits)
        per_try = policy.per_try_timeout
        try_deadline = (self._deadlines.add(per_try, request.task) if per_try is not None
                        else None)
        try:
            return await pool.request(head, body, chunked=request.chunked,
                                      head_request=head_request, fresh=fresh,
                                      connected=waiting)
        except (UpstreamConnectError, UpstreamReset, UpstreamProtocolError) as exc:
            # (One clause: mypyc types a name bound by several clauses by the first.)
            kind = (STALE if isinstance(exc, StaleConnection)
                    else CONNECT_FAILURE if isinstance(exc, UpstreamConnectError) else RESET)
            raise _AttemptFailed(kind, exc) from None
        except asyncio.CancelledError:
            if (try_deadline is not None and try_deadline.expired
                    and try_deadline.task.uncancel() == 0):
                raise _AttemptFailed(TIMEOUT, UpstreamTimeout()) from None
            raise
        finally:
            if try_deadline is not None:
                self._deadlines.remove(try_deadline)
            if waiting is not None:
                waiting()

    async def _request_body(self, request: Request, keep_bytes: int) -> RequestBody:
        length = request.content_length
        chunked = request.chunked
        if (chunked or length) and request.expect_continue:
            request.send_continue()
        if chunked or (length is not None and length > BUFFER_REQUEST_BODY):
            return RequestBody(source=request.stream(), keep_bytes=keep_bytes)
        if length:
            return RequestBody(whole=await request.read())
        return _NO_BODY

    def _request_head(self, request: Request, target: str, host: Host,
                      settings: ClusterSettings, rid: bytes, version: bytes) -> bytes:
        length = request.content_length
        framing = (_CHUNKED if request.chunked
                   else b"Content-Length: %d\r\n" % length if length is not None else b"")
        method = request.method
        return build_request_head(
            _METHODS.get(method) or method.encode(), target.encode("utf-8", "surrogateescape"),
            request.raw_headers,
            host=(None if settings.preserve_host and request.host is not None
                  else host.authority),
            client=(request.remote or "").encode(), proto=self._proto,
            request_id=rid, framing=framing + request.added_fields,
            via_version=version)  # b"1.1" or b"1.0", the listener's spelling

    def _note_refusal(self, cluster: str, decision: RetryDecision, failure: str) -> None:
        """Count a retry the budget refused, by the failure it would have retried (the
        same label values as sidecar_retries_total)."""
        if decision.reason == NoRetry.BUDGET_EXHAUSTED:
            self.metrics.retry_refused(cluster, failure)

    async def _respond_upstream(self, request: Request, upstream: UpstreamResponse,
                                host: Host, rid: bytes, version: bytes, cluster_name: str,
                                store: Callable[[UpstreamResponse, bytes], None] | None = None,
                                extra: bytes = b"", gateway_fallback: bool = False
                                ) -> ProxyResponse:
        """The answer that stands, sent whole if it has all arrived, else streamed.
        `gateway_fallback`: a 502/503/504 is raised as `_GatewayAnswer` instead (held,
        not sent), so that a fallback may answer in its place."""
        if gateway_fallback and upstream.status in GATEWAY_STATUSES:
            raise _GatewayAnswer(upstream, host)
        host.active_requests += 1  # the body is still flowing from this host
        try:
            if upstream.complete:  # the usual small response, already all here
                return self._whole(request, upstream, upstream.body(), rid, version, store,
                                   extra)
            return await self._respond(request, upstream, rid, version, cluster_name, store,
                                       extra)
        except BaseException:
            upstream.abort()
            raise
        finally:
            host.active_requests -= 1

    @staticmethod
    def _whole(request: Request, upstream: UpstreamResponse, body: bytes, rid: bytes,
               version: bytes,
               store: Callable[[UpstreamResponse, bytes], None] | None = None,
               extra: bytes = b"") -> ProxyResponse:
        """The response with its whole body: head and body go out in one write, now
        (`Request.respond`), before the bookkeeping that follows. The upstream's
        connection is released after it, or aborted if this fails."""
        status = upstream.status
        try:
            keep_alive = request.keep_alive
            no_body = status in (204, 304) or status < 200 or request.method == "HEAD"
            framing = ((b"" if no_body else b"Content-Length: %d\r\n" % len(body)) + extra
                       + connection_field(keep_alive, version))
            head = build_response_head(version, status, upstream.reason, upstream.headers,
                                       framing=framing, request_id=rid,
                                       keep_content_length=no_body,
                                       replace=_field_names(extra) if extra else _NO_NAMES)
            response = ProxyResponse(status, head, body=body, keep_alive=keep_alive)
            request.respond(response)
        except BaseException:
            upstream.abort()
            raise
        upstream.release()
        if store is not None and status == 200:
            store(upstream, body)
        return response

    async def _respond(self, request: Request, upstream: UpstreamResponse, rid: bytes,
                       version: bytes, cluster_name: str,
                       store: Callable[[UpstreamResponse, bytes], None] | None = None,
                       extra: bytes = b"") -> ProxyResponse:
        """A response whose body is still arriving."""
        length = upstream.content_length
        if length is not None and length <= BUFFER_RESPONSE_BODY:
            # Known and small: gather it, then send head and body in one write.
            # Fewer writes beat earlier bytes at this size (measured in bench/).
            parts = []
            while chunk := await upstream.read():
                parts.append(chunk)
            return self._whole(request, upstream, b"".join(parts), rid, version, store, extra)
        status = upstream.status
        keep_alive = request.keep_alive
        chunked = length is None and version == b"1.1"
        if length is None and not chunked:
            keep_alive = False  # HTTP/1.0 client, unknown length: close-delimited
        framing = ((b"Content-Length: %d\r\n" % length if length is not None
                    else _CHUNKED if chunked else b"") + extra
                   + connection_field(keep_alive, version))
        head = build_response_head(version, status, upstream.reason, upstream.headers,
                                   framing=framing, request_id=rid,
                                   replace=_field_names(extra) if extra else _NO_NAMES)
        response = ProxyResponse(status, head, chunked=chunked, keep_alive=keep_alive)
        try:
            await request.start(response)
            while chunk := await upstream.read():
                await request.write(chunk)
        except (ProxyError, ConnectionError, asyncio.CancelledError) as exc:
            # The response has started: the only honest signal left is to cut the
            # connection, so the client never takes a truncated body as complete.
            upstream.abort()
            request.abort()
            if isinstance(exc, ProxyError):
                response.aborted_status = exc.status
                self.metrics.upstream_error(cluster_name,
                                            _UPSTREAM_ERROR_KIND.get(type(exc), "reset"))
                return response
            if isinstance(exc, ConnectionError):
                response.aborted_status = 499  # client closed the connection (nginx's code)
                return response
            raise
        upstream.release()
        return response

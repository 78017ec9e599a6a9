"""Active HTTP health checks: the I/O that feeds `sidecar.core.health`.

`HealthChecker` sends `GET <health_check.path>` to every endpoint of every cluster
that has a `health_check`, and records each result through `HostSet.on_check`; the
decisions (thresholds, which statuses pass, when the next check is due, panic mode)
are `HealthState`'s and `HostSet`'s. This module only does the I/O and the schedule.

Theory of operation
-------------------
* One asyncio task ("probe") per checked endpoint: check, record, sleep
  `HealthState.next_delay(rng)` (`interval` +- uniform `jitter`, counted from the end
  of the previous check), repeat. An endpoint that has not passed a check yet
  (health UNKNOWN: new, or checks just turned on) is checked at once.
* Which probes exist follows the registry through its event bus: ENDPOINT_ADDED and
  ENDPOINT_REMOVED reconcile that one endpoint, CONFIG_LOADED reconciles them all.
  A probe belongs to one `Host` object and one `HealthCheckConfig`: it is cancelled
  when the host leaves its `HostSet` (or is replaced), when checks are turned off,
  and restarted when the cluster's `health_check` changes (a new interval applies at
  once, not after the old interval's sleep). Reconciling only reads the registry.
* Checks have their own `aiohttp.ClientSession`, never the data plane's pools, so they
  never count as traffic (request metrics, breakers, `active_requests`). Every check
  opens a fresh connection and closes it (`Connection: close`), sends
  `User-Agent: sidecar-health-check/1`, keeps no cookies, follows no redirect, and
  reads at most `body_limit` bytes of the body, which it discards. `timeout` bounds
  the whole check (connect, TLS, head and the bounded body read). At most
  `max_concurrent` checks run at once; a check waiting for its turn starts its
  timeout only when it runs, so a crowd of hanging endpoints delays the others'
  checks but never fails them.
* `https://` endpoints are checked with the cluster's `tls` settings (CA file,
  SNI name, verification), like the data plane.
* `check_now()` runs one check at once (the CheckEndpointHealth RPC) and records it
  like a scheduled one; the schedule is unchanged.
* Counters for the metrics collector, plain numbers on the checker: `checks`
  ((cluster, result) -> count, result one of `RESULTS`), `latency_sum` and
  `latency_count` (per cluster, seconds).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from sidecar.config.model import ClusterSettings
from sidecar.config.resilience import HealthCheckConfig
from sidecar.core.clock import Clock, SystemClock
from sidecar.core.health import CheckResult, HealthState, HealthStatus
from sidecar.core.hosts import Host, HostSet
from sidecar.dataplane.tls import client_context
from sidecar.errors import NoHealthCheck
from sidecar.events import Event, EventKind
from sidecar.registry import Registry

__all__ = ["BODY_LIMIT", "RESULTS", "USER_AGENT", "HealthChecker"]

log = logging.getLogger("sidecar.health")

USER_AGENT = "sidecar-health-check/1"
#: Bytes of a check's response body read (and discarded) at most.
BODY_LIMIT = 64 * 1024
#: The `result` of a check in the counters: answered with an expected status, with
#: another status, not answered in time, or no answer at all (refused, reset, TLS...).
RESULTS = ("passed", "failed", "timeout", "error")


@dataclass(eq=False, slots=True)
class _Probe:
    """The task checking one host, and what it was started for."""

    hosts: HostSet
    host: Host
    config: HealthCheckConfig
    task: asyncio.Task[None] = field(init=False)


class HealthChecker:
    """Checks the endpoints of every cluster with a `health_check`; see the module doc.

    Parameters:
        registry: the endpoints (its clusters' `HostSet`s) and the event bus followed.
        rng: draws the jitter of the intervals (default a fresh `random.Random`).
        clock: `now()` measures latencies, `wall()` stamps results.
        max_concurrent: checks in flight at once.
        body_limit: bytes of a response body read at most.
    """

    def __init__(self, registry: Registry, *, rng: random.Random | None = None,
                 clock: Clock | None = None, max_concurrent: int = 32,
                 body_limit: int = BODY_LIMIT) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._registry = registry
        self._rng = rng or random.Random()
        self._clock = clock or SystemClock()
        self._max_concurrent = max_concurrent
        self._body_limit = body_limit
        self._probes: dict[tuple[str, str], _Probe] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled, not finished yet
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._unsubscribe: Any = None
        #: (cluster, result) -> checks done; result is one of RESULTS.
        self.checks: dict[tuple[str, str], int] = {}
        #: cluster -> seconds spent in checks, and how many checks.
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._session is not None

    @property
    def checked(self) -> frozenset[tuple[str, str]]:
        """The (cluster, endpoint id) pairs being checked now."""
        return frozenset(self._probes)

    async def start(self) -> None:
        """Open the session, follow the registry, and start checking. Idempotent."""
        if self._session is not None:
            return
        self._slots = asyncio.Semaphore(self._max_concurrent)
        self._session = aiohttp.ClientSession(
            # A fresh connection per check: it says "Connection: close" and is closed after.
            # No limit here: `_slots` bounds the checks in flight before their timeout starts.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            headers={"User-Agent": USER_AGENT},
            skip_auto_headers=("Accept-Encoding",),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),  # ours bounds the check
            auto_decompress=False,
            trust_env=False,
            raise_for_status=False,
        )
        self._unsubscribe = self._registry.bus.subscribe(self._on_event)
        self.sync()

    async def stop(self) -> None:
        """Stop every check and wait for the tasks to end; close the session. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for key in list(self._probes):
            self._retire(key)
        pending = list(self._retiring)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ------------------------------------------------------------ following the registry

    def _on_event(self, event: Event) -> None:
        if event.kind is EventKind.CONFIG_LOADED:
            self.sync()
        elif event.kind in (EventKind.ENDPOINT_ADDED, EventKind.ENDPOINT_REMOVED):
            if event.endpoint is not None:
                self._sync_one(event.endpoint.cluster, event.endpoint.id)

    def sync(self) -> None:
        """Reconcile every probe with the registry (which hosts exist, which clusters
        are checked, with what config)."""
        if self._session is None:
            return
        wanted = {(name, endpoint_id) for name, members in self._registry.clusters.items()
                  for endpoint_id in members.hosts.hosts}
        for key in sorted(wanted | set(self._probes)):
            self._sync_one(*key)

    def _sync_one(self, cluster: str, endpoint_id: str) -> None:
        if self._session is None:
            return
        key = (cluster, endpoint_id)
        members = self._registry.clusters.get(cluster)
        hosts = members.hosts if members is not None else None
        host = hosts.hosts.get(endpoint_id) if hosts is not None else None
        config = hosts.settings.health_check if hosts is not None else None
        probe = self._probes.get(key)
        if hosts is None or host is None or config is None or host.health is None:
            if probe is not None:
                self._retire(key)
            return
        if probe is not None:
            if probe.hosts is hosts and probe.host is host and probe.config == config:
                return
            self._retire(key)
        health = host.health
        # Not passed yet (new, or checks just turned on): check at once. Otherwise a
        # changed config starts a new schedule with its own interval.
        delay = 0.0 if health.status is HealthStatus.UNKNOWN else health.next_delay(self._rng)
        probe = _Probe(hosts, host, config)
        probe.task = asyncio.get_running_loop().create_task(
            self._run(probe, delay), name=f"health-check {cluster}/{endpoint_id}")
        self._probes[key] = probe

    def _retire(self, key: tuple[str, str]) -> None:
        probe = self._probes.pop(key)
        task = probe.task
        if not task.done():
            task.cancel()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    # ------------------------------------------------------------ checking

    async def _run(self, probe: _Probe, delay: float) -> None:
        host, hosts = probe.host, probe.hosts
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            health = host.health
            if health is None:  # checks turned off; the reconcile retires this probe
                return
            try:
                await self._check_and_record(hosts, host, health)
            except Exception:  # a bug must not end the checks of this endpoint
                log.exception("health check failed unexpectedly",
                              extra={"cluster": host.cluster, "endpoint": host.id})
            health = host.health
            if health is None:
                return
            delay = health.next_delay(self._rng)

    async def check_now(self, cluster: str, endpoint_id: str) -> CheckResult:
        """Check one endpoint now and record the result like a scheduled check.

        Raises EndpointNotFound, or NoHealthCheck when its cluster has no `health_check`.
        """
        endpoint = self._registry.endpoint(cluster, endpoint_id)
        members = self._registry.clusters[cluster]
        health = endpoint.host.health
        if members.hosts.settings.health_check is None or health is None:
            raise NoHealthCheck(f"cluster {cluster!r} has no health_check")
        if self._session is None:
            raise RuntimeError("the health checker is not running")
        return await self._check_and_record(members.hosts, endpoint.host, health)

    async def _check_and_record(self, hosts: HostSet, host: Host,
                                health: HealthState) -> CheckResult:
        result, kind = await self._check(hosts.settings, host, health)
        key = (host.cluster, kind)
        self.checks[key] = self.checks.get(key, 0) + 1
        self.latency_sum[host.cluster] = self.latency_sum.get(host.cluster, 0.0) + result.latency
        self.latency_count[host.cluster] = self.latency_count.get(host.cluster, 0) + 1
        if hosts.hosts.get(host.id) is host:  # still there: removed hosts record nothing
            hosts.on_check(host, result.passed, status=result.status, latency=result.latency,
                           error=result.error)
        return result

    async def _check(self, settings: ClusterSettings, host: Host,
                     health: HealthState) -> tuple[CheckResult, str]:
        """One GET; the result and its kind (one of RESULTS). Never raises but for
        cancellation."""
        session, slots = self._session, self._slots
        if session is None or slots is None:
            raise RuntimeError("the health checker is not running")
        config = health.config
        address = host.address
        url = URL(f"{address.scheme}://{address.authority}{config.path}", encoded=True)
        kwargs: dict[str, Any] = {}
        async with slots:
            clock = self._clock
            wall, start = clock.wall(), clock.now()
            status: int | None = None
            kind, error = "", ""
            try:
                if address.scheme == "https":
                    kwargs["ssl"] = client_context(settings.tls)
                    if settings.tls.server_name:
                        kwargs["server_hostname"] = settings.tls.server_name
                async with asyncio.timeout(config.timeout):
                    async with session.get(
                            url, allow_redirects=False,
                            headers={"Host": config.host or address.authority},
                            **kwargs) as response:
                        await _discard(response.content, self._body_limit)
                        status = response.status
            except TimeoutError:
                kind, error = "timeout", f"timed out after {config.timeout:g}s"
            except (aiohttp.ClientError, OSError) as exc:  # OSError: ssl.SSLError too
                kind, error = "error", _describe(exc)
            latency = clock.now() - start
        if status is None:
            return CheckResult(wall, False, None, latency, error), kind
        passed = health.passes(status)
        return CheckResult(wall, passed, status, latency, ""), "passed" if passed else "failed"


async def _discard(content: aiohttp.StreamReader, limit: int) -> None:
    """Read and drop up to `limit` bytes of a body (the connection is closed after)."""
    read = 0
    while read < limit:
        chunk = await content.readany()
        if not chunk:
            return
        read += len(chunk)


def _describe(exc: BaseException) -> str:
    """A short, stable description of why a check got no answer."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        why = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
        return f"tls: certificate refused: {why or cause}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        return f"tls: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect failed: {exc.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before the response"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid response: {exc.message}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response body broken"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"connection error: {exc.strerror or exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Drills: active health checks seen from outside, through every surface an operator
has: ListEndpoints and WatchStatus over a real gRPC channel, /metrics over HTTP, and
the traffic itself.

Real upstreams whose /healthz the test flips, a real sidecar. Every wait is on a bus
event or a request (bounded by `support.WAIT`), never a sleep.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.app import Sidecar
from sidecar.core.health import HealthStatus
from sidecar.events import Event, EventKind
from sidecar.registry import EndpointStatus

from ..integration.conftest import base_url
from .support import (
    Pulse,
    admin_stub,
    cluster,
    health_became,
    health_upstreams,
    host_of,
    list_endpoints,
    load,
    panic_became,
    read_until,
    routed,
    scrape,
)

# Checks every 50 ms, no jitter: a threshold of 2 is crossed in about 0.1 s.
FAST = {"path": "/healthz", "interval": 0.05, "jitter": 0, "timeout": 1,
        "healthy_threshold": 2, "unhealthy_threshold": 2}
IDS = ("e0", "e1", "e2")
WatchMatch = Callable[[res.StatusEvent], bool]


def status_became(endpoint_id: str, status: EndpointStatus) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (event.kind is EventKind.ENDPOINT_STATUS_CHANGED and event.endpoint is not None
                and event.endpoint.id == endpoint_id and event.endpoint.status is status)

    return match


def all_healthy(sidecar: Sidecar) -> Callable[[], bool]:
    def check() -> bool:
        hosts = [host_of(sidecar, "app", i) for i in IDS]
        return (all(h.health is not None and h.health.status is HealthStatus.HEALTHY
                    for h in hosts) and not sidecar.registry.clusters["app"].hosts.panic)

    return check


def watch_health(endpoint_id: str, status: int) -> WatchMatch:
    def match(event: res.StatusEvent) -> bool:
        return (event.WhichOneof("change") == "health_changed"
                and event.health_changed.endpoint.id == endpoint_id
                and event.health_changed.status == status)

    return match


def watch_status(endpoint_id: str, status: int) -> WatchMatch:
    def match(event: res.StatusEvent) -> bool:
        return (event.WhichOneof("change") == "endpoint_status_changed"
                and event.endpoint_status_changed.endpoint.id == endpoint_id
                and event.endpoint_status_changed.endpoint.status == status)

    return match


def watch_panic(panic: bool) -> WatchMatch:
    def match(event: res.StatusEvent) -> bool:
        return (event.WhichOneof("change") == "panic_changed"
                and event.panic_changed.cluster == "app" and event.panic_changed.panic is panic)

    return match


# ---------------------------------------------------------------- drill 2


async def test_health_check_flip_in_list_endpoints_watch_status_and_metrics(
        start_sidecar, client):
    pulse = Pulse()
    async with health_upstreams(pulse, "a", "b", "c") as ups:
        sidecar = await start_sidecar(routed(cluster("app", [u.url for u in ups],
                                                     health_check=FAST)))
        pulse.follow(sidecar)
        await pulse.until(all_healthy(sidecar))
        url = base_url(sidecar) + "/work"
        async with admin_stub(sidecar) as stub:
            watch = stub.WatchStatus(api.WatchStatusRequest(cluster="app"))
            first = await watch.read()
            assert first.WhichOneof("kind") == "snapshot"  # subscribed: no event is missed
            assert {(e.id, e.status, e.health) for e in first.snapshot.endpoints} == {
                (i, res.ENDPOINT_STATUS_ACTIVE, res.HEALTH_STATUS_HEALTHY) for i in IDS}
            seen: list[res.StatusEvent] = []

            # --- /healthz of e0 answers 500: unhealthy after 2 failed checks.
            mark = len(pulse.events)
            ups[0].health_status = 500
            change = await pulse.event(health_became("e0", HealthStatus.UNHEALTHY), mark)
            assert change.reason == "2 consecutive failed checks: status 500"
            await pulse.event(status_became("e0", EndpointStatus.UNHEALTHY), mark)

            listed = await list_endpoints(stub, "app")
            e0 = listed["e0"]
            assert (e0.status, e0.health) == (res.ENDPOINT_STATUS_UNHEALTHY,
                                              res.HEALTH_STATUS_UNHEALTHY)
            assert e0.health_reason == "2 consecutive failed checks: status 500"
            newest = e0.health_check_results[:2]  # newest first
            assert [(r.passed, r.status_code, r.error) for r in newest] == [
                (False, 500, "")] * 2
            assert e0.breaker_state == res.BREAKER_STATE_CLOSED  # checks are not traffic
            for other in ("e1", "e2"):
                assert (listed[other].status, listed[other].health) == (
                    res.ENDPOINT_STATUS_ACTIVE, res.HEALTH_STATUS_HEALTHY)
            failed = await stub.ListEndpoints(api.ListEndpointsRequest(
                cluster="app", status=res.ENDPOINT_STATUS_UNHEALTHY), timeout=8)
            assert [e.id for e in failed.endpoints] == ["e0"]

            health_event = await read_until(watch, watch_health("e0", res.HEALTH_STATUS_UNHEALTHY),
                                            seen)
            assert health_event.health_changed.previous_status == res.HEALTH_STATUS_HEALTHY
            assert health_event.health_changed.reason == change.reason
            status_event = await read_until(watch, watch_status("e0",
                                                                res.ENDPOINT_STATUS_UNHEALTHY),
                                            seen)
            assert (status_event.endpoint_status_changed.previous_status
                    == res.ENDPOINT_STATUS_ACTIVE)
            assert health_event.sequence < status_event.sequence

            metrics = await scrape(client, sidecar)
            assert metrics.value("sidecar_endpoints", cluster="app", status="unhealthy") == 1
            assert metrics.value("sidecar_endpoints", cluster="app", status="active") == 2
            assert metrics.value("sidecar_panic_mode", cluster="app") == 0

            # No panic (2 of 3 pass): the unhealthy endpoint takes no traffic.
            traffic = [u.traffic for u in ups]
            result = await load(client, url, 30)
            assert result.statuses == [200] * 30
            assert ups[0].traffic == traffic[0]
            assert {o.served_by for o in result.outcomes} == {"b", "c"}

            # --- /healthz answers 200 again: healthy after 2 passing checks.
            mark = len(pulse.events)
            ups[0].health_status = 200
            change = await pulse.event(health_became("e0", HealthStatus.HEALTHY), mark)
            assert change.reason == "2 consecutive passing checks"
            await pulse.event(status_became("e0", EndpointStatus.ACTIVE), mark)

            e0 = (await list_endpoints(stub, "app"))["e0"]
            assert (e0.status, e0.health) == (res.ENDPOINT_STATUS_ACTIVE,
                                              res.HEALTH_STATUS_HEALTHY)
            assert e0.health_reason == "2 consecutive passing checks"
            assert [(r.passed, r.status_code) for r in e0.health_check_results[:2]] == [
                (True, 200)] * 2

            health_event = await read_until(watch, watch_health("e0", res.HEALTH_STATUS_HEALTHY),
                                            seen)
            assert health_event.health_changed.previous_status == res.HEALTH_STATUS_UNHEALTHY
            status_event = await read_until(watch, watch_status("e0",
                                                                res.ENDPOINT_STATUS_ACTIVE),
                                            seen)
            assert (status_event.endpoint_status_changed.previous_status
                    == res.ENDPOINT_STATUS_UNHEALTHY)
            # Exactly these four changes, in order; nothing of e1 or e2 moved.
            kinds = [(e.WhichOneof("change"), getattr(e, e.WhichOneof("change")).endpoint.id)
                     for e in seen]
            assert kinds == [("health_changed", "e0"), ("endpoint_status_changed", "e0")] * 2
            watch.cancel()

            metrics = await scrape(client, sidecar)
            assert metrics.value("sidecar_endpoints", cluster="app", status="unhealthy") == 0
            assert metrics.value("sidecar_endpoints", cluster="app", status="active") == 3

            result = await load(client, url, 30)
            assert result.statuses == [200] * 30
            assert ups[0].traffic > traffic[0]  # back in rotation


# ---------------------------------------------------------------- drill 3


async def test_panic_mode_when_every_check_fails_but_endpoints_serve(start_sidecar, client):
    pulse = Pulse()
    async with health_upstreams(pulse, "a", "b", "c") as ups:
        sidecar = await start_sidecar(routed(cluster("app", [u.url for u in ups],
                                                     health_check=FAST)))
        pulse.follow(sidecar)
        await pulse.until(all_healthy(sidecar))
        hosts = sidecar.registry.clusters["app"].hosts
        url = base_url(sidecar) + "/work"
        async with admin_stub(sidecar) as stub:
            watch = stub.WatchStatus(api.WatchStatusRequest(cluster="app"))
            assert (await watch.read()).WhichOneof("kind") == "snapshot"
            seen: list[res.StatusEvent] = []

            # Every /healthz fails; the endpoints still serve everything else.
            mark = len(pulse.events)
            for up in ups:
                up.health_status = 500
            entered = await pulse.event(panic_became("app", True), mark)
            assert entered.reason == ("fewer than 50% of the endpoints pass their health "
                                      "checks: checks ignored")
            # It entered panic right when the second of three went unhealthy (1 < 0.5 x 3).
            before = pulse.events[mark:pulse.events.index(entered)]
            went_unhealthy = [e for e in before if e.kind is EventKind.HEALTH_CHANGED
                              and e.health is not None
                              and e.health.status is HealthStatus.UNHEALTHY]
            assert len(went_unhealthy) == 2 and went_unhealthy[-1] is before[-1]
            for endpoint_id in IDS:
                await pulse.event(health_became(endpoint_id, HealthStatus.UNHEALTHY), mark)
            assert hosts.panic
            assert len(pulse.since(mark, EventKind.PANIC_CHANGED)) == 1

            # Checks ignored: every request succeeds, on every endpoint.
            traffic = [u.traffic for u in ups]
            result = await load(client, url, 60)
            assert result.statuses == [200] * 60
            assert all(u.traffic > t for u, t in zip(ups, traffic, strict=True))
            assert {o.served_by for o in result.outcomes} == {"a", "b", "c"}

            listed = await list_endpoints(stub, "app")
            for endpoint_id in IDS:  # failing checks, yet in rotation
                assert (listed[endpoint_id].health, listed[endpoint_id].status) == (
                    res.HEALTH_STATUS_UNHEALTHY, res.ENDPOINT_STATUS_ACTIVE)
            resolved = await stub.ResolveRoute(api.ResolveRouteRequest(path="/work"), timeout=8)
            assert resolved.panic
            metrics = await scrape(client, sidecar)
            assert metrics.value("sidecar_panic_mode", cluster="app") == 1
            assert metrics.value("sidecar_endpoints", cluster="app", status="active") == 3

            panic_event = await read_until(watch, watch_panic(True), seen)
            assert panic_event.panic_changed.reason == entered.reason

            # The checks pass again: panic is left once 2 of 3 pass.
            mark = len(pulse.events)
            for up in ups:
                up.health_status = 200
            await pulse.event(panic_became("app", False), mark)
            await pulse.until(all_healthy(sidecar))
            metrics = await scrape(client, sidecar)
            assert metrics.value("sidecar_panic_mode", cluster="app") == 0
            left = await read_until(watch, watch_panic(False), seen)
            assert left.panic_changed.reason == "enough endpoints pass their health checks again"
            assert [e.panic_changed.panic for e in seen
                    if e.WhichOneof("change") == "panic_changed"] == [True, False]
            watch.cancel()

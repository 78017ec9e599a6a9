"""HostSet: which hosts are usable, panic mode, breaker wake-up, slow start, events.

Pure playbooks: a FakeClock, a seeded Random, no sockets."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from sidecar.config.model import ClusterSettings
from sidecar.core.addresses import UpstreamAddress
from sidecar.core.breaker import BreakerState
from sidecar.core.clock import FakeClock
from sidecar.core.hosts import (
    EndpointStatus,
    HostEvent,
    HostEventKind,
    HostSet,
    OperatorStatus,
)


def make(n: int = 3, clock: FakeClock | None = None, **settings: Any
         ) -> tuple[HostSet, list[HostEvent], FakeClock]:
    clock = clock or FakeClock()
    events: list[HostEvent] = []
    hosts = HostSet("c", ClusterSettings.model_validate(settings), clock=clock,
                    rng=random.Random(7), listener=events.append)
    for i in range(n):
        hosts.add(hosts.new_host(f"h{i}", UpstreamAddress("http", "127.0.0.1", 8000 + i), 1,
                                 OperatorStatus.ACTIVE))
    return hosts, events, clock


def ids(hosts: HostSet) -> list[str]:
    return [h.id for h in hosts.usable]


def test_all_active_hosts_are_usable_and_sorted() -> None:
    hosts, events, _ = make(3)
    assert ids(hosts) == ["h0", "h1", "h2"]
    assert events == []  # a new host's first status is no change


def test_operator_status_takes_a_host_out_and_says_so() -> None:
    hosts, events, _ = make(2)
    hosts.hosts["h1"].operator = OperatorStatus.DRAINING
    hosts.rebuild("drain")
    assert ids(hosts) == ["h0"]
    [event] = events
    assert (event.kind, event.previous_status, event.reason) == (
        HostEventKind.STATUS, EndpointStatus.ACTIVE, "drain")
    assert hosts.hosts["h1"].status is EndpointStatus.DRAINING


def test_consecutive_failures_open_the_breaker_and_eject_the_host() -> None:
    hosts, events, clock = make(2)
    bad = hosts.hosts["h1"]
    for _ in range(5):
        hosts.on_failure(bad, "connect_failure")
    assert bad.breaker.state is BreakerState.OPEN and ids(hosts) == ["h0"]
    assert bad.status is EndpointStatus.UNHEALTHY
    kinds = [e.kind for e in events]
    assert kinds == [HostEventKind.BREAKER, HostEventKind.STATUS]
    assert events[1].reason == "breaker open: 5 consecutive connect failures"
    assert hosts.retry_after() > 0


def test_open_breaker_half_opens_on_the_first_pick_after_its_time() -> None:
    hosts, events, clock = make(1)
    host = hosts.hosts["h0"]
    hosts.trip(host, "tripped by admin", 10.0)
    assert hosts.pick(clock.now()) is None
    assert hosts.wake_at == clock.now() + 10.0
    clock.advance(10.0)
    picked = hosts.pick(clock.now())
    assert picked is host and host.breaker.state is BreakerState.HALF_OPEN
    assert [e.transition.state for e in events if e.transition] == [
        BreakerState.OPEN, BreakerState.HALF_OPEN]
    # One probe at a time (half_open_requests 1): the next pick finds no slot.
    assert hosts.pick(clock.now()) is None
    hosts.on_success(host)
    assert host.breaker.state is BreakerState.HALF_OPEN  # close_after 2
    assert hosts.pick(clock.now()) is host
    hosts.on_success(host)
    assert host.breaker.state is BreakerState.CLOSED and host.status is EndpointStatus.ACTIVE


def test_a_released_probe_frees_its_slot() -> None:
    hosts, _, clock = make(1)
    host = hosts.hosts["h0"]
    hosts.trip(host, "x", 1.0)
    clock.advance(1.0)
    assert hosts.pick(clock.now()) is host
    hosts.release(host)  # cancelled: no outcome
    assert hosts.pick(clock.now()) is host


def test_pick_avoids_hosts_already_tried_when_it_can() -> None:
    hosts, _, clock = make(3)
    tried = (hosts.hosts["h0"], hosts.hosts["h1"])
    for _ in range(20):
        assert hosts.pick(clock.now(), tried) is hosts.hosts["h2"]
    everything = tuple(hosts.hosts.values())
    assert hosts.pick(clock.now(), everything) is not None  # nothing else: any


def test_health_checks_gate_new_hosts_and_panic_ignores_them() -> None:
    hosts, events, _ = make(4, health_check={"path": "/h", "unhealthy_threshold": 1})
    # UNKNOWN until a first passing check: nobody usable... which is panic (0 of 4 pass).
    assert hosts.panic and ids(hosts) == ["h0", "h1", "h2", "h3"]
    for i in range(3):
        hosts.on_check(hosts.hosts[f"h{i}"], True, status=200, latency=0.01)
    assert not hosts.panic and ids(hosts) == ["h0", "h1", "h2"]
    panic_events = [e.panic for e in events if e.kind is HostEventKind.PANIC]
    assert panic_events == [True, False]
    for i in range(2):  # 1 of 4 passing < 0.5: panic again, checks ignored
        hosts.on_check(hosts.hosts[f"h{i}"], False, status=500, latency=0.01)
    assert hosts.panic and len(ids(hosts)) == 4


def test_open_breakers_are_never_ignored_by_panic() -> None:
    hosts, _, _ = make(2, health_check={"path": "/h"})
    assert hosts.panic
    hosts.trip(hosts.hosts["h0"], "x")
    assert ids(hosts) == ["h1"]


def test_reload_keeps_breaker_state_and_swaps_the_balancer_only_on_policy_change() -> None:
    hosts, _, _ = make(2)
    hosts.trip(hosts.hosts["h0"], "x", 30.0)
    balancer = hosts._balancer
    hosts.configure(ClusterSettings(timeout=5.0))
    assert hosts.hosts["h0"].breaker.state is BreakerState.OPEN and hosts._balancer is balancer
    hosts.configure(ClusterSettings(lb_policy="random"))
    assert hosts._balancer is not balancer


def test_slow_start_ramps_a_new_host_from_a_tenth_to_its_full_share() -> None:
    clock = FakeClock()
    hosts, _, _ = make(2, clock=clock, slow_start=10.0)
    clock.advance(20.0)
    hosts.pick(clock.now())  # past the window: full weights
    assert [h.weight for h in hosts.usable] == [1, 1]
    hosts.add(hosts.new_host("h9", UpstreamAddress("http", "127.0.0.1", 9), 1,
                             OperatorStatus.ACTIVE))
    weights = {h.id: h.weight for h in hosts.usable}
    assert weights == {"h0": 10, "h1": 10, "h9": 1}  # scaled by 10; the new one 10 %
    picks = Counter(hosts.pick(clock.now()).id for _ in range(2100))  # type: ignore[union-attr]
    assert picks["h9"] == 100  # smooth round robin: exactly its share of 1/21
    clock.advance(5.0)
    hosts.pick(clock.now())  # a ramp step is due: weights move
    assert {h.id: h.weight for h in hosts.usable}["h9"] == 6  # 10 % + 90 % x 0.5 -> 5.5
    clock.advance(5.0)
    hosts.pick(clock.now())
    assert [h.weight for h in hosts.usable] == [1, 1, 1]
    assert hosts.wake_at == float("inf")

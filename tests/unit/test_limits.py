"""Cluster admission: admit or name the limit, and the gauges come back to zero."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.resilience import LimitsConfig
from sidecar.core.limits import LIMIT_NAMES, MAX_PENDING, MAX_REQUESTS, ClusterLimits


def limits(**config: Any) -> ClusterLimits:
    return ClusterLimits(LimitsConfig(**config))


def test_defaults() -> None:
    lim = limits()
    assert (lim.active, lim.pending) == (0, 0)
    assert dict(lim.overflows) == {MAX_REQUESTS: 0, MAX_PENDING: 0}
    assert set(LIMIT_NAMES) == {"max_requests", "max_pending"}


def test_admits_up_to_max_requests_then_overflows_at_once() -> None:
    lim = limits(max_requests=3)
    assert [lim.try_admit() for _ in range(5)] == [None, None, None, MAX_REQUESTS, MAX_REQUESTS]
    assert lim.active == 3
    assert lim.overflows[MAX_REQUESTS] == 2 and lim.overflows[MAX_PENDING] == 0
    lim.done()
    assert lim.try_admit() is None and lim.active == 3
    for _ in range(3):
        lim.done()
    assert lim.active == 0


def test_pending_up_to_max_pending() -> None:
    lim = limits(max_pending=2)
    assert [lim.pending_enter() for _ in range(3)] == [True, True, False]
    assert lim.pending == 2 and lim.overflows[MAX_PENDING] == 1
    lim.pending_exit()
    assert lim.pending_enter()
    lim.pending_exit()
    lim.pending_exit()
    assert lim.pending == 0


def test_max_pending_zero_lets_nobody_wait() -> None:
    lim = limits(max_pending=0)
    assert not lim.pending_enter()
    assert lim.pending == 0 and lim.overflows[MAX_PENDING] == 1


def test_disabled_admits_all_and_still_counts() -> None:
    lim = limits(enabled=False, max_requests=1, max_pending=0)
    assert all(lim.try_admit() is None for _ in range(100))
    assert all(lim.pending_enter() for _ in range(100))
    assert (lim.active, lim.pending) == (100, 100)
    assert dict(lim.overflows) == {MAX_REQUESTS: 0, MAX_PENDING: 0}


def test_a_burst_gauges_return_to_zero() -> None:
    """A playbook: 10 requests against max_requests 4 / max_pending 2."""
    lim = limits(max_requests=4, max_pending=2)
    admitted = [i for i in range(10) if lim.try_admit() is None]
    assert admitted == [0, 1, 2, 3]
    waiting = [i for i in admitted if lim.pending_enter()]
    assert waiting == [0, 1]
    for _ in waiting:
        lim.pending_exit()
    for _ in admitted:
        lim.done()
    assert (lim.active, lim.pending) == (0, 0)
    assert dict(lim.overflows) == {MAX_REQUESTS: 6, MAX_PENDING: 2}


@pytest.mark.parametrize("enabled", [True, False])
def test_reload_keeps_gauges_and_counters(enabled: bool) -> None:
    lim = limits(max_requests=2)
    overflows = lim.overflows
    lim.try_admit()
    lim.try_admit()
    assert lim.try_admit() == MAX_REQUESTS
    lim.update_config(LimitsConfig(enabled=enabled, max_requests=1))
    assert lim.active == 2 and lim.overflows is overflows and overflows[MAX_REQUESTS] == 1
    if enabled:
        # Over a lowered limit: the ones in flight finish, new ones wait for room.
        assert lim.try_admit() == MAX_REQUESTS
        lim.done()
        assert lim.try_admit() == MAX_REQUESTS
        lim.done()
        assert lim.try_admit() is None
    else:
        assert lim.try_admit() is None


def test_overflows_are_read_only() -> None:
    lim = limits()
    with pytest.raises(TypeError):
        lim.overflows[MAX_REQUESTS] = 5  # type: ignore[index]

"""DeadlineWheel: deadlines fire late by at most a tick, never early, and only once."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.dataplane.deadlines import DeadlineWheel


async def test_deadline_fires_only_when_due_and_cancels_its_task() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, tick=0.01)
    started = asyncio.Event()
    deadlines = []

    async def waiter() -> None:
        deadlines.append(wheel.add(5.0))
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(waiter())
    await started.wait()
    now = loop.time()
    assert wheel.expire(now + 4.9) == 0
    assert not deadlines[0].expired and not task.done()
    assert wheel.expire(now + 5.02) == 1
    assert deadlines[0].expired
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(wheel) == 0
    wheel.close()


async def test_removed_deadline_never_fires() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, tick=0.01)
    deadline = wheel.add(0.05)
    wheel.remove(deadline)
    assert wheel.expire(loop.time() + 1) == 0
    assert not deadline.expired
    wheel.close()


async def test_sweep_timer_fires_real_deadline_and_stops_when_empty() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, tick=0.005, linger=0.005)

    async def slow() -> None:
        deadline = wheel.add(0.02)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert deadline.expired
            raise

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.ensure_future(slow()), 5)
    assert wheel._timer is None  # no timer keeps running once nothing is pending
    wheel.close()


def _tick(wheel: DeadlineWheel) -> None:
    """What the armed sweep timer does when it fires: done now instead of waited for."""
    assert wheel._timer is not None
    wheel._timer.cancel()
    wheel._sweep()


async def test_sweep_stops_once_every_deadline_is_removed() -> None:
    """A request that finishes long before its timeout leaves nothing to sweep for: the
    timer stops after `linger` instead of running until the timeout's bucket."""
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, tick=0.01, linger=0.03)  # three idle ticks
    first, second = wheel.add(60.0), wheel.add(60.0)
    assert wheel._timer is not None and len(wheel) == 2
    wheel.remove(first)
    wheel.remove(first)  # a second remove changes nothing
    assert len(wheel) == 1
    for _ in range(5):
        _tick(wheel)
        assert wheel._timer is not None  # `second` is still pending
    wheel.remove(second)
    _tick(wheel)
    _tick(wheel)
    assert wheel._timer is not None  # lingering: traffic may come back
    late = wheel.add(60.0)  # and it does: the idle count starts over
    wheel.remove(late)
    for _ in range(2):
        _tick(wheel)
        assert wheel._timer is not None
    _tick(wheel)
    assert wheel._timer is None and len(wheel) == 0
    third = wheel.add(0.01)  # the next deadline starts the sweep again
    assert wheel._timer is not None and len(wheel) == 1
    wheel.remove(third)
    wheel.close()


async def test_many_deadlines_in_many_buckets() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, tick=0.01)
    ready = asyncio.Event()
    deadlines = []
    added_at: list[float] = []

    async def holder() -> None:
        added_at.append(loop.time())
        deadlines.extend(wheel.add(0.01 * i) for i in range(1, 101))
        ready.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(holder())
    await ready.wait()
    fired = wheel.expire(added_at[0] + 0.5)
    # Due: those for 0.01..0.5 s, give or take the tick a deadline may be rounded up by.
    assert 45 <= fired <= 50
    assert all(d.expired for d in deadlines[:fired])
    assert not any(d.expired for d in deadlines[fired:])
    with pytest.raises(asyncio.CancelledError):
        await task
    wheel.close()

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
    wheel = DeadlineWheel(loop, tick=0.005)

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

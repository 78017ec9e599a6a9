"""Request deadlines on one shared timer: a hashed timer wheel for the hot path.

`asyncio.timeout()` arms and disarms an event-loop timer for every request
(about 3.8 us per request on uvloop here, more than building both heads). A
proxy has thousands of deadlines in flight and almost none of them fire, so this
keeps them in buckets of `tick` seconds and runs one sweep per tick while any
are pending: adding and removing a deadline is a set operation. Once no deadline
has been added or pending for `linger` seconds, the sweep stops (the next `add`
starts it again): an idle sidecar does not wake 100 times a second for as long as
its longest timeout after its last request, and a busy one, whose requests come and
go between ticks, does not re-arm the timer every few requests.

A deadline fires between 0 and `tick` late, never early. When it fires, the
request's task is cancelled (like `asyncio.timeout`) and `Deadline.expired` is
set, so the request can tell its own timeout from a cancellation by its client.
"""

from __future__ import annotations

import asyncio
import math
from typing import cast

__all__ = ["Deadline", "DeadlineWheel"]


class Deadline:
    __slots__ = ("task", "key", "expired")

    def __init__(self, task: asyncio.Task[None], key: int) -> None:
        self.task = task
        self.key = key
        self.expired = False


class DeadlineWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.01,
                 linger: float = 1.0) -> None:
        self._loop = loop
        self._tick = tick
        self._linger_ticks = max(1, round(linger / tick))
        self._idle_ticks = 0  # ticks in a row with no deadline added or pending
        self._buckets: dict[int, set[Deadline]] = {}
        self._next_key = 0
        self._pending = 0  # deadlines added and neither removed nor fired
        self._timer: asyncio.TimerHandle | None = None

    def add(self, timeout: float, task: asyncio.Task[None] | None = None) -> Deadline:
        """Cancel `task` (by default the current one) in `timeout` seconds unless
        removed before. The data path passes the request's task, known already:
        asking asyncio costs a Python call per request on 3.11."""
        if task is None:
            # With the loop given, current_task() skips get_running_loop(), which costs
            # a getpid() system call per call on Python 3.11.
            task = cast("asyncio.Task[None] | None", asyncio.current_task(self._loop))
            assert task is not None
        now = self._loop.time()
        key = math.ceil((now + timeout) / self._tick)
        deadline = Deadline(task, key)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
        bucket.add(deadline)
        self._pending += 1
        self._idle_ticks = 0
        if self._timer is None:
            self._next_key = math.floor(now / self._tick)
            self._timer = self._loop.call_later(self._tick, self._sweep)
        return deadline

    def remove(self, deadline: Deadline) -> None:
        bucket = self._buckets.get(deadline.key)
        if bucket is not None and deadline in bucket:
            bucket.remove(deadline)
            self._pending -= 1

    def __len__(self) -> int:
        return self._pending

    def _sweep(self) -> None:
        self.expire(self._loop.time())
        self._idle_ticks = 0 if self._pending else self._idle_ticks + 1
        if self._idle_ticks < self._linger_ticks:
            self._timer = self._loop.call_later(self._tick, self._sweep)
        else:  # only emptied buckets are left: drop them and sleep until the next add
            self._buckets.clear()
            self._timer = None
            self._idle_ticks = 0

    def expire(self, now: float) -> int:
        """Fire every deadline due at `now`; returns how many fired."""
        now_key = math.floor(now / self._tick)
        fired = 0
        buckets = self._buckets
        if len(buckets) < now_key - self._next_key:
            due = [key for key in buckets if key <= now_key]
        else:
            due = [key for key in range(self._next_key, now_key + 1) if key in buckets]
        for key in due:
            for deadline in buckets.pop(key):
                deadline.expired = True
                deadline.task.cancel()
                fired += 1
        self._pending -= fired
        self._next_key = max(self._next_key, now_key + 1)
        return fired

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._pending = 0

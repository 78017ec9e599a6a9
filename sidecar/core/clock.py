"""Time as a dependency: pure logic takes a `Clock`, tests step a `FakeClock`.

Two kinds of time, never mixed: `now()` is monotonic and measures durations
(deadlines, open breakers, windows); `wall()` is Unix time, may jump, and is only
for timestamps shown to people (create_time, event times).
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a clock that never goes backwards (durations, deadlines)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch, for timestamps shown to people."""
        ...


class SystemClock:
    """The process's clocks: `time.monotonic` and `time.time`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to; `wall()` moves with it, `wall_offset` apart."""

    __slots__ = ("_now", "_wall_offset")

    def __init__(self, start: float = 1_000.0, *, wall_offset: float = 0.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds

"""The last few events on the bus, kept for the status page's first load.

A WatchStatus stream starts with a snapshot of the endpoints and then shows only what
changes after it, so a page opened now could not say that a breaker opened a minute
ago. `RecentEvents` subscribes to the bus when the sidecar is built, before the first
configuration is applied, and keeps the newest `size` events in a ring: memory stays
bounded however long the sidecar runs. It keeps the bus's own `Event` objects and
converts nothing; the page converts them when it is asked (`admin.status`).

Like every bus subscriber it runs synchronously on the event loop's thread and never
blocks (a deque append).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from sidecar.events import Event, EventBus

__all__ = ["DEFAULT_RECENT_EVENTS", "RecentEvents"]

DEFAULT_RECENT_EVENTS = 100


class RecentEvents:
    """The newest `size` events published on `bus`, oldest first."""

    def __init__(self, bus: EventBus, size: int = DEFAULT_RECENT_EVENTS) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._ring: deque[Event] = deque(maxlen=size)
        self._unsubscribe: Callable[[], None] | None = bus.subscribe(self._ring.append)

    @property
    def size(self) -> int:
        maxlen = self._ring.maxlen
        assert maxlen is not None
        return maxlen

    def events(self) -> list[Event]:
        """The events kept, oldest first (a copy)."""
        return list(self._ring)

    def close(self) -> None:
        """Stop following the bus; the events kept stay readable. Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

"""WatchStatus streams: a snapshot, then every registry event after it.

Theory of operation
-------------------

A `Watcher` subscribes to the registry when it is created, *before* it takes its
first snapshot, so no event can fall between the two. It starts in the "needs a
snapshot" state; `pop_nowait()` in that state takes the snapshot from the registry
right then and returns it. Events that arrive while a snapshot is pending are not
queued: the snapshot, taken later, already includes them.

After a snapshot, events are queued (endpoint events only for the watched cluster,
config and lifecycle events always) and handed out in order; any event whose sequence is not
above the last snapshot's is dropped, so nothing is delivered twice.

The registry calls listeners synchronously and must never wait for a slow client,
so the queue is bounded. When it is full, the watcher drops the whole queue and
goes back to "needs a snapshot": the client receives a fresh snapshot next and
continues from there, and memory stays bounded whatever the client does.

All of this is synchronous and needs no event loop. `next()` adds the one await:
it waits for an item, and returns None once the watcher is closed (the client went
away, or `WatchHub.close()` ended every stream at shutdown).

Registry listeners run on the thread that changes the registry; like the rest of
the sidecar, that is the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.events import Event, EventKind
from sidecar.registry import ConfigInfo, EndpointInfo, Registry

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_MAX_WATCHERS", "Snapshot", "TooManyWatchers",
           "WatchHub", "WatchItem", "Watcher"]

DEFAULT_MAX_QUEUE = 1024
#: Events about the whole sidecar: sent to a watcher of one cluster too.
_ALWAYS_SENT = frozenset({EventKind.CONFIG_LOADED, EventKind.CONFIG_REJECTED,
                          EventKind.LIFECYCLE_CHANGED, EventKind.STATE_FILE_CORRUPT})
DEFAULT_MAX_WATCHERS = 64


class TooManyWatchers(RuntimeError):
    """`max_watchers` streams are open already (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The registry's state as of event number `sequence`."""

    endpoints: list[EndpointInfo]
    config: ConfigInfo | None
    sequence: int


WatchItem = Snapshot | Event


class Watcher:
    """One WatchStatus stream's view of the registry.

    Parameters:
        registry: the registry to follow.
        cluster: only endpoint events of this cluster; "" for every cluster.
        max_queue: events held for a slow consumer before it is re-snapshotted.
        on_close: called once when the watcher closes (the hub forgets it).
    """

    def __init__(self, registry: Registry, cluster: str = "", *,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 on_close: Callable[[Watcher], None] | None = None) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._registry = registry
        self.cluster = cluster
        self._max_queue = max_queue
        self._on_close = on_close
        self._queue: deque[Event] = deque()
        self._needs_snapshot = True
        self._last_sequence = -1
        self._closed = False
        self._wakeup = asyncio.Event()
        self.overflows = 0  # times the queue was dropped for a fresh snapshot
        # Subscribe first: the snapshot is taken later, by the first pop_nowait().
        self._unsubscribe: Callable[[], None] | None = registry.bus.subscribe(self._on_event)

    # ------------------------------------------------------------ registry side

    def _on_event(self, event: Event) -> None:
        if self._closed or self._needs_snapshot or not self._wanted(event):
            return
        if len(self._queue) >= self._max_queue:
            # Never block the registry, never grow: start over from a snapshot.
            self._queue.clear()
            self._needs_snapshot = True
            self.overflows += 1
        else:
            self._queue.append(event)
        self._wakeup.set()

    def _wanted(self, event: Event) -> bool:
        if not self.cluster or event.kind in _ALWAYS_SENT:
            return True
        cluster = event.endpoint.cluster if event.endpoint is not None else event.cluster
        return cluster == self.cluster

    # ------------------------------------------------------------ consumer side

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Events queued and not yet handed out."""
        return len(self._queue)

    def pop_nowait(self) -> WatchItem | None:
        """The next item, or None if there is none yet (or the watcher is closed)."""
        if self._closed:
            return None
        if self._needs_snapshot:
            endpoints, config, sequence = self._registry.snapshot(self.cluster or None)
            self._needs_snapshot = False
            self._last_sequence = sequence
            return Snapshot(endpoints, config, sequence)
        while self._queue:
            event = self._queue.popleft()
            if event.sequence > self._last_sequence:
                self._last_sequence = event.sequence
                return event
        return None

    async def next(self) -> WatchItem | None:
        """Wait for the next item; None once the watcher is closed."""
        while True:
            item = self.pop_nowait()
            if item is not None or self._closed:
                return item
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Unsubscribe and end the stream; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._wakeup.set()
        if self._on_close is not None:
            self._on_close(self)


class WatchHub:
    """Every open Watcher of one registry, so shutdown can end all streams at once,
    and at most `max_watchers` of them."""

    def __init__(self, registry: Registry, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_watchers: int = DEFAULT_MAX_WATCHERS) -> None:
        if max_watchers < 1:
            raise ValueError("max_watchers must be at least 1")
        self._registry = registry
        self._max_queue = max_queue
        self.max_watchers = max_watchers
        self._watchers: set[Watcher] = set()
        self._closed = False

    @property
    def watchers(self) -> frozenset[Watcher]:
        return frozenset(self._watchers)

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self, cluster: str = "") -> Watcher:
        """A new watcher, subscribed already; closed at once if the hub is closed.
        TooManyWatchers when `max_watchers` are open."""
        if len(self._watchers) >= self.max_watchers and not self._closed:
            raise TooManyWatchers(f"{self.max_watchers} WatchStatus streams are open "
                                  "already (admin.max_watchers); close one or try later")
        watcher = Watcher(self._registry, cluster, max_queue=self._max_queue,
                          on_close=self._watchers.discard)
        self._watchers.add(watcher)
        if self._closed:
            watcher.close()
        return watcher

    def close(self) -> None:
        """End every stream (their `next()` returns None) and refuse new ones."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.close()

"""The sequenced event bus: every change any component makes, in one numbered stream.

The registry (endpoints added, removed, their status, a corrupt state file), the
data plane (breaker transitions, fallbacks), the health checker and the assembly
(config loaded or rejected, lifecycle) publish here; WatchStatus, the status page
and the data plane's own cleanup subscribe.

Theory of operation: `publish()` gives the event the next sequence number and
calls every subscriber synchronously, on the event loop's thread, before it
returns. So a subscriber that subscribes *before* it takes a snapshot of some
state, and compares sequence numbers, sees every change exactly once (admin/watch.py
relies on this). Subscribers must not block and must not raise; one that raises
is logged and skipped, so a broken subscriber never breaks the publisher.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.core.clock import Clock, SystemClock

if TYPE_CHECKING:
    from sidecar.core.breaker import Transition
    from sidecar.core.health import HealthChange
    from sidecar.errors import ConfigIssue
    from sidecar.registry import ConfigInfo, EndpointInfo, EndpointStatus

__all__ = ["Event", "EventBus", "EventKind", "Listener"]

log = logging.getLogger("sidecar.events")


class EventKind(enum.Enum):
    ENDPOINT_ADDED = "endpoint_added"
    ENDPOINT_REMOVED = "endpoint_removed"
    ENDPOINT_STATUS_CHANGED = "endpoint_status_changed"
    CONFIG_LOADED = "config_loaded"
    BREAKER_CHANGED = "breaker_changed"
    HEALTH_CHANGED = "health_changed"
    PANIC_CHANGED = "panic_changed"
    FALLBACK_USED = "fallback_used"
    #: The sidecar's lifecycle state changed (or a drain finished): `state`,
    #: `previous_state`, `reason`.
    LIFECYCLE_CHANGED = "lifecycle_changed"
    #: A reload rejected a configuration: `source`, `stage`, `issues`, `reason` (the trigger).
    CONFIG_REJECTED = "config_rejected"
    #: The state file was unreadable and renamed aside: `source` (its path), `moved_to`,
    #: `reason` (the error).
    STATE_FILE_CORRUPT = "state_file_corrupt"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. `time` is wall-clock (for people); order is `sequence`."""

    sequence: int
    time: float
    kind: EventKind
    endpoint: EndpointInfo | None = None
    previous_status: EndpointStatus | None = None
    reason: str = ""
    config: ConfigInfo | None = None
    #: The cluster of a cluster-wide event (panic, fallback), "" otherwise.
    cluster: str = ""
    breaker: Transition | None = None
    health: HealthChange | None = None
    #: PANIC_CHANGED: whether the cluster is in panic mode now.
    panic: bool | None = None
    #: FALLBACK_USED: cache, cluster or static; `cluster` and `route` say where.
    fallback: str = ""
    route: str = ""
    #: LIFECYCLE_CHANGED: the lifecycle states (starting, ready, draining, stopped).
    state: str = ""
    previous_state: str = ""
    #: CONFIG_REJECTED: the rejected source, the stage that failed (io, render,
    #: validate) and the located issues.
    source: str = ""
    stage: str = ""
    issues: tuple[ConfigIssue, ...] = ()
    #: STATE_FILE_CORRUPT: where the state file was moved ("" if it could not be).
    moved_to: str = ""


Listener = Callable[[Event], None]


class EventBus:
    """Numbers events and hands each to every subscriber, synchronously."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._sequence = 0
        self._listeners: list[Listener] = []

    @property
    def sequence(self) -> int:
        """The number of the last event published (0 before the first)."""
        return self._sequence

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every event from now on; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, kind: EventKind, **fields: Any) -> Event:
        self._sequence += 1
        event = Event(self._sequence, self._clock.wall(), kind, **fields)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken subscriber must not break the publisher
                log.exception("event listener failed", extra={"kind": kind.value})
        return event

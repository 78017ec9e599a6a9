"""Rolling windows: request counts and latency histograms over the last 10 minutes.

This module owns the bounded in-process store behind GetStats (`sidecar.observe.stats`
decides what is counted where; this module only counts). It is pure: time comes in
as a `now` argument (monotonic seconds), so tests step it by hand.

Theory of operation
-------------------

Time is cut into *slots* of `SLOT_SECONDS` (10 s). Slot number `epoch = int(now // 10)`
lives at index `epoch % SLOTS` of a ring of `SLOTS` (60) entries, so the ring holds
the last 10 minutes. Each `_Slot` remembers the epoch it counts for; a record that
finds an older epoch at its index resets the slot and reuses it. That is the whole
rotation: nothing runs on a timer, and a key nobody records into costs nothing
until it is read. A window also keeps the time range of its newest slot, so that
a record in it (nearly every record) compares `now` with two floats instead of
dividing it.

Reading a window of `n` slots (`slots_for` rounds a duration up to whole slots) sums
the slots whose epoch is one of the last `n`, the current (partial) one included; a
slot left over from an earlier lap of the ring has an older epoch and is skipped, so
expiry needs no sweep either. A late record (an older `now`, still in the ring) goes
to its own slot; one older than the ring is counted nowhere, as it would have expired.

Latency goes into a histogram per slot over fixed log-spaced `BOUNDS` (each bound
1.2x the one before, 50 us to about 60 s: about 10 % resolution). A slot allocates
its histogram (an `array('I')`, 4 bytes a bucket) only when it first gets a
latency, so a key with retries or breaker trips only has none. Quantiles are read
from the merged histogram of the window, interpolated inside the bucket that holds
the rank (geometrically: the buckets are log-spaced).

Memory is bounded by construction: per key at most `SLOTS` slots and histograms
(`MAX_BYTES_PER_KEY`, about 37 KiB when every slot of the last 10 minutes saw
traffic), and a `WindowStore` holds at most `max_keys` keys (the rest are counted
in one shared overflow window that no row shows). Nothing grows with time.

Cost of a record: two float compares, a few int adds and one binary search
(`bucket_of`; measured in docs/design.md, "Stats").
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Hashable, Iterator
from operator import add
from typing import Final, Generic, TypeVar

__all__ = [
    "BOUNDS",
    "MAX_BYTES_PER_KEY",
    "SLOTS",
    "SLOT_SECONDS",
    "SPAN_SECONDS",
    "Totals",
    "Window",
    "WindowStore",
    "bucket_of",
    "slots_for",
]

#: Seconds per slot, slots in the ring, and the longest window they cover.
SLOT_SECONDS: Final = 10
SLOTS: Final = 60
SPAN_SECONDS: Final = SLOT_SECONDS * SLOTS

_FACTOR = 1.2
_LOWEST = 50e-6
_HIGHEST = 60.0


def _bounds() -> tuple[float, ...]:
    bounds = [_LOWEST]
    while bounds[-1] < _HIGHEST:
        bounds.append(bounds[-1] * _FACTOR)
    return tuple(bounds)


#: Upper bounds (seconds) of the latency buckets; one more bucket above the last.
BOUNDS: Final[tuple[float, ...]] = _bounds()
_BUCKETS: Final = len(BOUNDS) + 1
_EMPTY_HISTOGRAM: Final = array("I", bytes(4 * _BUCKETS))
#: Upper bound of one key's memory (CPython 3.11, 64-bit): the window and its ring
#: (about 1 KiB), and per slot its object (80 bytes), four counters past the small-int
#: cache (32 each) and a histogram (80 + 4 per bucket). About 37 KiB.
MAX_BYTES_PER_KEY = 1024 + SLOTS * (8 + 80 + 4 * 32 + 80 + 4 * _BUCKETS)


def bucket_of(bounds: tuple[float, ...], value: float) -> int:
    """The bucket of `value` among ascending upper `bounds`: `bisect.bisect_left`.

    Written out because compiled it is a loop over unboxed floats, under half the
    instructions of a call into `bisect` with a boxed float and rich comparisons
    (three per request: the Prometheus histogram and two rolling windows). A NaN
    lands in bucket 0, as with `bisect_left`."""
    low, high = 0, len(bounds)
    while low < high:
        middle = (low + high) >> 1
        if bounds[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low


def slots_for(window_seconds: float) -> int:
    """Slots in a window of `window_seconds`, rounded up to whole slots (1 to SLOTS).

    Raises ValueError when it is not positive or longer than `SPAN_SECONDS`."""
    if not 0 < window_seconds <= SPAN_SECONDS:
        raise ValueError(f"window must be positive and at most {SPAN_SECONDS}s, "
                         f"got {window_seconds:g}s")
    # 1e-9: a window of 20.000000001 s from float arithmetic is still 2 slots.
    return max(1, math.ceil(window_seconds / SLOT_SECONDS - 1e-9))


class _Slot:
    """What one key counted during one slot."""

    __slots__ = ("epoch", "requests", "successes", "retries", "trips", "histogram")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.requests = 0
        self.successes = 0
        self.retries = 0
        self.trips = 0
        #: Counts per latency bucket; None until the slot gets a latency.
        self.histogram: array[int] | None = None

    def reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.requests = self.successes = self.retries = self.trips = 0
        self.histogram = None


class Totals:
    """Sums of windows over the same slots (a key's, or a cluster's keys')."""

    __slots__ = ("requests", "successes", "retries", "trips", "histogram")

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.retries = 0
        self.trips = 0
        #: Merged counts per latency bucket (None: no latency in the window).
        self.histogram: list[int] | None = None

    def add_histogram(self, counts: array[int] | list[int]) -> None:
        merged = self.histogram
        if merged is None:
            self.histogram = list(counts)
        else:
            merged[:] = map(add, merged, counts)

    def add(self, other: Totals | _Slot) -> None:
        """Add another sum, or one slot of a window."""
        self.requests += other.requests
        self.successes += other.successes
        self.retries += other.retries
        self.trips += other.trips
        if other.histogram is not None:
            self.add_histogram(other.histogram)

    def quantile(self, q: float) -> float | None:
        """The latency (seconds) below which a share `q` (0 to 1) of the recorded
        latencies fall, interpolated inside its bucket; None without latencies."""
        counts = self.histogram
        if counts is None:
            return None
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, count in enumerate(counts):
            if count and seen + count >= rank:
                share = (rank - seen) / count
                if i == 0:  # [0, first bound]: linear
                    return BOUNDS[0] * share
                if i == len(BOUNDS):  # above the last bound: all we know is "at least"
                    return BOUNDS[-1]
                low, high = BOUNDS[i - 1], BOUNDS[i]
                return float(low * (high / low) ** share)
            seen += count
        return BOUNDS[-1]  # not reached: rank <= total


class Window:
    """One key's ring of slots: requests (with success and latency), retries, trips."""

    __slots__ = ("_ring", "last_epoch", "_current", "_start", "_end")

    def __init__(self) -> None:
        #: Slots by `epoch % SLOTS`; allocated on first use.
        self._ring: list[_Slot | None] = [None] * SLOTS
        #: The newest epoch recorded into (-1: none).
        self.last_epoch = -1
        # The newest slot and the times it covers, [start, end): a record in it
        # compares two floats instead of dividing (a float `//` costs 100 ns here).
        self._current = _Slot(-1)
        self._start = self._end = 0.0

    def _slot(self, now: float) -> _Slot:
        """The slot of `now`, reset if it still holds an older lap of the ring."""
        epoch = int(now // SLOT_SECONDS)
        if epoch <= self.last_epoch - SLOTS:
            return _Slot(epoch)  # older than the ring: counted nowhere (it would expire)
        index = epoch % SLOTS
        slot = self._ring[index]
        if slot is None:
            slot = self._ring[index] = _Slot(epoch)
        elif slot.epoch != epoch:
            slot.reset(epoch)
        if epoch >= self.last_epoch:  # not a late record into an older slot
            self.last_epoch = epoch
            self._current = slot
            self._start = float(epoch * SLOT_SECONDS)
            self._end = self._start + SLOT_SECONDS
        return slot

    def record(self, now: float, ok: bool, seconds: float) -> None:
        """A request (or attempt) finished at `now` after `seconds`; `ok`: it succeeded."""
        # The hot path: a time compare, int adds and one bisect.
        if self._start <= now < self._end:
            slot = self._current
        else:
            slot = self._slot(now)
        slot.requests += 1
        if ok:
            slot.successes += 1
        latency = slot.histogram
        if latency is None:
            latency = slot.histogram = array("I", _EMPTY_HISTOGRAM)
        latency[bucket_of(BOUNDS, seconds)] += 1

    def retry(self, now: float) -> None:
        self._slot(now).retries += 1

    def trip(self, now: float) -> None:
        self._slot(now).trips += 1

    def add_to(self, totals: Totals, now: float, slots: int) -> None:
        """Add the last `slots` slots up to `now` (the current one included) to `totals`."""
        current = int(now // SLOT_SECONDS)
        oldest = current - slots
        if self.last_epoch <= oldest:
            return  # nothing recorded in the window: skip the ring
        for slot in self._ring:
            if slot is not None and oldest < slot.epoch <= current:
                totals.add(slot)

    def totals(self, now: float, slots: int) -> Totals:
        totals = Totals()
        self.add_to(totals, now, slots)
        return totals

    def expired(self, now: float) -> bool:
        """Whether every slot is older than the ring (reading it gives zeros)."""
        return self.last_epoch <= int(now // SLOT_SECONDS) - SLOTS

    def allocated(self) -> tuple[int, int]:
        """(slots, histograms) allocated: at most (SLOTS, SLOTS), whatever the history."""
        slots = [slot for slot in self._ring if slot is not None]
        return len(slots), sum(1 for slot in slots if slot.histogram is not None)


_Key = TypeVar("_Key", bound=Hashable)


class WindowStore(Generic[_Key]):
    """Windows by key, at most `max_keys` of them.

    `windows` is the dict itself, so that a hot path can do its own `.get()` and
    call `add()` only on a miss. Past the cap, `add()` returns one shared overflow
    window (`dropped` counts the keys refused) instead of growing."""

    __slots__ = ("windows", "max_keys", "overflow", "dropped")

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.windows: dict[_Key, Window] = {}
        self.max_keys = max_keys
        self.overflow = Window()
        self.dropped = 0

    def add(self, key: _Key) -> Window:
        """The window of `key`, created if there is room (the overflow window if not)."""
        window = self.windows.get(key)
        if window is not None:
            return window
        if len(self.windows) >= self.max_keys:
            self.dropped += 1
            return self.overflow
        window = self.windows[key] = Window()
        return window

    def get(self, key: _Key) -> Window | None:
        return self.windows.get(key)

    def drop(self, key: _Key) -> None:
        self.windows.pop(key, None)

    def prune(self, now: float, keep: frozenset[_Key] | set[_Key] = frozenset()) -> None:
        """Forget the keys whose every slot has expired, except those in `keep`."""
        for key in [k for k, w in self.windows.items() if k not in keep and w.expired(now)]:
            del self.windows[key]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self) -> Iterator[_Key]:
        return iter(self.windows)

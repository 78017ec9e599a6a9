"""Rolling windows: rotation, expiry, rounding, quantile accuracy and bounded memory.

Time is a plain float handed to every call, so nothing here sleeps.
"""

from __future__ import annotations

import gc
import math
import random
import tracemalloc
from bisect import bisect_left
from typing import Any

import pytest

from sidecar.observe import stats as stats_module
from sidecar.observe import window as window_module
from sidecar.observe.metrics import DURATION_BUCKETS
from sidecar.observe.window import (
    BOUNDS,
    MAX_BYTES_PER_KEY,
    SLOT_SECONDS,
    SLOTS,
    SPAN_SECONDS,
    Totals,
    Window,
    WindowStore,
    bucket_of,
    slots_for,
)
from tests.test_layout import IMPURE, _imports, source_file

T0 = 100_000.0  # a monotonic time well past zero, on a slot boundary


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.parametrize("module", [window_module, stats_module], ids=lambda m: m.__name__)
def test_the_windows_and_stats_are_pure(module: Any) -> None:
    """No clock, loop or socket: time comes in as `now` (or an injected Clock)."""
    names = _imports(source_file(module))
    assert [n for n in names if n.split(".")[0] in IMPURE] == []


# ---------------------------------------------------------------- rounding


@pytest.mark.parametrize(("seconds", "slots"), [
    (0.001, 1), (10, 1), (10.5, 2), (15, 2), (20, 2), (60, 6), (90, 9), (599.9, 60),
    (600, 60), (20.000000001, 2),
])
def test_a_window_is_rounded_up_to_whole_slots(seconds: float, slots: int) -> None:
    assert slots_for(seconds) == slots


@pytest.mark.parametrize("seconds", [0, -1, 600.001, 660, math.inf, math.nan])
def test_a_window_out_of_range_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="window"):
        slots_for(seconds)


def test_the_bounds_are_log_spaced_at_about_10_percent_resolution() -> None:
    assert BOUNDS[0] == pytest.approx(50e-6)
    assert BOUNDS[-1] >= 60.0 > BOUNDS[-2]
    for low, high in zip(BOUNDS, BOUNDS[1:], strict=False):
        assert high / low == pytest.approx(1.2)
    assert SPAN_SECONDS == SLOTS * SLOT_SECONDS == 600


# ---------------------------------------------------------------- counting


def test_records_in_one_slot_add_up() -> None:
    window = Window()
    for i in range(10):
        window.record(T0 + i * 0.5, ok=i % 5 != 0, seconds=0.01)
    window.retry(T0 + 1)
    window.trip(T0 + 2)
    totals = window.totals(T0 + 9, slots=1)
    assert (totals.requests, totals.successes, totals.retries, totals.trips) == (10, 8, 1, 1)


def test_an_empty_window_reads_zeros_and_no_quantile() -> None:
    totals = Window().totals(T0, slots=60)
    assert (totals.requests, totals.successes, totals.retries, totals.trips) == (0, 0, 0, 0)
    assert totals.histogram is None
    assert totals.quantile(0.5) is None
    assert Totals().quantile(0.99) is None


def test_retries_and_trips_alone_allocate_no_histogram() -> None:
    window = Window()
    window.retry(T0)
    window.trip(T0 + 11)
    assert window.allocated() == (2, 0)
    assert window.totals(T0 + 11, 2).quantile(0.5) is None


def test_the_window_rotates_slot_by_slot() -> None:
    window = Window()
    for second in range(0, 60):  # one request a second for a minute
        window.record(T0 + second, True, 0.001)
    now = T0 + 59.5
    assert window.totals(now, 1).requests == 10  # the current slot: 50..59
    assert window.totals(now, 2).requests == 20
    assert window.totals(now, 6).requests == 60
    assert window.totals(now, 60).requests == 60
    # Ten seconds on, the oldest slot has left a 1-minute window.
    assert window.totals(now + 10, 6).requests == 50
    assert window.totals(now + 10, 1).requests == 0


def test_everything_expires_after_ten_minutes() -> None:
    window = Window()
    window.record(T0, True, 0.001)
    window.retry(T0)
    assert window.totals(T0 + 599, 60).requests == 1
    assert not window.expired(T0 + 599)
    later = T0 + SPAN_SECONDS
    assert window.totals(later, 60).requests == 0
    assert window.totals(later, 60).retries == 0
    assert window.expired(later)


def test_a_reused_slot_forgets_its_earlier_lap() -> None:
    window = Window()
    window.record(T0 + 5, False, 0.5)
    # The same ring index, one lap (10 minutes) later.
    window.record(T0 + 5 + SPAN_SECONDS, True, 0.001)
    totals = window.totals(T0 + 5 + SPAN_SECONDS, 60)
    assert (totals.requests, totals.successes) == (1, 1)
    assert totals.quantile(0.99) == pytest.approx(0.001, rel=0.2)


def test_a_late_record_goes_to_its_own_slot_and_the_current_one_keeps_counting() -> None:
    window = Window()
    window.record(T0 + 25, True, 0.001)
    window.record(T0 + 5, True, 0.001)  # late: an older slot, still in the ring
    window.record(T0 + 26, True, 0.001)
    assert window.totals(T0 + 26, 1).requests == 2
    assert window.totals(T0 + 26, 3).requests == 3
    # Older than the ring: counted nowhere, and the current slot is untouched.
    window.record(T0 + 25 - SPAN_SECONDS, True, 0.001)
    assert window.totals(T0 + 26, 60).requests == 3


# ---------------------------------------------------------------- quantiles


@pytest.mark.parametrize("distribution", ["uniform", "lognormal", "exponential", "bimodal"])
def test_quantiles_are_within_10_percent_of_exact(distribution: str) -> None:
    rng = random.Random(7)
    draw = {
        "uniform": lambda: rng.uniform(0.001, 0.2),
        "lognormal": lambda: rng.lognormvariate(math.log(0.005), 1.0),
        "exponential": lambda: rng.expovariate(1 / 0.03),
        "bimodal": lambda: (rng.gauss(0.002, 0.0002) if rng.random() < 0.8
                            else rng.gauss(0.25, 0.02)),
    }[distribution]
    values = [max(1e-4, draw()) for _ in range(20_000)]
    window = Window()
    for i, seconds in enumerate(values):
        window.record(T0 + i * 0.02, True, seconds)  # 400 s: 40 slots
    totals = window.totals(T0 + 400, 60)
    assert totals.requests == len(values)
    for q in (0.5, 0.9, 0.99):
        estimate = totals.quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(exact_quantile(values, q), rel=0.10), q


def test_quantiles_are_ordered_and_within_the_recorded_bucket() -> None:
    window = Window()
    window.record(T0, True, 0.0042)
    totals = window.totals(T0, 1)
    p50, p90, p99 = (totals.quantile(q) for q in (0.5, 0.9, 0.99))
    assert p50 is not None and p90 is not None and p99 is not None
    assert p50 <= p90 <= p99
    for estimate in (p50, p90, p99):
        assert estimate == pytest.approx(0.0042, rel=0.2)


def test_latencies_off_the_scale_are_clamped() -> None:
    window = Window()
    window.record(T0, True, 0.0)
    window.record(T0, True, 3600.0)
    totals = window.totals(T0, 1)
    assert totals.quantile(0.01) is not None and totals.quantile(0.01) <= BOUNDS[0]  # type: ignore[operator]
    assert totals.quantile(1.0) == BOUNDS[-1]


def test_totals_merge_histograms() -> None:
    fast, slow = Window(), Window()
    for _ in range(90):
        fast.record(T0, True, 0.001)
    for _ in range(10):
        slow.record(T0, False, 1.0)
    merged = Totals()
    fast.add_to(merged, T0, 1)
    slow.add_to(merged, T0, 1)
    assert (merged.requests, merged.successes) == (100, 90)
    assert merged.quantile(0.5) == pytest.approx(0.001, rel=0.2)
    assert merged.quantile(0.99) == pytest.approx(1.0, rel=0.2)
    again = Totals()
    again.add(merged)
    again.add(merged)
    assert again.requests == 200 and again.quantile(0.99) == merged.quantile(0.99)


# ---------------------------------------------------------------- bounded memory


def test_a_million_simulated_seconds_leave_the_slot_count_constant() -> None:
    window = Window()
    for second in range(0, 1_000_000, 3):
        window.record(T0 + second, second % 7 != 0, 0.001 * (1 + second % 50))
        if second % 301 == 0:
            window.retry(T0 + second)
    assert window.allocated() == (SLOTS, SLOTS)
    end = T0 + 1_000_000
    totals = window.totals(end, 60)
    assert 0 < totals.requests <= SPAN_SECONDS // 3 + 1


def test_memory_per_key_stays_under_the_bound() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        windows = []
        for _ in range(20):
            window = Window()
            for second in range(0, 3 * SPAN_SECONDS, 2):  # three laps of the ring
                for seconds in BOUNDS[::4]:
                    window.record(T0 + second, True, seconds)
                window.retry(T0 + second)
                window.trip(T0 + second)
            windows.append(window)
        gc.collect()  # only what the windows hold is left
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # (All memory, not only the window module's lines: compiled, that module has no
    # Python frames to attribute its allocations to.)
    assert MAX_BYTES_PER_KEY / 2 < grown / len(windows) <= MAX_BYTES_PER_KEY


def test_a_store_keeps_at_most_max_keys() -> None:
    store: WindowStore[str] = WindowStore(max_keys=3)
    windows = [store.add(name) for name in "abcde"]
    assert len(store) == 3 and store.dropped == 2
    assert windows[3] is windows[4] is store.overflow
    assert store.add("a") is windows[0]
    windows[0].record(T0, True, 0.001)
    store.prune(T0 + SPAN_SECONDS - 1)
    assert set(store) == {"a"}  # b and c never recorded: expired
    store.prune(T0 + SPAN_SECONDS, keep={"a"})
    assert set(store) == {"a"}
    store.prune(T0 + SPAN_SECONDS)
    assert len(store) == 0
    store.drop("missing")
    with pytest.raises(ValueError):
        WindowStore(0)


@pytest.mark.parametrize("bounds", [BOUNDS, DURATION_BUCKETS], ids=["window", "prometheus"])
def test_bucket_of_is_bisect_left(bounds: tuple[float, ...]) -> None:
    """The hand-written search agrees with `bisect_left` on every bound, between and
    beside bounds, outside the range, and for NaN and infinities."""
    values = [*bounds, *(math.nextafter(b, -math.inf) for b in bounds),
              *(math.nextafter(b, math.inf) for b in bounds),
              *((a + b) / 2 for a, b in zip(bounds, bounds[1:], strict=False)),
              0.0, -1.0, 1e9, math.inf, -math.inf, math.nan]
    rng = random.Random(7)
    values += [rng.uniform(0, bounds[-1] * 2) for _ in range(500)]
    assert [bucket_of(bounds, v) for v in values] == [bisect_left(bounds, v) for v in values]
    assert bucket_of((), 1.0) == 0

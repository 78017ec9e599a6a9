"""Load balancers: pick one endpoint from a cluster's routable endpoints.

Pure (no I/O), O(1) per pick, seeded `random.Random` for tests. The endpoints
tuple is rebuilt by the registry on every change, so per-tuple precomputation
(weighted schedules, cumulative weights) is cached by identity and recomputed
only when the tuple changes.

* `RoundRobin`: smooth weighted round robin (nginx's algorithm): with weights
  5,1,1 it picks a a b a c a a, never five a's in a row.
* `LeastRequest`: power of two choices on in-flight requests divided by weight.
* `RandomBalancer`: weighted random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import accumulate
from typing import Protocol, TypeVar

__all__ = ["Balancer", "LeastRequest", "RandomBalancer", "RoundRobin", "make_balancer",
           "smooth_weighted_schedule"]


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...
    @property
    def active_requests(self) -> int: ...


E = TypeVar("E", bound=Weighted)


class Balancer(Protocol):
    def pick(self, endpoints: Sequence[E]) -> E | None: ...


def smooth_weighted_schedule(weights: Sequence[int]) -> list[int]:
    """One full cycle of smooth weighted round robin, as indices."""
    total = sum(weights)
    current = [0] * len(weights)
    schedule = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        schedule.append(best)
    return schedule


class RoundRobin:
    __slots__ = ("_next", "_key", "_schedule")

    def __init__(self, rng: random.Random | None = None) -> None:
        # Start at a random place so that many sidecars do not all hit endpoint 0 first.
        self._next = (rng or random.Random()).randrange(1 << 16)
        self._key: Sequence[object] | None = None
        self._schedule: list[int] | None = None

    def pick(self, endpoints: Sequence[E]) -> E | None:
        n = len(endpoints)
        if n == 0:
            return None
        self._next += 1
        if endpoints is not self._key:
            weights = [e.weight for e in endpoints]
            self._key = endpoints
            self._schedule = (None if len(set(weights)) == 1
                              else smooth_weighted_schedule(weights))
        schedule = self._schedule
        if schedule is None:
            return endpoints[self._next % n]
        return endpoints[schedule[self._next % len(schedule)]]


class LeastRequest:
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, endpoints: Sequence[E]) -> E | None:
        n = len(endpoints)
        if n == 0:
            return None
        if n == 1:
            return endpoints[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        # Compare active/weight without division: a.active * b.weight vs b.active * a.weight.
        return a if a.active_requests * b.weight <= b.active_requests * a.weight else b


class RandomBalancer:
    __slots__ = ("_rng", "_key", "_cumulative")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._key: Sequence[object] | None = None
        self._cumulative: list[int] = []

    def pick(self, endpoints: Sequence[E]) -> E | None:
        if not endpoints:
            return None
        if endpoints is not self._key:
            self._key = endpoints
            self._cumulative = list(accumulate(e.weight for e in endpoints))
        return self._rng.choices(endpoints, cum_weights=self._cumulative)[0]


def make_balancer(policy: str, rng: random.Random | None = None) -> Balancer:
    if policy == "round_robin":
        return RoundRobin(rng)
    if policy == "least_request":
        return LeastRequest(rng)
    if policy == "random":
        return RandomBalancer(rng)
    raise ValueError(f"unknown lb_policy {policy!r}")

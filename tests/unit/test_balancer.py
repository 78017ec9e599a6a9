"""Load balancers: a tuple of endpoints in, one pick out; seeded RNGs, no I/O."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from sidecar.core.balancer import (
    Balancer,
    LeastRequest,
    RandomBalancer,
    RoundRobin,
    make_balancer,
    smooth_weighted_schedule,
)


@dataclass(eq=False)
class Ep:
    name: str
    weight: int = 1
    active_requests: int = 0

    def __repr__(self) -> str:
        return self.name


def eps(*weights: int) -> tuple[Ep, ...]:
    return tuple(Ep("abcdefghij"[i], w) for i, w in enumerate(weights))


def picks(balancer: Balancer, endpoints: Sequence[Ep], n: int) -> list[str]:
    out = []
    for _ in range(n):
        chosen = balancer.pick(endpoints)
        assert chosen is not None
        out.append(chosen.name)
    return out


def longest_run(seq: Sequence[str], item: str) -> int:
    best = run = 0
    for x in seq:
        run = run + 1 if x == item else 0
        best = max(best, run)
    return best


ALL_BALANCERS = [RoundRobin, LeastRequest, RandomBalancer]


@pytest.mark.parametrize("cls", ALL_BALANCERS)
@pytest.mark.parametrize("empty", [(), []])
def test_empty_is_none(cls: type[RoundRobin], empty: Sequence[Ep]) -> None:
    assert cls(random.Random(1)).pick(empty) is None


@pytest.mark.parametrize("cls", ALL_BALANCERS)
def test_single_endpoint_is_always_picked(cls: type[RoundRobin]) -> None:
    only = eps(3)
    balancer = cls(random.Random(1))
    assert {id(balancer.pick(only)) for _ in range(20)} == {id(only[0])}


# ------------------------------------------------------------ smooth weighted schedule


def test_smooth_weighted_schedule_5_1_1_is_nginx_order() -> None:
    assert smooth_weighted_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]


@pytest.mark.parametrize("weights", [[1], [2, 1], [3, 2, 1], [1, 1, 1, 1], [7, 3], [10, 1, 1, 5]])
def test_smooth_weighted_schedule_has_one_cycle_of_each_weight(weights: list[int]) -> None:
    schedule = smooth_weighted_schedule(weights)
    assert len(schedule) == sum(weights)
    assert Counter(schedule) == {i: w for i, w in enumerate(weights)}


def test_smooth_weighted_schedule_of_nothing() -> None:
    assert smooth_weighted_schedule([]) == []


# ------------------------------------------------------------ round robin


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_round_robin_equal_weights_cycles_through_all(seed: int) -> None:
    endpoints = eps(1, 1, 1)
    seq = picks(RoundRobin(random.Random(seed)), endpoints, 300)
    assert Counter(seq) == {"a": 100, "b": 100, "c": 100}
    for i in range(0, 300, 3):
        assert sorted(seq[i:i + 3]) == ["a", "b", "c"]
    # strictly rotating: each pick is the successor of the previous one
    order = "abc"
    for prev, cur in zip(seq, seq[1:], strict=False):
        assert order.index(cur) == (order.index(prev) + 1) % 3


def test_round_robin_equal_nonunit_weights_is_plain_round_robin() -> None:
    seq = picks(RoundRobin(random.Random(3)), eps(4, 4), 10)
    assert longest_run(seq, "a") == 1 and longest_run(seq, "b") == 1


def test_round_robin_start_depends_on_the_seed() -> None:
    endpoints = eps(1, 1, 1, 1, 1, 1, 1, 1)
    firsts = {picks(RoundRobin(random.Random(seed)), endpoints, 1)[0] for seed in range(50)}
    assert len(firsts) > 1


@pytest.mark.parametrize("seed", [0, 7, 99])
def test_round_robin_weighted_5_1_1_is_smooth(seed: int) -> None:
    endpoints = eps(5, 1, 1)
    seq = picks(RoundRobin(random.Random(seed)), endpoints, 700)
    cycle = "".join(seq[:7])
    assert cycle in "aabacaa" * 2  # the nginx order, starting anywhere in it
    assert "".join(seq) == (cycle * 100)
    assert Counter(seq) == {"a": 500, "b": 100, "c": 100}
    assert longest_run(seq, "a") < 5


def test_round_robin_weighted_counts_over_every_cycle() -> None:
    endpoints = eps(3, 2, 1)
    seq = picks(RoundRobin(random.Random(5)), endpoints, 60)
    for i in range(0, 60, 6):
        assert Counter(seq[i:i + 6]) == {"a": 3, "b": 2, "c": 1}


def test_round_robin_schedule_is_cached_per_tuple() -> None:
    endpoints = eps(1, 1)
    balancer = RoundRobin(random.Random(1))
    picks(balancer, endpoints, 3)
    endpoints[0].weight = 3  # mutated in place, same tuple: not seen (documented)
    assert Counter(picks(balancer, endpoints, 40)) == {"a": 20, "b": 20}


def test_round_robin_schedule_recomputed_when_tuple_changes() -> None:
    a, b = eps(1, 1)
    balancer = RoundRobin(random.Random(1))
    picks(balancer, (a, b), 3)
    a.weight = 3
    assert Counter(picks(balancer, (a, b), 40)) == {"a": 30, "b": 10}  # a new tuple
    b.weight = 3
    assert Counter(picks(balancer, (a, b), 40)) == {"a": 20, "b": 20}  # equal again


def test_round_robin_follows_membership_changes() -> None:
    a, b, c = eps(2, 1, 1)
    balancer = RoundRobin(random.Random(1))
    assert set(picks(balancer, (a, b, c), 8)) == {"a", "b", "c"}
    assert Counter(picks(balancer, (a, c), 30)) == {"a": 20, "c": 10}
    assert set(picks(balancer, (c,), 5)) == {"c"}
    assert balancer.pick(()) is None
    assert Counter(picks(balancer, (b, c), 10)) == {"b": 5, "c": 5}


def test_round_robin_without_rng_works() -> None:
    assert Counter(picks(RoundRobin(), eps(1, 1), 10)) == {"a": 5, "b": 5}


# ------------------------------------------------------------ least request


def test_least_request_two_endpoints_prefers_fewer_active() -> None:
    a, b = eps(1, 1)
    a.active_requests, b.active_requests = 5, 1
    balancer = LeastRequest(random.Random(0))
    assert set(picks(balancer, (a, b), 100)) == {"b"}
    a.active_requests = 0
    assert set(picks(balancer, (a, b), 100)) == {"a"}


def test_least_request_divides_active_by_weight() -> None:
    a, b = eps(4, 1)
    a.active_requests, b.active_requests = 4, 2  # 1.0 vs 2.0 per unit of weight
    assert set(picks(LeastRequest(random.Random(0)), (a, b), 100)) == {"a"}
    a.active_requests = 12  # 3.0 vs 2.0
    assert set(picks(LeastRequest(random.Random(0)), (a, b), 100)) == {"b"}


def test_least_request_ties_are_shared() -> None:
    a, b = eps(1, 1)
    a.active_requests = b.active_requests = 3
    counts = Counter(picks(LeastRequest(random.Random(42)), (a, b), 2000))
    assert 900 < counts["a"] < 1100


def test_least_request_power_of_two_choices() -> None:
    a, b, c = eps(1, 1, 1)
    a.active_requests, b.active_requests, c.active_requests = 0, 5, 10
    counts = Counter(picks(LeastRequest(random.Random(7)), (a, b, c), 3000))
    # Each pick compares two distinct endpoints: the busiest never wins, the least
    # busy wins whenever drawn (2/3 of pairs), the middle one otherwise (1/3).
    assert counts["c"] == 0
    assert 1900 < counts["a"] < 2100
    assert 900 < counts["b"] < 1100


def test_least_request_compares_two_distinct_endpoints() -> None:
    a, b = eps(1, 1)
    b.active_requests = 1
    # If the two choices could be the same endpoint, b would sometimes be picked.
    assert set(picks(LeastRequest(random.Random(3)), (a, b), 500)) == {"a"}


def test_least_request_does_not_change_active_counts() -> None:
    endpoints = eps(1, 2, 3)
    picks(LeastRequest(random.Random(1)), endpoints, 50)
    assert [e.active_requests for e in endpoints] == [0, 0, 0]


# ------------------------------------------------------------ random


def test_random_respects_weights() -> None:
    counts = Counter(picks(RandomBalancer(random.Random(2024)), eps(3, 1), 20_000))
    assert 0.73 < counts["a"] / 20_000 < 0.77


def test_random_equal_weights_is_uniform() -> None:
    counts = Counter(picks(RandomBalancer(random.Random(11)), eps(1, 1, 1, 1), 20_000))
    for name in "abcd":
        assert 4600 < counts[name] < 5400


def test_random_is_deterministic_with_a_seed() -> None:
    endpoints = eps(5, 2, 1)
    assert (picks(RandomBalancer(random.Random(9)), endpoints, 100)
            == picks(RandomBalancer(random.Random(9)), endpoints, 100))


def test_random_weights_recomputed_when_tuple_changes() -> None:
    a, b = eps(1, 1)
    balancer = RandomBalancer(random.Random(5))
    picks(balancer, (a, b), 10)
    a.weight = 9
    counts = Counter(picks(balancer, (a, b), 10_000))
    assert 0.88 < counts["a"] / 10_000 < 0.92


def test_random_never_picks_outside_the_tuple() -> None:
    a, b, c = eps(1, 1, 1)
    balancer = RandomBalancer(random.Random(5))
    picks(balancer, (a, b, c), 10)
    assert set(picks(balancer, (b,), 50)) == {"b"}


# ------------------------------------------------------------ make_balancer


@pytest.mark.parametrize(("policy", "cls"), [("round_robin", RoundRobin),
                                             ("least_request", LeastRequest),
                                             ("random", RandomBalancer)])
def test_make_balancer(policy: str, cls: type) -> None:
    assert isinstance(make_balancer(policy, random.Random(0)), cls)
    assert isinstance(make_balancer(policy), cls)


def test_make_balancer_unknown_policy() -> None:
    with pytest.raises(ValueError, match="maglev"):
        make_balancer("maglev")

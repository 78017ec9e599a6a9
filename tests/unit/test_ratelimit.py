"""sidecar.core.ratelimit: token buckets per key in a bounded LRU, on a FakeClock; and the
`rate_limit` and body-limit config fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.model import ListenerConfig, RateLimitConfig, RouteConfig
from sidecar.core.clock import FakeClock
from sidecar.core.ratelimit import RateLimiter
from sidecar.errors import ConfigError, RateLimited


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


def test_burst_then_refused_with_the_wait_for_one_token(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    decisions = [limiter.take("", clock.now()) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.limit == 3
    assert refused.retry_after == pytest.approx(0.5)  # one token at 2 a second
    assert refused.reset == pytest.approx(1.5)  # three tokens to full
    assert limiter.refused == 1


def test_tokens_refill_at_the_rate_up_to_the_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert limiter.take("", clock.now()).allowed
    assert limiter.take("", clock.now()).allowed
    assert not limiter.take("", clock.now()).allowed
    clock.advance(0.5)
    decision = limiter.take("", clock.now())
    assert not decision.allowed and decision.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.take("", clock.now()).allowed
    clock.advance(100)  # a long pause fills the bucket, never beyond the burst
    assert [limiter.take("", clock.now()).allowed for _ in range(3)] == [True, True, False]


def test_keys_have_their_own_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.take("a", clock.now()).allowed
    assert not limiter.take("a", clock.now()).allowed
    assert limiter.take("b", clock.now()).allowed


def test_buckets_are_a_bounded_lru(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=2)
    limiter.take("a", clock.now())
    limiter.take("b", clock.now())
    limiter.take("a", clock.now())  # a is now the most recently used
    limiter.take("c", clock.now())  # b goes
    assert len(limiter) == 2
    assert not limiter.take("a", clock.now()).allowed  # kept: still empty
    assert limiter.take("b", clock.now()).allowed  # dropped: starts full again
    for i in range(10_000):
        limiter.take(f"k{i}", clock.now())
    assert len(limiter) == 2


def test_update_config_keeps_buckets_and_clips_to_the_new_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=10)
    limiter.take("a", clock.now())
    limiter.update_config(1.0, 2, max_keys=5)
    decision = limiter.take("a", clock.now())
    assert decision.allowed and decision.limit == 2 and decision.remaining == 1


@pytest.mark.parametrize("rate, burst, keys", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_bounds_are_refused(rate: float, burst: int, keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, keys)


def test_rate_limited_error_carries_the_header_values() -> None:
    error = RateLimited(0.4, limit=5, remaining=0, reset=2.2)
    assert (error.status, error.code, error.retry_after) == (429, "rate_limited", 0.4)


# ------------------------------------------------------------------ config


def test_rate_limit_config_defaults_and_keys() -> None:
    config = RateLimitConfig(requests_per_second=2.5)
    assert (config.burst, config.key, config.bucket_size) == (0, "none", 3)
    assert RateLimitConfig(requests_per_second=1, burst=7).bucket_size == 7
    assert RateLimitConfig(requests_per_second=1, key="client_ip").key == "client_ip"
    assert RateLimitConfig(requests_per_second=1, key="header:X-User").key == "header:x-user"


@pytest.mark.parametrize("key", ["ip", "header:", "header:a b", ""])
def test_rate_limit_bad_key_is_located(key: str) -> None:
    from sidecar.config.model import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"clusters": [{"name": "c"}], "routes": [
            {"prefix": "/", "cluster": "c", "rate_limit": {"requests_per_second": 1,
                                                           "key": key}}]})
    assert [issue.path for issue in info.value.issues] == ["routes[0].rate_limit.key"]


def test_listener_limits_defaults() -> None:
    listener = ListenerConfig()
    assert listener.max_request_body_bytes == 10 * 1024 * 1024
    assert (listener.request_header_timeout, listener.request_body_timeout,
            listener.idle_timeout) == (10.0, 30.0, 75.0)
    assert (listener.max_connections, listener.max_requests) == (10_000, 10_000)
    route = RouteConfig(prefix="/", cluster="c")
    assert route.max_request_body_bytes is None and route.rate_limit is None


def test_library_writes_the_limits_with_the_models_defaults(tmp_path: Path) -> None:
    import json

    from sidecar.config.loader import render

    path = tmp_path / "limits.jsonnet"
    path.write_text("""\
local sidecar = import 'sidecar.libsonnet';
{
  rate_limit: sidecar.rateLimit(5),
  route: sidecar.route('/', 'c', max_request_body_bytes=1,
                       rate_limit=sidecar.rateLimit(5, burst=9, key='client_ip')),
}
""")
    lib = json.loads(render(str(path)))
    assert RateLimitConfig.model_validate(lib["rate_limit"]) == RateLimitConfig(
        requests_per_second=5)
    assert set(lib["rate_limit"]) == set(RateLimitConfig.model_fields)
    route = RouteConfig.model_validate(lib["route"])
    assert route.max_request_body_bytes == 1
    assert route.rate_limit == RateLimitConfig(requests_per_second=5, burst=9, key="client_ip")

"""Fallbacks: which one answers, in what order, and the bounded last-good cache."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.resilience import CacheFallbackConfig, FallbackConfig
from sidecar.core.clock import FakeClock
from sidecar.core.fallback import (
    CACHE,
    CLUSTER,
    FALLBACK_HEADER,
    FALLBACK_REASONS,
    NO_HEALTHY_ENDPOINT,
    OVERFLOW,
    STATIC,
    CachedResponse,
    FallbackKind,
    FallbackPlan,
    ResponseCache,
    StaticResponse,
    fallback_header,
    fallback_reason,
    should_fall_back,
)
from sidecar.core.retry import CONNECT_FAILURE, GATEWAY_ERROR, RESET, TIMEOUT
from sidecar.errors import NoHealthyEndpoint

Headers = tuple[tuple[bytes, bytes], ...]
JSON: Headers = ((b"Content-Type", b"application/json"), (b"ETag", b'"v1"'))


# ---------------------------------------------------------------- the header


@pytest.mark.parametrize("kind", [CACHE, CLUSTER, STATIC])
def test_fallback_header(kind: FallbackKind) -> None:
    assert fallback_header(kind) == (b"X-Sidecar-Fallback", kind.encode())
    assert fallback_header(kind)[0] is FALLBACK_HEADER


# ---------------------------------------------------------------- when


@pytest.mark.parametrize(("reason", "allowed"), [
    ("no_healthy_upstream", True), ("overflow", True), ("connect_failure", True),
    ("gateway_error", True),
    ("reset", False), ("timeout", False), ("5xx", False), ("not_retriable", False),
    ("no_route", False), ("", False),
])
def test_should_fall_back(reason: str, allowed: bool) -> None:
    assert should_fall_back(reason) is allowed


def test_reasons_match_the_error_codes_and_failure_kinds() -> None:
    assert FALLBACK_REASONS == {NO_HEALTHY_ENDPOINT, OVERFLOW, CONNECT_FAILURE, GATEWAY_ERROR}
    assert NO_HEALTHY_ENDPOINT == NoHealthyEndpoint.code


@pytest.mark.parametrize(("kind", "status", "reason"), [
    (CONNECT_FAILURE, 502, CONNECT_FAILURE),
    (CONNECT_FAILURE, None, CONNECT_FAILURE),
    # Synthesized gateway errors: a reset is our 502, a timeout our 504.
    (RESET, 502, GATEWAY_ERROR),
    (TIMEOUT, 504, GATEWAY_ERROR),
    ("protocol", 502, GATEWAY_ERROR),
    # The upstream's own answers.
    (None, 502, GATEWAY_ERROR),
    (None, 503, GATEWAY_ERROR),
    (None, 504, GATEWAY_ERROR),
    # Answers the application meant stand.
    (None, 500, None),
    (None, 501, None),
    (None, 404, None),
    (None, 200, None),
    (None, None, None),
])
def test_fallback_reason(kind: str | None, status: int | None, reason: str | None) -> None:
    assert fallback_reason(kind, status) == reason
    if reason is not None:
        assert should_fall_back(reason)


# ---------------------------------------------------------------- which, in what order


def fallbacks(**config: Any) -> FallbackPlan:
    return FallbackPlan(FallbackConfig(**config))


EVERYTHING: dict[str, Any] = {"cache": {}, "cluster": "spare", "static": {"body": "later"}}


@pytest.mark.parametrize(("config", "method", "can_resend", "order"), [
    (EVERYTHING, "GET", True, (CACHE, CLUSTER, STATIC)),
    (EVERYTHING, "GET", False, (CACHE, STATIC)),
    (EVERYTHING, "HEAD", True, (CLUSTER, STATIC)),
    (EVERYTHING, "POST", True, (CLUSTER, STATIC)),
    (EVERYTHING, "POST", False, (STATIC,)),
    ({"cache": {}}, "GET", True, (CACHE,)),
    ({"cache": {}}, "PUT", True, ()),
    ({"cluster": "spare"}, "GET", True, (CLUSTER,)),
    ({"cluster": "spare"}, "DELETE", False, ()),
    ({"static": {}}, "PATCH", False, (STATIC,)),
    ({"cache": {}, "static": {}}, "GET", True, (CACHE, STATIC)),
])
def test_order(config: dict[str, Any], method: str, can_resend: bool,
               order: tuple[FallbackKind, ...]) -> None:
    assert fallbacks(**config).choose(method, can_resend=can_resend) == order


def test_no_fallback_config() -> None:
    plan = FallbackPlan(None)
    assert plan.choose("GET") == () and plan.cluster is None and plan.static is None
    assert not plan.caches("GET", 200)


def test_choose_returns_shared_tuples() -> None:
    plan = fallbacks(**EVERYTHING)
    assert plan.choose("GET") is plan.choose("GET")


def test_static_is_encoded_once() -> None:
    plan = fallbacks(static={"status": 200, "headers": {"Content-Type": "text/plain"},
                             "body": "été"})
    assert plan.static == StaticResponse(200, ((b"Content-Type", b"text/plain"),),
                                         "été".encode())
    assert fallbacks(static={}).static == StaticResponse(503, (), b"")
    assert fallbacks(cluster="spare").cluster == "spare"


@pytest.mark.parametrize(("method", "status", "cached"), [
    ("GET", 200, True), ("HEAD", 200, False), ("POST", 200, False), ("GET", 203, False),
    ("GET", 404, False), ("GET", 503, False),
])
def test_only_200_answers_to_get_are_cached(method: str, status: int, cached: bool) -> None:
    assert fallbacks(cache={}).caches(method, status) is cached
    assert not fallbacks(static={}).caches(method, status)


# ---------------------------------------------------------------- the cache


def cache(clock: FakeClock, **config: Any) -> ResponseCache:
    return ResponseCache(CacheFallbackConfig(**config), clock)


def test_store_and_lookup() -> None:
    clock = FakeClock()
    c = cache(clock)
    key = ("users", "api.example.com", "/users/7?full=1")
    assert c.lookup(key) is None
    assert c.store(key, 200, JSON, b'{"id":7}')
    hit = c.lookup(key)
    assert hit == CachedResponse(200, JSON, b'{"id":7}', clock.now())
    assert hit is not None and hit.headers is JSON  # nothing dropped: nothing copied
    assert c.lookup(("users", "api.example.com", "/users/7")) is None


@pytest.mark.parametrize("status", [201, 204, 206, 301, 304, 404, 500, 503])
def test_only_200_is_stored(status: int) -> None:
    c = cache(FakeClock())
    assert not c.store("k", status, JSON, b"x")
    assert c.lookup("k") is None and len(c) == 0


def test_max_body_bytes() -> None:
    c = cache(FakeClock(), max_body_bytes=4)
    assert c.store("fits", 200, (), b"1234")
    assert not c.store("big", 200, (), b"12345")
    assert c.lookup("fits") is not None and c.lookup("big") is None


def test_an_answer_not_kept_leaves_the_older_one() -> None:
    c = cache(FakeClock(), max_body_bytes=4)
    c.store("k", 200, (), b"old")
    assert not c.store("k", 200, (), b"too big")
    assert not c.store("k", 500, (), b"err")
    hit = c.lookup("k")
    assert hit is not None and hit.body == b"old"


def test_max_age() -> None:
    clock = FakeClock()
    c = cache(clock, max_age=10.0)
    c.store("k", 200, (), b"v")
    clock.advance(10.0)
    assert c.lookup("k") is not None  # exactly max_age old: still good
    clock.advance(0.001)
    assert c.lookup("k") is None
    assert len(c) == 0 and c.evictions == 1 and c.size == 0  # evicted on lookup


def test_a_new_store_restarts_the_age() -> None:
    clock = FakeClock()
    c = cache(clock, max_age=10.0)
    c.store("k", 200, (), b"v1")
    clock.advance(8)
    c.store("k", 200, (), b"v2")
    clock.advance(8)
    hit = c.lookup("k")
    assert hit is not None and hit.body == b"v2"


def test_lru_eviction() -> None:
    c = cache(FakeClock(), max_entries=2)
    c.store("a", 200, (), b"a")
    c.store("b", 200, (), b"b")
    assert c.lookup("a") is not None  # a is now the most recent
    c.store("c", 200, (), b"c")
    assert c.lookup("b") is None
    assert c.lookup("a") is not None and c.lookup("c") is not None
    assert c.evictions == 1


def test_storing_again_makes_the_entry_most_recent() -> None:
    c = cache(FakeClock(), max_entries=2)
    c.store("a", 200, (), b"a")
    c.store("b", 200, (), b"b")
    c.store("a", 200, (), b"a2")
    c.store("c", 200, (), b"c")
    assert c.lookup("b") is None and c.lookup("a") is not None
    assert len(c) == 2


def test_memory_stays_bounded() -> None:
    c = cache(FakeClock(), max_entries=100, max_body_bytes=1000)
    for i in range(10_000):
        c.store(("r", "h", f"/item/{i}"), 200, ((b"ETag", b"x"),), b"x" * (i % 1001))
    assert len(c) == 100
    assert c.size <= 100 * (1000 + len(b"ETag") + 1)
    assert c.size == sum(e.size for e in (c.lookup(("r", "h", f"/item/{i}"))
                                          for i in range(9_900, 10_000)) if e is not None)


def test_size_follows_every_change() -> None:
    clock = FakeClock()
    c = cache(clock, max_entries=2, max_age=5.0)
    c.store("a", 200, ((b"A", b"1"),), b"12345")
    assert c.size == 5 + 2
    c.store("a", 200, (), b"123")
    assert c.size == 3
    c.store("b", 200, (), b"1")
    c.store("c", 200, (), b"1")  # evicts a
    assert c.size == 2
    clock.advance(6)
    assert c.lookup("b") is None and c.lookup("c") is None
    assert c.size == 0 and len(c) == 0


def test_update_config_shrinks_now() -> None:
    clock = FakeClock()
    c = cache(clock, max_entries=4, max_body_bytes=100, max_age=60.0)
    for key, body in (("a", b"1" * 50), ("b", b"2"), ("c", b"3"), ("d", b"4")):
        c.store(key, 200, (), body)
    c.update_config(CacheFallbackConfig(max_entries=2, max_body_bytes=10, max_age=1.0))
    # "a" is over the new body bound; of the rest the two most recent stay.
    assert len(c) == 2 and c.lookup("a") is None and c.lookup("b") is None
    assert c.size == 2 and c.evictions == 2
    clock.advance(2)
    assert c.lookup("c") is None  # the new max_age applies to old entries too


def test_hop_by_hop_fields_are_not_kept() -> None:
    c = cache(FakeClock())
    c.store("k", 200, ((b"Content-Type", b"text/plain"), (b"Connection", b"close"),
                       (b"Keep-Alive", b"timeout=5"), (b"ETag", b"e"),
                       (b"Transfer-Encoding", b"chunked")), b"v")
    hit = c.lookup("k")
    assert hit is not None
    assert hit.headers == ((b"Content-Type", b"text/plain"), (b"ETag", b"e"))


@pytest.mark.parametrize("header", [
    (b"Set-Cookie", b"session=abc"),
    (b"set-cookie", b"a=b"),
    (b"Cache-Control", b"no-store"),
    (b"Cache-Control", b"private, max-age=60"),
    (b"cache-control", b"max-age=0,Private"),
    (b"Cache-Control", b'private="x-user"'),
])
def test_private_answers_are_not_kept(header: tuple[bytes, bytes]) -> None:
    c = cache(FakeClock())
    assert not c.store("k", 200, (header,), b"v")
    assert c.lookup("k") is None


@pytest.mark.parametrize("value", [b"public, max-age=60", b"no-cache", b"x-no-storee"])
def test_other_cache_control_is_kept(value: bytes) -> None:
    c = cache(FakeClock())
    assert c.store("k", 200, ((b"Cache-Control", value),), b"v")

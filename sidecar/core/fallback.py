"""Fallbacks: when a route's cluster cannot answer, which fallback does, and the
bounded cache of last good responses the `cache` fallback answers from.

Owns:

* when a fallback is allowed (`should_fall_back`, `fallback_reason`): the cluster
  cannot serve (no usable endpoint, overflow), or the last try failed to connect
  or ended in a gateway error (a 502, 503 or 504, the upstream's or our own);
  never for an answer the application meant, such as a 500 or a 404;
* the order of the fallbacks of a route (`FallbackPlan`): cache (GET only), then
  another cluster, then a static answer;
* `ResponseCache`: an LRU of 200 answers to GETs, bounded in entries, body size
  and age;
* the `X-Sidecar-Fallback: cache|cluster|static` header every fallback answer carries.

A fallback answer does not fall back again: the caller tries the kinds of one
plan in order and stops.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Literal

from sidecar.config.resilience import CacheFallbackConfig, FallbackConfig
from sidecar.core.clock import Clock
from sidecar.core.headers import HOP_BY_HOP
from sidecar.core.retry import CONNECT_FAILURE, GATEWAY_ERROR, GATEWAY_STATUSES

__all__ = [
    "CACHE",
    "CLUSTER",
    "FALLBACK_HEADER",
    "FALLBACK_REASONS",
    "NO_HEALTHY_ENDPOINT",
    "OVERFLOW",
    "STATIC",
    "CachedResponse",
    "FallbackKind",
    "FallbackPlan",
    "ResponseCache",
    "StaticResponse",
    "fallback_header",
    "fallback_reason",
    "should_fall_back",
]

FallbackKind = Literal["cache", "cluster", "static"]
CACHE: Final = "cache"
CLUSTER: Final = "cluster"
STATIC: Final = "static"

FALLBACK_HEADER: Final = b"X-Sidecar-Fallback"
_HEADERS: dict[str, tuple[bytes, bytes]] = {
    kind: (FALLBACK_HEADER, kind.encode()) for kind in (CACHE, CLUSTER, STATIC)}


def fallback_header(kind: FallbackKind) -> tuple[bytes, bytes]:
    """The header pair marking an answer given by fallback `kind`."""
    return _HEADERS[kind]


# ---------------------------------------------------------------- when


#: The cluster has no endpoint that can take the request (none healthy, all
#: breakers open); the same name as `NoHealthyEndpoint.code`.
NO_HEALTHY_ENDPOINT: Final = "no_healthy_upstream"
#: A limit of the cluster refused the request (`ClusterLimits`).
OVERFLOW: Final = "overflow"
#: Why a fallback may answer. connect_failure and gateway_error are the failure
#: kinds of the last try (`sidecar.core.retry`).
FALLBACK_REASONS = frozenset({NO_HEALTHY_ENDPOINT, OVERFLOW, CONNECT_FAILURE, GATEWAY_ERROR})


def should_fall_back(reason: str) -> bool:
    """True if a request that failed for `reason` may get a fallback answer."""
    return reason in FALLBACK_REASONS


def fallback_reason(kind: str | None, status: int | None) -> str | None:
    """The fallback reason of the last try, or None if its answer stands.

    `kind`: its failure kind, or None if an answer came back. `status`: the status
    the client would get, the upstream's or the one the sidecar synthesizes for
    the failure (502 for a reset, 504 for a timeout...): a synthesized gateway
    error is a gateway error too.
    """
    if kind == CONNECT_FAILURE:
        return CONNECT_FAILURE
    if status in GATEWAY_STATUSES:
        return GATEWAY_ERROR
    return None


# ---------------------------------------------------------------- which


@dataclass(frozen=True, slots=True)
class StaticResponse:
    """The static fallback answer, encoded once per configuration."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class FallbackPlan:
    """A route's fallbacks, in the order they are tried; built once per configuration.

    `config` None: the route has no fallback and `choose` always gives ().
    """

    __slots__ = ("config", "cluster", "static", "_cache_gets", "_orders")

    def __init__(self, config: FallbackConfig | None) -> None:
        self.config = config
        #: The cluster to send the request to instead, if any.
        self.cluster = config.cluster if config is not None else None
        self.static: StaticResponse | None = None
        if config is not None and config.static is not None:
            static = config.static
            self.static = StaticResponse(
                static.status,
                tuple((name.encode(), value.encode()) for name, value in static.headers.items()),
                static.body.encode())
        self._cache_gets = config is not None and config.cache is not None
        # Every answer `choose` can give, precomputed; index 2 * is_get + can_resend.
        orders: list[tuple[FallbackKind, ...]] = []
        for get in (False, True):
            for resend in (False, True):
                order: list[FallbackKind] = []
                if config is not None:
                    if get and config.cache is not None:
                        order.append(CACHE)
                    if resend and config.cluster is not None:
                        order.append(CLUSTER)
                    if config.static is not None:
                        order.append(STATIC)
                orders.append(tuple(order))
        self._orders = tuple(orders)

    def choose(self, method: str, *, can_resend: bool = True) -> tuple[FallbackKind, ...]:
        """The fallbacks to try, in order, for a request that may fall back.

        The cache answers only GETs. The cluster fallback sends the request again,
        so it is left out when `can_resend` is false: pass
        `retry.replay_refusal(...) is None`, the same rule as for retries.
        """
        return self._orders[2 * (method == "GET") + can_resend]

    def caches(self, method: str, status: int) -> bool:
        """True if this answer should be offered to `ResponseCache.store`."""
        return self._cache_gets and status == 200 and method == "GET"


# ---------------------------------------------------------------- the cache


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A good answer kept for the cache fallback; `stored_at` is on the monotonic clock."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    stored_at: float

    @property
    def size(self) -> int:
        """Bytes held: the body, and the header names and values."""
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers)


# An answer that says it must not be kept, or is one user's, is never kept: the
# cache key has no user in it, so it would be served to the next client.
_PRIVATE = re.compile(rb"(?i)(?:^|[\s,])(?:no-store|private)\b")


def _kept_headers(
        headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...] | None:
    """The headers to keep, or None if the answer must not be kept at all."""
    kept: list[tuple[bytes, bytes]] | None = None
    for i, (name, value) in enumerate(headers):
        lower = name.lower()
        if lower == b"set-cookie" or (lower == b"cache-control" and _PRIVATE.search(value)):
            return None
        if lower in HOP_BY_HOP:
            # The caller passes end-to-end fields; this is a second line of defence,
            # and copies only when it has something to drop.
            if kept is None:
                kept = list(headers[:i])
        elif kept is not None:
            kept.append((name, value))
    return headers if kept is None else tuple(kept)


class ResponseCache:
    """The last good 200 answer per key, for the cache fallback.

    Theory of operation
    -------------------

    An entry's life, all in `store` and `lookup`::

        store(200, body <= max_body_bytes, not private)  -> fresh (most recent in LRU order)
        store(same key again)                            -> replaced, fresh
        store(anything else)                             -> ignored (an older entry stays)
        lookup, age <= max_age                           -> returned, most recent in LRU
        lookup, age >  max_age                           -> evicted, None
        more than max_entries                            -> least recently used evicted

    Memory is bounded by max_entries x (max_body_bytes + the head size the
    listener accepts). Entries nobody looks up expire only when LRU order reaches
    them; they still count against max_entries.

    `key`: hashable, given by the caller: (route name, host, path with query).
    `headers`: the answer's end-to-end fields as received (hop-by-hop fields are
    dropped if present; framing is the writer's business). Only GET answers
    should be stored (`FallbackPlan.caches`). Answers with `Set-Cookie` or
    `Cache-Control: no-store` / `private` are not kept.
    """

    __slots__ = ("_clock", "_entries", "_max_entries", "_max_body", "_max_age", "size",
                 "evictions", "config")

    def __init__(self, config: CacheFallbackConfig, clock: Clock) -> None:
        self._clock = clock
        self._entries: OrderedDict[Hashable, CachedResponse] = OrderedDict()
        #: Bytes held by all entries (a gauge).
        self.size = 0
        #: Entries dropped for LRU order, age or a new configuration (a counter).
        self.evictions = 0
        self.update_config(config)

    def __len__(self) -> int:
        return len(self._entries)

    def update_config(self, config: CacheFallbackConfig) -> None:
        """Take new bounds; entries over them are dropped now, so memory stays bounded."""
        self.config = config
        self._max_entries = config.max_entries
        self._max_body = config.max_body_bytes
        self._max_age = config.max_age
        for key in [k for k, e in self._entries.items() if len(e.body) > self._max_body]:
            self._drop(key)
        self._trim()

    def store(self, key: Hashable, status: int, headers: tuple[tuple[bytes, bytes], ...],
              body: bytes) -> bool:
        """Keep this answer as the last good one for `key`; False if it is not kept."""
        if status != 200 or len(body) > self._max_body:
            return False
        kept = _kept_headers(headers)
        if kept is None:
            return False
        entry = CachedResponse(status, kept, body, self._clock.now())
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= old.size
        self._entries[key] = entry
        self.size += entry.size
        self._trim()
        return True

    def lookup(self, key: Hashable) -> CachedResponse | None:
        """The answer kept for `key` if it is at most max_age old."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock.now() - entry.stored_at > self._max_age:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _drop(self, key: Hashable) -> None:
        self.size -= self._entries.pop(key).size
        self.evictions += 1

    def _trim(self) -> None:
        entries = self._entries
        while len(entries) > self._max_entries:
            _, entry = entries.popitem(last=False)
            self.size -= entry.size
            self.evictions += 1

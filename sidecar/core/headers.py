"""Header hygiene for forwarded messages, as bytes in and bytes out.

Pure functions, hot path: they build the whole upstream request head and the
downstream response head in one pass over the raw header pairs, without
decoding to str and without a multidict in between.

What they do (RFC 9110 7.6):

* drop hop-by-hop fields both ways: Connection, Keep-Alive, Proxy-Connection,
  TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate,
  Proxy-Authorization, and every field named in Connection;
* set the framing themselves (Content-Length or chunked), never trust the
  client's or the upstream's framing headers;
* append the client to X-Forwarded-For, set X-Forwarded-Proto from the
  connection and X-Forwarded-Host from the client's Host, append to Via;
* keep every other end-to-end field as received, byte for byte (Authorization,
  X-API-Key, cookies, Content-Encoding, ...);
* carry X-Request-Id: the client's when valid, otherwise a new one.
"""

from __future__ import annotations

import binascii
import functools
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import Final

__all__ = [
    "HOP_BY_HOP",
    "VIA_PSEUDONYM",
    "build_request_head",
    "build_response_head",
    "connection_tokens",
    "new_request_id",
    "name_filter",
    "new_traceparent",
    "trace_id",
    "valid_request_id",
]

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Fields the sidecar writes itself on the upstream request.
_REQUEST_OWNED: Final = HOP_BY_HOP | {
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"x-request-id", b"via",
}
# Fields the sidecar writes itself on the downstream response.
_RESPONSE_OWNED: Final = HOP_BY_HOP | {b"content-length", b"x-request-id", b"via"}

VIA_PSEUDONYM: Final = b"sidecar"
# Our Via entry for each protocol version a client speaks, built once.
_VIA_ENTRIES: Final = {version: version + b" " + VIA_PSEUDONYM for version in (b"1.1", b"1.0")}
_VIA_SELF: Final = _VIA_ENTRIES[b"1.1"]  # the hop a response took through the sidecar
_REQUEST_ID: Final = re.compile(r"[!-~]{1,128}")
_random = random.Random(os.urandom(16))
# Final: compiled, both are read from C variables instead of the module's dict.
_getrandbits: Final = _random.getrandbits
_hexlify: Final = binascii.hexlify


def _fast_randbytes(n: int) -> bytes:
    # What random.Random.randbytes does, without its Python frame (it is not C in 3.11).
    return _getrandbits(n * 8).to_bytes(n, "little")


# A module variable, not a direct call: tests replace it with a fixed source.
_randbytes: Callable[[int], bytes] = _fast_randbytes
_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
# b" 200 " for every status code a head can carry: an index instead of formatting.
_STATUS_CODES: Final = [b" %d " % code for code in range(600)]
_CRLF: Final = b"\r\n"
_SEP: Final = b": "
_LIST_SEP: Final = b", "


def name_filter(names: Iterable[bytes]) -> tuple[int, ...]:
    """A cheap test of whether a field name may be one of `names` (lower-case):
    `filter[name[0]] >> len(name) & 1` is set when some name of that length starts with
    that letter, in either case. A field that fails it passes through without being
    lower-cased and hashed (a method call and a set lookup, about 600 instructions):
    Date, Server, ETag and most of any message, but also User-Agent, Accept,
    Accept-Encoding or Content-Type, whose lengths alone collide with fields the
    sidecar owns (Connection, Expect, X-Forwarded-For, X-Request-Id)."""
    masks = [0] * 256
    for name in names:
        bit = 1 << len(name)
        first = name[0]
        masks[first] |= bit
        masks[bytes([first]).upper()[0]] |= bit
    return tuple(masks)


_REQUEST_FILTER: Final = name_filter(_REQUEST_OWNED)
_RESPONSE_FILTER: Final = name_filter(_RESPONSE_OWNED)


@functools.lru_cache(maxsize=256)
def _response_owned_with(replace: frozenset[bytes]) -> tuple[frozenset[bytes], tuple[int, ...]]:
    """The fields a response drops when a route sets `replace` itself, and their
    filter. Few distinct sets exist (routes x fallback kinds), so they are cached."""
    owned = _RESPONSE_OWNED | replace
    return owned, name_filter(owned)


_RANDOM_BATCH: Final = 64 * 24  # random bytes made at a time: 64 traceparents' ids


class _RandomHex:
    """Random lower-case hex digits, made 64 ids at a time.

    A request without a traceparent needs 48 random hex digits on its critical path
    (before its head goes upstream); made one request at a time they cost a
    `getrandbits`, a `to_bytes` and a `hexlify` each, about 3k instructions. Made in
    batches, a request takes two slices. Not secrets: a fast PRNG is fine (the
    module's `_randbytes`, read at each refill so that tests can replace it)."""

    __slots__ = ("_digits", "_at")

    def __init__(self) -> None:
        self._digits = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        at = self._at
        end = at + count
        if end > len(self._digits):
            self._digits = _hexlify(_randbytes(_RANDOM_BATCH))
            at, end = 0, count
        self._at = end
        return self._digits[at:end]

    def reset(self) -> None:
        """Drop the digits made so far (a forked child must not repeat its parent's)."""
        self._digits = b""
        self._at = 0


_random_hex: Final = _RandomHex()


def _after_fork() -> None:
    _random.seed(os.urandom(16))
    _random_hex.reset()


os.register_at_fork(after_in_child=_after_fork)


def new_request_id() -> bytes:
    """128 random bits as 32 hex digits. Not a secret, so a fast PRNG is fine."""
    return _random_hex.take(32)


_TRACEPARENT: Final = re.compile(
    r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE_HEX: Final = b"0" * 32
_ZERO_PARENT_HEX: Final = b"0" * 16
_ONE_TRACE_HEX: Final = b"0" * 31 + b"1"
_ONE_PARENT_HEX: Final = b"0" * 15 + b"1"


def new_traceparent(sampled: bool) -> bytes:
    """A W3C traceparent starting a trace: version 00, a random trace id and parent id,
    and the sampled flag as configured (off by default: the application decides)."""
    trace = _random_hex.take(32)
    parent = _random_hex.take(16)
    # An all-zero id is invalid (2^-64 at worst); it becomes 1.
    if trace == _ZERO_TRACE_HEX:
        trace = _ONE_TRACE_HEX
    if parent == _ZERO_PARENT_HEX:
        parent = _ONE_PARENT_HEX
    return b"00-%b-%b-%b" % (trace, parent, b"01" if sampled else b"00")


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C traceparent, else None (W3C Trace Context 3.2:
    version ff and all-zero ids are invalid; a later version may append fields)."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent)
    if match is None or match.group(1) == "ff" or (match.group(5) and match.group(1) == "00"):
        return None
    ident = match.group(2)
    if ident == "0" * 32 or match.group(3) == "0" * 16:
        return None
    return ident


def valid_request_id(value: str | None) -> bool:
    """A client's X-Request-Id is kept only if short and printable (no spaces, no controls)."""
    return value is not None and _REQUEST_ID.fullmatch(value) is not None


_PERSISTENCE: Final = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})


def _only_persistence(values: list[bytes]) -> bool:
    """The common case, `Connection: keep-alive` or `close`, names no other field."""
    return len(values) == 1 and values[0] in _PERSISTENCE


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Lower-case field names listed in Connection header values."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


# The fields of a head are gathered one `%` per field: compiled, mypyc builds each
# with one allocation and a memcpy of its parts (CPyBytes_Build), where every item of
# a b"".join pays a buffer acquisition and release (about 100 instructions: a head
# built from a list of four items per field cost 4-5k instructions more). Past _SPILL
# bytes the gathered lines move to a list, so that a large head is not copied again
# for each further field.
_SPILL: Final = 2048


def _spill(spilled: list[bytes] | None, fields: bytes) -> list[bytes]:
    if spilled is None:
        return [fields]
    spilled.append(fields)
    return spilled


def _gathered(spilled: list[bytes] | None, fields: bytes) -> bytes:
    """All the field lines of a head: those spilled, then the last ones."""
    if spilled is None:
        return fields
    spilled.append(fields)
    return b"".join(spilled)


def build_request_head(method: bytes, target: bytes, raw_headers: Sequence[tuple[bytes, bytes]],
                       *, host: bytes | None, client: bytes, proto: bytes, request_id: bytes,
                       framing: bytes, via_version: bytes = b"1.1",
                       _owned: frozenset[bytes] = _REQUEST_OWNED) -> bytes:
    """The upstream request head.

    `host`: the Host to send (the client's, or the endpoint's when not preserved);
    None keeps the client's Host. `framing`: b"Content-Length: N\\r\\n",
    b"Transfer-Encoding: chunked\\r\\n" or b"" for no body.
    """
    fields = b""  # the client's fields that pass, as lines
    spilled: list[bytes] | None = None
    client_host = b""
    # Usually absent: a client's X-Forwarded-For and Via values, joined as they come
    # (no list and no join per request); Connection values, a list only when present.
    forwarded_for = b""
    via = b""
    conn: list[bytes] | None = None
    owned = _owned
    filter_ = _REQUEST_FILTER if owned is _REQUEST_OWNED else name_filter(owned)
    for name, value in raw_headers:
        size = len(name)
        if size and filter_[name[0]] >> size & 1:
            lname = name.lower()
            if lname in owned:
                if lname == b"host":
                    client_host = value
                elif lname == b"x-forwarded-for":
                    forwarded_for = forwarded_for + _LIST_SEP + value if forwarded_for else value
                elif lname == b"via":
                    via = via + _LIST_SEP + value if via else value
                elif lname == b"connection":
                    if conn is None:
                        conn = [value]
                    else:
                        conn.append(value)
                continue
        fields = b"%b%b: %b\r\n" % (fields, name, value)
        if len(fields) > _SPILL:
            spilled = _spill(spilled, fields)
            fields = b""
    if conn is not None and owned is _REQUEST_OWNED and not _only_persistence(conn):
        tokens = connection_tokens(conn) - {b"close", b"keep-alive"}
        if tokens:  # rare: rebuild, dropping the fields Connection names as hop-by-hop
            return build_request_head(
                method, target, raw_headers, host=host, client=client, proto=proto,
                request_id=request_id, framing=framing, via_version=via_version,
                _owned=owned | tokens)
    fields = _gathered(spilled, fields)
    forwarded_for = forwarded_for + _LIST_SEP + client if forwarded_for else client
    entry = _VIA_ENTRIES.get(via_version) or via_version + b" " + VIA_PSEUDONYM
    via = via + _LIST_SEP + entry if via else entry
    if host is None:
        host = client_host
    if client_host:
        return (b"%b %b HTTP/1.1\r\n%bHost: %b\r\nX-Forwarded-For: %b\r\n"
                b"X-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\nX-Request-Id: %b\r\n"
                b"Via: %b\r\n%b\r\n" % (method, target, fields, host, forwarded_for, proto,
                                       client_host, request_id, via, framing))
    return (b"%b %b HTTP/1.1\r\n%bHost: %b\r\nX-Forwarded-For: %b\r\n"
            b"X-Forwarded-Proto: %b\r\nX-Request-Id: %b\r\nVia: %b\r\n%b\r\n"
            % (method, target, fields, host, forwarded_for, proto, request_id, via, framing))


def build_response_head(version: bytes, status: int, reason: bytes,
                        raw_headers: Sequence[tuple[bytes, bytes]], *, framing: bytes,
                        request_id: bytes, keep_content_length: bool = False,
                        replace: frozenset[bytes] = frozenset(),
                        _owned: frozenset[bytes] = _RESPONSE_OWNED) -> bytes:
    """The downstream response head (status line to the blank line).

    `version` is the client's (b"1.1" or b"1.0"). `framing` carries the
    Content-Length / Transfer-Encoding / Connection lines the server decided on.
    `keep_content_length`: pass the upstream's Content-Length through unchanged
    (responses to HEAD, 304), where it describes a body that is not sent.
    `replace`: lower-case names of upstream fields to drop because `framing` sets them
    (a route's security headers).
    """
    code = _STATUS_CODES[status] if 100 <= status < 600 else b" %d " % status
    reason = reason or _REASONS.get(status, b"Unknown")
    fields = b""  # the upstream's fields that pass, as lines
    spilled: list[bytes] | None = None
    via = b""  # the upstream's Via values, joined as they come (usually none)
    conn: list[bytes] | None = None
    if _owned is not _RESPONSE_OWNED:  # the rebuild without the fields Connection names
        owned = _owned | replace if replace else _owned
        filter_ = name_filter(owned)
    elif replace:
        owned, filter_ = _response_owned_with(replace)
    else:
        owned, filter_ = _RESPONSE_OWNED, _RESPONSE_FILTER
    for name, value in raw_headers:
        size = len(name)
        if size and filter_[name[0]] >> size & 1:
            lname = name.lower()
            # (An owned field is dropped, except a Content-Length to keep.)
            if lname in owned and not (keep_content_length and lname == b"content-length"):
                if lname == b"via":
                    via = via + _LIST_SEP + value if via else value
                elif lname == b"connection":
                    if conn is None:
                        conn = [value]
                    else:
                        conn.append(value)
                continue
        fields = b"%b%b: %b\r\n" % (fields, name, value)
        if len(fields) > _SPILL:
            spilled = _spill(spilled, fields)
            fields = b""
    if conn is not None and _owned is _RESPONSE_OWNED and not _only_persistence(conn):
        tokens = connection_tokens(conn) - {b"close", b"keep-alive"}
        if tokens:
            return build_response_head(
                version, status, reason, raw_headers, framing=framing, request_id=request_id,
                keep_content_length=keep_content_length, _owned=owned | tokens)
    fields = _gathered(spilled, fields)
    via = via + _LIST_SEP + _VIA_SELF if via else _VIA_SELF
    return (b"HTTP/%b%b%b\r\n%bX-Request-Id: %b\r\nVia: %b\r\n%b\r\n"
            % (version, code, reason, fields, request_id, via, framing))

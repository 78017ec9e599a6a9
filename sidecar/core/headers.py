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
_ZERO_TRACE: Final = bytes(16)
_ZERO_PARENT: Final = bytes(8)
_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
# b" 200 " for every status code a head can carry: an index instead of formatting.
_STATUS_CODES: Final = [b" %d " % code for code in range(600)]
_CRLF: Final = b"\r\n"
_SEP: Final = b": "
_LIST_SEP: Final = b", "


def _length_mask(names: Iterable[bytes]) -> int:
    """Bit n set when some name in `names` is n bytes long. A field whose name has a
    length no owned field has is passed through without lower-casing and hashing its
    name: most fields of a message (Date, Server, ETag, ...), at one shift and test."""
    mask = 0
    for name in names:
        mask |= 1 << len(name)
    return mask


_REQUEST_LENGTHS: Final = _length_mask(_REQUEST_OWNED)
_RESPONSE_LENGTHS: Final = _length_mask(_RESPONSE_OWNED)


def new_request_id() -> bytes:
    """128 random bits as 32 hex digits. Not a secret, so a fast PRNG is fine."""
    return _hexlify(_randbytes(16))  # half the cost of b"%032x" % getrandbits(128)


_TRACEPARENT: Final = re.compile(
    r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def new_traceparent(sampled: bool) -> bytes:
    """A W3C traceparent starting a trace: version 00, a random trace id and parent id,
    and the sampled flag as configured (off by default: the application decides)."""
    # 24 random bytes as hex, a dash before the last 8: trace id, then parent id. An
    # all-zero id is invalid (2^-64 at worst); it becomes 1. (Slices and compares: a
    # find() on the hex costs twice as much, in its argument parsing.)
    raw = _randbytes(24)
    trace, parent = raw[:16], raw[16:]
    if trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        raw = ((trace if trace != _ZERO_TRACE else _ZERO_TRACE[1:] + b"\x01")
               + (parent if parent != _ZERO_PARENT else _ZERO_PARENT[1:] + b"\x01"))
    ids = _hexlify(raw, b"-", -16)
    return b"00-" + ids + (b"-01" if sampled else b"-00")


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


def build_request_head(method: bytes, target: bytes, raw_headers: Sequence[tuple[bytes, bytes]],
                       *, host: bytes | None, client: bytes, proto: bytes, request_id: bytes,
                       framing: bytes, via_version: bytes = b"1.1",
                       _owned: frozenset[bytes] = _REQUEST_OWNED) -> bytes:
    """The upstream request head.

    `host`: the Host to send (the client's, or the endpoint's when not preserved);
    None keeps the client's Host. `framing`: b"Content-Length: N\\r\\n",
    b"Transfer-Encoding: chunked\\r\\n" or b"" for no body.
    """
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    client_host = b""
    # Usually absent: a client's X-Forwarded-For and Via values, joined as they come
    # (no list and no join per request); Connection values, a list only when present.
    forwarded_for = b""
    via = b""
    conn: list[bytes] | None = None
    owned = _owned
    lengths = _REQUEST_LENGTHS if owned is _REQUEST_OWNED else _length_mask(owned)
    for name, value in raw_headers:
        if lengths >> len(name) & 1:
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
        # Four appends: compiled, each is a C call; a tuple to extend with would be
        # allocated and freed per field.
        lines.append(name)
        lines.append(_SEP)
        lines.append(value)
        lines.append(_CRLF)
    if conn is not None and owned is _REQUEST_OWNED and not _only_persistence(conn):
        tokens = connection_tokens(conn) - {b"close", b"keep-alive"}
        if tokens:  # rare: rebuild, dropping the fields Connection names as hop-by-hop
            return build_request_head(
                method, target, raw_headers, host=host, client=client, proto=proto,
                request_id=request_id, framing=framing, via_version=via_version,
                _owned=owned | tokens)
    forwarded_for = forwarded_for + _LIST_SEP + client if forwarded_for else client
    entry = _VIA_ENTRIES.get(via_version) or via_version + b" " + VIA_PSEUDONYM
    via = via + _LIST_SEP + entry if via else entry
    # The sidecar's own fields, each separator merged with the next name: every item
    # of a join costs a buffer acquisition, so fewer, longer constants are cheaper.
    lines += (b"Host: ", host if host is not None else client_host,
              b"\r\nX-Forwarded-For: ", forwarded_for,
              b"\r\nX-Forwarded-Proto: ", proto)
    if client_host:
        lines += (b"\r\nX-Forwarded-Host: ", client_host)
    lines += (b"\r\nX-Request-Id: ", request_id, b"\r\nVia: ", via, _CRLF, framing, _CRLF)
    return b"".join(lines)


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
    lines = [b"HTTP/", version, code, reason or _REASONS.get(status, b"Unknown"), _CRLF]
    via = b""  # the upstream's Via values, joined as they come (usually none)
    conn: list[bytes] | None = None
    owned = _owned | replace if replace else _owned
    lengths = _RESPONSE_LENGTHS if owned is _RESPONSE_OWNED else _length_mask(owned)
    for name, value in raw_headers:
        if lengths >> len(name) & 1:
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
        lines.append(name)  # four appends, as in build_request_head
        lines.append(_SEP)
        lines.append(value)
        lines.append(_CRLF)
    if conn is not None and _owned is _RESPONSE_OWNED and not _only_persistence(conn):
        tokens = connection_tokens(conn) - {b"close", b"keep-alive"}
        if tokens:
            return build_response_head(
                version, status, reason, raw_headers, framing=framing, request_id=request_id,
                keep_content_length=keep_content_length, _owned=owned | tokens)
    via = via + _LIST_SEP + _VIA_SELF if via else _VIA_SELF
    lines += (b"X-Request-Id: ", request_id, b"\r\nVia: ", via, _CRLF, framing, _CRLF)
    return b"".join(lines)

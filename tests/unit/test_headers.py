"""Header hygiene: raw header pairs in, the serialized upstream / downstream head out."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import pytest

from sidecar.core import headers
from sidecar.core.headers import (
    HOP_BY_HOP,
    VIA_PSEUDONYM,
    build_request_head,
    build_response_head,
    connection_tokens,
    new_request_id,
    new_traceparent,
    valid_request_id,
)

Headers = list[tuple[bytes, bytes]]
REQUEST_ID = b"req-0001"


def request_head(raw: Sequence[tuple[bytes, bytes]], *, method: bytes = b"GET",
                 target: bytes = b"/x", **kwargs: Any) -> bytes:
    options: dict[str, Any] = {"host": None, "client": b"10.0.0.9", "proto": b"http",
                               "request_id": REQUEST_ID, "framing": b""}
    options.update(kwargs)
    return build_request_head(method, target, raw, **options)


def response_head(raw: Sequence[tuple[bytes, bytes]], *, status: int = 200,
                  reason: bytes = b"", version: bytes = b"1.1", **kwargs: Any) -> bytes:
    options: dict[str, Any] = {"framing": b"", "request_id": REQUEST_ID}
    options.update(kwargs)
    return build_response_head(version, status, reason, raw, **options)


def parse(head: bytes) -> tuple[bytes, Headers]:
    """Split a head into its start line and (name, value) pairs; check its framing."""
    assert head.endswith(b"\r\n\r\n")
    start, *lines = head[:-4].split(b"\r\n")
    pairs = []
    for line in lines:
        name, sep, value = line.partition(b": ")
        assert sep, line
        pairs.append((name, value))
    return start, pairs


def values(pairs: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in pairs if n.lower() == name.lower()]


def names(pairs: Headers) -> set[bytes]:
    return {n.lower() for n, _ in pairs}


HOST = (b"Host", b"api.example.com")

# ------------------------------------------------------------ request: start line and order


def test_request_start_line_and_fixed_fields() -> None:
    start, pairs = parse(request_head([HOST, (b"Accept", b"*/*")], method=b"POST",
                                      target=b"/a/b?c=d"))
    assert start == b"POST /a/b?c=d HTTP/1.1"
    assert pairs == [
        (b"Accept", b"*/*"),
        (b"Host", b"api.example.com"),
        (b"X-Forwarded-For", b"10.0.0.9"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"api.example.com"),
        (b"X-Request-Id", REQUEST_ID),
        (b"Via", b"1.1 " + VIA_PSEUDONYM),
    ]


def test_request_keeps_end_to_end_fields_in_order_byte_for_byte() -> None:
    raw = [
        HOST,
        (b"Authorization", b"Bearer  eyJhbGciOi.J9==\xff"),
        (b"x-api-KEY", b" k3y with spaces "),
        (b"Cookie", b"a=1; b=2"),
        (b"cookie", b"c=\"3\""),
        (b"Content-Encoding", b"gzip"),
        (b"Accept", b"text/html, */*;q=0.1"),
        (b"X-Empty", b""),
    ]
    _, pairs = parse(request_head(raw))
    assert pairs[:7] == raw[1:]


@pytest.mark.parametrize("count", [1, 40, 100])
@pytest.mark.parametrize("size", [0, 100, 8000])
def test_large_heads_keep_every_field_in_order(count: int, size: int) -> None:
    # Heads far past the size at which gathered lines move to a list, one line at a
    # time or many: nothing lost, doubled or reordered, in either direction.
    raw = [(b"X-F%d" % i, bytes([97 + i % 26]) * (size + i)) for i in range(count)]
    start, pairs = parse(request_head([HOST, *raw]))
    assert start == b"GET /x HTTP/1.1"
    assert pairs[:count] == raw
    assert values(pairs, b"host") == [HOST[1]]
    start, pairs = parse(response_head(raw))
    assert start == b"HTTP/1.1 200 OK"
    assert pairs[:count] == raw
    assert values(pairs, b"x-request-id") == [REQUEST_ID]


def _case_variants(name: bytes) -> list[bytes]:
    flipped = bytes(c ^ 0x20 if 97 <= c <= 122 and i % 2 else c for i, c in enumerate(name))
    return [name, name.upper(), name.title(), flipped, flipped.swapcase()]


def test_the_name_filter_lets_every_owned_field_through_in_any_case() -> None:
    # A name the filter turned away would pass through unexamined: a hop-by-hop field
    # forwarded, or a client's X-Forwarded-For kept beside the sidecar's own.
    owned = headers._REQUEST_OWNED | headers._RESPONSE_OWNED
    for filter_, names in ((headers._REQUEST_FILTER, headers._REQUEST_OWNED),
                           (headers._RESPONSE_FILTER, headers._RESPONSE_OWNED),
                           (headers.name_filter(owned), owned)):
        for name in names:
            for variant in _case_variants(name):
                assert filter_[variant[0]] >> len(variant) & 1, variant


def test_the_name_filter_turns_away_common_fields_whose_length_collides() -> None:
    # Same length as Connection, Expect, X-Forwarded-For and X-Request-Id: only the
    # first letter tells them apart, and they need no lower-casing.
    filter_ = headers._REQUEST_FILTER
    for name in (b"User-Agent", b"Accept", b"Accept-Encoding", b"Content-Type",
                 b"Date", b"Server", b"Cookie"):
        assert not filter_[name[0]] >> len(name) & 1, name


@pytest.mark.parametrize(("name", "count"), [
    (b"X-Forwarded-For", 1), (b"x-FORWARDED-for", 1), (b"VIA", 1), (b"x-request-ID", 1),
    (b"Te", 0), (b"KEEP-alive", 0), (b"Transfer-ENCODING", 0),
])
def test_owned_fields_in_any_case_are_the_sidecars_own(name: bytes, count: int) -> None:
    # Merged into the sidecar's field (X-Forwarded-For, Via), replaced (X-Request-Id)
    # or dropped (hop-by-hop): never passed through beside it.
    _, pairs = parse(request_head([HOST, (name, b"sent")]))
    assert len(values(pairs, name)) == count
    assert b"sent" not in values(pairs, name)  # (merged: "sent, 10.0.0.9")


# ------------------------------------------------------------ request: hop-by-hop


@pytest.mark.parametrize("name", [
    b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer",
    b"Transfer-Encoding", b"Upgrade", b"Proxy-Authenticate", b"Proxy-Authorization",
    b"PROXY-AUTHORIZATION", b"keep-alive",
])
def test_request_drops_hop_by_hop_fields(name: bytes) -> None:
    value = b"close" if name.lower() == b"connection" else b"x"
    _, pairs = parse(request_head([HOST, (name, value), (b"Accept", b"*/*")]))
    assert name.lower() not in names(pairs)
    assert values(pairs, b"Accept") == [b"*/*"]


def test_hop_by_hop_set_is_rfc_9110_plus_proxy_fields() -> None:
    assert {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
            b"transfer-encoding", b"upgrade", b"proxy-authenticate",
            b"proxy-authorization"} == HOP_BY_HOP


def test_request_proxy_authorization_stripped_but_authorization_kept() -> None:
    _, pairs = parse(request_head([HOST, (b"Proxy-Authorization", b"Basic cHJveHk6cHc="),
                                   (b"Authorization", b"Basic dXNlcjpwdw==")]))
    assert values(pairs, b"Proxy-Authorization") == []
    assert values(pairs, b"Authorization") == [b"Basic dXNlcjpwdw=="]


def test_request_connection_close_and_keep_alive_are_not_field_names() -> None:
    _, pairs = parse(request_head([HOST, (b"Connection", b"close, keep-alive"),
                                   (b"Close", b"not hop-by-hop"), (b"Accept", b"*/*")]))
    assert b"connection" not in names(pairs)
    assert values(pairs, b"Close") == [b"not hop-by-hop"]


@pytest.mark.parametrize(("connection", "dropped", "kept"), [
    ([b"X-Foo"], {b"x-foo"}, {b"x-bar"}),
    ([b"keep-alive, X-Foo"], {b"x-foo"}, {b"x-bar"}),
    ([b"close", b" x-foo ,X-Bar"], {b"x-foo", b"x-bar"}, set()),
    ([b"Authorization"], {b"authorization"}, {b"x-foo", b"x-bar"}),
])
def test_request_drops_fields_named_in_connection(connection: list[bytes], dropped: set[bytes],
                                                  kept: set[bytes]) -> None:
    raw = [HOST, *[(b"Connection", c) for c in connection], (b"X-Foo", b"1"),
           (b"x-bar", b"2"), (b"Authorization", b"Bearer t"), (b"Accept", b"*/*")]
    _, pairs = parse(request_head(raw))
    assert not names(pairs) & (dropped | {b"connection"})
    assert kept <= names(pairs)
    assert values(pairs, b"Accept") == [b"*/*"]
    assert values(pairs, b"Host") == [b"api.example.com"]
    assert values(pairs, b"X-Forwarded-For") == [b"10.0.0.9"]


def test_request_websocket_style_connection_upgrade() -> None:
    raw = [HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
           (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    _, pairs = parse(request_head(raw))
    assert not names(pairs) & {b"connection", b"upgrade"}
    assert values(pairs, b"Sec-WebSocket-Key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]


def test_request_connection_naming_owned_fields_does_not_lose_them() -> None:
    raw = [HOST, (b"Connection", b"Host, X-Forwarded-For, Via"),
           (b"X-Forwarded-For", b"1.1.1.1")]
    _, pairs = parse(request_head(raw, host=None))
    assert values(pairs, b"Host") == [b"api.example.com"]
    assert len(values(pairs, b"X-Forwarded-For")) == 1
    assert values(pairs, b"Via") != []


# ------------------------------------------------------------ request: X-Forwarded-*, Via


def test_x_forwarded_for_is_created() -> None:
    _, pairs = parse(request_head([HOST], client=b"192.0.2.7"))
    assert values(pairs, b"X-Forwarded-For") == [b"192.0.2.7"]


def test_x_forwarded_for_appends_to_all_incoming_values() -> None:
    raw = [HOST, (b"X-Forwarded-For", b"203.0.113.1"), (b"Accept", b"*/*"),
           (b"x-forwarded-for", b"198.51.100.2, 198.51.100.3")]
    _, pairs = parse(request_head(raw, client=b"10.0.0.9"))
    assert values(pairs, b"X-Forwarded-For") == [
        b"203.0.113.1, 198.51.100.2, 198.51.100.3, 10.0.0.9"]


def test_x_forwarded_proto_is_overwritten_from_the_connection() -> None:
    raw = [HOST, (b"X-Forwarded-Proto", b"https"), (b"x-forwarded-proto", b"ftp")]
    _, pairs = parse(request_head(raw, proto=b"http"))
    assert values(pairs, b"X-Forwarded-Proto") == [b"http"]
    _, pairs = parse(request_head([HOST], proto=b"https"))
    assert values(pairs, b"X-Forwarded-Proto") == [b"https"]


def test_x_forwarded_host_is_the_client_host() -> None:
    raw = [(b"X-Forwarded-Host", b"spoofed.example"), (b"host", b"Shop.Example.com:8443")]
    _, pairs = parse(request_head(raw))
    assert values(pairs, b"X-Forwarded-Host") == [b"Shop.Example.com:8443"]


def test_no_x_forwarded_host_without_a_client_host() -> None:
    _, pairs = parse(request_head([(b"X-Forwarded-Host", b"spoofed")], host=b"10.1.1.1:8080"))
    assert values(pairs, b"X-Forwarded-Host") == []
    assert values(pairs, b"Host") == [b"10.1.1.1:8080"]


def test_via_is_appended() -> None:
    raw = [HOST, (b"Via", b"1.0 fred"), (b"via", b"1.1 p.example.net")]
    _, pairs = parse(request_head(raw))
    assert values(pairs, b"Via") == [b"1.0 fred, 1.1 p.example.net, 1.1 sidecar"]


def test_via_uses_the_client_protocol_version() -> None:
    _, pairs = parse(request_head([HOST], via_version=b"1.0"))
    assert values(pairs, b"Via") == [b"1.0 sidecar"]


# ------------------------------------------------------------ request: Host, framing, id


def test_host_preserved_when_none_is_given() -> None:
    _, pairs = parse(request_head([(b"HOST", b"api.example.com:8000")], host=None))
    assert values(pairs, b"Host") == [b"api.example.com:8000"]


def test_host_replaced_by_the_endpoint_authority() -> None:
    _, pairs = parse(request_head([HOST], host=b"10.1.2.3:8080"))
    assert values(pairs, b"Host") == [b"10.1.2.3:8080"]
    assert values(pairs, b"X-Forwarded-Host") == [b"api.example.com"]


@pytest.mark.parametrize("framing", [b"", b"Content-Length: 12\r\n",
                                     b"Transfer-Encoding: chunked\r\n"])
def test_client_framing_is_never_forwarded(framing: bytes) -> None:
    raw = [HOST, (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"),
           (b"content-length", b"7"), (b"Accept", b"*/*")]
    head = request_head(raw, method=b"POST", framing=framing)
    _, pairs = parse(head)
    expected = parse(b"X\r\n" + framing + b"\r\n")[1] if framing else []
    framing_pairs = [(n, v) for n, v in pairs
                     if n.lower() in (b"content-length", b"transfer-encoding")]
    assert framing_pairs == expected
    assert head.endswith(framing + b"\r\n")


def test_expect_is_not_forwarded() -> None:
    _, pairs = parse(request_head([HOST, (b"Expect", b"100-continue")], method=b"PUT",
                                  framing=b"Content-Length: 3\r\n"))
    assert values(pairs, b"Expect") == []


def test_request_id_replaces_the_clients() -> None:
    raw = [HOST, (b"X-Request-Id", b"client-id"), (b"x-request-id", b"other")]
    _, pairs = parse(request_head(raw, request_id=b"abc123"))
    assert values(pairs, b"X-Request-Id") == [b"abc123"]


def test_owned_fields_appear_exactly_once() -> None:
    raw = [HOST, HOST, (b"Via", b"1.1 a"), (b"X-Request-Id", b"x"), (b"X-Forwarded-Host", b"h"),
           (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-For", b"1.1.1.1")]
    _, pairs = parse(request_head(raw, framing=b"Content-Length: 1\r\n"))
    for name in (b"host", b"via", b"x-request-id", b"x-forwarded-host", b"x-forwarded-proto",
                 b"x-forwarded-for", b"content-length"):
        assert len(values(pairs, name)) == 1, name


# ------------------------------------------------------------ response head


@pytest.mark.parametrize(("status", "reason", "version", "line"), [
    (200, b"", b"1.1", b"HTTP/1.1 200 OK"),
    (404, b"", b"1.0", b"HTTP/1.0 404 Not Found"),
    (503, b"", b"1.1", b"HTTP/1.1 503 Service Unavailable"),
    (200, b"Fine Thanks", b"1.1", b"HTTP/1.1 200 Fine Thanks"),
    (299, b"", b"1.1", b"HTTP/1.1 299 Unknown"),
])
def test_response_status_line(status: int, reason: bytes, version: bytes, line: bytes) -> None:
    start, _ = parse(response_head([], status=status, reason=reason, version=version))
    assert start == line


def test_response_keeps_end_to_end_fields_and_sets_id_via_and_framing() -> None:
    raw = [(b"Content-Type", b"application/json"), (b"Set-Cookie", b"a=1; Path=/"),
           (b"set-cookie", b"b=2; HttpOnly"), (b"Content-Encoding", b"br"),
           (b"X-Request-Id", b"upstream-id"), (b"Via", b"1.1 upstream"),
           (b"Content-Length", b"999"), (b"Transfer-Encoding", b"chunked")]
    head = response_head(raw, framing=b"Content-Length: 42\r\nConnection: keep-alive\r\n",
                         request_id=b"rid")
    _, pairs = parse(head)
    assert pairs == [
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"set-cookie", b"b=2; HttpOnly"),
        (b"Content-Encoding", b"br"),
        (b"X-Request-Id", b"rid"),
        (b"Via", b"1.1 upstream, 1.1 sidecar"),
        (b"Content-Length", b"42"),
        (b"Connection", b"keep-alive"),
    ]


@pytest.mark.parametrize("name", [b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE",
                                  b"Trailer", b"Transfer-Encoding", b"Upgrade",
                                  b"Proxy-Authenticate", b"Proxy-Authorization"])
def test_response_drops_hop_by_hop_fields(name: bytes) -> None:
    value = b"keep-alive" if name.lower() == b"connection" else b"x"
    _, pairs = parse(response_head([(name, value), (b"ETag", b"\"v1\"")]))
    assert name.lower() not in names(pairs)
    assert values(pairs, b"ETag") == [b"\"v1\""]


def test_response_drops_fields_named_in_connection() -> None:
    raw = [(b"Connection", b"X-Internal, close"), (b"X-Internal", b"secret"),
           (b"ETag", b"\"v1\"")]
    _, pairs = parse(response_head(raw))
    assert not names(pairs) & {b"connection", b"x-internal"}
    assert values(pairs, b"ETag") == [b"\"v1\""]


def test_response_drops_upstream_content_length_by_default() -> None:
    _, pairs = parse(response_head([(b"Content-Length", b"10")], framing=b""))
    assert values(pairs, b"Content-Length") == []


def test_response_keep_content_length_for_head() -> None:
    raw = [(b"content-length", b"1234"), (b"Transfer-Encoding", b"chunked"),
           (b"Content-Type", b"text/plain")]
    _, pairs = parse(response_head(raw, keep_content_length=True, framing=b""))
    assert values(pairs, b"Content-Length") == [b"1234"]
    assert (b"content-length", b"1234") in pairs  # name kept as received
    assert values(pairs, b"Transfer-Encoding") == []


# ------------------------------------------------------------ request ids


@pytest.mark.parametrize("value", [
    "a", "a" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e", "req_1:2/3+4=~!", "\"quoted\"",
])
def test_valid_request_id(value: str) -> None:
    assert valid_request_id(value)


@pytest.mark.parametrize("value", [
    None, "", "a" * 129, "a" * 1000, "has space", " lead", "trail ", "tab\there", "nul\x00",
    "del\x7f", "cr\rlf\n", "id\r\nX-Injected: 1", "\x1b[31m", "caf\xe9", "\xa0nbsp",
])
def test_invalid_request_id(value: str | None) -> None:
    assert not valid_request_id(value)


@pytest.mark.parametrize("value", ["euro\u20ac", "emoji\U0001f600", "raw\udc80byte"])
def test_request_id_outside_latin_1_is_invalid(value: str) -> None:
    assert not valid_request_id(value)


def test_new_request_id_is_32_lower_hex_digits_and_valid() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        assert isinstance(rid, bytes)
        assert re.fullmatch(rb"[0-9a-f]{32}", rid)
        assert valid_request_id(rid.decode())


# ------------------------------------------------------------ connection_tokens


def test_connection_tokens_are_lower_case_trimmed_and_deduplicated() -> None:
    assert connection_tokens([b"Keep-Alive, X-Foo", b" x-foo ,, Upgrade ", b""]) == frozenset(
        {b"keep-alive", b"x-foo", b"upgrade"})
    assert connection_tokens([]) == frozenset()


def test_new_traceparent_is_a_valid_w3c_traceparent() -> None:
    started = {new_traceparent(False) for _ in range(200)}
    assert len(started) == 200
    for value in started:
        assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-00", value)
        assert headers.trace_id(value.decode()) == value[3:35].decode()
    assert new_traceparent(True).endswith(b"-01")


@pytest.mark.parametrize("random_bytes", [
    bytes(24),                   # both ids all zero
    bytes(16) + b"\x01" * 8,     # the trace id
    b"\x01" * 16 + bytes(8),     # the parent id
    b"\x01" * 7 + bytes(9) + b"\x02" * 8,  # zeros inside an id are fine
])
def test_new_traceparent_never_has_an_all_zero_id(
        monkeypatch: pytest.MonkeyPatch, random_bytes: bytes) -> None:
    monkeypatch.setattr(headers, "_randbytes", lambda n: random_bytes[:n])
    headers._random_hex.reset()  # the digits already made came from the real source
    value = new_traceparent(False).decode()
    headers._random_hex.reset()
    assert headers.trace_id(value) is not None
    assert value[3:35] == random_bytes[:16].hex() or random_bytes[:16] == bytes(16)
    assert value[36:52] == random_bytes[16:].hex() or random_bytes[16:] == bytes(8)


def test_ids_made_in_batches_run_on_across_refills() -> None:
    # 64 ids are made at a time: 500 in a row cross several refills, all distinct.
    ids = [new_traceparent(False) for _ in range(500)]
    assert len(set(ids)) == 500
    assert all(headers.trace_id(value.decode()) is not None for value in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    # Parent and child hold the same pool and generator state at the fork; without the
    # at-fork reset both would hand out the same next ids.
    new_request_id()  # the pool holds digits made before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent, then out
        try:
            os.write(write_end, b"".join(new_request_id() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = b"".join(new_request_id() for _ in range(4))
    assert len(child) == len(parent) == 128
    assert {child[i:i + 32] for i in range(0, 128, 32)}.isdisjoint(
        parent[i:i + 32] for i in range(0, 128, 32))

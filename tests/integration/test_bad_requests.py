"""Malformed requests get a JSON 4xx from the sidecar and never reach an upstream."""

from __future__ import annotations

import json

import pytest

from .conftest import raw_request, url_of

BAD_REQUESTS = {
    "two different content-lengths":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "non-numeric content-length":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "negative content-length":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "content-length with transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    "transfer-encoding not ending in chunked":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "transfer-encoding chunked then gzip":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "chunked applied twice":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding chunked then gzip, in two fields":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip"
        b"\r\n\r\n0\r\n\r\n",
    "invalid chunk size":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk data longer than its size":
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
    "bare LF line endings":
        b"GET / HTTP/1.1\nHost: x\n\n",
    "whitespace before colon":
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "obs-fold":
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n",
    "control character in a value":
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "NUL in a value":
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "space in a header name":
        b"GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",
    "bad request line":
        b"GET\r\nHost: x\r\n\r\n",
    "garbage":
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "bad HTTP version":
        b"GET / HTTP/1.x\r\nHost: x\r\n\r\n",
    "unsupported HTTP version":
        b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
    "missing Host in HTTP/1.1":
        b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "duplicate Host":
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "Host with a space":
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "Host with a slash":
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "Host with userinfo":
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    "Host with two ports":
        b"GET / HTTP/1.1\r\nHost: a:80:90\r\n\r\n",
    "Host with a non-ASCII byte":
        b"GET / HTTP/1.1\r\nHost: \xc3\xa9.test\r\n\r\n",
    "absolute-form authority with two ports":
        b"GET http://a:80:90/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "relative request target":
        b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.fixture
async def proxied(start_upstream, start_sidecar):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}],
        "listener": {"max_uri_bytes": 1024, "max_header_bytes": 2048, "max_headers": 20}})
    return sidecar.ports["listener"], seen


def parse(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_malformed_request_is_400_and_never_forwarded(proxied, case):
    port, seen = proxied
    status, headers, body = parse(await raw_request(port, BAD_REQUESTS[case]))
    assert status == 400, case
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request"
    assert error["request_id"]
    assert seen.requests == []


@pytest.mark.parametrize("codings", [
    [b"gzip, chunked"],
    [b"gzip", b"chunked"],        # two fields: the same list
    [b"x-custom ,  Chunked"],
])
async def test_a_transfer_coding_besides_chunked_is_501_and_never_forwarded(proxied, codings):
    port, seen = proxied
    fields = b"".join(b"Transfer-Encoding: %b\r\n" % coding for coding in codings)
    status, headers, body = parse(await raw_request(
        port, b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n3\r\nabc\r\n0\r\n\r\n"))
    assert status == 501
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "transfer_coding_not_implemented"
    assert seen.requests == []


async def test_chunked_alone_in_any_case_is_forwarded(proxied):
    port, seen = proxied
    status, _, _ = parse(await raw_request(
        port, b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Transfer-Encoding:  CHUNKED \r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
    assert status == 200
    assert seen.requests[-1]["body"] == b"abc"


async def test_oversized_uri_is_414(proxied):
    port, seen = proxied
    status, _, body = parse(await raw_request(port, b"GET /" + b"a" * 2000 +
                                              b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 414
    assert json.loads(body)["error"]["code"] == "uri_too_long"
    assert seen.requests == []


async def test_oversized_header_is_431(proxied):
    port, seen = proxied
    status, _, body = parse(await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " +
                                              b"a" * 4000 + b"\r\n\r\n"))
    assert status == 431
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert seen.requests == []


async def test_too_many_headers_is_431(proxied):
    port, seen = proxied
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    status, _, _ = parse(await raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many +
                                           b"\r\n"))
    assert status == 431
    assert seen.requests == []


async def test_connect_is_refused(proxied):
    port, seen = proxied
    status, headers, body = parse(await raw_request(
        port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"))
    assert status in (400, 405)
    assert json.loads(body)["error"]["code"] in ("bad_request", "method_not_allowed")
    assert seen.requests == []


async def test_absolute_form_target_is_accepted(proxied):
    port, seen = proxied
    status, _, _ = parse(await raw_request(
        port, b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n"
              b"Connection: close\r\n\r\n"))
    assert status == 200
    assert seen.requests[0]["path"] == "/x?y=1"


async def test_dot_segments_are_removed_before_routing(start_upstream, start_sidecar):
    public, seen_public = await start_upstream(name="public")
    admin, seen_admin = await start_upstream(name="admin")
    sidecar = await start_sidecar({
        "clusters": [{"name": "public", "endpoints": [{"url": url_of(public)}]},
                     {"name": "admin", "endpoints": [{"url": url_of(admin)}]}],
        "routes": [{"prefix": "/public", "cluster": "public"},
                   {"prefix": "/admin", "cluster": "admin", "methods": ["POST"]}]})
    status, _, _ = parse(await raw_request(
        sidecar.ports["listener"],
        b"GET /public/../admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert status == 405  # routed as /admin/x, which only allows POST
    assert seen_public.requests == [] and seen_admin.requests == []

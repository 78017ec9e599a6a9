"""Listen addresses and endpoint URLs: strings in, normalised values or a ValueError out."""

from __future__ import annotations

import pytest

from sidecar.core.addresses import HostPort, UpstreamAddress, parse_host_port, parse_upstream_url

# ------------------------------------------------------------ parse_upstream_url


@pytest.mark.parametrize(("url", "scheme", "host", "port"), [
    ("http://example.com", "http", "example.com", 80),
    ("http://example.com/", "http", "example.com", 80),
    ("https://example.com", "https", "example.com", 443),
    ("http://example.com:8080", "http", "example.com", 8080),
    ("https://example.com:80", "https", "example.com", 80),
    ("HTTP://Example.COM:8080", "http", "example.com", 8080),
    ("http://localhost:1", "http", "localhost", 1),
    ("http://h:65535", "http", "h", 65535),
    ("http://h:0080", "http", "h", 80),
    ("http://a-b.c-d.example.", "http", "a-b.c-d.example.", 80),
    ("http://xn--bcher-kva.example", "http", "xn--bcher-kva.example", 80),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000),
    ("http://[::1]:9000", "http", "::1", 9000),
    ("http://[2001:DB8:0:0::1]", "http", "2001:db8::1", 80),
    ("https://[::ffff:10.0.0.1]:8443", "https", "::ffff:a00:1", 8443),
])
def test_parse_upstream_url(url: str, scheme: str, host: str, port: int) -> None:
    assert parse_upstream_url(url) == UpstreamAddress(scheme, host, port)


@pytest.mark.parametrize(("url", "message"), [
    ("", "required"),
    ("http://h :80", "whitespace"),
    ("http://h:80\n", "whitespace"),
    ("http://h\x00", "control"),
    ("http://h\x7f", "control"),
    ("\thttp://h", "whitespace"),
    ("ftp://h", "scheme"),
    ("ws://h", "scheme"),
    ("h:80", "scheme"),
    ("//h:80", "scheme"),
    ("http://user@h", "credentials"),
    ("http://user:pw@h", "credentials"),
    ("http://:pw@h", "credentials"),
    ("http://h/path", "path"),
    ("http://h//", "path"),
    ("http://h?q=1", "query"),
    ("http://h#frag", "fragment"),
    ("http://h:0", "out of range"),
    ("http://h:70000", "out of range"),
    ("http://h:65536", "out of range"),
    ("http://h:-1", "not a number"),
    ("http://h:port", "not a number"),
    ("http://h:+80", "not a number"),
    ("http://", "host is required"),
    ("http://:80", "host is required"),
    ("http://-bad.example", "invalid host"),
    ("http://bad-.example", "invalid host"),
    ("http://under_score.example", "invalid host"),
    ("http://a..b", "invalid host"),
    ("http://" + "a" * 64 + ".example", "invalid host"),
    ("http://" + ".".join(["a" * 63] * 4) + ".x", "invalid host"),
    ("http://h\u00e9.example", "invalid host"),
    ("http://[::1", "IPv6"),
])
def test_parse_upstream_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_upstream_url(url)


def test_longest_valid_host_name() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert parse_upstream_url(f"http://{host}").host == host


@pytest.mark.parametrize(("url", "authority", "normalised", "host_port"), [
    ("http://h", "h", "http://h", "h:80"),
    ("http://h:80", "h", "http://h", "h:80"),
    ("http://h:443", "h:443", "http://h:443", "h:443"),
    ("https://h", "h", "https://h", "h:443"),
    ("https://h:8443/", "h:8443", "https://h:8443", "h:8443"),
    ("http://[::1]", "[::1]", "http://[::1]", "[::1]:80"),
    ("http://[::1]:81", "[::1]:81", "http://[::1]:81", "[::1]:81"),
    ("HTTPS://WWW.Example.com:443", "www.example.com", "https://www.example.com",
     "www.example.com:443"),
])
def test_authority_url_and_host_port(url: str, authority: str, normalised: str,
                                     host_port: str) -> None:
    address = parse_upstream_url(url)
    assert (address.authority, address.url, address.host_port) == (
        authority, normalised, host_port)
    assert parse_upstream_url(address.url) == address  # the normal form round-trips


def test_equal_urls_give_equal_addresses() -> None:
    same = {parse_upstream_url(u) for u in ("http://h", "http://H:80", "HTTP://h:80/",
                                            "http://h:080")}
    assert len(same) == 1


# ------------------------------------------------------------ parse_host_port


@pytest.mark.parametrize(("value", "host", "port", "text"), [
    ("127.0.0.1:8000", "127.0.0.1", 8000, "127.0.0.1:8000"),
    ("0.0.0.0:80", "0.0.0.0", 80, "0.0.0.0:80"),
    ("localhost:9901", "localhost", 9901, "localhost:9901"),
    ("LocalHost:1", "localhost", 1, "localhost:1"),
    ("[::1]:9000", "::1", 9000, "[::1]:9000"),
    ("[::]:65535", "::", 65535, "[::]:65535"),
    ("[2001:db8::0:1]:80", "2001:db8::1", 80, "[2001:db8::1]:80"),
])
def test_parse_host_port(value: str, host: str, port: int, text: str) -> None:
    parsed = parse_host_port(value)
    assert parsed == HostPort(host, port)
    assert str(parsed) == text


def test_port_zero_only_where_allowed() -> None:
    assert parse_host_port("127.0.0.1:0", allow_zero_port=True) == HostPort("127.0.0.1", 0)
    assert parse_host_port("[::1]:0", allow_zero_port=True) == HostPort("::1", 0)
    with pytest.raises(ValueError, match="out of range"):
        parse_host_port("127.0.0.1:0")


@pytest.mark.parametrize("value", [
    "", "localhost", "localhost:", ":8000", "localhost:http", "localhost:-1",
    "localhost: 80", "localhost:80 ", "localhost:65536", "localhost:99999",
    "[::1]", "[::1]8000", "[::1]:", "::1", "bad_host:80", "-h:80", "h/x:80", "[not-an-ip:80",
])
def test_parse_host_port_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(value)
    with pytest.raises(ValueError):
        parse_host_port(value, allow_zero_port=True)


@pytest.mark.parametrize("value", ["localhost:\u0668\u0660", "[::1]:\uff18\uff10",
                                   "[localhost]:80", "[10.0.0.1]:80"])
def test_parse_host_port_rejects_loose_forms(value: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(value)


def test_host_port_str_brackets_only_ipv6() -> None:
    assert str(HostPort("example.com", 443)) == "example.com:443"
    assert str(HostPort("fe80::1", 1)) == "[fe80::1]:1"

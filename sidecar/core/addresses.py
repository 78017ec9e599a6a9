"""Parsing of listen addresses ("host:port") and endpoint URLs ("http://host:port").

Pure functions shared by the config model and the registry, so that a URL given in
a file and one given to `RegisterEndpoint` are judged by the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HostPort", "UpstreamAddress", "parse_host_port", "parse_upstream_url"]

# RFC 1123 host names (with an optional trailing dot) or IPv4 literals.
_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """Where an endpoint lives: scheme, host and port, normalised."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """The value for a Host header that names this endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if _DEFAULT_PORTS[self.scheme] == self.port:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}"

    @property
    def host_port(self) -> str:
        return str(HostPort(self.host, self.port))


def _check_host(host: str) -> str:
    if not host:
        raise ValueError("a host is required")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"invalid host {host!r}")
    return host.lower()


def _check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def parse_host_port(value: str, *, allow_zero_port: bool = False) -> HostPort:
    """Parse "host:port" or "[v6]:port"; port 0 (pick one) only where allowed."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if ":" not in host:
            raise ValueError(f"brackets are for IPv6 addresses only, got {value!r}")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not (allow_zero_port and port == 0):
        _check_port(port)
    return HostPort(_check_host(host), port)


def parse_upstream_url(url: str) -> UpstreamAddress:
    """Parse an endpoint's base URL; raise ValueError with a reason a person can act on."""
    if not url:
        raise ValueError("a URL is required")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError("the URL contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {parts.scheme!r}: use http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not allowed")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the URL must not have a path, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port is out of range 1-65535 or not a number") from None
    host = parts.hostname or ""
    return UpstreamAddress(scheme, _check_host(host),
                           _check_port(port if port is not None else _DEFAULT_PORTS[scheme]))

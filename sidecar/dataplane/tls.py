"""TLS client contexts for `https://` endpoints, built once per distinct setting.

Building a context reads CA files and costs milliseconds, so contexts are cached
by their (immutable) `UpstreamTLS` setting and shared by every pool that uses it.
"""

from __future__ import annotations

import functools
import ssl

from sidecar.config.model import SidecarConfig, UpstreamTLS
from sidecar.errors import ConfigIssue

__all__ = ["client_context", "tls_issues"]


@functools.lru_cache(maxsize=64)
def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """A client context for `tls`; raises OSError or ssl.SSLError for a bad CA file."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_issues(config: SidecarConfig) -> list[ConfigIssue]:
    """Problems building the TLS contexts a config asks for (unreadable or invalid CA
    files), located like validation errors. Run when a config is loaded to serve, not
    by `sidecar config validate`: CA files belong to the machine, not to the config."""
    issues = []
    settings = [("cluster_defaults", config.cluster_defaults)]
    settings += [(f"clusters[{i}]", c) for i, c in enumerate(config.clusters)]
    for path, cluster in settings:
        if cluster.tls.ca_file is None:
            continue
        try:
            client_context(cluster.tls)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            issues.append(ConfigIssue(f"{path}.tls.ca_file",
                                      f"cannot load {cluster.tls.ca_file!r}: {reason}"))
    return issues

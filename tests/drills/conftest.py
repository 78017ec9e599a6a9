"""Failure drills reuse the integration fixtures (real upstreams, a real sidecar)."""

from tests.integration.conftest import client, start_sidecar, start_upstream  # noqa: F401

"""Every public module says what it exports, and exports only what exists."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "sidecar.addresses", "sidecar.app", "sidecar.balancer", "sidecar.cli", "sidecar.clock",
    "sidecar.config", "sidecar.configcli", "sidecar.deadlines", "sidecar.demo",
    "sidecar.errors", "sidecar.headers", "sidecar.listener", "sidecar.loader", "sidecar.logs",
    "sidecar.metrics", "sidecar.proxy", "sidecar.registry", "sidecar.routing",
    "sidecar.upstream", "sidecar.upstream_protocol", "admin.convert", "admin.ctl",
    "admin.server", "admin.service", "admin.watch",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"

"""Every module says what it exports, and exports only what exists.

Modules are discovered, not listed by hand, so a new module cannot be forgotten.
Generated code (sidecar/admin/v1, admin/client, and the runtime mypyc builds for the
compiled modules, `sidecar._native__mypyc`) is exempt.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import admin
import sidecar

GENERATED = ("sidecar.admin", "admin.client", "sidecar._native__mypyc")
NO_EXPORTS = ("__main__",)  # entry points


def _walk(path: list[str], prefix: str) -> list[str]:
    """Like pkgutil.walk_packages, without importing anything (nor generated code)."""
    names = []
    for info in pkgutil.iter_modules(path, prefix):
        if info.name.startswith(GENERATED):
            continue
        if info.ispkg:
            names.extend(_walk([f"{path[0]}/{info.name.rsplit('.', 1)[-1]}"], info.name + "."))
        elif info.name.rsplit(".", 1)[-1] not in NO_EXPORTS:
            names.append(info.name)
    return names


def _modules() -> list[str]:
    return sorted(name for package in (sidecar, admin)
                  for name in _walk(list(package.__path__), package.__name__ + "."))


MODULES = _modules()


def test_discovery_finds_every_package() -> None:
    packages = {name.rsplit(".", 1)[0] for name in MODULES}
    assert {"sidecar", "sidecar.core", "sidecar.dataplane", "sidecar.config",
            "sidecar.observe", "admin"} <= packages


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_module_has_a_docstring_saying_what_it_owns(name: str) -> None:
    importlib.import_module(name)
    # From the source: a compiled module (sidecar.compiled) has no __doc__.
    source = Path(__file__).resolve().parent.parent.joinpath(*name.split(".")).with_suffix(".py")
    docstring = ast.get_docstring(ast.parse(source.read_text()))
    assert (docstring or "").strip(), f"{name} has no docstring"

"""The tree shows the architecture, and the boundaries it draws hold.

* `sidecar/core/` is pure: it imports no event loop, network or server library, and
  nothing of the sidecar outside `core`, the config model and the error types.
* Only `admin/` and the composition root import the generated admin API.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "sidecar" / "core").glob("*.py"))
# I/O and server libraries: the pure core decides, the edges do.
IMPURE = ("asyncio", "aiohttp", "grpc", "httptools", "socket", "ssl", "selectors",
          "prometheus_client", "watchfiles", "uvloop", "time", "threading", "subprocess")
# The one module that reads the system clocks, so that nothing else needs to.
EXEMPT = {"clock.py": {"time"}}
# What the core may import from the sidecar itself.
CORE_MAY_IMPORT = ("sidecar.core", "sidecar.config.model", "sidecar.config.types",
                   "sidecar.config.resilience", "sidecar.errors")


def source_file(module: ModuleType) -> Path:
    """The .py file of `module`, also when it was loaded from its compiled extension
    (`sidecar.compiled`)."""
    return ROOT.joinpath(*module.__name__.split(".")).with_suffix(".py")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against sidecar.core
                base = "sidecar.core" if node.level == 1 else "sidecar"
                names.append(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.append(node.module)
    return names


def test_core_has_modules() -> None:
    assert {p.stem for p in CORE} >= {"clock", "addresses", "routing", "headers", "balancer"}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    offenders = []
    for name in _imports(path):
        top = name.split(".")[0]
        if top in IMPURE and name not in EXEMPT.get(path.name, set()):
            offenders.append(name)
        elif top in ("sidecar", "admin") and not name.startswith(CORE_MAY_IMPORT):
            offenders.append(name)
    assert offenders == [], f"{path.name} imports {offenders}: sidecar.core must stay pure"


def test_only_admin_and_the_assembly_import_generated_code() -> None:
    offenders = []
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        if "admin/v1" in path.as_posix():
            continue
        if any(n.startswith(("sidecar.admin", "admin.client")) for n in _imports(path)):
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []

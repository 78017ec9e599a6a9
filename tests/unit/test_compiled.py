"""The compiled data path (`sidecar.compiled`): which modules, when an extension is
stale, how a process reports what it runs, and the switch back to the sources."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import compiled
from sidecar.compiled import GROUP, MODULES, built, extension_path, stale, state
from sidecar.observe.metrics import Metrics
from tests.test_layout import ROOT

INTERPRETED = bool(os.environ.get("SIDECAR_INTERPRETED"))


@pytest.mark.parametrize("module", MODULES)
def test_each_listed_module_is_a_source_mypyc_compiles(module: str) -> None:
    source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(source.read_text())
    # mypyc does not compile async generators: a module with one cannot be listed.
    async_generators = [
        node.name for node in ast.walk(tree) if isinstance(node, ast.AsyncFunctionDef)
        and any(isinstance(inner, (ast.Yield, ast.YieldFrom)) for inner in ast.walk(node))]
    assert async_generators == []


def _checkout(tmp_path: Path, modules: tuple[str, ...]) -> Path:
    for module in modules:
        source = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        os.utime(source, (1000, 1000))
    return tmp_path


def _build(root: Path, module: str, mtime: float) -> None:
    path = extension_path(module, root)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))


def test_an_extension_is_stale_when_missing_or_older_than_any_source(tmp_path: Path) -> None:
    modules = ("sidecar.core.a", "sidecar.dataplane.b")
    root = _checkout(tmp_path, (*modules, "sidecar.other"))
    assert stale(root, modules) == [*modules, GROUP + "__mypyc"]
    assert built(root, modules) == []
    for module in (*modules, GROUP + "__mypyc"):
        _build(root, module, 2000)
    assert stale(root, modules) == []
    assert built(root, modules) == list(modules)
    # A source that is not compiled changes: every extension was built against it.
    os.utime(root / "sidecar" / "other.py", (3000, 3000))
    assert stale(root, modules) == [*modules, GROUP + "__mypyc"]


def test_extension_path_is_next_to_the_source() -> None:
    path = extension_path("sidecar.core.headers")
    assert path.parent == ROOT / "sidecar" / "core"
    assert path.name.startswith("headers.") and path.suffix == ".so"


def test_state_says_how_the_data_path_loaded() -> None:
    expected = ("interpreted" if INTERPRETED or not built()
                else "compiled" if len(built()) == len(MODULES) else "mixed")
    assert state() == expected
    labels = next(metric for metric in Metrics().collect()
                  if metric.name == "sidecar_build_info").samples[0].labels
    assert labels == {"version": compiled.version(), "data_path": expected}


def test_sidecar_interpreted_loads_the_sources() -> None:
    code = ("import sidecar.dataplane.proxy as proxy, sidecar.compiled as c;"
            "print(proxy.__file__, c.state())")
    env = {**os.environ, "SIDECAR_INTERPRETED": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == [str(ROOT / "sidecar" / "dataplane" / "proxy.py"), "interpreted"]


def test_version_flag_names_the_data_path() -> None:
    out = subprocess.run([sys.executable, "-m", "sidecar", "--version"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out == f"sidecar {compiled.version()} (data path: {state()})\n"

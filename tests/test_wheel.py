"""The wheel setup.py builds: with SIDECAR_NATIVE=1 it carries the compiled data path
and loads it; without, it is pure Python. Built from the files the Dockerfile's build
stage copies, with the command that stage runs, so the image's build is tested here
short of docker itself (which this suite cannot assume)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from sidecar.compiled import GROUP, MODULES
from tests.test_docker_image import DOCKERFILE
from tests.test_layout import ROOT

# One compile of the data path takes about a minute and tests packaging, not
# behaviour: the compiled pass of `make test` runs it, the interpreted pass does not.
pytestmark = pytest.mark.skipif(bool(os.environ.get("SIDECAR_INTERPRETED")),
                                reason="the wheel is built once, in the compiled pass")

_BUILD_START = DOCKERFILE.index(" AS build\n")
_BUILD_STAGE = DOCKERFILE[_BUILD_START:DOCKERFILE.index("\nFROM ", _BUILD_START)]


def _stage_sources(tmp_path: Path) -> Path:
    """The checkout as the build stage sees it: what its COPY lines name, less what
    .dockerignore leaves out (bytecode, extensions built in place)."""
    src = tmp_path / "src"
    src.mkdir()
    for line in _BUILD_STAGE.splitlines():
        if line.startswith("COPY "):
            for name in line.split()[1:-1]:
                source = ROOT / name
                if source.is_dir():
                    shutil.copytree(source, src / name, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.so"))
                else:
                    shutil.copy(source, src / name)
    return src


def _wheel(src: Path, out: Path, native: bool) -> zipfile.ZipFile:
    env = {key: value for key, value in os.environ.items() if key != "SIDECAR_NATIVE"}
    if native:
        env["SIDECAR_NATIVE"] = "1"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                           "--no-build-isolation", "--no-deps", "-w", str(out), "."],
                          cwd=src, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = out.glob("sidecar_gateway-*.whl")
    return zipfile.ZipFile(wheel)


def _version_line(unpacked: Path) -> str:
    """`sidecar --version` of the unpacked wheel, run from elsewhere so that the
    checkout's own modules (compiled in place) cannot be the ones loaded."""
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    env.pop("SIDECAR_INTERPRETED", None)
    code = ("import sidecar, sys; from sidecar.cli import main\n"
            f"assert sidecar.__file__.startswith({str(unpacked)!r}), sidecar.__file__\n"
            "sys.exit(main(['--version']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=unpacked.parent, env=env,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_build_stage_installs_what_a_build_without_isolation_needs() -> None:
    """The mypy the tests use, and pyproject's build requirements: without isolation
    pip installs neither (python:3.11-slim has setuptools 65 and no `wheel`)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [pinned] = [r for r in pyproject["project"]["optional-dependencies"]["test"]
                if r.startswith("mypy==")]
    installs = [line for line in _BUILD_STAGE.replace("\\\n", " ").splitlines()
                if line.startswith("RUN ") and "pip install" in line]
    assert installs, "the build stage installs nothing"
    for requirement in (pinned, *pyproject["build-system"]["requires"]):
        assert requirement in installs[0], requirement
    assert "SIDECAR_NATIVE=1 pip wheel" in _BUILD_STAGE


def test_a_native_wheel_carries_and_loads_the_compiled_data_path(tmp_path: Path) -> None:
    src = _stage_sources(tmp_path)
    wheel = _wheel(src, tmp_path / "dist", native=True)
    # Tagged for this interpreter and platform, not py3-none-any.
    assert "-cp311-cp311-" in Path(str(wheel.filename)).name
    names = set(wheel.namelist())
    for module in (*MODULES, GROUP + "__mypyc"):
        path = "/".join(module.split("."))
        assert any(name.startswith(path + ".cpython-") and name.endswith(".so")
                   for name in names), module
        # The sources ship too: SIDECAR_INTERPRETED=1 runs them, tracebacks show them.
        if module in MODULES:
            assert path + ".py" in names
    wheel.extractall(tmp_path / "unpacked")
    assert _version_line(tmp_path / "unpacked").endswith("(data path: compiled)")


def test_a_wheel_without_sidecar_native_is_pure_python(tmp_path: Path) -> None:
    src = _stage_sources(tmp_path)
    wheel = _wheel(src, tmp_path / "dist", native=False)
    assert Path(str(wheel.filename)).name.endswith("-py3-none-any.whl")
    assert not [name for name in wheel.namelist() if name.endswith(".so")]
    wheel.extractall(tmp_path / "unpacked")
    assert _version_line(tmp_path / "unpacked").endswith("(data path: interpreted)")

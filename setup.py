"""Build hook for a wheel with the compiled data path. Every piece of metadata is in
pyproject.toml; this file only adds extension modules, and only when asked:

    SIDECAR_NATIVE=1 pip wheel --no-build-isolation --no-deps -w dist .

compiles the modules `sidecar.compiled.MODULES` lists with mypyc into the wheel (then
tagged for this platform and Python), the same way `make native` compiles them in
place. mypy type-checks the package while compiling it, so the build environment
needs what `mypy sidecar admin` needs: mypy at the version pyproject's `test` extra
pins, the package's dependencies, a C compiler and the Python headers. Hence no build
isolation. The Dockerfile does this in its build stage.

Without SIDECAR_NATIVE (`pip install .`, `pip install -e .`) the package is pure
Python and its data path runs interpreted: `sidecar --version` says which.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _ext_modules() -> list[object]:
    if os.environ.get("SIDECAR_NATIVE") != "1":
        return []
    sys.path.insert(0, str(ROOT))
    from sidecar.compiled import extensions

    os.chdir(ROOT)  # mypy reads its options from pyproject.toml here
    return extensions(ROOT / "build" / "native" / "c")


setup(ext_modules=_ext_modules())

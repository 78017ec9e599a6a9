"""Compile the data path's modules with mypyc, in place (`make native`).

The sidecar is plain, type-checked Python. mypyc (the compiler mypy and black ship
with) turns the modules a request runs through into C extensions from that same
source: same behaviour, no interpreter loop, attribute access through C structs.
Measured with `bench/icount.py` (docs/design.md, "Compiled data path"): about a
third fewer instructions per request.

The extensions land next to their sources (`sidecar/core/headers.cpython-311-...so`
beside `headers.py`), and Python imports an extension before a source file of the
same name; the shared runtime is `sidecar/_native__mypyc...so`. None of them is
committed (.gitignore). Without them (`make clean-native`, or no C compiler) the
same modules run interpreted: `sidecar.compiled.state()` says which is in use,
and `sidecar --version` prints it.

Usage:
    python scripts/build_native.py           # build if a source changed
    python scripts/build_native.py --clean   # remove the extensions
    python scripts/build_native.py --check   # exit 1 if one is missing or stale
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.compiled import GROUP, MODULES, extension_path, extensions, stale  # noqa: E402

BUILD_DIR = ROOT / "build" / "native"


def clean() -> None:
    for module in (*MODULES, GROUP + "__mypyc"):
        path = extension_path(module)
        if path.exists():
            path.unlink()
    shutil.rmtree(BUILD_DIR, ignore_errors=True)


def build() -> None:
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        raise SystemExit(f"build_native: {include} is missing (install the Python "
                         "development headers, e.g. python3.11-dev)")
    if shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None:
        raise SystemExit("build_native: no C compiler (apt-get install gcc)")
    from setuptools import setup  # type: ignore[import-untyped]

    os.chdir(ROOT)
    modules = extensions(BUILD_DIR / "c")
    with warnings.catch_warnings():
        # setuptools reads pyproject.toml here too, and warns about packaging metadata
        # that has nothing to do with these extensions.
        warnings.simplefilter("ignore")
        setup(name="sidecar-native", ext_modules=modules, py_modules=[], packages=[],
              script_args=["--quiet", "build_ext", "--inplace",
                           "--build-temp", str(BUILD_DIR / "obj")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--clean", action="store_true", help="remove the extensions")
    action.add_argument("--check", action="store_true",
                        help="exit 1 if an extension is missing or older than its source")
    args = parser.parse_args()
    if args.clean:
        clean()
        return 0
    outdated = stale()
    if args.check:
        for module in outdated:
            print(f"build_native: {module} is not built or older than its source",
                  file=sys.stderr)
        return 1 if outdated else 0
    if not outdated:
        return 0
    clean()  # never leave a mix of old and new extensions (they share one runtime)
    build()
    left = stale()
    if left:
        raise SystemExit(f"build_native: not built: {', '.join(left)}")
    print(f"build_native: compiled {len(MODULES)} modules with mypyc")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What build is running: the package's version, and whether the data path's modules
run compiled (mypyc) or interpreted.

`MODULES` is the one list of modules that `scripts/build_native.py` compiles: the
ones every request runs through (pure decisions in `core`, the listener, the request,
the proxy and the upstream pool, the metrics they update). They are ordinary Python;
compiled or not, they behave the same, and the test suite runs against either. They
have no async generators (mypyc does not compile those): an async iterator is a
class with `__anext__` there.

`stale()` looks at files only; `state()` imports the modules to see how they load.
`SIDECAR_INTERPRETED=1` in the environment makes `sidecar` load the sources even
where extensions are built (`use_sources`): to profile with Python frames, to rule
out the compiler, and for the test suite's interpreted run.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import (
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    ModuleSpec,
    SourceFileLoader,
)
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["GROUP", "MODULES", "built", "extension_path", "extensions", "stale", "state",
           "use_sources", "version"]

_ROOT = Path(__file__).resolve().parent.parent

#: The modules compiled by `make native`.
MODULES: tuple[str, ...] = (
    "sidecar.core.balancer",
    "sidecar.core.breaker",
    "sidecar.core.clock",
    "sidecar.core.headers",
    "sidecar.core.hosts",
    "sidecar.core.limits",
    "sidecar.core.ratelimit",
    "sidecar.core.retry",
    "sidecar.core.routing",
    "sidecar.dataplane.body",
    "sidecar.dataplane.connection",
    "sidecar.dataplane.deadlines",
    "sidecar.dataplane.listener",
    "sidecar.dataplane.pool",
    "sidecar.dataplane.proxy",
    "sidecar.dataplane.request",
    "sidecar.dataplane.response",
    "sidecar.dataplane.route_limits",
    "sidecar.observe.metrics",
    "sidecar.observe.stats",
    "sidecar.observe.window",
)
#: The shared runtime of the compiled modules: `sidecar/_native__mypyc*.so`.
GROUP = "sidecar._native"


def extensions(build_dir: Path) -> list[Any]:
    """The setuptools extensions that compile `MODULES` with mypyc, C sources under
    `build_dir`: one list for `scripts/build_native.py` (in place) and setup.py (into a
    wheel). Call it from the checkout's root, where mypy reads its options."""
    from mypyc.build import mypycify

    sources = [str(Path(*module.split(".")).with_suffix(".py")) for module in MODULES]
    return mypycify(sources, opt_level="3", group_name=GROUP, target_dir=str(build_dir))


def version() -> str:
    """The installed package's version ("unknown" when run from a bare checkout)."""
    from importlib import metadata

    try:
        return metadata.version("sidecar-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def extension_path(module: str, root: Path = _ROOT) -> Path:
    """Where the compiled extension of `module` is (or would be) in the checkout `root`."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or EXTENSION_SUFFIXES[0]
    return root.joinpath(*module.split(".")).with_name(module.rsplit(".", 1)[-1] + suffix)


def stale(root: Path = _ROOT, modules: Sequence[str] = MODULES) -> list[str]:
    """Extensions missing or older than any source of the package (the runtime's
    included): they share one runtime, and each was compiled against the types of the
    modules it imports, compiled or not, so a change to any makes every one stale."""
    newest = max(path.stat().st_mtime for path in (root / "sidecar").rglob("*.py"))
    return [module for module in (*modules, GROUP + "__mypyc")
            if not extension_path(module, root).exists()
            or extension_path(module, root).stat().st_mtime < newest]


def built(root: Path = _ROOT, modules: Sequence[str] = MODULES) -> list[str]:
    """Modules whose extension exists in `root`, fresh or not."""
    return [module for module in modules if extension_path(module, root).exists()]


def state() -> str:
    """"compiled", "interpreted" or "mixed": how the listed modules load (for
    `--version` and the `sidecar_build_info` metric)."""
    suffixes = tuple(EXTENSION_SUFFIXES)
    compiled = sum(1 for name in MODULES
                   if (importlib.import_module(name).__file__ or "").endswith(suffixes))
    if compiled == len(MODULES):
        return "compiled"
    return "interpreted" if compiled == 0 else "mixed"


class _SourcesFirst(MetaPathFinder):
    """Finds `sidecar.*` modules among source files only, ahead of the usual finders."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if path is None or not fullname.startswith("sidecar."):
            return None
        for entry in path:
            spec = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def use_sources() -> None:
    """Load the sidecar's modules from their sources from now on, compiled or not
    (before any of `MODULES` is imported: a module already loaded stays as it is)."""
    if not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())

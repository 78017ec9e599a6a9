"""Generated admin API code is fresh, the protos lint, and the data plane never loads it."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Modules of the data plane: none of them may import generated code or grpc.
DATA_PLANE = sorted(
    info.name for package in ("core", "dataplane", "config", "observe")
    for info in pkgutil.iter_modules([str(ROOT / "sidecar" / package)],
                                     f"sidecar.{package}.")
) + ["sidecar.registry", "sidecar.events"]
FORBIDDEN = ("sidecar.admin", "admin", "grpc", "grpc_health", "grpc_reflection",
             "betterproto2")


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, "scripts/generate_protos.py", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _buf() -> str | None:
    venv_buf = Path(sys.executable).parent / "buf"
    return str(venv_buf) if venv_buf.exists() else shutil.which("buf")


def test_buf_lint() -> None:
    buf = _buf()
    if buf is None:
        pytest.skip("buf is not installed (pip install buf-bin, or make tools)")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


_PROBE = """
import importlib, importlib.util, json, sys
loaded = []
for name in sys.argv[1:]:
    if importlib.util.find_spec(name) is None:
        continue
    importlib.import_module(name)
    loaded.append(name)
print(json.dumps({"loaded": loaded, "modules": sorted(sys.modules)}))
"""


def test_data_plane_does_not_import_generated_code_or_grpc() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE, *DATA_PLANE], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"sidecar.config.model", "sidecar.registry"} <= set(report["loaded"])
    offenders = [m for m in report["modules"]
                 if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == [], f"the data plane loaded {offenders}"

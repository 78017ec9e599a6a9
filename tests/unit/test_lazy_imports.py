"""Start-up stays lean: what only some configurations need is imported when they need it.

PyJWT with cryptography (about 11 MiB of RSS) only for `admin.auth.jwt`; the Jsonnet
binding only to render a .jsonnet file; watchfiles only when watching a config file.
Each check runs in a fresh interpreter, since this test process has them all loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAZY = ("jwt", "cryptography", "_jsonnet", "watchfiles")


def _loaded_after(code: str) -> set[str]:
    """The top-level packages of LAZY that `code` leaves in sys.modules."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}}
                                & set({list(LAZY)!r}))))
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_importing_the_sidecar_loads_none_of_the_optional_modules() -> None:
    assert _loaded_after("""
        import admin.auth, admin.ops, admin.server, sidecar.app, sidecar.cli
        import sidecar.config.loader, sidecar.reload
        """) == set()


def test_a_config_without_jwt_loads_no_jwt_and_a_json_config_no_jsonnet(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps({
        "clusters": [{"name": "app", "endpoints": [{"url": "http://127.0.0.1:1"}]}],
        "routes": [{"name": "all", "prefix": "/", "cluster": "app"}]}))
    assert _loaded_after(f"""
        from admin.auth import Authenticator
        from sidecar.config.loader import load_config
        from sidecar.reload import ConfigSource
        config = ConfigSource(path={str(config)!r}).load()
        Authenticator(config.admin.auth)
        Authenticator(None)
        """) == set()


def test_a_jsonnet_config_loads_the_binding(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.jsonnet"
    config.write_text('{clusters: [{name: "app", endpoints: [{url: "http://127.0.0.1:1"}]}],'
                      ' routes: [{name: "all", prefix: "/", cluster: "app"}]}')
    assert _loaded_after(f"""
        from sidecar.reload import ConfigSource
        ConfigSource(path={str(config)!r}).load()
        """) == {"_jsonnet"}

"""`sidecar config render|validate|schema` on the shipped configs, the goldens, and the
stock `jsonnet` CLI (Debian's 0.18): what CI renders with it, the sidecar renders the
same, byte for byte."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EXAMPLES = CONFIGS / "examples"
ENVS = ("dev", "staging", "prod")

# (example, ext vars, golden). Regenerate a golden with the stock CLI, from the repo root:
#   jsonnet -J configs [--ext-str env=E] configs/examples/X.jsonnet \
#     > configs/examples/X[.E].golden.json
GOLDENS = [
    ("local-app.jsonnet", {"env": "dev"}, "local-app.dev.golden.json"),
    ("local-app.jsonnet", {"env": "prod"}, "local-app.prod.golden.json"),
    ("gateway.jsonnet", {}, "gateway.golden.json"),
]
JSONNET_FILES = sorted([*CONFIGS.rglob("*.jsonnet"), *CONFIGS.rglob("*.libsonnet")])
CONFIG_FILES = sorted(CONFIGS.rglob("*.jsonnet"))

STOCK_JSONNET = shutil.which("jsonnet")
needs_stock_jsonnet = pytest.mark.skipif(
    STOCK_JSONNET is None,
    reason="the stock jsonnet CLI is not installed (Debian package 'jsonnet')")


def ext_args(ext_vars: dict[str, str]) -> list[str]:
    return [arg for key, value in ext_vars.items() for arg in ("--ext-str", f"{key}={value}")]


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsysbinary.readouterr()
    return status, captured.out.decode(), captured.err.decode()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- goldens and the stock CLI


def test_every_example_has_a_golden() -> None:
    assert {source for source, _, _ in GOLDENS} == {p.name for p in EXAMPLES.glob("*.jsonnet")}
    assert {golden for _, _, golden in GOLDENS} == {
        p.name for p in EXAMPLES.glob("*.golden.json")}


@pytest.mark.parametrize(("source", "ext_vars", "golden"), GOLDENS)
def test_render_matches_golden(capsysbinary: pytest.CaptureFixture[bytes], source: str,
                               ext_vars: dict[str, str], golden: str) -> None:
    status, out, err = run(capsysbinary, "config", "render", str(EXAMPLES / source),
                           *ext_args(ext_vars))
    assert (status, err) == (0, "")
    assert out == (EXAMPLES / golden).read_text(), (
        f"{golden} is stale: regenerate it with the stock jsonnet CLI (see GOLDENS)")


@needs_stock_jsonnet
@pytest.mark.parametrize("path", JSONNET_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_render_is_byte_identical_to_stock_jsonnet(
        capsysbinary: pytest.CaptureFixture[bytes], path: Path) -> None:
    assert STOCK_JSONNET is not None
    stock = subprocess.run([STOCK_JSONNET, "-J", "configs", "--ext-str", "env=dev",
                            str(path.relative_to(REPO))],
                           cwd=REPO, capture_output=True, check=True).stdout
    # No -J: the sidecar finds its bundled library by itself.
    assert main(["config", "render", "--ext-str", "env=dev", str(path)]) == 0
    assert capsysbinary.readouterr().out == stock


@pytest.mark.parametrize("env", ENVS)
def test_every_config_validates(capsysbinary: pytest.CaptureFixture[bytes], env: str) -> None:
    files = [str(p) for p in CONFIG_FILES]
    status, out, err = run(capsysbinary, "config", "validate", "--ext-str", f"env={env}", *files)
    assert (status, err) == (0, "")
    assert [line.split(": ok (version ")[0] for line in out.splitlines()] == files


@pytest.mark.parametrize(("source", "ext_vars", "golden"), GOLDENS)
def test_golden_has_the_version_of_its_source(capsysbinary: pytest.CaptureFixture[bytes],
                                              source: str, ext_vars: dict[str, str],
                                              golden: str) -> None:
    """Pre-rendered JSON is a config too, and the same one: equal versions."""
    versions = []
    for argv in ([str(EXAMPLES / source), *ext_args(ext_vars)], [str(EXAMPLES / golden)]):
        status, out, err = run(capsysbinary, "config", "validate", *argv)
        assert (status, err) == (0, "")
        versions.append(out.rsplit("version ", 1)[1])
    assert versions[0] == versions[1]


# ---------------------------------------------------------------- render


def test_render_reports_errors_on_stderr(capsysbinary: pytest.CaptureFixture[bytes],
                                         tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonnet", "{\n  a: ,\n}\n")
    status, out, err = run(capsysbinary, "config", "render", path)
    assert (status, out) == (1, "")
    assert err == f'{path}: syntax error at {path}:2:6: unexpected: "," while parsing terminal\n'


def test_render_does_not_validate(capsysbinary: pytest.CaptureFixture[bytes],
                                  tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "{ routes: [{ cluster: 'nowhere' }] }")
    status, out, _ = run(capsysbinary, "config", "render", path)
    assert status == 0
    assert json.loads(out) == {"routes": [{"cluster": "nowhere"}]}


def test_render_passes_ext_vars_and_jpath(capsysbinary: pytest.CaptureFixture[bytes],
                                          tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    write(tmp_path / "lib" / "name.libsonnet", "'from-lib'")
    path = write(tmp_path / "c.jsonnet",
                 "[std.extVar('a'), std.extVar('b'), import 'name.libsonnet']")
    status, out, _ = run(capsysbinary, "config", "render", path, "--ext-str", "a=1",
                         "--ext-str", "b=x=y", "--ext-str", "a=2", "-J", str(tmp_path / "lib"))
    assert status == 0
    assert json.loads(out) == ["2", "x=y", "from-lib"]


def test_render_json_file_as_is(capsysbinary: pytest.CaptureFixture[bytes],
                                tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{"routes": []}')
    assert run(capsysbinary, "config", "render", path) == (0, '{"routes": []}\n', "")


# ---------------------------------------------------------------- validate


def test_validate_reports_each_problem_and_each_file(
        capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", json.dumps({
        "clusters": [{"name": "a", "bogus": 1}],
        "routes": [{"cluster": "b"}],
    }))
    missing = str(tmp_path / "missing.jsonnet")
    good = str(EXAMPLES / "gateway.jsonnet")
    status, out, err = run(capsysbinary, "config", "validate", bad, good, missing)
    assert status == 1
    assert re.fullmatch(rf"{re.escape(good)}: ok \(version [0-9a-f]{{12}}\)\n", out)
    assert err.splitlines() == [
        f"{bad}: clusters[0].bogus: Extra inputs are not permitted",
        f"{missing}: no such file",
    ]
    # Reference checks run once the fields are valid.
    bad = write(tmp_path / "bad.json", json.dumps({"routes": [{"cluster": "b"}]}))
    status, _, err = run(capsysbinary, "config", "validate", bad)
    assert (status, err) == (1, f"{bad}: routes[0].cluster: unknown cluster 'b'\n")


def test_validate_without_the_env_ext_var(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = str(EXAMPLES / "local-app.jsonnet")
    status, _, err = run(capsysbinary, "config", "validate", path)
    assert status == 1
    assert "undefined external variable: env (pass --ext-str env=VALUE)" in err
    status, _, err = run(capsysbinary, "config", "validate", "--ext-str", "env=qa", path)
    assert status == 1
    assert "env: expected one of dev, staging, prod, got 'qa'" in err


# ---------------------------------------------------------------- schema


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    from sidecar.config.commands import config_schema

    return config_schema()


def test_schema_command_prints_the_schema(capsysbinary: pytest.CaptureFixture[bytes],
                                          schema: dict[str, Any]) -> None:
    status, out, err = run(capsysbinary, "config", "schema")
    assert (status, err) == (0, "")
    assert json.loads(out) == schema
    assert out.startswith('{\n  "$schema": "https://json-schema.org/draft/2020-12/schema",\n')


def test_schema_describes_the_config(schema: dict[str, Any]) -> None:
    assert schema["$id"] and schema["title"] == "Sidecar configuration"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "listener", "admin", "logging", "cluster_defaults", "clusters", "routes"}
    defs = schema["$defs"]
    cluster = defs["ClusterConfig"]
    assert cluster["required"] == ["name"]
    assert {"name", "endpoints", "lb_policy", "timeout"} <= set(cluster["properties"])
    assert set(defs["RouteConfig"]["required"]) == {"cluster"}
    timeout = cluster["properties"]["timeout"]
    assert [alt.get("type") for alt in timeout["anyOf"]] == ["number", "string"]


def test_examples_fit_the_schema(schema: dict[str, Any]) -> None:
    """A few checks of the goldens against the schema (jsonschema is not a dependency):
    only known properties, and durations matching the schema's pattern."""
    defs = schema["$defs"]
    duration = re.compile(defs["ClusterConfig"]["properties"]["timeout"]["anyOf"][1]["pattern"])
    for _, _, golden in GOLDENS:
        data = json.loads((EXAMPLES / golden).read_text())
        assert set(data) <= set(schema["properties"])
        for cluster in data["clusters"]:
            assert set(cluster) <= set(defs["ClusterConfig"]["properties"])
            for field in ("connect_timeout", "timeout", "idle_timeout"):
                assert duration.match(cluster[field]), (golden, field)
            for endpoint in cluster["endpoints"]:
                assert set(endpoint) <= set(defs["EndpointConfig"]["properties"])
        for route in data["routes"]:
            assert set(route) <= set(defs["RouteConfig"]["properties"])
        assert set(data["listener"]) <= set(defs["ListenerConfig"]["properties"])


# ---------------------------------------------------------------- the console script


def test_console_script(tmp_path: Path) -> None:
    script = shutil.which("sidecar", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the `sidecar` console script is not installed (pip install -e .)")
    good = subprocess.run([script, "config", "validate", "configs/examples/gateway.jsonnet"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("configs/examples/gateway.jsonnet: ok (version ")
    bad = write(tmp_path / "bad.jsonnet", "local f(x) = f(x + 1); f(0)")
    failed = subprocess.run([script, "config", "validate", bad], capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith(f"{bad}: error at {bad}:1:")
    assert "max stack frames exceeded" in failed.stderr


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("sidecar 0.")

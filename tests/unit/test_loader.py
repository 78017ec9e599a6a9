"""sidecar.config.loader: rendering, confined imports, bounds, and located errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from sidecar.config.loader import (
    BUNDLED_LIBRARY_DIR,
    JSONNET_PATH_ENV,
    LoadedConfig,
    RenderLimits,
    load_config,
    render,
)
from sidecar.config.model import config_version
from sidecar.errors import ConfigError

GOOD = """\
local sidecar = import 'sidecar.libsonnet';
sidecar.config({
  clusters: [sidecar.cluster('app', ['http://127.0.0.1:8080'])],
  routes: [sidecar.route('/', 'app')],
})
"""


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def error_of(path: str, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.source == path
    return info.value


def message_of(path: str, **kwargs: object) -> str:
    error = error_of(path, **kwargs)
    assert len(error.issues) == 1, error.issues
    assert error.issues[0].path == ""
    return error.issues[0].message


# ---------------------------------------------------------------- rendering


def test_renders_like_the_stock_cli(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "{ b: [], a: { c: 1.5 } }")
    assert render(path) == '{\n   "a": {\n      "c": 1.5\n   },\n   "b": [ ]\n}\n'


def test_load_config_returns_config_version_and_text(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", GOOD)
    loaded = load_config(path)
    assert isinstance(loaded, LoadedConfig)
    assert loaded.source == path
    assert [c.name for c in loaded.config.clusters] == ["app"]
    assert loaded.version == config_version(loaded.config)
    assert json.loads(loaded.rendered)["routes"] == [
        {"prefix": "/", "cluster": "app", "retry_non_idempotent": False}]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.version = "x"  # type: ignore[misc]


def test_ext_vars(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "{ logging: { level: std.extVar('level') } }")
    assert load_config(path, {"level": "debug"}).config.logging.level == "debug"


def test_missing_ext_var_says_how_to_pass_it(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "\n{ logging: { level: std.extVar('level') } }")
    message = message_of(path)
    assert message.startswith(f"error at {path}:2:")
    assert "undefined external variable: level (pass --ext-str level=VALUE)" in message


def test_the_bundled_library_needs_no_jpath() -> None:
    assert (BUNDLED_LIBRARY_DIR / "sidecar.libsonnet").is_file()


# ---------------------------------------------------------------- Jsonnet errors


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "{\n  a: 1,\n  b: ,\n}\n")
    assert message_of(path) == (
        f'syntax error at {path}:3:6: unexpected: "," while parsing terminal')


def test_syntax_error_in_an_import_names_the_import(tmp_path: Path) -> None:
    lib = write(tmp_path / "lib.libsonnet", "{ a: }")
    path = write(tmp_path / "c.jsonnet", "import 'lib.libsonnet'")
    assert message_of(path).startswith(f"syntax error at {lib}:1:6: ")


def test_library_error_shows_where_and_from_where(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "local sidecar = import 'sidecar.libsonnet';\n"
                                         "sidecar.config({ clusters: [sidecar.cluster()] })\n")
    message = message_of(path)
    assert "cluster: name is required" in message
    assert message.startswith("error at ")
    assert "sidecar.libsonnet:" in message.split(": ")[0]
    assert f"(from {path}:2:" in message


def test_runtime_error_message_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "{ a: error 'first\\nsecond' }")
    assert message_of(path) == f"error at {path}:1:6-27: first second"


def test_deep_recursion_fails_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "local f(x) = f(x + 1); f(0)")
    message = message_of(path)
    assert message.startswith(f"error at {path}:1:")
    assert "max stack frames exceeded (limit 500" in message


def test_deep_nesting_fails_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet",
                 "local f(n) = if n == 0 then {} else { a: f(n - 1) }; f(100000)")
    assert "max stack frames exceeded" in message_of(path)


# ---------------------------------------------------------------- validation


def test_unknown_field_has_its_path(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet",
                 GOOD + " + { clusters: [super.clusters[0] + { bogus: 1 }] }")
    error = error_of(path)
    assert [(i.path, i.message) for i in error.issues] == [
        ("clusters[0].bogus", "Extra inputs are not permitted")]


def test_route_to_unknown_cluster(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet",
                 GOOD + " + { routes+: [{ prefix: '/x', cluster: 'nope' }] }")
    error = error_of(path)
    assert [(i.path, i.message) for i in error.issues] == [
        ("routes[1].cluster", "unknown cluster 'nope'")]
    assert str(error) == f"{path}: routes[1].cluster: unknown cluster 'nope'"


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "[1]")
    assert message_of(path) == "the configuration must be a JSON object"


# ---------------------------------------------------------------- confinement


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """tmp/cfg/ holds the config; tmp/secret.txt and tmp/outside.libsonnet are outside it."""
    (tmp_path / "cfg").mkdir()
    write(tmp_path / "secret.txt", "s3cret")
    write(tmp_path / "outside.libsonnet", "{ secret: 's3cret' }")
    return tmp_path


def assert_refused(path: str, *, jpath: tuple[str, ...] = ()) -> str:
    message = message_of(path, jpath=jpath)
    assert "outside the directories imports may read" in message
    assert "s3cret" not in message
    return message


def test_absolute_importstr_is_refused(layout: Path) -> None:
    secret = layout / "secret.txt"
    path = write(layout / "cfg" / "c.jsonnet", f"{{ a: importstr '{secret}' }}")
    message = assert_refused(path)
    assert message.startswith(f"error at {path}:1:")
    assert f'couldn\'t open import "{secret}"' in message


@pytest.mark.skipif(not os.path.isfile("/etc/hostname"), reason="no /etc/hostname here")
def test_etc_hostname_is_refused(layout: Path) -> None:
    assert_refused(write(layout / "cfg" / "c.jsonnet", "{ a: importstr '/etc/hostname' }"))


def test_dotdot_escape_is_refused(layout: Path) -> None:
    assert_refused(write(layout / "cfg" / "c.jsonnet", "import '../outside.libsonnet'"))


def test_symlink_out_is_refused(layout: Path) -> None:
    (layout / "cfg" / "link.libsonnet").symlink_to(layout / "outside.libsonnet")
    assert_refused(write(layout / "cfg" / "c.jsonnet", "import 'link.libsonnet'"))


def test_symlinked_directory_out_is_refused(layout: Path) -> None:
    (layout / "cfg" / "up").symlink_to(layout)
    assert_refused(write(layout / "cfg" / "c.jsonnet", "import 'up/outside.libsonnet'"))


def test_symlink_inside_and_subdirectories_are_allowed(layout: Path) -> None:
    write(layout / "cfg" / "lib" / "real.libsonnet", "{ routes: [] }")
    (layout / "cfg" / "link.libsonnet").symlink_to(layout / "cfg" / "lib" / "real.libsonnet")
    path = write(layout / "cfg" / "c.jsonnet",
                 "(import 'link.libsonnet') + (import 'lib/real.libsonnet')")
    assert load_config(path).config.routes == ()


def test_jpath_directory_is_allowed_and_searched(layout: Path) -> None:
    path = write(layout / "cfg" / "c.jsonnet", "{ a: (import 'outside.libsonnet').secret }")
    assert json.loads(render(path, jpath=[str(layout)])) == {"a": "s3cret"}


def test_rightmost_jpath_wins_like_the_cli(tmp_path: Path) -> None:
    write(tmp_path / "one" / "v.libsonnet", "1")
    write(tmp_path / "two" / "v.libsonnet", "2")
    path = write(tmp_path / "cfg" / "c.jsonnet", "import 'v.libsonnet'")
    jpath = [str(tmp_path / "one"), str(tmp_path / "two")]
    assert render(path, jpath=jpath) == "2\n"
    assert render(path, jpath=jpath[::-1]) == "1\n"


def test_environment_path_is_allowed(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(layout / "cfg" / "c.jsonnet", "(import 'outside.libsonnet').secret")
    monkeypatch.setenv(JSONNET_PATH_ENV, os.pathsep.join(["/nonexistent", str(layout)]))
    assert render(path) == '"s3cret"\n'


def test_missing_import_lists_where_it_looked(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "import 'nope.libsonnet'")
    message = message_of(path)
    assert 'couldn\'t open import "nope.libsonnet": not found (searched ' in message
    assert str(BUNDLED_LIBRARY_DIR) in message


# ---------------------------------------------------------------- bounds


def test_output_size_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonnet", "{ a: std.range(1, 100) }")
    message = message_of(path, limits=RenderLimits(max_output_bytes=200))
    assert "larger than the limit of 200 bytes" in message


def test_import_size_is_bounded(tmp_path: Path) -> None:
    write(tmp_path / "big.libsonnet", "'" + "x" * 100 + "'")
    path = write(tmp_path / "c.jsonnet", "import 'big.libsonnet'")
    message = message_of(path, limits=RenderLimits(max_source_bytes=50))
    assert "larger than the limit of 50 bytes" in message


def test_file_size_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", "{}" + " " * 100)
    assert message_of(path, limits=RenderLimits(max_source_bytes=50)) == (
        "larger than the limit of 50 bytes")


# ---------------------------------------------------------------- files and JSON


def test_json_is_read_as_is(tmp_path: Path) -> None:
    text = '{"routes": [], "clusters": []}'
    path = write(tmp_path / "c.json", text)
    assert render(path) == text
    assert load_config(path).rendered == text


def test_json_and_jsonnet_of_the_same_config_have_the_same_version(tmp_path: Path) -> None:
    jsonnet = write(tmp_path / "c.jsonnet", GOOD)
    json_file = write(tmp_path / "c.json", render(jsonnet))
    assert load_config(json_file).version == load_config(jsonnet).version


@pytest.mark.parametrize(("text", "expected"), [
    ('{\n  "routes": [,]\n}', "invalid JSON at {path}:2:14: Expecting value"),
    ('{"routes": [], "routes": []}', "invalid JSON: duplicate key 'routes' in an object"),
    ('{"listener": {"max_headers": NaN}}', "invalid JSON: NaN is not JSON"),
    ("[]", "the configuration must be a JSON object"),
])
def test_bad_json(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "c.json", text)
    assert message_of(path) == expected.format(path=path)


def test_missing_file(tmp_path: Path) -> None:
    assert message_of(str(tmp_path / "nope.jsonnet")) == "no such file"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.jsonnet").mkdir()
    assert message_of(str(tmp_path / "d.jsonnet")) == "is a directory, not a file"


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "routes: []")
    assert message_of(path) == (
        "unsupported file type '.yaml': use .jsonnet, .libsonnet or .json")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonnet"
    path.write_bytes(b"{ a: '\xff' }")
    assert message_of(str(path)) == "not UTF-8 text (byte 6)"

"""sidecar.config.model (the model) and configs/sidecar.libsonnet (which must agree with it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sidecar.config.loader import render
from sidecar.config.model import (
    AdminConfig,
    ClusterConfig,
    ClusterSettings,
    EndpointConfig,
    ListenerConfig,
    LoggingConfig,
    RouteConfig,
    SidecarConfig,
    config_version,
    format_location,
    parse_config,
    parse_duration,
)
from sidecar.errors import ConfigError


def issues(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test")
    assert info.value.source == "test"
    return [(issue.path, issue.message) for issue in info.value.issues]


def minimal(**extra: Any) -> dict[str, Any]:
    return {"clusters": [{"name": "app", "endpoints": [{"url": "http://127.0.0.1:8080"}]}],
            "routes": [{"cluster": "app"}], **extra}


# ---------------------------------------------------------------- the model


def test_empty_config_is_all_defaults() -> None:
    config = parse_config({})
    assert config == SidecarConfig()
    assert config.listener.address == "127.0.0.1:8000"
    assert config.listener.orchestrator_prefix == "/orchestrator/"
    assert config.admin.grpc_address == "127.0.0.1:9901"
    assert config.clusters == () and config.routes == ()


def test_minimal_config() -> None:
    config = parse_config(minimal())
    cluster = config.cluster("app")
    assert cluster is not None and cluster.timeout == 15.0
    assert cluster.endpoints[0].endpoint_id == "127.0.0.1:8080"
    assert config.routes[0].prefix == "/" and config.routes[0].route_name == "/"
    assert config.cluster("other") is None


@pytest.mark.parametrize(("value", "seconds"), [
    ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), (3, 3), (0.5, 0.5),
])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_bad_duration_is_located() -> None:
    data = minimal()
    data["clusters"][0]["timeout"] = "5 parsecs"
    [(path, message)] = issues(data)
    assert path == "clusters[0].timeout"
    assert message.startswith("invalid duration '5 parsecs'")


def test_every_issue_is_reported_with_its_path() -> None:
    data = minimal(listener={"address": "nope", "orchestrator_prefix": "x"})
    data["routes"][0]["methods"] = ["get"]
    paths = [path for path, _ in issues(data)]
    assert paths == ["listener.address", "listener.orchestrator_prefix", "routes[0].methods"]


def test_unknown_fields_are_rejected() -> None:
    assert issues({"bogus": 1}) == [("bogus", "Extra inputs are not permitted")]


def test_references_and_duplicates() -> None:
    data = minimal()
    data["clusters"].append(dict(data["clusters"][0]))
    data["routes"].append({"cluster": "missing"})
    assert issues(data) == [
        ("clusters[1].name", "duplicate cluster name 'app'"),
        ("routes[1].cluster", "unknown cluster 'missing'"),
        ("routes[1].name", "duplicate route name '/'"),
    ]


def test_duplicate_endpoints() -> None:
    data = minimal()
    data["clusters"][0]["endpoints"].append({"url": "http://127.0.0.1:8080/"})
    found = issues(data)
    assert ("clusters[0].endpoints[1].id", "duplicate endpoint id '127.0.0.1:8080'") in found


def test_not_an_object() -> None:
    assert issues([]) == [("", "the configuration must be a JSON object")]  # type: ignore[arg-type]


def test_route_normalisation() -> None:
    route = RouteConfig(cluster="a", methods=("GET", "GET", "POST"), host="API.Example.com")
    assert route.methods == ("GET", "POST")
    assert route.host == "api.example.com"


def test_config_is_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(ValidationError):
        config.listener.address = "0.0.0.0:1"  # type: ignore[misc]


def test_version_depends_on_behaviour_only() -> None:
    a = parse_config(minimal(logging={"level": "info"}))
    b = parse_config(json.loads(json.dumps(minimal())))
    assert config_version(a) == config_version(b)
    data = minimal()
    data["clusters"][0]["timeout"] = "15s"
    assert config_version(parse_config(data)) == config_version(a)
    data["clusters"][0]["timeout"] = "14s"
    assert config_version(parse_config(data)) != config_version(a)
    assert len(config_version(a)) == 64


def test_format_location() -> None:
    assert format_location(("routes", 1, "cluster")) == "routes[1].cluster"
    assert format_location(("clusters", 0, "endpoints", 2)) == "clusters[0].endpoints[2]"
    assert format_location(()) == ""


# ---------------------------------------------------------------- the library agrees


@pytest.fixture(scope="module")
def library_defaults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each constructor writes when given only its required arguments."""
    path = tmp_path_factory.mktemp("lib") / "defaults.jsonnet"
    path.write_text("""\
local sidecar = import 'sidecar.libsonnet';
{
  config: sidecar.config(),
  listener: sidecar.listener(),
  admin: sidecar.admin(),
  logging: sidecar.logging(),
  cluster_settings: sidecar._config.cluster,
  cluster: sidecar.cluster('c'),
  endpoint: sidecar.endpoint('http://127.0.0.1:1'),
  route: sidecar.route('/', 'c'),
  local_app: sidecar.localApp(8080),
  durations: [sidecar.ms(250), sidecar.s(1.5), sidecar.m(2), sidecar.h(1)],
}
""")
    return dict(json.loads(render(str(path))))


def test_library_defaults_are_the_models(library_defaults: dict[str, Any]) -> None:
    lib = library_defaults
    assert SidecarConfig.model_validate(lib["config"]) == SidecarConfig()
    assert ListenerConfig.model_validate(lib["listener"]) == ListenerConfig()
    assert AdminConfig.model_validate(lib["admin"]) == AdminConfig()
    assert LoggingConfig.model_validate(lib["logging"]) == LoggingConfig()
    assert ClusterSettings.model_validate(lib["cluster_settings"]) == ClusterSettings()
    assert ClusterConfig.model_validate(lib["cluster"]) == ClusterConfig(name="c")
    assert EndpointConfig.model_validate(lib["endpoint"]) == EndpointConfig(
        url="http://127.0.0.1:1")
    assert RouteConfig.model_validate(lib["route"]) == RouteConfig(prefix="/", cluster="c")


def test_library_writes_every_field_with_a_non_empty_default(
        library_defaults: dict[str, Any]) -> None:
    """A field added to sidecar/config.py fails here until configs/sidecar.libsonnet
    has a parameter for it, with the same default, stated in its comment."""

    def non_empty(model: type[Any]) -> set[str]:
        return {name for name, info in model.model_fields.items()
                if info.get_default(call_default_factory=True) not in (None, {})}

    for key, model in [("listener", ListenerConfig), ("admin", AdminConfig),
                       ("logging", LoggingConfig), ("cluster_settings", ClusterSettings),
                       ("cluster", ClusterConfig), ("config", SidecarConfig)]:
        missing = non_empty(model) - set(library_defaults[key])
        assert not missing, f"sidecar.libsonnet does not write {model.__name__}.{missing}"


def test_local_app(library_defaults: dict[str, Any]) -> None:
    config = parse_config(library_defaults["local_app"])
    [cluster] = config.clusters
    assert cluster.name == "local_app"
    assert [e.url for e in cluster.endpoints] == ["http://127.0.0.1:8080"]
    [route] = config.routes
    assert (route.prefix, route.cluster, route.route_name) == ("/", "local_app", "local_app")


def test_duration_helpers_parse(library_defaults: dict[str, Any]) -> None:
    assert [parse_duration(d) for d in library_defaults["durations"]] == [
        0.25, 1.5, 120.0, 3600.0]


def test_library_overrides_through_hidden_config(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonnet"
    path.write_text("""\
local sidecar = (import 'sidecar.libsonnet') + {
  _config+:: { cluster+: { timeout: '5s' }, local_app+: { name: 'app' } },
};
sidecar.config() + sidecar.localApp(9000)
""")
    config = parse_config(json.loads(render(str(path))))
    assert config.cluster_defaults.timeout == 5.0
    cluster = config.cluster("app")
    assert cluster is not None and cluster.timeout == 5.0
    assert config.routes[0].cluster == "app"


@pytest.mark.parametrize(("expression", "message"), [
    ("sidecar.cluster()", "cluster: name is required"),
    ("sidecar.route('/')", "route: cluster is required"),
    ("sidecar.endpoint()", "endpoint: url is required"),
    ("sidecar.localApp()", "localApp: port is required"),
    ("sidecar.localApp(70000)", "localApp: port must be an integer in 1..65535, got 70000"),
    ("sidecar.config({ cluster: [] })", "config: unknown field(s) cluster; expected some of"),
    ("sidecar.env('qa')", "env: expected one of dev, staging, prod, got 'qa'"),
    ("sidecar.ms(0)", "ms(): expected a positive number, got 0"),
])
def test_library_errors(tmp_path: Path, expression: str, message: str) -> None:
    path = tmp_path / "c.jsonnet"
    path.write_text(f"local sidecar = import 'sidecar.libsonnet';\n{{ x: {expression} }}\n")
    with pytest.raises(ConfigError) as info:
        render(str(path))
    [issue] = info.value.issues
    assert message in issue.message
    assert f"{path}:2:" in issue.message

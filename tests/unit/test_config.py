"""sidecar.config.model (the model) and configs/sidecar.libsonnet (which must agree with it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sidecar.config import resilience
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
from sidecar.config.resilience import (
    CacheFallbackConfig,
    CircuitBreakerConfig,
    FallbackConfig,
    HealthCheckConfig,
    LimitsConfig,
    RetryBudgetConfig,
    RetryConfig,
    StaticFallbackConfig,
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
    [cluster] = config.clusters
    assert cluster.name == "app" and cluster.timeout == 15.0
    assert cluster.endpoints[0].endpoint_id == "127.0.0.1:8080"
    assert config.routes[0].prefix == "/" and config.routes[0].route_name == "/"


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


# ---------------------------------------------------------------- endpoints


@pytest.mark.parametrize("endpoint_id", ["h:1", "10.0.0.1:8080", "[::1]:80", "blue-1",
                                         "x" * 128])
def test_endpoint_ids_of_the_registry_form_are_accepted(endpoint_id: str) -> None:
    data = minimal()
    data["clusters"][0]["endpoints"][0]["id"] = endpoint_id
    [endpoint] = parse_config(data).clusters[0].endpoints
    assert endpoint.endpoint_id == endpoint_id


def test_too_many_labels_are_rejected() -> None:
    data = minimal()
    data["clusters"][0]["endpoints"][0]["labels"] = {f"k{i}": "v" for i in range(100)}
    assert issues(data) == [("clusters[0].endpoints[0].labels",
                             "100 labels: at most 64 are allowed")]


def test_endpoint_field_errors_are_located() -> None:
    data = minimal()
    data["clusters"][0]["name"] = "bad name"
    data["clusters"][0]["endpoints"][0].update(id="bad id", weight=0, labels={"k": "a\nb"})
    paths = [path for path, _ in issues(data)]
    assert paths == ["clusters[0].name", "clusters[0].endpoints[0].id",
                     "clusters[0].endpoints[0].weight", "clusters[0].endpoints[0].labels"]


# ---------------------------------------------------------------- resilience

NESTED: list[tuple[str, type[Any]]] = [
    ("circuit_breaker", CircuitBreakerConfig), ("retry", RetryConfig),
    ("retry_budget", RetryBudgetConfig), ("limits", LimitsConfig)]


def test_resilience_defaults_protect_without_any_config() -> None:
    config = parse_config(minimal())
    cluster = config.clusters[0]
    for settings in (cluster, config.cluster_defaults):
        assert settings.circuit_breaker == CircuitBreakerConfig()
        assert settings.circuit_breaker.enabled and settings.retry.enabled
        assert settings.retry_budget.enabled and settings.limits.enabled
        assert settings.health_check is None and settings.slow_start is None
        assert settings.panic_threshold == 0.5 and settings.local_app is False
    route = config.routes[0]
    assert (route.retry, route.retry_non_idempotent, route.fallback) == (None, False, None)


def test_resilience_fields_in_json() -> None:
    data = minimal(cluster_defaults={"retry": {"max_retries": 1}, "slow_start": "20s"})
    data["clusters"][0].update(
        health_check={"path": "/healthz", "interval": "2s"}, local_app=True,
        circuit_breaker={"enabled": False}, retry_budget={"ratio": 0.5},
        limits={"max_requests": 10}, panic_threshold=0, slow_start="30s")
    data["routes"][0].update(retry={"max_retries": 0}, retry_non_idempotent=True,
                             fallback={"static": {"status": 503, "body": "down"}})
    config = parse_config(data)
    cluster = config.clusters[0]
    assert cluster.health_check is not None and cluster.health_check.interval == 2.0
    assert cluster.local_app and not cluster.circuit_breaker.enabled
    assert (cluster.retry_budget.ratio, cluster.limits.max_requests) == (0.5, 10)
    assert (cluster.panic_threshold, cluster.slow_start) == (0, 30.0)
    assert cluster.retry == RetryConfig()  # cluster_defaults are not merged into clusters
    assert config.cluster_defaults.retry.max_retries == 1
    assert config.cluster_defaults.slow_start == 20.0
    route = config.routes[0]
    assert route.retry is not None and route.retry.max_retries == 0
    assert route.retry_non_idempotent
    assert route.fallback is not None and route.fallback.static is not None
    assert route.fallback.static.body == "down"


@pytest.mark.parametrize(("value", "message"), [
    (-0.1, "greater than or equal to 0"), (1.5, "less than or equal to 1")])
def test_panic_threshold_range(value: float, message: str) -> None:
    data = minimal()
    data["clusters"][0]["panic_threshold"] = value
    [(path, text)] = issues(data)
    assert path == "clusters[0].panic_threshold" and message in text


def two_clusters(**route: Any) -> dict[str, Any]:
    return {"clusters": [{"name": "app", "timeout": "10s"}, {"name": "spare"}],
            "routes": [{"cluster": "app", **route}]}


@pytest.mark.parametrize(("data", "expected"), [
    (two_clusters(fallback={"cluster": "nowhere"}),
     [("routes[0].fallback.cluster", "unknown cluster 'nowhere'")]),
    (two_clusters(fallback={"cluster": "app"}),
     [("routes[0].fallback.cluster", "the fallback cluster 'app' is the route's own cluster")]),
    (two_clusters(retry={"per_try_timeout": "11s"}),
     [("routes[0].retry.per_try_timeout", "per_try_timeout 11s is over cluster 'app''s "
       "timeout 10s, which bounds all tries together")]),
    (two_clusters(retry={"per_try_timeout": "2s"}, timeout="1s"),
     [("routes[0].retry.per_try_timeout", "per_try_timeout 2s is over the route's "
       "timeout 1s, which bounds all tries together")]),
    ({"clusters": [{"name": "app", "retry": {"per_try_timeout": "5s"}}],
      "routes": [{"cluster": "app", "timeout": "2s"}]},
     [("routes[0].timeout", "timeout 2s is below the per_try_timeout 5s of cluster 'app''s "
       "retry; set a retry on the route too")]),
    ({"clusters": [{"name": "app", "timeout": "1s", "retry": {"per_try_timeout": "1.5s"}}]},
     [("clusters[0].retry.per_try_timeout", "per_try_timeout 1.5s is over the timeout 1s, "
       "which bounds all tries together")]),
    ({"cluster_defaults": {"retry": {"per_try_timeout": "20s"}}},
     [("cluster_defaults.retry.per_try_timeout", "per_try_timeout 20s is over the timeout "
       "15s, which bounds all tries together")]),
    ({"cluster_defaults": {"local_app": True}},
     [("cluster_defaults.local_app", "must be false: set local_app on the declared cluster "
       "of the application; clusters created by registration come and go")]),
])
def test_resilience_cross_field_checks(data: dict[str, Any],
                                       expected: list[tuple[str, str]]) -> None:
    assert issues(data) == expected


@pytest.mark.parametrize("data", [
    two_clusters(fallback={"cluster": "spare"}),
    two_clusters(fallback={"cache": {}, "cluster": "spare", "static": {}}),
    two_clusters(retry={"per_try_timeout": "10s"}),  # equal is fine
    two_clusters(retry={"per_try_timeout": "20s"}, timeout="30s"),
    # The route's retry replaces the cluster's, per_try_timeout included.
    {"clusters": [{"name": "app", "retry": {"per_try_timeout": "5s"}}],
     "routes": [{"cluster": "app", "timeout": "2s", "retry": {}}]},
    # A health-checked local app; more than one local_app cluster is allowed.
    {"clusters": [{"name": "app", "local_app": True, "health_check": {"path": "/healthz"}},
                  {"name": "worker", "local_app": True}]},
])
def test_resilience_configs_that_are_fine(data: dict[str, Any]) -> None:
    parse_config(data)


def test_every_field_states_its_default() -> None:
    """What `sidecar config schema` shows: each field says what it is when left out."""
    models: list[type[Any]] = [ClusterSettings, RouteConfig, EndpointConfig]
    models += [getattr(resilience, name) for name in resilience.__all__
               if name.endswith("Config")]
    for model in models:
        for name, info in model.model_fields.items():
            if model in (ClusterSettings, RouteConfig) and name not in NEW_FIELDS:
                continue
            text = (info.description or "").lower()
            assert "default" in text or "required" in text, f"{model.__name__}.{name}"


NEW_FIELDS = {"circuit_breaker", "health_check", "retry", "retry_budget", "limits",
              "panic_threshold", "slow_start", "local_app", "retry_non_idempotent", "fallback"}


def test_schema_shows_the_resilience_fields() -> None:
    from sidecar.config.commands import config_schema

    defs = config_schema()["$defs"]
    assert NEW_FIELDS - {"retry_non_idempotent", "fallback"} <= set(
        defs["ClusterConfig"]["properties"])
    assert {"retry", "retry_non_idempotent", "fallback"} <= set(
        defs["RouteConfig"]["properties"])
    assert "default" in defs["ClusterConfig"]["properties"]["local_app"]["description"]
    endpoint = defs["EndpointConfig"]["properties"]
    assert endpoint["weight"]["maximum"] == 1000
    assert endpoint["labels"]["maxProperties"] == 64


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
  circuit_breaker: sidecar.circuitBreaker(),
  health_check: sidecar.healthCheck('/healthz'),
  retry: sidecar.retry(),
  retry_budget: sidecar.retryBudget(),
  limits: sidecar.limits(),
  fallback: sidecar.fallbackCache() + sidecar.fallbackCluster('other') + sidecar.fallbackStatic(),
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
    for key, model in NESTED:
        assert model.model_validate(lib[key]) == model(), key
        assert model.model_validate(lib["cluster_settings"][key]) == model(), key
    assert HealthCheckConfig.model_validate(lib["health_check"]) == HealthCheckConfig(
        path="/healthz")
    assert FallbackConfig.model_validate(lib["fallback"]) == FallbackConfig(
        cache=CacheFallbackConfig(), cluster="other", static=StaticFallbackConfig())


def test_library_writes_every_field_with_a_non_empty_default(
        library_defaults: dict[str, Any]) -> None:
    """A field added to sidecar/config.py fails here until configs/sidecar.libsonnet
    has a parameter for it, with the same default, stated in its comment."""

    def non_empty(model: type[Any]) -> set[str]:
        return {name for name, info in model.model_fields.items()
                if info.get_default(call_default_factory=True) not in (None, {})}

    lib = library_defaults
    written: list[tuple[dict[str, Any], type[Any]]] = [
        (lib["listener"], ListenerConfig), (lib["admin"], AdminConfig),
        (lib["logging"], LoggingConfig), (lib["cluster_settings"], ClusterSettings),
        (lib["cluster"], ClusterConfig), (lib["config"], SidecarConfig),
        (lib["config"]["cluster_defaults"], ClusterSettings),
        (lib["endpoint"], EndpointConfig), (lib["route"], RouteConfig),
        (lib["health_check"], HealthCheckConfig), (lib["fallback"]["cache"], CacheFallbackConfig),
        (lib["fallback"]["static"], StaticFallbackConfig),
    ]
    for key, model in NESTED:  # the constructor, _config.cluster, and what cluster() writes
        written += [(lib[key], model), (lib["cluster_settings"][key], model),
                    (lib["cluster"][key], model), (lib["config"]["cluster_defaults"][key], model)]
    for data, model in written:
        missing = non_empty(model) - set(data)
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
    [cluster] = [c for c in config.clusters if c.name == "app"]
    assert cluster.timeout == 5.0
    assert config.routes[0].cluster == "app"


def test_library_resilience_helpers(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonnet"
    path.write_text("""\
local sidecar = (import 'sidecar.libsonnet') + {
  _config+:: { cluster+: { retry+: { max_retries: 1 } }, health_check+: { interval: '2s' } },
};
sidecar.config({
  clusters: [
    sidecar.cluster('users', ['http://127.0.0.1:8001'], slow_start='30s',
                    health_check=sidecar.healthCheck('/healthz', host='users.internal'),
                    circuit_breaker=sidecar.circuitBreaker(consecutive_failures=3),
                    limits=sidecar.limits(max_requests=100)),
    sidecar.cluster('spare', ['http://127.0.0.1:8002']),
  ],
  routes: [
    sidecar.route('/users', 'users', retry=sidecar.retry(per_try_timeout='1s'),
                  retry_non_idempotent=true,
                  fallback=sidecar.fallbackStatic(503, 'down', { 'Retry-After': '5' })
                           + sidecar.fallbackCluster('spare') + sidecar.fallbackCache()),
  ],
}) + sidecar.localApp(8080, health_check=sidecar.healthCheck('/ready'), local_app=true)
""")
    config = parse_config(json.loads(render(str(path))))
    users, spare, app = config.clusters
    assert users.health_check == HealthCheckConfig(path="/healthz", interval=2.0,
                                                   host="users.internal")
    assert users.slow_start == 30.0 and users.circuit_breaker.consecutive_failures == 3
    assert users.limits == LimitsConfig(max_requests=100)
    assert users.retry.max_retries == spare.retry.max_retries == 1  # from _config
    assert config.cluster_defaults.retry.max_retries == 1
    assert spare.health_check is None and not spare.local_app
    assert app.local_app and app.health_check == HealthCheckConfig(path="/ready", interval=2.0)
    [route] = config.routes[:1]
    assert route.retry == RetryConfig(max_retries=1, per_try_timeout=1.0)
    assert route.retry_non_idempotent
    assert route.fallback == FallbackConfig(
        cache=CacheFallbackConfig(), cluster="spare",
        static=StaticFallbackConfig(status=503, body="down", headers={"Retry-After": "5"}))


@pytest.mark.parametrize(("expression", "message"), [
    ("sidecar.cluster()", "cluster: name is required"),
    ("sidecar.healthCheck()", "healthCheck: path is required"),
    ("sidecar.fallbackCluster()", "fallbackCluster: name is required"),
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

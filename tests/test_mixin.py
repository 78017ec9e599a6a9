"""The monitoring mixin in configs/mixin: rendered by the stock jsonnet CLI and the Python
binding alike, accepted and unit-tested by promtool, and querying only what a live
sidecar exports.

* `render.libsonnet` gives the same bytes from `/usr/bin/jsonnet` (the CLI operators and CI
  use) and from `_jsonnet` (what `sidecar config render` uses), and the rendered files
  committed under `configs/mixin/rendered/` are that output.
* `promtool check rules` accepts the rule files; `promtool test rules` runs the unit
  tests in `configs/mixin/tests/` against a fresh rendering: each alert fires on its
  synthetic series and stays quiet on the near misses.
* The dashboard has the structure Grafana needs (a datasource variable, job and instance
  variables, panels with targets on that datasource, a grid without overlaps), and its
  queries parse.
* Every metric name in any query (alerts, rules, dashboard) is one that a real sidecar
  serves on its admin port's /metrics, or `up`, which Prometheus adds itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import _jsonnet
import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Sidecar
from sidecar.reload import ConfigSource

ROOT = Path(__file__).resolve().parents[1]
MIXIN = ROOT / "configs" / "mixin"
RENDER = MIXIN / "render.libsonnet"
JSONNET = "/usr/bin/jsonnet"  # the stock CLI (Debian's jsonnet, 0.18)
PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus
FILES = {"sidecar-alerts.json", "sidecar-rules.json", "sidecar-overview.json"}
ALERTS = {"SidecarBreakerOpen", "SidecarClusterNoHealthyEndpoint", "SidecarRouteErrorRatioHigh",
          "SidecarRetryBudgetExhausted", "SidecarConfigReloadFailing", "SidecarNotReady",
          "SidecarMetricsAbsent"}
#: Series Prometheus makes itself for every target; the sidecar does not export them.
PROMETHEUS_SERIES = {"up"}


def need(tool: str) -> None:
    if not os.path.exists(tool):
        pytest.skip(f"{tool} is not installed (scripts/install-tools.sh installs it: "
                    f"Debian packages jsonnet and prometheus)")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


def render_cli(out: Path, *extra: str) -> dict[str, str]:
    """Render the mixin's files into `out` with the stock CLI; name -> text."""
    need(JSONNET)
    out.mkdir(parents=True, exist_ok=True)
    result = run(JSONNET, "-J", str(MIXIN), "-m", str(out), *extra, str(RENDER))
    assert result.returncode == 0, result.stderr
    return {path.name: path.read_text() for path in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return render_cli(tmp_path_factory.mktemp("mixin") / "rendered")


@pytest.fixture(scope="module")
def alerts(rendered: dict[str, str]) -> list[dict[str, Any]]:
    doc = json.loads(rendered["sidecar-alerts.json"])
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def records(rendered: dict[str, str]) -> list[dict[str, Any]]:
    doc = json.loads(rendered["sidecar-rules.json"])
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard(rendered: dict[str, str]) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(rendered["sidecar-overview.json"])
    return board


# ------------------------------------------------------------ rendering


def test_cli_and_python_binding_render_the_same_bytes(rendered: dict[str, str]) -> None:
    assert set(rendered) == FILES
    whole = json.loads(_jsonnet.evaluate_file(str(RENDER), jpathdir=[str(MIXIN)]))
    assert set(whole) == FILES
    # `-m` writes each field as the CLI prints a value: the binding prints the same bytes.
    for name in FILES:
        snippet = f"(import 'render.libsonnet')()['{name}']"
        assert _jsonnet.evaluate_snippet(name, snippet, jpathdir=[str(MIXIN)]) == rendered[name]
        assert json.loads(rendered[name]) == whole[name]


def test_committed_rendering_is_fresh(rendered: dict[str, str]) -> None:
    committed = {path.name: path.read_text() for path in (MIXIN / "rendered").iterdir()}
    assert committed == rendered, (
        "configs/mixin/rendered/ is stale: jsonnet -J configs/mixin -m "
        "configs/mixin/rendered configs/mixin/render.libsonnet")


def test_jsonnet_is_formatted() -> None:
    jsonnetfmt = "/usr/bin/jsonnetfmt"  # from the same Debian package as the CLI
    need(jsonnetfmt)
    sources = sorted(str(p) for p in MIXIN.glob("*.libsonnet"))
    result = run(jsonnetfmt, "--test", *sources)
    assert result.returncode == 0, f"not jsonnetfmt-formatted: {result.stdout}{result.stderr}"


@pytest.mark.parametrize(("component", "field"), [("alerts", "prometheusAlerts"),
                                                  ("rules", "prometheusRules"),
                                                  ("dashboards", "grafanaDashboards")])
def test_a_component_asks_for_the_selector_it_has_no_default_for(component: str,
                                                                  field: str) -> None:
    # kubernetes-mixin's convention: a component declares its selectors as `error`, and
    # mixin.libsonnet gives the defaults. Here: a component with every default but that.
    need(JSONNET)

    def evaluate(selector: str) -> subprocess.CompletedProcess[str]:
        return run(JSONNET, "-J", str(MIXIN), "-e", f"""
            local defaults = (import 'mixin.libsonnet')._config;
            local all_but_selector = {{
              [k]: defaults[k] for k in std.objectFields(defaults) if k != 'sidecarSelector'
            }};
            ((import '{component}.libsonnet') + {{ _config+:: all_but_selector {selector} }})
            .{field}
        """)

    result = evaluate("")
    assert result.returncode != 0
    assert "must provide sidecarSelector" in result.stderr, result.stderr
    assert evaluate("+ { sidecarSelector: 'job=\"x\"' }").returncode == 0


def test_config_overrides_reach_every_query(tmp_path: Path) -> None:
    config = ('{sidecarSelector: \'job="mesh", namespace="prod"\', '
              "fleetLabels: ['job', 'namespace'], instanceLabel: 'pod', "
              "runbookURLPattern: 'https://runbooks.example/sidecar#%s', "
              "routeErrorRatioThreshold: 0.1, latencyQuantiles: [0.95]}")
    files = render_cli(tmp_path / "out", "--tla-code", f"config={config}")
    alert_rules = json.loads(files["sidecar-alerts.json"])["groups"][0]["rules"]
    record_rules = json.loads(files["sidecar-rules.json"])["groups"][0]["rules"]
    board = json.loads(files["sidecar-overview.json"])
    for rule in alert_rules + record_rules:
        if "quantile" not in rule.get("labels", {}):  # those read a recorded series
            assert 'job="mesh", namespace="prod"' in rule["expr"], rule["expr"]
    for rule in alert_rules:
        assert rule["annotations"]["runbook_url"] == (
            f"https://runbooks.example/sidecar#{rule['alert'].lower()}")
    ratio = next(r for r in alert_rules if r["alert"] == "SidecarRouteErrorRatioHigh")
    assert "by (job, namespace, route)" in ratio["expr"] and ") > 0.1\n" in ratio["expr"]
    assert [r["labels"]["quantile"] for r in record_rules if "labels" in r] == ["0.95"]
    for expr in panel_exprs(board):
        assert 'job="mesh", namespace="prod", job=~"$job", pod=~"$instance"' in expr, expr
    check_rules(tmp_path / "out" / "sidecar-alerts.json", tmp_path / "out" / "sidecar-rules.json")


# ------------------------------------------------------------ promtool


def check_rules(*paths: Path) -> str:
    need(PROMTOOL)
    result = run(PROMTOOL, "check", "rules", *map(str, paths))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_check_rules(rendered: dict[str, str], tmp_path: Path) -> None:
    for name in ("sidecar-alerts.json", "sidecar-rules.json"):
        (tmp_path / name).write_text(rendered[name])
    out = check_rules(tmp_path / "sidecar-alerts.json", tmp_path / "sidecar-rules.json")
    assert out.count("SUCCESS") == 2, out


def test_promtool_unit_tests_pass_on_a_fresh_rendering(rendered: dict[str, str],
                                                       tmp_path: Path) -> None:
    need(PROMTOOL)
    # The test files name their rule files as ../rendered/...: lay out the same tree.
    (tmp_path / "rendered").mkdir()
    for name, text in rendered.items():
        (tmp_path / "rendered" / name).write_text(text)
    shutil.copytree(MIXIN / "tests", tmp_path / "tests")
    tests = sorted(p.name for p in (tmp_path / "tests").glob("*.yaml"))
    assert tests == ["alerts_test.yaml", "rules_test.yaml"]
    result = run(PROMTOOL, "test", "rules", *tests, cwd=tmp_path / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests), result.stdout


def readme_block(language: str, containing: str) -> str:
    text = (MIXIN / "README.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)
    [block] = [b for b in blocks if containing in b]
    return block


def test_readme_prometheus_config_loads_the_rule_files(rendered: dict[str, str],
                                                        tmp_path: Path) -> None:
    need(PROMTOOL)
    for name, text in rendered.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "prometheus.yml").write_text(readme_block("yaml", "rule_files:"))
    result = run(PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS: 7 rules found") == 2, result.stdout


def test_readme_own_mixin_file_renders(tmp_path: Path) -> None:
    path = tmp_path / "my-sidecar-mixin.jsonnet"
    path.write_text(readme_block("jsonnet", "_config+::"))
    files = json.loads(_jsonnet.evaluate_file(str(path), jpathdir=[str(MIXIN)]))
    assert set(files) == FILES
    rules = files["sidecar-alerts.json"]["groups"][0]["rules"]
    ratio = next(r for r in rules if r["alert"] == "SidecarRouteErrorRatioHigh")
    assert 'job="mesh-sidecar"' in ratio["expr"] and ") > 0.02\n" in ratio["expr"]
    assert ratio["annotations"]["runbook_url"] == (
        "https://runbooks.example.com/sidecar#sidecarrouteerrorratiohigh")


def test_every_alert_is_tested_firing_and_quiet(alerts: list[dict[str, Any]]) -> None:
    doc = yaml.safe_load((MIXIN / "tests" / "alerts_test.yaml").read_text())
    fires, quiet = set(), set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert {rule["alert"] for rule in alerts} == ALERTS
    assert fires == ALERTS and quiet == ALERTS


def test_every_recording_rule_is_tested(records: list[dict[str, Any]]) -> None:
    doc = yaml.safe_load((MIXIN / "tests" / "rules_test.yaml").read_text())
    tested = {check["expr"] for case in doc["tests"] for check in case["promql_expr_test"]}
    intermediate = {"route_le:sidecar_request_duration_seconds_bucket:rate5m"}  # by quantiles
    assert {rule["record"] for rule in records} - intermediate <= tested


def test_alerts_say_what_to_check_and_do(alerts: list[dict[str, Any]]) -> None:
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook"}, rule["alert"]
        assert notes["summary"] and notes["description"], rule["alert"]
        assert notes["runbook"].startswith("Check: ") and "\nDo: " in notes["runbook"]


# ------------------------------------------------------------ dashboard


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_exprs(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panels, annotations, variable queries."""
    exprs = panel_exprs(board)
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"])
            assert match, variable["query"]
            exprs.append(match.group(1))
    return exprs


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["query"].startswith('label_values(sidecar_config_loads_total{'
                                                   'job="sidecar"')
    assert variables["instance"]["query"].endswith('job=~"$job"}, instance)')


def test_dashboard_panels(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "sidecar-overview" and dashboard["title"] == "Sidecar"
    assert dashboard["schemaVersion"] >= 36
    all_panels = list(panels(dashboard))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "table"}, panel["title"]
        assert panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            # Every query follows the variables.
            assert 'job=~"$job", instance=~"$instance"' in target["expr"], target["expr"]
    # What the dashboard is for: each of these is drawn.
    drawn = set().union(*map(metric_names, panel_exprs(dashboard)))
    assert {"sidecar_requests_total", "sidecar_request_duration_seconds_bucket",
            "sidecar_endpoints", "sidecar_breaker_transitions_total", "sidecar_retries_total",
            "sidecar_retries_refused_total", "sidecar_config_loads_total"} <= drawn


def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # promtool has no PromQL checker of its own; a rule file of the queries is checked.
    def concrete(expr: str) -> str:
        return re.sub(r"\$(\w+)", ".+", re.sub(r"\$__\w+", "5m", expr))
    rules = [{"record": f"dashboard_query_{i}", "expr": concrete(expr)}
             for i, expr in enumerate(dashboard_exprs(dashboard))]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in check_rules(path)


# ------------------------------------------------------------ metric names


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    bare = _STRINGS.sub('""', expr)  # first: strings may hold braces and brackets
    bare = _GROUPING.sub(" ", _RANGES.sub("", _MATCHERS.sub("", bare)))
    return {m.group() for m in _NAME.finditer(bare)
            if m.group().lower() not in _KEYWORDS and not bare[m.end():].lstrip().startswith("(")}


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (job, route) (rate(sidecar_requests_total{job="sidecar", code_class="5xx"}[5m]))'
     " / ignoring (x) group_left (y) b_total > 0.05 and on (a) c offset 5m",
     {"sidecar_requests_total", "b_total", "c"}),
    ("histogram_quantile(0.99, sum by (le) (rate(x_bucket{a=~\"$job\"}[$__rate_interval])))",
     {"x_bucket"}),
    ('absent(up{job="a{b}"}) or vector(1e3) unless route:x:rate5m', {"up", "route:x:rate5m"}),
])
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


async def test_queries_use_only_metrics_a_live_sidecar_exports(
        alerts: list[dict[str, Any]], records: list[dict[str, Any]],
        dashboard: dict[str, Any], live_metrics: str) -> None:
    exported = set(PROMETHEUS_SERIES)
    for family in text_string_to_metric_families(live_metrics):
        exported |= {sample.name for sample in family.samples}
        exported |= {family.name + suffix for suffix in {
            "counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["_sum", "_count"]}.get(family.type, [""])}
    # Counters are selected by their `_total` samples, histograms by their suffixes.
    assert {"sidecar_requests_total", "sidecar_request_duration_seconds_bucket",
            "sidecar_health_checks_total", "sidecar_endpoints"} <= exported
    assert "sidecar_requests" not in exported
    recorded = {rule["record"] for rule in records}
    used: dict[str, set[str]] = {
        "alerts": set().union(*(metric_names(rule["expr"]) for rule in alerts)),
        "rules": set().union(*(metric_names(rule["expr"]) for rule in records)),
        "dashboard": set().union(*map(metric_names, dashboard_exprs(dashboard))),
    }
    assert {"sidecar_breaker_state", "sidecar_endpoints", "sidecar_requests_total",
            "sidecar_retries_refused_total", "sidecar_config_loads_total", "up"} <= used["alerts"]
    for where, names in used.items():
        unknown = names - exported - recorded
        assert not unknown, f"{where} query metrics a sidecar does not export: {unknown}"
    # Recorded series are used only by the rules themselves (quantiles from bucket rates).
    assert used["rules"] & recorded == {"route_le:sidecar_request_duration_seconds_bucket:rate5m"}


@pytest.fixture
async def live_metrics() -> AsyncIterator[str]:
    """/metrics of a real sidecar, after a request, with a health-checked cluster."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    source = ConfigSource(data={
        "listener": {"address": "127.0.0.1:0"},
        "admin": {"grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0"},
        "clusters": [{"name": "web", "health_check": {"path": "/healthz"},
                      "endpoints": [{"url": f"http://127.0.0.1:{upstream.port}"}]}],
        "routes": [{"name": "api", "prefix": "/", "cluster": "web"}],
    })
    sidecar = Sidecar(source, source.load())
    await sidecar.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{sidecar.ports['listener']}/x") as response:
                assert response.status == 200
                await response.read()
            admin = f"http://127.0.0.1:{sidecar.ports['admin_http']}/metrics"
            async with client.get(admin) as response:
                assert response.status == 200
                yield await response.text()
    finally:
        await sidecar.stop(drain_timeout=1.0)
        await upstream.close()

"""The deployment examples stay in step with the config model and the image."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sidecar.config.model import parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_kubernetes_example_config_validates_and_probes_match_the_admin_port() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/sidecar.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service"}
    config = parse_config(json.loads(kinds["ConfigMap"]["data"]["sidecar.json"]))
    admin_port = int(config.admin.http_address.rsplit(":", 1)[1])
    [sidecar] = [c for c in kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "sidecar"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": admin_port}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/live", "port": admin_port}
    grace = kinds["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.listener.drain_timeout  # the drain finishes before SIGKILL


def test_dockerfile_runs_as_non_root_with_a_ready_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "\nUSER 10001\n" in text
    assert "HEALTHCHECK" in text and "/ready" in text
    assert 'ENTRYPOINT ["sidecar"]' in text

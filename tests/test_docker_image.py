"""The container image starts on a config it ships: configs/docker.jsonnet, copied to
the path the Dockerfile's CMD names, valid, and matching the image's ports and
HEALTHCHECK."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sidecar.cli import build_parser, check_run_flags
from sidecar.config.loader import load_config
from sidecar.config.model import SidecarConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKER_CONFIG = ROOT / "configs" / "docker.jsonnet"


def instruction(name: str) -> list[str]:
    """The arguments of every NAME instruction (continuation lines joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.split(None, 1)[:1] == [name]]


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def config() -> SidecarConfig:
    return load_config(str(DOCKER_CONFIG), {}, []).config


def test_docker_config_validates_as_a_local_app_sidecar(config: SidecarConfig) -> None:
    assert config.listener.address == "0.0.0.0:8000"  # reachable from outside the container
    assert config.admin.grpc_address.startswith("127.0.0.1:")  # the admin plane is not
    assert config.admin.http_address.startswith("127.0.0.1:")
    [cluster] = config.clusters
    assert [e.url for e in cluster.endpoints] == ["http://127.0.0.1:8080"]
    assert [(r.prefix, r.cluster) for r in config.routes] == [("/", cluster.name)]


def test_cmd_runs_the_shipped_config() -> None:
    [cmd] = instruction("CMD")
    argv = json.loads(cmd)
    args = build_parser().parse_args(argv)
    assert check_run_flags(args) is None
    assert args.listen is None  # a flag would override a config mounted in its place
    copies = [line.split() for line in instruction("COPY")]
    assert ["configs/docker.jsonnet", args.config] in copies
    # Copied before the VOLUME is declared: a fresh volume starts with it.
    assert DOCKERFILE.index(f"COPY configs/docker.jsonnet {args.config}") < (
        DOCKERFILE.index("VOLUME"))
    assert Path(args.config).parent.as_posix() in json.loads(instruction("VOLUME")[0])


def test_copy_renders_where_the_image_puts_it(tmp_path: Path) -> None:
    """`import 'sidecar.libsonnet'` resolves without -J away from the repository."""
    copy = tmp_path / "etc" / "sidecar" / "sidecar.jsonnet"
    copy.parent.mkdir(parents=True)
    shutil.copy(DOCKER_CONFIG, copy)
    assert load_config(str(copy), {}, []).config == load_config(str(DOCKER_CONFIG), {},
                                                                 []).config


def test_ports_and_healthcheck_match_the_config(config: SidecarConfig) -> None:
    exposed = {int(p) for p in instruction("EXPOSE")[0].split()}
    assert {port(config.listener.address), port(config.admin.grpc_address),
            port(config.admin.http_address)} <= exposed
    [healthcheck] = instruction("HEALTHCHECK")
    assert re.search(rf"http://127\.0\.0\.1:{port(config.admin.http_address)}/ready",
                     healthcheck)

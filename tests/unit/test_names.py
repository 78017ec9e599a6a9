"""sidecar.core.names: one set of rules for endpoints declared in the config file and
endpoints registered at run time. Every case of the table goes through both paths,
`parse_config` and `Registry.register`, and both must agree, with the same message."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sidecar.config.model import parse_config
from sidecar.config.types import NAME_PATTERN
from sidecar.core import names
from sidecar.errors import ConfigError, InvalidEndpoint
from sidecar.registry import Registry

LONG_HOST = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: the longest host name

# (field, value, valid). `field` is what varies; the rest is a valid endpoint.
CASES: list[tuple[str, Any, bool]] = [
    # cluster names: letters, digits, '_', '.', '-'; not first '.' or '-'; 1-63
    ("cluster", "web", True),
    ("cluster", "user_service", True),
    ("cluster", "_x.y-z", True),
    ("cluster", "0", True),
    ("cluster", "a" * 63, True),
    ("cluster", "a" * 64, False),
    ("cluster", "", False),
    ("cluster", "bad name!", False),
    ("cluster", "-lead", False),
    ("cluster", ".lead", False),
    ("cluster", "a:b", False),
    ("cluster", "web\n", False),
    ("cluster", "w\u00e9b", False),
    # explicit endpoint ids: a cluster name's characters plus ':', '[', ']'; 1-128
    ("id", "h:1", True),  # the registry's own default form
    ("id", "10.0.0.1:8080", True),
    ("id", "[::1]:80", True),
    ("id", "[2001:db8::1]:8443", True),
    ("id", "blue-1", True),
    ("id", "u1", True),
    ("id", "x" * 128, True),
    ("id", "x" * 129, False),
    ("id", "bad id", False),
    ("id", "-lead", False),
    ("id", ".lead", False),
    ("id", ":lead", False),
    ("id", "a/b", False),
    ("id", "id\n", False),
    ("id", "\u00e9", False),
    # weights: 1-1000
    ("weight", 1, True),
    ("weight", 1000, True),
    ("weight", 0, False),
    ("weight", -1, False),
    ("weight", 1001, False),
    # labels: at most 64; keys 1-63 characters, values at most 255; no control characters
    ("labels", {}, True),
    ("labels", {"zone": "eu-1"}, True),
    ("labels", {"k" * 63: "v" * 255}, True),
    ("labels", {"k": ""}, True),
    ("labels", {f"k{i}": "v" for i in range(64)}, True),
    ("labels", {"team name": "A & B", "app.kubernetes.io/name": "x=y,z"}, True),
    ("labels", {"r\u00e9gion": "\u00eele-de-France \u2713"}, True),
    ("labels", {f"k{i}": "v" for i in range(65)}, False),
    ("labels", {f"k{i}": "v" for i in range(100)}, False),
    ("labels", {"": "v"}, False),
    ("labels", {"k" * 64: "v"}, False),
    ("labels", {"k": "v" * 256}, False),
    ("labels", {"k\n": "v"}, False),
    ("labels", {"k": "a\nb"}, False),
    ("labels", {"k": "a\tb"}, False),
    ("labels", {"k": "\x00"}, False),
    ("labels", {"k": "\x7f"}, False),
    # the default id is "host:port" of the URL, valid however long the host
    ("url", f"http://{LONG_HOST}:65535", True),
    ("url", "http://[::1]", True),
]

VALID = {"cluster": "web", "url": "http://127.0.0.1:8080", "id": None, "weight": 1,
         "labels": {}}
# Where the config reports each field.
CONFIG_PATH = {"cluster": "clusters[0].name", "id": "clusters[0].endpoints[0].id",
               "weight": "clusters[0].endpoints[0].weight",
               "labels": "clusters[0].endpoints[0].labels",
               "url": "clusters[0].endpoints[0].url"}


def case_id(case: tuple[str, Any, bool]) -> str:
    field, value, valid = case
    text = repr(value)
    return f"{field}={text[:40]}{'...' if len(text) > 40 else ''}-{'ok' if valid else 'bad'}"


def through_config(spec: dict[str, Any]) -> tuple[str, str] | None:
    """None when the config accepts the endpoint, else (path, message)."""
    endpoint: dict[str, Any] = {"url": spec["url"], "weight": spec["weight"],
                                "labels": spec["labels"]}
    if spec["id"] is not None:
        endpoint["id"] = spec["id"]
    try:
        parse_config({"clusters": [{"name": spec["cluster"], "endpoints": [endpoint]}]})
    except ConfigError as exc:
        [issue] = exc.issues
        return issue.path, issue.message
    return None


def through_registry(spec: dict[str, Any]) -> str | None:
    """None when the registry accepts the registration, else the message."""
    try:
        Registry().register(spec["cluster"], spec["url"], endpoint_id=spec["id"] or "",
                            weight=spec["weight"], labels=spec["labels"])
    except InvalidEndpoint as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_config_and_registry_agree(case: tuple[str, Any, bool]) -> None:
    field, value, valid = case
    spec = {**VALID, field: value}
    config = through_config(spec)
    registry = through_registry(spec)
    if valid:
        assert (config, registry) == (None, None)
    else:
        assert config is not None and registry is not None
        assert config == (CONFIG_PATH[field], registry)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_each_check_alone(case: tuple[str, Any, bool]) -> None:
    field, value, valid = case
    check = {"cluster": names.check_cluster_name, "id": names.check_endpoint_id,
             "weight": names.check_weight, "labels": names.check_labels}.get(field)
    if check is None:
        return
    if valid:
        assert check(value) == value
    else:
        with pytest.raises(ValueError):
            check(value)


def test_cluster_name_rule_is_the_config_name_type() -> None:
    # ClusterConfig.name is checked by names; Name (route names, references) by
    # its pattern: the same one.
    assert names.CLUSTER_NAME_PATTERN == NAME_PATTERN
    assert re.fullmatch(names.ENDPOINT_ID_PATTERN, "x" * names.MAX_ENDPOINT_ID)
    assert not re.fullmatch(names.ENDPOINT_ID_PATTERN, "x" * (names.MAX_ENDPOINT_ID + 1))


@pytest.mark.parametrize("value", [True, 1.5, "5", None])
def test_weight_must_be_an_integer(value: Any) -> None:
    with pytest.raises(ValueError, match="weight must be an integer"):
        names.check_weight(value)


@pytest.mark.parametrize("value", [None, 5, ["web"]])
def test_names_must_be_strings(value: Any) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        names.check_cluster_name(value)
    with pytest.raises(ValueError, match="must be a string"):
        names.check_endpoint_id(value)


@pytest.mark.parametrize("value", [{"k": 1}, {1: "v"}, ["k"]])
def test_labels_must_be_strings(value: Any) -> None:
    with pytest.raises(ValueError, match="label"):
        names.check_labels(value)


def test_labels_are_copied() -> None:
    labels = {"zone": "a"}
    checked = names.check_labels(labels)
    assert checked == labels and checked is not labels
    assert names.check_labels(None) == {}


def test_messages() -> None:
    with pytest.raises(ValueError, match=r"^cluster is required$"):
        names.check_cluster_name("")
    with pytest.raises(ValueError, match=r"^invalid cluster name 'a b': "):
        names.check_cluster_name("a b")
    with pytest.raises(ValueError, match=r"^invalid endpoint id 'a b': .* at most 128$"):
        names.check_endpoint_id("a b")
    with pytest.raises(ValueError, match=r"^weight 0 is out of range 1-1000$"):
        names.check_weight(0)
    with pytest.raises(ValueError, match=r"^65 labels: at most 64 are allowed$"):
        names.check_labels({f"k{i}": "" for i in range(65)})
    with pytest.raises(ValueError, match=r"^label '': keys are 1-63 characters, values at "
                                         r"most 255$"):
        names.check_labels({"": ""})

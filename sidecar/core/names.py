"""What makes a cluster name, an endpoint id, a weight and labels valid.

One set of rules for the two ways an endpoint comes to exist: declared in the
configuration file (`EndpointConfig`, `ClusterConfig`, which wrap these in pydantic
validators) and registered at run time (`Registry.register`, which turns the
`ValueError` into `InvalidEndpoint`). The same input is accepted or rejected by both,
with the same message.

Each `check_*` returns the value (labels: a plain `dict` copy) or raises `ValueError`
with a message a person can act on. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sidecar.config.types import NAME_PATTERN

__all__ = [
    "CLUSTER_NAME_PATTERN",
    "ENDPOINT_ID_PATTERN",
    "MAX_ENDPOINT_ID",
    "MAX_LABELS",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "check_cluster_name",
    "check_endpoint_id",
    "check_labels",
    "check_weight",
]

#: Letters, digits, '_', '.', '-'; not starting with '.' or '-'; at most 63 characters.
CLUSTER_NAME_PATTERN = NAME_PATTERN
#: Longest endpoint id given explicitly.
MAX_ENDPOINT_ID = 128
#: An explicit endpoint id: a cluster name's characters plus ':', '[' and ']', so that
#: the default form "host:port" ("10.0.0.1:80", "[::1]:80") can also be written out.
ENDPOINT_ID_PATTERN = r"^[A-Za-z0-9_\[\]][A-Za-z0-9_.:\[\]\-]{0,127}$"
MIN_WEIGHT, MAX_WEIGHT = 1, 1000
#: Labels per endpoint, and the longest key and value (the admin API documents these).
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 64, 63, 255

_CLUSTER_NAME = re.compile(CLUSTER_NAME_PATTERN)
_ENDPOINT_ID = re.compile(ENDPOINT_ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_cluster_name(name: Any) -> str:
    """A cluster's name: letters, digits, '_', '.', '-' (not first: '.', '-'); 1-63."""
    if not isinstance(name, str):
        raise ValueError(f"the cluster name must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError("cluster is required")
    if not _CLUSTER_NAME.fullmatch(name):
        raise ValueError(f"invalid cluster name {name!r}: use letters, digits, '_', '.', '-' "
                         "(not first: '.', '-'), at most 63")
    return name


def check_endpoint_id(endpoint_id: Any) -> str:
    """An endpoint id given explicitly. The default id (the URL's "host:port") is derived
    from a valid URL and is not checked: a 253-character host name makes a longer one."""
    if not isinstance(endpoint_id, str):
        raise ValueError(f"the endpoint id must be a string, got {type(endpoint_id).__name__}")
    if not _ENDPOINT_ID.fullmatch(endpoint_id):
        raise ValueError(f"invalid endpoint id {endpoint_id!r}: use letters, digits, '_', "
                         f"'.', ':', '[', ']', '-' (not first: '.', ':', '-'), "
                         f"at most {MAX_ENDPOINT_ID}")
    return endpoint_id


def check_weight(weight: Any) -> int:
    """A load-balancing weight: an integer in 1..1000."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise ValueError(f"weight must be an integer, got {weight!r}")
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight {weight} is out of range {MIN_WEIGHT}-{MAX_WEIGHT}")
    return weight


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Free-form string labels: at most 64; keys 1-63 characters, values at most 255;
    no control characters (line breaks, tabs, NUL) in either. Any other character is
    allowed."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"labels must be a mapping of strings, got {type(labels).__name__}")
    clean = dict(labels)
    if len(clean) > MAX_LABELS:
        raise ValueError(f"{len(clean)} labels: at most {MAX_LABELS} are allowed")
    for key, value in clean.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"label {key!r}: keys and values must be strings")
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key[:MAX_LABEL_KEY + 1]!r}: keys are 1-{MAX_LABEL_KEY} "
                             f"characters, values at most {MAX_LABEL_VALUE}")
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise ValueError(f"label {key!r}: keys and values must not contain control "
                             "characters (line breaks, tabs, NUL)")
    return clean

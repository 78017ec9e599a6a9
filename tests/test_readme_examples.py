"""Every Jsonnet example in README.md renders and validates, so the docs stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```jsonnet\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_jsonnet_examples() -> None:
    assert BLOCKS


@pytest.mark.parametrize("source", BLOCKS, ids=lambda s: s.splitlines()[-2][:40])
def test_readme_example_validates(source: str, tmp_path: Path) -> None:
    if "sidecar.config(" not in source:
        pytest.skip("a fragment, not a whole config")
    path = tmp_path / "example.jsonnet"
    path.write_text(source)
    load_config(str(path))

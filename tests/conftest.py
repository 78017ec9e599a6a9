"""Shared test configuration.

Every async test runs twice: on uvloop, the loop `sidecar run` uses when it is
installed, and on the default asyncio loop, used when it is not.

The suite runs on the data path as it loads: compiled when `make native` built it,
else (or with SIDECAR_INTERPRETED=1) from the sources; `make test` runs it both ways.
Compiled extensions older than the sources would test code that is not in the
checkout, so the session refuses to start with them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest
import uvloop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, LoopFactory]:
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def pytest_sessionstart(session: pytest.Session) -> None:
    from sidecar.compiled import built, stale

    if not os.environ.get("SIDECAR_INTERPRETED") and built() and stale():
        pytest.exit("the compiled data path is older than its sources: run `make native` "
                    "(or test the sources with SIDECAR_INTERPRETED=1)", returncode=4)

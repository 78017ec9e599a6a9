"""Shared test configuration.

Every async test runs twice: on uvloop, the loop `sidecar run` uses when it is
installed, and on the default asyncio loop, used when it is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, LoopFactory]:
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}

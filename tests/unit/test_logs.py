"""sidecar.observe.logs: JSON lines, and levels that keep libraries' debug output out."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from sidecar.observe.logs import LIBRARY_LEVEL_ENV, request_context, set_level, setup_logging

LIBRARIES = ("grpc._cython.cygrpc", "asyncio", "aiohttp.access", "watchfiles.main", "urllib3")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(LIBRARY_LEVEL_ENV, raising=False)
    # setup_logging sets GRPC_VERBOSITY; make monkeypatch put back what was there.
    monkeypatch.setenv("GRPC_VERBOSITY", "")
    monkeypatch.delenv("GRPC_VERBOSITY")
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {
        name: logging.getLogger(name).level for name in ("sidecar", "admin", "aiohttp.server")}
    yield
    root.handlers[:], level, levels = saved
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def capture(level: str) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, stream)
    return stream


def loggers(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["logger"] for line in stream.getvalue().splitlines()]


def test_debug_is_for_the_sidecars_loggers_only() -> None:
    stream = capture("debug")
    logging.getLogger("sidecar.listener").debug("ours")
    logging.getLogger("admin.server").debug("ours too")
    for name in LIBRARIES:
        logging.getLogger(name).debug("noise")
        logging.getLogger(name).info("noise")
    logging.getLogger("grpc._cython.cygrpc").warning("worth seeing")
    assert loggers(stream) == ["sidecar.listener", "admin.server", "grpc._cython.cygrpc"]


def test_a_quieter_level_applies_to_libraries_too() -> None:
    stream = capture("error")
    logging.getLogger("sidecar").warning("no")
    logging.getLogger("asyncio").warning("no")
    logging.getLogger("asyncio").error("yes")
    assert loggers(stream) == ["asyncio"]


def test_libraries_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIBRARY_LEVEL_ENV, "debug")
    stream = capture("info")
    logging.getLogger("sidecar").debug("no: ours is info")
    logging.getLogger("asyncio").debug("asked for")
    assert loggers(stream) == ["asyncio"]


def test_an_unknown_library_level_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIBRARY_LEVEL_ENV, "chatty")
    stream = capture("debug")
    logging.getLogger("asyncio").info("no")
    assert loggers(stream) == []


def test_a_reload_changes_our_level_not_the_libraries() -> None:
    stream = capture("info")
    set_level("debug")  # what a reload with logging.level=debug does
    logging.getLogger("sidecar.registry").debug("yes")
    logging.getLogger("aiohttp.client").debug("no")
    assert loggers(stream) == ["sidecar.registry"]
    with pytest.raises(ValueError, match="unknown log level"):
        set_level("loud")


def test_grpc_core_verbosity_defaults_to_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    capture("debug")
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")  # the operator's choice stands
    capture("debug")
    assert os.environ["GRPC_VERBOSITY"] == "DEBUG"


@pytest.mark.parametrize(("traceparent", "trace"), [
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",  # one the sidecar started
     "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the client's
     "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # invalid: no trace id logged
    (None, None),
])
def test_a_line_logged_during_a_request_carries_its_ids(
        traceparent: str | bytes | None, trace: str | None) -> None:
    stream = capture("info")
    token = request_context.set((b"rid-1", traceparent))
    try:
        logging.getLogger("sidecar.test").info("inside")
    finally:
        request_context.reset(token)
    logging.getLogger("sidecar.test").info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["request_id"] == "rid-1"
    assert inside.get("trace_id") == trace
    assert "request_id" not in outside and "trace_id" not in outside

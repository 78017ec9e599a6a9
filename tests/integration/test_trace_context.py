"""W3C trace context: a client's traceparent/tracestate pass through unchanged; without
one the sidecar starts a trace (sampled flag as configured); the trace id is logged
beside the request id."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest

from sidecar.core.headers import new_traceparent, trace_id
from sidecar.observe.logs import JsonFormatter

from .conftest import Seen, base_url, url_of

CLIENT_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def sent(seen: Seen, name: bytes) -> list[bytes]:
    return [v for n, v in seen.requests[-1]["headers"] if n.lower() == name]


async def test_client_trace_context_passes_through_unchanged(start_upstream, start_sidecar,
                                                            client):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({"clusters": [{"name": "app", "endpoints": [
        {"url": url_of(server)}]}], "routes": [{"prefix": "/", "cluster": "app"}]})
    headers = {"traceparent": CLIENT_TP, "tracestate": "vendor=opaque"}
    async with client.get(base_url(sidecar) + "/", headers=headers) as resp:
        assert resp.status == 200
    assert sent(seen, b"traceparent") == [CLIENT_TP.encode()]
    assert sent(seen, b"tracestate") == [b"vendor=opaque"]


@pytest.mark.parametrize("sampled", [False, True])
async def test_a_trace_is_started_when_none_came(start_upstream, start_sidecar, client,
                                                 sampled):
    server, seen = await start_upstream()
    sidecar = await start_sidecar({
        "listener": {"trace_sampled": sampled},
        "logging": {"access_log": True},
        "clusters": [{"name": "app", "endpoints": [{"url": url_of(server)}]}],
        "routes": [{"prefix": "/", "cluster": "app"}]})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # formats at emit time, in the request's context
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("sidecar.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        for _ in range(2):
            async with client.get(base_url(sidecar) + "/") as resp:
                assert resp.status == 200
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    started = [sent_in(request, b"traceparent") for request in seen.requests[-2:]]
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", tp) for tp in started)
    assert all(tp.endswith("-01" if sampled else "-00") for tp in started)
    assert started[0] != started[1]  # a new trace per request
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["trace_id"] for line in lines] == [trace_id(tp) for tp in started]
    # The trace the sidecar starts names the request too: one id to search logs, the
    # application's and the tracer's by.
    assert [line["request_id"] for line in lines] == [trace_id(tp) for tp in started]
    assert [sent_in(request, b"x-request-id") for request in seen.requests[-2:]] == [
        trace_id(tp) for tp in started]


async def test_request_id_and_trace_id_are_separate_when_either_came(start_upstream,
                                                                     start_sidecar, client):
    """A client's request id is kept under a new trace; a client's trace (shared by its
    sibling requests) does not name the request: a new request id does."""
    server, seen = await start_upstream()
    sidecar = await start_sidecar({"clusters": [{"name": "app", "endpoints": [
        {"url": url_of(server)}]}], "routes": [{"prefix": "/", "cluster": "app"}]})
    async with client.get(base_url(sidecar) + "/", headers={"X-Request-Id": "abc-1"}) as resp:
        assert resp.status == 200 and resp.headers["X-Request-Id"] == "abc-1"
    assert sent(seen, b"x-request-id") == [b"abc-1"]
    assert trace_id(sent(seen, b"traceparent")[0].decode()) is not None
    ids = set()
    for _ in range(2):
        async with client.get(base_url(sidecar) + "/",
                              headers={"traceparent": CLIENT_TP}) as resp:
            assert resp.status == 200
            ids.add(resp.headers["X-Request-Id"])
    assert len(ids) == 2 and trace_id(CLIENT_TP) not in ids
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)


def sent_in(request: dict[str, Any], name: bytes) -> str:
    [value] = [v for n, v in request["headers"] if n.lower() == name]
    return str(value.decode())


def test_trace_id_rules() -> None:
    assert trace_id(CLIENT_TP) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id(None) is None
    assert trace_id("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None  # all-zero id
    assert trace_id("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is None
    assert trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01") is None
    assert trace_id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x") is not None
    assert trace_id(new_traceparent(False).decode()) is not None

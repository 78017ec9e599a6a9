"""GetStats's request and response translation (admin.convert), without a server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from admin import convert
from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.observe.stats import StatsReport, StatsRow


@pytest.mark.parametrize(("kind", "expected"), [
    (res.STATS_KIND_UNSPECIFIED, ""), (res.STATS_KIND_ROUTE, "routes"),
    (res.STATS_KIND_CLUSTER, "clusters"), (res.STATS_KIND_ENDPOINT, "endpoints"),
])
def test_kinds(kind: int, expected: str) -> None:
    query = convert.stats_request(api.GetStatsRequest(kind=kind, cluster="users"))  # type: ignore[arg-type]
    assert query == convert.StatsQuery(expected, 60.0, "users")


@pytest.mark.parametrize(("window", "seconds"), [
    (None, 60.0), (Duration(), 60.0), (Duration(seconds=15), 15.0),
    (Duration(nanos=500_000_000), 0.5), (Duration(seconds=600), 600.0),
])
def test_windows(window: Duration | None, seconds: float) -> None:
    request = api.GetStatsRequest() if window is None else api.GetStatsRequest(window=window)
    assert convert.stats_request(request).window_seconds == seconds


@pytest.mark.parametrize("request_message", [
    api.GetStatsRequest(window=Duration(seconds=-5)),
    api.GetStatsRequest(window=Duration(seconds=0, nanos=-1)),
    api.GetStatsRequest(window=Duration(seconds=601)),
    api.GetStatsRequest(kind=9),  # type: ignore[arg-type]
])
def test_bad_requests_are_invalid_argument(request_message: api.GetStatsRequest) -> None:
    with pytest.raises(convert.InvalidArgument) as caught:
        convert.stats_request(request_message)
    assert convert.status_for(caught.value)[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_response() -> None:
    busy = StatsRow("users_api", "users", 10, 9, 0.9, 2.5, 0.001, 0.002, 0.0125, 1, 0)
    idle = StatsRow("orders_api", "orders", 0, 0, None, 0.0, None, None, None, 0, 0)
    trips = StatsRow("users", "users", 10, 9, 0.9, 2.5, 0.001, 0.002, 0.0125, 1, 2)
    response = convert.stats_response(StatsReport(20.0, (idle, busy), (trips,)),
                                      1_700_000_000.25)
    assert response.window == Duration(seconds=20)
    assert (response.time.seconds, response.time.nanos) == (1_700_000_000, 250_000_000)
    first, second = response.routes
    assert first.name == "orders_api" and not first.HasField("success_rate")
    assert not first.HasField("latency_p50") and not first.HasField("latency_p99")
    assert (second.requests, second.successes, second.retries) == (10, 9, 1)
    assert second.success_rate == pytest.approx(0.9)
    assert second.requests_per_second == 2.5
    assert second.latency_p99 == Duration(nanos=12_500_000)
    assert response.clusters[0].breaker_trips == 2
    assert list(response.endpoints) == []

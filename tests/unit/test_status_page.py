"""The status page's pure parts: SSE framing, the stats window, the recent-events ring,
the session table and the same-origin rule."""

from __future__ import annotations

import json
import ssl

import pytest
from aiohttp.test_utils import make_mocked_request

from admin.recent import RecentEvents
from admin.sse import sse_frame
from admin.status import parse_window
from admin.web_auth import Sessions, cleartext_from_network, same_origin
from sidecar.events import EventBus, EventKind


def test_sse_frame_is_one_event_with_its_json_on_one_line() -> None:
    frame = sse_frame("breaker_changed", {"reason": "line one\nline two", "n": 1}, 42)
    assert frame.endswith(b"\n\n")
    lines = frame.decode().rstrip("\n").split("\n")
    assert lines[:2] == ["id: 42", "event: breaker_changed"]
    assert len(lines) == 3 and lines[2].startswith("data: ")
    assert json.loads(lines[2][6:]) == {"reason": "line one\nline two", "n": 1}
    assert sse_frame("snapshot", {}).startswith(b"event: snapshot\n")


@pytest.mark.parametrize(("text", "seconds"), [("1m", 60), ("10m", 600), ("90s", 90),
                                               ("30", 30), (" 2m ", 120)])
def test_parse_window(text: str, seconds: float) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "11m", "601", "1h", "-1m", "", "1.5m", "m"])
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_recent_events_keep_the_newest_from_the_first() -> None:
    bus = EventBus()
    recent = RecentEvents(bus, size=3)
    for i in range(5):
        bus.publish(EventKind.PANIC_CHANGED, cluster=f"c{i}", panic=True)
    assert [e.cluster for e in recent.events()] == ["c2", "c3", "c4"]
    assert recent.size == 3
    recent.close()
    recent.close()
    bus.publish(EventKind.PANIC_CHANGED, cluster="after", panic=False)
    assert [e.cluster for e in recent.events()] == ["c2", "c3", "c4"]
    with pytest.raises(ValueError):
        RecentEvents(bus, size=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_stay_bounded() -> None:
    clock = FakeClock()
    sessions = Sessions(max_sessions=2, lifetime=60, clock=clock)
    first = sessions.create("token-a")
    assert sessions.token(first) == "token-a"
    assert first != "token-a" and len(first) >= 40
    second = sessions.create("token-b")
    third = sessions.create("token-c")  # the oldest goes
    assert len(sessions) == 2
    assert sessions.token(first) is None
    assert sessions.token(second) == "token-b"
    clock.now += 60
    assert sessions.token(third) is None  # expired
    assert sessions.token("made-up") is None
    fresh = sessions.create("token-d")  # expired ones are dropped first
    assert len(sessions) == 1
    sessions.end(fresh)
    sessions.end(fresh)
    assert sessions.token(fresh) is None
    with pytest.raises(ValueError):
        Sessions(max_sessions=0)


@pytest.mark.parametrize(("headers", "allowed"), [
    ({}, True),  # not a browser
    ({"Origin": "http://127.0.0.1:9902"}, True),
    ({"Origin": "http://127.0.0.1:9903"}, False),
    ({"Origin": "https://127.0.0.1:9902"}, False),
    ({"Origin": "null"}, False),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({"Sec-Fetch-Site": "cross-site"}, False),
])
def test_same_origin(headers: dict[str, str], allowed: bool) -> None:
    request = make_mocked_request("POST", "/login",
                                  headers={"Host": "127.0.0.1:9902", **headers})
    assert same_origin(request) is allowed


class _Transport:
    """Just what aiohttp's request reads of its transport: the peer."""

    def __init__(self, peer: str) -> None:
        self._extra = {"peername": (peer, 50000)}

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._extra.get(name, default)


@pytest.mark.parametrize(("peer", "tls", "refused"), [
    ("127.0.0.1", False, False), ("127.8.9.1", False, False), ("::1", False, False),
    ("::ffff:127.0.0.1", False, False),  # IPv4-mapped loopback
    ("10.1.2.3", False, True), ("2001:db8::1", False, True), ("::ffff:10.0.0.1", False, True),
    ("10.1.2.3", True, False),  # over TLS a token does not travel in clear
])
def test_credentials_over_plain_http_from_another_host_are_refused(
        peer: str, tls: bool, refused: bool) -> None:
    request = make_mocked_request("GET", "/", transport=_Transport(peer),
                                  sslcontext=ssl.create_default_context() if tls else None)
    assert cleartext_from_network(request) is refused

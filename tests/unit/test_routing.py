"""RouteTable: (host, method, target) in, route / cluster / upstream target or 404 / 405 out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from sidecar.config.model import RouteConfig
from sidecar.core.routing import (
    ORCHESTRATOR_ROUTE,
    RouteMatch,
    RouteTable,
    host_without_port,
    normalize_path,
    routable_path,
    valid_host,
)
from sidecar.errors import BadRequest, MethodNotAllowed, NoRoute, UnknownCluster


def route(prefix: str, cluster: str = "web", **kwargs: Any) -> RouteConfig:
    return RouteConfig(prefix=prefix, cluster=cluster, **kwargs)


def table(routes: Iterable[RouteConfig], orchestrator_prefix: str | None = None,
          clusters: Iterable[str] = ()) -> RouteTable:
    known = frozenset(clusters)
    return RouteTable(tuple(routes), orchestrator_prefix, known.__contains__)


def match(t: RouteTable, target: str, *, host: str = "svc.local",
          method: str = "GET") -> RouteMatch:
    return t.match(host, method, target)


# ------------------------------------------------------------ prefix matching


@pytest.mark.parametrize("target", ["/api/users", "/api/users/42", "/api/users?x=1",
                                    "/api/users/", "/api/users/42/posts?a=b"])
def test_prefix_matches_on_segment_boundary(target: str) -> None:
    t = table([route("/api/users", "users")])
    assert match(t, target).cluster == "users"


@pytest.mark.parametrize("target", ["/api/usersX", "/api/users-admin", "/api/user", "/api",
                                    "/other", "/API/users"])
def test_prefix_does_not_match_inside_a_segment(target: str) -> None:
    t = table([route("/api/users", "users")])
    with pytest.raises(NoRoute) as info:
        match(t, target)
    assert info.value.status == 404


def test_prefix_ending_in_slash_matches_anything_below_but_not_itself_without_slash() -> None:
    t = table([route("/static/", "files")])
    assert match(t, "/static/").cluster == "files"
    assert match(t, "/static/css/site.css").cluster == "files"
    with pytest.raises(NoRoute):
        match(t, "/static")
    with pytest.raises(NoRoute):
        match(t, "/staticX")


def test_root_prefix_matches_everything() -> None:
    t = table([route("/", "default")])
    for target in ("/", "/a", "/a/b?c=d", "/?q"):
        assert match(t, target).cluster == "default"


def test_query_is_not_part_of_the_path_match() -> None:
    t = table([route("/api", "api")])
    # "?" after the prefix ends the path; a prefix-looking query does not help.
    assert match(t, "/api?next=/x").target == "/api?next=/x"
    with pytest.raises(NoRoute):
        match(t, "/x?/api")


def test_empty_table_is_404() -> None:
    with pytest.raises(NoRoute):
        match(table([]), "/")


# ------------------------------------------------------------ precedence


def test_longest_prefix_wins_regardless_of_config_order() -> None:
    t = table([route("/", "root"), route("/api", "api"), route("/api/users", "users"),
               route("/api/users/admin", "admin")])
    assert match(t, "/api/users/admin/1").cluster == "admin"
    assert match(t, "/api/users/1").cluster == "users"
    assert match(t, "/api/orders").cluster == "api"
    assert match(t, "/health").cluster == "root"


def test_at_equal_prefix_exact_host_beats_wildcard_beats_no_host() -> None:
    t = table([route("/api", "any"), route("/api", "wild", host="*.example.com"),
               route("/api", "exact", host="api.example.com")])
    assert match(t, "/api", host="api.example.com").cluster == "exact"
    assert match(t, "/api", host="www.example.com").cluster == "wild"
    assert match(t, "/api", host="other.org").cluster == "any"


def test_longer_prefix_beats_more_specific_host() -> None:
    t = table([route("/api", "exact", host="api.example.com"), route("/api/v2", "v2")])
    assert match(t, "/api/v2/x", host="api.example.com").cluster == "v2"


def test_equal_routes_keep_config_order() -> None:
    t = table([route("/api", "first", name="a"), route("/api", "second", name="b")])
    assert match(t, "/api").cluster == "first"


def test_routes_property_is_in_match_order() -> None:
    t = table([route("/", "root"), route("/a", "a", host="*.x.com"), route("/a", "b"),
               route("/a", "c", host="h.x.com", name="c")])
    assert [(r.prefix, r.host) for r in t.routes] == [
        ("/a", "h.x.com"), ("/a", "*.x.com"), ("/a", None), ("/", None)]


# ------------------------------------------------------------ hosts


@pytest.mark.parametrize(("host", "matches"), [
    ("a.example.com", True),
    ("a.b.example.com", True),
    ("example.com", False),
    (".example.com", False),
    ("aexample.com", False),
    ("a.example.com.evil.org", False),
])
def test_wildcard_host(host: str, matches: bool) -> None:
    t = table([route("/", "wild", host="*.example.com")])
    if matches:
        assert match(t, "/", host=host).cluster == "wild"
    else:
        with pytest.raises(NoRoute):
            match(t, "/", host=host)


def test_exact_host_must_match_exactly() -> None:
    t = table([route("/", "exact", host="api.example.com")])
    assert match(t, "/", host="api.example.com").cluster == "exact"
    for host in ("x.api.example.com", "example.com", "api.example.co", ""):
        with pytest.raises(NoRoute):
            match(t, "/", host=host)


def test_route_host_is_lower_cased_by_the_config() -> None:
    t = table([route("/", "exact", host="API.Example.COM")])
    assert match(t, "/", host="api.example.com").cluster == "exact"


# ------------------------------------------------------------ methods


def test_method_filter_allows_listed_methods() -> None:
    t = table([route("/api", "api", methods=("POST", "PUT"))])
    assert match(t, "/api", method="POST").cluster == "api"
    assert match(t, "/api", method="PUT").cluster == "api"


def test_get_implies_head() -> None:
    t = table([route("/api", "api", methods=("GET",))])
    assert match(t, "/api", method="HEAD").cluster == "api"
    with pytest.raises(MethodNotAllowed) as info:
        match(t, "/api", method="POST")
    assert info.value.allowed == ("GET", "HEAD")


def test_head_is_not_implied_without_get() -> None:
    t = table([route("/api", "api", methods=("POST",))])
    with pytest.raises(MethodNotAllowed) as info:
        match(t, "/api", method="HEAD")
    assert info.value.allowed == ("POST",)


def test_405_carries_the_sorted_union_of_methods_of_all_matching_routes() -> None:
    t = table([
        route("/api", "a", methods=("PUT", "GET"), name="a"),
        route("/api/items", "b", methods=("POST",), name="b"),
        route("/api/items", "c", methods=("PATCH",), host="*.example.com", name="c"),
        route("/api/items", "other-host", methods=("OPTIONS",), host="other.org", name="d"),
        route("/elsewhere", "e", methods=("TRACE",), name="e"),
    ])
    with pytest.raises(MethodNotAllowed) as info:
        match(t, "/api/items/1", host="www.example.com", method="DELETE")
    error = info.value
    assert error.status == 405
    assert error.allowed == ("GET", "HEAD", "PATCH", "POST", "PUT")


def test_method_mismatch_falls_through_to_a_shorter_route_that_allows_it() -> None:
    t = table([route("/api", "read", methods=("GET",)), route("/", "rest")])
    assert match(t, "/api/x", method="GET").cluster == "read"
    assert match(t, "/api/x", method="POST").cluster == "rest"


def test_no_method_filter_allows_any_method() -> None:
    t = table([route("/", "any")])
    for method in ("GET", "DELETE", "PURGE", "OPTIONS"):
        assert match(t, "/", method=method).cluster == "any"


def test_404_when_no_path_matches_even_if_method_would_not() -> None:
    t = table([route("/api", "api", methods=("GET",))])
    with pytest.raises(NoRoute):
        match(t, "/other", method="POST")


# ------------------------------------------------------------ rewrite


@pytest.mark.parametrize(("prefix", "rewrite", "target", "expected"), [
    ("/api", None, "/api/users?x=1", "/api/users?x=1"),
    ("/api", "/v2", "/api/users", "/v2/users"),
    ("/api", "/v2", "/api", "/v2"),
    ("/api", "/v2", "/api/", "/v2/"),
    ("/api", "/v2", "/api?x=1&y=/api", "/v2?x=1&y=/api"),
    ("/api", "/v2", "/api/users?x=1", "/v2/users?x=1"),
    ("/api", "/", "/api/users", "/users"),
    ("/api", "/", "/api", "/"),
    ("/api", "/", "/api?x=1", "/?x=1"),
    ("/api", "/v2/", "/api/users", "/v2/users"),
    ("/api", "/v2/", "/api", "/v2/"),
    ("/api/", "/", "/api/users", "/users"),
    ("/api/", "/", "/api/", "/"),
    ("/api/", "/v2", "/api/users", "/v2/users"),
    ("/api/", "/v2/", "/api/users/", "/v2/users/"),
    ("/api/", "/v2/", "/api/?q", "/v2/?q"),
    ("/", "/base", "/users", "/base/users"),
    ("/", "/base", "/", "/base"),
    ("/", "/base", "/?q=1", "/base?q=1"),
    ("/", "/base/", "/users/", "/base/users/"),
])
def test_prefix_rewrite(prefix: str, rewrite: str | None, target: str, expected: str) -> None:
    t = table([route(prefix, "web", prefix_rewrite=rewrite)])
    assert match(t, target).target == expected


def test_match_carries_route_name_timeout_and_cluster() -> None:
    t = table([route("/api", "api", name="api-route", timeout="250ms"), route("/", "root")])
    found = match(t, "/api/x")
    assert (found.route.name, found.route.timeout, found.cluster) == ("api-route", 0.25, "api")
    assert match(t, "/x").route.name == "/"  # unnamed routes are named by their prefix


# ------------------------------------------------------------ orchestrator route


ORCH = "/orchestrator/"


def test_orchestrator_route_strips_prefix_and_cluster() -> None:
    t = table([], ORCH, clusters=["billing"])
    found = match(t, "/orchestrator/billing/v1/invoices/7")
    assert found.route.name == ORCHESTRATOR_ROUTE
    assert (found.cluster, found.target) == ("billing", "/v1/invoices/7")


@pytest.mark.parametrize(("target", "upstream"), [
    ("/orchestrator/billing/a/b?x=1&y=2", "/a/b?x=1&y=2"),
    ("/orchestrator/billing?x=1", "/?x=1"),
    ("/orchestrator/billing", "/"),
    ("/orchestrator/billing/", "/"),
    ("/orchestrator/billing/a/?next=/orchestrator/x", "/a/?next=/orchestrator/x"),
])
def test_orchestrator_route_keeps_query_and_slashes(target: str, upstream: str) -> None:
    t = table([], ORCH, clusters=["billing"])
    assert match(t, target).target == upstream


def test_orchestrator_route_allows_any_method_and_host() -> None:
    t = table([], ORCH, clusters=["billing"])
    for method in ("GET", "POST", "DELETE", "PURGE"):
        assert match(t, "/orchestrator/billing/x", method=method, host="any.host").cluster \
            == "billing"


def test_orchestrator_route_unknown_cluster_is_404() -> None:
    t = table([], ORCH, clusters=["billing"])
    for target in ("/orchestrator/nope/x", "/orchestrator/", "/orchestrator//x",
                   "/orchestrator?x", "/orchestrator"):
        with pytest.raises(NoRoute):
            match(t, target)


def test_orchestrator_route_asks_cluster_exists_only_for_valid_names() -> None:
    asked: list[str] = []

    def exists(name: str) -> bool:
        asked.append(name)
        return True

    t = RouteTable((), ORCH, exists)
    assert match(t, "/orchestrator/my_svc.v-2/x").cluster == "my_svc.v-2"
    for bad in ("/orchestrator/bad%20name/x", "/orchestrator/" + "a" * 64 + "/x",
                "/orchestrator/-x~/y"):
        with pytest.raises(NoRoute):
            match(t, bad)
    assert asked == ["my_svc.v-2"]


def test_orchestrator_route_sees_clusters_that_appear_later() -> None:
    clusters: set[str] = set()
    t = RouteTable((), ORCH, clusters.__contains__)
    with pytest.raises(NoRoute):
        match(t, "/orchestrator/late/x")
    clusters.add("late")
    assert match(t, "/orchestrator/late/x").cluster == "late"


def test_declared_longer_prefix_beats_orchestrator_route() -> None:
    t = table([route("/orchestrator/billing/special", "special", prefix_rewrite="/s")],
              ORCH, clusters=["billing", "special"])
    found = match(t, "/orchestrator/billing/special/1?x")
    assert (found.route.name, found.cluster, found.target) == (
        "/orchestrator/billing/special", "special", "/s/1?x")
    assert match(t, "/orchestrator/billing/other").cluster == "billing"


def test_orchestrator_route_beats_shorter_declared_prefix() -> None:
    t = table([route("/", "root"), route("/orch", "orch")], ORCH, clusters=["billing"])
    assert match(t, "/orchestrator/billing/x").cluster == "billing"
    assert match(t, "/orch/x").cluster == "orch"
    assert match(t, "/x").cluster == "root"


def test_declared_route_with_equal_prefix_comes_first() -> None:
    t = table([route("/orchestrator/", "declared")], ORCH, clusters=["billing"])
    assert match(t, "/orchestrator/billing/x").cluster == "declared"


@pytest.mark.parametrize("prefix", [None, ""])
def test_orchestrator_route_can_be_turned_off(prefix: str | None) -> None:
    t = table([], prefix, clusters=["billing"])
    assert t.routes == ()
    with pytest.raises(NoRoute):
        match(t, "/orchestrator/billing/x")


def test_custom_orchestrator_prefix() -> None:
    t = table([], "/o/", clusters=["billing"])
    assert match(t, "/o/billing/x?y").target == "/x?y"
    with pytest.raises(NoRoute):
        match(t, "/orchestrator/billing/x")


# ------------------------------------------------------------ normalize_path


@pytest.mark.parametrize(("target", "expected"), [
    ("/api/public/../admin", "/api/admin"),
    ("/a/./b", "/a/b"),
    ("/a/b/./", "/a/b/"),
    ("/a/.", "/a/"),
    ("/a/..", "/"),
    ("/a/../", "/"),
    ("/a/b/..", "/a/"),
    ("/..", "/"),
    ("/../a", "/a"),
    ("/../../a/../../b", "/b"),
    ("/./", "/"),
    ("/.", "/"),
    ("/a/b/c/../../d", "/a/d"),
    ("/a//../b", "/a/b"),
    ("/a/.b/..c/...", "/a/.b/..c/..."),
    ("/a/../b?x=/../y&z=./w", "/b?x=/../y&z=./w"),
    ("/a/..?q", "/?q"),
    ("/plain/path?x=1", "/plain/path?x=1"),
])
def test_normalize_path_removes_dot_segments(target: str, expected: str) -> None:
    assert normalize_path(target) == expected


def test_normalized_target_routes_by_what_the_upstream_serves() -> None:
    t = table([route("/api/public", "public"), route("/", "root")])
    assert match(t, normalize_path("/api/public/../admin")).cluster == "root"


def test_route_table_is_not_mutated_by_matching() -> None:
    t = table([route("/a", "a"), route("/", "root")], ORCH, clusters=["x"])
    before = t.routes
    for target in ("/a", "/b", "/orchestrator/x/y"):
        match(t, target)
    assert t.routes == before


def test_orchestrator_unknown_cluster_never_falls_to_a_catch_all() -> None:
    catch_all = RouteConfig(name="all", prefix="/", cluster="app")
    t = table([catch_all], ORCH, clusters=["app", "billing"])
    with pytest.raises(UnknownCluster) as caught:
        match(t, "/orchestrator/nope/x")
    assert (caught.value.status, caught.value.code) == (404, "unknown_cluster")
    # Known clusters and the bare prefix behave as before.
    assert match(t, "/orchestrator/billing/x").cluster == "billing"
    assert match(t, "/orchestrator/").cluster == "app"


def test_a_declared_longer_prefix_still_beats_the_orchestrator_route() -> None:
    legacy = RouteConfig(name="legacy", prefix="/orchestrator/legacy", cluster="app")
    t = table([legacy], ORCH, clusters=["app"])
    assert match(t, "/orchestrator/legacy/x").route.name == "legacy"


@pytest.mark.parametrize(("target", "routed"), [
    ("/api/users?x=1", "/api/users?x=1"),            # the usual case, untouched
    ("/api/%2e%2e/admin/x", "/admin/x"),              # encoded dot segments resolved
    ("/api/%2E./admin", "/admin"),
    ("/api/./v1/../users", "/api/users"),
    ("/a/%2ex", "/a/.x"),                             # %2E is unreserved: decoded
    ("/a?next=/b/../c", "/a?next=/b/../c"),           # the query is data
    ("/a%20b", "/a%20b"),                             # other escapes stay as sent
])
def test_routing_decides_on_the_path_the_upstream_gets(target: str, routed: str) -> None:
    assert routable_path(target) == routed


@pytest.mark.parametrize("target", ["/a/%2Fb", "/a/%2fb", "/a%5Cb", "/a\\b", "/a#frag"])
def test_paths_that_could_bypass_a_route_are_refused(target: str) -> None:
    with pytest.raises(BadRequest):
        routable_path(target)


@pytest.mark.parametrize(("host", "name"), [
    ("Example.COM:8080", "example.com"), ("example.com", "example.com"),
    ("[::1]:80", "[::1]"), ("[::1]", "[::1]"), ("a.test:x", "a.test:x"),
])
def test_host_routes_match_the_host_without_its_port(host: str, name: str) -> None:
    assert host_without_port(host) == name


@pytest.mark.parametrize("host", [
    "example.com", "Example.COM:8080", "127.0.0.1:8000", "[::1]", "[::1]:80",
    "[2001:db8::7]:443", "a:", "", "svc-1.ns.svc.cluster.local", "a_b~c", "%41.test",
    "a;b", "a,b", "a!$&'()*+=b",  # sub-delims are reg-name characters (RFC 3986)
])
def test_valid_host_values(host: str) -> None:
    assert valid_host(host.encode())


@pytest.mark.parametrize("host", [
    "a b", "a/b", "a\\b", "user@a", "a:80:90", "a:x", "a:80 ", " a", "a\tb", "é.test",
    "[::1", "::1", "[::1]x", "a?b", "a#b", '"a"', "a<b>",
])
def test_invalid_host_values(host: str) -> None:
    assert not valid_host(host.encode())


@pytest.mark.parametrize("byte", range(0x80, 0x100))
def test_no_byte_past_ascii_is_valid_in_a_host(byte: int) -> None:
    # Latin-1 has digits by str.isdigit() (b"\xb2" is superscript two): never a port.
    assert not valid_host(b"a:" + bytes([byte]))
    assert not valid_host(bytes([byte]) + b".test")

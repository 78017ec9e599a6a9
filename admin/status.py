"""The live status page on the admin HTTP port: what the sidecar is doing, for people.

Routes (mounted on the admin HTTP app by `admin.http.make_admin_app`):

* `GET /` and `/status`: the page (`admin/page/index.html`), plain HTML with its CSS
  and script under `/static/` (no build step, no external resource).
* `GET /api/status`: the page's data as JSON: lifecycle state and server info (as
  GetServerInfo gives them), each cluster with its endpoints (as ListEndpoints gives
  them: status, breaker, health with the last results, active requests), the routes
  of the serving configuration, and the recent events (`admin.recent`).
* `GET /api/stats?window=1m`: GetStats as JSON, which the page polls.
* `GET /events`: WatchStatus as server-sent events (`admin.sse`).
* `GET`/`POST /login`, `POST /logout`: the login form when `admin.auth` is set
  (`admin.web_auth`).

Every message goes through the same `admin.convert` functions as the gRPC API and is
written as proto JSON, so the page, `sidecarctl -o json` and the RPCs never disagree.
The page only reads: nothing here changes the sidecar. With `admin.auth` configured
every route but the static files needs the read role; the page and its responses carry
a Content-Security-Policy that allows only this origin's own files (no inline script).
`/metrics`, `/live` and `/ready` are not this module's and stay open.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.admin.v1 import resources_pb2 as res
from sidecar.config.model import RouteConfig
from sidecar.core.clock import Clock, SystemClock
from sidecar.registry import EndpointInfo, Registry

from . import convert
from .auth import Authenticator, AuthError, Identity
from .ops import ServerInfo, current_log_level, software_version
from .recent import RecentEvents
from .sse import EventStream, message_dict
from .watch import DEFAULT_MAX_WATCHERS, WatchHub
from .web_auth import WebAuth, cleartext_from_network, same_origin

if TYPE_CHECKING:
    from sidecar.app import Sidecar

    from .ops import Operations

__all__ = ["MAX_STATS_WINDOW", "PAGE_HEADERS", "StatsFn", "StatusPage", "parse_window"]

#: GetStats over `window` seconds (the page asks for 1m).
StatsFn = Callable[[float], api.GetStatsResponse]
#: The longest window the stats keep (GetStats' limit).
MAX_STATS_WINDOW = 600.0

#: Headers of every response of the page's routes. The policy allows this origin's own
#: script, styles and connections and nothing else: no inline script can run even if
#: some text ever slipped into the HTML unescaped, and no other site can frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; connect-src 'self'; object-src 'none'; "
                                "base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, browsers send "Origin: null" on the login POST.
    "Referrer-Policy": "same-origin",
}
_ROUTE_PREFIX = "status:"  # names of this module's aiohttp routes
_STATIC = {"status.css": "text/css", "status.js": "text/javascript",
           "favicon.svg": "image/svg+xml"}
_EVENT_KINDS = tuple(field.name for field in
                     res.StatusEvent.DESCRIPTOR.oneofs_by_name["change"].fields)
_CLEARTEXT_LOGIN = ("Log in over loopback (a port forward): this page is served over plain "
                    "HTTP, and a token sent across the network would travel in clear.")
_WINDOW = re.compile(r"^([0-9]{1,4})(s|m)?$")

_Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


def parse_window(text: str) -> float:
    """`/api/stats?window=`: "1m", "90s" or "90" (seconds), up to 10m; ValueError if not."""
    match = _WINDOW.match(text.strip())
    if match is None:
        raise ValueError(f"window {text!r}: expected seconds or minutes, e.g. 1m or 90s")
    seconds = float(match.group(1)) * (60 if match.group(2) == "m" else 1)
    if not 0 < seconds <= MAX_STATS_WINDOW:
        raise ValueError(f"window {text!r}: must be more than 0 and at most 10m")
    return seconds


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers or None)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _asset(name: str) -> str:
    return (resources.files("admin") / "page" / name).read_text(encoding="utf-8")


class StatusPage:
    """The status page's routes over one sidecar's registry.

    Parameters:
        registry: the endpoints and clusters shown.
        info: the lifecycle state and server info (GetServerInfo's source).
        routes: the serving configuration's routes.
        recent: the recent events, shown on first load.
        auth: who may see the page.
        stats: GetStats over a window; None: the page shows no figures.
        max_streams: `/events` streams open at once.
        clock: the clock of the registry's breakers (their times are monotonic).
    """

    def __init__(self, registry: Registry, info: Callable[[], ServerInfo],
                 routes: Callable[[], Sequence[RouteConfig]], recent: RecentEvents,
                 auth: WebAuth, *, stats: StatsFn | None = None,
                 max_streams: int = DEFAULT_MAX_WATCHERS, clock: Clock | None = None) -> None:
        self._registry = registry
        self._info = info
        self._routes = routes
        self._recent = recent
        self.auth = auth
        self._stats = stats
        self._wall = convert.WallTime(clock or SystemClock())
        self.hub = WatchHub(registry, max_queue=256, max_watchers=max_streams)
        self.stream = EventStream(self.hub, self._observe)
        self._index = _asset("index.html")
        self._login = _asset("login.html")
        self._static = {name: (_asset(name), kind) for name, kind in _STATIC.items()}

    @classmethod
    def for_sidecar(cls, sidecar: Sidecar, operations: Operations,
                    recent: RecentEvents) -> StatusPage:
        """The page of a running sidecar, with its `admin.auth` and bounds. Raises
        AuthSetupError (an OSError) when a configured secret cannot be read."""
        admin = sidecar.config.admin
        return cls(sidecar.registry, operations.info, lambda: sidecar.config.routes, recent,
                   WebAuth(Authenticator(admin.auth)), stats=_stats_of(sidecar),
                   max_streams=admin.max_watchers)

    # ------------------------------------------------------------ wiring

    def mount(self, app: web.Application) -> None:
        """Add the page's routes to `app`; its streams end when `app` shuts down."""
        guard = self._guard
        for path, name in (("/", "root"), ("/status", "page")):
            app.router.add_get(path, guard(self._page, page=True), name=_ROUTE_PREFIX + name)
        app.router.add_get("/api/status", guard(self._status), name="status:api-status")
        app.router.add_get("/api/stats", guard(self._stats_json), name="status:api-stats")
        app.router.add_get("/events", guard(self._events), name="status:events")
        app.router.add_get("/login", self._login_form, name="status:login")
        app.router.add_post("/login", self._login_post, name="status:login-post")
        app.router.add_post("/logout", self._logout, name="status:logout")
        for name in self._static:
            app.router.add_get(f"/static/{name}", self._asset_handler,
                               name=f"{_ROUTE_PREFIX}static-{name.replace('.', '-')}")
        app.on_response_prepare.append(self._headers)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        # Before aiohttp waits for handlers to finish: open /events streams end now.
        self.hub.close()

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        route = request.match_info.route.name
        if route is None or not route.startswith(_ROUTE_PREFIX):
            return  # /metrics, /live, /ready keep their own headers
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")

    def _guard(self, handler: _Handler, *, page: bool = False
               ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """`handler`, for callers with the read role only. Without credentials a page
        request goes to the login form; a data request gets 401."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                identity = self.auth.identify(request)
            except AuthError as exc:
                if exc.code.name == "PERMISSION_DENIED":
                    return _error(403, "permission_denied", str(exc))
                return _error(401, "unauthenticated", str(exc),
                              **{"WWW-Authenticate": 'Bearer realm="sidecar-admin"'})
            if identity is None:
                if page:
                    return _see_other("/login")
                return _error(401, "unauthenticated",
                              "log in at /login, or send 'Authorization: Bearer TOKEN'",
                              **{"WWW-Authenticate": 'Bearer realm="sidecar-admin"'})
            return await handler(request, identity)

        return guarded

    # ------------------------------------------------------------ the page

    async def _page(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        return web.Response(text=self._index, content_type="text/html")

    async def _asset_handler(self, request: web.Request) -> web.StreamResponse:
        name = request.path.rsplit("/", 1)[1]
        text, kind = self._static[name]
        # The files reveal nothing, and the login form needs the styles: open.
        return web.Response(text=text, content_type=kind,
                            headers={"Cache-Control": "no-cache"})

    def _login_page(self, message: str = "", status: int = 200) -> web.Response:
        note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
        return web.Response(text=self._login.replace("<!--message-->", note),
                            content_type="text/html", status=status)

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        if not self.auth.enabled:
            return _see_other("/")
        if cleartext_from_network(request):
            return self._login_page(_CLEARTEXT_LOGIN, 403)
        return self._login_page()

    async def _login_post(self, request: web.Request) -> web.StreamResponse:
        if not self.auth.enabled:
            return _see_other("/")
        if not same_origin(request):
            return _error(403, "cross_origin", "the login form must be sent from this page")
        if cleartext_from_network(request):
            return self._login_page(_CLEARTEXT_LOGIN, 403)
        wait = self.auth.login_wait(request)
        if wait > 0:
            response = self._login_page("Too many attempts: try again in a minute.", 429)
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not token.strip():
            return self._login_page("Enter a token.", 400)
        response = _see_other("/")
        try:
            self.auth.login(request, response, token.strip())
        except AuthError:
            # One message for every refusal: a guesser learns nothing from it.
            return self._login_page("That token was refused.", 401)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return _error(403, "cross_origin", "log out from this page")
        response = _see_other("/login" if self.auth.enabled else "/")
        self.auth.logout(request, response)
        return response

    # ------------------------------------------------------------ data

    def _observe(self, info: EndpointInfo) -> convert.Observed | None:
        members = self._registry.clusters.get(info.cluster)
        endpoint = members.endpoints.get(info.id) if members is not None else None
        return convert.observed(endpoint.host, self._wall) if endpoint is not None else None

    def snapshot(self, identity: Identity | None = None) -> dict[str, Any]:
        """The page's data now, as /api/status answers it."""
        registry = self._registry
        server = convert.server_info_to_proto(self._info(), registry.config_info,
                                              current_log_level(), software_version())
        clusters = []
        for name, members in sorted(registry.clusters.items()):
            settings = members.settings
            clusters.append({
                "name": name,
                "declared": members.declared,
                "lbPolicy": settings.lb_policy,
                "healthChecks": settings.health_check is not None,
                "circuitBreaker": settings.circuit_breaker.enabled,
                "panic": members.hosts.panic,
                "endpoints": [
                    message_dict(convert.endpoint_to_proto(e.info(),
                                                           convert.observed(e.host, self._wall)))
                    for _, e in sorted(members.endpoints.items())],
            })
        routes = [{"name": r.route_name, "prefix": r.prefix, "host": r.host or "",
                   "methods": list(r.methods or ()), "cluster": r.cluster}
                  for r in self._routes()]
        events = [message_dict(convert.event_to_proto(e)) for e in self._recent.events()
                  if e.kind in convert.STREAMED_KINDS]
        return {
            "sequence": registry.sequence,
            "server": message_dict(server),
            "clusters": clusters,
            "routes": routes,
            "events": events,
            # The names of /events' messages besides "snapshot": StatusEvent's changes.
            "eventKinds": list(_EVENT_KINDS),
            "statsAvailable": self._stats is not None,
            "auth": {"enabled": self.auth.enabled,
                     "name": identity.name if identity is not None else "",
                     "role": identity.role.name.lower() if identity is not None else ""},
        }

    async def _status(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        return web.json_response(self.snapshot(identity if self.auth.enabled else None))

    async def _stats_json(self, request: web.Request, identity: Identity
                          ) -> web.StreamResponse:
        if self._stats is None:
            return _error(404, "not_available", "this sidecar keeps no request statistics")
        try:
            window = parse_window(request.query.get("window", "1m"))
        except ValueError as exc:
            return _error(400, "invalid_argument", str(exc))
        return web.json_response(message_dict(self._stats(window)))

    async def _events(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        return await self.stream.handle(request)


def _stats_of(sidecar: Sidecar) -> StatsFn:
    """GetStats of every kind over a window, as the RPC answers it."""
    stats = sidecar.stats

    def query(window: float) -> api.GetStatsResponse:
        return convert.stats_response(stats.query("", window), time.time())

    return query

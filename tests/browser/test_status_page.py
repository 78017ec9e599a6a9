"""The status page in a real headless browser (chromium through selenium), against a real
sidecar on port 0 changed through real gRPC calls.

The page lists the endpoints; an endpoint registered through gRPC appears without a
reload (the page follows /events); a tripped breaker shows OPEN with its reason, in the
endpoint's row and in the recent events; the page fits a phone's width; with
`admin.auth` the page needs a login. Screenshots are saved under the test's temporary
directory, and also in $SIDECAR_SCREENSHOT_DIR when it is set (that is how
docs/status-page.png is made: SIDECAR_SCREENSHOT_DIR=docs pytest tests/browser).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from sidecar.admin.v1 import admin_service_pb2 as api
from sidecar.app import Sidecar
from tests.integration.conftest import url_of
from tests.integration.status_support import (
    admin_url,
    bearer,
    grpc_stub,
    new_tokens,
    page_config,
    register,
)

from .conftest import Browser

# The page does not depend on the loop; once (on uvloop, as `sidecar run`) is enough.
pytestmark = pytest.mark.asyncio(loop_factories=["uvloop"])

Start = Any


def js(source: str) -> Callable[[Any], Any]:
    """A wait condition: `source` run in the page (one atomic read, never stale)."""
    return lambda driver: driver.execute_script(source)


def row_text(endpoint: str, selector: str = "") -> Callable[[Any], Any]:
    return js(f"""const row = document.querySelector('tr[data-endpoint="{endpoint}"]');
                  const cell = row && ({'row.querySelector("' + selector + '")' if selector
                                       else 'row'});
                  return cell ? cell.textContent : null;""")


def screenshot_paths(tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / name]
    extra = os.environ.get("SIDECAR_SCREENSHOT_DIR")
    if extra:
        paths.append(Path(extra) / name)
    return paths


async def _traffic(sidecar: Sidecar) -> None:
    """Some requests, so the figures are not all zero: successes on "users", a few 500s
    (answered by the application, neither retried nor a breaker failure) on "all"."""
    listener = f"http://127.0.0.1:{sidecar.ports['listener']}"
    async with aiohttp.ClientSession() as session:
        for i in range(40):
            path = "/status/500" if i % 10 == 9 else f"/users/{i}"
            async with session.get(listener + path) as response:
                await response.read()


async def test_page_lists_endpoints_and_follows_changes_without_a_reload(
        start_sidecar: Start, start_upstream: Start, browser: Browser,
        tmp_path: Path) -> None:
    first, _ = await start_upstream(name="one")
    second, _ = await start_upstream(name="two")
    third, _ = await start_upstream(name="three")
    sidecar: Sidecar = await start_sidecar(page_config(url_of(first), url_of(second)))
    await _traffic(sidecar)

    await browser.get(admin_url(sidecar, "/"))
    await browser.until(row_text("users/u1"), "endpoint u1 is listed")
    await browser.until(row_text("users/u2"), "endpoint u2 is listed")
    assert "ACTIVE" in await browser.until(row_text("users/u1", ".status"))
    await browser.until(js("return document.getElementById('connection').textContent"
                           " === 'LIVE'"), "the event stream is connected")
    # Anything set on `window` now is gone if the page reloads.
    await browser.script("window.sidecarTestMarker = 'no reload'")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        stub = grpc_stub(channel)
        await register(stub, "users", url_of(third), "u3")
        text = await browser.until(row_text("users/u3"), "the registered endpoint appears")
        assert url_of(third) in text and "ACTIVE" in text

        await stub.TripBreaker(api.TripBreakerRequest(cluster="users", id="u1",
                                                      duration=Duration(seconds=600)),
                               timeout=5)
        await browser.until(js("""
            const row = document.querySelector('tr[data-endpoint="users/u1"]');
            const state = row && row.querySelector('.breaker-state');
            const reason = row && row.querySelector('.breaker-reason');
            return state && state.textContent === 'OPEN' && reason
                   && reason.textContent === 'tripped by admin';"""),
            "u1's breaker shows OPEN with its reason")
        event = await browser.until(js("""
            for (const row of document.querySelectorAll('#events tbody tr')) {
              const what = row.querySelector('.what');
              if (what && what.textContent.includes('Breaker')
                  && what.textContent.includes('OPEN')
                  && row.textContent.includes('users/u1')) return row.textContent;
            }
            return null;"""), "the recent events show the trip")
        assert "tripped by admin" in event
    assert await browser.script("return window.sidecarTestMarker") == "no reload"
    # Figures from the stats refresh: the "all" route answered some 500s.
    await browser.until(js("""
        const row = document.querySelector('tr[data-route="all"]');
        return row && /[1-9][0-9.]* %/.test(row.cells[4].textContent);"""),
        "the route's error rate is shown")
    # The refresh an event schedules fills in what events do not carry (u3's breaker).
    await browser.until(js("""
        const state = document.querySelector('tr[data-endpoint="users/u3"] .breaker-state');
        return state && state.textContent === 'CLOSED';"""), "u3's observed state shows")
    assert browser.severe_console_messages() == []  # no script error, no CSP violation

    await browser.screenshot(*screenshot_paths(tmp_path, "status-page.png"))
    assert (tmp_path / "status-page.png").stat().st_size > 10_000

    # A phone: nothing wider than the screen, the states still written out.
    await browser.call(browser.driver.set_window_size, 375, 800)
    await browser.until(js("return window.innerWidth <= 400"), "the window is narrow")
    overflow = await browser.script(
        "return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
    assert "OPEN" in await browser.until(row_text("users/u1", ".breaker"))
    await browser.screenshot(tmp_path / "status-page-phone.png")


async def test_with_auth_the_page_needs_a_login(start_sidecar: Start, start_upstream: Start,
                                                browser: Browser, tmp_path: Path) -> None:
    tokens = new_tokens()
    upstream, _ = await start_upstream()
    config = page_config(url_of(upstream))
    config["admin"] = {"auth": tokens.auth_config(tmp_path)}
    sidecar: Sidecar = await start_sidecar(config)

    # Without credentials: the login form, and no data.
    await browser.get(admin_url(sidecar, "/"))
    await browser.until(lambda d: d.current_url == admin_url(sidecar, "/login"),
                        "redirected to the login form")
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/events", "/api/stats", "/api/status"):
            async with anonymous.get(admin_url(sidecar, path)) as response:
                assert response.status == 401, path

    async def log_in(token: str) -> None:
        from selenium.webdriver.common.by import By

        field = await browser.call(browser.driver.find_element, By.ID, "token")
        await browser.call(field.send_keys, token)
        await browser.call(field.submit)

    await log_in("not-the-token-at-all-1234")
    await browser.until(js("const e = document.querySelector('.error');"
                           "return e && e.textContent === 'That token was refused.';"),
                        "a wrong token is refused")
    assert browser.driver.current_url == admin_url(sidecar, "/login")
    assert browser.driver.get_cookies() == []

    await log_in(tokens.read)
    await browser.until(row_text("users/u1"), "logged in, the page lists the endpoints")
    assert browser.driver.current_url == admin_url(sidecar, "/")
    who = await browser.until(js("const w = document.getElementById('who');"
                                 "return !w.hidden && w.textContent;"))
    assert who == "Logged in as viewer (read)"
    [cookie] = browser.driver.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert tokens.read not in cookie["value"]
    assert await browser.script("return document.cookie") == ""  # HttpOnly: no script

    # Live with the cookie: the stream follows a registration made with an admin token.
    await browser.until(js("return document.getElementById('connection').textContent"
                           " === 'LIVE'"), "the event stream is connected")
    second, _ = await start_upstream()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.ports['admin_grpc']}") as channel:
        await register(grpc_stub(channel), "users", url_of(second), "u2", tokens.admin)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the read token cannot
            await grpc_stub(channel).DeregisterEndpoint(
                api.DeregisterEndpointRequest(cluster="users", id="u2"),
                metadata=bearer(tokens.read), timeout=5)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await browser.until(row_text("users/u2"), "the registered endpoint appears")

    # Logging out ends the session: back to the form, the data refused.
    from selenium.webdriver.common.by import By

    button = await browser.call(browser.driver.find_element, By.CSS_SELECTOR,
                                "#logout button")
    await browser.call(button.click)
    await browser.until(lambda d: d.current_url == admin_url(sidecar, "/login"),
                        "logged out")
    answer = await browser.call(browser.driver.execute_async_script,
                                "const done = arguments[arguments.length - 1];"
                                "fetch('/api/status').then((r) => done(r.status));")
    assert answer == 401

"""A real headless browser (Debian's chromium, driven by selenium), and the integration
fixtures (real upstreams, a real sidecar on port 0).

Selenium's calls block, and the sidecar runs on the test's event loop, so tests make
them through `Browser`, which runs each in a thread while the loop serves the page.
The tests skip, saying why, only when the browser or its driver is not installed
(`make test` installs them: scripts/install-tools.sh).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.conftest import client, start_sidecar, start_upstream  # noqa: F401

T = TypeVar("T")

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver",)
#: Longest wait for the page to show something.
WAIT = 15.0


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}",
                                                                         os.X_OK) else None)
        if found:
            return found
    return None


class Browser:
    """One headless chromium window, with awaitable helpers over selenium's blocking API."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(function, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def until(self, condition: Callable[[Any], T], message: str = "",
                    timeout: float = WAIT) -> T:
        """Wait (polling the DOM, in a thread) until `condition(driver)` is truthy."""
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(self.driver, timeout, poll_frequency=0.05)
        return await self.call(wait.until, condition, message)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    async def screenshot(self, *paths: Path) -> None:
        """A PNG of the whole page, beyond the window's height, at each path."""
        def capture() -> bytes:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 1}})
            return base64.b64decode(shot["data"])

        png = await self.call(capture)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)

    def severe_console_messages(self) -> list[str]:
        """JavaScript errors and Content-Security-Policy violations logged so far."""
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry["level"] == "SEVERE"]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    chromium, chromedriver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if chromium is None or chromedriver is None:
        pytest.skip("the status page's browser tests need Debian's chromium and "
                    "chromium-driver: run scripts/install-tools.sh (make test does), or "
                    "apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--no-first-run", "--disable-extensions",
                     "--window-size=1280,900", "--force-device-scale-factor=1",
                     "--lang=en-US", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths are given: selenium's manager has nothing to look up or download.
    monkeypatch.setenv("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield Browser(driver)
    finally:
        driver.quit()

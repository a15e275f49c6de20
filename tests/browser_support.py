"""Browser test support: Debian's headless Chromium driven by Playwright, and a demo hub.

`python -m tests.browser_support docs/img/dashboard.png` takes the README's screenshot: a hub
with the demo services on a free loopback port, a workflow running, the dashboard mid-answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from hub.config import Settings
from hub.wire.catalog import EventCatalog
from services.demo import QUESTIONS, demo_workflow
from services.events import register_events
from services.model import ExtractiveModel
from services.runtime import SAMPLE_DOCS, Services
from services.store import Store

from .support import RunningHub, run_hub

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path(os.environ.get("HUB_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PROJECT = "demo"
TIMEOUT_MS = 15_000


def missing() -> str | None:
    """Why browser tests cannot run here (None when they can)."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def open_page(
    browser: Browser, url: str, *, block_websocket: bool = False
) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    if block_websocket:
        # Like a proxy that refuses upgrades: constructing a WebSocket fails outright.
        await context.add_init_script(
            "window.WebSocket = function WebSocket() {"
            " throw new DOMException('WebSocket blocked by the test', 'SecurityError'); };"
        )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(url)
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


class DemoHub:
    """A real hub on loopback with the demo services mounted, and handles to drive them."""

    def __init__(self, running: RunningHub, services: Services) -> None:
        self.running = running
        self.services = services

    @property
    def url(self) -> str:
        return self.running.url

    def dashboard(self, project: str = PROJECT) -> str:
        return f"{self.url}/?project={project}"

    def start_workflow(self, run: int = 1, project: str = PROJECT) -> str:
        spec = demo_workflow(SAMPLE_DOCS, QUESTIONS[(run - 1) % len(QUESTIONS)], run)
        return self.services.workflows.start(project, spec).run_id

    async def history_seqs(self, project: str = PROJECT) -> list[int]:
        """Every retained seq of the project, via the history endpoint."""
        seqs: list[int] = []
        since = 0
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0) as http:
            while True:
                page: dict[str, Any] = (
                    await http.get(f"/v1/projects/{project}/events", params={"since": since})
                ).json()
                seqs.extend(e["seq"] for e in page["events"])
                if not page["more"]:
                    return seqs
                since = page["next"]


@contextlib.asynccontextmanager
async def demo_hub(
    settings: Settings | None = None, *, token_delay: float = 0.02
) -> AsyncIterator[DemoHub]:
    catalog = EventCatalog()
    register_events(catalog)
    services = Services(
        Store(":memory:"),
        model=ExtractiveModel(token_delay=token_delay),
        min_interval=0.05,
        allowed_roots=[SAMPLE_DOCS],
    )
    async with run_hub(
        settings or Settings(heartbeat_s=5.0),
        catalog=catalog,
        routes=services.routes(),
        lifespan_hooks=[services.lifespan],
    ) as running:
        yield DemoHub(running, services)


async def take_screenshot(path: Path) -> None:
    async with demo_hub(token_delay=0.06) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            demo.services.ingest.start_folder(PROJECT, SAMPLE_DOCS)
            await page.wait_for_selector('#jobs tr[data-status="completed"]')
            first = demo.start_workflow(1)
            await page.wait_for_selector(f'.workflow[data-run="{first}"][data-state="succeeded"]')
            demo.start_workflow(2)
            # mid-run: one answer streaming, the DAG half green
            await page.wait_for_function(
                "() => [...document.querySelectorAll('.answer.streaming .text')]"
                ".some(t => t.textContent.length > 80)",
                timeout=30_000,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(path), full_page=True)


def main(argv: list[str]) -> None:
    if reason := missing():
        sys.exit(f"cannot take the screenshot: {reason}")
    target = Path(argv[0] if argv else "docs/img/dashboard.png")
    asyncio.run(take_screenshot(target))
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])

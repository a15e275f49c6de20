"""Cross-origin pages in headless Chromium: a page served by another loopback server imports
the hub's /hub-client.js, bootstraps from the snapshot, follows the project over SSE and
publishes with fetch when its origin is in `allowed_origins`, and gets nothing when it is
not; a bare `EventSource` with only `onmessage` receives events with `named=0`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from hub.auth import mint_token
from hub.config import Settings

from .browser_support import chromium, missing, open_page
from .support import RunningHub, require, run_hub, wait_for

require(missing())  # skip without Chromium/Playwright; fail under CI

SECRET = "cross-origin-test-secret-of-32-bytes-or-more"
PROJECT = "shop"

# Reads ?hub=&token=&project=; imports the hub's client from the hub's origin.
CLIENT_PAGE = """<!doctype html><meta charset="utf-8"><title>client</title>
<script type="module">
const q = new URLSearchParams(location.search);
const hub = q.get("hub"), token = q.get("token"), project = q.get("project");
const out = (window.out = { events: [], states: [], errors: [] });
const auth = { Authorization: `Bearer ${token}` };
window.publish = async (type, data) => {
  try {
    const response = await fetch(`${hub}/v1/projects/${project}/events`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...auth },
      body: JSON.stringify({ type, key: "k", data }),
    });
    return { status: response.status, body: await response.json() };
  } catch (error) {
    return { error: String(error) };
  }
};
window.readSnapshot = async () => {
  try {
    const response = await fetch(`${hub}/v1/projects/${project}/snapshot`, { headers: auth });
    return { status: response.status };
  } catch (error) {
    return { error: String(error) };
  }
};
try {
  const { HubClient } = await import(`${hub}/hub-client.js`);
  const client = (window.client = new HubClient(project, { url: hub, token, transports: ["sse"] }));
  client.onState((state) => out.states.push(state));
  client.on("*", (event) => out.events.push(event));
  const snapshot = await client.bootstrap();
  out.snapshot = snapshot.events.map((event) => event.data);
  client.start();
} catch (error) {
  out.errors.push(String(error));
}
out.ready = true;
</script>"""

# Two bare EventSources: `plain` with named=0, `named` in the default mode; onmessage only
# (plus one named listener on the second, to see that it is live).
BARE_PAGE = """<!doctype html><meta charset="utf-8"><title>bare</title>
<script>
const q = new URLSearchParams(location.search);
const base = `${q.get("hub")}/v1/projects/${q.get("project")}/sse?token=${q.get("token")}`;
const out = (window.out = { plain: [], named: [], namedListener: 0, errors: 0 });
const plain = (window.plain = new EventSource(`${base}&named=0`));
plain.onmessage = (m) => out.plain.push({ event: JSON.parse(m.data), id: m.lastEventId });
plain.onerror = () => { out.errors += 1; out.plainState = plain.readyState; };
const named = (window.named = new EventSource(base));
named.onmessage = (m) => out.named.push(m.data);
named.addEventListener("shop.item.updated", () => { out.namedListener += 1; });
</script>"""


async def _page(request: Request) -> Response:
    pages = {"client": CLIENT_PAGE, "bare": BARE_PAGE}
    return HTMLResponse(pages[request.path_params["name"]])


class _PageServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner owns the signals


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    """A second loopback HTTP server (another port: another origin) serving the pages."""
    app = Starlette(routes=[Route("/{name}.html", _page)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _PageServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done(), what="page server start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def hub_allowing(origin: str) -> AsyncIterator[RunningHub]:
    settings = Settings(
        heartbeat_s=5.0, secret=SECRET, dashboard_public=True, allowed_origins=origin
    )
    async with run_hub(settings) as running:
        yield running


def page_url(origin: str, name: str, hub: RunningHub) -> str:
    token = mint_token(SECRET, subject="page", projects=[PROJECT], scopes=("subscribe", "publish"))
    return f"{origin}/{name}.html?hub={hub.url}&project={PROJECT}&token={token}"


async def test_an_allowed_origin_bootstraps_follows_over_sse_and_publishes() -> None:
    async with page_server() as origin, hub_allowing(origin) as hub, chromium() as browser:
        await hub.hub.publish(PROJECT, "shop.item.updated", {"n": 1}, key="k")
        async with open_page(browser, page_url(origin, "client", hub)) as page:
            await page.wait_for_function("() => window.out && window.out.ready")
            out: dict[str, Any] = await page.evaluate("() => window.out")
            assert out["errors"] == [] and out["snapshot"] == [{"n": 1}]
            await page.wait_for_function("() => window.out.states.includes('open')")
            assert await page.evaluate("() => window.client.transport") == "sse"

            published = await page.evaluate("() => window.publish('shop.item.updated', {n: 2})")
            assert published == {"status": 202, "body": {"seqs": [2]}}
            await page.wait_for_function("() => window.out.events.some((e) => e.data.n === 2)")
            events = await page.evaluate("() => window.out.events.map((e) => e.seq)")
            assert events == [2]  # seq 1 came with the snapshot, not again over SSE
        assert hub.hub.stats.published == 2


async def test_a_page_of_another_origin_is_refused() -> None:
    async with (
        page_server() as allowed,
        page_server() as other,
        hub_allowing(allowed) as hub,
        chromium() as browser,
    ):
        async with open_page(browser, page_url(other, "client", hub)) as page:
            await page.wait_for_function("() => window.out && window.out.ready")
            out: dict[str, Any] = await page.evaluate("() => window.out")
            # The browser keeps the module from the page (no Access-Control-Allow-Origin).
            assert len(out["errors"]) == 1 and "dynamically imported module" in out["errors"][0]
            # A read with a token needs a preflight, which the hub refuses (403): no request.
            snapshot = await page.evaluate("() => window.readSnapshot()")
            assert "Failed to fetch" in snapshot["error"]
            published = await page.evaluate("() => window.publish('shop.item.updated', {n: 9})")
            assert "Failed to fetch" in published["error"]
        async with open_page(browser, page_url(other, "bare", hub)) as page:
            await page.wait_for_function("() => window.out.plainState === EventSource.CLOSED")
            assert await page.evaluate("() => window.out.plain") == []
        assert hub.hub.stats.published == 0


async def test_a_bare_event_source_receives_events_on_onmessage_with_named_0() -> None:
    async with page_server() as origin, hub_allowing(origin) as hub, chromium() as browser:
        async with open_page(browser, page_url(origin, "bare", hub)) as page:
            await wait_for(lambda: hub.hub.stats.sse_connections == 2, what="both streams open")
            await hub.hub.publish(PROJECT, "shop.item.updated", {"n": 1}, key="a")
            await hub.hub.publish(PROJECT, "shop.item.updated", {"n": 2}, key="b")
            await page.wait_for_function("() => window.out.plain.length === 2")
            await page.wait_for_function("() => window.out.namedListener === 2")
            out: dict[str, Any] = await page.evaluate("() => window.out")
        epoch = (await hub.hub.backend.position(PROJECT)).epoch
        assert [m["event"]["data"] for m in out["plain"]] == [{"n": 1}, {"n": 2}]
        assert [m["event"]["type"] for m in out["plain"]] == ["shop.item.updated"] * 2
        assert [m["id"] for m in out["plain"]] == [f"{epoch}:1", f"{epoch}:2"]
        # The default mode names every event by its type: onmessage alone sees none of them.
        assert out["named"] == [] and out["errors"] == 0

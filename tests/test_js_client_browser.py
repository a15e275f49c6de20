"""hub-client.js's connection state machine in headless Chromium: connecting -> open ->
reconnecting -> open across a `hub serve` killed and restarted on the same port (each
transport); a WebSocket handshake that hangs hits connectTimeoutMs and falls back to SSE; with
WebSocket refused and SSE held by the network (tests/filtering_proxy.py), the dashboard still
shows live events, over long-poll."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.runtime import SAMPLE_DOCS

from .browser_support import PROJECT, chromium, demo_hub, missing, open_page
from .filtering_proxy import filtering_proxy, is_upgrade, path_contains
from .hub_process import HubProcess
from .support import require, run_hub, wait_for

require(missing())  # skip without Chromium/Playwright; fail under CI

# A client of the test's own in the page, its every state change kept in window.states.
START_CLIENT = """async (options) => {
  const m = await import('/hub-client.js');
  window.states = [];
  window.seqs = [];
  const client = new m.HubClient('states', { url: location.origin, ...options });
  client.onState((state, info) => window.states.push({ state, transport: info.transport }));
  client.on('*', (event) => window.seqs.push(event.seq));
  window.testClient = client.start();
}"""


def collapsed(states: list[dict[str, Any]]) -> list[str]:
    """The states with repeats folded: each fallback or retry re-enters the same state."""
    out: list[str] = []
    for record in states:
        if not out or out[-1] != record["state"]:
            out.append(record["state"])
    return out


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_states_connecting_open_reconnecting_open_across_a_hub_kill(
    transport: str, tmp_path: Path
) -> None:
    hub = HubProcess(tmp_path)
    await hub.start()
    try:
        async with chromium() as browser, open_page(browser, f"{hub.url}/hub-client.js") as page:
            options = {
                "transports": [transport],
                "connectTimeoutMs": 2000,
                "backoffMax": 1000,
                "pollWaitS": 2,
            }
            await page.evaluate(START_CLIENT, options)
            await page.wait_for_function("() => window.testClient.state === 'open'")

            hub.kill()
            await page.wait_for_function(
                "() => window.states.filter(s => s.state === 'reconnecting').length >= 3"
            )
            await hub.start()
            await page.wait_for_function("() => window.testClient.state === 'open'")
            # live again: an event published now arrives
            await page.evaluate(
                """async (url) => {
                  await fetch(url, { method: 'POST', headers: {'content-type': 'application/json'},
                    body: JSON.stringify({ type: 'test.clock.tick', data: {} }) });
                }""",
                f"{hub.url}/v1/projects/states/events",
            )
            await page.wait_for_function("() => window.seqs.includes(1)")
            states = await page.evaluate("window.states")
            await page.evaluate("window.testClient.close()")
    finally:
        hub.kill()
    assert collapsed(states) == ["connecting", "open", "reconnecting", "open"], states
    assert {s["transport"] for s in states} == {transport}


async def test_a_hanging_websocket_handshake_times_out_and_falls_back_to_sse() -> None:
    async with run_hub() as running, filtering_proxy(running.port, hold=is_upgrade) as proxy:
        async with chromium() as browser, open_page(browser, f"{proxy.url}/hub-client.js") as page:
            await page.evaluate(START_CLIENT, {"connectTimeoutMs": 1000})
            await page.wait_for_function("() => window.testClient.state === 'open'")
            states = await page.evaluate("window.states")
            assert await page.evaluate("window.testClient.transport") == "sse"
            await page.evaluate("window.testClient.close()")
    assert states == [
        {"state": "connecting", "transport": "ws"},
        {"state": "connecting", "transport": "sse"},
        {"state": "open", "transport": "sse"},
    ]
    assert proxy.held >= 1


async def test_dashboard_live_over_long_poll_when_websocket_and_sse_are_blocked() -> None:
    # The network refuses WebSocket upgrades and buffers event streams forever (the dashboard
    # waits out its default 5 s connect timeout on SSE), so only plain requests get through.
    rules = {"refuse": is_upgrade, "hold": path_contains("/sse")}
    async with demo_hub() as demo, filtering_proxy(demo.running.port, **rules) as proxy:
        async with (
            chromium() as browser,
            open_page(browser, f"{proxy.url}/?project={PROJECT}") as page,
        ):
            await page.wait_for_selector(
                '#conn[data-state="open"][data-transport="poll"]', timeout=30_000
            )
            polls = demo.running.hub.manager.polls
            await wait_for(lambda: polls.count >= 1, what="the page's poll waiting at the hub")
            job = demo.services.ingest.start_folder(PROJECT, SAMPLE_DOCS)
            await page.wait_for_selector(
                f'#jobs tr[data-job="{job.job_id}"][data-status="completed"][data-progress="100"]',
                timeout=30_000,
            )
            run = demo.services.agent.start(PROJECT, "How do we treat varroa mites?")
            done = f'.agent[data-run="{run.run_id}"] .answer[data-done="true"] .text'
            # attached, not visible: a finished card folds to one line (the dashboard's lists)
            await page.wait_for_selector(done, state="attached", timeout=30_000)
            assert await page.text_content(done) == demo.services.agent.answers[run.run_id]

            history = await demo.history_seqs()
            rows = "document.querySelectorAll('#log-rows tr[data-seq]').length"
            await page.wait_for_function(f"() => {rows} >= {len(history)}")
            seqs = await page.eval_on_selector_all(
                "#log-rows tr[data-seq]", "rows => rows.map(r => Number(r.dataset.seq))"
            )
            assert await page.get_attribute("#conn", "data-transport") == "poll"
    assert sorted(seqs) == history and len(seqs) == len(set(seqs))
    assert proxy.refused >= 1 and proxy.held >= 1

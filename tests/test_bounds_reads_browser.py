"""hub-client.js with paged snapshots in headless Chromium: `bootstrap()` walks the HTTP pages,
and a gap's snapshot sent in `more` pages over WebSocket or SSE rebuilds the state once."""

from __future__ import annotations

from typing import Any

import pytest

from hub.config import Settings

from .browser_support import chromium, missing, open_page
from .support import require, run_hub

require(missing())  # skip without Chromium/Playwright; fail under CI

P = "paged"
KEYS = 120


async def test_pages_of_one_snapshot_rebuild_the_state_once() -> None:
    async with run_hub(Settings()) as running, chromium() as browser:
        async with open_page(browser, f"{running.url}/?project=other") as page:
            result = await page.evaluate(
                """async () => {
                  const m = await import('/hub-client.js');
                  const client = new m.HubClient('x', { url: location.origin });
                  const calls = [];
                  client.onSnapshot((events, info) => {
                    calls.push([events.map((e) => e.seq), info.head]);
                  });
                  const send = (frame) => client._onText(JSON.stringify(frame));
                  const ev = (seq) => ({ op: 'event', seq, type: 'a.b', key: `k${seq}` });
                  const welcome = { op: 'welcome', epoch: 'e', head: 9, oldest: 1, heartbeat: 5 };
                  send(welcome);
                  send({ op: 'snapshot', head: 9, more: true, events: [ev(1)] });
                  send(welcome); // reconnected: the first page is void
                  send({ op: 'snapshot', head: 9, more: true, events: [ev(2), ev(3)] });
                  const before = calls.length;
                  send([{ op: 'snapshot', head: 9, events: [ev(5)] }, ev(10)]);
                  send({ op: 'snapshot', head: 12, events: [] }); // unpaged, as before
                  return { before, calls, seq: client.seq };
                }"""
            )
    assert result["before"] == 0
    assert result["calls"] == [[[2, 3, 5], 9], [[], 12]]
    assert result["seq"] == 12


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_bootstrap_and_a_gap_both_deliver_every_key_of_a_paged_snapshot(
    transport: str,
) -> None:
    settings = Settings(snapshot_page_bytes=8 * 1024, max_frame_bytes=8 * 1024)
    async with run_hub(settings) as running, chromium() as browser:
        for i in range(KEYS):
            await running.hub.publish(P, "test.item.set", {"b": "x" * 300}, key=f"k{i}")
        async with open_page(browser, f"{running.url}/?project=other") as page:
            result: dict[str, Any] = await page.evaluate(
                """async ([project, transport]) => {
                  const m = await import('/hub-client.js');
                  const boot = new m.HubClient(project, { url: location.origin });
                  const booted = [];
                  boot.onSnapshot((events, info) => booted.push([events.length, info.head]));
                  const snap = await boot.bootstrap();
                  const gap = new m.HubClient(project, {
                    url: location.origin, since: 10 ** 9, transports: [transport],
                  });
                  const rebuilt = [];
                  const pages = [];
                  gap.onControl((f) => f.op === 'snapshot' && pages.push(f.more === true));
                  const done = new Promise((resolve) => gap.onSnapshot((events, info) => {
                    rebuilt.push([new Set(events.map((e) => e.key)).size, info.head, info.reason]);
                    resolve();
                  }));
                  gap.start();
                  await done;
                  gap.close();
                  return { booted, keys: snap.events.length, rebuilt, pages, seq: gap.seq };
                }""",
                [P, transport],
            )
    assert result["booted"] == [[KEYS, KEYS]] and result["keys"] == KEYS
    assert result["rebuilt"] == [[KEYS, KEYS, "ahead"]] and result["seq"] == KEYS
    pages = result["pages"]
    assert len(pages) > 3 and pages == [True] * (len(pages) - 1) + [False]

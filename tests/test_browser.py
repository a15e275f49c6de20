"""The dashboard and hub-client.js in headless Chromium, against a real hub with the demo
services: progress and streamed answers show up, a server-side drop mid-run leaves no
duplicated or missing rows, WebSocket blocked falls back to SSE, a gap rebuilds the state."""

from __future__ import annotations

from typing import Any

from hub.config import Settings
from services.runtime import SAMPLE_DOCS

from .browser_support import PROJECT, DemoHub, chromium, demo_hub, missing, open_page
from .support import require, wait_for

require(missing())  # skip without Chromium/Playwright; fail under CI

STREAMING = (
    "() => [...document.querySelectorAll('.answer[data-done=\"false\"] .text')]"
    ".some(t => t.textContent.length > 20)"
)


async def log_seqs(page: Any) -> list[int]:
    seqs: list[int] = await page.eval_on_selector_all(
        "#log-rows tr[data-seq]", "rows => rows.map(r => Number(r.dataset.seq))"
    )
    return seqs


async def assert_log_is_exactly_the_history(page: Any, demo: DemoHub) -> None:
    history = await demo.history_seqs()
    await page.wait_for_function(
        f"() => document.querySelectorAll('#log-rows tr[data-seq]').length >= {len(history)}"
    )
    seqs = await log_seqs(page)
    assert len(seqs) == len(set(seqs)), "duplicated rows in the event log"
    assert sorted(seqs) == history, "rows missing from the event log"


async def answer_of(page: Any, run_id: str) -> str:
    selector = f'.agent[data-run="{run_id}"] .answer[data-done="true"] .text'
    text: str = await page.text_content(selector)
    return text


async def test_dashboard_follows_a_workflow_across_a_dropped_socket() -> None:
    async with demo_hub() as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"][data-transport="ws"]')
            run_id = demo.start_workflow()

            await page.wait_for_selector('#jobs tr[data-status="completed"][data-progress="100"]')
            assert await page.text_content("#jobs tr .pct") == "100%"
            await page.wait_for_function(STREAMING)  # part of an answer, before it is done

            hub = demo.running.hub
            replays = hub.manager.stats.replays
            assert hub.drain() == 1  # server side: the page's socket gets 1001
            await wait_for(lambda: hub.manager.stats.replays > replays, what="resume with since")
            await page.wait_for_selector('#conn[data-state="open"]')

            await page.wait_for_selector(
                f'.workflow[data-run="{run_id}"][data-state="succeeded"]', timeout=30_000
            )
            states = await page.eval_on_selector_all(
                f'.workflow[data-run="{run_id}"] g.node', "nodes => nodes.map(n => n.dataset.state)"
            )
            assert states == ["succeeded"] * 3
            for node in ("ask-1", "ask-2"):
                agent_run = f"{run_id}.{node}.1"
                assert await answer_of(page, agent_run) == demo.services.agent.answers[agent_run]
            await assert_log_is_exactly_the_history(page, demo)


async def test_websocket_blocked_the_page_works_over_sse() -> None:
    async with demo_hub() as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard(), block_websocket=True) as page:
            await page.wait_for_selector('#conn[data-state="open"][data-transport="sse"]')
            assert "SSE" in (await page.text_content("#conn") or "")
            job = demo.services.ingest.start_folder(PROJECT, SAMPLE_DOCS)
            await page.wait_for_selector(
                f'#jobs tr[data-job="{job.job_id}"][data-status="completed"][data-progress="100"]'
            )
            run = demo.services.agent.start(PROJECT, "How do we treat varroa mites?")
            await page.wait_for_function(STREAMING)

            assert demo.running.hub.drain() == 1  # the SSE stream ends with 1001
            await page.wait_for_selector(
                f'.agent[data-run="{run.run_id}"][data-status="completed"]', timeout=30_000
            )
            assert await answer_of(page, run.run_id) == demo.services.agent.answers[run.run_id]
            assert await page.get_attribute("#conn", "data-transport") == "sse"
            await assert_log_is_exactly_the_history(page, demo)


def job(progress: float, status: str = "running") -> dict[str, Any]:
    return {
        "type": "ingest.job.completed" if status == "completed" else "ingest.job.updated",
        "key": "ingest.job/j1",
        "data": {
            "job_id": "j1",
            "source": "upload",
            "status": status,
            "progress": progress,
            "total_files": 10,
            "files_done": round(progress * 10),
        },
    }


async def test_after_a_gap_the_state_is_rebuilt_from_the_snapshot() -> None:
    async with demo_hub(Settings(retention_events=20, heartbeat_s=5.0)) as demo, chromium() as b:
        async with open_page(b, demo.dashboard()) as page, demo.running.http() as http:
            await page.wait_for_selector('#conn[data-state="open"]')
            url = f"/v1/projects/{PROJECT}/events"
            await http.post(url, json=job(0.1))
            await page.wait_for_selector('#jobs tr[data-job="j1"][data-progress="10"]')

            await page.evaluate("window.hubDashboard.client.close()")
            await page.wait_for_selector('#conn[data-state="closed"]')
            filler = [{"type": "test.filler.added", "data": {"i": i}} for i in range(30)]
            await http.post(url, json=filler)
            await http.post(url, json=job(1.0, "completed"))  # seq 32; retained: 13..32
            await page.evaluate("window.hubDashboard.client.start()")

            await page.wait_for_selector('#log-rows tr.marker:has-text("gap (evicted)")')
            await page.wait_for_selector(
                '#jobs tr[data-job="j1"][data-status="completed"][data-progress="100"]'
            )
            await http.post(url, json=job(1.0, "completed"))  # live again after the snapshot
            await page.wait_for_selector('#log-rows tr[data-seq="33"]')
            assert await log_seqs(page) == [33, 1]  # newest first; 2..32 are gone, not faked


async def test_client_semantics_in_the_browser() -> None:
    async with demo_hub() as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            result = await page.evaluate(
                """async () => {
                  const m = await import('/hub-client.js');
                  const matches = m.typeMatcher(['agent.*', '*.failed']);
                  const client = new m.HubClient('x', { url: location.origin });
                  const got = [];
                  client.on('a.*', (e) => got.push(e.seq));
                  client._onText('{"op":"welcome","epoch":"e","head":2,"oldest":1,"heartbeat":5}');
                  client._onText('[{"op":"event","seq":3,"type":"a.b"},{"op":"event","seq":4,"type":"b.c"}]');
                  client._onText('{"op":"event","seq":3,"type":"a.b"}');
                  client._onText('{"op":"event","seq":5,"type":"a.x.y"}');
                  const blocks = [];
                  const parser = new m.SseParser((msg) => blocks.push(msg));
                  parser.push('id: e:1\\nevent: a.b\\nda');
                  parser.push('ta: {"x":\\ndata: 1}\\n\\n: keepalive\\n\\n');
                  const delays = Array.from({ length: 50 }, (_, i) => m.backoffDelay(i));
                  return {
                    agent: matches('agent.run.updated'), failed: matches('ingest.job.failed'),
                    literalDot: m.typeMatcher(['agent.run']) ('agentXrun'),
                    got, duplicates: client.duplicates, seq: client.seq, blocks,
                    delaysOk: delays.every((d) => d >= 0 && d < 15000),
                  };
                }"""
            )
    assert result["agent"] and result["failed"] and not result["literalDot"]
    assert result["got"] == [3, 5] and result["duplicates"] == 1 and result["seq"] == 5
    assert result["blocks"] == [{"event": "a.b", "data": '{"x":\n1}', "id": "e:1"}]
    assert result["delaysOk"]

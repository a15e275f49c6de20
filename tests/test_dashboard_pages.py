"""A page per job, agent run and workflow run (`#/ingest/<id>`, `#/agent/<id>`,
`#/workflow/<id>`), in headless Chromium against a real hub with the demo services: it shows
that entity only (and a workflow's own jobs and runs), bootstrapped from the snapshot, kept
live, with the entity's key patterns given to the client (contract A)."""

from __future__ import annotations

from typing import Any

from hub.auth import mint_token
from hub.config import Settings
from services.runtime import SAMPLE_DOCS

from .browser_support import PROJECT, DemoHub, chromium, missing, open_page
from .dashboard_support import dashboard_hub, visible_ids
from .support import require, wait_for

require(missing())  # skip without Chromium/Playwright; fail under CI


async def log_keys(page: Any) -> list[str]:
    keys: list[str] = await page.eval_on_selector_all(
        "#log-rows tr[data-seq]", "rows => rows.map(r => r.dataset.key)"
    )
    return keys


async def workflow_done(demo: DemoHub, run_id: str) -> None:
    def done() -> bool:
        run = demo.services.workflows.runs.get(PROJECT, run_id)
        return run is not None and run.state == "succeeded"

    await wait_for(done, timeout=30, what=f"workflow {run_id} succeeded")


async def test_an_agent_run_page_shows_that_run_only_from_the_snapshot_on() -> None:
    async with dashboard_hub(token_delay=0.03) as demo, chromium() as browser:
        services = demo.services
        job = services.ingest.start_folder(PROJECT, SAMPLE_DOCS)
        await wait_for(lambda: job.status == "completed", what="the ingest job")
        mine = services.agent.start(PROJECT, "How do we treat varroa mites?")
        other = services.agent.start(PROJECT, "What do I do if I get stung?")
        # Open the page once the run has streamed a little: its start comes from the snapshot.
        await wait_for(lambda: mine.steps >= 3, what="a few steps of the run")

        async with open_page(browser, f"{demo.dashboard()}#/agent/{mine.run_id}") as page:
            card = f'#detail .agent[data-run="{mine.run_id}"]'
            await page.wait_for_selector(card)
            assert await page.is_hidden("#agents") and await page.is_hidden("#ingest")
            view = await page.evaluate("window.hubDashboard.view.keys")
            assert view == [
                f"agent.run/{mine.run_id}",
                f"agent.step/{mine.run_id}/*",
                f"agent.message/{mine.run_id}/*",
            ]

            # Live to the end, and nothing of the other run or the job on the way.
            await page.wait_for_selector(f'{card}[data-status="completed"]', timeout=30_000)
            answer = await page.text_content(f'{card} .answer[data-done="true"] .text')
            assert answer == services.agent.answers[mine.run_id]
            assert await visible_ids(page, ".agent", "data-run") == [mine.run_id]
            keys = await log_keys(page)
            assert keys and all(mine.run_id in key for key in keys), keys
            assert await page.is_visible(f"{card} .answer")  # expanded on its own page

            await wait_for(lambda: other.status == "completed", timeout=30, what="the other run")
            await page.click("#back")
            await page.wait_for_selector(f'#agents .agent[data-run="{other.run_id}"]')
            assert sorted(await visible_ids(page, "#agents .agent", "data-run")) == sorted(
                [mine.run_id, other.run_id]
            )
            assert await page.is_hidden("#detail")
            assert await page.evaluate("window.hubDashboard.view.keys") is None


async def test_a_workflow_page_shows_its_nodes_jobs_and_runs_and_links_to_them() -> None:
    async with dashboard_hub(token_delay=0.01) as demo, chromium() as browser:
        earlier = demo.start_workflow(1)
        await workflow_done(demo, earlier)
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector(f'.workflow[data-run="{earlier}"]')
            run_id = demo.start_workflow(2)
            await page.click(f'.workflow[data-run="{run_id}"] header .title')  # its own page

            card = f'#detail .workflow[data-run="{run_id}"]'
            await page.wait_for_selector(card)
            await page.wait_for_selector(f'{card}[data-state="succeeded"]', timeout=30_000)
            assert await visible_ids(page, ".workflow", "data-run") == [run_id]
            assert await visible_ids(page, "#detail-jobs .job", "data-job") == [
                f"{run_id}.ingest.1"
            ]
            runs = await visible_ids(page, "#detail-agents .agent", "data-run")
            assert sorted(runs) == [f"{run_id}.ask-1.1", f"{run_id}.ask-2.1"]
            nodes = await visible_ids(page, f"{card} table.nodes tr[data-node]", "data-state")
            assert nodes == ["succeeded"] * 3
            assert all(earlier not in key for key in await log_keys(page))

            # A node's output links to that agent run's own page.
            await page.click(f'{card} table.nodes tr[data-node="ask-1"] a')
            agent = f'#detail .agent[data-run="{run_id}.ask-1.1"][data-status="completed"]'
            await page.wait_for_selector(agent)
            assert await visible_ids(page, ".workflow", "data-run") == []
            assert page.url.endswith(f"#/agent/{run_id}.ask-1.1")


async def test_a_job_page_waits_for_a_job_not_there_yet_and_refuses_a_bad_id() -> None:
    async with dashboard_hub() as demo, chromium() as browser:
        async with open_page(browser, f"{demo.dashboard()}#/ingest/later-1") as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            missing_text = await page.text_content("#detail-missing")
            assert missing_text is not None and "No ingest job later-1" in missing_text
            demo.services.ingest.start_folder(PROJECT, SAMPLE_DOCS, job_id="later-1")
            card = '#detail .job[data-job="later-1"]'
            await page.wait_for_selector(f'{card}[data-status="completed"][data-progress="100"]')
            assert await page.is_hidden("#detail-missing")
            facts = await page.inner_text(f"{card} dl.facts")
            assert "documents" in facts and "chunks" in facts

            await page.evaluate("location.hash = '#/agent/a*'")  # `*` would widen a key filter
            await page.wait_for_selector('#detail-missing:has-text("is not an id")')
            assert await page.evaluate("window.hubDashboard.client") is None
            assert await visible_ids(page, "#detail .card", "data-job") == []


async def test_with_a_secret_the_token_in_the_fragment_opens_pages_and_rights_show() -> None:
    secret = "s" * 40
    settings = Settings(heartbeat_s=5.0, secret=secret, dashboard_public=True)
    reader = mint_token(secret, subject="reader", projects=[PROJECT])
    writer = mint_token(
        secret, subject="writer", projects=[PROJECT], scopes=["subscribe", "publish"]
    )
    async with dashboard_hub(settings, token_delay=60.0) as demo, chromium() as browser:
        run = demo.services.agent.start(PROJECT, "How do we treat varroa mites?")
        url = f"{demo.dashboard()}#/agent/{run.run_id}?token={reader}"
        async with open_page(browser, url) as page:
            card = f'#detail .agent[data-run="{run.run_id}"][data-status="running"]'
            await page.wait_for_selector(card)
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.click(f"{card} button.cancel")  # a token that may only read
            notice = await page.wait_for_selector("#notices .notice")
            assert "HTTP 403" in await notice.inner_text()
            assert await page.is_enabled(f"{card} button.cancel")  # free to try again

            # The tab kept the token: the overview needs it no more in its address.
            await page.click("#back")
            await page.wait_for_selector(f'#agents .agent[data-run="{run.run_id}"]')
            await page.evaluate(f"sessionStorage.setItem('hub.token', {writer!r})")
            await page.click(f'#agents .agent[data-run="{run.run_id}"] button.cancel')
            await page.wait_for_selector(
                f'.agent[data-run="{run.run_id}"][data-status="cancelled"]'
            )

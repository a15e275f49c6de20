"""What a person does from the dashboard, in headless Chromium against a real hub with the demo
services: cancel a running job, workflow or agent run from its card, ask a question, start the
demo workflow; refusals of the API show on the page. A job stays running deterministically
because its store write waits at a gate (dashboard_support.GatedStore); an agent run stays
running because the model streams one delta a minute."""

from __future__ import annotations

from hub.config import Settings
from services.limits import ServiceLimits
from services.runtime import SAMPLE_DOCS

from .browser_support import PROJECT, chromium, missing, open_page
from .dashboard_support import GatedStore, dashboard_hub, visible_ids
from .support import require, run_hub, wait_for

require(missing())  # skip without Chromium/Playwright; fail under CI

SLOW_MODEL = 60.0  # seconds between two answer deltas: a run streams until it is cancelled


async def test_cancel_a_running_job_from_its_row() -> None:
    store = GatedStore()
    async with dashboard_hub(store=store) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            job = demo.services.ingest.start_folder(PROJECT, SAMPLE_DOCS)
            await wait_for(lambda: store.waiting > 0, what="the job at its first batch write")
            row = f'#jobs tr[data-job="{job.job_id}"]'
            await page.wait_for_selector(f'{row}[data-status="running"]')

            await page.click(f"{row} button.cancel")
            await page.wait_for_selector(f'{row}[data-status="cancelled"]')
            assert await page.is_hidden(f"{row} button.cancel"), "no cancel on a finished job"
            state = demo.services.ingest.jobs.get(PROJECT, job.job_id)
            assert state is not None and state.status == "cancelled"
            assert await page.inner_text("#notices") == ""


async def test_start_the_demo_workflow_then_cancel_it_from_its_card() -> None:
    store = GatedStore()
    async with dashboard_hub(store=store) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.click("#start-workflow")
            card = ".workflow[data-state=running]"
            await page.wait_for_selector(card)
            [run_id] = await visible_ids(page, ".workflow", "data-run")
            assert await page.text_content(f"{card} header .title") == "ingest-and-ask"
            await wait_for(lambda: store.waiting > 0, what="the ingest node at its store write")

            await page.click(f'.workflow[data-run="{run_id}"] button.cancel')
            done = f'.workflow[data-run="{run_id}"][data-state="cancelled"]'
            await page.wait_for_selector(done)
            assert await page.is_hidden(f"{done} button.cancel")
            states = await visible_ids(page, f"{done} g.node", "data-state")
            assert states == ["cancelled"] * 3
            run = demo.services.workflows.runs.get(PROJECT, run_id)
            assert run is not None and run.state == "cancelled"


async def test_ask_a_question_and_cancel_the_run_from_its_card() -> None:
    async with dashboard_hub(token_delay=SLOW_MODEL) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.fill("#ask-question", "How do we treat varroa mites?")
            await page.click("#ask-submit")
            await page.wait_for_selector(".agent[data-status=running] .steps li")
            [run_id] = await visible_ids(page, ".agent", "data-run")
            assert await page.input_value("#ask-question") == ""  # asked: the box is free again
            card = f'.agent[data-run="{run_id}"]'
            assert await page.text_content(f"{card} .line") == "How do we treat varroa mites?"

            await page.click(f"{card} button.cancel")
            await page.wait_for_selector(f'{card}[data-status="cancelled"]')
            assert await page.is_hidden(f"{card} button.cancel")
            run = demo.services.agent.runs.get(PROJECT, run_id)
            assert run is not None and run.status == "cancelled"


async def test_an_asked_question_streams_its_answer_into_a_new_card() -> None:
    async with dashboard_hub(token_delay=0.03) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            job = demo.services.ingest.start_folder(PROJECT, SAMPLE_DOCS)
            await page.wait_for_selector(
                f'#jobs tr[data-job="{job.job_id}"][data-status="completed"]'
            )

            await page.fill("#ask-question", "What should a hive inspection check?")
            await page.press("#ask-question", "Enter")
            streaming = ".agent[data-status=running] .answer[data-done=false] .text"
            await page.wait_for_function(
                f"() => (document.querySelector({streaming!r})?.textContent.length ?? 0) > 20"
            )
            [run_id] = await visible_ids(page, ".agent", "data-run")
            done = f'.agent[data-run="{run_id}"][data-status="completed"]'
            await page.wait_for_selector(done, state="attached", timeout=30_000)
            answer = await page.text_content(f'{done} .answer[data-done="true"] .text')
            assert answer == demo.services.agent.answers[run_id]
            # A finished run folds to one line; its toggle opens it again.
            assert await page.get_attribute(done, "data-expanded") == "false"
            await page.click(f"{done} button.toggle")
            await page.wait_for_selector(f'{done}[data-expanded="true"] .answer', state="visible")


async def test_the_demo_workflow_started_from_the_page_runs_to_the_end() -> None:
    async with dashboard_hub(token_delay=0.0) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.click("#start-workflow")
            done = ".workflow[data-state=succeeded]"
            await page.wait_for_selector(done, state="attached", timeout=30_000)
            [run_id] = await visible_ids(page, ".workflow", "data-run")
            states = await visible_ids(page, f"{done} g.node", "data-state")
            assert states == ["succeeded"] * 3
            runs = await visible_ids(page, ".agent[data-status=completed]", "data-run")
            assert sorted(runs) == [f"{run_id}.ask-1.1", f"{run_id}.ask-2.1"]


async def test_what_the_api_refuses_is_shown_on_the_page() -> None:
    limits = ServiceLimits(max_agent_runs_per_project=1)
    async with dashboard_hub(token_delay=SLOW_MODEL, limits=limits) as demo, chromium() as browser:
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.fill("#ask-question", "How do swarms start?")
            await page.click("#ask-submit")
            await page.wait_for_selector(".agent[data-status=running]")

            await page.fill("#ask-question", "And when?")
            await page.click("#ask-submit")
            notice = await page.wait_for_selector("#notices .notice")
            text = await notice.inner_text()
            assert "Ask a question" in text and "HTTP 429" in text, text
            assert await page.input_value("#ask-question") == "And when?"  # kept, to retry
            assert await page.is_enabled("#ask-submit")
            assert len(demo.services.agent.runs.list(PROJECT)) == 1

            await page.click("#notices .notice .dismiss")
            await page.wait_for_selector("#notices .notice", state="detached")


async def test_on_a_hub_without_the_services_the_page_says_so() -> None:
    async with run_hub(Settings(heartbeat_s=5.0)) as running, chromium() as browser:
        async with open_page(browser, f"{running.url}/?project={PROJECT}") as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            await page.click("#start-workflow")
            notice = await page.wait_for_selector('#notices .notice[data-code="no_services"]')
            text = await notice.inner_text()
            assert "Start the demo workflow" in text and "hub demo" in text, text

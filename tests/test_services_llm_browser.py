"""The dashboard's agent card shows the model, the finish reason and the token counts of a
run answered by an OpenAI-compatible server (the loopback one of the tests), in Chromium."""

from __future__ import annotations

from services.model_settings import ModelSettings
from services.openai_model import OpenAIChatModel
from services.runtime import SAMPLE_DOCS

from .browser_support import PROJECT, chromium, demo_hub, missing, open_page
from .support import require
from .test_services_llm_support import ChatServer, Reply, by_question

require(missing())  # skip without Chromium/Playwright; fail under CI


async def test_agent_card_shows_model_finish_reason_and_token_counts() -> None:
    replies = {"cut-me": Reply(cut=True, stall_after=2)}
    async with (
        ChatServer(by_question(replies, Reply(usage=(42, 6)))) as server,
        demo_hub() as demo,
        chromium() as browser,
    ):
        settings = ModelSettings(url=server.url, model="test-model", retry_backoff_s=0.01)
        demo.services.agent.model = OpenAIChatModel(settings)
        await demo.services.ingest.run_folder(PROJECT, SAMPLE_DOCS)
        async with open_page(browser, demo.dashboard()) as page:
            await page.wait_for_selector('#conn[data-state="open"]')
            good = demo.services.agent.start(PROJECT, "How much honey for winter?")
            card = f'.agent[data-run="{good.run_id}"][data-status="completed"]'
            await page.wait_for_selector(f'{card}[data-finish="stop"]', timeout=20_000)
            meta = await page.text_content(f"{card} header .meta")
            assert meta is not None
            assert "test-model" in meta and "stop" in meta
            assert "42 in / 6 out tokens" in meta

            cut = demo.services.agent.start(PROJECT, "cut-me: how do swarms start?")
            card = f'.agent[data-run="{cut.run_id}"][data-status="failed"]'
            await page.wait_for_selector(f'{card}[data-finish="error"]', timeout=20_000)
            meta = await page.text_content(f"{card} header .meta")
            assert meta is not None and "error" in meta and "(counted)" in meta

"""The dashboard when its hub dies: a real `hub demo` process is killed (SIGKILL) mid-run and
started again on the same port; the page reconnects within the client's backoff cap, sees the
new epoch (gap), rebuilds from the new hub's snapshot and follows its work live."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

from .browser_support import chromium, missing, open_page
from .support import demo_banner, require

require(missing())  # skip without Chromium/Playwright; fail under CI

BACKOFF_MAX_MS = 15_000  # hub-client.js `backoffMax` default: the longest wait between tries
SETTLE_MS = 10_000  # after that wait: connect, snapshot and the first render, on a busy machine


@contextlib.asynccontextmanager
async def demo_process(port: int, stderr: Path) -> AsyncIterator[tuple[Process, str]]:
    """`hub demo` on `port` (0: a free one); yields the process and its base URL."""
    with stderr.open("ab") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.demo", "--port", str(port),
            "--interval", "0.3", "--token-delay", "0.02",
            stdout=asyncio.subprocess.PIPE, stderr=errors,
        )  # fmt: skip
    try:
        _, base = await demo_banner(process)
        yield process, base
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_the_page_recovers_when_the_hub_is_killed_and_restarted(tmp_path: Path) -> None:
    stderr = tmp_path / "demo.stderr"
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        first, base = await stack.enter_async_context(demo_process(0, stderr))
        port = int(base.rsplit(":", 1)[1])
        browser = await stack.enter_async_context(chromium())
        page = await stack.enter_async_context(open_page(browser, f"{base}/?project=demo"))
        await page.wait_for_selector('#conn[data-state="open"]')
        await page.wait_for_selector(".workflow[data-state=running]", timeout=30_000)
        old_epoch = await page.evaluate("window.hubDashboard.client.epoch")
        old_runs = await page.eval_on_selector_all(".workflow", "n => n.map(w => w.dataset.run)")

        first.kill()  # mid-run: no drain, no goodbye frame
        await first.wait()
        await page.wait_for_selector('#conn[data-state="reconnecting"]')

        _, again = await stack.enter_async_context(demo_process(port, stderr))
        assert again == base
        restarted = loop.time()
        await page.wait_for_selector('#conn[data-state="open"]', timeout=BACKOFF_MAX_MS + SETTLE_MS)
        print(f"page live again {loop.time() - restarted:.2f}s after the restart")

        # A new epoch: the page was told (gap) and rebuilt its state from the new snapshot...
        await page.wait_for_selector('#log-rows tr.marker:has-text("gap")')
        assert await page.evaluate("window.hubDashboard.client.epoch") != old_epoch
        # ...and follows the new hub's work live: a workflow it started runs to the end.
        await page.wait_for_function(
            """(old) => [...document.querySelectorAll('.workflow[data-state=succeeded]')]
                 .some(w => !old.includes(w.dataset.run))""",
            arg=old_runs,
            timeout=30_000,
        )
        assert await page.inner_text("#notices") == ""
    assert "Traceback" not in stderr.read_text(errors="replace")

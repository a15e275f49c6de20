"""Dashboard test support: a demo hub whose ingest jobs wait at a gate the test opens (so a job
is still running when the page cancels it, without a sleep), and page helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from hub.config import Settings
from hub.wire.catalog import EventCatalog
from services.events import register_events
from services.limits import ServiceLimits
from services.model import ExtractiveModel
from services.runtime import SAMPLE_DOCS, Services
from services.store import BatchResult, NewDocument, Store

from .browser_support import DemoHub
from .support import run_hub

__all__ = ["GatedStore", "dashboard_hub", "visible_ids"]


class GatedStore(Store):
    """The real SQLite store, whose batch writes wait until `gate` is set: an ingest job (and a
    workflow's ingest node) stays `running` at its first batch for as long as the test wants."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.gate = asyncio.Event()
        self.waiting = 0  # batch writes held at the gate now

    async def add_batch(
        self, project: str, job_id: str, docs: Sequence[NewDocument]
    ) -> BatchResult:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().add_batch(project, job_id, docs)


@contextlib.asynccontextmanager
async def dashboard_hub(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    token_delay: float = 0.02,
    limits: ServiceLimits | None = None,
) -> AsyncIterator[DemoHub]:
    """A real hub with the demo services mounted (as tests.browser_support.demo_hub), with the
    store, the model's pace and the services' limits of the test's choosing."""
    catalog = EventCatalog()
    register_events(catalog)
    services = Services(
        store or Store(":memory:"),
        model=ExtractiveModel(token_delay=token_delay),
        min_interval=0.05,
        allowed_roots=[SAMPLE_DOCS],
        limits=limits,
    )
    async with run_hub(
        settings or Settings(heartbeat_s=5.0),
        catalog=catalog,
        routes=services.routes(),
        lifespan_hooks=[services.lifespan],
    ) as running:
        yield DemoHub(running, services)


async def visible_ids(page: Any, selector: str, attribute: str) -> list[str]:
    """The `attribute` of every element matching `selector`, in page order."""
    ids: list[str] = await page.eval_on_selector_all(
        selector, f"nodes => nodes.map(n => n.getAttribute({attribute!r}))"
    )
    return ids

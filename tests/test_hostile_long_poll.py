"""Long polls sent by a hostile client (docs/protocol.md "Long polling"): the work one poll
costs does not grow with a tiny `limit`."""

from __future__ import annotations

import httpx

from hub.backends import MemoryBackend
from hub.backends.base import ReadResult
from hub.config import Settings

from .support import run_hub


class CountingBackend(MemoryBackend):
    """The memory backend, counting its reads (the steps a history scan takes)."""

    reads = 0

    async def read(self, project: str, since: int, limit: int) -> ReadResult:
        self.reads += 1
        return await super().read(project, since, limit)


async def test_a_poll_with_limit_1_that_matches_nothing_scans_in_whole_pages() -> None:
    events = 20_000
    settings = Settings(retention_events=events)
    backend = CountingBackend(settings)
    async with run_hub(settings, backend=backend) as running:
        for start in range(0, events, 1000):
            batch = [
                running.hub.validator.prepare("a.b", i, key=f"k/{i}")
                for i in range(start, start + 1000)
            ]
            await running.hub.publish_requests("p1", batch, validated=True)
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            before = backend.reads
            response = await http.get(
                "/v1/projects/p1/events",
                params={"since": 0, "wait": 0.2, "limit": 1, "keys": "no/such/key"},
            )
            reads = backend.reads - before
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["events"] == [] and body["next"] == events == body["head"]
    # Reads of at most 256 events (http_api._READ_CHUNK), plus the poll's first position and
    # the one after its wait; one read per event (20,000) before the fix.
    assert reads <= events // 256 + 10, f"{reads} backend reads for one poll"

"""`hub_events_published_total` counts events added, not publish calls: a retry with an
idempotency id seen before gets its earlier seq back and is not counted again, on the
memory backend and on Redis alike."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.backends.redis import RedisBackend
from hub.config import Settings

from .redis_support import fast_settings, running_redis
from .support import RunningHub, run_hub


@contextlib.asynccontextmanager
async def hub_on(backend: str, tmp_path: Path) -> AsyncIterator[RunningHub]:
    if backend == "memory":
        async with run_hub(Settings()) as running:
            yield running
        return
    with running_redis(tmp_path / "redis") as server:
        settings = fast_settings(server.url)
        async with run_hub(settings, backend=RedisBackend(server.url, settings)) as running:
            yield running


async def published(running: RunningHub) -> float:
    async with running.http() as http:
        text = (await http.get("/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("hub_events_published_total "))
    return float(line.split()[1])


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_an_idempotent_retry_is_counted_once(backend: str, tmp_path: Path) -> None:
    async with hub_on(backend, tmp_path) as running, running.http() as http:
        url = "/v1/projects/p1/events"
        first = {"type": "a.b", "data": {"n": 1}, "id": "job-1"}
        for _ in range(3):  # a publisher that never saw the 202 sends it again
            response = await http.post(url, json=first)
            assert (response.status_code, response.json()["seqs"]) == (202, [1])
        assert await published(running) == 1
        # a batch of a retried event, a new one, and the new one twice
        batch = [first, {"type": "a.b", "data": {"n": 2}, "id": "job-2"}]
        batch.append(batch[1])
        response = await http.post(url, json=batch)
        assert (response.status_code, response.json()["seqs"]) == (202, [1, 2, 2])
        assert await published(running) == 2
        response = await http.post(url, json={"type": "a.b", "data": {"n": 3}})
        assert response.json()["seqs"] == [3]
        assert await published(running) == 3

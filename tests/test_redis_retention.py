"""Retention by age and by bytes on Redis, seen by clients (issue 17): a history page and a
resume from before `oldest` say `gap` (evicted), and the snapshot still holds the keys, as on
the memory backend. The exact bounds are checked on both backends by the contract suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.backends.redis import RedisBackend
from hub.config import Settings

from .redis_support import RedisServer, fast_settings, running_redis
from .support import FrameRecorder, RunningHub, run_hub, wait_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


async def publish(running: RunningHub, events: list[dict[str, Any]]) -> list[int]:
    async with running.http() as http:
        response = await http.post("/v1/projects/p1/events", json=events)
        assert response.status_code == 202, response.text
        seqs: list[int] = response.json()["seqs"]
        return seqs


async def history(running: RunningHub, since: int) -> dict[str, Any]:
    async with running.http() as http:
        response = await http.get("/v1/projects/p1/events", params={"since": since})
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page


async def assert_clients_are_told_gap(running: RunningHub, epoch: str, oldest: int) -> None:
    page = await history(running, 1)
    assert (page["gap"], page["oldest"]) == (True, oldest)
    resumed = await FrameRecorder.open(running.ws_url("p1", since=1, epoch=epoch))
    await wait_for(lambda: bool(resumed.ops("snapshot")), what="gap + snapshot")
    [gap] = resumed.ops("gap")
    assert (gap["reason"], gap["since"], gap["oldest"]) == ("evicted", 1, oldest)
    [snapshot] = resumed.ops("snapshot")
    assert {e["key"] for e in snapshot["events"]} == {"j0", "j1"}  # outlives retention
    await resumed.close()


def settings(url: str, **bounds: Any) -> Settings:
    return fast_settings(url, **bounds)


async def test_events_older_than_retention_age_are_gone_and_clients_get_gap(
    redis_server: RedisServer,
) -> None:
    s = settings(redis_server.url, retention_age_s=0.3)
    async with run_hub(s, backend=RedisBackend(redis_server.url, s)) as running:
        body = [{"type": "ingest.job.updated", "key": f"j{i % 2}", "data": {"i": i}}
                for i in range(3)]  # fmt: skip
        assert await publish(running, body) == [1, 2, 3]

        async def aged_out() -> bool:
            return bool((await history(running, 0))["oldest"] == 4)

        await wait_for(aged_out, what="the events to pass retention_age_s")
        page = await history(running, 0)
        assert (page["head"], page["events"]) == (3, [])
        await assert_clients_are_told_gap(running, page["epoch"], 4)


async def test_events_beyond_retention_bytes_are_gone_and_clients_get_gap(
    redis_server: RedisServer,
) -> None:
    s = settings(redis_server.url, retention_bytes=400)  # about 3 of these frames
    async with run_hub(s, backend=RedisBackend(redis_server.url, s)) as running:
        body = [{"type": "ingest.job.updated", "key": f"j{i % 2}", "data": {"i": i, "p": "x" * 40}}
                for i in range(10)]  # fmt: skip
        assert await publish(running, body) == list(range(1, 11))
        page = await history(running, 0)
        assert 1 < page["oldest"] < 10 and page["head"] == 10
        assert [e["seq"] for e in page["events"]] == list(range(page["oldest"], 11))
        await assert_clients_are_told_gap(running, page["epoch"], page["oldest"])

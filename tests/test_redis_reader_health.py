"""The Redis stream reader's health, watched from outside: /metrics shows it, and /readyz
turns 503 when the reader makes no progress (a replica cut off from its primary serving
stale data without an error; a primary under CLIENT PAUSE), then recovers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.backends.redis import RedisBackend
from hub.redis_publisher import RedisPublisher

from .redis_support import RedisServer, fast_settings, free_port, running_redis
from .support import FrameRecorder, RunningHub, run_hub, wait_for

STALL_S = 1.0
EPOCH_CHECK_S = 0.2
# the documented bound: redis_reader_stall_s after the last read that made progress, seen at
# the next epoch check; the rest is slack for a loaded machine
BOUND_S = STALL_S + EPOCH_CHECK_S + 3.0


@contextlib.asynccontextmanager
async def redis_hub(url: str, **overrides: Any) -> AsyncIterator[RunningHub]:
    settings = fast_settings(
        url, redis_reader_stall_s=STALL_S, redis_epoch_check_s=EPOCH_CHECK_S, **overrides
    )
    async with run_hub(settings, backend=RedisBackend(url, settings)) as running:
        yield running


async def readyz(running: RunningHub) -> int:
    async with running.http() as http:
        return (await http.get("/readyz", timeout=5.0)).status_code


async def metric(running: RunningHub, name: str) -> float:
    async with running.http() as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def wait_status(running: RunningHub, status: int, timeout: float) -> None:
    async def reached() -> bool:
        return await readyz(running) == status

    await wait_for(reached, timeout, what=f"/readyz {status}")


async def wait_metric(running: RunningHub, name: str, value: float) -> None:
    async def reached() -> bool:
        return await metric(running, name) == value

    await wait_for(reached, BOUND_S, what=f"{name} {value}")


async def test_a_detached_replica_makes_the_hub_not_ready_and_the_metrics_show_it(
    tmp_path: Path,
) -> None:
    fast_sync = ["--repl-diskless-sync-delay", "0"]
    with running_redis(tmp_path / "primary", extra=fast_sync) as primary:
        replica = RedisServer(
            tmp_path / "replica", extra=[*fast_sync, "--replicaof", "127.0.0.1", str(primary.port)]
        )
        replica.start()
        try:
            await _detached_replica(primary, replica)
        finally:
            replica.kill()


async def _detached_replica(primary: RedisServer, replica: RedisServer) -> None:
    async with (
        RedisPublisher(primary.url, fast_settings(primary.url)) as publisher,
        redis_hub(replica.url) as running,
    ):
        await publisher.publish("p1", "test.tick", {"i": 0})
        await wait_for(
            lambda: replica.cli("get", "hub:{p1}:seq").strip() == "1", timeout=5, what="sync"
        )
        watcher = await FrameRecorder.open(running.ws_url("p1"))
        await watcher.wait_frames(1)
        for i in range(1, 4):
            await publisher.publish("p1", "test.tick", {"i": i})
        await wait_for(lambda: len(watcher.events) == 3, timeout=5, what="3 events")
        assert await readyz(running) == 200
        assert await metric(running, "hub_redis_reader_stalled") == 0
        assert await metric(running, "hub_redis_reader_connected") == 1

        # cut the replica off: it keeps answering, with data that no longer moves
        replica.cli("replicaof", "127.0.0.1", str(free_port()))
        for i in range(4, 7):
            await publisher.publish("p1", "test.tick", {"i": i})
        await wait_status(running, 503, BOUND_S)
        assert await metric(running, "hub_redis_reader_stalled") == 1
        assert await metric(running, "hub_redis_reader_last_read_age_seconds") > STALL_S
        assert len(watcher.events) == 3  # starved, without an error

        replica.cli("replicaof", "127.0.0.1", str(primary.port))
        await wait_for(lambda: len(watcher.events) == 6, timeout=10, what="the rest")
        assert [e["data"]["i"] for e in watcher.events] == [1, 2, 3, 4, 5, 6]
        await wait_status(running, 200, BOUND_S)
        await wait_metric(running, "hub_redis_reader_stalled", 0)
        await watcher.close()


@pytest.mark.parametrize("mode", ["ALL", "WRITE"])
async def test_client_pause_on_the_primary(tmp_path: Path, mode: str) -> None:
    """ALL: every command waits, PING too: /readyz 503 within the bound, the reader is seen
    disconnected, and everything recovers. WRITE: nothing new can be written, so the
    reader, caught up, is not stalled and the hub stays ready."""
    with running_redis(tmp_path / "redis") as server:
        async with redis_hub(server.url) as running:
            publisher = RedisPublisher(server.url, fast_settings(server.url))
            await publisher.publish("p1", "test.tick", {"i": 0})
            watcher = await FrameRecorder.open(running.ws_url("p1"))
            await watcher.wait_frames(1)
            await publisher.publish("p1", "test.tick", {"i": 1})
            await wait_for(lambda: len(watcher.events) == 1, timeout=5, what="an event")
            server.cli("client", "pause", "4000", mode)
            if mode == "ALL":
                await wait_status(running, 503, BOUND_S)
                assert await metric(running, "hub_redis_reader_last_read_age_seconds") > 0.5
                await wait_for(
                    lambda: not running.hub.backend.reader.healthy,  # type: ignore[attr-defined]
                    timeout=BOUND_S,
                    what="the reader seen disconnected",
                )
                assert await metric(running, "hub_redis_reader_connected") == 0
            else:
                assert await readyz(running) == 200
            server.cli("client", "unpause")
            await publisher.publish("p1", "test.tick", {"i": 2})
            await wait_for(lambda: len(watcher.events) == 2, timeout=10, what="after unpause")
            await wait_status(running, 200, BOUND_S)
            if mode == "ALL":
                assert await metric(running, "hub_redis_reader_reconnects_total") >= 1
            await watcher.close()
            await publisher.aclose()

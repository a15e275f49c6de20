"""Redis faults with real redis-server processes: unreachable at start, kill -9 and restart with
AOF, restart without persistence (a new epoch), data flushed under a live reader, a dead link
(blackholed proxy) noticed within seconds, and a publisher retry after a lost reply."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from hub.backends.redis import RedisBackend
from hub.client import HubClient, HubClientError
from hub.config import Settings
from hub.protocol import GapFrame, SnapshotFrame
from hub.redis_publisher import RedisPublisher

from .redis_support import (
    BlackholeProxy,
    RedisServer,
    fast_settings,
    free_port,
    running_redis,
)
from .support import FrameRecorder, RunningHub, run_hub, wait_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@contextlib.asynccontextmanager
async def redis_hub(url: str, **overrides: Any) -> AsyncIterator[RunningHub]:
    settings = fast_settings(url, **overrides)
    async with run_hub(settings, backend=RedisBackend(url, settings)) as running:
        yield running


async def ready_status(running: RunningHub) -> int:
    async with running.http() as http:
        return (await http.get("/readyz")).status_code


async def publish_until_accepted(
    http: httpx.AsyncClient, project: str, body: dict[str, Any], timeout: float = 20.0
) -> int:
    """POST one event, retrying 503s and dead connections with the same id, as publishers do."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            response = await http.post(f"/v1/projects/{project}/events", json=body)
            if response.status_code == 202:
                seqs: list[int] = response.json()["seqs"]
                return seqs[0]
            assert response.status_code == 503, response.text
        except httpx.TransportError:
            pass
        assert loop.time() < deadline, f"publish of {body} not accepted in {timeout}s"
        await asyncio.sleep(0.01)  # retry backoff, as a publisher would


async def test_unreachable_at_start_then_everything_recovers_when_redis_comes_up(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    async with redis_hub(url) as running, running.http() as http:
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (503, "not ready")
        refused = await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": {}})
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "unavailable" and error["retryable"] is True
        assert error["message"].startswith("redis unavailable: ")

        turned_away = await FrameRecorder.open(running.ws_url("p1", since=0))
        await turned_away.wait_closed(timeout=10)
        assert turned_away.close_code == 1013
        [frame] = turned_away.frames
        assert frame["op"] == "error"
        assert (frame["code"], frame["close"], frame["retryable"]) == ("unavailable", 1013, True)

        server = RedisServer(tmp_path / "late", port=port)
        server.start()
        try:
            await wait_for(lambda: ready_status(running), what="ready once redis is up")
            assert await publish_until_accepted(http, "p1", {"type": "a.b", "data": 1}) == 1
            subscriber = await FrameRecorder.open(running.ws_url("p1", since=0))
            await wait_for(lambda: subscriber.seqs == [1], what="the replayed event")
            await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": 2})
            await wait_for(lambda: subscriber.seqs == [1, 2], what="a live event")
            await subscriber.close()
        finally:
            server.kill()


async def test_kill_9_and_restart_with_aof_every_subscriber_gets_every_acknowledged_event_once(
    tmp_path: Path, rng: random.Random
) -> None:
    total = 300
    with running_redis(tmp_path / "aof", appendonly=True) as server:
        async with redis_hub(server.url) as a, redis_hub(server.url) as b:
            subscribers = [
                await FrameRecorder.open(hub.ws_url("p1", since=0)) for hub in (a, b, a, b)
            ]
            await wait_for(lambda: all(s.welcome is not None for s in subscribers))
            acked: dict[int, int] = {}

            async def publisher(running: RunningHub, ids: range) -> None:
                async with running.http() as http:
                    for i in ids:
                        body = {"type": "a.b", "id": f"e{i}", "key": f"k{i % 7}", "data": i}
                        acked[i] = await publish_until_accepted(http, "p1", body)
                        if rng.random() < 0.3:
                            await asyncio.sleep(0)

            publishing = asyncio.gather(
                publisher(a, range(0, total, 2)), publisher(b, range(1, total, 2))
            )
            await wait_for(lambda: len(acked) >= total // 3, what="a third published")
            await asyncio.to_thread(server.restart)  # kill -9, then start from the AOF
            acked_at_restart = len(acked)
            await asyncio.wait_for(publishing, 60)

            assert acked_at_restart < total  # the restart came mid-stream
            assert sorted(acked.values()) == list(range(1, total + 1))
            await wait_for(
                lambda: all(len(s.seqs) >= total for s in subscribers),
                timeout=20,
                what="every subscriber caught up",
            )
            by_seq = {seq: i for i, seq in acked.items()}
            for subscriber in subscribers:
                assert subscriber.seqs == list(range(1, total + 1))  # each once, in order
                assert [e["data"] for e in subscriber.events] == [
                    by_seq[s] for s in subscriber.seqs
                ]
                assert subscriber.closed is None  # nobody was dropped
                await subscriber.close()
            assert a.hub.backend.reader.reconnects >= 2  # type: ignore[attr-defined]


async def test_restart_without_persistence_gives_gap_and_snapshot_with_a_new_epoch(
    redis_server: RedisServer,
) -> None:
    async with redis_hub(redis_server.url) as running, running.http() as http:
        watcher = await FrameRecorder.open(running.ws_url("p1"))
        client = HubClient(running.url, "p1", backoff_initial=0.01, backoff_max=0.1)
        from_client: list[Any] = []

        async def consume() -> None:
            with contextlib.suppress(HubClientError):
                async for frame in client:
                    from_client.append(frame)

        consuming = asyncio.create_task(consume())
        await wait_for(lambda: watcher.welcome is not None and client.welcome is not None)
        for i in range(5):
            await http.post(
                "/v1/projects/p1/events", json={"type": "a.b", "key": f"k{i % 2}", "data": i}
            )
        await wait_for(lambda: len(watcher.seqs) == 5 and len(from_client) == 5)
        assert watcher.welcome is not None
        old_epoch = watcher.welcome["epoch"]

        await asyncio.to_thread(redis_server.restart)  # no AOF, no RDB: everything is gone
        for i in range(3):
            body = {"type": "a.b", "key": f"k{i}", "id": f"after{i}", "data": 100 + i}
            assert await publish_until_accepted(http, "p1", body) == i + 1

        # the live subscriber is told its seqs mean nothing now
        await watcher.wait_closed(timeout=10)
        assert watcher.close_code == 1001
        last = watcher.frames[-1]
        assert last["op"] == "error" and last["code"] == "epoch_changed"

        # coming back with since + the old epoch: gap (epoch), then the new epoch's snapshot
        back = await FrameRecorder.open(running.ws_url("p1", since=5, epoch=old_epoch))
        await wait_for(lambda: len(back.frames) >= 3, what="welcome, gap, snapshot")
        welcome, gap, snapshot = back.frames[:3]
        assert welcome["op"] == "welcome" and welcome["epoch"] != old_epoch
        assert gap == {"op": "gap", "reason": "epoch", "since": 5, "oldest": 1, "head": 3}
        assert snapshot["op"] == "snapshot" and snapshot["head"] == 3
        assert [(e["key"], e["seq"], e["data"]) for e in snapshot["events"]] == [
            ("k0", 1, 100),
            ("k1", 2, 101),
            ("k2", 3, 102),
        ]
        await back.close()

        # the Python client does the same on its own
        await wait_for(lambda: any(isinstance(f, SnapshotFrame) for f in from_client))
        gaps = [f for f in from_client if isinstance(f, GapFrame)]
        assert [g.reason for g in gaps] == ["epoch"]
        assert client.epoch == welcome["epoch"]
        await client.close()
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming


async def test_redis_back_from_an_older_snapshot_starts_a_new_epoch_never_reusing_seqs(
    tmp_path: Path,
) -> None:
    with running_redis(tmp_path / "rdb") as server:
        async with redis_hub(server.url) as running, running.http() as http:
            watcher = await FrameRecorder.open(running.ws_url("p1"))
            await wait_for(lambda: watcher.welcome is not None)
            for i in range(5):
                await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": i})
                if i == 2:
                    server.cli("save")  # an RDB snapshot taken at head 3
            await wait_for(lambda: watcher.seqs == [1, 2, 3, 4, 5])
            assert watcher.welcome is not None
            old_epoch = watcher.welcome["epoch"]

            await asyncio.to_thread(server.restart)  # back at head 3: seqs 4 and 5 are gone
            body = {"type": "a.b", "id": "after", "data": 9}
            # this hub saw seq 5, so seq 4 is not handed out again in the old epoch
            assert await publish_until_accepted(http, "p1", body) == 1
            await watcher.wait_closed(timeout=10)
            assert watcher.close_code == 1001

            back = await FrameRecorder.open(running.ws_url("p1", since=5, epoch=old_epoch))
            await wait_for(lambda: len(back.frames) >= 3, what="welcome, gap, snapshot")
            welcome, gap = back.frames[:2]
            assert welcome["op"] == "welcome" and welcome["epoch"] != old_epoch
            assert gap == {"op": "gap", "reason": "epoch", "since": 5, "oldest": 1, "head": 1}
            await back.close()


async def test_data_flushed_under_a_live_reader_is_noticed_as_a_new_epoch(
    redis_server: RedisServer,
) -> None:
    async with redis_hub(redis_server.url) as running, running.http() as http:
        watcher = await FrameRecorder.open(running.ws_url("p1"))
        await wait_for(lambda: watcher.welcome is not None)
        for i in range(3):
            await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": i})
        await wait_for(lambda: watcher.seqs == [1, 2, 3])
        direct = Redis.from_url(redis_server.url)
        await direct.flushall()
        await direct.aclose()
        # seq 1 of the new epoch sits below the reader's cursor: only the epoch check sees it
        response = await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": 9})
        assert response.json() == {"seqs": [1]}
        await watcher.wait_closed(timeout=10)
        assert watcher.close_code == 1001
        assert watcher.seqs == [1, 2, 3]


async def test_a_blackholed_link_is_noticed_within_seconds_and_reading_resumes_after(
    redis_server: RedisServer,
) -> None:
    proxy = BlackholeProxy(redis_server.port)
    await proxy.start()
    try:
        async with redis_hub(proxy.url) as running, running.http() as http:
            backend = running.hub.backend
            assert isinstance(backend, RedisBackend)
            watcher = await FrameRecorder.open(running.ws_url("p1"))
            await wait_for(lambda: watcher.welcome is not None)
            await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": 1})
            await wait_for(lambda: watcher.seqs == [1])

            loop = asyncio.get_running_loop()
            proxy.blackhole()
            cut_at = loop.time()
            await wait_for(lambda: not backend.reader.healthy, timeout=5, what="reader noticed")
            assert loop.time() - cut_at < 3.0  # socket timeout 1 s, XREAD BLOCK 0.2 s
            assert await ready_status(running) == 503
            sent_at = loop.time()
            refused = await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": 0})
            assert refused.status_code == 503
            assert loop.time() - sent_at < 3.0  # failed within the socket timeout, no hang

            # meanwhile another process publishes straight to Redis
            async with RedisPublisher(redis_server.url, Settings()) as publisher:
                for n in (2, 3, 4):
                    await publisher.publish("p1", "a.b", n)

            proxy.restore()
            await wait_for(lambda: ready_status(running), what="ready again")
            await wait_for(lambda: watcher.seqs == [1, 2, 3, 4], what="resumed from its cursor")
            await http.post("/v1/projects/p1/events", json={"type": "a.b", "data": 5})
            await wait_for(lambda: watcher.seqs == [1, 2, 3, 4, 5])
            assert [e["data"] for e in watcher.events] == [1, 2, 3, 4, 5]
            assert watcher.closed is None
            await watcher.close()
    finally:
        await proxy.close()


async def test_a_publisher_retrying_after_a_lost_reply_publishes_once(
    redis_server: RedisServer,
) -> None:
    proxy = BlackholeProxy(redis_server.port)
    await proxy.start()
    direct = Redis.from_url(redis_server.url)
    try:
        publisher = RedisPublisher(proxy.url, fast_settings(proxy.url), backoff=0.05)
        async with publisher:
            assert await publisher.publish("p1", "a.b", 0) == 1
            proxy.blackhole(replies_only=True)  # Redis runs the script; the reply never comes
            publishing = asyncio.create_task(publisher.publish("p1", "a.b", 1, id="only-once"))
            await wait_for(lambda: publisher.attempts >= 3, what="an attempt timed out")
            assert not publishing.done()
            assert await direct.xlen("hub:{p1}:events") == 2
            proxy.restore()
            assert await asyncio.wait_for(publishing, 10) == 2
        assert await direct.xlen("hub:{p1}:events") == 2
        assert await direct.get("hub:{p1}:seq") == b"2"
    finally:
        await direct.aclose()
        await proxy.close()

"""Several hub instances on one Redis: the same events with the same seqs everywhere, a client
that moves between instances loses nothing, and publishers in other processes share one
contiguous sequence."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from hub.backends import create_backend
from hub.backends.redis import RedisBackend
from hub.config import Settings

from .redis_support import REPO, RedisServer, fast_settings, running_redis
from .support import FrameRecorder, RunningHub, run_hub, wait_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@contextlib.asynccontextmanager
async def two_hubs(url: str) -> AsyncIterator[tuple[RunningHub, RunningHub]]:
    settings = fast_settings(url)
    async with (
        run_hub(settings, backend=RedisBackend(url, settings)) as a,
        run_hub(settings, backend=RedisBackend(url, settings)) as b,
    ):
        yield a, b


async def test_a_client_on_each_instance_sees_the_same_events_with_the_same_seqs(
    redis_server: RedisServer,
) -> None:
    async with two_hubs(redis_server.url) as (a, b):
        on_a = await FrameRecorder.open(a.ws_url("p1"))
        on_b = await FrameRecorder.open(b.ws_url("p1"))
        await wait_for(lambda: on_a.welcome is not None and on_b.welcome is not None)
        assert on_a.welcome == on_b.welcome  # one epoch, one head, wherever you connect
        async with a.http() as http_a, b.http() as http_b:
            for i in range(50):  # publish through both instances, in batches
                http = http_a if i % 2 else http_b
                body = [{"type": "agent.step.updated", "key": f"s{j}", "data": {"i": i, "j": j}}
                        for j in range(4)]  # fmt: skip
                response = await http.post("/v1/projects/p1/events", json=body)
                assert response.status_code == 202, response.text
        await wait_for(lambda: len(on_a.seqs) == len(on_b.seqs) == 200, what="200 events each")
        assert on_a.seqs == list(range(1, 201))
        assert on_a.events == on_b.events  # identical frames, built once per instance
        await on_a.close()
        await on_b.close()


async def test_a_client_moving_from_a_to_b_mid_stream_with_since_loses_nothing(
    redis_server: RedisServer,
) -> None:
    total = 300
    async with two_hubs(redis_server.url) as (a, b):
        started = asyncio.Event()

        async def publisher() -> None:
            for i in range(total):
                await a.hub.publish("p1", "ingest.job.updated", {"i": i}, key=f"j{i % 5}")
                if i == 50:
                    started.set()
                await asyncio.sleep(0)

        publishing = asyncio.create_task(publisher())
        await started.wait()
        first = await FrameRecorder.open(a.ws_url("p1", since=0))
        await wait_for(lambda: len(first.seqs) >= 120, what="a first part on A")
        await first.close()
        welcome = first.welcome
        assert welcome is not None
        last = first.seqs[-1]
        second = await FrameRecorder.open(b.ws_url("p1", since=last, epoch=welcome["epoch"]))
        await publishing
        await wait_for(  # the rest after its own since, which may be nothing if A gave it all
            lambda: bool(second.ops("replayed")) and max(last, *second.seqs) == total,
            what="the rest on B",
        )
        await second.close()
        assert first.seqs + second.seqs == list(range(1, total + 1))
        assert [e["data"] for e in first.events + second.events] == [{"i": i} for i in range(total)]
        assert second.frames[0]["op"] == "welcome"
        assert len(second.ops("replayed")) == 1
        assert not second.ops("gap") and not second.ops("snapshot")


async def publisher_process(
    url: str, project: str, count: int, *, batch: int, tag: str
) -> asyncio.subprocess.Process:
    argv = ["publish", url, project, str(count), "--batch", str(batch), "--tag", tag]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.redis_support", *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )


async def test_four_publisher_processes_share_one_contiguous_sequence(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    async with run_hub(fast_settings(url), backend=RedisBackend(url, fast_settings(url))) as hub:
        live = await FrameRecorder.open(hub.ws_url("p1"))
        await wait_for(lambda: live.welcome is not None)
        workers = [
            await publisher_process(url, "p1", 250, batch=batch, tag=f"w{n}")
            for n, batch in enumerate([1, 1, 3, 7])
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), 60)
        assert [w.returncode for w in workers] == [0, 0, 0, 0]
        per_worker = [msgspec.json.decode(out) for out, _ in outputs]
        every = sorted(seq for seqs in per_worker for seq in seqs)
        assert every == list(range(1, 1001))  # no hole, no duplicate
        for seqs in per_worker:
            assert seqs == sorted(seqs)  # each publisher's events in its own order
        await wait_for(lambda: len(live.seqs) >= 1000, what="all 1000 live")
        assert live.seqs == list(range(1, 1001))
        by_seq = {e["seq"]: e["data"] for e in live.events}
        for n, seqs in enumerate(per_worker):
            assert [by_seq[s]["w"] for s in seqs] == [f"w{n}"] * 250  # type: ignore[index]
            assert [by_seq[s]["i"] for s in seqs] == list(range(250))  # type: ignore[index]
        await live.close()


def test_a_redis_url_selects_the_redis_backend() -> None:
    backend = create_backend(Settings(backend="redis://127.0.0.1:1/0"))
    assert isinstance(backend, RedisBackend) and backend.name == "redis"
    env = Settings.from_env({"HUB_BACKEND": "redis://127.0.0.1:2/3", "HUB_REDIS_CLUSTER": "1"})
    assert (env.backend, env.redis_cluster) == ("redis://127.0.0.1:2/3", True)
    with pytest.raises(ValueError, match="redis_socket_timeout_s"):
        Settings(redis_socket_timeout_s=0)
    reader = RedisBackend("redis://127.0.0.1:1/0", Settings(redis_socket_timeout_s=2.0)).reader
    assert reader._block_ms == 1_000  # XREAD BLOCK stays at half the socket timeout


LISTENING = re.compile(rb"hub listening on http://127\.0\.0\.1:(\d+)")


@contextlib.asynccontextmanager
async def hub_serve(*args: str, env: dict[str, str]) -> AsyncIterator[str]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "serve", "--port", "0", "--log-level", "warning", *args,
        cwd=REPO, env={**base_env, "PYTHONUNBUFFERED": "1", **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            while not (match := LISTENING.search(await process.stdout.readline())):
                assert process.returncode is None, "hub serve exited"
        yield f"http://127.0.0.1:{int(match.group(1))}"
    finally:
        process.terminate()
        await process.wait()


async def test_hub_serve_takes_redis_from_the_backend_flag_or_hub_backend(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    async with (
        hub_serve("--backend", url, env={}) as flag_hub,
        hub_serve(env={"HUB_BACKEND": url}) as env_hub,
        httpx.AsyncClient(timeout=10) as http,
    ):
        for base in (flag_hub, env_hub):
            ready = await http.get(f"{base}/readyz")
            assert ready.json() == {"status": "ready", "backend": "redis"}
        watcher = await FrameRecorder.open(env_hub.replace("http", "ws") + "/v1/projects/p1/ws")
        await wait_for(lambda: watcher.welcome is not None)
        response = await http.post(
            f"{flag_hub}/v1/projects/p1/events", json={"type": "a.b", "data": {"x": 1}}
        )
        assert response.json() == {"seqs": [1]}
        await wait_for(lambda: watcher.seqs == [1], what="the event, via the other process")
        assert watcher.events[0]["data"] == {"x": 1}
        await watcher.close()


async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with running_redis(tmp_path / "unix", extra=["--unixsocket", str(sock)]):
        url = f"unix://{sock}?db=0"
        async with run_hub(
            fast_settings(url), backend=RedisBackend(url, fast_settings(url))
        ) as hub:
            watcher = await FrameRecorder.open(hub.ws_url("p1"))
            await wait_for(lambda: watcher.welcome is not None)
            assert await hub.hub.publish("p1", "a.b", {"via": "unix"}) == 1
            await wait_for(lambda: watcher.seqs == [1])
            async with hub.http() as http:
                assert (await http.get("/readyz")).status_code == 200
            await watcher.close()

"""Long polls sent by a hostile client (docs/protocol.md "Long polling"): the work one poll
costs does not grow with a tiny `limit`, and a thousand waiting polls whose keys never match
cost a busy project's publishers nothing per poll."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect

from hub.backends import MemoryBackend
from hub.backends.base import ReadResult
from hub.config import Settings

from .support import PingProbe, RunningHub, run_hub, wait_for


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


@contextlib.asynccontextmanager
async def waiting_polls(running: RunningHub, queries: list[str]) -> AsyncIterator[None]:
    """One raw-socket long poll per query, all waiting; aborted on exit."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for query in queries:
            _, writer = await asyncio.open_connection(running.host, running.port)
            request = f"GET /v1/projects/p1/events?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            writer.write(request.encode())
            writers.append(writer)
        polls = running.hub.manager.polls
        await wait_for(lambda: polls.count == len(queries), timeout=30, what="polls waiting")
        yield
    finally:
        for writer in writers:
            writer.transport.abort()


@pytest.mark.usefixtures("hub_gc")
async def test_a_thousand_keyed_polls_cost_a_publisher_no_work_per_poll(rng: random.Random) -> None:
    """1,000 polls from one client, each waiting for its own key of a busy project (a key no
    event has): the wake-up check finds them by key, so a batch of 1,000 events costs the
    hub's loop about what it costs with no poll waiting (0.75 s of loop CPU per batch before
    the fix, about 3 ms after it)."""
    settings = Settings(retention_events=50_000, max_long_polls=1_000)
    async with run_hub(settings) as running:
        head = 0
        queries = [
            f"since={head}&wait=30&keys=job/idle-{rng.randrange(10**9)}-{i}" for i in range(1000)
        ]
        async with (
            waiting_polls(running, queries),
            connect(running.ws_url("quiet")) as ws,
            httpx.AsyncClient(base_url=running.url, timeout=30) as http,
        ):
            assert msgspec.json.decode(await ws.recv())["op"] == "welcome"
            probe = PingProbe(ws)
            batch_cpu: list[float] = []
            for round_ in range(5):
                batch = [
                    {"type": "a.b", "key": f"job/{round_}-{i}", "data": i} for i in range(1000)
                ]
                cpu = time.thread_time()  # the client's and the in-process hub's work
                response = await http.post("/v1/projects/p1/events", json=batch)
                batch_cpu.append(time.thread_time() - cpu)
                assert response.status_code == 202, response.text
                await probe.one_more()
            await probe.stop()
            assert running.hub.manager.polls.count == 1000, "no poll was woken by others' keys"
    worst_cpu = max(probe.loop_cpu)
    print(
        f"bystander: {len(probe.rtts)} pings, worst loop CPU {worst_cpu * 1000:.0f} ms; "
        f"publish CPU per batch {[round(c * 1000) for c in batch_cpu]} ms"
    )
    assert max(batch_cpu) < 0.3, f"a batch cost {max(batch_cpu) * 1000:.0f} ms of loop CPU"
    assert worst_cpu < 0.3, f"the loop held a ping for {worst_cpu * 1000:.0f} ms of work"


async def test_polls_on_projects_that_never_exist_leave_no_state_behind(
    rng: random.Random,
) -> None:
    """300 polls, each on its own project that nobody publishes to, all abandoned mid-wait:
    the hub holds no project, no watch and no waiter for any of them afterwards."""
    async with run_hub(Settings()) as running:
        backend, polls = running.hub.backend, running.hub.manager.polls
        assert isinstance(backend, MemoryBackend)
        writers = []
        for i in range(300):
            _, writer = await asyncio.open_connection(running.host, running.port)
            project = f"ghost-{rng.randrange(10**12)}-{i}"
            path = f"/v1/projects/{project}/events?since=0&wait=30"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            writers.append(writer)
        await wait_for(lambda: polls.count == 300, timeout=30, what="polls waiting")
        assert backend.project_count() == 0, "a poll created its project"
        for writer in writers:
            writer.transport.abort()  # gone mid-wait, without a word
        await wait_for(lambda: polls.count == 0, timeout=10, what="polls freed")
        assert backend.project_count() == 0
        assert not backend._watched and not backend._promised, "watches left behind"
        assert not polls._by_project, "waiter entries left behind"
        assert running.hub.manager.polls.count == 0

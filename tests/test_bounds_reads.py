"""Reads never create projects (issue 11.1): a token that can only subscribe cannot allocate
memory or push another tenant's project out by reading ids that do not exist, on any path;
a subscriber of a project that does not exist yet gets its events from the first one, and a
client that read the empty view resumes with a replay from 0, not a `gap`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect

from hub.auth import mint_token
from hub.backends.base import PublishRequest
from hub.backends.memory import MemoryBackend
from hub.backends.memory_epochs import EpochBook
from hub.config import Settings

from .support import RunningHub, run_hub, wait_for

SECRET = "bounds-test-secret-that-is-32-bytes-or-more"
OTHER = "beta-ledger"


def bearer(*projects: str, scopes: tuple[str, ...] = ("subscribe",)) -> dict[str, str]:
    token = mint_token(SECRET, subject="reader", projects=projects, scopes=scopes)
    return {"Authorization": f"Bearer {token}"}


def frames(message: str | bytes) -> list[dict[str, Any]]:
    decoded = msgspec.json.decode(message)
    return decoded if isinstance(decoded, list) else [decoded]


@pytest.fixture
async def small_hub() -> AsyncIterator[RunningHub]:
    async with run_hub(Settings(secret=SECRET, max_projects=50, heartbeat_s=5.0)) as running:
        yield running


def memory_backend(running: RunningHub) -> MemoryBackend:
    backend = running.hub.backend
    assert isinstance(backend, MemoryBackend)
    return backend


async def ws_read(running: RunningHub, project: str, headers: dict[str, str]) -> dict[str, Any]:
    """Subscribe with since=0 until `replayed`; return the welcome frame."""
    url = running.ws_url(project, since=0)
    async with connect(url, additional_headers=headers) as ws:
        welcome: dict[str, Any] = {}
        while True:
            for frame in frames(await asyncio.wait_for(ws.recv(), 5)):
                if frame["op"] == "welcome":
                    welcome = frame
                if frame["op"] == "replayed":
                    return welcome


async def sse_read(http: httpx.AsyncClient, project: str, headers: dict[str, str]) -> None:
    async with http.stream(
        "GET", f"/v1/projects/{project}/sse?since=0", headers=headers
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "event: replayed":
                return
    raise AssertionError("SSE stream ended before `replayed`")


async def http_read(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await http.get(path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_reads_of_500_fresh_ids_by_a_subscribe_only_token_leave_others_intact(
    small_hub: RunningHub,
) -> None:
    hub = small_hub.hub
    for i in range(5):
        await hub.publish(OTHER, "ingest.job.updated", {"i": i}, key=f"job/{i}")
    owner = bearer(OTHER)
    http = small_hub.http()

    reader = bearer("acme-*")

    async def read_fresh(n: int) -> None:
        project = f"acme-{n}"
        path = n % 4
        if path == 0:
            welcome = await ws_read(small_hub, project, reader)
            assert (welcome["head"], welcome["oldest"]) == (0, 1)
        elif path == 1:
            await sse_read(http, project, reader)
        elif path == 2:
            body = await http_read(http, f"/v1/projects/{project}/events", reader)
            assert (body["head"], body["events"]) == (0, [])
        else:
            body = await http_read(http, f"/v1/projects/{project}/snapshot", reader)
            assert (body["head"], body["events"]) == (0, [])

    async with http:
        before = await http_read(http, f"/v1/projects/{OTHER}/events", owner)
        snapshot_before = await http_read(http, f"/v1/projects/{OTHER}/snapshot", owner)
        for start in range(0, 500, 50):
            await asyncio.gather(*(read_fresh(n) for n in range(start, start + 50)))
        after = await http_read(http, f"/v1/projects/{OTHER}/events", owner)
        snapshot_after = await http_read(http, f"/v1/projects/{OTHER}/snapshot", owner)

    assert memory_backend(small_hub).project_count() == 1  # no read allocated a project
    assert after == before
    assert snapshot_after == snapshot_before
    assert after["epoch"] == before["epoch"] and after["head"] == 5


async def test_publishing_to_more_than_max_projects_still_evicts_the_least_recent(
    small_hub: RunningHub,
) -> None:
    hub = small_hub.hub
    await hub.publish(OTHER, "ingest.job.updated", {"i": 0}, key="job/0")
    epoch = (await hub.backend.position(OTHER)).epoch
    for n in range(50):  # the 51st project pushes the least recently active one out
        await hub.publish(f"acme-{n}", "ingest.job.updated", {"n": n})
    assert memory_backend(small_hub).project_count() == 50
    position = await hub.backend.position(OTHER)
    assert position.head == 0  # gone: it reads as a project that does not exist
    await hub.publish(OTHER, "ingest.job.updated", {"i": 1})
    assert (await hub.backend.position(OTHER)).epoch != epoch  # a new life, a new epoch


async def test_a_subscriber_of_a_missing_project_gets_its_first_events_in_the_same_epoch(
    small_hub: RunningHub,
) -> None:
    hub = small_hub.hub
    project = "acme-later"
    url = small_hub.ws_url(project)
    async with connect(url, additional_headers=bearer("acme-*")) as ws:
        welcome = frames(await asyncio.wait_for(ws.recv(), 5))[0]
        assert (welcome["op"], welcome["head"]) == ("welcome", 0)
        assert memory_backend(small_hub).project_count() == 0
        await wait_for(lambda: hub.manager.project_connection_count(project) == 1)
        await hub.publish(project, "ingest.job.updated", {"i": 1})
        await hub.publish(project, "ingest.job.updated", {"i": 2})
        received: list[dict[str, Any]] = []
        while len(received) < 2:
            received += frames(await asyncio.wait_for(ws.recv(), 5))
        assert [(f["op"], f["seq"]) for f in received] == [("event", 1), ("event", 2)]
    assert (await hub.backend.position(project)).epoch == welcome["epoch"]


async def test_a_client_that_read_the_empty_view_replays_from_zero_after_the_first_publish(
    small_hub: RunningHub,
) -> None:
    hub = small_hub.hub
    project = "acme-fresh"
    reader = bearer("acme-*")
    async with small_hub.http() as http:
        empty = await http_read(http, f"/v1/projects/{project}/events", reader)
    assert (empty["head"], empty["oldest"]) == (0, 1)
    await hub.publish(project, "ingest.job.updated", {"i": 1})
    url = small_hub.ws_url(project, since=0, epoch=empty["epoch"])
    async with connect(url, additional_headers=reader) as ws:
        got: list[dict[str, Any]] = []
        while not any(f["op"] == "replayed" for f in got):
            got += frames(await asyncio.wait_for(ws.recv(), 5))
    assert [f["op"] for f in got] == ["welcome", "event", "replayed"]
    assert got[0]["epoch"] == empty["epoch"]


# --- epochs of projects that do not exist yet (memory backend) --------------------------------


def test_the_epoch_book_is_stable_per_project_and_moves_on_when_one_is_dropped() -> None:
    book = EpochBook("e0")
    first = book.epoch("p1")
    assert book.epoch("p1") == first != book.epoch("p2")
    assert EpochBook("e1").epoch("p1") != first  # another process, another epoch
    book.dropped("p1")
    assert book.epoch("p1") != first


async def test_a_live_subscribers_epoch_is_pinned_until_the_project_exists() -> None:
    backend = MemoryBackend(Settings())
    await backend.watch("p1")
    promised = (await backend.position("p1")).epoch
    backend._epochs.dropped("p1")  # a project of the same slot was dropped meanwhile
    assert (await backend.position("p1")).epoch == promised
    await backend.publish("p1", [PublishRequest("ingest.job.updated", msgspec.Raw(b"1"))])
    assert (await backend.position("p1")).epoch == promised
    await backend.unwatch("p1")


async def test_a_dropped_project_comes_back_in_a_new_epoch() -> None:
    backend = MemoryBackend(Settings(max_projects=1))
    one = PublishRequest("ingest.job.updated", msgspec.Raw(b"1"))
    await backend.publish("p1", [one])
    epoch = (await backend.position("p1")).epoch
    await backend.publish("p2", [one])  # pushes p1 out
    assert backend.projects_dropped["max_projects"] == 1
    empty = await backend.position("p1")
    assert (empty.head, empty.epoch != epoch) == (0, True)
    await backend.publish("p1", [one])
    assert (await backend.position("p1")).epoch == empty.epoch

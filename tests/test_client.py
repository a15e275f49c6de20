"""hub.client.HubClient against a real hub: reconnects, resumes, dedupes, surfaces gaps."""

from __future__ import annotations

import asyncio

import pytest

from hub.client import HubClient, HubClientError
from hub.config import Settings
from hub.protocol import EventFrame, GapFrame, SnapshotFrame

from .support import RunningHub, run_hub, wait_for


async def consume(client: HubClient, frames: list[object], stop_at_seq: int) -> None:
    async for frame in client:
        frames.append(frame)
        if isinstance(frame, EventFrame) and frame.seq >= stop_at_seq:
            return


async def test_client_survives_server_closing_it_and_resumes_without_loss_or_duplicate(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    total = 2000
    frames: list[object] = []
    client = HubClient(running_hub.url, "p1", backoff_initial=0.01, backoff_max=0.05)
    consumer = asyncio.create_task(consume(client, frames, total))
    await wait_for(lambda: client.state == "open", what="client open")
    drops = 0
    for i in range(total):
        await hub.publish("p1", "agent.message.appended", {"i": i})
        if i % 25 == 0:
            await asyncio.sleep(0)
        if i % 400 == 200:
            # the hub closes every connection mid-stream (as on a deploy): 1001, reconnect
            drops += hub.drain()
    await asyncio.wait_for(consumer, 30)
    await client.close()
    assert drops >= 1
    assert client.connects >= 2
    seqs = [f.seq for f in frames if isinstance(f, EventFrame)]
    assert seqs == list(range(1, total + 1))


async def test_client_that_saw_no_event_resumes_from_welcome_head(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    for i in range(5):
        await hub.publish("p1", "a.b", {"i": i})
    frames: list[object] = []
    client = HubClient(running_hub.url, "p1", backoff_initial=0.01, backoff_max=0.05)
    consumer = asyncio.create_task(consume(client, frames, 7))
    await wait_for(lambda: client.state == "open")
    hub.drain()  # dropped before it saw any event
    await hub.publish("p1", "a.b", {"i": 5})  # published while it is away
    await wait_for(lambda: client.connects == 2, what="reconnect")
    await hub.publish("p1", "a.b", {"i": 6})
    await asyncio.wait_for(consumer, 10)
    await client.close()
    assert [f.seq for f in frames if isinstance(f, EventFrame)] == [6, 7]


async def test_client_surfaces_gap_and_snapshot_when_the_hub_restarted() -> None:
    async with run_hub(Settings()) as first:
        await first.hub.publish("p1", "agent.run.updated", {"n": 1}, key="agent.run/r1")
        url, port = first.url, first.port
        epoch = (await first.hub.backend.position("p1")).epoch
    client = HubClient(url, "p1", since=1, epoch=epoch, max_attempts=2, backoff_initial=0.01)
    async with run_hub(Settings(), port=port) as second:  # same address, new process life
        await second.hub.publish("p1", "agent.run.updated", {"n": 2}, key="agent.run/r9")
        frames: list[object] = []
        async for frame in client:
            frames.append(frame)
            if isinstance(frame, SnapshotFrame):
                break
        await client.close()
    gap, snapshot = frames
    assert isinstance(gap, GapFrame) and gap.reason == "epoch"
    assert isinstance(snapshot, SnapshotFrame) and [e.key for e in snapshot.events] == [
        "agent.run/r9"
    ]
    assert client.epoch != epoch and client.last_seq == 1


async def test_client_raises_on_a_close_it_cannot_fix(running_hub: RunningHub) -> None:
    client = HubClient(running_hub.url, "-not-a-project")
    with pytest.raises(HubClientError) as info:
        async for _ in client:
            pass
    assert info.value.code == 4400

"""Resume with `since`: every seq after it exactly once, in order, across the replay/live seam;
or `gap` + `snapshot` when the hub can no longer give what was missed."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest
from websockets.asyncio.client import connect

from hub.protocol import (
    EventFrame,
    GapFrame,
    ReplayedFrame,
    ServerFrame,
    SnapshotFrame,
    WelcomeFrame,
    decode_server_frames,
)

from .support import RunningHub


async def collect_until(ws_url: str, since: int, last_seq: int, frames: list[ServerFrame]) -> None:
    """Record frames until `replayed` and everything after `since` up to `last_seq` have
    arrived; a client that joined with `since == last_seq` has nothing more to wait for."""
    async with connect(ws_url, max_size=None) as ws:
        seen_last, seen_replayed = since >= last_seq, False
        while not (seen_last and seen_replayed):
            for frame in decode_server_frames(await ws.recv()):
                frames.append(frame)
                seen_last |= isinstance(frame, EventFrame) and frame.seq >= last_seq
                seen_replayed |= isinstance(frame, ReplayedFrame)


async def test_clients_joining_with_since_during_publishing_get_each_seq_once_in_order(
    running_hub: RunningHub, rng: random.Random
) -> None:
    hub = running_hub.hub
    total = 3000
    published = asyncio.Event()
    finished = asyncio.Event()
    heads: list[int] = [0]

    async def publisher() -> None:
        for i in range(total):
            heads[0] = await hub.publish("p1", "ingest.job.updated", {"i": i}, key=f"j{i % 7}")
            if i % 20 == 0:
                await asyncio.sleep(0)
            if i == 100:
                published.set()
        finished.set()

    clients: list[tuple[int, list[ServerFrame], asyncio.Task[None]]] = []
    publishing = asyncio.create_task(publisher())
    await published.wait()
    for _ in range(30):
        since = rng.randint(0, heads[0])
        frames: list[ServerFrame] = []
        task = asyncio.create_task(
            collect_until(running_hub.ws_url("p1", since=since), since, total, frames)
        )
        clients.append((since, frames, task))
        await asyncio.sleep(0)  # stagger the joins across the publishing run
        for _ in range(rng.randint(0, 30)):
            await asyncio.sleep(0)
    await publishing
    assert finished.is_set()

    def seqs(frames: list[ServerFrame]) -> list[int]:
        return [f.seq for f in frames if isinstance(f, EventFrame)]

    await asyncio.wait_for(asyncio.gather(*(t for _, _, t in clients)), 60)
    for since, frames, _ in clients:
        assert isinstance(frames[0], WelcomeFrame)
        assert seqs(frames) == list(range(since + 1, total + 1)), f"since={since}"
        replayed = [f for f in frames if isinstance(f, ReplayedFrame)]
        assert len(replayed) == 1
        assert not any(isinstance(f, GapFrame | SnapshotFrame) for f in frames)


async def first_frames(url: str, count: int) -> list[ServerFrame]:
    frames: list[ServerFrame] = []
    async with connect(url) as ws:
        while len(frames) < count:
            frames.extend(decode_server_frames(await ws.recv()))
    return frames


@pytest.mark.hub_settings(retention_events=10)
async def test_since_older_than_retention_yields_gap_then_snapshot_of_latest_per_key(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    for i in range(50):
        await hub.publish("p1", "ingest.job.updated", {"i": i}, key=f"job{i % 3}")
    welcome, gap, snapshot = await first_frames(running_hub.ws_url("p1", since=5), 3)
    assert isinstance(welcome, WelcomeFrame) and (welcome.oldest, welcome.head) == (41, 50)
    assert gap == GapFrame("evicted", 5, 41, 50)
    assert isinstance(snapshot, SnapshotFrame)
    assert snapshot.head == 50
    latest = {e.key: (e.seq, e.data) for e in snapshot.events}
    # i = 47, 48, 49 got seqs 48, 49, 50 and keys job2, job0, job1
    assert latest == {"job2": (48, {"i": 47}), "job0": (49, {"i": 48}), "job1": (50, {"i": 49})}


async def test_wrong_epoch_yields_gap_epoch_and_snapshot(running_hub: RunningHub) -> None:
    await running_hub.hub.publish("p1", "agent.run.updated", {"s": 1}, key="agent.run/r1")
    frames = await first_frames(running_hub.ws_url("p1", since=1, epoch="not-this-one"), 3)
    welcome, gap, snapshot = frames
    assert isinstance(welcome, WelcomeFrame)
    assert gap == GapFrame("epoch", 1, 1, 1)
    assert isinstance(snapshot, SnapshotFrame)
    assert [e.key for e in snapshot.events] == ["agent.run/r1"]


async def test_since_ahead_of_head_yields_gap_ahead(running_hub: RunningHub) -> None:
    await running_hub.hub.publish("p1", "agent.run.updated", {}, key="agent.run/r1")
    frames = await first_frames(running_hub.ws_url("p1", since=99), 3)
    assert frames[1] == GapFrame("ahead", 99, 1, 1)
    assert isinstance(frames[2], SnapshotFrame)


async def test_live_events_after_a_gap_continue_from_the_snapshot_head(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    await hub.publish("p1", "a.b", {}, key="k")
    async with connect(running_hub.ws_url("p1", since=0, epoch="old")) as ws:
        frames: list[ServerFrame] = []
        while len(frames) < 3:
            frames.extend(decode_server_frames(await ws.recv()))
        await hub.publish("p1", "a.b", {"n": 2}, key="k")
        while len(frames) < 4:
            frames.extend(decode_server_frames(await ws.recv()))
    assert isinstance(frames[3], EventFrame) and frames[3].seq == 2


async def test_replay_respects_type_filter(running_hub: RunningHub) -> None:
    hub = running_hub.hub
    for t in ["agent.run.created", "ingest.job.created", "agent.step.updated"]:
        await hub.publish("p1", t, {})
    frames = await first_frames(running_hub.ws_url("p1", since=0, types="agent.*"), 3)
    events = [f for f in frames if isinstance(f, EventFrame)]
    assert [e.seq for e in events] == [1, 3]
    async with connect(running_hub.ws_url("p1", since=0, types="agent.*")) as ws:
        seen: list[ServerFrame] = []
        while not any(isinstance(f, ReplayedFrame) for f in seen):
            seen.extend(decode_server_frames(await ws.recv()))
    replayed = next(f for f in seen if isinstance(f, ReplayedFrame))
    assert msgspec.structs.astuple(replayed) == (2, 3)

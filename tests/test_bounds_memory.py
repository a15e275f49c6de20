"""Memory bounds of the memory backend (issue 11.2 and 11.5): the snapshot is bounded in
bytes and says when it left keys out; every project's retention and snapshot together stay
under memory_budget_bytes, measured by the running total and by tracemalloc; the largest
projects pay first; a subscriber whose events the budget dropped is told `gap` + snapshot."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from hub.backends.base import PublishRequest, StoredEvent
from hub.backends.memory import MemoryBackend
from hub.backends.memory_log import (
    EVENT_OVERHEAD,
    ID_OVERHEAD,
    MemoryLedger,
    ProjectLog,
    RetentionLimits,
)
from hub.config import Settings
from hub.protocol import SnapshotFrame, decode_server_frames

from .support import FakeClock, RunningHub, run_hub

KiB, MiB = 1024, 1024 * 1024
T0 = 1_763_880_000.0


def make_log(
    ledger: MemoryLedger, *, snapshot_bytes: int = 1 << 40, events: int = 1000, age_s: float = 60
) -> ProjectLog:
    limits = RetentionLimits(events, 1 << 40, age_s, 1000, snapshot_bytes)
    return ProjectLog("p1", limits, FakeClock(T0), "e1", ledger)


def blob(size: int) -> bytes:
    return msgspec.json.encode("x" * size)


def req(size: int, key: str | None) -> PublishRequest:
    return PublishRequest("ingest.job.updated", msgspec.Raw(blob(size)), key)


def referenced_cost(log: ProjectLog) -> int:
    """What held_bytes should be: every event the log references, counted once."""
    held: dict[int, StoredEvent] = {id(e): e for e in log.read(0, 1 << 30)}
    held.update((id(e), e) for e in log.snapshot())
    ids = sum(len(i) + ID_OVERHEAD for i in log._ids)
    return ids + sum(len(e.frame) + EVENT_OVERHEAD for e in held.values())


# --- the snapshot's byte bound ---------------------------------------------------------------


def test_snapshot_byte_bound_drops_least_recently_updated_keys_and_says_so() -> None:
    log = make_log(MemoryLedger(), snapshot_bytes=10 * KiB)
    for i in range(30):
        log.append("ingest.job.updated", blob(1000), f"job/{i}", None)
    snapshot = log.snapshot()
    assert sum(len(e.frame) for e in snapshot) <= 10 * KiB
    assert [e.key for e in snapshot] == [f"job/{i}" for i in range(30 - len(snapshot), 30)]
    assert len(snapshot) >= 8 and log.snapshot_truncated
    assert len(log.read(0, 100)) == 30  # retention has its own bound


def test_the_newest_snapshot_entry_stays_even_alone_over_the_byte_bound() -> None:
    log = make_log(MemoryLedger(), snapshot_bytes=100)
    log.append("ingest.job.updated", blob(500), "a", None)
    assert [e.key for e in log.snapshot()] == ["a"] and not log.snapshot_truncated
    log.append("ingest.job.updated", blob(500), "b", None)
    assert [e.key for e in log.snapshot()] == ["b"] and log.snapshot_truncated


# --- accounting: a running total, exact -------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["append", "append_with_id"]),
            st.integers(0, 3_000),
            st.one_of(st.none(), st.sampled_from("abcde")),
        ),
        st.tuples(st.just("evict"), st.just(0), st.none()),
        st.tuples(st.just("drop_key"), st.just(0), st.none()),
        st.tuples(st.just("age"), st.integers(0, 90), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, database=None)
@given(ops=OPS, snapshot_bytes=st.integers(1, 12_000), events=st.integers(1, 8))
def test_held_bytes_always_equal_what_the_logs_reference(
    ops: list[tuple[str, int, str | None]], snapshot_bytes: int, events: int
) -> None:
    ledger = MemoryLedger()
    logs = [make_log(ledger, snapshot_bytes=snapshot_bytes, events=events) for _ in range(2)]
    for n, (op, value, key) in enumerate(ops):
        log = logs[n % 2]
        if op.startswith("append"):
            idem = f"id-{value % 7}" if op == "append_with_id" else None
            log.append("ingest.job.updated", blob(value), key, idem)
        elif op == "evict":
            log.evict_oldest()
        elif op == "drop_key":
            log.drop_snapshot_key("snapshot_keys")
        else:
            log._clock.now += value  # type: ignore[attr-defined]
            log.trim()
        for each in logs:
            assert each.held_bytes == referenced_cost(each)
        assert ledger.held_bytes == sum(each.held_bytes for each in logs)
    logs[0].release()
    assert ledger.held_bytes == logs[1].held_bytes


# --- the process-wide budget ------------------------------------------------------------------


async def test_200_events_of_200_kib_in_20_projects_stay_under_an_8_mib_budget() -> None:
    budget = 8 * MiB
    backend = MemoryBackend(Settings(memory_budget_bytes=budget))
    data = req(200 * KiB, None).data
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for n in range(200):
            request = PublishRequest("ingest.job.updated", data, f"file/{n}")
            await backend.publish(f"tenant-{n % 20}", [request])
            assert backend.ledger.held_bytes <= budget
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    published = 200 * len(data)
    assert published > 4 * budget  # without the budget all of it would be retained
    # Overhead allowance: one event in flight (its frame and encoding), the logs' containers.
    overhead = 2 * MiB
    print(f"held {backend.ledger.held_bytes} traced {current - baseline} peak {peak - baseline}")
    assert current - baseline <= budget + overhead
    assert peak - baseline <= budget + overhead
    assert backend.ledger.evictions["budget_events"] > 0
    assert backend.ledger.evictions["budget_snapshot"] > 0


async def test_the_largest_projects_give_up_their_oldest_events_first() -> None:
    event_cost = len(blob(2000)) + 120 + EVENT_OVERHEAD  # frame (payload + envelope) + overhead
    backend = MemoryBackend(Settings(memory_budget_bytes=40 * event_cost))
    for _ in range(5):
        await backend.publish("small", [req(2000, None)])
    for _ in range(60):
        await backend.publish("big", [req(2000, None)])
    small = await backend.read("small", 0, 100)
    assert [e.seq for e in small.events] == [1, 2, 3, 4, 5]
    big = await backend.read("big", 0, 100)
    assert big.events[-1].seq == 60 and big.position.oldest > 1  # its oldest went
    assert backend.ledger.held_bytes <= 40 * event_cost


async def test_a_subscriber_behind_budget_evictions_is_told_gap_and_gets_the_snapshot() -> None:
    budget = 256 * KiB
    async with run_hub(Settings(memory_budget_bytes=budget)) as running:
        hub = running.hub
        for i in range(100):  # 100 x 8 KiB, keys cycling: retention must drop the old ones
            await hub.publish("p1", "ingest.job.updated", {"b": "x" * 8000}, key=f"k/{i % 4}")
        position = await hub.backend.position("p1")
        assert position.oldest > 2 and position.head == 100
        url = running.ws_url("p1", since=1, epoch=position.epoch)
        got: list[dict[str, Any]] = []
        async with connect(url, max_size=None) as ws:
            while not any(f["op"] == "snapshot" for f in got):
                message = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 5))
                got += message if isinstance(message, list) else [message]
        gap = next(f for f in got if f["op"] == "gap")
        assert (gap["reason"], gap["since"], gap["oldest"]) == ("evicted", 1, position.oldest)
        snapshot = next(f for f in got if f["op"] == "snapshot")
        assert sorted(e["key"] for e in snapshot["events"]) == ["k/0", "k/1", "k/2", "k/3"]

        async with running.http() as http:
            text = (await http.get("/metrics")).text
        samples = {
            (s.name, s.labels.get("cause", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("hub_memory_budget_bytes", "")] == budget
        assert 0 < samples[("hub_memory_retained_bytes", "")] <= budget
        assert samples[("hub_memory_evictions_total", "budget_events")] > 0
        assert samples[("hub_projects", "")] == 1


@pytest.mark.hub_settings(snapshot_bytes=20 * KiB)
async def test_snapshot_frame_and_response_say_when_keys_were_left_out(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    for i in range(10):
        await hub.publish("p1", "ingest.job.updated", {"b": "x" * 8000}, key=f"k/{i}")
    async with running_hub.http() as http:
        body = (await http.get("/v1/projects/p1/snapshot")).json()
    assert body["truncated"] is True
    assert [e["key"] for e in body["events"]] == ["k/8", "k/9"]
    frames: list[Any] = []
    async with connect(running_hub.ws_url("p1", since=50), max_size=None) as ws:
        while not any(isinstance(f, SnapshotFrame) for f in frames):
            frames += decode_server_frames(await asyncio.wait_for(ws.recv(), 5))
    snapshot = next(f for f in frames if isinstance(f, SnapshotFrame))
    assert snapshot.truncated and [e.key for e in snapshot.events] == ["k/8", "k/9"]
    async with (
        running_hub.http() as http,
        http.stream("GET", "/v1/projects/p1/sse?since=50") as response,
    ):
        lines = response.aiter_lines()
        async for line in lines:
            if line == "event: snapshot":
                break
        data = msgspec.json.decode((await anext(lines)).removeprefix("data: "))
    assert data["truncated"] is True and len(data["events"]) == 2
    async with running_hub.http() as http:
        body = (await http.get("/v1/projects/other/snapshot")).json()
    assert body["truncated"] is False

"""One contract for every backend: memory, Redis and Redis Cluster pass the same table.

Like centrifuge's recovery tests, the resume cases are a table (empty, from a position, at the
head, already gone, ahead of the top, another epoch) run against each backend, beside seq
contiguity under concurrency, idempotency, snapshots, frames and delivery to the listener.

Retention is the same on every backend (count, frame bytes, age), so the eviction cases hold
on each; the retention-by-age and -by-bytes cases at the end check the exact bound.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hub.backends.base import Backend, PublishRequest, StoredEvent
from hub.backends.memory import MemoryBackend
from hub.backends.redis import RedisBackend
from hub.backends.redis_store import build_event
from hub.config import Settings
from hub.protocol import resume_plan

from .redis_support import RedisCluster, RedisServer, redis_server_binary
from .support import wait_for


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_server_binary()
    server = RedisServer(Path(tmp_path_factory.mktemp("redis-contract")))
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_server_binary()
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("redis-cluster-contract")))
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


class Harness:
    """A started backend and everything its listener was handed."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.delivered: dict[str, list[tuple[str, StoredEvent]]] = {}

    def listener(self, project: str, epoch: str, events: Sequence[StoredEvent]) -> None:
        self.delivered.setdefault(project, []).extend((epoch, e) for e in events)

    def seqs(self, project: str) -> list[int]:
        return [e.seq for _, e in self.delivered.get(project, [])]


MakeBackend = Callable[..., Awaitable[Harness]]
_prefixes = itertools.count()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[MakeBackend]:
    kind = request.param
    url = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "redis-cluster":
        url = request.getfixturevalue("cluster_url")
    made: list[Backend] = []

    async def make(**overrides: Any) -> Harness:
        settings = Settings(
            redis_key_prefix=f"contract{next(_prefixes)}",
            redis_cluster=kind == "redis-cluster",
            redis_cluster_poll_ms=5,
            **overrides,
        )
        backend: Backend = (
            MemoryBackend(settings) if kind == "memory" else RedisBackend(url, settings)
        )
        harness = Harness(backend)
        await backend.start(harness.listener)
        made.append(backend)
        return harness

    yield make
    for backend in made:
        await backend.close()


def req(
    data: Any = None, *, type: str = "ingest.job.updated", key: str | None = None,
    id: str | None = None,
) -> PublishRequest:  # fmt: skip
    return PublishRequest(type, msgspec.Raw(msgspec.json.encode(data)), key, id)


async def publish_n(backend: Backend, project: str, n: int, **fields: Any) -> list[int]:
    seqs: list[int] = []
    for i in range(n):
        seqs += await backend.publish(project, [req({"i": i}, **fields)])
    return seqs


# --- resume cases: the table -----------------------------------------------------------------


class Case(msgspec.Struct, frozen=True):
    name: str
    published: int
    since: int
    action: str  # replay | gap
    reason: str | None = None
    retention: int = 10_000
    other_epoch: bool = False


RESUME_CASES = [
    Case("empty", published=0, since=0, action="replay"),
    Case("from_zero", published=10, since=0, action="replay"),
    Case("from_position", published=10, since=4, action="replay"),
    Case("at_head", published=10, since=10, action="replay"),
    Case("already_gone", published=400, since=1, action="gap", reason="evicted", retention=10),
    Case("oldest_retained_is_next", published=400, since=-1, action="replay", retention=10),
    Case("ahead_of_top", published=3, since=7, action="gap", reason="ahead"),
    Case("other_epoch", published=3, since=2, action="gap", reason="epoch", other_epoch=True),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=lambda c: c.name)
async def test_resume_case(make_backend: MakeBackend, case: Case) -> None:
    backend = (await make_backend(retention_events=case.retention)).backend
    await publish_n(backend, "p1", case.published)
    position = await backend.position("p1")
    assert position.head == case.published
    since = position.oldest - 1 if case.since < 0 else case.since
    epoch = "not-" + position.epoch if case.other_epoch else position.epoch
    plan = resume_plan(since, epoch, position.epoch, position.oldest, position.head)
    assert (plan.action, plan.reason) == (case.action, case.reason)
    result = await backend.read("p1", since, 1_000)
    if case.action == "replay":
        assert [e.seq for e in result.events] == list(range(since + 1, position.head + 1))
    elif case.reason == "evicted":
        assert result.events[0].seq == position.oldest > since + 1
    else:
        assert [e.seq for e in result.events] == list(range(since + 1, position.head + 1))


# --- sequence --------------------------------------------------------------------------------


async def test_a_new_project_has_an_epoch_and_nothing_else(make_backend: MakeBackend) -> None:
    backend = (await make_backend()).backend
    position = await backend.position("fresh")
    assert position.epoch and (position.oldest, position.head) == (1, 0)
    assert (await backend.read("fresh", 0, 10)).events == []
    assert await backend.snapshot("fresh") == (position, [])
    assert await backend.position("fresh") == position  # the epoch is stable


async def test_seqs_start_at_one_and_batches_get_contiguous_seqs(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend()).backend
    assert await backend.publish("p1", [req(1)]) == [1]
    assert await backend.publish("p1", [req(2), req(3), req(4)]) == [2, 3, 4]
    assert await backend.publish("p2", [req(1)]) == [1]  # projects count on their own
    assert await backend.publish("p1", []) == []
    assert (await backend.position("p1")).head == 4


async def test_concurrent_publishers_get_every_seq_once(
    make_backend: MakeBackend, rng: random.Random
) -> None:
    backend = (await make_backend()).backend
    results: list[list[int]] = []

    async def publisher(worker: int) -> None:
        for i in range(10):
            batch = [req({"w": worker, "i": i, "j": j}) for j in range(rng.randint(1, 3))]
            seqs = await backend.publish("p1", batch)
            assert seqs == list(range(seqs[0], seqs[0] + len(batch)))  # a batch is atomic
            results.append(seqs)
            await asyncio.sleep(0)

    await asyncio.gather(*(publisher(w) for w in range(20)))
    every = sorted(s for seqs in results for s in seqs)
    assert every == list(range(1, len(every) + 1))
    assert (await backend.position("p1")).head == len(every)


async def test_read_pages_by_limit(make_backend: MakeBackend) -> None:
    backend = (await make_backend()).backend
    await publish_n(backend, "p1", 25)
    pages, since = [], 0
    while True:
        events = (await backend.read("p1", since, 10)).events
        if not events:
            break
        pages.append([e.seq for e in events])
        since = events[-1].seq
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]


async def test_retention_keeps_at_least_the_bound_and_reads_from_the_oldest(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(retention_events=10)).backend
    await publish_n(backend, "p1", 400)
    position = await backend.position("p1")
    assert position.head == 400
    assert 1 < position.oldest <= 400 - 10 + 1
    events = (await backend.read("p1", 0, 1_000)).events
    assert [e.seq for e in events] == list(range(position.oldest, 401))


# --- idempotency -----------------------------------------------------------------------------


async def test_same_id_returns_the_first_seq_and_adds_nothing(make_backend: MakeBackend) -> None:
    backend = (await make_backend()).backend
    assert await backend.publish("p1", [req(1, id="a"), req(2, id="b")]) == [1, 2]
    assert await backend.publish("p1", [req(9, id="b"), req(3, id="c")]) == [2, 3]
    assert await backend.publish("p1", [req(4, id="d"), req(4, id="d")]) == [4, 4]
    assert await backend.publish("p2", [req(1, id="a")]) == [1]  # ids are per project
    events = (await backend.read("p1", 0, 100)).events
    assert [msgspec.json.decode(e.frame)["data"] for e in events] == [1, 2, 3, 4]


async def test_an_id_is_forgotten_once_its_event_left_retention(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(retention_events=10)).backend
    assert await backend.publish("p1", [req(0, id="x")]) == [1]
    await publish_n(backend, "p1", 400)
    assert (await backend.position("p1")).oldest > 1
    assert await backend.publish("p1", [req(0, id="x")]) == [402]


# --- snapshot --------------------------------------------------------------------------------


async def test_snapshot_is_the_latest_event_per_key_in_seq_order(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(retention_events=10)).backend
    await backend.publish("p1", [req(1, key="a"), req(2, key="b"), req(3)])
    await backend.publish("p1", [req(4, key="a")])
    await publish_n(backend, "p1", 300)  # the keyed events leave retention
    position, events = await backend.snapshot("p1")
    assert position.head == 304
    assert [(e.key, e.seq) for e in events] == [("b", 2), ("a", 4)]
    assert [msgspec.json.decode(e.frame)["data"] for e in events] == [2, 4]


async def test_snapshot_key_bound_drops_the_least_recently_updated_key(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(snapshot_keys=2)).backend
    for key in ["a", "b", "a", "c"]:
        await backend.publish("p1", [req(key, key=key)])
    _, events = await backend.snapshot("p1")
    assert [(e.key, e.seq) for e in events] == [("a", 3), ("c", 4)]


async def test_snapshot_view_says_when_the_key_bound_left_keys_out(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(snapshot_keys=2)).backend
    for key in ["a", "b", "a"]:
        await backend.publish("p1", [req(key, key=key)])
    assert (await backend.snapshot_view("p1")).truncated is False
    await backend.publish("p1", [req("c", key="c")])
    view = await backend.snapshot_view("p1")
    assert view.truncated is True
    assert [(e.key, e.seq) for e in view.events] == [("a", 3), ("c", 4)]
    assert (view.position, view.events) == await backend.snapshot("p1")


# --- reads never create a project (issue 11.1) ------------------------------------------------


async def stored_projects(backend: Backend) -> int:
    """Projects the backend holds: memory logs, or Redis keys under the backend's prefix."""
    if isinstance(backend, MemoryBackend):
        return backend.project_count()
    assert isinstance(backend, RedisBackend)
    pattern = f"{backend.settings.redis_key_prefix}:{{*"
    return len([k async for k in backend.store.client.scan_iter(match=pattern)])


async def test_reads_of_a_missing_project_create_nothing(make_backend: MakeBackend) -> None:
    backend = (await make_backend()).backend
    for n in range(20):
        project = f"ghost-{n}"
        position = await backend.position(project)
        assert (position.oldest, position.head) == (1, 0)
        assert (await backend.read(project, 5, 10)).events == []
        assert (await backend.snapshot_view(project)).events == []
    await backend.watch("ghost-w")
    await backend.position("ghost-w")
    await backend.unwatch("ghost-w")
    assert await stored_projects(backend) == 0


async def test_the_empty_view_is_in_the_epoch_the_first_publish_takes(
    make_backend: MakeBackend,
) -> None:
    harness = await make_backend()
    backend = harness.backend
    # Redis derives it per hour: a second project if the first attempt straddled an hour
    for project in ("p1", "p2"):
        hour = int(time.time()) // 3600
        empty = await backend.position(project)
        assert await backend.position(project) == empty  # stable while nobody publishes
        await backend.watch(project)
        assert (await backend.position(project)).epoch == empty.epoch
        await backend.publish(project, [req(1), req(2)])
        position = await backend.position(project)
        if int(time.time()) // 3600 == hour:
            break
    assert (position.epoch, position.head) == (empty.epoch, 2)
    plan = resume_plan(0, empty.epoch, position.epoch, position.oldest, position.head)
    assert (plan.action, plan.since) == ("replay", 0)
    await wait_for(lambda: harness.seqs(project) == [1, 2], what="both events")
    assert {epoch for epoch, _ in harness.delivered[project]} == {empty.epoch}
    await backend.unwatch(project)


# --- frames ----------------------------------------------------------------------------------


async def test_frames_are_the_event_frame_with_publish_time(make_backend: MakeBackend) -> None:
    backend = (await make_backend()).backend
    before = int(time.time() * 1000)
    await backend.publish(
        "p1", [req({"n": 1}, key="ingest.job/j1"), req([1, 2], type="agent.run.created")]
    )
    after = int(time.time() * 1000)
    first, second = (await backend.read("p1", 0, 10)).events
    assert first.frame == (
        b'{"op":"event","project":"p1","seq":1,"type":"ingest.job.updated","ts":%d,'
        b'"data":{"n":1},"key":"ingest.job/j1"}' % first.ts
    )
    assert second.frame == (
        b'{"op":"event","project":"p1","seq":2,"type":"agent.run.created","ts":%d,'
        b'"data":[1,2]}' % second.ts
    )
    assert before - 1_000 <= first.ts <= after + 1_000  # Redis's clock is this machine's
    assert (first.type, first.key, second.key) == ("ingest.job.updated", "ingest.job/j1", None)


async def test_memory_and_redis_frames_are_identical_but_for_the_time(redis_url: str) -> None:
    frames: list[list[bytes]] = []
    for backend in (MemoryBackend(), RedisBackend(redis_url, Settings(redis_key_prefix="same"))):
        await backend.publish("p1", [req({"a": [1, {"b": None}]}, key="k/1"), req("s")])
        await backend.publish("p1", [req(None, type="workflow.run.updated", id="i")])
        snapshot = (await backend.snapshot("p1"))[1]
        events = (await backend.read("p1", 0, 10)).events
        frames.append([re.sub(rb'"ts":\d+', b'"ts":0', e.frame) for e in events + snapshot])
        await backend.close()
    assert frames[0] == frames[1]


# --- delivery to the listener ----------------------------------------------------------------


async def test_listener_gets_every_event_after_watch_and_position_in_order_with_the_epoch(
    make_backend: MakeBackend,
) -> None:
    harness = await make_backend()
    backend = harness.backend
    await publish_n(backend, "p1", 3)
    await backend.watch("p1")
    position = await backend.position("p1")

    async def publisher(worker: int) -> None:
        for i in range(15):
            await backend.publish("p1", [req({"w": worker, "i": i})])

    await asyncio.gather(*(publisher(w) for w in range(4)))
    await publish_n(backend, "p2", 2)  # not watched: nothing to deliver (memory may anyway)
    await wait_for(lambda: harness.seqs("p1")[-1:] == [63], what="all events delivered")
    # memory hands over every event it ever publishes; Redis starts at the pinned position
    delivered = [(epoch, e) for epoch, e in harness.delivered["p1"] if e.seq > position.head]
    assert [e.seq for _, e in delivered] == list(range(position.head + 1, 64))
    assert {epoch for epoch, _ in delivered} == {position.epoch}
    # what was delivered is what is stored
    stored = (await backend.read("p1", position.head, 1_000)).events
    assert [e for _, e in delivered] == stored
    await backend.unwatch("p1")


async def test_each_watched_project_is_delivered_on_its_own(make_backend: MakeBackend) -> None:
    harness = await make_backend()
    backend = harness.backend
    projects = [f"proj-{i}" for i in range(12)]  # spread over Cluster slots and nodes
    for project in projects:
        await backend.watch(project)
        await backend.position(project)
    for round_ in range(3):
        for project in projects:
            await backend.publish(project, [req({"r": round_, "p": project})])
    await wait_for(lambda: all(harness.seqs(p) == [1, 2, 3] for p in projects), what="three each")
    for project in projects:
        frames = [msgspec.json.decode(e.frame) for _, e in harness.delivered[project]]
        assert {f["project"] for f in frames} == {project}


async def test_redis_reads_after_a_lost_project_answer_another_epoch_and_create_nothing(
    redis_url: str,
) -> None:
    backend = RedisBackend(redis_url, Settings(redis_key_prefix=f"lost{next(_prefixes)}"))
    try:
        await backend.publish("p1", [req(1), req(2)])
        before = await backend.position("p1")
        keys = backend.store.keys("p1")
        await backend.store.client.delete(*keys.script_keys())  # lost: flushed, evicted
        after = await backend.position("p1")
        assert (after.head, after.oldest) == (0, 1) and after.epoch != before.epoch
        assert await backend.position("p1") == after  # stable
        assert await stored_projects(backend) == 0
        await backend.publish("p1", [req(3)])
        reborn = await backend.position("p1")
        assert reborn.head == 1 and reborn.epoch not in (before.epoch, after.epoch)
    finally:
        await backend.close()


async def test_snapshot_byte_bound_drops_the_least_recently_updated_keys(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(snapshot_bytes=10_000)).backend
    for i in range(30):
        await backend.publish("p1", [req("x" * 998, key=f"k/{i}")])
    await backend.publish("p1", [req("y" * 998, key="k/29")])  # replacing keeps the count
    view = await backend.snapshot_view("p1")
    keys = [e.key for e in view.events]
    assert 7 <= len(keys) <= 10 and view.truncated
    assert keys == [f"k/{i}" for i in range(30 - len(keys), 30)]
    assert msgspec.json.decode(view.events[-1].frame)["data"] == "y" * 998
    await backend.publish("p2", [req("z" * 50_000, key="big")])
    alone = await backend.snapshot_view("p2")  # the newest entry stays, even over the bound
    assert [e.key for e in alone.events] == ["big"] and not alone.truncated


# --- retention by age and bytes (issue 17: Redis applies the memory backend's bounds) -------

AGE_S = 0.3
CLOCK_SLACK_MS = 5  # both clocks are this machine's; ms rounding differs by one


async def test_retention_by_age_drops_what_is_older_than_the_bound_and_says_gap(
    make_backend: MakeBackend,
) -> None:
    backend = (await make_backend(retention_age_s=AGE_S)).backend
    age_ms = AGE_S * 1000
    before_ms = time.time() * 1000
    batch = [req(0, id="a"), *(req(i) for i in range(1, 250))]  # Redis: several XRANGE pages
    assert await backend.publish("p1", batch) == list(range(1, 251))
    after_ms = time.time() * 1000  # the events' ts lie between before_ms and after_ms

    async def all_gone() -> bool:
        asked_ms = time.time() * 1000
        position = await backend.position("p1")
        answered_ms = time.time() * 1000
        assert position.head == 250
        if position.oldest == 1:  # kept: the bound had not passed when the backend looked
            assert asked_ms - age_ms <= after_ms + CLOCK_SLACK_MS
            return False
        assert position.oldest == 251  # one publish, one ts: they go together
        assert answered_ms - age_ms >= before_ms - CLOCK_SLACK_MS  # gone only once old
        return True

    await wait_for(all_gone, what="the events older than retention_age_s to go")
    position = await backend.position("p1")
    plan = resume_plan(1, position.epoch, position.epoch, position.oldest, position.head)
    assert (plan.action, plan.reason) == ("gap", "evicted")
    assert (await backend.read("p1", 0, 10)).events == []
    # the sequence goes on, and the id of an event that left retention is forgotten
    assert await backend.publish("p1", [req(1, id="a")]) == [251]


def frame_size(seq: int, data: Any, key: str | None) -> int:
    ts = int(time.time() * 1000)  # 13 digits, as every ts this century
    raw = msgspec.Raw(msgspec.json.encode(data))
    return len(build_event("p1", seq, "ingest.job.updated", ts, key, bytes(raw)).frame)


async def test_retention_by_bytes_keeps_the_newest_frames_that_fit(
    make_backend: MakeBackend, rng: random.Random
) -> None:
    bound = 1_000
    backend = (await make_backend(retention_bytes=bound)).backend
    sizes: dict[int, int] = {}
    for seq in range(1, 41):
        data = {"i": seq, "pad": "x" * rng.randint(0, 120)}
        key = f"k/{seq % 3}" if rng.random() < 0.5 else None
        assert await backend.publish("p1", [req(data, key=key)]) == [seq]
        sizes[seq] = frame_size(seq, data, key)
        # the memory backend's rule: drop the oldest while the frames sum to more than bound
        oldest = 1
        while sum(sizes[s] for s in range(oldest, seq + 1)) > bound:
            oldest += 1
        position = await backend.position("p1")
        assert (position.oldest, position.head) == (oldest, seq)
    events = (await backend.read("p1", 0, 100)).events
    assert [len(e.frame) for e in events] == [sizes[e.seq] for e in events]
    assert sum(sizes[e.seq] for e in events) <= bound
    plan = resume_plan(1, position.epoch, position.epoch, position.oldest, position.head)
    assert (plan.action, plan.reason) == ("gap", "evicted")
    # an event larger than the bound alone is not retained but keeps its seq
    assert await backend.publish("p1", [req("y" * bound)]) == [41]
    position = await backend.position("p1")
    assert (position.oldest, position.head) == (42, 41)
    assert await backend.publish("p1", [req(1)]) == [42]
    assert [e.seq for e in (await backend.read("p1", 0, 100)).events] == [42]

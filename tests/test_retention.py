"""Retention on the memory backend with an injected clock: no sleeps, every bound by hand."""

from __future__ import annotations

import msgspec
import pytest

from hub.backends.base import PublishRequest
from hub.backends.memory import MemoryBackend
from hub.backends.memory_log import ProjectLog, RetentionLimits
from hub.config import Settings

from .support import FakeClock

T0 = 1_763_880_000.0


def make_log(
    clock: FakeClock,
    *,
    events: int = 1000,
    bytes: int = 1 << 30,
    age_s: float = 3600.0,
    snapshot_keys: int = 1000,
) -> ProjectLog:
    return ProjectLog("p1", RetentionLimits(events, bytes, age_s, snapshot_keys), clock, "e1")


def seqs(log: ProjectLog, since: int = 0, limit: int = 10_000) -> list[int]:
    return [e.seq for e in log.read(since, limit)]


# --- seqs and the stored frame -----------------------------------------------------------


def test_seqs_start_at_one_and_are_contiguous() -> None:
    log = make_log(FakeClock(T0))
    assert log.head == 0
    assert log.oldest == 1
    assigned = [log.append("a.b", b"{}", None, None) for _ in range(50)]
    assert assigned == list(range(1, 51))
    assert (log.oldest, log.head) == (1, 50)
    assert seqs(log) == assigned


def test_stored_event_carries_the_encoded_event_frame_with_publish_time() -> None:
    clock = FakeClock(T0 + 0.1234)
    log = make_log(clock)
    log.append("ingest.job.updated", b'{"progress":0.5}', "ingest.job/j1", None)
    [event] = log.read(0, 10)
    assert (event.seq, event.type, event.key) == (1, "ingest.job.updated", "ingest.job/j1")
    assert event.ts == int((T0 + 0.1234) * 1000)
    assert msgspec.json.decode(event.frame) == {
        "op": "event",
        "project": "p1",
        "seq": 1,
        "type": "ingest.job.updated",
        "ts": event.ts,
        "key": "ingest.job/j1",
        "data": {"progress": 0.5},
    }


def test_position_reports_epoch_oldest_and_head() -> None:
    log = make_log(FakeClock(T0), events=3)
    for _ in range(5):
        log.append("a.b", b"{}", None, None)
    position = log.position()
    assert (position.epoch, position.oldest, position.head) == ("e1", 3, 5)


# --- bounds ------------------------------------------------------------------------------


def test_count_bound_keeps_the_newest_events() -> None:
    log = make_log(FakeClock(T0), events=5)
    for _ in range(12):
        log.append("a.b", b"{}", None, None)
    assert seqs(log) == [8, 9, 10, 11, 12]
    assert (log.oldest, log.head) == (8, 12)


def test_bytes_bound_keeps_what_fits() -> None:
    clock = FakeClock(T0)
    probe = make_log(clock)
    probe.append("a.b", b'{"pad":"xxxxxxxxxx"}', None, None)
    size = len(probe.read(0, 1)[0].frame)

    log = make_log(clock, bytes=3 * size + size // 2)
    for _ in range(10):
        log.append("a.b", b'{"pad":"xxxxxxxxxx"}', None, None)
    retained = log.read(0, 100)
    assert [e.seq for e in retained] == [8, 9, 10]  # one more (seq 7) would not fit
    assert log.retained_bytes == sum(len(e.frame) for e in retained)
    assert log.retained_bytes <= 3 * size + size // 2


def test_event_larger_than_the_bytes_bound_is_not_retained_but_keeps_its_seq() -> None:
    log = make_log(FakeClock(T0), bytes=50)
    assert log.append("a.b", b'{"pad":"' + b"x" * 100 + b'"}', None, None) == 1
    assert seqs(log) == []
    assert (log.oldest, log.head) == (2, 1)
    assert log.retained_bytes == 0
    assert log.append("a.b", b"{}", None, None) == 2


def test_age_bound_drops_events_older_than_the_limit_when_the_clock_moves() -> None:
    clock = FakeClock(T0)
    log = make_log(clock, age_s=60)
    log.append("a.b", b"{}", None, None)  # t = 0
    clock.advance(30)
    log.append("a.b", b"{}", None, None)  # t = 30
    clock.advance(30)
    assert seqs(log) == [1, 2]  # exactly 60 s old is still retained
    clock.advance(1)
    assert seqs(log) == [2]
    assert log.position().oldest == 2
    clock.advance(30)
    assert seqs(log) == []
    position = log.position()
    assert (position.oldest, position.head) == (3, 2)
    assert log.retained_bytes == 0


def test_aged_out_project_keeps_counting_from_its_head() -> None:
    clock = FakeClock(T0)
    log = make_log(clock, age_s=10)
    for _ in range(3):
        log.append("a.b", b"{}", None, None)
    clock.advance(11)
    assert log.append("a.b", b"{}", None, None) == 4
    assert seqs(log) == [4]


# --- read windows ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "limit", "expected"),
    [
        (0, 100, [6, 7, 8, 9, 10]),  # older than retention: starts at oldest
        (5, 100, [6, 7, 8, 9, 10]),  # since == oldest - 1
        (6, 2, [7, 8]),
        (7, 100, [8, 9, 10]),
        (9, 1, [10]),
        (10, 100, []),  # since == head
        (50, 100, []),  # ahead
        (3, 1, [6]),
    ],
)
def test_read_windows(since: int, limit: int, expected: list[int]) -> None:
    log = make_log(FakeClock(T0), events=5)
    for _ in range(10):
        log.append("a.b", b"{}", None, None)
    assert seqs(log, since, limit) == expected


def test_read_of_an_empty_log_is_empty() -> None:
    assert seqs(make_log(FakeClock(T0))) == []


# --- snapshot ----------------------------------------------------------------------------


def test_snapshot_holds_the_latest_event_per_key_in_seq_order() -> None:
    log = make_log(FakeClock(T0))
    log.append("ingest.job.updated", b'{"v":1}', "job/a", None)  # 1
    log.append("ingest.job.updated", b'{"v":1}', "job/b", None)  # 2
    log.append("ingest.job.updated", b'{"v":2}', "job/a", None)  # 3
    log.append("agent.run.created", b"{}", None, None)  # 4: no key, not in the snapshot
    log.append("ingest.job.updated", b'{"v":3}', "job/c", None)  # 5
    snapshot = log.snapshot()
    assert [(e.key, e.seq) for e in snapshot] == [("job/b", 2), ("job/a", 3), ("job/c", 5)]
    assert msgspec.json.decode(snapshot[1].frame)["data"] == {"v": 2}


def test_snapshot_outlives_retention() -> None:
    clock = FakeClock(T0)
    log = make_log(clock, events=2, age_s=10)
    log.append("a.b", b"{}", "k1", None)
    log.append("a.b", b"{}", "k2", None)
    log.append("a.b", b"{}", None, None)
    assert seqs(log) == [2, 3]
    assert [e.seq for e in log.snapshot()] == [1, 2]
    clock.advance(11)
    assert seqs(log) == []
    assert [e.seq for e in log.snapshot()] == [1, 2]


def test_snapshot_key_bound_drops_the_least_recently_updated_key() -> None:
    log = make_log(FakeClock(T0), snapshot_keys=2)
    log.append("a.b", b"{}", "k1", None)  # 1
    log.append("a.b", b"{}", "k2", None)  # 2
    log.append("a.b", b"{}", "k1", None)  # 3: k1 is now the most recently updated
    log.append("a.b", b"{}", "k3", None)  # 4: k2 goes
    assert [(e.key, e.seq) for e in log.snapshot()] == [("k1", 3), ("k3", 4)]


# --- idempotency -------------------------------------------------------------------------


def test_same_id_returns_the_first_seq_and_adds_nothing() -> None:
    log = make_log(FakeClock(T0))
    assert log.append("a.b", b'{"v":1}', "k", "req-1") == 1
    bytes_before = log.retained_bytes
    assert log.append("a.b", b'{"v":2}', "k", "req-1") == 1
    assert log.head == 1
    assert seqs(log) == [1]
    assert log.retained_bytes == bytes_before
    assert msgspec.json.decode(log.snapshot()[0].frame)["data"] == {"v": 1}
    assert log.append("a.b", b"{}", None, "req-2") == 2


def test_ids_are_forgotten_when_their_event_leaves_retention_by_count() -> None:
    log = make_log(FakeClock(T0), events=2)
    assert log.append("a.b", b"{}", None, "req-1") == 1
    assert log.append("a.b", b"{}", None, "req-1") == 1
    log.append("a.b", b"{}", None, None)  # 2
    log.append("a.b", b"{}", None, None)  # 3: seq 1 leaves retention
    assert log.append("a.b", b"{}", None, "req-1") == 4


def test_ids_are_forgotten_when_their_event_leaves_retention_by_age() -> None:
    clock = FakeClock(T0)
    log = make_log(clock, age_s=10)
    assert log.append("a.b", b"{}", None, "req-1") == 1
    clock.advance(5)
    assert log.append("a.b", b"{}", None, "req-1") == 1
    clock.advance(6)  # seq 1 is now 11 s old: out of retention
    assert log.append("a.b", b"{}", None, "req-1") == 2
    assert seqs(log) == [2]


def test_ids_within_retention_survive_other_evictions() -> None:
    log = make_log(FakeClock(T0), events=3)
    log.append("a.b", b"{}", None, None)  # 1
    assert log.append("a.b", b"{}", None, "req-2") == 2
    log.append("a.b", b"{}", None, None)  # 3
    log.append("a.b", b"{}", None, None)  # 4: seq 1 goes, 2 stays
    assert log.append("a.b", b"{}", None, "req-2") == 2
    assert log.head == 4


# --- MemoryBackend: bounded number of projects -------------------------------------------


def request(event_type: str = "a.b", id: str | None = None) -> PublishRequest:
    return PublishRequest(event_type, msgspec.Raw(b"{}"), None, id)


def make_backend(clock: FakeClock, **settings: object) -> MemoryBackend:
    return MemoryBackend(Settings(**settings), clock=clock)  # type: ignore[arg-type]


async def test_idle_project_is_evicted_by_sweep_after_the_idle_time() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, project_idle_s=100)
    await backend.publish("p1", [request(), request()])
    epoch = (await backend.position("p1")).epoch
    clock.advance(100)
    backend.sweep()
    assert backend.project_count() == 1  # exactly the idle time: still kept
    clock.advance(1)
    backend.sweep()
    assert backend.project_count() == 0
    # It comes back as a new life of the sequence: a new epoch, seqs from 1.
    assert await backend.publish("p1", [request()]) == [1]
    assert (await backend.position("p1")).epoch != epoch


async def test_activity_keeps_a_project_from_idle_eviction() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, project_idle_s=100)
    await backend.publish("busy", [request()])
    await backend.publish("quiet", [request()])
    clock.advance(60)
    await backend.publish("busy", [request()])
    clock.advance(60)
    backend.sweep()
    assert backend.project_count() == 1
    assert await backend.publish("busy", [request()]) == [3]


async def test_watched_project_is_never_evicted_by_idleness() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, project_idle_s=10)
    await backend.watch("p1")
    await backend.publish("p1", [request()])
    clock.advance(1000)
    backend.sweep()
    assert backend.project_count() == 1
    assert await backend.publish("p1", [request()]) == [2]


async def test_unwatched_project_becomes_idle_from_when_its_last_watcher_left() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, project_idle_s=10)
    await backend.watch("p1")
    await backend.watch("p1")
    await backend.publish("p1", [request()])
    clock.advance(100)
    await backend.unwatch("p1")  # one watcher left
    clock.advance(100)
    backend.sweep()
    assert backend.project_count() == 1
    await backend.unwatch("p1")
    clock.advance(10)
    backend.sweep()
    assert backend.project_count() == 1
    clock.advance(1)
    backend.sweep()
    assert backend.project_count() == 0


async def test_sweep_trims_aged_events_of_kept_projects() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, retention_age_s=10, project_idle_s=1000)
    await backend.publish("p1", [request()])
    clock.advance(11)
    backend.sweep()
    position = await backend.position("p1")
    assert (position.oldest, position.head) == (2, 1)


async def test_max_projects_evicts_the_least_recently_active_project() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, max_projects=3)
    for project in ("p1", "p2", "p3"):
        await backend.publish(project, [request()])
        clock.advance(1)
    await backend.publish("p1", [request()])  # p1 is now the most recently active
    await backend.publish("p4", [request()])  # over capacity: p2 goes
    assert backend.project_count() == 3
    assert await backend.publish("p1", [request()]) == [3]
    assert await backend.publish("p3", [request()]) == [2]
    assert await backend.publish("p4", [request()]) == [2]
    assert backend.project_count() == 3  # all three kept; p2 never came back
    assert await backend.publish("p2", [request()]) == [1]  # p2 restarted (and p1 went)


async def test_max_projects_never_evicts_a_watched_project() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, max_projects=2)
    await backend.watch("watched")
    await backend.publish("watched", [request()])
    clock.advance(1)
    await backend.publish("other", [request()])
    clock.advance(1)
    await backend.publish("newest", [request()])  # "watched" is least recent, but watched
    assert backend.project_count() == 2
    assert await backend.publish("watched", [request()]) == [2]
    assert await backend.publish("newest", [request()]) == [2]


async def test_a_new_project_is_not_evicted_by_its_own_creation() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock, max_projects=1)
    await backend.watch("watched")
    assert await backend.publish("fresh", [request()]) == [1]
    epoch = (await backend.position("fresh")).epoch
    assert await backend.publish("fresh", [request()]) == [2]
    assert (await backend.position("fresh")).epoch == epoch


async def test_idempotent_publish_through_the_backend_returns_the_first_seqs() -> None:
    clock = FakeClock(T0)
    backend = make_backend(clock)
    delivered: list[list[int]] = []
    await backend.start(lambda project, epoch, events: delivered.append([e.seq for e in events]))
    try:
        assert await backend.publish("p1", [request(id="a"), request(id="b")]) == [1, 2]
        assert await backend.publish("p1", [request(id="b"), request(id="c")]) == [2, 3]
        assert await backend.publish("p1", [request(id="a")]) == [1]
        assert delivered == [[1, 2], [3]]
        assert [e.seq for e in (await backend.read("p1", 0, 10)).events] == [1, 2, 3]
    finally:
        await backend.close()


async def test_the_events_of_one_publish_share_one_ts_and_leave_by_age_together() -> None:
    """A clock that moves on every reading (a batch crossing a millisecond boundary, as on a
    loaded machine) still stamps one publish with one ts, as Redis does (one TIME per call)."""
    clock = FakeClock()

    def ticking() -> float:
        clock.advance(0.001)
        return clock()

    backend = MemoryBackend(Settings(retention_age_s=1.0), clock=ticking)
    batch = [PublishRequest("a.b", msgspec.json.encode({"i": i})) for i in range(50)]
    assert await backend.publish("p1", batch) == list(range(1, 51))
    result = await backend.read("p1", 0, 100)
    assert len({event.ts for event in result.events}) == 1
    clock.advance(1.0 - 0.003)  # the batch's ts is now just about 1 s old
    position = await backend.position("p1")
    assert position.oldest in (1, 51)  # all kept or all gone, never half a batch

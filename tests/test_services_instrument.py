"""The instrumentation API (tracker, throttle) and the HTTP emitter's retry policy."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from hub.errors import EventValidationError
from services.emitters import HttpEmitter, PublishFailed, PublishRejected
from services.events import IngestJob
from services.instrument import Throttle, track
from services.testing import RecordingEmitter

from .support import FakeClock, wait_for


def test_throttle_lets_one_update_through_per_interval() -> None:
    throttle = Throttle(0.5)
    assert throttle.offer(10.0) == 0.0
    throttle.sent(10.0)
    assert throttle.offer(10.2) == pytest.approx(0.3)
    assert throttle.offer(10.5) == 0.0


async def test_success_emits_created_updates_and_completed_with_the_final_state() -> None:
    emitter = RecordingEmitter()
    async with track(emitter, IngestJob(job_id="j1", source="s"), min_interval=0) as job:
        await job.update(progress=0.5, documents=2)
        await job.update(progress=0.75, documents=3)
    assert emitter.types() == [
        "ingest.job.created",
        "ingest.job.updated",
        "ingest.job.updated",
        "ingest.job.completed",
    ]
    assert {e.key for e in emitter.events} == {"ingest.job/j1"}
    assert [e.data["progress"] for e in emitter.events] == [0.0, 0.5, 0.75, 1.0]
    final = emitter.events[-1].data
    assert final["status"] == "completed" and final["documents"] == 3
    assert final["timings"]["duration_ms"] is not None


async def test_updates_in_a_tight_loop_are_coalesced_and_the_latest_state_wins() -> None:
    emitter = RecordingEmitter()
    clock = FakeClock(100.0)
    async with track(
        emitter, IngestJob(job_id="j1", source="s"), min_interval=1.0, clock=clock
    ) as job:
        for i in range(1, 1001):
            await job.update(progress=i / 2000, documents=i)  # clock frozen: all coalesced
        clock.now += 1.0
        await job.update(progress=0.6, documents=1001)  # an interval later: goes out at once
        for i in range(1002, 1100):
            await job.update(documents=i)
    assert emitter.types() == ["ingest.job.created", "ingest.job.updated", "ingest.job.completed"]
    assert emitter.events[1].data["documents"] == 1001
    assert emitter.events[2].data["documents"] == 1099


async def test_a_coalesced_update_is_flushed_after_the_interval() -> None:
    emitter = RecordingEmitter()
    async with track(emitter, IngestJob(job_id="j1", source="s"), min_interval=0.05) as job:
        await job.update(progress=0.1)  # within the interval after `created`: deferred
        await job.update(progress=0.2)  # coalesced with the one before
        await wait_for(lambda: len(emitter.events) == 2, what="flushed update")
        assert emitter.types() == ["ingest.job.created", "ingest.job.updated"]
        assert emitter.events[1].data["progress"] == 0.2
    assert emitter.types()[-1] == "ingest.job.completed"


async def test_progress_never_goes_backwards() -> None:
    emitter = RecordingEmitter()
    async with track(emitter, IngestJob(job_id="j1", source="s"), min_interval=0) as job:
        await job.update(progress=0.5)
        await job.update(progress=0.2)
        await job.update(progress=7)
    assert [e.data["progress"] for e in emitter.events] == [0.0, 0.5, 0.5, 1.0, 1.0]


async def test_an_exception_emits_failed_with_the_error_and_is_reraised() -> None:
    emitter = RecordingEmitter()
    with pytest.raises(KeyError):
        async with track(emitter, IngestJob(job_id="j1", source="s")) as job:
            await job.update(documents=1)
            raise KeyError("missing")
    assert emitter.types()[0] == "ingest.job.created"
    assert emitter.types()[-1] == "ingest.job.failed"
    failed = emitter.events[-1].data
    assert failed["status"] == "failed"
    assert failed["error"] == {"kind": "KeyError", "message": "'missing'"}
    assert failed["documents"] == 1


async def test_task_cancellation_emits_cancelled_and_propagates() -> None:
    emitter = RecordingEmitter()
    entered = asyncio.Event()

    async def work() -> None:
        async with track(emitter, IngestJob(job_id="j1", source="s")):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert emitter.types() == ["ingest.job.created", "ingest.job.cancelled"]
    assert emitter.events[-1].data["status"] == "cancelled"


async def test_hub_outage_fails_created_but_not_the_work_after_it() -> None:
    emitter = RecordingEmitter()
    emitter.fail_with = PublishFailed("hub down")
    never = IngestJob(job_id="j1", source="s")
    with pytest.raises(PublishFailed):
        async with track(emitter, never):
            pass
    assert never.status == "failed"  # what the HTTP API shows for it
    assert never.error is not None and never.error.message == "hub down"
    emitter.fail_with = None
    async with track(emitter, IngestJob(job_id="j2", source="s"), min_interval=0) as job:
        emitter.fail_with = PublishFailed("hub down")
        await job.update(progress=0.5)  # logged and counted, the work goes on
    assert job.emit_errors == 2  # the update and the completed
    assert job.state.status == "completed"


# --- HTTP emitter retry policy (a mock transport; the real hub is in test_services_hub) ----


def _emitter(handler: httpx.MockTransport, delays: list[float]) -> HttpEmitter:
    async def sleep(delay: float) -> None:
        delays.append(delay)

    client = httpx.AsyncClient(transport=handler)
    return HttpEmitter("http://hub", "p1", client=client, retries=3, backoff=0.1, sleep=sleep)


async def test_http_emitter_retries_transient_failures_with_the_same_id() -> None:
    bodies: list[dict[str, object]] = []
    answers = iter(
        [
            httpx.Response(503, json={"error": {"message": "backend down"}}),
            httpx.Response(
                429, headers={"retry-after": "0.25"}, json={"error": {"message": "slow"}}
            ),
            httpx.Response(202, json={"seqs": [7]}),
        ]
    )

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            raise httpx.ConnectError("refused")
        return next(answers)

    delays: list[float] = []
    emitter = _emitter(httpx.MockTransport(handle), delays)
    emitter.retries = 4
    seq = await emitter.emit("ingest.job.updated", {"job_id": "j", "source": "s"}, key="k")
    await emitter._client.aclose()
    assert seq == 7
    assert len(bodies) == 4 and len({b["id"] for b in bodies}) == 1
    assert bodies[0]["key"] == "k" and bodies[0]["type"] == "ingest.job.updated"
    assert delays[2] == 0.25  # Retry-After is honoured
    assert all(0 <= d <= 0.4 for d in delays)


async def test_http_emitter_does_not_retry_invalid_events() -> None:
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.headers.get("x-case") == "forbidden" or len(calls) > 1:
            return httpx.Response(403, json={"error": {"message": "no publish scope"}})
        return httpx.Response(422, json={"error": {"message": "invalid: at `$.data.progress`"}})

    emitter = _emitter(httpx.MockTransport(handle), [])
    with pytest.raises(EventValidationError, match=r"\$\.data\.progress"):
        await emitter.emit("ingest.job.updated", {"progress": 3})
    with pytest.raises(PublishRejected, match="403: no publish scope"):
        await emitter.emit("ingest.job.updated", {"progress": 3})
    await emitter._client.aclose()
    assert len(calls) == 2


async def test_http_emitter_gives_up_after_its_retries() -> None:
    emitter = _emitter(httpx.MockTransport(lambda r: httpx.Response(503, text="down")), [])
    with pytest.raises(PublishFailed, match="after 4 attempts: 503: down"):
        await emitter.emit("x.y", {})
    await emitter._client.aclose()
    assert emitter.attempts == 4

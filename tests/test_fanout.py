"""Fan-out over real loopback sockets: everything, once, in order, and only to its project."""

from __future__ import annotations

import asyncio

from .support import FrameRecorder, RunningHub, wait_for


async def open_recorders(
    running: RunningHub, project: str, n: int, **query: object
) -> list[FrameRecorder]:
    url = running.ws_url(project, **query)
    recorders = list(await asyncio.gather(*(FrameRecorder.open(url) for _ in range(n))))
    await wait_for(lambda: all(r.welcome is not None for r in recorders), what="welcomes")
    return recorders


async def close_all(recorders: list[FrameRecorder]) -> None:
    await asyncio.gather(*(r.close() for r in recorders))


async def test_200_clients_each_receive_1000_events_in_order_and_other_project_none(
    running_hub: RunningHub,
) -> None:
    subscribers = await open_recorders(running_hub, "p1", 200)
    bystanders = await open_recorders(running_hub, "p2", 5)
    hub = running_hub.hub
    for i in range(1000):
        await hub.publish("p1", "bench.tick", {"i": i}, key=f"k{i % 10}")
        if i % 50 == 0:
            await asyncio.sleep(0)  # let flushes interleave with publishing, as in production
    expected = list(range(1, 1001))
    await wait_for(
        lambda: all(len(r.seqs) >= 1000 for r in subscribers), timeout=60, what="all events"
    )
    # The bystanders' project saw traffic of its own afterwards, so their silence is real.
    await hub.publish("p2", "bench.tick", {"i": -1})
    await wait_for(lambda: all(len(r.seqs) == 1 for r in bystanders), what="p2 event")
    for recorder in subscribers:
        assert recorder.seqs == expected
        assert [f for f in recorder.frames if f["op"] not in ("welcome", "event")] == []
    for recorder in bystanders:
        assert recorder.seqs == [1]
    await close_all(subscribers + bystanders)


async def test_type_filters_deliver_only_matching_events(running_hub: RunningHub) -> None:
    agents = await open_recorders(running_hub, "p1", 3, types="agent.*")
    failures = await open_recorders(running_hub, "p1", 3, types="*.failed")
    everyone = await open_recorders(running_hub, "p1", 3)
    hub = running_hub.hub
    types = ["agent.run.created", "ingest.job.failed", "agent.run.failed", "workflow.run.updated"]
    for t in types:
        await hub.publish("p1", t, {})
    await wait_for(lambda: all(len(r.seqs) == 4 for r in everyone), what="all four")
    await wait_for(lambda: all(len(r.seqs) == 2 for r in agents), what="agent events")
    await wait_for(lambda: all(len(r.seqs) == 2 for r in failures), what="failures")
    assert all(r.seqs == [1, 3] for r in agents)
    assert all(r.seqs == [2, 3] for r in failures)
    await close_all(agents + failures + everyone)


async def test_http_publish_reaches_subscribers_with_assigned_seqs(
    running_hub: RunningHub,
) -> None:
    subscribers = await open_recorders(running_hub, "p1", 3)
    async with running_hub.http() as http:
        response = await http.post(
            "/v1/projects/p1/events",
            json=[{"type": "ingest.job.updated", "data": {"n": i}} for i in range(5)],
        )
    assert response.status_code == 202
    assert response.json() == {"seqs": [1, 2, 3, 4, 5]}
    await wait_for(lambda: all(r.seqs == [1, 2, 3, 4, 5] for r in subscribers))
    await close_all(subscribers)

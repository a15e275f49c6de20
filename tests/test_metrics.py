"""`/metrics` parses with the Prometheus text parser and its numbers match what the test did."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from hub.config import Settings

from .support import RunningHub, run_hub, wait_for
from .test_sse import P, epoch_of, publish, sse


async def scrape(running: RunningHub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and sorted labels -> value, from a real scrape."""
    async with running.http() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_counters_match_what_the_test_sent(running_hub: RunningHub) -> None:
    before = await scrape(running_hub)
    assert value(before, "hub_connections", transport="ws") == 0
    assert value(before, "hub_events_published_total") == 0

    async with connect(running_hub.ws_url(P)) as ws, sse(running_hub) as stream:
        await ws.recv()  # welcome
        await wait_for(lambda: running_hub.hub.manager.connection_count == 2)
        during = await scrape(running_hub)
        assert value(during, "hub_connections", transport="ws") == 1
        assert value(during, "hub_connections", transport="sse") == 1

        await publish(running_hub, 7)
        await publish(running_hub, 5)
        await stream.until("12 events over SSE", lambda: len(stream.seqs) == 12)
        after = await scrape(running_hub)

    assert value(after, "hub_events_published_total") == 12
    assert value(after, "hub_events_received_total") == 12
    assert value(after, "hub_events_delivered_total") == 24  # 12 events x 2 subscribers
    assert value(after, "hub_events_dropped_total") == 0
    assert value(after, "hub_slow_consumer_closes_total") == 0
    assert value(after, "hub_queue_depth_events") >= 0
    # One latency observation per (frame, receiver): both batches reached both subscribers.
    count = value(after, "hub_publish_to_send_seconds_count")
    assert count >= 4
    assert value(after, "hub_publish_to_send_seconds_bucket", le="+Inf") == count
    assert 0 <= value(after, "hub_publish_to_send_seconds_sum") < count * 5.0


async def test_replays_and_gaps_are_counted(running_hub: RunningHub) -> None:
    await publish(running_hub, 3)
    epoch = await epoch_of(running_hub)
    async with connect(running_hub.ws_url(P, since=1, epoch=epoch)) as ws:
        await ws.recv()
    async with sse(running_hub, headers={"Last-Event-ID": f"{epoch}:2"}) as stream:
        await stream.until("replayed", lambda: bool(stream.of("replayed")))
    async with sse(running_hub, headers={"Last-Event-ID": "another-epoch:2"}) as stream:
        await stream.until("snapshot", lambda: bool(stream.of("snapshot")))
    samples = await scrape(running_hub)
    assert value(samples, "hub_replays_total") == 2
    assert value(samples, "hub_gaps_total") == 1


async def test_slow_consumer_close_and_dropped_events_are_counted() -> None:
    async with run_hub(Settings(queue_events=5)) as running:
        async with sse(running) as stream:
            await publish(running, 20)
            await stream.until("end of stream", lambda: stream.ended)
        samples = await scrape(running)
    assert value(samples, "hub_slow_consumer_closes_total") == 1
    assert value(samples, "hub_events_dropped_total") == 20


async def test_process_metrics_are_exported(running_hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=running_hub.url) as http:
        text = (await http.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"process_resident_memory_bytes", "process_open_fds"} <= names

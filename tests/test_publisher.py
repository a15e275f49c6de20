"""HubPublisher / SyncHubPublisher against real hubs on loopback: retries that reuse the
idempotency id across a hub restart, batching, typed payloads, sync use from threads, and
errors that are (not) retried."""

from __future__ import annotations

import asyncio
import random
import threading

import httpx
import msgspec
import pytest

from hub.backends import MemoryBackend
from hub.config import Settings
from hub.errors import EventValidationError
from hub.publisher import (
    HubPublisher,
    PublisherFull,
    PublishFailed,
    PublishRejected,
    SyncHubPublisher,
)
from hub.wire.catalog import EventCatalog
from tests.support import RunningHub, run_hub, wait_for

P = "p1"


class Recording(httpx.AsyncBaseTransport):
    """A real HTTP transport that records each request's events (their ids), and can lose the
    answer of the first request carrying `lose_answer_of` (the hub handled it)."""

    def __init__(self, lose_answer_of: str | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[list[dict[str, object]]] = []
        self.failures: list[str] = []
        self.lose_answer_of = lose_answer_of
        self.answer_lost = asyncio.Event()
        self.hub_down = asyncio.Event()  # retries of that event wait for it (set: go on)
        self.hub_down.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        decoded = msgspec.json.decode(request.content)
        events = decoded if isinstance(decoded, list) else [decoded]
        self.requests.append(events)
        ids = {e["id"] for e in events}
        if self.lose_answer_of in ids and self.answer_lost.is_set():
            await self.hub_down.wait()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self.failures.append(type(exc).__name__)
            raise
        if self.lose_answer_of in ids and not self.answer_lost.is_set():
            await response.aread()
            await response.aclose()
            self.answer_lost.set()
            raise httpx.ReadError("the hub went away before its answer arrived", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def history(running: RunningHub) -> list[dict[str, object]]:
    async with running.http() as http:
        response = await http.get(f"/v1/projects/{P}/events", params={"since": 0})
    assert response.status_code == 200
    events: list[dict[str, object]] = response.json()["events"]
    return events


async def test_retry_across_a_hub_restart_reuses_the_id_and_publishes_once(
    rng: random.Random,
) -> None:
    backend = MemoryBackend(Settings())  # outlives the first hub: a restart keeps the data
    transport = Recording(lose_answer_of="second")
    transport.hub_down.clear()  # its retries wait until the first hub is gone
    client = httpx.AsyncClient(transport=transport)
    publisher = HubPublisher(
        "http://127.0.0.1:1", P, client=client, backoff=0.02, max_backoff=0.1, retries=200, rng=rng
    )
    async with run_hub(Settings(heartbeat_s=5.0), backend=backend) as first:
        port = first.port
        publisher.url = f"{first.url}/v1/projects/{P}/events"
        assert await publisher.publish("note.added", {"n": 1}, id="first") == 1
        sending = asyncio.create_task(publisher.publish("note.added", {"n": 2}, id="second"))
        async with asyncio.timeout(10):
            await transport.answer_lost.wait()  # the hub took it; its answer was lost
    # The hub is down now: the publisher keeps retrying (connection refused) until it is back.
    transport.hub_down.set()
    await wait_for(lambda: "ConnectError" in transport.failures, what="a refused connection")
    async with run_hub(Settings(heartbeat_s=5.0), backend=backend, port=port) as second:
        async with asyncio.timeout(20):
            seq = await sending
        events = await history(second)
    await publisher.aclose()
    await client.aclose()
    assert seq == 2  # the seq the first hub gave it, not a new one
    assert [(e["seq"], e["data"]) for e in events] == [(1, {"n": 1}), (2, {"n": 2})]
    second_attempts = [r for r in transport.requests if r[0]["id"] == "second"]
    assert len(second_attempts) >= 3  # handled-but-lost, refused while down, accepted


async def test_events_get_an_id_before_the_first_attempt(running_hub: RunningHub) -> None:
    transport = Recording(lose_answer_of=None)
    async with httpx.AsyncClient(transport=transport) as client:
        publisher = HubPublisher(running_hub.url, P, client=client)
        body = publisher.encode("note.added", {"n": 1})
        event_id = msgspec.json.decode(body)["id"]
        transport.lose_answer_of = event_id
        publisher.backoff = 0.01
        assert await publisher.enqueue(body) == 1
    assert [r[0]["id"] for r in transport.requests] == [event_id, event_id]
    assert len(await history(running_hub)) == 1


async def test_batching_sends_fewer_requests_and_a_seq_per_event(running_hub: RunningHub) -> None:
    transport = Recording()
    async with httpx.AsyncClient(transport=transport) as client:
        async with HubPublisher(running_hub.url, P, client=client, max_batch_events=50) as pub:
            seqs = await asyncio.gather(
                *(pub.publish("note.added", {"n": i}, key=f"note/{i}") for i in range(200))
            )
    assert seqs == list(range(1, 201))  # each caller its own seq, in the order published
    assert [len(r) for r in transport.requests] == [50, 50, 50, 50]
    assert running_hub.hub.stats.published == 200
    events = await history(running_hub)
    assert [e["data"] for e in events[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_batches_stay_under_the_byte_limit(running_hub: RunningHub) -> None:
    transport = Recording()
    big = "x" * 40_000
    async with httpx.AsyncClient(transport=transport) as client:
        async with HubPublisher(
            running_hub.url, P, client=client, max_batch_bytes=100_000
        ) as publisher:
            seqs = await publisher.publish_many(
                [{"type": "note.added", "data": {"text": big, "n": i}} for i in range(10)]
            )
    assert seqs == list(range(1, 11))
    assert [len(r) for r in transport.requests] == [2, 2, 2, 2, 2]


async def test_linger_gathers_events_published_one_after_another(running_hub: RunningHub) -> None:
    transport = Recording()
    async with httpx.AsyncClient(transport=transport) as client:
        async with HubPublisher(
            running_hub.url, P, client=client, linger=0.2, max_batch_events=5
        ) as publisher:
            futures = []
            for i in range(5):  # one at a time, each after a loop turn: the fifth fills it
                futures.append(publisher.enqueue(publisher.encode("note.added", {"n": i})))
                await asyncio.sleep(0)
            assert await asyncio.gather(*futures) == [1, 2, 3, 4, 5]
    assert [len(r) for r in transport.requests] == [5]


async def test_a_caller_that_outruns_the_hub_gets_publisher_full(running_hub: RunningHub) -> None:
    """Events waiting to be sent are bounded by bytes; beyond, publish fails at once, all of a
    publish_many or none of it; what was queued is still published."""
    async with HubPublisher(
        running_hub.url, P, linger=30.0, max_batch_events=1000, max_queued_bytes=2_000
    ) as publisher:
        body = publisher.encode("note.added", {"text": "x" * 60})
        futures = [publisher.enqueue(body)]  # the first one waits out the linger: the rest queue
        await asyncio.sleep(0)
        with pytest.raises(PublisherFull, match="max_queued_bytes=2000"):
            while True:
                futures.append(publisher.enqueue(publisher.encode("note.added", {"i": 1})))
        queued = len(futures)
        assert 2 < queued < 2_000 // 20
        with pytest.raises(PublisherFull):
            await publisher.publish_many([{"type": "note.added", "data": {}}] * 100)
        # leaving the block flushes: at once, not after the 30 s linger
    assert await asyncio.gather(*futures) == list(range(1, queued + 1))
    assert running_hub.hub.stats.published == queued


async def test_sync_publisher_from_threads(running_hub: RunningHub) -> None:
    results: dict[int, list[int]] = {}

    def worker(publisher: SyncHubPublisher, n: int) -> None:
        results[n] = [publisher.publish("note.added", {"thread": n, "i": i}) for i in range(20)]

    def run() -> None:
        with SyncHubPublisher(running_hub.url, P) as publisher:
            threads = [threading.Thread(target=worker, args=(publisher, n)) for n in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            future = publisher.submit("note.added", {"thread": "main"})
            results[99] = [future.result(10)]

    await asyncio.to_thread(run)  # the hub runs in this loop; the publisher in its own thread
    seqs = sorted(s for found in results.values() for s in found)
    assert seqs == list(range(1, 62))
    for n in range(3):
        assert results[n] == sorted(results[n])  # one thread's events keep their order


class Note(msgspec.Struct):
    text: str
    votes: int


def note_catalog() -> EventCatalog:
    catalog = EventCatalog()
    catalog.register("note.added", Note)
    return catalog


@pytest.mark.hub_options(catalog=note_catalog())
async def test_typed_payloads_are_checked_before_sending(running_hub: RunningHub) -> None:
    transport = Recording()
    async with httpx.AsyncClient(transport=transport) as client:
        publisher = HubPublisher(running_hub.url, P, client=client, catalog=note_catalog())
        assert await publisher.publish("note.added", Note("hello", 2)) == 1
        with pytest.raises(EventValidationError, match=r"\$\.data\.votes"):
            await publisher.publish("note.added", {"text": "hi", "votes": "many"})
        assert len(transport.requests) == 1  # the bad one never left the process
        # Without the catalog, the hub's own check answers 422, which is not retried either.
        untyped = HubPublisher(running_hub.url, P, client=client)
        with pytest.raises(EventValidationError, match=r"\$\.data\.votes"):
            await untyped.publish("note.added", {"text": "hi", "votes": "many"})
        assert untyped.attempts == 1
    events = await history(running_hub)
    assert [e["data"] for e in events] == [{"text": "hello", "votes": 2}]


@pytest.mark.hub_options(catalog=note_catalog())
async def test_one_invalid_event_fails_alone_in_its_batch(running_hub: RunningHub) -> None:
    transport = Recording()
    async with httpx.AsyncClient(transport=transport) as client:
        async with HubPublisher(running_hub.url, P, client=client) as publisher:  # no catalog
            results = await asyncio.gather(
                publisher.publish("note.added", {"text": "a", "votes": 1}),
                publisher.publish("note.added", {"text": "b", "votes": "many"}),
                publisher.publish("note.added", {"text": "c", "votes": 3}),
                return_exceptions=True,
            )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], EventValidationError)
    assert "$.data.votes" in str(results[1])
    assert [len(r) for r in transport.requests] == [3, 1, 1, 1]  # refused whole, then one by one
    events = await history(running_hub)
    assert [e["data"]["text"] for e in events] == ["a", "c"]  # type: ignore[index]


@pytest.mark.hub_settings(heartbeat_s=5.0, secret="publisher-test-secret-of-32-bytes-or-more")
async def test_client_errors_are_not_retried(running_hub: RunningHub) -> None:
    from hub.auth import mint_token

    reader = mint_token(
        "publisher-test-secret-of-32-bytes-or-more", subject="t", projects=[P], scopes=["subscribe"]
    )
    for token, status in ((None, 401), (reader, 403)):
        publisher = HubPublisher(running_hub.url, P, token=token, backoff=0.01)
        async with publisher:
            with pytest.raises(PublishRejected) as raised:
                await publisher.publish("note.added", {})
        assert raised.value.status == status
        assert publisher.attempts == 1


@pytest.mark.hub_settings(
    heartbeat_s=5.0, publish_rate_per_project=1.0, publish_burst_per_project=1
)
async def test_429_waits_for_retry_after_within_the_time_bound(running_hub: RunningHub) -> None:
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(delay)

    async with HubPublisher(running_hub.url, P, sleep=sleep, max_backoff=5.0) as publisher:
        assert await publisher.publish("note.added", {"n": 1}) == 1
        assert await publisher.publish("note.added", {"n": 2}) == 2  # after the Retry-After
    assert delays and delays[0] == 1.0  # the hub's Retry-After: 1
    async with HubPublisher(running_hub.url, P, sleep=sleep, max_retry_time=0.5) as impatient:
        with pytest.raises(PublishFailed, match=r"429.*retries stop after 0\.5s"):
            await impatient.publish("note.added", {"n": 3})
        assert impatient.attempts == 1


async def test_hub_publish_command_publishes_json_lines_and_one_event(
    running_hub: RunningHub,
) -> None:
    import sys

    lines = b"".join(
        msgspec.json.encode({"type": "note.added", "data": {"n": i}, "id": f"line-{i}"}) + b"\n"
        for i in range(3)
    )

    async def hub_publish(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub",
            "publish",
            "--url",
            running_hub.url,
            "--project",
            P,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await process.communicate(stdin)
        return process.returncode or 0, out.decode(), err.decode()

    assert await hub_publish("--file", "-", stdin=lines) == (0, "1\n2\n3\n", "")
    # The same lines again: their ids were published already, so nothing new.
    assert await hub_publish("--file", "-", stdin=lines) == (0, "1\n2\n3\n", "")
    assert await hub_publish("note.added", '{"text": "hi"}', "--key", "note/1") == (0, "4\n", "")
    events = await history(running_hub)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[3]["key"] == "note/1" and events[3]["data"] == {"text": "hi"}

"""Per-entity subscriptions on a real hub: a subscriber with `keys=ingest.job/J` on a busy
project (many keys, other types, keyless events) receives exactly J's events, live and after a
resume with `since`, on WebSocket and SSE; history pages and the snapshot filter by key; the
`subscribe` op changes keys; a token's `keys` claim narrows every path; bad keys are refused
with 4400 / 400 and a message; HubClient passes `keys` through its reconnects."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect

from hub.auth import mint_token
from hub.backends.redis import RedisBackend
from hub.client import HubClient
from hub.config import Settings
from hub.protocol import EventFrame

from .redis_support import fast_settings, redis_server_binary, running_redis
from .support import FrameRecorder, RunningHub, run_hub, wait_for
from .test_sse import sse

P = "p1"
SECRET = "keys-live-test-secret-of-32-bytes-or-more"


class Published(NamedTuple):
    seq: int
    type: str
    key: str | None


def busy_batch(rng: random.Random, size: int, jobs: int = 40) -> list[dict[str, Any]]:
    """Events of many keys: jobs, agent runs (another type), and some without a key."""
    batch: list[dict[str, Any]] = []
    for _ in range(size):
        roll = rng.random()
        if roll < 0.7:
            job = rng.randrange(jobs)
            batch.append({"type": "ingest.job.updated", "key": f"ingest.job/j{job}", "data": job})
        elif roll < 0.9:
            batch.append({"type": "agent.run.updated", "key": f"agent.run/r{rng.randrange(9)}"})
        else:
            batch.append({"type": "ingest.job.updated", "data": "no key"})
        batch[-1].setdefault("data", None)
    return batch


async def publish(
    http: httpx.AsyncClient, events: list[dict[str, Any]], project: str = P, **kw: Any
) -> list[Published]:
    response = await http.post(f"/v1/projects/{project}/events", json=events, **kw)
    assert response.status_code == 202, response.text
    seqs: list[int] = response.json()["seqs"]
    return [Published(s, e["type"], e.get("key")) for s, e in zip(seqs, events, strict=True)]


async def publish_busily(
    running: RunningHub, rng: random.Random, batches: int, size: int = 25
) -> list[Published]:
    """Several requests, yielding between them so subscribers read while it goes on."""
    published: list[Published] = []
    async with running.http() as http:
        for _ in range(batches):
            published += await publish(http, busy_batch(rng, size))
            await asyncio.sleep(0)
    return published


def seqs_of(published: list[Published], key: str, after: int = 0) -> list[int]:
    return [p.seq for p in published if p.key == key and p.seq > after]


def a_job(rng: random.Random) -> str:
    return f"ingest.job/j{rng.randrange(40)}"


# --- WebSocket -----------------------------------------------------------------------------


async def test_ws_keyed_subscriber_gets_exactly_its_key_live_and_after_a_resume(
    running_hub: RunningHub, rng: random.Random
) -> None:
    job = a_job(rng)
    keyed = await FrameRecorder.open(running_hub.ws_url(P, keys=job))
    both = await FrameRecorder.open(running_hub.ws_url(P, keys="agent.run/*", types="agent.*"))
    await keyed.wait_frames(1)
    await both.wait_frames(1)
    assert keyed.welcome is not None and keyed.welcome["keys"] == [job]
    epoch = keyed.welcome["epoch"]

    live = await publish_busily(running_hub, rng, 20)
    expected = seqs_of(live, job)
    assert expected and len(expected) < len(live) / 10  # a busy project, few of them J's
    await wait_for(lambda: len(keyed.seqs) >= len(expected), what="J's live events")
    runs = [p.seq for p in live if p.key is not None and p.key.startswith("agent.run/")]
    await wait_for(lambda: len(both.seqs) >= len(runs), what="agent runs")
    await keyed.close()
    await both.close()
    assert keyed.seqs == expected
    assert {e["key"] for e in keyed.events} == {job}
    assert both.seqs == runs

    # Away while the project goes on; back with since + epoch: exactly J's missed events.
    last = keyed.seqs[-1]
    missed = await publish_busily(running_hub, rng, 12)
    resumed = await FrameRecorder.open(running_hub.ws_url(P, keys=job, since=last, epoch=epoch))
    await wait_for(lambda: bool(resumed.ops("replayed")), what="replayed")
    expected_missed = seqs_of(live + missed, job, after=last)
    assert expected_missed
    assert resumed.seqs == expected_missed
    assert resumed.ops("replayed")[0]["count"] == len(expected_missed)
    more = await publish_busily(running_hub, rng, 6)
    await wait_for(
        lambda: len(resumed.seqs) >= len(expected_missed) + len(seqs_of(more, job)),
        what="live after the replay",
    )
    await resumed.close()
    assert resumed.seqs == expected_missed + seqs_of(more, job)


async def test_a_gap_snapshot_holds_only_the_keys_asked_for(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        await publish(
            http, [{"type": "a.b", "key": f"ingest.job/j{i}", "data": i} for i in range(9)]
        )
    recorder = await FrameRecorder.open(
        running_hub.ws_url(P, keys="ingest.job/j3,ingest.job/j7", since=0, epoch="not-this-one")
    )
    await wait_for(lambda: bool(recorder.ops("snapshot")), what="snapshot")
    await recorder.close()
    (snapshot,) = recorder.ops("snapshot")
    assert [e["key"] for e in snapshot["events"]] == ["ingest.job/j3", "ingest.job/j7"]


async def test_the_subscribe_op_adds_keys_and_subscribed_echoes_them(
    running_hub: RunningHub,
) -> None:
    recorder = await FrameRecorder.open(running_hub.ws_url(P))
    await recorder.wait_frames(1)
    assert recorder.welcome is not None and "keys" not in recorder.welcome
    await recorder.ws.send('{"op":"subscribe","id":1,"keys":["ingest.job/j1"]}')
    await wait_for(lambda: bool(recorder.ops("subscribed")), what="subscribed")
    assert recorder.ops("subscribed")[0] == {
        "op": "subscribed",
        "id": 1,
        "types": ["*"],
        "keys": ["ingest.job/j1"],
    }
    async with running_hub.http() as http:
        first = await publish(
            http, [{"type": "a.b", "key": f"ingest.job/j{i % 3}", "data": i} for i in range(9)]
        )
        await recorder.ws.send('{"op":"subscribe","id":2,"keys":["ingest.job/j2"]}')
        await wait_for(lambda: len(recorder.ops("subscribed")) == 2, what="second subscribed")
        second = await publish(
            http, [{"type": "a.b", "key": f"ingest.job/j{i % 3}", "data": i} for i in range(9)]
        )
    wanted = seqs_of(first, "ingest.job/j1") + [
        p.seq for p in second if p.key in ("ingest.job/j1", "ingest.job/j2")
    ]
    await wait_for(lambda: len(recorder.seqs) >= len(wanted), what="the keyed events")
    await recorder.close()
    assert recorder.seqs == wanted


# --- SSE -----------------------------------------------------------------------------------


async def test_sse_keyed_subscriber_gets_exactly_its_key_live_and_after_a_resume(
    running_hub: RunningHub, rng: random.Random
) -> None:
    job = a_job(rng)
    async with sse(running_hub, keys=job) as stream:
        assert stream.of("welcome")[0].data["keys"] == [job]
        live = await publish_busily(running_hub, rng, 20)
        expected = seqs_of(live, job)
        assert expected
        await stream.until("J's events", lambda: len(stream.seqs) >= len(expected))
        assert stream.seqs == expected
        assert {m.data["key"] for m in stream.of("ingest.job.updated")} == {job}
        last_id = stream.of("ingest.job.updated")[-1].id
    assert last_id is not None
    missed = await publish_busily(running_hub, rng, 12)
    expected_missed = seqs_of(missed, job)
    assert expected_missed
    async with sse(running_hub, headers={"Last-Event-ID": last_id}, keys=job) as stream:
        await stream.until("replayed", lambda: bool(stream.of("replayed")))
        assert stream.seqs == expected_missed
        assert stream.of("replayed")[0].data["count"] == len(expected_missed)


# --- history and snapshot ------------------------------------------------------------------


async def test_history_pages_by_key_and_next_is_the_last_seq_scanned(
    running_hub: RunningHub, rng: random.Random
) -> None:
    job = a_job(rng)
    published = await publish_busily(running_hub, rng, 12)
    async with running_hub.http() as http:
        page = (
            await http.get(f"/v1/projects/{P}/events", params={"keys": job, "limit": 50})
        ).json()
        assert page["next"] == 50 and page["more"] is True  # 50 scanned, J's among them
        assert [e["seq"] for e in page["events"]] == seqs_of(published[:50], job)
        got, since = [], 0
        while True:
            page = (
                await http.get(
                    f"/v1/projects/{P}/events", params={"keys": job, "limit": 37, "since": since}
                )
            ).json()
            got += [e["seq"] for e in page["events"]]
            since = page["next"]
            if not page["more"]:
                break
        assert got == seqs_of(published, job)
        both = (
            await http.get(
                f"/v1/projects/{P}/events",
                params={"keys": "agent.run/r1,ingest.job/*", "types": "agent.*"},
            )
        ).json()
        assert [e["seq"] for e in both["events"]] == [
            p.seq for p in published if p.key == "agent.run/r1"
        ]
        snapshot = (await http.get(f"/v1/projects/{P}/snapshot", params={"keys": job})).json()
        assert [(e["seq"], e["key"]) for e in snapshot["events"]] == [
            (seqs_of(published, job)[-1], job)
        ]
        jobs = (
            await http.get(f"/v1/projects/{P}/snapshot", params={"keys": "ingest.job/*"})
        ).json()
        keys = [e["key"] for e in jobs["events"]]
        assert (
            len(keys)
            == len(set(keys))
            == len({p.key for p in published if p.key and p.key.startswith("ingest.job/")})
        )


# --- bad keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("keys=", "empty keys parameter"),
        ("keys=a,,b", "empty key pattern"),
        ("keys=" + "k" * 257, "longer than 256"),
        ("keys=" + ",".join(f"k{i}" for i in range(33)), "too many key patterns"),
        ("keys=ingest.job%2Fj%FF", "not valid UTF-8"),
    ],
)
async def test_bad_keys_are_refused_on_every_path(
    running_hub: RunningHub, query: str, message: str
) -> None:
    async with connect(f"ws://127.0.0.1:{running_hub.port}/v1/projects/{P}/ws?{query}") as ws:
        error = msgspec.json.decode(await ws.recv())
        assert error["op"] == "error" and error["close"] == 4400, error
        assert message in error["message"]
    async with running_hub.http() as http:
        for path in ("events", "snapshot", "sse"):
            response = await http.get(f"/v1/projects/{P}/{path}?{query}")
            assert response.status_code == 400, (path, response.text)
            detail = response.json()["error"]
            assert detail["code"] == "bad_request" and message in detail["message"]
            assert detail["retryable"] is False


# --- tokens --------------------------------------------------------------------------------


@pytest.fixture
async def secured() -> AsyncIterator[RunningHub]:
    async with run_hub(Settings(heartbeat_s=5.0, secret=SECRET)) as running:
        yield running


async def test_a_keys_claim_narrows_ws_sse_history_and_snapshot(secured: RunningHub) -> None:
    reader = mint_token(SECRET, subject="r", projects=[P], keys=["ingest.job/j1*"])
    writer = mint_token(SECRET, subject="w", projects=[P], scopes=["publish"])
    granted = {"ingest.job/j1", "ingest.job/j12"}
    events = [
        {"type": "a.b", "key": key, "data": i}
        for i, key in enumerate(
            ["ingest.job/j1", "ingest.job/j2", "agent.run/r1", "ingest.job/j12", None] * 4
        )
    ]
    for event in events:
        if event["key"] is None:
            del event["key"]
    unfiltered = await FrameRecorder.open(secured.ws_url(P, token=reader))
    # asks wider than the grant, and outside it: gets the intersection
    wider = await FrameRecorder.open(
        secured.ws_url(P, token=reader, keys="ingest.job/*,agent.run/*")
    )
    await unfiltered.wait_frames(1)
    await wider.wait_frames(1)
    async with (
        sse(secured, token=reader) as stream,
        secured.http() as http,
    ):
        published = await publish(http, events, headers={"Authorization": f"Bearer {writer}"})
        expected = [p.seq for p in published if p.key in granted]
        for recorder in (unfiltered, wider):
            await wait_for(lambda r=recorder: len(r.seqs) >= len(expected), what="granted")
            await recorder.close()
            assert recorder.seqs == expected
        await stream.until("granted", lambda: len(stream.seqs) >= len(expected))
        assert stream.seqs == expected
        bearer = {"Authorization": f"Bearer {reader}"}
        page = (await http.get(f"/v1/projects/{P}/events", headers=bearer)).json()
        assert [e["seq"] for e in page["events"]] == expected
        outside = await http.get(
            f"/v1/projects/{P}/events", params={"keys": "agent.run/*"}, headers=bearer
        )
        assert outside.status_code == 200 and outside.json()["events"] == []  # narrowed
        snapshot = (await http.get(f"/v1/projects/{P}/snapshot", headers=bearer)).json()
        assert sorted(e["key"] for e in snapshot["events"]) == sorted(granted)


# --- the Python client ---------------------------------------------------------------------


async def test_hub_client_keys_survive_its_reconnects(
    running_hub: RunningHub, rng: random.Random
) -> None:
    job = a_job(rng)
    hub = running_hub.hub
    client = HubClient(running_hub.url, P, keys=[job], backoff_initial=0.01, backoff_max=0.05)
    received: list[EventFrame] = []
    expected: list[int] = []

    async def consume() -> None:
        async for frame in client:
            if isinstance(frame, EventFrame):
                received.append(frame)

    consumer = asyncio.create_task(consume())
    await wait_for(lambda: client.state == "open", what="client open")
    for round_ in range(4):
        for event in busy_batch(rng, 60):
            seq = await hub.publish(P, event["type"], event["data"], key=event.get("key"))
            if event.get("key") == job:
                expected.append(seq)
        if round_ < 3:
            hub.drain()  # 1001: the client resumes with since, keys and all
            await wait_for(lambda r=round_: client.connects >= r + 2, what="reconnect")
    await wait_for(lambda: len(received) >= len(expected), what="every J event")
    await client.close()
    consumer.cancel()
    assert [f.seq for f in received] == expected
    assert {f.key for f in received} == {job}


def test_hub_client_refuses_keys_the_query_cannot_carry() -> None:
    for bad in ([], ["a,b"], [""], "ingest.job/j1"):
        with pytest.raises(ValueError, match="keys"):
            HubClient("http://127.0.0.1:1", P, keys=bad)  # type: ignore[arg-type]
    assert (
        "keys=ingest.job%2Fj1%2Cagent.run%2F%2A"
        in HubClient("http://127.0.0.1:1", P, keys=["ingest.job/j1", "agent.run/*"]).ws_url()
    )


# --- Redis: two instances, keys of any Unicode ---------------------------------------------


async def test_keys_over_redis_across_instances_live_and_resumed(
    tmp_path: Path, rng: random.Random
) -> None:
    """Published on one instance, read on the other: the key survives Redis byte for byte
    (multi-byte characters included), and the replay from Redis filters by it too."""
    redis_server_binary()
    job = "ingest.job/été-✓-" + str(rng.randrange(1000))
    other = "ingest.job/ete"
    events = [{"type": "a.b", "key": job if i % 3 == 0 else other, "data": i} for i in range(30)]
    with running_redis(tmp_path / "redis") as server:
        settings = fast_settings(server.url)
        async with (
            run_hub(settings, backend=RedisBackend(server.url, settings)) as a,
            run_hub(settings, backend=RedisBackend(server.url, settings)) as b,
        ):
            on_b = await FrameRecorder.open(b.ws_url(P, keys="ingest.job/été-*"))
            await on_b.wait_frames(1)
            assert on_b.welcome is not None
            async with a.http() as http:
                first = await publish(http, events)
                expected = seqs_of(first, job)
                await wait_for(lambda: len(on_b.seqs) >= len(expected), what="J over Redis")
                await on_b.close()
                assert on_b.seqs == expected and {e["key"] for e in on_b.events} == {job}
                second = await publish(http, events)
            resumed = await FrameRecorder.open(
                b.ws_url(P, keys=job, since=expected[-1], epoch=on_b.welcome["epoch"])
            )
            await wait_for(lambda: bool(resumed.ops("replayed")), what="replayed")
            await resumed.close()
            assert resumed.seqs == seqs_of(second, job)
            async with b.http() as http:
                page = (await http.get(f"/v1/projects/{P}/events", params={"keys": job})).json()
            assert [e["seq"] for e in page["events"]] == expected + seqs_of(second, job)

"""The long-poll transport (`GET .../events?wait=S`, docs/protocol.md "Long polling"): it
answers as soon as a matching event exists, waits on the fan-out's wake-up (never a timer),
answers `gap` for a `since` the project no longer holds, and is bounded (wait, waiting polls,
shutdown, clients that leave)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.backends.redis import RedisBackend
from hub.errors import BadRequest
from hub.transports.long_poll import parse_wait

from .redis_support import RedisServer, fast_settings, running_redis
from .support import RunningHub, run_hub, wait_for

EVENTS = "/v1/projects/p1/events"


async def poll(http: httpx.AsyncClient, **query: Any) -> dict[str, Any]:
    response = await http.get(EVENTS, params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def publish(http: httpx.AsyncClient, *types: str, project: str = "p1") -> None:
    body = [{"type": t, "key": f"k{i}", "data": {"i": i}} for i, t in enumerate(types)]
    response = await http.post(f"/v1/projects/{project}/events", json=body)
    assert response.status_code == 202, response.text


async def waiting(running: RunningHub, count: int) -> None:
    await wait_for(lambda: running.hub.manager.polls.count == count, what=f"{count} waiting")


def seqs(body: dict[str, Any]) -> list[int]:
    return [e["seq"] for e in body["events"]]


async def test_a_poll_answers_at_once_when_events_exist(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        await publish(http, "a.one", "a.two", "a.three")
        started = time.monotonic()
        body = await poll(http, since=1, wait=30)
        elapsed = time.monotonic() - started
    assert seqs(body) == [2, 3]
    assert body["next"] == 3 and body["head"] == 3 and body["more"] is False
    assert body["gap"] is False and isinstance(body["epoch"], str)
    assert elapsed < 10, "answered without waiting out the 30 s"
    assert running_hub.hub.manager.polls.count == 0


async def test_a_poll_answers_when_an_event_is_published_during_the_wait(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        await publish(http, "a.one")
        first = await poll(http, since=0, wait=30)
        task = asyncio.create_task(poll(http, since=first["next"], epoch=first["epoch"], wait=30))
        await waiting(running_hub, 1)
        published = time.monotonic()
        await publish(http, "a.two")
        body = await asyncio.wait_for(task, 10)
        elapsed = time.monotonic() - published
    assert seqs(body) == [2] and body["next"] == 2 and body["gap"] is False
    assert elapsed < 10, "woken by the publish, not by the end of the wait"
    assert running_hub.hub.manager.polls.count == 0


async def test_events_the_filter_does_not_take_leave_the_poll_waiting(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        task = asyncio.create_task(poll(http, since=0, wait=30, types="job.*"))
        await waiting(running_hub, 1)
        await publish(http, "other.one", "other.two")
        await publish(http, "other.three")
        # The memory backend hands each batch to the fan-out before answering the publish.
        assert not task.done() and running_hub.hub.manager.polls.count == 1
        await publish(http, "other.four", "job.done")
        body = await asyncio.wait_for(task, 10)
    assert [e["type"] for e in body["events"]] == ["job.done"]
    assert body["next"] == 5 and body["head"] == 5


async def test_the_scan_goes_on_past_limit_events_that_do_not_match(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        await publish(http, *(["other.x"] * 7), "job.done")
        body = await poll(http, since=0, wait=30, types="job.*", limit=3)
    assert [e["seq"] for e in body["events"]] == [8]
    assert body["next"] == 8 and body["more"] is False


async def test_a_poll_with_nothing_new_answers_empty_at_the_end_of_its_wait(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        await publish(http, "a.one", "other.two")
        started = time.monotonic()
        body = await poll(http, since=0, wait=0.3, types="a.zzz")
        elapsed = time.monotonic() - started
    assert body["events"] == [] and body["next"] == 2 == body["head"]
    assert body["more"] is False and body["gap"] is False
    assert elapsed >= 0.3


async def test_a_poll_of_a_project_with_no_events_yet_waits_for_its_first(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        empty = await poll(http, wait=0.05)
        assert empty["events"] == [] and empty["head"] == 0 and empty["next"] == 0
        task = asyncio.create_task(poll(http, since=0, epoch=empty["epoch"], wait=30))
        await waiting(running_hub, 1)
        await publish(http, "a.first")
        body = await asyncio.wait_for(task, 10)
    assert seqs(body) == [1] and body["epoch"] == empty["epoch"] and body["gap"] is False


async def test_another_epoch_is_answered_at_once_with_gap(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        await publish(http, "a.one", "a.two")
        body = await poll(http, since=1, epoch="not-this-one", wait=30)
    assert body["gap"] is True and body["events"] == []
    assert body["head"] == 2 and body["next"] == 2 and body["oldest"] == 1
    assert body["epoch"] != "not-this-one"


@pytest.mark.hub_settings(heartbeat_s=5.0, retention_events=5)
async def test_a_since_older_than_retention_is_answered_with_gap(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        await publish(http, *(["a.x"] * 20))
        stale = await poll(http, since=3, wait=30)
        ahead = await poll(http, since=99, wait=30)
        current = await poll(http, since=15, wait=30)
    assert stale["gap"] is True and stale["events"] == []
    assert stale["oldest"] == 16 and stale["head"] == 20 and stale["next"] == 20
    assert ahead["gap"] is True and ahead["events"] == []
    assert current["gap"] is False and seqs(current) == [16, 17, 18, 19, 20]


@pytest.mark.hub_settings(heartbeat_s=5.0, max_long_polls=2)
async def test_polls_beyond_max_long_polls_get_503_with_retry_after(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        tasks = [asyncio.create_task(poll(http, since=0, wait=30)) for _ in range(2)]
        await waiting(running_hub, 2)
        refused = await http.get(EVENTS, params={"since": 0, "wait": 30})
        plain = await http.get(EVENTS, params={"since": 0})  # a page without wait still works
        await publish(http, "a.one")
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "over_capacity"
    assert refused.json()["error"]["retryable"] is True
    assert refused.headers["retry-after"] == "1"
    assert plain.status_code == 200
    assert [seqs(b) for b in bodies] == [[1], [1]]


@pytest.mark.hub_settings(heartbeat_s=5.0, max_connections=1)
async def test_a_waiting_poll_takes_a_connection_place_until_it_answers(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        task = asyncio.create_task(poll(http, since=0, wait=30))
        await waiting(running_hub, 1)
        refused = await http.get(EVENTS, params={"wait": 30})
        sse = await http.get("/v1/projects/p1/sse")
        await publish(http, "a.one")
        await asyncio.wait_for(task, 10)
        # The answered poll gave its place back: the next one waits again.
        again = asyncio.create_task(poll(http, since=1, wait=30))
        await waiting(running_hub, 1)
        await publish(http, "a.two")
        assert seqs(await asyncio.wait_for(again, 10)) == [2]
    for response in (refused, sse):
        assert response.status_code == 503
        assert "connection limit reached (1)" in response.json()["error"]["message"]


@pytest.mark.hub_settings(heartbeat_s=5.0, max_long_polls=1)
async def test_metrics_count_waiting_and_refused_polls(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        task = asyncio.create_task(poll(http, since=0, wait=30))
        await waiting(running_hub, 1)
        assert (await http.get(EVENTS, params={"wait": 30})).status_code == 503
        metrics = (await http.get("/metrics")).text
        await publish(http, "a.one")
        await asyncio.wait_for(task, 10)
    assert "\nhub_long_polls 1.0\n" in metrics
    assert "\nhub_long_polls_refused_total 1.0\n" in metrics


@pytest.mark.parametrize(
    ("wait", "fragment"),
    [
        ("abc", "decimal number"),
        ("", "decimal number"),
        ("0", "must be > 0"),
        ("0.0", "must be > 0"),
        ("-1", "decimal number"),
        ("nan", "decimal number"),
        ("inf", "decimal number"),
        ("1e1", "decimal number"),
        ("1_0", "decimal number"),
        (" 5", "decimal number"),
        ("31", "at most 30"),
        ("9" * 400, "decimal number"),
        ("٣", "decimal number"),  # a digit, but not ASCII
    ],
)
async def test_a_bad_wait_is_refused_with_400(
    running_hub: RunningHub, wait: str, fragment: str
) -> None:
    async with running_hub.http() as http:
        response = await http.get(EVENTS, params={"since": 0, "wait": wait})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and fragment in error["message"]
    assert running_hub.hub.manager.polls.count == 0


async def test_bad_since_epoch_and_limit_are_refused_with_400(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        for query in ({"since": "-1"}, {"epoch": "x" * 65}, {"limit": "0"}, {"types": "A"}):
            response = await http.get(EVENTS, params={"wait": 5, **query})
            assert response.status_code == 400, (query, response.text)
            assert response.json()["error"]["code"] == "bad_request"


@given(st.text(max_size=30))
def test_parse_wait_accepts_only_decimals_within_the_bound(raw: str) -> None:
    try:
        wait = parse_wait(raw, 30.0)
    except BadRequest as exc:
        assert exc.message.startswith("invalid wait")
    else:
        assert 0 < wait <= 30.0 and raw.replace(".", "", 1).isdigit()


async def test_a_client_that_leaves_mid_wait_frees_its_place_at_once(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        task = asyncio.create_task(poll(http, since=0, wait=30))
        await waiting(running_hub, 1)
        task.cancel()  # httpx closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await waiting(running_hub, 0)


async def test_waiting_polls_answer_at_once_when_the_hub_shuts_down() -> None:
    async with run_hub() as running:
        http = running.http()
        task = asyncio.create_task(poll(http, since=0, wait=30))
        await waiting(running, 1)
        started = time.monotonic()
        # The server's shutdown drains first: the poll answers before uvicorn waits for it.
        running.server.should_exit = True
        body = await asyncio.wait_for(task, 10)
        elapsed = time.monotonic() - started
        await http.aclose()
    assert body["events"] == [] and body["gap"] is False and body["next"] == 0
    assert elapsed < 10, "answered by the drain, not at the end of the 30 s wait"


async def test_a_drain_answers_waiting_polls_and_later_polls_wait_again(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        task = asyncio.create_task(poll(http, since=0, wait=30))
        await waiting(running_hub, 1)
        running_hub.hub.drain()  # subscribers are told to reconnect; polls answer now
        drained = await asyncio.wait_for(task, 10)
        assert drained["events"] == [] and drained["next"] == 0
        task = asyncio.create_task(poll(http, since=0, wait=30))
        await waiting(running_hub, 1)
        assert not task.done()
        await publish(http, "a.one")
        assert seqs(await asyncio.wait_for(task, 10)) == [1]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


async def test_a_poll_on_one_instance_wakes_for_a_publish_through_another(
    redis_server: RedisServer,
) -> None:
    settings = fast_settings(redis_server.url)
    async with (
        run_hub(settings, backend=RedisBackend(redis_server.url, settings)) as a,
        run_hub(settings, backend=RedisBackend(redis_server.url, settings)) as b,
        a.http() as on_a,
        b.http() as on_b,
    ):
        await publish(on_b, "a.one")
        first = await poll(on_a, since=0, wait=30)
        assert seqs(first) == [1]
        task = asyncio.create_task(
            poll(on_a, since=first["next"], epoch=first["epoch"], wait=30, types="a.*")
        )
        await waiting(a, 1)
        await publish(on_b, "other.x")
        await publish(on_b, "a.two")
        body = await asyncio.wait_for(task, 10)
        assert seqs(body) == [3] and body["epoch"] == first["epoch"]
        # Polls do not leave the project watched: the reader drops it with the last waiter.
        await wait_for(lambda: "p1" not in a.hub.backend.reader.cursors)  # type: ignore[attr-defined]


async def test_a_waiting_poll_answers_gap_when_redis_loses_the_project(
    redis_server: RedisServer,
) -> None:
    settings = fast_settings(redis_server.url)
    async with (
        run_hub(settings, backend=RedisBackend(redis_server.url, settings)) as running,
        running.http() as http,
    ):
        await publish(http, "a.one", "a.two")
        first = await poll(http, since=0, wait=30)
        task = asyncio.create_task(poll(http, since=2, epoch=first["epoch"], wait=30))
        await waiting(running, 1)
        redis_server.cli("FLUSHALL")  # the counter is gone: the reader starts a new epoch
        body = await asyncio.wait_for(task, 10)
    assert body["gap"] is True and body["events"] == []
    assert body["epoch"] != first["epoch"] and body["head"] == 0


async def test_a_keyed_poll_wakes_only_for_its_keys(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        task = asyncio.create_task(poll(http, since=0, wait=30, keys="job/j2,run/*"))
        await waiting(running_hub, 1)
        for key in ("job/j1", "job/j3", "other"):
            body = {"type": "a.b", "key": key, "data": {}}
            assert (await http.post(EVENTS, json=body)).status_code == 202
        assert not task.done()
        body = [{"type": "a.b", "key": k, "data": {}} for k in ("job/j1", "job/j2", "run/7")]
        assert (await http.post(EVENTS, json=body)).status_code == 202
        answer = await asyncio.wait_for(task, 10)
        assert [(e["seq"], e["key"]) for e in answer["events"]] == [(5, "job/j2"), (6, "run/7")]
        assert answer["next"] == 6

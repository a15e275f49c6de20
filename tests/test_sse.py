"""The SSE endpoint: framing, Last-Event-ID resume, gap + snapshot, filters, keepalive, the
queue bound, drain and disconnects, against a real hub on loopback (and the real curl)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from hub.backends.base import StoredEvent
from hub.config import Settings
from hub.errors import BadRequest
from hub.fanout.framers import SseFramer, format_control, format_event
from hub.fanout.outbound import Control
from hub.protocol import ErrorFrame, WelcomeFrame
from hub.transports.sse_endpoint import parse_last_event_id

from .support import RunningHub, run_hub, wait_for

P = "p1"


class Message(msgspec.Struct):
    event: str
    data: Any
    id: str | None


class SseStream:
    """Reads one SSE response into parsed messages (and counts comment lines)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.messages: list[Message] = []
        self.comments = 0
        self.ended = False
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data, event_id = "", [], None
        async for line in self.response.aiter_lines():
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line == "" and data:
                decoded = msgspec.json.decode("\n".join(data))
                self.messages.append(Message(event or "message", decoded, event_id))
                event, data, event_id = "", [], None
        self.ended = True

    def of(self, event: str) -> list[Message]:
        return [m for m in self.messages if m.event == event]

    @property
    def seqs(self) -> list[int]:
        return [m.data["seq"] for m in self.messages if m.data.get("op") == "event"]

    async def until(self, what: str, condition: Any, timeout: float = 5.0) -> None:
        await wait_for(condition, timeout=timeout, what=what)


@contextlib.asynccontextmanager
async def sse(
    running: RunningHub, project: str = P, headers: dict[str, str] | None = None, **query: Any
) -> AsyncIterator[SseStream]:
    params = {k: v for k, v in query.items() if v is not None}
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=10.0) as http,
        http.stream("GET", f"/v1/projects/{project}/sse", params=params, headers=headers) as r,
    ):
        assert r.status_code == 200, await r.aread()
        stream = SseStream(r)
        await stream.until("welcome", lambda: bool(stream.of("welcome")))
        try:
            yield stream
        finally:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await stream.task


async def publish(running: RunningHub, count: int, type: str = "test.item.added") -> list[int]:
    body = [{"type": type, "data": {"i": i}} for i in range(count)]
    async with running.http() as http:
        response = await http.post(f"/v1/projects/{P}/events", json=body)
    assert response.status_code == 202, response.text
    seqs: list[int] = response.json()["seqs"]
    return seqs


async def epoch_of(running: RunningHub) -> str:
    async with running.http() as http:
        epoch: str = (await http.get(f"/v1/projects/{P}/snapshot")).json()["epoch"]
    return epoch


# --- framing (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", (None, None)),
        ("  ", (None, None)),
        ("ab12:7", (7, "ab12")),
        ("a:b:9", (9, "a:b")),  # the epoch is opaque: split at the last colon
        ("12", (12, None)),
        ("ab12:0", (0, "ab12")),
    ],
)
def test_last_event_id_parses_epoch_and_seq(raw: str, expected: tuple[Any, Any]) -> None:
    assert parse_last_event_id(raw) == expected


@pytest.mark.parametrize("raw", ["ab:", ":5", "ab:-1", "ab:x", "e" * 65 + ":1", "1e3"])
def test_bad_last_event_id_is_a_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_last_event_id(raw)


def test_event_block_carries_id_type_and_the_frame() -> None:
    event = StoredEvent(5, "a.b", None, 1, b'{"op":"event","seq":5}')
    assert format_event(b"e1", event) == (b'id: e1:5\nevent: a.b\ndata: {"op":"event","seq":5}\n\n')


def test_multiline_data_becomes_several_data_lines() -> None:
    block = format_control("welcome", b'{"a":\n1,\r\n"b":2}', b"e:1")
    assert block == b'id: e:1\nevent: welcome\ndata: {"a":\ndata: 1,\ndata: "b":2}\n\n'


def test_typed_messages_map_to_named_blocks_with_the_epoch_of_the_welcome() -> None:
    framer = SseFramer()
    welcome = framer.control(Control(WelcomeFrame("p", "ep", 3, 1, 5.0), 3))
    assert welcome.startswith(b"id: ep:3\nevent: welcome\ndata: {")
    event = StoredEvent(3, "x.y", None, 1, b'{"op":"event","seq":3,"type":"x.y"}')
    error = ErrorFrame(code="c", message="m", retryable=True, close=4008)
    assert framer.events([event]) + framer.control(Control(error)) == (
        b'id: ep:3\nevent: x.y\ndata: {"op":"event","seq":3,"type":"x.y"}\n\n'
        b'event: error\ndata: {"op":"error","code":"c","message":"m","retryable":true,'
        b'"close":4008}\n\n'
    )


# --- the endpoint ------------------------------------------------------------------------


async def test_headers_welcome_then_live_events_with_ids(running_hub: RunningHub) -> None:
    await publish(running_hub, 3)
    epoch = await epoch_of(running_hub)
    async with sse(running_hub) as stream:
        headers = stream.response.headers
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        welcome = stream.of("welcome")[0]
        assert welcome.data["head"] == 3
        assert welcome.id == f"{epoch}:3"  # live only: resuming from here loses nothing
        await publish(running_hub, 2)
        await stream.until("live events", lambda: stream.seqs == [4, 5])
        ids = [m.id for m in stream.messages if m.event == "test.item.added"]
        assert ids == [f"{epoch}:4", f"{epoch}:5"]


async def test_last_event_id_resumes_after_that_event(running_hub: RunningHub) -> None:
    await publish(running_hub, 10)
    epoch = await epoch_of(running_hub)
    async with sse(running_hub, headers={"Last-Event-ID": f"{epoch}:6"}, since="1") as stream:
        await stream.until("replayed", lambda: bool(stream.of("replayed")))
        assert stream.seqs == [7, 8, 9, 10]  # the header wins over the query's since
        replayed = stream.of("replayed")[0]
        assert replayed.data == {"op": "replayed", "count": 4, "head": 10}
        assert replayed.id == f"{epoch}:10"
        await publish(running_hub, 1)
        await stream.until("live", lambda: stream.seqs == [7, 8, 9, 10, 11])


async def test_since_and_epoch_in_the_query_resume_too(running_hub: RunningHub) -> None:
    await publish(running_hub, 4)
    epoch = await epoch_of(running_hub)
    async with sse(running_hub, since="2", epoch=epoch) as stream:
        await stream.until("replayed", lambda: bool(stream.of("replayed")))
        assert stream.seqs == [3, 4]


async def test_types_filter_applies_to_replay_and_live(running_hub: RunningHub) -> None:
    await publish(running_hub, 2, "agent.run.updated")
    await publish(running_hub, 2, "ingest.job.updated")
    epoch = await epoch_of(running_hub)
    async with sse(running_hub, since="0", epoch=epoch, types="ingest.*") as stream:
        await stream.until("replayed", lambda: bool(stream.of("replayed")))
        assert stream.seqs == [3, 4]
        await publish(running_hub, 1, "agent.run.updated")
        await publish(running_hub, 1, "ingest.job.updated")
        await stream.until("live", lambda: stream.seqs == [3, 4, 6])


@pytest.mark.hub_settings(retention_events=5)
async def test_gap_and_snapshot_when_the_id_was_evicted(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        for job in ("a", "b"):
            for progress in (0.5, 1.0):
                event = {"type": "x.job.updated", "key": f"job/{job}", "data": {"p": progress}}
                await http.post(f"/v1/projects/{P}/events", json=event)
    await publish(running_hub, 6)
    epoch = await epoch_of(running_hub)
    async with sse(running_hub, headers={"Last-Event-ID": f"{epoch}:1"}) as stream:
        await stream.until("snapshot", lambda: bool(stream.of("snapshot")))
        gap = stream.of("gap")[0].data
        assert gap == {"op": "gap", "reason": "evicted", "since": 1, "oldest": 6, "head": 10}
        snapshot = stream.of("snapshot")[0]
        assert snapshot.id == f"{epoch}:10"
        latest = {e["key"]: e["data"]["p"] for e in snapshot.data["events"]}
        assert latest == {"job/a": 1.0, "job/b": 1.0}
        await publish(running_hub, 1)
        await stream.until("live after the snapshot", lambda: stream.seqs == [11])


async def test_an_id_of_another_epoch_gets_a_gap(running_hub: RunningHub) -> None:
    await publish(running_hub, 2)
    async with sse(running_hub, headers={"Last-Event-ID": "old-epoch:2"}) as stream:
        await stream.until("snapshot", lambda: bool(stream.of("snapshot")))
        assert stream.of("gap")[0].data["reason"] == "epoch"


@pytest.mark.hub_settings(heartbeat_s=0.1)
async def test_keepalive_comment_every_heartbeat(running_hub: RunningHub) -> None:
    async with sse(running_hub) as stream:
        await stream.until("two keepalives", lambda: stream.comments >= 2)


@pytest.mark.hub_settings(queue_events=5)
async def test_queue_overflow_ends_the_stream_and_the_client_resumes(
    running_hub: RunningHub,
) -> None:
    epoch = await epoch_of(running_hub)
    async with sse(running_hub) as stream:
        await publish(running_hub, 20)  # one fan-out tick: 20 queued events > 5
        await stream.until("end of stream", lambda: stream.ended)
        error = stream.of("error")[0].data
        assert error["close"] == 4008 and error["retryable"] is True
        assert stream.seqs == []
    assert running_hub.hub.manager.stats.slow_closes == 1
    async with sse(running_hub, headers={"Last-Event-ID": f"{epoch}:0"}) as resumed:
        await resumed.until("replayed", lambda: bool(resumed.of("replayed")))
        assert resumed.seqs == list(range(1, 21))


async def test_drain_sends_1001_and_ends_the_stream(running_hub: RunningHub) -> None:
    async with sse(running_hub) as stream:
        assert running_hub.hub.drain() == 1
        await stream.until("end of stream", lambda: stream.ended)
        assert stream.of("error")[0].data["close"] == 1001


async def test_disconnect_removes_the_connection(running_hub: RunningHub) -> None:
    manager, stats = running_hub.hub.manager, running_hub.hub.stats
    async with sse(running_hub):
        assert manager.connection_count == 1 and stats.sse_connections == 1
    await wait_for(lambda: manager.connection_count == 0, what="connection removed")
    assert stats.sse_connections == 0


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/projects/p1/sse?since=-1", {}),
        ("/v1/projects/p1/sse?types=Bad..", {}),
        ("/v1/projects/p1/sse", {"Last-Event-ID": "e:x"}),
        ("/v1/projects/-bad/sse", {}),
    ],
)
async def test_bad_parameters_are_a_400(
    running_hub: RunningHub, path: str, headers: dict[str, str]
) -> None:
    async with running_hub.http() as http:
        response = await http.get(path, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_with_last_event_id_resumes_exactly_after_that_event(
    running_hub: RunningHub,
) -> None:
    await publish(running_hub, 8)
    epoch = await epoch_of(running_hub)
    url = f"{running_hub.url}/v1/projects/{P}/sse"
    curl = await asyncio.create_subprocess_exec(
        *("curl", "--silent", "--no-buffer", "--max-time", "20"),
        *("-H", f"Last-Event-ID: {epoch}:5", url),
        stdout=asyncio.subprocess.PIPE,
    )
    assert curl.stdout is not None
    output = b""

    async def read_until(marker: bytes) -> None:
        nonlocal output
        async with asyncio.timeout(10):
            while marker not in output:
                chunk = await curl.stdout.read(4096)  # type: ignore[union-attr]
                assert chunk, f"curl ended early: {output.decode()}"
                output += chunk

    try:
        await read_until(b"event: replayed\n")
        await publish(running_hub, 1)  # then live
        await read_until(f"id: {epoch}:9\n".encode())
    finally:
        curl.terminate()
        await curl.wait()
    ids = [line[4:] for line in output.decode().splitlines() if line.startswith("id: ")]
    assert ids == [f"{epoch}:6", f"{epoch}:7", f"{epoch}:8", f"{epoch}:8", f"{epoch}:9"]
    assert b"event: replayed\n" in output and b'"count":3' in output


# --- the same auth and limits as the WebSocket path --------------------------------------

SECRET = "sse-test-secret-that-is-at-least-32-bytes"


@pytest.mark.hub_settings(max_connections=1)
async def test_connection_limit_answers_503(running_hub: RunningHub) -> None:
    async with sse(running_hub):
        async with running_hub.http() as http:
            response = await http.get(f"/v1/projects/{P}/sse")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "over_capacity"


async def test_token_types_narrow_the_stream_and_expiry_ends_it() -> None:
    from hub.auth import mint_token

    token = mint_token(SECRET, subject="s", projects=[P], ttl_s=2, types=["ingest.*"])
    async with run_hub(Settings(secret=SECRET)) as running:
        async with running.http() as http:
            assert (await http.get(f"/v1/projects/{P}/sse")).status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        async with sse(running, headers=headers) as stream:
            await running.hub.publish(P, "agent.run.updated", {"i": 1})
            await running.hub.publish(P, "ingest.job.updated", {"i": 2})
            await stream.until("the granted type", lambda: stream.seqs == [2])
            await stream.until("expiry", lambda: stream.ended, timeout=5)
            assert stream.of("error")[0].data["close"] == 4001

"""Limits: token buckets on a clock moved by hand, connection counts, and each limit on a
real hub (429 with Retry-After, 1013, 4029, 408, slowloris, compression off, bad UTF-8)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from hub.auth import mint_token
from hub.config import Settings
from hub.limits import (
    ConnectionLimits,
    Limits,
    OverCapacity,
    RateLimiter,
    RateLimitExceeded,
    TokenBucket,
)

from .support import FakeClock, FrameRecorder, RunningHub, run_hub, wait_for

SECRET = "limits-test-secret-at-least-32-bytes-long"


# --- token buckets (no sockets) ----------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=5, clock=clock)
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.advance(0.25)
    assert not bucket.try_take()
    assert bucket.wait_time() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_take()
    clock.advance(100)
    assert bucket.full and bucket.level == 5  # refill stops at the burst


def test_a_cost_above_the_burst_passes_when_full_and_leaves_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=20, clock=clock)
    assert bucket.try_take(50)  # a full bucket takes a batch larger than the burst
    assert bucket.level == -30
    assert bucket.wait_time(1) == pytest.approx(3.1)
    assert bucket.wait_time(50) == pytest.approx(5.0)  # until full again
    clock.advance(5.0)
    assert bucket.try_take(50)


def test_a_clock_going_backwards_does_not_mint_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.try_take()
    clock.advance(-10)
    assert not bucket.try_take()
    clock.advance(10)  # back where it was: still nothing
    assert not bucket.try_take()
    clock.advance(1)
    assert bucket.try_take()


def test_keyed_buckets_are_independent_and_full_ones_are_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock, max_keys=100)
    for _ in range(2):
        limiter.bucket("a").take()
    assert not limiter.bucket("a").try_take()
    assert limiter.bucket("b").try_take()
    for i in range(300):
        limiter.bucket(f"k{i}")  # untouched, hence full
    assert len(limiter) <= 200  # swept as it grew past max_keys
    assert not limiter.bucket("a").try_take(), "a drained bucket is remembered"


def test_publish_limits_need_room_in_both_buckets_and_take_from_both() -> None:
    clock = FakeClock()
    settings = Settings(
        publish_rate_per_project=10.0,
        publish_burst_per_project=10,
        publish_rate_per_token=1.0,
        publish_burst_per_token=5,
    )
    limits = Limits(settings, clock=clock)
    limits.publish.check("p", "alice", 5, take=True)
    with pytest.raises(RateLimitExceeded, match="this token") as info:
        limits.publish.check("p", "alice", 1, take=True)
    assert info.value.retry_after == pytest.approx(1.0)
    assert info.value.retry_after_header == "1"
    limits.publish.check("p", "bob", 5, take=True)  # another token, same project
    with pytest.raises(RateLimitExceeded, match="project 'p'"):
        limits.publish.check("p", "carol", 1, take=True)
    limits.publish.check("q", None, 10, take=True)  # no token (open hub): project only
    clock.advance(1.0)
    limits.publish.check("p", "alice", 1, take=True)


def test_connection_limits_count_total_subject_and_address() -> None:
    limits = ConnectionLimits(total=10, per_subject=2, per_address=3)
    a1 = limits.acquire("alice", "10.0.0.1")
    limits.acquire("alice", "10.0.0.2")
    with pytest.raises(OverCapacity, match="per token"):
        limits.acquire("alice", "10.0.0.3")
    limits.acquire("bob", "10.0.0.1")
    limits.acquire(None, "10.0.0.1")
    with pytest.raises(OverCapacity, match="per address"):
        limits.acquire("carol", "10.0.0.1")
    a1.release()
    a1.release()  # idempotent
    assert limits.count == 3
    assert limits.acquire("alice", "10.0.0.1").subject == "alice"
    assert dict(limits.by_address) == {"10.0.0.1": 3, "10.0.0.2": 1}


def test_the_total_connection_limit_comes_first() -> None:
    limits = ConnectionLimits(total=2, per_subject=0, per_address=0)
    slots = [limits.acquire("alice", "10.0.0.1") for _ in range(2)]
    with pytest.raises(OverCapacity, match=r"connection limit reached \(2\)"):
        limits.acquire(None, None)
    for slot in slots:
        slot.release()
    assert (limits.count, dict(limits.by_subject), dict(limits.by_address)) == (0, {}, {})


# --- helpers for live hubs ---------------------------------------------------------------


def limits_of(running: RunningHub) -> Limits:
    limits: Limits = running.app.state.limits
    return limits


async def subscribe(running: RunningHub, project: str = "p1", **options: Any) -> FrameRecorder:
    headers = options.pop("headers", None)
    ws = await connect(running.ws_url(project, **options), additional_headers=headers)
    return FrameRecorder(ws)


async def welcomed(running: RunningHub, project: str = "p1", **options: Any) -> FrameRecorder:
    subscriber = await subscribe(running, project, **options)
    await wait_for(
        lambda: bool(subscriber.frames) or subscriber.closed is not None, what="first frame"
    )
    assert subscriber.frames[0]["op"] == "welcome"
    return subscriber


async def refused_with(running: RunningHub, code: int, **options: Any) -> dict[str, Any]:
    subscriber = await subscribe(running, **options)
    await wait_for(lambda: subscriber.closed is not None, what=f"close {code}")
    assert subscriber.close_code == code
    assert [f["op"] for f in subscriber.frames] == ["error"]
    return subscriber.frames[0]


# --- connections -------------------------------------------------------------------------


@pytest.mark.hub_settings(heartbeat_s=5.0, max_connections=10)
async def test_a_flood_beyond_the_connection_limit_gets_1013_and_the_others_keep_receiving(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    existing = [await welcomed(running_hub) for _ in range(10)]
    published = [await hub.publish("p1", "ingest.job.updated", {"i": i}) for i in range(3)]

    async def one_more() -> FrameRecorder:
        subscriber = await subscribe(running_hub)
        await wait_for(lambda: subscriber.closed is not None, what="refused")
        return subscriber

    flood = asyncio.gather(*(one_more() for _ in range(40)))
    for i in range(20):  # keep publishing while the flood is refused
        published.append(await hub.publish("p1", "ingest.job.updated", {"i": i}))
        await asyncio.sleep(0)
    refused = await flood
    for subscriber in refused:
        assert subscriber.close_code == 1013
        [error] = subscriber.frames
        assert error["code"] == "over_capacity" and error["close"] == 1013
        assert error["retryable"] is True
    await wait_for(lambda: all(len(s.seqs) == len(published) for s in existing), what="every event")
    for subscriber in existing:
        assert subscriber.seqs == published and subscriber.closed is None
    assert limits_of(running_hub).connections.count == 10
    # a place freed is a place taken
    await existing.pop().close()
    await wait_for(lambda: limits_of(running_hub).connections.count == 9, what="released")
    existing.append(await welcomed(running_hub))
    for subscriber in existing:
        await subscriber.close()
    await wait_for(lambda: limits_of(running_hub).connections.count == 0, what="all released")


@pytest.mark.hub_settings(
    heartbeat_s=5.0, secret=SECRET, max_connections_per_subject=2, max_connections_per_address=3
)
async def test_connections_per_token_and_per_address_are_limited(running_hub: RunningHub) -> None:
    def bearer(subject: str) -> dict[str, str]:
        token = mint_token(SECRET, subject=subject, projects=["p1"])
        return {"Authorization": f"Bearer {token}"}

    alice = [await welcomed(running_hub, headers=bearer("alice")) for _ in range(2)]
    error = await refused_with(running_hub, 1013, headers=bearer("alice"))
    assert "per token" in error["message"]
    bob = await welcomed(running_hub, headers=bearer("bob"))
    error = await refused_with(running_hub, 1013, headers=bearer("carol"))
    assert "per address" in error["message"]  # all of them come from 127.0.0.1
    await alice[0].close()
    await wait_for(lambda: limits_of(running_hub).connections.count == 2, what="released")
    alice[0] = await welcomed(running_hub, headers=bearer("alice"))
    for subscriber in [*alice, bob]:
        await subscriber.close()


async def test_refused_subscriptions_take_no_place(running_hub: RunningHub) -> None:
    for _ in range(3):
        await refused_with(running_hub, 4400, since="x")
    assert limits_of(running_hub).connections.count == 0


# --- socket op rate ----------------------------------------------------------------------


@pytest.mark.hub_settings(heartbeat_s=5.0, client_ops_rate=1.0, client_ops_burst=5)
async def test_too_many_frames_per_second_close_the_socket_with_4029(
    running_hub: RunningHub,
) -> None:
    clock = FakeClock()
    limits_of(running_hub).clock = clock
    bystander = await welcomed(running_hub)
    chatty = await welcomed(running_hub)
    for i in range(5):
        await chatty.ws.send('{"op":"ping","id":%d}' % i)  # noqa: UP031
    await wait_for(lambda: len(chatty.frames) == 6, what="five pongs")
    clock.advance(1.0)  # one more allowed a second later
    await chatty.ws.send('{"op":"ping","id":5}')
    await wait_for(lambda: len(chatty.frames) == 7, what="sixth pong")
    await chatty.ws.send('{"op":"ping","id":6}')
    await wait_for(lambda: chatty.closed is not None, what="4029")
    assert chatty.close_code == 4029
    assert chatty.frames[-1] == {
        "op": "error",
        "code": "rate_limited",
        "message": "more than 1 frames per second; slow down",
        "retryable": True,
        "close": 4029,
    }
    seq = await running_hub.hub.publish("p1", "agent.run.created", {})
    await wait_for(lambda: bystander.seqs == [seq], what="bystander still served")
    await bystander.close()


# --- publish rate ------------------------------------------------------------------------


@pytest.mark.hub_settings(
    heartbeat_s=5.0, publish_rate_per_project=2.0, publish_burst_per_project=4
)
async def test_publishing_over_the_project_rate_gets_429_with_retry_after(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        clock = FakeClock()
        limits_of(running_hub).clock = clock
        event = {"type": "agent.run.created", "data": {}}
        response = await http.post("/v1/projects/p1/events", json=[event] * 3)
        assert response.status_code == 202
        response = await http.post("/v1/projects/p1/events", json=[event] * 2)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        body = response.json()["error"]
        assert body["code"] == "rate_limited" and body["retryable"] is True
        assert "project 'p1'" in body["message"]
        # another project has its own bucket
        assert (await http.post("/v1/projects/p2/events", json=event)).status_code == 202
        clock.advance(0.5)  # one more token: 2 events fit now
        assert (await http.post("/v1/projects/p1/events", json=[event] * 2)).status_code == 202
        assert (await http.post("/v1/projects/p1/events", json=event)).status_code == 429
        assert (await running_hub.hub.backend.position("p1")).head == 5


@pytest.mark.hub_settings(
    heartbeat_s=5.0, secret=SECRET, publish_rate_per_token=1.0, publish_burst_per_token=2
)
async def test_publishing_over_the_token_rate_gets_429(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        clock = FakeClock()
        limits_of(running_hub).clock = clock

        def headers(subject: str) -> dict[str, str]:
            token = mint_token(SECRET, subject=subject, projects=["*"], scopes=["publish"])
            return {"Authorization": f"Bearer {token}"}

        event = {"type": "agent.run.created", "data": {}}
        for _ in range(2):
            response = await http.post("/v1/projects/p1/events", json=event, headers=headers("a"))
            assert response.status_code == 202
        response = await http.post("/v1/projects/p2/events", json=event, headers=headers("a"))
        assert response.status_code == 429 and "this token" in response.json()["error"]["message"]
        response = await http.post("/v1/projects/p2/events", json=event, headers=headers("b"))
        assert response.status_code == 202
        clock.advance(1.0)
        response = await http.post("/v1/projects/p2/events", json=event, headers=headers("a"))
        assert response.status_code == 202


# --- slow and idle clients (slowloris) ---------------------------------------------------

UPGRADE = (
    b"GET /v1/projects/p1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
async def impatient_hub() -> AsyncIterator[RunningHub]:
    settings = Settings(
        heartbeat_s=5.0, handshake_timeout_s=0.5, keep_alive_s=0.5, body_timeout_s=0.5
    )
    async with run_hub(settings) as running:
        yield running


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Read until the server closes the connection; fail if it takes longer than `within`."""
    return await asyncio.wait_for(reader.read(), within)


async def test_a_socket_that_sends_nothing_is_closed(impatient_hub: RunningHub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_hub.port)
    assert await closed_by_server(reader, within=3) == b""
    await hang_up(writer)


async def test_an_upgrade_sent_a_byte_at_a_time_is_closed_before_it_completes(
    impatient_hub: RunningHub,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_hub.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    closed = asyncio.create_task(closed_by_server(reader, within=3))
    while not closed.done() and sent < len(UPGRADE) - 1:
        writer.write(UPGRADE[sent : sent + 1])
        sent += 1
        await asyncio.sleep(0.02)  # the attacker's pace: 50 bytes/s
    assert await closed == b""
    assert sent < len(UPGRADE) - 1, "the head completed before the deadline"
    assert loop.time() - started < 3
    assert impatient_hub.hub.manager.connection_count == 0
    await hang_up(writer)


async def test_a_slow_head_on_a_kept_alive_connection_is_closed(
    impatient_hub: RunningHub,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_hub.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readexactly(len(b'{"status":"ok"}')), 3)
    # uvicorn's keep-alive timer stops at the first byte: the head deadline still holds
    closed = asyncio.create_task(closed_by_server(reader, within=3))
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    for i in range(len(request) - 1):
        if closed.done():
            break
        writer.write(request[i : i + 1])
        await asyncio.sleep(0.05)
    assert await closed == b""
    await hang_up(writer)


async def test_an_idle_kept_alive_connection_is_closed(impatient_hub: RunningHub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_hub.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = await closed_by_server(reader, within=3)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"status":"ok"}')
    await hang_up(writer)


@pytest.mark.hub_settings(heartbeat_s=0.5)
async def test_a_frame_trickled_after_the_upgrade_is_cut_by_the_heartbeat(
    running_hub: RunningHub,
) -> None:
    # The head deadline ends at the upgrade; then a peer busy trickling one frame cannot
    # answer pings, and a missed pong closes it (1011) within two heartbeats.
    reader, writer = await asyncio.open_connection("127.0.0.1", running_hub.port)
    writer.write(UPGRADE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101")
    payload = b'{"op":"ping","id":"' + b"x" * 300 + b'"}'
    frame = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload)) + b"\0\0\0\0"
    frame += payload  # masked with a zero key
    closed = asyncio.create_task(closed_by_server(reader, within=5))
    sent = 0
    while not closed.done() and sent < len(frame) - 1:
        writer.write(frame[sent : sent + 1])
        sent += 1
        await asyncio.sleep(0.02)
    data = await closed
    assert sent < len(frame) - 1, "the frame completed before the cut"
    assert struct.pack("!H", 1011) + b"keepalive ping timeout" in data  # the close frame
    await wait_for(lambda: running_hub.hub.manager.connection_count == 0, what="removed")
    await hang_up(writer)


async def test_a_publish_body_that_never_arrives_gets_408(impatient_hub: RunningHub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_hub.port)
    writer.write(
        b"POST /v1/projects/p1/events HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"type":'
    )
    data = await closed_by_server(reader, within=3)
    assert data.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in data
    await hang_up(writer)


@pytest.mark.hub_settings(heartbeat_s=5.0, handshake_timeout_s=10.0, body_timeout_s=0.5)
async def test_a_408_closes_the_connection_at_once(running_hub: RunningHub) -> None:
    # The head deadline (10 s) would close it eventually; the 408 must not wait for it, or a
    # trickled body holds its connection (and the drain at shutdown) that long.
    reader, writer = await asyncio.open_connection("127.0.0.1", running_hub.port)
    writer.write(
        b"POST /v1/projects/p1/events HTTP/1.1\r\nHost: localhost\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"type":'
    )
    data = await closed_by_server(reader, within=5)
    assert data.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in data.lower()
    await hang_up(writer)


@pytest.mark.hub_settings(heartbeat_s=5.0, max_request_head=4096)
async def test_a_request_head_over_the_limit_is_refused(running_hub: RunningHub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running_hub.port)
    # a head that keeps growing without ending is cut once it passes the limit
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 8000)
    data = await closed_by_server(reader, within=3)
    assert data.startswith(b"HTTP/1.1 400")
    await hang_up(writer)


async def test_normal_clients_are_not_hurried(impatient_hub: RunningHub) -> None:
    subscriber = await welcomed(impatient_hub)
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_hub.port)
    async with impatient_hub.http() as http:
        for _ in range(3):
            assert (await http.get("/healthz")).status_code == 200
    await closed_by_server(reader, within=3)  # the deadline has passed now
    await hang_up(writer)
    seq = await impatient_hub.hub.publish("p1", "agent.run.created", {})
    await wait_for(lambda: subscriber.seqs == [seq], what="event after the deadlines passed")
    assert subscriber.closed is None
    await subscriber.close()


# --- compression and bad UTF-8 -----------------------------------------------------------


async def test_a_client_offering_permessage_deflate_gets_no_extension(
    running_hub: RunningHub,
) -> None:
    async with connect(running_hub.ws_url("p1"), compression="deflate") as ws:
        assert ws.protocol.extensions == []
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert msgspec.json.decode(await ws.recv())["op"] == "welcome"


async def test_invalid_utf8_closes_with_1007_and_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_hub(Settings(heartbeat_s=5.0), log_level="debug") as running:
        # uvicorn's loggers do not propagate to the root, where caplog listens
        uvicorn_logger = logging.getLogger("uvicorn")
        uvicorn_logger.addHandler(caplog.handler)
        try:
            bystander = await welcomed(running)
            for _ in range(5):
                offender = await welcomed(running)
                await offender.ws.send(b'{"op":"ping","id":"\xff\xfe"}', text=True)
                await wait_for(lambda o=offender: o.closed is not None, what="1007")
                assert offender.close_code == 1007
                assert offender.frames[-1]["code"] == "invalid_utf8"
            seq = await running.hub.publish("p1", "agent.run.created", {})
            await wait_for(lambda: bystander.seqs == [seq], what="bystander served")
            await bystander.close()
        finally:
            uvicorn_logger.removeHandler(caplog.handler)
    assert any("1007" in r.getMessage() for r in caplog.records), "the close is logged"
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert not [r for r in caplog.records if "Traceback" in r.getMessage()]
    closes = [r for r in caplog.records if r.getMessage().startswith("closing websocket")]
    assert len(closes) == 5  # one line per offender

"""Bad input over real loopback sockets: each gets its documented error frame or close code,
and a second client of the same project keeps receiving every event throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from hub.config import Settings

from .support import FrameRecorder, RunningHub, run_hub, wait_for

PROJECT = "p1"


async def open_client(running: RunningHub, project: str = PROJECT, **query: Any) -> FrameRecorder:
    ws = await connect(running.ws_url(project, **query), max_size=None)
    return FrameRecorder(ws)


async def welcomed(running: RunningHub, **query: Any) -> FrameRecorder:
    client = await open_client(running, **query)
    await wait_for(lambda: bool(client.ops("welcome")), timeout=5, what="welcome")
    return client


@pytest.fixture
async def hub_1k() -> AsyncIterator[RunningHub]:
    settings = Settings(heartbeat_s=5.0, max_inbound_frame=1024, max_patterns=2, error_budget=3)
    async with run_hub(settings) as running:
        yield running


async def publish(running: RunningHub, n: int) -> list[int]:
    return [await running.hub.publish(PROJECT, "ingest.job.updated", {"i": i}) for i in range(n)]


async def assert_everyone_gets_everything(
    running: RunningHub, clients: list[FrameRecorder], already: list[int]
) -> None:
    """Publish more events; each client must then hold every seq published, in order, once."""
    published = already + await publish(running, 5)
    await wait_for(
        lambda: all(len(c.seqs) >= len(published) for c in clients), timeout=5, what="events"
    )
    for client in clients:
        assert client.seqs == published


# --- errors that leave the connection open -----------------------------------------------


async def assert_error_then_still_serving(
    running: RunningHub, frame: str, code: str, message: str, frame_id: object
) -> dict[str, Any]:
    bystander = await welcomed(running)
    offender = await welcomed(running)
    before = await publish(running, 3)
    await wait_for(lambda: len(offender.seqs) == 3, timeout=5, what="first events")
    await offender.ws.send(frame)
    await wait_for(lambda: bool(offender.ops("error")), timeout=5, what="error frame")
    [error] = offender.ops("error")
    assert error["code"] == code
    assert message in error["message"]
    assert error.get("id") == frame_id
    assert "close" not in error
    # Still open: it answers a ping and keeps receiving events.
    await offender.ws.send('{"op":"ping","id":99}')
    await wait_for(lambda: bool(offender.ops("pong")), timeout=5, what="pong")
    assert offender.ops("pong") == [{"op": "pong", "id": 99}]
    await assert_everyone_gets_everything(running, [bystander, offender], before)
    assert offender.closed is None
    await offender.close()
    await bystander.close()
    return error


async def test_malformed_json_gets_an_error_frame_and_the_connection_stays_open(
    hub_1k: RunningHub,
) -> None:
    await assert_error_then_still_serving(
        hub_1k, '{"op":"ping",', "malformed_json", "malformed JSON", None
    )


async def test_unknown_op_gets_an_error_frame_naming_it_and_the_connection_stays_open(
    hub_1k: RunningHub,
) -> None:
    error = await assert_error_then_still_serving(
        hub_1k, '{"op":"subscrbe","id":3,"types":["agent.*"]}', "bad_request", "unknown op", 3
    )
    assert error["message"] == "unknown op 'subscrbe'"
    assert error.get("retryable", False) is False


async def test_bad_pattern_gets_an_error_frame_and_the_connection_stays_open(
    hub_1k: RunningHub,
) -> None:
    await assert_error_then_still_serving(
        hub_1k,
        '{"op":"subscribe","id":4,"types":["Agent.*"]}',
        "bad_request",
        "invalid type pattern 'Agent.*'",
        4,
    )


async def test_too_many_patterns_gets_an_error_frame_and_the_filter_is_unchanged(
    hub_1k: RunningHub,
) -> None:
    # The offender stays subscribed to `*`: assert_error_then_still_serving checks it still
    # receives every event (all published here are ingest.job.updated, outside a.*, b.*, c.*).
    await assert_error_then_still_serving(
        hub_1k,
        '{"op":"subscribe","id":"s5","types":["a.*","b.*","c.*"]}',
        "bad_request",
        "too many type patterns: 3 > 2",
        "s5",
    )


async def test_subscribe_after_an_error_still_works(hub_1k: RunningHub) -> None:
    client = await welcomed(hub_1k)
    await client.ws.send("not json")
    await client.ws.send('{"op":"subscribe","id":1,"types":["agent.*"]}')
    await wait_for(lambda: bool(client.ops("subscribed")), timeout=5, what="subscribed")
    assert client.ops("subscribed") == [{"op": "subscribed", "id": 1, "types": ["agent.*"]}]
    await hub_1k.hub.publish(PROJECT, "ingest.job.updated", {})
    await hub_1k.hub.publish(PROJECT, "agent.run.created", {})
    await wait_for(lambda: bool(client.seqs), timeout=5, what="agent event")
    assert client.seqs == [2]
    await client.close()


# --- errors that close the connection ----------------------------------------------------

Abuse = Callable[[RunningHub], Awaitable[FrameRecorder]]


async def send_binary(running: RunningHub) -> FrameRecorder:
    client = await welcomed(running)
    await client.ws.send(b"\x00\x01binary")
    return client


async def send_oversize(running: RunningHub) -> FrameRecorder:
    client = await welcomed(running)
    await client.ws.send('{"op":"ping","id":"' + "x" * 2000 + '"}')
    return client


async def send_invalid_utf8(running: RunningHub) -> FrameRecorder:
    client = await welcomed(running)
    await client.ws.send(b'{"op":"ping","id":"\xff\xfe"}', text=True)  # raw bytes, text opcode
    return client


async def exceed_error_budget(running: RunningHub) -> FrameRecorder:
    client = await welcomed(running)
    for i in range(4):  # budget is 3
        await client.ws.send('{"op":"nope","id":%d}' % i)  # noqa: UP031
    return client


async def bad_since(running: RunningHub) -> FrameRecorder:
    return await open_client(running, since="abc")


async def negative_since(running: RunningHub) -> FrameRecorder:
    return await open_client(running, since="-1")


async def bad_types(running: RunningHub) -> FrameRecorder:
    return await open_client(running, types="agent.*,Bad Pattern")


async def too_many_types(running: RunningHub) -> FrameRecorder:
    return await open_client(running, types="a.*,b.*,c.*")


async def bad_project(running: RunningHub) -> FrameRecorder:
    return await open_client(running, project="-not-a-project")


async def long_project(running: RunningHub) -> FrameRecorder:
    return await open_client(running, project="p" * 129)


@pytest.mark.parametrize(
    ("abuse", "close_code", "error_code", "welcomed_first"),
    [
        (send_binary, 1003, "binary_frame", True),
        (send_oversize, 1009, "frame_too_large", True),
        (send_invalid_utf8, 1007, "invalid_utf8", True),
        (exceed_error_budget, 1008, "too_many_errors", True),
        (bad_since, 4400, "bad_request", False),
        (negative_since, 4400, "bad_request", False),
        (bad_types, 4400, "bad_request", False),
        (too_many_types, 4400, "bad_request", False),
        (bad_project, 4400, "bad_request", False),
        (long_project, 4400, "bad_request", False),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
async def test_abuse_gets_an_error_frame_then_its_close_code_and_others_keep_receiving(
    hub_1k: RunningHub, abuse: Abuse, close_code: int, error_code: str, welcomed_first: bool
) -> None:
    bystander = await welcomed(hub_1k)
    before = await publish(hub_1k, 3)
    offender = await abuse(hub_1k)
    closed = await offender.wait_closed()

    assert closed.rcvd is not None, "the hub must send a close frame, not just drop TCP"
    assert closed.rcvd.code == close_code
    assert offender.ws.close_code == close_code
    assert len(closed.rcvd.reason.encode()) <= 123
    final = offender.frames[-1]
    assert final["op"] == "error"
    assert final["code"] == error_code
    assert final["close"] == close_code
    assert final["message"]
    if welcomed_first:
        assert offender.frames[0]["op"] == "welcome"
    else:
        assert offender.frames == [final], "a refused subscription gets no welcome"

    await wait_for(
        lambda: hub_1k.hub.manager.connection_count == 1, timeout=5, what="offender removed"
    )
    await assert_everyone_gets_everything(hub_1k, [bystander], before)
    await bystander.close()


async def test_error_budget_answers_each_bad_frame_until_it_is_spent(hub_1k: RunningHub) -> None:
    client = await exceed_error_budget(hub_1k)
    closed = await client.wait_closed()
    assert closed.rcvd is not None
    errors = client.ops("error")
    assert [e.get("id") for e in errors[:3]] == [0, 1, 2]
    assert all(e["code"] == "bad_request" and "close" not in e for e in errors[:3])
    assert errors[3]["close"] == 1008
    assert len(errors) == 4


async def test_invalid_since_error_names_the_parameter(hub_1k: RunningHub) -> None:
    client = await bad_since(hub_1k)
    await client.wait_closed()
    [error] = client.ops("error")
    assert "since" in error["message"]
    assert error.get("retryable", False) is False


@pytest.mark.parametrize(
    "abuse",
    [send_binary, exceed_error_budget, bad_since, bad_project],
    ids=lambda v: getattr(v, "__name__", None),
)
async def test_close_error_frame_carries_code_message_close_and_retryable(
    hub_1k: RunningHub, abuse: Abuse
) -> None:
    # docs/protocol.md, "WebSocket subscription": the error frame before a close carries
    # `code`, `message`, `close`, `retryable` (its example shows `"retryable":false` spelled out).
    offender = await abuse(hub_1k)
    await offender.wait_closed()
    final = offender.frames[-1]
    assert final["op"] == "error"
    assert {"code", "message", "close", "retryable"} <= final.keys()
    assert final["retryable"] is False


async def test_inbound_frame_at_the_limit_is_accepted(hub_1k: RunningHub) -> None:
    client = await welcomed(hub_1k)
    frame = '{"op":"ping","id":"'
    frame += "x" * (1024 - len(frame) - 2) + '"}'
    assert len(frame) == 1024
    await client.ws.send(frame)
    await wait_for(lambda: bool(client.ops("pong")), timeout=5, what="pong")
    assert client.closed is None
    await client.close()

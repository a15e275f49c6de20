"""On the direct path an idle subscriber holds no task (issue 16, memory per connection): its
session answers ops, takes live events, gives its slot back on every way a socket ends, and
the server's shutdown still drains it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hub.transports.uvicorn_ws import SCOPE_KEPT, HubWebSocketProtocol

from .support import FrameRecorder, RunningHub, run_hub, wait_for

N = 20


def server_tasks(running_hub: RunningHub) -> set[asyncio.Task[None]]:
    tasks: set[asyncio.Task[None]] = running_hub.server.server_state.tasks
    return tasks


async def request(ws: ClientConnection, op: dict[str, object]) -> dict[str, object]:
    await ws.send(msgspec.json.encode(op).decode())
    async with asyncio.timeout(10):
        while True:
            frame = msgspec.json.decode(await ws.recv())
            if isinstance(frame, dict) and frame.get("id") == op["id"]:
                return frame


async def test_idle_subscribers_hold_no_task_and_still_answer_ops(
    running_hub: RunningHub,
) -> None:
    sockets = [await connect(running_hub.ws_url("p1", types="a.*")) for _ in range(N)]
    try:
        for ws in sockets:
            welcome = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 10))
            assert welcome["op"] == "welcome"
        await wait_for(
            lambda: len(running_hub.hub.manager.connections("p1")) == N, what="registered"
        )
        await wait_for(lambda: not server_tasks(running_hub), what="the ASGI tasks to return")
        # Ops on a detached session: a task for the burst, none afterwards.
        ws = sockets[0]
        assert await request(ws, {"op": "ping", "id": 1}) == {"op": "pong", "id": 1}
        reply = await request(ws, {"op": "subscribe", "id": 2, "types": ["b.*"]})
        assert reply["op"] == "subscribed" and reply["types"] == ["a.*", "b.*"], reply
        for i in range(3, 23):  # a burst of ops sent at once: every one answered, in order
            await ws.send(msgspec.json.encode({"op": "ping", "id": i}).decode())
        pongs = []
        async with asyncio.timeout(10):
            while len(pongs) < 20:
                frame = msgspec.json.decode(await ws.recv())
                if frame.get("op") == "pong":
                    pongs.append(frame["id"])
        assert pongs == list(range(3, 23))
        await wait_for(lambda: not server_tasks(running_hub), what="the op task to end")
        # Live events still reach every socket, the new pattern included on the first.
        await running_hub.hub.publish("p1", "b.x", {"i": 1})
        await running_hub.hub.publish("p1", "a.x", {"i": 2})
        frame = msgspec.json.decode(await asyncio.wait_for(sockets[0].recv(), 10))
        events = frame if isinstance(frame, list) else [frame]
        if len(events) < 2:
            more = msgspec.json.decode(await asyncio.wait_for(sockets[0].recv(), 10))
            events += more if isinstance(more, list) else [more]
        assert [e["seq"] for e in events] == [1, 2]
        for ws in sockets[1:]:
            frame = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 10))
            assert [e["seq"] for e in (frame if isinstance(frame, list) else [frame])] == [2]
    finally:
        for ws in sockets:
            await ws.close()
    await wait_for(lambda: not running_hub.hub.manager.connections("p1"), what="released")


@pytest.mark.hub_settings(max_connections=3)
async def test_every_way_a_detached_socket_ends_gives_its_slot_back(
    running_hub: RunningHub,
) -> None:
    async def live() -> FrameRecorder:
        recorder = await FrameRecorder.open(running_hub.ws_url("p1"))
        await recorder.wait_frames(1)
        assert recorder.welcome is not None
        return recorder

    async def released() -> None:
        await wait_for(lambda: not running_hub.hub.manager.connections("p1"), what="released")
        await wait_for(lambda: not server_tasks(running_hub), what="no task left")

    for _ in range(2):  # all three slots, twice: the second round is refused if any leaked
        # The client closes; it vanishes (no close frame); the session closes it (binary).
        a, b, c = await live(), await live(), await live()
        await a.close()
        b.ws.transport.abort()
        await c.ws.send(b"\x00")
        closed = await c.wait_closed()
        assert closed.rcvd is not None and closed.rcvd.code == 1003, closed
        await b.task
        await c.close()
        await released()


async def test_shutdown_drains_detached_sessions_with_1001() -> None:
    async with run_hub() as running:
        recorders = [await FrameRecorder.open(running.ws_url("p1")) for _ in range(3)]
        for recorder in recorders:
            await recorder.wait_frames(1)
        await wait_for(lambda: not server_tasks(running), what="detached")
    for recorder in recorders:
        closed = await recorder.wait_closed()
        assert closed.rcvd is not None and closed.rcvd.code == 1001, closed
        await recorder.close()


async def test_an_idle_socket_keeps_neither_the_upgrade_request_nor_the_scope(
    running_hub: RunningHub,
) -> None:
    """What the memory figures of docs/benchmarks.md section 8 rely on: if a uvicorn or
    websockets upgrade stops these from being shed, this fails rather than the RSS creeping."""
    recorder = await FrameRecorder.open(running_hub.ws_url("p1"))
    try:
        await recorder.wait_frames(1)
        await wait_for(lambda: not server_tasks(running_hub), what="detached")
        (proto,) = running_hub.server.server_state.connections
        assert isinstance(proto, HubWebSocketProtocol)
        assert proto.detached
        assert "request" not in vars(proto) and "response" not in vars(proto)
        assert set(proto.scope) <= SCOPE_KEPT
        parser = proto.conn.parser
        assert parser.gi_code.co_qualname == "Protocol.parse"  # no request in its frame
        assert "request" not in (parser.gi_frame.f_locals if parser.gi_frame else {})
    finally:
        await recorder.close()

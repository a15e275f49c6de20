"""The ConnectionManager never lets a subscriber pass silently over a hole or an epoch change,
whatever the backend hands it (a Redis reader can fall behind retention or see a reset)."""

from __future__ import annotations

import msgspec
from websockets.asyncio.client import connect

from hub.backends.base import StoredEvent
from hub.protocol import EventFrame, WelcomeFrame, decode_server_frames

from .support import FrameRecorder, RunningHub, wait_for


def stored(project: str, seq: int) -> StoredEvent:
    frame = EventFrame(project, seq, "a.b", 1, msgspec.Raw(b"{}"))
    return StoredEvent(seq, "a.b", None, 1, msgspec.json.encode(frame))


async def test_a_hole_in_dispatched_seqs_closes_subscribers_with_4008_resync(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    await hub.publish("p1", "a.b", {})
    async with connect(running_hub.ws_url("p1")) as ws:
        welcome = decode_server_frames(await ws.recv())[0]
        assert isinstance(welcome, WelcomeFrame)
        await hub.publish("p1", "a.b", {})  # seq 2 arrives normally
        assert [f.seq for f in decode_server_frames(await ws.recv())] == [2]  # type: ignore[union-attr]
        rest = FrameRecorder(ws)
        hub.manager.dispatch("p1", welcome.epoch, [stored("p1", 7)])  # 3..6 never arrived
        await rest.wait_closed()
    assert rest.close_code == 4008
    errors = rest.ops("error")
    assert [e["code"] for e in errors] == ["resync"] and errors[0]["retryable"]
    assert 7 not in rest.seqs


async def test_an_epoch_announced_without_events_closes_subscribers_with_1001(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    async with connect(running_hub.ws_url("p1")) as ws:
        await ws.recv()
        await wait_for(lambda: hub.manager.project_connection_count("p1") == 1)
        rest = FrameRecorder(ws)
        hub.manager.dispatch("p1", "a-new-life", [])
        await rest.wait_closed()
    assert rest.close_code == 1001
    assert [e["code"] for e in rest.ops("error")] == ["epoch_changed"]

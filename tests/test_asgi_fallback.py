"""The same app on uvicorn's stock WebSocket protocol (no hub.direct_send extension): the
portable ASGI path still fans out every event in order, resumes, and closes slow consumers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub.config import Settings
from hub.fanout.pull_sink import PullSink

from .support import FrameRecorder, RunningHub, run_hub, wait_for

STOCK_WS = "websockets-sansio"


async def recorder(running: RunningHub, project: str = "p1", **query: Any) -> FrameRecorder:
    rec = FrameRecorder(await connect(running.ws_url(project, **query), max_size=None))
    await wait_for(lambda: bool(rec.ops("welcome")), timeout=5, what="welcome")
    return rec


@pytest.fixture
async def stock_hub() -> AsyncIterator[RunningHub]:
    async with run_hub(Settings(heartbeat_s=5.0, retention_events=50), ws=STOCK_WS) as running:
        yield running


async def test_stock_protocol_has_no_direct_send_so_the_asgi_sink_is_used(
    stock_hub: RunningHub,
) -> None:
    rec = await recorder(stock_hub)
    [connection] = stock_hub.hub.manager.connections("p1")
    assert isinstance(connection.sink, PullSink)
    await rec.close()


async def test_fallback_fans_out_every_event_in_order_to_every_client(
    stock_hub: RunningHub,
) -> None:
    hub = stock_hub.hub
    clients = [await recorder(stock_hub) for _ in range(20)]
    others = [await recorder(stock_hub, "p2") for _ in range(2)]
    for i in range(400):
        await hub.publish("p1", "ingest.job.updated", {"i": i}, key=f"k{i % 5}")
        if i % 25 == 0:
            await asyncio.sleep(0)
    await wait_for(lambda: all(len(c.seqs) >= 400 for c in clients), timeout=20, what="events")
    for client in clients:
        assert client.seqs == list(range(1, 401))
        assert [f["data"]["i"] for f in client.ops("event")] == list(range(400))
    await hub.publish("p2", "ingest.job.updated", {})
    await wait_for(lambda: all(o.seqs == [1] for o in others), timeout=5, what="p2 event")
    for c in clients + others:
        await c.close()


async def test_fallback_type_filters_and_subscribe_ops(stock_hub: RunningHub) -> None:
    hub = stock_hub.hub
    rec = await recorder(stock_hub, types="agent.*")
    await rec.ws.send('{"op":"subscribe","id":1,"types":["*.failed"]}')
    await wait_for(lambda: bool(rec.ops("subscribed")), timeout=5, what="subscribed")
    assert rec.ops("subscribed") == [
        {"op": "subscribed", "id": 1, "types": ["agent.*", "*.failed"]}
    ]
    for t in ("agent.run.created", "ingest.job.updated", "ingest.job.failed"):
        await hub.publish("p1", t, {})
    await wait_for(lambda: len(rec.seqs) == 2, timeout=5, what="matching events")
    assert rec.seqs == [1, 3]
    await rec.ws.send('{"op":"ping","id":2}')
    await wait_for(lambda: bool(rec.ops("pong")), timeout=5, what="pong")
    await rec.close()


async def test_fallback_resumes_with_since_then_goes_live(stock_hub: RunningHub) -> None:
    hub = stock_hub.hub
    for i in range(10):
        await hub.publish("p1", "ingest.job.updated", {"i": i})
    epoch = (await hub.backend.position("p1")).epoch
    rec = await recorder(stock_hub, since=4, epoch=epoch)
    await wait_for(lambda: bool(rec.ops("replayed")), timeout=5, what="replayed")
    assert rec.ops("replayed") == [{"op": "replayed", "count": 6, "head": 10}]
    for i in range(10, 15):
        await hub.publish("p1", "ingest.job.updated", {"i": i})
    await wait_for(lambda: len(rec.seqs) >= 11, timeout=5, what="live events")
    assert rec.seqs == list(range(5, 16))
    ops = [f["op"] for f in rec.frames]
    assert ops[0] == "welcome"
    assert ops.index("replayed") == 7  # welcome, six replayed events, replayed, then live
    await rec.close()


async def test_fallback_declares_a_gap_and_sends_the_snapshot(stock_hub: RunningHub) -> None:
    hub = stock_hub.hub
    for i in range(60):  # retention is 50 events
        await hub.publish("p1", "ingest.job.updated", {"i": i}, key=f"k{i % 3}")
    rec = await recorder(stock_hub, since=2)
    await wait_for(lambda: bool(rec.ops("snapshot")), timeout=5, what="snapshot")
    [gap] = rec.ops("gap")
    assert gap == {"op": "gap", "reason": "evicted", "since": 2, "oldest": 11, "head": 60}
    [snapshot] = rec.ops("snapshot")
    assert snapshot["head"] == 60
    assert [(e["key"], e["seq"]) for e in snapshot["events"]] == [
        ("k0", 58),
        ("k1", 59),
        ("k2", 60),
    ]
    await hub.publish("p1", "ingest.job.updated", {})
    await wait_for(lambda: rec.seqs == [61], timeout=5, what="live event")
    await rec.close()


# --- slow consumer -----------------------------------------------------------------------


async def open_stalled_client(running: RunningHub, project: str) -> ClientConnection:
    """A client with a tiny receive buffer that reads nothing until told to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (running.host, running.port))
    return await connect(running.ws_url(project), sock=sock, max_size=None, max_queue=1)


async def test_fallback_closes_a_slow_consumer_with_4008_and_others_get_everything() -> None:
    settings = Settings(heartbeat_s=5.0, queue_events=200, queue_bytes=128 * 1024)
    async with run_hub(settings, ws=STOCK_WS) as running:
        hub = running.hub
        normal = await recorder(running)
        stalled = await open_stalled_client(running, "p1")
        await wait_for(lambda: hub.manager.connection_count == 2, timeout=5, what="stalled in")
        [_, slow] = hub.manager.connections("p1")
        assert isinstance(slow.sink, PullSink)

        payload = {"pad": "x" * 4000}
        published = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not slow.closed:  # publish until the hub gives up on the stalled client
            assert loop.time() < deadline, "the stalled client was never closed"
            assert published < 20_000, "the stalled client was never closed"
            for _ in range(8):  # 32 KiB a round: well under the 128 KiB queue bound
                published = await hub.publish("p1", "ingest.job.updated", payload)
            assert slow.queued_bytes <= settings.queue_bytes
            assert len(slow.queue) <= settings.queue_events
            # The normal client keeps up: the hub's loop runs its writer between rounds.
            await wait_for(lambda n=published: len(normal.seqs) == n, timeout=10, what="keeping up")

        await wait_for(lambda: len(normal.seqs) == published, timeout=15, what="normal client")
        assert normal.seqs == list(range(1, published + 1))
        assert normal.closed is None

        # Now the stalled client reads: what it got is in order, then why, then the close.
        frames: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(15):
                while True:
                    decoded = msgspec.json.decode(await stalled.recv())
                    frames.extend(decoded if isinstance(decoded, list) else [decoded])
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4008
        seqs = [f["seq"] for f in frames if f["op"] == "event"]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) < published
        assert frames[-1]["op"] == "error"
        assert (frames[-1]["code"], frames[-1]["close"]) == ("slow_consumer", 4008)
        assert frames[-1]["retryable"] is True
        await wait_for(lambda: hub.manager.connection_count == 1, timeout=5, what="slow gone")
        await normal.close()

"""Issue 11.3 and 11.8: a gap's snapshot goes out in pages through the connection's bounded
queue (WebSocket and SSE), and a subscriber that never reads is cut and released in bounded
time and memory, against a real hub on loopback with raw sockets that never read."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.client import HubClient
from hub.config import Settings
from hub.fanout.outbound import snapshot_pages as typed_snapshot_pages
from hub.limits import Limits
from hub.protocol import EventFrame, GapFrame, SnapshotFrame, WelcomeFrame, decode_server_frames

from .support import RunningHub, run_hub, wait_for
from .test_slow_consumer import open_stalled_client
from .test_sse import sse

P = "p1"
KiB = 1024
MiB = 1024 * KiB


def limits_of(running: RunningHub) -> Limits:
    limits: Limits = running.app.state.limits
    return limits


async def publish_keys(running: RunningHub, keys: int, size: int, project: str = P) -> None:
    """`keys` events of distinct keys, each with about `size` bytes of data."""
    blob = "x" * size
    for start in range(0, keys, 200):
        for i in range(start, min(keys, start + 200)):
            await running.hub.publish(project, "test.item.set", {"b": blob}, key=f"k{i}")
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def stalled_sse(running: RunningHub, count: int, query: str = "") -> AsyncIterator[None]:
    """`count` raw SSE requests over sockets with a 4 KiB receive buffer that never read."""
    loop = asyncio.get_running_loop()
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            sockets.append(sock)
            await loop.sock_connect(sock, ("127.0.0.1", running.port))
            request = f"GET /v1/projects/{P}/sse{query} HTTP/1.1\r\nHost: localhost\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
        yield
    finally:
        for sock in sockets:
            sock.close()


# --- pages (pure) ------------------------------------------------------------------------


def snapshot_pages(
    head: int, frames: list[bytes], max_frame_bytes: int
) -> list[tuple[bytes, bool]]:
    """The pages as the wire has them: (frame, is_last)."""
    pages = typed_snapshot_pages(head, frames, max_frame_bytes)
    return [(msgspec.json.encode(page), not page.more) for page in pages]


def event_frame(seq: int, pad: str = "") -> bytes:
    return msgspec.json.encode(EventFrame("p", seq, "a.b", 0, {"pad": pad}, f"k{seq}"))


def test_pages_stay_under_the_frame_bound_and_only_the_last_is_unmarked() -> None:
    frames = [event_frame(i, "x" * (i % 700)) for i in range(500)]
    pages = list(snapshot_pages(42, frames, 16 * KiB))
    assert len(pages) > 5
    assert all(len(page) <= 16 * KiB for page, _ in pages)
    assert [last for _, last in pages] == [False] * (len(pages) - 1) + [True]
    decoded = [f for page, _ in pages for f in decode_server_frames(page)]
    assert all(isinstance(f, SnapshotFrame) and f.head == 42 for f in decoded)
    assert [f.more for f in decoded] == [True] * (len(pages) - 1) + [False]
    seqs = [e.seq for f in decoded if isinstance(f, SnapshotFrame) for e in f.events]
    assert seqs == list(range(500))


def test_an_empty_snapshot_is_one_unmarked_page_and_a_huge_event_gets_its_own() -> None:
    assert list(snapshot_pages(7, [], 1024)) == [(b'{"op":"snapshot","head":7,"events":[]}', True)]
    pages = list(
        snapshot_pages(7, [event_frame(1), event_frame(2, "x" * 5000), event_frame(3)], 1024)
    )
    assert [len(msgspec.json.decode(p)["events"]) for p, _ in pages] == [1, 1, 1]


def test_hub_client_drops_the_pages_of_a_cut_connection() -> None:
    client = HubClient("http://hub", P)
    welcome = WelcomeFrame(P, "e", 9, 1, 5.0)
    events = [msgspec.json.decode(event_frame(seq), type=EventFrame) for seq in range(1, 5)]
    client._on_welcome(welcome)
    assert client._accept(SnapshotFrame(9, events[:1], more=True)) is None
    client._on_welcome(welcome)  # reconnected: that page is void
    assert client._accept(SnapshotFrame(9, events[1:3], more=True)) is None
    whole = client._accept(SnapshotFrame(9, events[3:]))
    assert isinstance(whole, SnapshotFrame) and not whole.more
    assert [e.seq for e in whole.events] == [2, 3, 4] and client.last_seq == 9
    unpaged = client._accept(SnapshotFrame(12, events[:1]))
    assert isinstance(unpaged, SnapshotFrame) and [e.seq for e in unpaged.events] == [1]


@settings(max_examples=300, deadline=None, database=None)
@given(
    sizes=st.lists(st.integers(0, 3000), max_size=60),
    max_frame_bytes=st.integers(1, 8000),
    head=st.integers(0, 2**63 - 1),
)
def test_pages_hold_every_frame_once_in_order_within_the_bound(
    sizes: list[int], max_frame_bytes: int, head: int
) -> None:
    frames = [event_frame(i, "x" * size) for i, size in enumerate(sizes)]
    pages = list(snapshot_pages(head, frames, max_frame_bytes))
    decoded = [msgspec.json.decode(page) for page, _ in pages]
    assert [e["seq"] for d in decoded for e in d["events"]] == list(range(len(sizes)))
    assert [last for _, last in pages] == [False] * (len(pages) - 1) + [True]
    assert all(
        d.get("more", False) is (not last) for d, (_, last) in zip(decoded, pages, strict=True)
    )
    assert all(d["head"] == head for d in decoded)
    for (page, _), d in zip(pages, decoded, strict=True):
        assert len(page) <= max_frame_bytes or len(d["events"]) <= 1


# --- WebSocket ---------------------------------------------------------------------------


@pytest.mark.hub_settings(max_frame_bytes=16 * KiB)
async def test_hub_client_gets_a_paged_snapshot_whole_once(running_hub: RunningHub) -> None:
    await publish_keys(running_hub, 300, 500)
    client = HubClient(running_hub.url, P, since=10**9, max_attempts=0)
    frames: list[object] = []
    async with client:
        async for frame in client:
            frames.append(frame)
            if isinstance(frame, SnapshotFrame):
                break
    gap, snapshot = frames
    assert isinstance(gap, GapFrame) and gap.reason == "ahead"
    assert isinstance(snapshot, SnapshotFrame) and not snapshot.more
    assert [e.key for e in snapshot.events] == [f"k{i}" for i in range(300)]
    assert snapshot.head == 300 and client.last_seq == 300


async def test_never_reading_clients_hold_a_queue_not_a_snapshot_and_are_cut_with_4008() -> None:
    settings = Settings(queue_bytes=256 * KiB, max_frame_bytes=32 * KiB, stall_timeout_s=0.5)
    clients, keys, size = 8, 1000, 10 * KiB  # a 10 MB snapshot
    async with run_hub(settings) as running:
        hub = running.hub
        await publish_keys(running, keys, size)
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            started = asyncio.get_running_loop().time()
            stalled = [
                await open_stalled_client(running.ws_url(P, since=10**9)) for _ in range(clients)
            ]
            await wait_for(
                lambda: hub.manager.stats.slow_closes == clients, timeout=10, what="4008 closes"
            )
            elapsed = asyncio.get_running_loop().time() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        grown = peak - base
        snapshot_bytes = keys * size
        print(f"{clients} stalled clients: peak +{grown / MiB:.1f} MiB, cut after {elapsed:.2f}s")
        # Each holds at most its queue bound (plus a page on the socket), never the snapshot.
        assert grown < clients * (settings.queue_bytes + 4 * settings.max_frame_bytes) + 4 * MiB
        assert grown < clients * snapshot_bytes / 4
        assert elapsed < 5
        await wait_for(lambda: hub.manager.connection_count == 0, what="connections released")
        assert limits_of(running).connections.count == 0
        # A stalled client that reads again finds pages, the reason, then the 4008 close.
        protocol, reader, _ = stalled[0]
        frames, close = [], None
        while close is None:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "socket closed without a close frame"
            protocol.receive_data(data)
            for event in protocol.events_received():
                if getattr(event, "opcode", None) is not None and event.opcode.name == "TEXT":
                    frames.extend(decode_server_frames(event.data))
            close = protocol.close_rcvd
        assert close.code == 4008
        pages = [f for f in frames if isinstance(f, SnapshotFrame)]
        assert pages and all(p.more for p in pages)
        for _, _, w in stalled:
            w.close()


@pytest.mark.hub_settings(queue_bytes=64 * KiB, max_frame_bytes=16 * KiB)
async def test_a_reading_client_gets_every_page_of_a_snapshot_larger_than_its_queue(
    running_hub: RunningHub,
) -> None:
    await publish_keys(running_hub, 200, 2 * KiB)  # 400 KB: six times the queue bound
    client = HubClient(running_hub.url, P, since=10**9, max_attempts=0)
    async with client:
        async for frame in client:
            if isinstance(frame, SnapshotFrame):
                assert len(frame.events) == 200
                break
    assert running_hub.hub.manager.stats.slow_closes == 0


# --- SSE ---------------------------------------------------------------------------------


@pytest.mark.hub_settings(max_frame_bytes=16 * KiB)
async def test_sse_snapshot_pages_carry_an_id_only_on_the_last(running_hub: RunningHub) -> None:
    await publish_keys(running_hub, 100, 1 * KiB)
    async with sse(running_hub, since=10**9) as stream:
        await stream.until(
            "the last page", lambda: any(not m.data.get("more") for m in stream.of("snapshot"))
        )
        pages = stream.of("snapshot")
    assert len(pages) > 3
    assert [m.id is None for m in pages] == [True] * (len(pages) - 1) + [False]
    epoch = stream.of("welcome")[0].data["epoch"]
    assert pages[-1].id == f"{epoch}:100"
    keys = [e["key"] for m in pages for e in m.data["events"]]
    assert keys == [f"k{i}" for i in range(100)]


@pytest.mark.hub_settings(queue_bytes=128 * KiB, max_frame_bytes=32 * KiB, stall_timeout_s=0.5)
async def test_never_reading_sse_clients_of_a_big_snapshot_are_cut_and_released(
    running_hub: RunningHub,
) -> None:
    hub = running_hub.hub
    await publish_keys(running_hub, 500, 10 * KiB)
    async with stalled_sse(running_hub, 6, "?since=1000000000"):
        await wait_for(lambda: hub.manager.stats.slow_closes == 6, timeout=10, what="slow closes")
        await wait_for(lambda: hub.manager.connection_count == 0, timeout=5)
        await wait_for(lambda: limits_of(running_hub).connections.count == 0, timeout=5)
        assert hub.stats.sse_connections == 0


@pytest.mark.parametrize("readers", [20])
@pytest.mark.hub_settings(queue_bytes=128 * KiB, queue_events=1000)
async def test_never_reading_sse_consumers_are_released_within_seconds(
    running_hub: RunningHub, readers: int
) -> None:
    """11.8: the close must not wait for a writer blocked on a full socket."""
    hub = running_hub.hub
    limits = limits_of(running_hub)
    async with stalled_sse(running_hub, readers):
        await wait_for(lambda: hub.manager.connection_count == readers, what="all connected")
        payload = {"b": "x" * 1000}
        published = 0
        while hub.manager.stats.slow_closes < readers and published < 50_000:
            await hub.publish(P, "test.item.added", payload)
            published += 1
            if published % 100 == 0:
                await asyncio.sleep(0)
        assert hub.manager.stats.slow_closes == readers, f"after {published} events"
        await wait_for(
            lambda: hub.manager.connection_count == 0, timeout=3, what="connections released"
        )
        await wait_for(lambda: limits.connections.count == 0, timeout=3, what="slots")
        assert hub.stats.sse_connections == 0
        # The hub still serves: a new subscriber gets live events.
        async with sse(running_hub) as stream:
            seq = await hub.publish(P, "test.item.added", {})
            await stream.until("live event", lambda: seq in stream.seqs)


# --- a stalled replay on a quiet project -------------------------------------------------


@pytest.mark.hub_settings(stall_timeout_s=0.5)
async def test_never_reading_clients_of_a_long_replay_are_cut_and_released(
    running_hub: RunningHub,
) -> None:
    """Nothing is published, so no queue overflows: the stall timeout cuts them."""
    hub = running_hub.hub
    await publish_keys(running_hub, 1000, 5 * KiB)  # 5 MB retained, nothing published later
    stalled = [await open_stalled_client(running_hub.ws_url(P, since=0)) for _ in range(3)]
    async with stalled_sse(running_hub, 3, "?since=0"):
        await wait_for(lambda: hub.manager.stats.slow_closes == 6, timeout=10, what="6 slow closes")
        await wait_for(lambda: hub.manager.connection_count == 0, timeout=5)
        await wait_for(lambda: limits_of(running_hub).connections.count == 0, timeout=5)
    for _, _, writer in stalled:
        writer.close()


@pytest.mark.hub_settings(stall_timeout_s=60, queue_bytes=64 * KiB)
async def test_a_stalled_replay_cut_by_overflow_is_released_at_once(
    running_hub: RunningHub,
) -> None:
    """The session waits on a socket that will never drain: the cut must wake it."""
    hub = running_hub.hub
    await publish_keys(running_hub, 1000, 5 * KiB)
    stalled = [await open_stalled_client(running_hub.ws_url(P, since=0)) for _ in range(2)]
    async with stalled_sse(running_hub, 2, "?since=0"):
        await wait_for(lambda: hub.manager.connection_count == 4, what="all connected")
        published = 0
        while hub.manager.stats.slow_closes < 4 and published < 2000:
            await hub.publish(P, "test.item.added", {"b": "x" * 1000})
            published += 1
            if published % 20 == 0:
                await asyncio.sleep(0)
        assert hub.manager.stats.slow_closes == 4
        await wait_for(lambda: hub.manager.connection_count == 0, timeout=3)
        await wait_for(lambda: limits_of(running_hub).connections.count == 0, timeout=3)
    for _, _, writer in stalled:
        writer.close()

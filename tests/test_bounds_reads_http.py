"""Issue 11.4: history pages and snapshots are bounded in bytes per request, large ones are
streamed, and heavy reads in flight are bounded process-wide (503 + Retry-After beyond),
so many concurrent heavy reads neither multiply memory nor stall a bystander's pings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from websockets.asyncio.client import connect

from hub.transports.read_limits import json_array_chunks

from .support import RunningHub, wait_for

pytestmark = pytest.mark.usefixtures("hub_gc")  # collector as `hub serve` sets it

P = "p1"
KiB = 1024
MiB = 1024 * KiB


def app_of(running: RunningHub) -> Starlette:
    return running.app


async def publish_blobs(running: RunningHub, count: int, size: int, keyed: bool = False) -> None:
    blob = "x" * size
    for i in range(count):
        key = f"k{i}" if keyed else None
        await running.hub.publish(P, "test.item.set", {"i": i, "b": blob}, key=key)
        if i % 200 == 0:
            await asyncio.sleep(0)


async def get_json(running: RunningHub, path: str, **params: Any) -> dict[str, Any]:
    async with running.http() as http:
        response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def raw_get(port: int, path: str) -> tuple[int, dict[str, str], int]:
    """GET over a plain socket, reading and dropping the body: (status, headers, body bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        size = 0
        while chunk := await reader.read(256 * KiB):
            size += len(chunk)
        return status, headers, size
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def stalled_gets(port: int, path: str, count: int) -> AsyncIterator[None]:
    """`count` GETs over sockets with a 4 KiB receive buffer that never read the answer."""
    loop = asyncio.get_running_loop()
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            sockets.append(sock)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
        yield
    finally:
        for sock in sockets:
            sock.close()


# --- chunks (pure) -----------------------------------------------------------------------


def test_chunks_join_to_the_same_json_and_stay_near_the_chunk_size() -> None:
    frames = [b'{"i":%d,"p":"%s"}' % (i, b"y" * (i % 300)) for i in range(400)]
    chunks = list(json_array_chunks(b'{"events":[', frames, b"]}", 4096))
    assert b"".join(chunks) == b'{"events":[' + b",".join(frames) + b"]}"
    assert len(chunks) > 10 and all(len(c) < 4096 + 400 for c in chunks)
    assert list(json_array_chunks(b"[", [], b"]", 10)) == [b"[]"]


@settings(max_examples=300, deadline=None, database=None)
@given(
    frames=st.lists(st.binary(max_size=300), max_size=50),
    head=st.binary(max_size=40),
    tail=st.binary(max_size=10),
    chunk_bytes=st.integers(1, 2000),
)
def test_chunks_always_join_to_the_whole_body(
    frames: list[bytes], head: bytes, tail: bytes, chunk_bytes: int
) -> None:
    chunks = list(json_array_chunks(head, frames, tail, chunk_bytes))
    assert b"".join(chunks) == head + b",".join(frames) + tail
    assert all(chunks[:-1])  # no empty writes but possibly the last


# --- per-request bounds ------------------------------------------------------------------


@pytest.mark.hub_settings(history_max_bytes=64 * KiB)
async def test_history_page_stops_at_its_byte_budget_and_pages_cover_everything(
    running_hub: RunningHub,
) -> None:
    await publish_blobs(running_hub, 200, 2 * KiB)
    seen: list[int] = []
    since = 0
    while True:
        page = await get_json(running_hub, f"/v1/projects/{P}/events", since=since, limit=1000)
        assert len(json.dumps(page["events"])) <= 64 * KiB + 4 * KiB
        seen += [e["seq"] for e in page["events"]]
        if not page["more"]:
            break
        assert page["next"] == page["events"][-1]["seq"]
        since = page["next"]
    assert seen == list(range(1, 201))
    assert since < 200 and page["next"] == 200


@pytest.mark.hub_settings(history_max_bytes=100)
async def test_history_budget_never_returns_an_empty_page_with_more(
    running_hub: RunningHub,
) -> None:
    await publish_blobs(running_hub, 3, 1 * KiB)
    page = await get_json(running_hub, f"/v1/projects/{P}/events", since=0)
    assert [e["seq"] for e in page["events"]] == [1]
    assert page["more"] is True and page["next"] == 1


@pytest.mark.hub_settings()
async def test_history_with_a_filter_scans_only_limit_events(running_hub: RunningHub) -> None:
    await publish_blobs(running_hub, 600, 10)
    await running_hub.hub.publish(P, "test.other.set", {})
    page = await get_json(
        running_hub, f"/v1/projects/{P}/events", since=0, limit=600, types="test.other.*"
    )
    assert page["events"] == [] and page["next"] == 600 and page["more"] is True
    page = await get_json(running_hub, f"/v1/projects/{P}/events", since=600, types="test.other.*")
    assert [e["seq"] for e in page["events"]] == [601] and page["more"] is False


@pytest.mark.hub_settings(snapshot_page_bytes=32 * KiB)
async def test_snapshot_pages_by_after_cover_every_key_once_with_the_latest_value(
    running_hub: RunningHub,
) -> None:
    await publish_blobs(running_hub, 100, 2 * KiB, keyed=True)
    url = f"/v1/projects/{P}/snapshot"
    first = await get_json(running_hub, url)
    assert first["more"] is True and 5 < len(first["events"]) < 20
    # A key already sent changes between pages: it comes again, later, with its new value.
    await running_hub.hub.publish(P, "test.item.set", {"i": -1}, key="k0")
    latest: dict[str, Any] = {e["key"]: e for e in first["events"]}
    page = first
    while page["more"]:
        page = await get_json(running_hub, url, after=page["next"])
        assert page["epoch"] == first["epoch"]
        latest.update({e["key"]: e for e in page["events"]})
    assert sorted(latest) == sorted(f"k{i}" for i in range(100))
    assert latest["k0"]["data"] == {"i": -1} and page["head"] == 101


@pytest.mark.hub_settings()
async def test_small_snapshot_is_one_page_and_bad_after_is_a_400(running_hub: RunningHub) -> None:
    await publish_blobs(running_hub, 3, 10, keyed=True)
    page = await get_json(running_hub, f"/v1/projects/{P}/snapshot")
    assert page["more"] is False and page["next"] == page["head"] == 3
    assert len(page["events"]) == 3
    async with running_hub.http() as http:
        response = await http.get(f"/v1/projects/{P}/snapshot", params={"after": "-1"})
    assert response.status_code == 400 and "after" in response.json()["error"]["message"]


# --- heavy reads in flight ---------------------------------------------------------------


@pytest.mark.hub_settings(max_heavy_reads=2, heavy_read_bytes=16 * KiB, heavy_read_timeout_s=30)
async def test_heavy_reads_beyond_the_limit_get_503_with_retry_after_and_light_ones_pass(
    running_hub: RunningHub,
) -> None:
    await publish_blobs(running_hub, 600, 8 * KiB, keyed=True)  # 4.8 MB: beyond socket buffers
    heavy = f"/v1/projects/{P}/events?since=0"
    light = f"/v1/projects/{P}/events?since=0&limit=1"
    async with stalled_gets(running_hub.port, heavy, 2):
        state = app_of(running_hub).state
        await wait_for(lambda: getattr(state, "read_limiter", None) is not None)
        limiter = state.read_limiter
        await wait_for(lambda: limiter.in_flight == 2, what="2 heavy reads in flight")
        status, headers, _ = await raw_get(running_hub.port, heavy)
        assert status == 503 and headers["retry-after"] == "1"
        async with running_hub.http() as http:
            refused = await http.get(heavy)
            assert refused.json()["error"]["code"] == "over_capacity"
            assert refused.json()["error"]["retryable"] is True
            assert (await http.get(light)).status_code == 200
            assert (await http.get(f"/v1/projects/{P}/snapshot")).status_code == 503
    # The stalled clients went away: their slots come back, heavy reads pass again.
    await wait_for(lambda: limiter.in_flight == 0, what="slots released")
    status, headers, size = await raw_get(running_hub.port, heavy)
    assert status == 200 and size == int(headers["content-length"]) > 3 * MiB


@pytest.mark.hub_settings(max_heavy_reads=1, heavy_read_bytes=16 * KiB, heavy_read_timeout_s=0.5)
async def test_a_heavy_read_not_taken_in_time_is_cut_and_its_slot_released(
    running_hub: RunningHub,
) -> None:
    await publish_blobs(running_hub, 600, 8 * KiB)
    heavy = f"/v1/projects/{P}/events?since=0"
    async with stalled_gets(running_hub.port, heavy, 1):
        await wait_for(lambda: raw_status_is(running_hub, heavy, 503), timeout=5)
        # Without waiting for the stalled client to leave: its slot comes back in time.
        await wait_for(lambda: raw_status_is(running_hub, heavy, 200), timeout=5)


async def raw_status_is(running: RunningHub, path: str, status: int) -> bool:
    return (await raw_get(running.port, path))[0] == status


async def storm(port: int, paths: list[str], clients: int, seconds: float) -> dict[int, int]:
    """`clients` loops of GETs (raw sockets, bodies dropped) for `seconds`: count by status."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        n = i
        while time.monotonic() < deadline:
            status, _, _ = await raw_get(port, paths[n % len(paths)])
            statuses[status] = statuses.get(status, 0) + 1
            n += 1
            if status == 503:
                await asyncio.sleep(0.02)

    await asyncio.gather(*(one(i) for i in range(clients)))
    return statuses


async def read_storm(
    running: RunningHub, paths: list[str], clients: int, seconds: float
) -> dict[int, int]:
    """`storm` from another process, so that this loop runs the hub (and the bystander) only."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.test_bounds_reads_http",
        json.dumps([running.port, paths, clients, seconds]),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    out, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    assert process.returncode == 0
    return {int(k): v for k, v in json.loads(out).items()}


@pytest.mark.hub_settings()
async def test_many_concurrent_heavy_reads_stay_in_bounded_memory(running_hub: RunningHub) -> None:
    await publish_blobs(running_hub, 1000, 10 * KiB, keyed=True)  # 10 MB history and snapshot
    paths = [f"/v1/projects/{P}/events?since=0", f"/v1/projects/{P}/snapshot"]
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        statuses = await read_storm(running_hub, paths, 40, 2.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = peak - base
    print(f"40 clients: {statuses}, peak +{grown / MiB:.1f} MiB")
    assert statuses.get(200, 0) >= 10
    assert set(statuses) <= {200, 503}
    # Unbounded, 40 pages of 4 MiB would be held at once (twice: joined, then buffered).
    assert grown < 32 * MiB


@pytest.mark.hub_settings()
async def test_bystander_pings_stay_fast_while_many_heavy_reads_run(
    running_hub: RunningHub,
) -> None:
    """Hub, readers and bystander share this thread, so the CPU time it spent between a ping
    and its pong is the loop's stall; on a busy machine wall time adds other processes."""
    await publish_blobs(running_hub, 1000, 10 * KiB, keyed=True)
    paths = [f"/v1/projects/{P}/events?since=0", f"/v1/projects/{P}/snapshot"]
    async with connect(running_hub.ws_url("bystander")) as ws:
        await ws.recv()  # welcome

        async def pings(stop: asyncio.Event) -> list[tuple[float, float]]:
            latencies = []  # (wall, cpu) per ping
            i = 0
            while not stop.is_set():
                i += 1
                wall, cpu = time.perf_counter(), time.thread_time()
                await ws.send(msgspec.json.encode({"op": "ping", "id": i}).decode())
                while msgspec.json.decode(await ws.recv()).get("id") != i:
                    pass
                latencies.append((time.perf_counter() - wall, time.thread_time() - cpu))
                await asyncio.sleep(0.05)
            return latencies

        stop = asyncio.Event()
        busy = asyncio.create_task(pings(stop))
        statuses = await read_storm(running_hub, paths, 200, 3.0)
        stop.set()
        latencies = await busy
    wall = max(w for w, _ in latencies)
    cpu = max(c for _, c in latencies)
    print(
        f"pings under load: max {wall * 1000:.1f} ms wall, {cpu * 1000:.1f} ms of loop CPU, "
        f"over {len(latencies)}; reads {statuses}"
    )
    assert statuses.get(200, 0) >= 10
    assert len(latencies) >= 5
    assert cpu < 0.3


if __name__ == "__main__":  # the load of read_storm, in its own process
    port, paths, clients, seconds = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(storm(port, paths, clients, seconds))))

"""Hostile clients against detached sessions (the direct path, issue 16): whatever a client
does, its session, its slot and its socket end in bounded time. Each test runs on both event
loops the hub serves on (`--loop asyncio` / `uvloop`), since transports differ in how they
close."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import connect

from hub.config import Settings
from hub.event_loop import loop_factory
from hub.transports.uvicorn_ws import HubWebSocketProtocol

from .support import RunningHub, run_hub, wait_for

LOOPS = ("asyncio", "uvloop")


def run_on(loop: str, test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(asyncio.wait_for(test(), 60))


async def raw_subscribe(running: RunningHub, project: str) -> socket.socket:
    """A WebSocket client on a bare socket with a tiny receive buffer that never reads past
    the 101: what a peer that stopped reading looks like to the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (running.host, running.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /v1/projects/{project}/ws HTTP/1.1\r\nHost: {running.host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = struct.pack("!BBH", 0x81, 0x80 | 126, n) if n >= 126 else bytes([0x81, 0x80 | n])
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def the_protocol(running: RunningHub) -> HubWebSocketProtocol:
    (proto,) = running.server.server_state.connections
    assert isinstance(proto, HubWebSocketProtocol)
    return proto


async def all_gone(running: RunningHub) -> None:
    await wait_for(lambda: not running.hub.manager.connections(), what="session released")
    await wait_for(lambda: not running.server.server_state.tasks, what="no task left")
    await wait_for(lambda: not running.server.server_state.connections, what="socket closed")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_that_floods_ops_and_never_reads_loses_its_socket_and_slot(loop: str) -> None:
    """It fills the server's send buffer with replies, so the op task waits to write and
    reading stops; the keepalive ping then goes unanswered. The 1011 close cannot reach a
    peer that does not read: without a bound the socket, the task waiting on it, the
    registration and the slot were held forever."""

    async def test() -> None:
        settings = Settings(
            heartbeat_s=1.0, client_ops_rate=100_000.0, ws_frame_rate=0.0, max_connections=1
        )
        async with run_hub(settings) as running:
            loop = asyncio.get_running_loop()
            sock = await raw_subscribe(running, "p1")
            try:
                await wait_for(lambda: not running.server.server_state.tasks, what="detached")
                proto = the_protocol(running)
                proto.close_timeout = 0.3  # uvicorn's is 10 s
                types = json.dumps([f"t{i:03d}.{'x' * 120}" for i in range(32)])
                sent = 0
                while proto.writable.is_set():  # each reply is ~4 KiB
                    op = f'{{"op":"subscribe","id":{sent},"types":{types}}}'.encode()
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, masked_text(op)), 1)
                    except TimeoutError:
                        break  # the server stopped reading: it is stuck writing a reply
                    sent += 1
                assert not proto.writable.is_set(), "the replies never filled the buffer"
                await wait_for(proto.transport.is_closing, what="the keepalive timeout")
                await all_gone(running)
                assert running.app.state.limits.connections.count == 0  # the slot is back
            finally:
                sock.close()

    run_on(loop, test)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_consumer_that_never_reads_loses_its_socket(loop: str) -> None:
    """4008 releases the session at once, but the socket waited for the peer to take the
    bytes buffered for it: one file descriptor per such client, for ever."""

    async def test() -> None:
        settings = Settings(queue_bytes=256 * 1024)
        async with run_hub(settings) as running:
            sock = await raw_subscribe(running, "p1")
            try:
                await wait_for(lambda: running.hub.manager.connections("p1"), what="registered")
                await wait_for(lambda: not running.server.server_state.tasks, what="detached")
                the_protocol(running).close_timeout = 0.3
                for i in range(2_000):
                    await running.hub.publish("p1", "a.x", {"pad": "x" * 2000, "i": i})
                    await asyncio.sleep(0)
                    if not running.hub.manager.connections("p1"):
                        break
                assert running.hub.manager.stats.slow_closes == 1
                await all_gone(running)
            finally:
                sock.close()

    run_on(loop, test)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_ping_flood_from_a_peer_that_never_reads_stays_bounded(loop: str) -> None:
    """Pings are control frames, outside the op rate limit, and each one is answered with a
    pong written whether the peer reads or not: the server's send buffer grew by what the
    peer could upload (over 100 MB in 5 s on loopback). Now the server stops reading a peer
    it cannot write to, and the keepalive then ends it."""

    async def test() -> None:
        async with run_hub(Settings(heartbeat_s=0.5)) as running:
            loop = asyncio.get_running_loop()
            sock = await raw_subscribe(running, "p1")
            try:
                await wait_for(lambda: not running.server.server_state.tasks, what="detached")
                proto = the_protocol(running)
                proto.close_timeout = 0.3
                ping = bytes([0x89, 0x80 | 125]) + os.urandom(4) + bytes(125)
                burst = ping * 1000
                sent, peak = 0, 0
                while sent < 64 * 2**20 and not proto.transport.is_closing():
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, burst), 0.5)
                    except TimeoutError:
                        break  # the server no longer reads it
                    except OSError:
                        break  # it was already cut
                    sent += len(burst)
                    peak = max(peak, proto.transport.get_write_buffer_size())
                assert peak < 2**20, f"{peak} bytes buffered after {sent} bytes of pings"
                await all_gone(running)
            finally:
                sock.close()

    run_on(loop, test)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("frame", ["ping", "continuation", "pong"])
def test_a_flood_of_tiny_frames_is_closed_with_4029_and_holds_the_loop_briefly(
    loop: str, frame: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pings, pongs and the continuation frames of a message that never ends are 6 bytes
    each, and no op budget sees them: websockets parsed each 256 KiB read (40,000 frames)
    in one go, holding the event loop for most of a second every read, for every subscriber
    of the hub. Now every frame counts against `ws_frame_rate`, and a read is parsed in
    slices, so such a peer is closed with 4029 after the first slice."""
    unit = {
        "ping": bytes([0x89, 0x80]),
        "continuation": bytes([0x00, 0x80]),
        "pong": bytes([0x8A, 0x80]),
    }[frame] + bytes(4)

    caplog.set_level(logging.INFO, logger="hub.ws")

    async def test() -> None:
        async with run_hub(Settings(ws_frame_rate=100.0)) as running:
            loop = asyncio.get_running_loop()
            sock = await raw_subscribe(running, "p1")
            try:
                await wait_for(lambda: not running.server.server_state.tasks, what="detached")
                if frame == "continuation":  # the first frame of a text message, no FIN
                    await loop.sock_sendall(sock, bytes([0x01, 0x81]) + bytes(4) + b"a")
                flood = unit * 50_000  # one write: the server reads it in a few large reads
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(loop.sock_sendall(sock, flood), 10)
                await all_gone(running)
                # The peer may never see the close (it is reset while its frames are unread).
                assert "with 4029: more than 100 frames per second" in caplog.text
            finally:
                sock.close()

    run_on(loop, test)


def test_legitimate_traffic_stays_under_the_frame_rate(rng: random.Random) -> None:
    """What a well-behaved client sends (ops under their own rate, pings, a message in
    fragments) is far under the default `ws_frame_rate`."""

    async def test() -> None:
        async with run_hub(Settings()) as running:
            url = running.ws_url("p1")
            async with connect(url, ping_interval=None) as ws:
                await ws.recv()  # welcome
                for i in range(20):  # the op burst the op budget allows
                    await ws.ping()
                    await ws.send(json.dumps({"op": "ping", "id": i}))
                size = rng.randrange(1_000, 40_000)
                parts = [
                    json.dumps({"op": "ping", "id": "x" * size})[j : j + 1000]
                    for j in range(0, size + 30, 1000)
                ]
                await ws.send(iter(parts))  # one message in many fragments
                replies = []
                async with asyncio.timeout(10):
                    while len(replies) < 21:
                        reply = json.loads(await ws.recv())
                        replies.append(reply)
                assert all(r["op"] in ("pong", "error") for r in replies), replies[-1]
                assert ws.close_code is None

    run_on("asyncio", test)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_congested_client_that_pings_is_read_again_once_it_drains(loop: str) -> None:
    """The ping-flood guard stops reading a congested peer that pings; a slow but honest one
    must be read again once it takes what is buffered, also when an op of its was being
    answered at the time (its reading was then paused for that op too)."""

    async def test() -> None:
        async with run_hub(Settings()) as running:
            loop = asyncio.get_running_loop()
            sock = await raw_subscribe(running, "p1")
            try:
                await wait_for(lambda: not running.server.server_state.tasks, what="detached")
                proto = the_protocol(running)
                for i in range(5_000):
                    if not proto.writable.is_set():
                        break
                    await running.hub.publish("p1", "a.x", {"pad": "x" * 2000, "i": i})
                    await asyncio.sleep(0)
                assert not proto.writable.is_set(), "the events never filled the buffer"
                ping = bytes([0x89, 0x80]) + bytes(4)
                await loop.sock_sendall(sock, masked_text(b'{"op":"ping","id":1}') + ping)
                await wait_for(lambda: proto.reads_held, what="reading held")
                received = b""

                async def read_until(marker: bytes) -> None:
                    nonlocal received
                    async with asyncio.timeout(10):
                        while marker not in received:
                            chunk = await loop.sock_recv(sock, 1 << 20)
                            assert chunk, received[-200:]
                            received += chunk

                await read_until(b'{"op":"pong","id":1}')
                await loop.sock_sendall(sock, masked_text(b'{"op":"ping","id":2}'))
                await read_until(b'{"op":"pong","id":2}')
            finally:
                sock.close()

    run_on(loop, test)


@pytest.mark.hub_settings(client_ops_rate=0.0)
async def test_key_and_type_churn_then_every_way_out_leaves_no_trace(
    running_hub: RunningHub, rng: random.Random
) -> None:
    """Subscribe/unsubscribe churn with up to 32 key patterns and type patterns on detached
    sessions of three projects, then every way a socket ends (close, vanish, binary frame,
    a flood of frames): the manager, its fan-out index and the backend's watch counts are
    back to empty, and no slot or task is left."""
    sockets = []
    for i in range(12):
        query = {"keys": "k1,k2*"} if i % 2 else {"types": "a.*,b.*"}
        ws = await connect(running_hub.ws_url(f"p{i % 3}", **query))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["op"] == "welcome"
        sockets.append(ws)
    await wait_for(lambda: not running_hub.server.server_state.tasks, what="detached")
    for round_ in range(15):
        for ws in sockets:
            op: dict[str, object] = {
                "op": rng.choice(["subscribe", "unsubscribe"]),
                "id": round_,
                "keys": [f"k{rng.randrange(500)}*" for _ in range(rng.randrange(1, 33))],
            }
            if rng.random() < 0.5:
                op["types"] = [f"t{rng.randrange(40)}.*" for _ in range(rng.randrange(1, 8))]
            await ws.send(json.dumps(op))
    for ws in sockets:  # every op answered (subscribed, or an error frame for a full list)
        answered = 0
        async with asyncio.timeout(10):
            while answered < 15:
                frame = json.loads(await ws.recv())
                if isinstance(frame, dict) and frame.get("id") is not None:
                    answered += 1
    for project in ("p0", "p1", "p2"):
        await running_hub.hub.publish(project, "t1.x", {"n": 1}, key="k1")
    for i, ws in enumerate(sockets):
        if i % 4 == 0:
            await ws.close()
        elif i % 4 == 1:
            ws.transport.abort()
        elif i % 4 == 2:
            await ws.send(b"\x00")
        else:
            ws.transport.write((bytes([0x89, 0x80]) + bytes(4)) * 2000)  # a ping flood
    manager = running_hub.hub.manager
    await wait_for(lambda: manager.connection_count == 0, what="all released")
    await wait_for(lambda: not running_hub.server.server_state.tasks, what="no task left")
    for ws in sockets:
        ws.transport.abort()
    await wait_for(lambda: not running_hub.server.server_state.connections, what="closed")
    assert manager._projects == {}, manager._projects
    assert running_hub.hub.backend._watched == {}  # type: ignore[attr-defined]
    assert running_hub.app.state.limits.connections.count == 0

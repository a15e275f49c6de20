"""Heartbeats: a peer that completes the handshake and then never answers pings is dropped
within about two heartbeats; a peer that answers stays connected."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import msgspec
import pytest
from websockets.asyncio.client import connect

from .support import RunningHub, wait_for

HEARTBEAT = 0.3


async def open_dead_peer(
    running: RunningHub, project: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP WebSocket client: hand-made handshake, then it reads but never replies."""
    reader, writer = await asyncio.open_connection(running.host, running.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/projects/{project}/ws HTTP/1.1\r\n"
            f"Host: {running.host}:{running.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server-to-client frames into (opcode, payload)."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


@pytest.mark.hub_settings(heartbeat_s=HEARTBEAT)
async def test_peer_that_never_answers_pings_is_dropped_within_two_heartbeats(
    running_hub: RunningHub,
) -> None:
    manager = running_hub.hub.manager
    loop = asyncio.get_running_loop()
    reader, writer = await open_dead_peer(running_hub, "p1")
    started = loop.time()
    await wait_for(lambda: manager.connection_count == 1, timeout=5, what="registered")

    received = await asyncio.wait_for(reader.read(), timeout=5 * HEARTBEAT + 2)  # to EOF
    elapsed = loop.time() - started
    await wait_for(lambda: manager.connection_count == 0, timeout=5, what="unregistered")
    writer.close()

    frames = parse_server_frames(received)
    opcodes = [opcode for opcode, _ in frames]
    assert opcodes[0] == 0x1  # welcome text frame
    assert msgspec.json.decode(frames[0][1])["op"] == "welcome"
    assert 0x9 in opcodes, "the hub pinged before giving up"
    assert opcodes[-1] == 0x8, "the hub closed with a close frame"
    assert HEARTBEAT <= elapsed < 2 * HEARTBEAT + 0.5


@pytest.mark.hub_settings(heartbeat_s=HEARTBEAT)
async def test_peer_that_answers_pings_outlives_a_dead_one_and_keeps_receiving(
    running_hub: RunningHub,
) -> None:
    manager = running_hub.hub.manager
    async with connect(running_hub.ws_url("p1")) as live:
        welcome = msgspec.json.decode(await live.recv())
        assert welcome["op"] == "welcome"
        assert welcome["heartbeat"] == HEARTBEAT
        reader, writer = await open_dead_peer(running_hub, "p1")
        await wait_for(lambda: manager.connection_count == 2, timeout=5, what="both in")
        await asyncio.wait_for(reader.read(), timeout=5 * HEARTBEAT + 2)  # dead one: EOF
        writer.close()
        await wait_for(lambda: manager.connection_count == 1, timeout=5, what="dead one out")
        # The live client has now answered at least one ping and is still served.
        seq = await running_hub.hub.publish("p1", "ingest.job.updated", {"n": 1})
        event = msgspec.json.decode(await asyncio.wait_for(live.recv(), 5))
        assert (event["op"], event["seq"]) == ("event", seq)
        assert manager.connection_count == 1

"""A subscriber that stops reading is cut with 4008 in bounded memory; nobody else notices."""

from __future__ import annotations

import asyncio
import socket

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from hub.config import Settings
from hub.protocol import ErrorFrame, EventFrame, decode_server_frames

from .support import run_hub, wait_for
from .test_fanout import close_all, open_recorders


async def open_stalled_client(
    url: str,
) -> tuple[ClientProtocol, asyncio.StreamReader, asyncio.StreamWriter]:
    """Complete the handshake over a socket with a tiny receive window, then stop reading."""
    protocol = ClientProtocol(parse_uri(url))
    protocol.send_request(protocol.connect())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    uri = parse_uri(url)
    await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
    writer.write(b"".join(protocol.data_to_send()))
    while protocol.handshake_exc is None and not protocol.events_received():
        protocol.receive_data(await reader.read(1))  # byte by byte: read no event data
        if protocol.state.name == "OPEN":
            break
    assert protocol.state.name == "OPEN"
    return protocol, reader, writer


async def test_stalled_reader_is_closed_with_4008_while_others_receive_everything() -> None:
    settings = Settings(queue_events=500, queue_bytes=256 * 1024)
    async with run_hub(settings) as running:
        hub = running.hub
        protocol, reader, writer = await open_stalled_client(running.ws_url("p1"))
        await wait_for(lambda: hub.manager.project_connection_count("p1") == 1)
        [stalled] = hub.manager.connections("p1")
        healthy = await open_recorders(running, "p1", 3)
        payload = {"blob": "x" * 1000}
        peak_queue = 0
        published = 0
        # Bounded: the stalled socket must be cut long before 20 MB have been offered to it.
        while not stalled.closed and published < 20_000:
            await hub.publish("p1", "bench.blob", payload)
            published += 1
            peak_queue = max(peak_queue, stalled.queued_bytes)
            if published % 50 == 0:
                await asyncio.sleep(0)
        assert stalled.closed, "the stalled reader was never cut"
        assert stalled.slow_closes == 1
        assert peak_queue <= settings.queue_bytes + 2048
        assert published < 20_000
        # Everyone else got every event, in order, and keeps receiving afterwards.
        await hub.publish("p1", "bench.after", {})
        total = published + 1
        await wait_for(lambda: all(len(r.seqs) == total for r in healthy), timeout=30)
        assert all(r.seqs == list(range(1, total + 1)) for r in healthy)
        # The stalled client, once it reads again, finds the reason and the 4008 close.
        frames: list[Frame] = []
        while not any(f.opcode is Opcode.CLOSE for f in frames):
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "socket closed without a close frame"
            protocol.receive_data(data)
            frames.extend(e for e in protocol.events_received() if isinstance(e, Frame))
        texts = [f for f in frames if f.opcode is Opcode.TEXT]
        last = decode_server_frames(texts[-1].data)[-1]
        assert isinstance(last, ErrorFrame) and last.code == "slow_consumer"
        assert last.close == 4008 and last.retryable
        assert protocol.close_rcvd is not None and protocol.close_rcvd.code == 4008
        delivered = [
            f.seq
            for t in texts[:-1]
            for f in decode_server_frames(t.data)
            if isinstance(f, EventFrame)
        ]
        assert delivered == list(range(1, len(delivered) + 1))  # a prefix, in order
        writer.close()
        await close_all(healthy)

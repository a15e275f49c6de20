"""Requests on a kept-alive connection (a long-poll client, HubPublisher's batches) are not
delayed by Nagle's algorithm: the hub's accepted TCP sockets have TCP_NODELAY on the stdlib
event loop too (uvloop sets it itself). Before the fix every answer after a connection's
first waited ~40 ms for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx

from .support import RunningHub, wait_for


async def test_accepted_sockets_have_tcp_nodelay(running_hub: RunningHub) -> None:
    connections = running_hub.server.server_state.connections
    before = set(connections)
    _, writer = await asyncio.open_connection(running_hub.host, running_hub.port)
    try:
        await wait_for(lambda: set(connections) - before, timeout=5, what="the connection")
        (accepted,) = set(connections) - before
        sock = accepted.transport.get_extra_info("socket")
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        writer.close()
    # The figures, for the record (wall time on a shared machine is not asserted).
    async with httpx.AsyncClient(base_url=running_hub.url) as http:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            timings.append(round((time.perf_counter() - started) * 1000, 1))
    print(f"keep-alive /healthz round trips (ms): {timings}")

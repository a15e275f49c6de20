"""HubClient's connection life: backoff that starts over only after a healthy connection,
connect timeouts, giving up, and the state it reports (`on_state`, used by `hub tail`).

The hub that drops every connection right after `welcome` is a real hub behind a TCP proxy
that cuts each connection once the welcome went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest

from hub.client import HubClient, HubUnreachable, StateChange
from tests.support import RunningHub, wait_for


class CutAfterWelcome:
    """A loopback TCP proxy to the hub that closes each connection after the welcome frame."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def client_to_hub() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def hub_to_client() -> None:
            seen = b""
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
                seen = (seen + data)[-4096:]
                if b'"welcome"' in seen:
                    return  # cut: the hub "drops" the connection right after welcome

        pump = asyncio.create_task(client_to_hub())
        try:
            await hub_to_client()
        finally:
            pump.cancel()
            for w in (writer, up_writer):
                w.close()
            with contextlib.suppress(Exception):
                await pump

    async def __aenter__(self) -> CutAfterWelcome:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


class UpperBound(random.Random):
    """Jitter that always picks the longest delay: the fewest reconnects backoff allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


@contextlib.asynccontextmanager
async def consuming(client: HubClient) -> AsyncIterator[asyncio.Task[None]]:
    async def consume() -> None:
        async for _ in client:
            pass

    task = asyncio.create_task(consume())
    try:
        yield task
    finally:
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_drop_right_after_welcome_backs_off_instead_of_looping(
    running_hub: RunningHub, rng: random.Random
) -> None:
    changes: list[StateChange] = []
    async with CutAfterWelcome(running_hub.port) as proxy:
        client = HubClient(
            proxy.url,
            "p1",
            backoff_initial=0.02,
            backoff_max=0.5,
            healthy_after=5.0,
            on_state=changes.append,
            rng=rng,  # seeded: HUB_TEST_SEED replays the delays
        )
        async with consuming(client):
            await wait_for(lambda: client.connects >= 6, timeout=20, what="6 connections")
    retries = [c for c in changes if c.state == "reconnecting"]
    # Every drop came right after a welcome, so none counts as healthy: the attempt number
    # keeps growing and the delay's cap with it, up to backoff_max.
    assert [c.attempt for c in retries[:6]] == [1, 2, 3, 4, 5, 6]
    for change in retries:
        assert change.delay is not None
        assert 0 <= change.delay <= min(0.5, 0.02 * 2**change.attempt)
    assert [c.state for c in changes[:4]] == ["connecting", "open", "reconnecting", "connecting"]


async def test_drop_right_after_welcome_reconnects_a_bounded_number_of_times(
    running_hub: RunningHub,
) -> None:
    """Counted over a window: with the longest delays, 0.1 + 0.2 + 0.4 s pass before the fourth
    reconnect, so one second holds at most five connections (a reset loop made dozens)."""
    async with CutAfterWelcome(running_hub.port) as proxy:
        client = HubClient(
            proxy.url, "p1", backoff_initial=0.05, backoff_max=10.0, rng=UpperBound()
        )
        async with consuming(client):
            await wait_for(lambda: client.connects >= 1, timeout=10, what="first connection")
            first = asyncio.get_running_loop().time()
            await wait_for(lambda: client.connects >= 3, timeout=10, what="third connection")
            window_end = first + 1.0
            counted = client.connects
            while asyncio.get_running_loop().time() < window_end:
                await asyncio.sleep(0.02)
                if asyncio.get_running_loop().time() < window_end:
                    counted = client.connects
    assert 3 <= counted <= 5, counted


async def test_a_connection_that_stays_healthy_starts_the_backoff_over(
    running_hub: RunningHub, rng: random.Random
) -> None:
    changes: list[StateChange] = []
    async with CutAfterWelcome(running_hub.port) as proxy:
        client = HubClient(
            proxy.url,
            "p1",
            backoff_initial=0.02,
            backoff_max=0.5,
            healthy_after=0.0,  # every connection counts as healthy at once
            on_state=changes.append,
            rng=rng,
        )
        async with consuming(client):
            await wait_for(lambda: client.connects >= 4, timeout=20, what="4 connections")
    assert {c.attempt for c in changes if c.state == "reconnecting"} == {1}


async def test_a_handshake_that_never_comes_times_out_per_attempt_and_gives_up() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept the TCP connection, never answer the upgrade

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    changes: list[StateChange] = []
    client = HubClient(
        f"http://127.0.0.1:{port}",
        "p1",
        open_timeout=0.3,
        backoff_initial=0.01,
        backoff_max=0.05,
        give_up_after=1.0,
        on_state=changes.append,
    )
    try:
        with pytest.raises(HubUnreachable, match="gave up after 1s"):
            async with asyncio.timeout(10):
                async for _ in client:
                    pass
    finally:
        server.close()
        for writer in held:
            writer.close()
    reasons = {c.reason for c in changes if c.state == "reconnecting"}
    assert reasons == {"no answer within 0.3s"}
    assert len(held) >= 2  # it did try again, each attempt cut by open_timeout
    assert client.state == "closed"


async def test_nothing_listening_gives_up_after_the_deadline() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # the port is now free: connections are refused
    changes: list[StateChange] = []
    client = HubClient(
        f"http://127.0.0.1:{port}",
        "p1",
        backoff_initial=0.01,
        give_up_after=0.5,
        on_state=changes.append,
    )
    with pytest.raises(HubUnreachable, match="connection refused"):
        async with asyncio.timeout(10):
            async for _ in client:
                pass
    assert changes[0] == StateChange("connecting")
    assert changes[-1].state == "closed"

"""Shared pieces of the hostile-input tests of the services (no tests in this module).

`Bystander`: a WebSocket client on another project that pings the hub every 50 ms and keeps
the worst round trip: the latency every other subscriber sees while an attack runs.
`hub_with_services`: the services mounted in a real hub on loopback port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from websockets.asyncio.client import connect

from hub.catalog import EventCatalog
from hub.config import Settings
from services.events import register_events
from services.runtime import Services

from .support import RunningHub, run_hub, wait_for

P = "attacker"
BYSTANDER_BOUND_S = 0.3  # the bound on a bystander's ping during any attack


class Bystander:
    """Pings over a real WebSocket every `interval` s; `max_rtt` is the worst round trip."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url = url
        self.interval = interval
        self.rtts: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def max_rtt(self) -> float:
        return max(self.rtts, default=0.0)

    async def __aenter__(self) -> Bystander:
        self._ws = await connect(self.url)
        await self._ws.recv()  # welcome
        self._task = asyncio.create_task(self._run())
        await wait_for(lambda: len(self.rtts) >= 2, what="bystander pings")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._ws.close()

    async def _run(self) -> None:
        for n in itertools.count(1):
            sent = time.perf_counter()
            await self._ws.send(msgspec.json.encode({"op": "ping", "id": n}).decode())
            while True:  # a pong is what we wait for; anything else (events) is skipped
                frames = msgspec.json.decode(await self._ws.recv())
                frames = frames if isinstance(frames, list) else [frames]
                if any(f.get("op") == "pong" and f.get("id") == n for f in frames):
                    break
            self.rtts.append(time.perf_counter() - sent)
            await asyncio.sleep(self.interval)  # the ping cadence, not a wait on a condition

    def assert_unharmed(self) -> None:
        print(f"bystander: {len(self.rtts)} pings, max {self.max_rtt * 1000:.0f} ms")
        assert self.max_rtt < BYSTANDER_BOUND_S, f"bystander ping reached {self.max_rtt:.3f}s"


@contextlib.asynccontextmanager
async def hub_with_services(
    settings: Settings | None = None, **options: Any
) -> AsyncIterator[tuple[RunningHub, Services]]:
    catalog = EventCatalog()
    register_events(catalog)
    services = Services(**{"min_interval": 0.1, **options})
    async with run_hub(
        settings or Settings(heartbeat_s=5.0),
        catalog=catalog,
        routes=services.routes(),
        lifespan_hooks=[services.lifespan],
    ) as running:
        yield running, services


def bystander(running: RunningHub) -> Bystander:
    return Bystander(running.ws_url("bystander"))

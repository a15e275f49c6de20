"""Shared pieces of the hostile-input tests of the services (no tests in this module).

`bystander`: a `PingProbe` on another project that pings the hub every 50 ms and keeps each
round trip: the latency every other subscriber sees while an attack runs.
`hub_with_services`: the services mounted in a real hub on loopback port 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import connect

from hub.config import Settings
from hub.wire.catalog import EventCatalog
from services.events import register_events
from services.runtime import Services

from .support import PingProbe, RunningHub, run_hub, wait_for

P = "attacker"
BYSTANDER_BOUND_S = 0.3  # the bound on a bystander's ping during any attack


def assert_unharmed(watcher: PingProbe) -> None:
    print(f"bystander: {len(watcher.rtts)} pings, max {watcher.max_rtt * 1000:.0f} ms")
    assert watcher.max_rtt < BYSTANDER_BOUND_S, f"bystander ping reached {watcher.max_rtt:.3f}s"


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


@contextlib.asynccontextmanager
async def bystander(running: RunningHub) -> AsyncIterator[PingProbe]:
    async with connect(running.ws_url("bystander")) as ws:
        await ws.recv()  # welcome
        watcher = PingProbe(ws)
        await wait_for(lambda: len(watcher.rtts) >= 2, what="bystander pings")
        yield watcher
        await watcher.stop()

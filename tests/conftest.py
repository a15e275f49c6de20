"""Shared fixtures: real hub servers on loopback port 0, in the test's own event loop."""

from __future__ import annotations

import gc
import os
import random
from collections.abc import AsyncIterator, Iterator

import pytest

from hub.config import Settings
from hub.transports.gc_tuning import tune_gc

from .support import RunningHub, run_hub


def pytest_collection_finish(session: pytest.Session) -> None:
    # `hub serve` freezes its startup objects so full collections skip them
    # (hub.transports.gc_tuning).
    # Tests run hubs inside this process and bound their latency (bystander pings), so this
    # process does the same with what collection loaded: otherwise one full collection over
    # every test module's objects can stall an in-process hub by 100+ ms.
    gc.collect()
    gc.freeze()


@pytest.fixture
def hub_gc() -> Iterator[None]:
    """The collector as `hub serve` sets it (hub.transports.gc_tuning) for a test that bounds an
    in-process hub's latency: otherwise a full collection over the objects of the tests that
    ran before can take 100+ ms inside the measured window, which `hub serve` would not do."""
    thresholds = gc.get_threshold()
    tune_gc(Settings().gc_gen0_threshold)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hub_settings(settings=None, /, **fields): the running_hub fixture's Settings "
        "(an object or its fields; default Settings(heartbeat_s=5.0))",
    )
    config.addinivalue_line(
        "markers", "hub_options(**options): run_hub keywords for the running_hub fixture"
    )


def hub_settings(request: pytest.FixtureRequest) -> Settings:
    marker = request.node.get_closest_marker("hub_settings")
    if marker is None:
        return Settings(heartbeat_s=5.0)
    if marker.args:
        (settings,) = marker.args
        assert isinstance(settings, Settings) and not marker.kwargs
        return settings
    return Settings(**marker.kwargs)


@pytest.fixture
async def running_hub(request: pytest.FixtureRequest) -> AsyncIterator[RunningHub]:
    """A real hub on a loopback port for the test's duration: `@pytest.mark.hub_settings(...)`
    picks its Settings, `@pytest.mark.hub_options(...)` the other `run_hub` keywords."""
    options = request.node.get_closest_marker("hub_options")
    async with run_hub(hub_settings(request), **(options.kwargs if options else {})) as running:
        yield running


@pytest.fixture
def rng() -> random.Random:
    """Seeded randomness; the seed is printed so a failure can be replayed (HUB_TEST_SEED)."""
    seed = int(os.environ.get("HUB_TEST_SEED", random.randrange(2**32)))
    print(f"HUB_TEST_SEED={seed}")
    return random.Random(seed)

"""Shared fixtures: real hub servers on loopback port 0, in the test's own event loop."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator

import pytest

from hub.config import Settings

from .support import RunningHub, run_hub


@pytest.fixture
async def running_hub() -> AsyncIterator[RunningHub]:
    async with run_hub(Settings(heartbeat_s=5.0)) as running:
        yield running


@pytest.fixture
def rng() -> random.Random:
    """Seeded randomness; the seed is printed so a failure can be replayed (HUB_TEST_SEED)."""
    seed = int(os.environ.get("HUB_TEST_SEED", random.randrange(2**32)))
    print(f"HUB_TEST_SEED={seed}")
    return random.Random(seed)

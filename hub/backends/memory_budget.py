"""The process-wide memory budget of the memory backend, across every project's retention
and snapshot: when the running total goes over it, the largest projects give up their
oldest data first, down to a low-water mark so the next enforcement is many publishes away
while one pass stays short (it runs on the event loop, inside a publish).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Final

from .memory_log import MemoryLedger, ProjectLog

__all__ = ["LOW_WATER_MAX", "enforce_budget"]

LOW_WATER_MAX: Final = 4 * 1024 * 1024


def enforce_budget(logs: Iterable[ProjectLog], ledger: MemoryLedger, budget: int) -> None:
    """Evict from the largest logs until the total is a little under `budget` (if over it)."""
    if ledger.held_bytes <= budget:
        return
    # Below the budget by 1/16 of it, at most 4 MiB: each pass then costs a scan of the
    # projects (about 3 ms for 10,000) and at most ~3,000 evictions (~20 ms) of 1 KiB events.
    target = budget - min(budget // 16, LOW_WATER_MAX)
    # (-held bytes, tie-breaker, log): the largest project on top
    heap = [(-log.held_bytes, n, log) for n, log in enumerate(logs) if log.held_bytes > 0]
    heapq.heapify(heap)
    while heap and ledger.held_bytes > target:
        _, n, log = heapq.heappop(heap)
        next_largest = -heap[0][0] if heap else 0
        # Level the largest down to 1/8 below the next one: the biggest projects pay first,
        # projects of one size about evenly, with a heap operation per few evictions.
        floor = next_largest - log.held_bytes // 8
        exhausted = False
        while ledger.held_bytes > target and log.held_bytes >= floor:
            if not log.evict_oldest():
                exhausted = True
                break
        if log.held_bytes > 0 and not exhausted:
            heapq.heappush(heap, (-log.held_bytes, n, log))

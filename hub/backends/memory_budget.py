"""The process-wide memory budget of the memory backend, across every project's retention
and snapshot: when the running total goes over it, the largest projects give up their
oldest data first, down to a low-water mark so the next enforcement is many publishes away.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from ..retention import MemoryLedger, ProjectLog

__all__ = ["enforce_budget"]


def enforce_budget(logs: Iterable[ProjectLog], ledger: MemoryLedger, budget: int) -> None:
    """Evict from the largest logs until the total is at 15/16 of `budget` (if over it)."""
    if ledger.held_bytes <= budget:
        return
    target = budget - budget // 16
    # (-held bytes, tie-breaker, log): the largest project on top
    heap = [(-log.held_bytes, n, log) for n, log in enumerate(logs) if log.held_bytes > 0]
    heapq.heapify(heap)
    while heap and ledger.held_bytes > target:
        _, n, log = heapq.heappop(heap)
        next_largest = -heap[0][0] if heap else 0
        # Level the largest down to the next one, so the biggest projects pay first.
        exhausted = False
        while ledger.held_bytes > target and log.held_bytes >= next_largest:
            if not log.evict_oldest():
                exhausted = True
                break
        if log.held_bytes > 0 and not exhausted:
            heapq.heappush(heap, (-log.held_bytes, n, log))

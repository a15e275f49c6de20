"""The hub's counters: plain integers bumped where things happen, read by /metrics at scrape time.

`ManagerStats` is the fan-out's, `HubStats` the publish and SSE paths'; hub/metrics.py turns
both into Prometheus families only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

__all__ = ["LATENCY_BUCKETS_MS", "HubStats", "LatencyHistogram", "ManagerStats"]

# Upper bounds (ms) of publish-to-send latency buckets; the last bucket is +Inf.
LATENCY_BUCKETS_MS: Final = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class LatencyHistogram:
    """Cumulative-on-read histogram; `observe` is a bisect and two additions."""

    __slots__ = ("counts", "sum_ms")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.sum_ms = 0.0

    def observe(self, value_ms: float, weight: int = 1) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_MS, value_ms)] += weight
        self.sum_ms += value_ms * weight

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, count <= bound) pairs, ending with (inf, total)."""
        total, out = 0, []
        for bound, n in zip((*LATENCY_BUCKETS_MS, float("inf")), self.counts, strict=True):
            total += n
            out.append((float(bound), total))
        return out


class ManagerStats:
    __slots__ = (
        "delivered",
        "dropped",
        "events",
        "flush_slices",
        "flushes",
        "frames_built",
        "gaps",
        "latency",
        "lingered_flushes",
        "replays",
        "slow_closes",
    )

    def __init__(self) -> None:
        self.events = 0  # events received from the backend for projects with subscribers
        self.delivered = 0  # (event, connection) deliveries offered
        self.dropped = 0  # queued events discarded when a connection was cut
        self.slow_closes = 0  # connections closed with 4008
        self.replays = 0  # subscriptions that replayed from `since`
        self.gaps = 0  # subscriptions told `gap` (+ snapshot)
        self.flushes = 0
        self.flush_slices = 0  # flushes that ran out of their time slice and yielded
        self.frames_built = 0
        self.lingered_flushes = 0  # flushes scheduled after a linger (the rest: next tick)
        # publish-to-send latency of each frame's oldest event, weighted by its receivers
        self.latency = LatencyHistogram()


class HubStats:
    """Counters kept outside the fan-out (which keeps `ManagerStats`)."""

    __slots__ = ("aborted_bodies", "published", "sse_connections")

    def __init__(self) -> None:
        self.published = 0  # events accepted by publish calls on this hub instance
        self.sse_connections = 0  # open SSE streams (the manager's others are WebSocket)
        self.aborted_bodies = 0  # publish bodies the client abandoned halfway

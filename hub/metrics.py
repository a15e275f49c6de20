"""Prometheus `/metrics`: the hub's counters, read at scrape time by a custom collector.

Nothing here sits on the fan-out path: endpoints bump plain integers in `HubStats` (and the
manager its `ManagerStats`, both in hub/stats.py); `HubCollector.collect()` turns them into
metric families only when Prometheus scrapes, so an idle exporter costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from .backends.memory import MemoryBackend

if TYPE_CHECKING:
    from .core import Hub

__all__ = ["HubCollector", "metrics_endpoint"]

# ManagerStats counters (hub/stats.py) -> metric name, help.
_MANAGER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("events", "hub_events_received", "Events the fan-out received for projects with subscribers."),
    ("delivered", "hub_events_delivered", "(event, connection) deliveries offered."),
    ("dropped", "hub_events_dropped", "Queued events discarded when a slow connection was cut."),
    (
        "slow_closes",
        "hub_slow_consumer_closes",
        "Connections closed 4008: outbound queue overflow.",
    ),
    ("replays", "hub_replays", "Subscriptions resumed by replaying retained history."),
    ("gaps", "hub_gaps", "Subscriptions told `gap` (then sent a snapshot)."),
    ("frames_built", "hub_frames_built", "Shared frames built by the fan-out (one per group)."),
    ("flushes", "hub_fanout_flushes", "Fan-out flushes (one per loop tick with events)."),
    (
        "lingered_flushes",
        "hub_fanout_lingered_flushes",
        "Fan-out flushes that lingered under load so events shared frames.",
    ),
)


class HubCollector(Collector):
    """Reads `hub.stats` and `hub.manager.stats` when scraped."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterable[Metric]:
        hub = self._hub
        stats, manager = hub.stats, hub.manager
        connections = manager.connections()
        total = len(connections)

        by_transport = GaugeMetricFamily(
            "hub_connections", "Open subscriber connections.", labels=["transport"]
        )
        by_transport.add_metric(["ws"], total - stats.sse_connections)
        by_transport.add_metric(["sse"], stats.sse_connections)
        yield by_transport
        yield GaugeMetricFamily(
            "hub_connections_direct",
            "WebSocket connections on the direct write path"
            " (hub.direct_send; see hub.transports.fast_path).",
            value=sum(1 for c in connections if c.sink.direct),
        )
        yield GaugeMetricFamily(
            "hub_long_polls", "Long polls waiting for events.", value=manager.polls.count
        )
        yield CounterMetricFamily(
            "hub_long_polls_refused",
            "Long polls refused with 503: max_long_polls were waiting.",
            value=manager.polls.refused,
        )

        yield CounterMetricFamily(
            "hub_events_published",
            "Events accepted by publish calls on this hub instance.",
            value=stats.published,
        )
        yield CounterMetricFamily(
            "hub_publish_bodies_aborted",
            "Publish bodies the client disconnected in the middle of (nothing published).",
            value=stats.aborted_bodies,
        )
        for field, name, documentation in _MANAGER_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(manager.stats, field))

        depths = [len(c.queue) for c in connections]
        yield GaugeMetricFamily(
            "hub_queue_depth_events",
            "Events waiting in outbound queues, all connections.",
            value=sum(depths),
        )
        yield GaugeMetricFamily(
            "hub_queue_depth_max_events",
            "Longest outbound queue of one connection.",
            value=max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "hub_queue_bytes",
            "Bytes waiting in outbound queues, all connections.",
            value=sum(c.queued_bytes for c in connections),
        )

        if isinstance(hub.backend, MemoryBackend):
            yield from _memory_metrics(hub.backend)
        elif hub.backend.name == "redis":
            yield from _redis_reader_metrics(hub.backend)

        latency = manager.stats.latency
        buckets = [
            ("+Inf" if bound == float("inf") else repr(bound / 1000.0), float(count))
            for bound, count in latency.cumulative()
        ]
        yield HistogramMetricFamily(
            "hub_publish_to_send_seconds",
            "Publish to fan-out write, per receiving connection (each frame's oldest event).",
            buckets=buckets,
            sum_value=latency.sum_ms / 1000.0,
        )


def _memory_metrics(backend: MemoryBackend) -> Iterable[Metric]:
    """The memory backend's bounds (docs/operations.md, "Memory and bounds")."""
    ledger = backend.ledger
    yield GaugeMetricFamily(
        "hub_memory_retained_bytes",
        "Retained events and snapshot entries of every project (frames + per-event overhead).",
        value=ledger.held_bytes,
    )
    yield GaugeMetricFamily(
        "hub_memory_budget_bytes",
        "memory_budget_bytes: the bound on retained bytes.",
        value=backend.budget_bytes,
    )
    yield GaugeMetricFamily(
        "hub_projects", "Projects the memory backend holds.", value=backend.project_count()
    )
    evictions = CounterMetricFamily(
        "hub_memory_evictions",
        "Events and snapshot keys dropped by a bound, by cause.",
        labels=["cause"],
    )
    for cause, count in ledger.evictions.items():
        evictions.add_metric([cause], count)
    yield evictions
    dropped = CounterMetricFamily(
        "hub_projects_dropped",
        "Projects dropped with their data: over max_projects, or idle project_idle_s.",
        labels=["cause"],
    )
    for cause, count in backend.projects_dropped.items():
        dropped.add_metric([cause], count)
    yield dropped


def _redis_reader_metrics(backend: object) -> Iterable[Metric]:
    """The Redis stream reader's health (docs/operations.md, "Redis Sentinel and failover"):
    the numbers to alert on a reader that silently stopped."""
    from .backends.redis_reader import StreamReader  # redis is an optional dependency

    reader = getattr(backend, "reader", None)
    if not isinstance(reader, StreamReader):
        return
    yield GaugeMetricFamily(
        "hub_redis_reader_connected",
        "1 while the stream reader has a working connection to Redis.",
        value=1 if reader.healthy else 0,
    )
    yield CounterMetricFamily(
        "hub_redis_reader_reconnects",
        "Times the stream reader lost Redis and connected again.",
        value=max(0, reader.reconnects - 1),
    )
    yield CounterMetricFamily(
        "hub_redis_reader_epoch_changes",
        "Watched projects whose sequence restarted in a new epoch (subscribers got gap).",
        value=reader.epoch_changes,
    )
    yield GaugeMetricFamily(
        "hub_redis_reader_last_read_age_seconds",
        "Seconds since the stream reader's last read round trip completed.",
        value=max(0.0, time.monotonic() - reader.last_read),
    )
    yield GaugeMetricFamily(
        "hub_redis_reader_lag_events",
        "At the last epoch check: most events one watched stream held past what this hub"
        " delivered.",
        value=reader.lag,
    )
    yield GaugeMetricFamily(
        "hub_redis_reader_stalled",
        "1 when no read round trip completed for redis_reader_stall_s.",
        value=1 if reader.stalled() else 0,
    )


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: Prometheus text format."""
    hub: Hub = request.app.state.hub
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    registry.register(ProcessCollector(registry=None))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

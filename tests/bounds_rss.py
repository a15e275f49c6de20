"""RSS of the memory backend under issue 11's findings 2 and 5, with the default settings:
`python -m tests.bounds_rss` (figures in docs/operations.md, "Memory and bounds")."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import msgspec

from hub.backends.base import PublishRequest
from hub.backends.memory import MemoryBackend
from hub.config import Settings

MiB = 2**20


def rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main() -> None:
    b = MemoryBackend(Settings())  # defaults: snapshot_bytes 32 MiB, memory_budget 512 MiB
    data = msgspec.Raw(msgspec.json.encode({"blob": "x" * 900_000}))
    base = rss()
    peak = 0
    # finding 2: 1,500 events of 900 KB with distinct keys, one project
    for i in range(1500):
        await b.publish("one", [PublishRequest("ingest.job.updated", data, f"k/{i}")])
        peak = max(peak, rss())
    report("finding 2: 1,500 x 900 KB, distinct keys, one project", b, base, peak)
    # finding 5: 40 projects x 36 x 900 KB
    for n in range(40):
        for _ in range(36):
            await b.publish(f"t{n}", [PublishRequest("ingest.job.updated", data, None)])
            peak = max(peak, rss())
    report("finding 5: then 40 projects x 36 x 900 KB", b, base, peak)


def report(what: str, backend: MemoryBackend, base: int, peak: int) -> None:
    print(
        f"{what}: accounted {backend.ledger.held_bytes / MiB:.0f} MiB,"
        f" RSS +{(rss() - base) / MiB:.0f} MiB (peak +{(peak - base) / MiB:.0f} MiB)"
        f" over a baseline of {base / MiB:.0f} MiB; evictions {backend.ledger.evictions}"
    )


async def per_event_cost(keyed: bool, size: int, n: int = 5_000) -> None:
    """Traced bytes per retained event beside its frame (EVENT_OVERHEAD is sized on this)."""
    backend = MemoryBackend(Settings(retention_events=n))
    data = msgspec.Raw(msgspec.json.encode({"payload": "x" * size}))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        request = PublishRequest("ingest.job.updated", data, f"job/{i}" if keyed else None)
        await backend.publish("p", [request])
    gc.collect()
    used = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    frame = len((await backend.read("p", 0, 1)).events[0].frame)
    print(
        f"{'keyed' if keyed else 'unkeyed'} event, {size}-byte payload: {used:.0f} bytes"
        f" traced, frame {frame}, overhead {used - frame:.0f};"
        f" accounted {backend.ledger.held_bytes / n:.0f}"
    )


async def budget_pass_cost(projects: int = 10_000, size: int = 1_000) -> None:
    """How long the publishes that cross the budget take (one enforcement pass each)."""
    backend = MemoryBackend(Settings(max_projects=projects))
    data = msgspec.Raw(msgspec.json.encode("x" * size))
    passes: list[float] = []
    rounds = int(backend.budget_bytes * 1.3 / (projects * (size + 400))) + 1
    for _ in range(rounds):
        for p in range(projects):
            evicted = backend.ledger.evictions["budget_events"]
            start = time.perf_counter()
            await backend.publish(f"p{p}", [PublishRequest("ingest.job.updated", data, None)])
            if backend.ledger.evictions["budget_events"] != evicted:
                passes.append(time.perf_counter() - start)
    print(
        f"budget passes, {projects} projects of {size}-byte events: {len(passes)} passes,"
        f" mean {sum(passes) / len(passes) * 1000:.1f} ms, worst {max(passes) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())  # first: RSS deltas need a fresh process
    for keyed in (False, True):
        for size in (100, 1000):
            asyncio.run(per_event_cost(keyed, size))
    asyncio.run(budget_pass_cost())

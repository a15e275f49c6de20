"""HDR histogram helpers: latencies are recorded in microseconds, reported in milliseconds."""

from __future__ import annotations

from typing import Final

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

__all__ = ["PERCENTILES", "decode", "flush_counts", "new_histogram", "summary_ms"]

LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600_000_000  # one hour: anything later is a stuck run, not a latency
SIGNIFICANT: Final = 3
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT)


def decode(encoded: bytes | str) -> HdrHistogram:
    return HdrHistogram.decode(encoded)


def flush_counts(counts: dict[int, int], hist: HdrHistogram, unit_us: int = 10) -> int:
    """Record `counts` (latency in `unit_us` units -> count) into `hist` and clear them."""
    total = 0
    for value, count in counts.items():
        # clamp: ts is truncated to the millisecond, never in the future by more than that
        us = min(max(value * unit_us, LOWEST_US), HIGHEST_US)
        hist.record_value(us, count)
        total += count
    counts.clear()
    return total


def summary_ms(hist: HdrHistogram) -> dict[str, float | int | None]:
    """p50/p90/p99/p99.9/max/mean in milliseconds (None when nothing was recorded)."""
    count = hist.get_total_count()
    out: dict[str, float | int | None] = {"count": count}
    for name, pct in PERCENTILES:
        out[name] = round(hist.get_value_at_percentile(pct) / 1000, 3) if count else None
    out["max"] = round(hist.get_max_value() / 1000, 3) if count else None
    out["mean"] = round(hist.get_mean_value() / 1000, 3) if count else None
    return out

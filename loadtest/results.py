"""Turning what the workers and samplers reported into one JSON-ready result per run."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from . import hdr

__all__ = ["RESULT_KEYS", "RunRecorder", "compare", "write_json"]

# Top-level keys every result file has (the smoke test checks them).
RESULT_KEYS = (
    "scenario",
    "target",
    "params",
    "machine",
    "server",
    "connect",
    "publish",
    "delivery",
    "latency_ms",
    "loss",
    "connections",
    "hub",
    "generator",
    "series",
    "scenario_details",
    "ok",
)
MIB = 1024 * 1024


@dataclass
class RunRecorder:
    """Collects ticks and samples during a run; `series` bins them per second of publishing."""

    started: float = 0.0  # wall clock when publishing started (0 until then)
    # Series are binned by wall-clock second; second 0 is the one publishing started in.
    _deliveries: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    _hists: dict[int, HdrHistogram] = field(default_factory=dict)
    _hub: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    _published: dict[int, int] = field(default_factory=dict)
    last_tick: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add_tick(self, tick: dict[str, Any]) -> tuple[int, HdrHistogram | None]:
        """Merge a worker's finished seconds; returns the last one's deliveries and histogram."""
        self.last_tick[tick["worker"]] = tick
        deliveries, hist = 0, None
        for entry in tick["seconds"]:
            deliveries, hist = entry["deliveries"], hdr.decode(entry["hist"])
            if self.started:
                second = entry["second"] - int(self.started)
                self._deliveries[second] += deliveries
                if second in self._hists:
                    self._hists[second].add(hist)
                else:
                    self._hists[second] = hist
        for entry in tick["slow_seconds"]:
            if self.started:
                self._deliveries[entry["second"] - int(self.started)] += entry["deliveries"]
        return deliveries, hist

    def add_sample(self, t: float, rss: int | None, cpu: float | None, published: int) -> None:
        if self.started:
            second = int(t) - int(self.started)
            self._hub[second] = (round(rss / MIB, 1) if rss else None, cpu)
            self._published[second] = published

    def series(self) -> list[dict[str, Any]]:
        seconds = sorted(set(self._deliveries) | set(self._hub))
        out = []
        for s in seconds:
            lat = hdr.summary_ms(self._hists[s]) if s in self._hists else {}
            rss, cpu = self._hub.get(s, (None, None))
            out.append(
                {
                    "t": s,
                    "deliveries": self._deliveries.get(s, 0),
                    "published": self._published.get(s),
                    "p50_ms": lat.get("p50"),
                    "p90_ms": lat.get("p90"),
                    "p99_ms": lat.get("p99"),
                    "max_ms": lat.get("max"),
                    "hub_rss_mib": rss,
                    "hub_cpu_percent": cpu,
                }
            )
        return out


def merge_hists(encoded: list[str | bytes]) -> HdrHistogram:
    total = hdr.new_histogram()
    for item in encoded:
        total.add(hdr.decode(item))
    return total


def sum_dicts(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for d in dicts:
        for k, v in d.items():
            out[k] += v
    return dict(out)


def loss_of(summaries: list[dict[str, Any]], key: str = "loss") -> dict[str, int]:
    return sum_dicts([s[key] for s in summaries])


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# (label, path into the result, higher is better); hub/baseline ratios are taken on these.
COMPARED = (
    ("deliveries/s", ("delivery", "per_second"), True),
    ("latency p50 ms", ("latency_ms", "p50"), False),
    ("latency p99 ms", ("latency_ms", "p99"), False),
    ("latency p99.9 ms", ("latency_ms", "p99_9"), False),
    ("latency max ms", ("latency_ms", "max"), False),
    ("connect s", ("connect", "seconds"), False),
    ("hub RSS/conn KiB", ("hub", "rss_per_connection_kib"), False),
    ("hub CPU %", ("hub", "cpu_percent"), False),
)


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per compared metric: the median per target over repeats and hub/baseline."""
    rows = []
    for label, path, higher_better in COMPARED:
        medians = {
            t: _median([_get(r, path) for r in runs if r["target"] == t])
            for t in ("hub", "baseline")
        }
        hub, base = medians["hub"], medians["baseline"]
        ratio = round(hub / base, 2) if hub is not None and base else None
        rows.append(
            {
                "metric": label,
                "hub": hub,
                "baseline": base,
                "hub_over_baseline": ratio,
                "higher_is_better": higher_better,
            }
        )
    return rows

"""Markdown tables from result files, so docs/benchmarks.md quotes the tool, not a retyping.

`python -m loadtest.markdown OUT/*-summary.json` prints one row per invocation: medians over
its repeats for hub and baseline, their ratio, and the worst loss seen in any of its runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["main", "table"]

_HEADER = (
    "| scenario | N | projects | rate ev/s | published ev/s hub / base | deliveries/s hub | "
    "deliveries/s baseline | hub/baseline | p50 ms hub / base | p99 ms hub / base | "
    "p99.9 ms hub / base | "
    "missing+dup hub / base | hub RSS/conn KiB | others CPU % | runs |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _median(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _loss(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "-"
    worst = max(
        r["loss"]["missing"] + r["loss"]["duplicates"] + r["loss"]["out_of_order"] for r in runs
    )
    gaps = max(r["loss"]["gap_skipped"] for r in runs)
    return f"{worst}" + (f" (+{gaps} in gaps)" if gaps else "")


def _others(runs: list[dict[str, Any]]) -> str:
    """The worst CPU other processes took during any run (percent of one core)."""
    values = [r["machine"].get("others_cpu_percent") for r in runs]
    present = [v for v in values if v is not None]
    return _num(max(present), 0) if present else "-"


def row(summary_path: Path) -> str:
    summary = json.loads(summary_path.read_text())
    runs = [json.loads(Path(p).read_text()) for p in summary["runs"]]
    hub = [r for r in runs if r["target"] == "hub"]
    base = [r for r in runs if r["target"] == "baseline"]
    p = summary["params"]
    hub_rate, base_rate = (
        _median(hub, "delivery", "per_second"),
        _median(base, "delivery", "per_second"),
    )
    ratio = f"{hub_rate / base_rate:.2f}x" if hub_rate and base_rate else "-"
    rate = f"{p['rate']:g}" if p["rate"] else "max"

    def pair(*path: str) -> str:
        return f"{_num(_median(hub, *path), 1)} / {_num(_median(base, *path), 1)}"

    return (
        f"| {p['scenario']} | {p['connections']:,} | {p['projects']} | "
        f"{rate} | {pair('publish', 'events_per_second')} | {_num(hub_rate)} | "
        f"{_num(base_rate)} | {ratio} | {pair('latency_ms', 'p50')} | "
        f"{pair('latency_ms', 'p99')} | {pair('latency_ms', 'p99_9')} | "
        f"{_loss(hub)} / {_loss(base)} | "
        f"{_num(_median(hub, 'hub', 'rss_per_connection_kib'), 1)} | {_others(runs)} | "
        f"{len(runs)} |"
    )


def table(paths: list[Path]) -> str:
    return "\n".join([_HEADER, *(row(p) for p in paths)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.markdown")
    parser.add_argument("summaries", nargs="+", type=Path, help="*-summary.json files")
    print(table(parser.parse_args(argv).summaries))


if __name__ == "__main__":
    main()

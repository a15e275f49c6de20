"""Markdown tables from result files, so docs/benchmarks.md quotes the tool, not a retyping.

`python -m loadtest.markdown RESULTS/*.json` groups runs by their parameters and prints one
row per group: medians for hub and baseline, their ratio, the worst loss of any run. Runs
during which other processes took more than `--max-others` percent of a core are left out
of the medians (the row says how many were kept): on a shared machine they measure the
neighbours, not the hub.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["clean", "load_runs", "main", "table"]

_HEADER = (
    "| scenario | N | projects | rate ev/s | posts in flight | published ev/s hub / base | "
    "deliveries/s hub | deliveries/s baseline | hub/baseline | p50 ms hub / base | "
    "p99 ms hub / base | p99.9 ms hub / base | missing+dup hub / base | hub RSS/conn KiB | "
    "runs kept hub / base |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
_GROUP_BY = ("scenario", "connections", "projects", "rate", "events", "publishers", "batch", "pad")


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Run results from run files and from the run lists of summary files."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(path.read_text())
        files = data["runs"] if "runs" in data else [path]
        runs.extend(json.loads(Path(f).read_text()) for f in files)
    return runs


def clean(run: dict[str, Any], max_others: float, max_busy: float) -> bool:
    machine = run["machine"]
    others = machine.get("others_cpu_percent")
    busy = machine.get("busy_before_percent")
    return (others is None or others <= max_others) and (busy is None or busy <= max_busy)


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
    """Worst missing + duplicated + out-of-order of all runs, kept or not: loss is loss."""
    if not runs:
        return "-"
    worst = max(
        r["loss"]["missing"] + r["loss"]["duplicates"] + r["loss"]["out_of_order"] for r in runs
    )
    gaps = max(r["loss"]["gap_skipped"] for r in runs)
    return f"{worst}" + (f" (+{gaps} declared in gaps)" if gaps else "")


def _row(group: list[dict[str, Any]], kept: list[dict[str, Any]]) -> str:
    hub = [r for r in kept if r["target"] == "hub"]
    base = [r for r in kept if r["target"] == "baseline"]
    p = group[0]["params"]
    hub_rate = _median(hub, "delivery", "per_second")
    base_rate = _median(base, "delivery", "per_second")
    ratio = f"{hub_rate / base_rate:.2f}x" if hub_rate and base_rate else "-"
    rate = f"{p['rate']:g}" if p["rate"] else "max"

    def pair(*path: str) -> str:
        return f"{_num(_median(hub, *path), 1)} / {_num(_median(base, *path), 1)}"

    def count(target: str) -> str:
        total = sum(r["target"] == target for r in group)
        return f"{sum(r['target'] == target for r in kept)}/{total}"

    all_hub = [r for r in group if r["target"] == "hub"]
    all_base = [r for r in group if r["target"] == "baseline"]
    return (
        f"| {p['scenario']} | {p['connections']:,} | {p['projects']} | {rate} | "
        f"{p['publishers']} | "
        f"{pair('publish', 'events_per_second')} | {_num(hub_rate)} | {_num(base_rate)} | "
        f"{ratio} | {pair('latency_ms', 'p50')} | {pair('latency_ms', 'p99')} | "
        f"{pair('latency_ms', 'p99_9')} | {_loss(all_hub)} / {_loss(all_base)} | "
        f"{_num(_median(hub, 'hub', 'rss_per_connection_kib'), 1)} | "
        f"{count('hub')} / {count('baseline')} |"
    )


def table(runs: list[dict[str, Any]], max_others: float = 15.0, max_busy: float = 15.0) -> str:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        key = tuple(run["params"].get(k) for k in _GROUP_BY)
        groups.setdefault(key, []).append(run)
    rows = [
        _row(group, [r for r in group if clean(r, max_others, max_busy)])
        for group in groups.values()
    ]
    return "\n".join([_HEADER, *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.markdown")
    parser.add_argument("results", nargs="+", type=Path, help="run or *-summary.json files")
    parser.add_argument(
        "--max-others",
        type=float,
        default=15.0,
        help="drop runs where other processes used more %% of a core",
    )
    parser.add_argument(
        "--max-busy",
        type=float,
        default=15.0,
        help="drop runs started on a machine busier than this %% (all cores)",
    )
    args = parser.parse_args(argv)
    print(table(load_runs(args.results), args.max_others, args.max_busy))


if __name__ == "__main__":
    main()

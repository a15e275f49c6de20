"""PNG plots of runs: latency percentiles over time, and deliveries per second over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt

__all__ = ["plot_runs"]

_STYLE = {"hub": "tab:blue", "baseline": "tab:orange"}


def _label(run: dict[str, Any]) -> str:
    target: str = run["target"]
    return target + (f" #{run['repeat'] + 1}" if run.get("repeats", 1) > 1 else "")


def _title(run: dict[str, Any], what: str) -> str:
    p = run["params"]
    rate = "max rate" if not p["rate"] else f"{p['rate']:g} ev/s"
    return (
        f"{run['scenario']}: {p['connections']:,} subscribers, {p['projects']} project(s), "
        f"{rate} - {what}"
    )


def plot_runs(runs: list[dict[str, Any]], prefix: Path) -> list[Path]:
    """Write `<prefix>-latency.png` and `<prefix>-deliveries.png`; returns their paths."""
    latency_path = prefix.with_name(prefix.name + "-latency.png")
    deliveries_path = prefix.with_name(prefix.name + "-deliveries.png")

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for run in runs:
        series = [s for s in run["series"] if s["p50_ms"] is not None]
        t = [s["t"] for s in series]
        color = _STYLE.get(run["target"])
        for key, style in (("p50_ms", ":"), ("p99_ms", "-"), ("max_ms", "--")):
            ax.plot(
                t,
                [s[key] for s in series],
                style,
                color=color,
                label=f"{_label(run)} {key.removesuffix('_ms')}",
            )
    ax.set_yscale("log")
    ax.set_xlabel("seconds since publishing started")
    ax.set_ylabel("publish-to-receive latency (ms, log)")
    ax.set_title(_title(runs[0], "latency"), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(latency_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for run in runs:
        series = run["series"]
        ax.plot(
            [s["t"] for s in series],
            [s["deliveries"] for s in series],
            "-o",
            markersize=3,
            color=_STYLE.get(run["target"]),
            label=_label(run),
        )
    ax.set_xlabel("seconds since publishing started")
    ax.set_ylabel("events delivered per second (all subscribers)")
    ax.set_title(_title(runs[0], "deliveries/s"), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(deliveries_path, dpi=110)
    plt.close(fig)
    return [latency_path, deliveries_path]

"""What the user sees: a live progress panel while running, and the final tables."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["LiveProgress", "ratio_table", "runs_table"]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class LiveProgress:
    """Callable progress sink; a no-op when the console is not a terminal (CI, pytest)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self._live = Live(console=console, auto_refresh=False, transient=False) if enabled else None

    def __enter__(self) -> LiveProgress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()

    def __call__(self, state: dict[str, Any]) -> None:
        if self._live is None:
            return
        table = Table(
            title=f"{state['scenario']} -> {state['target']}: {state['phase']}",
            show_header=False,
            box=None,
        )
        table.add_row(
            "subscribers live", f"{_fmt(state.get('live'))} / {_fmt(state['connections'])}"
        )
        table.add_row("published", f"{_fmt(state.get('published'))} / {_fmt(state['events'])}")
        table.add_row("deliveries, last second", _fmt(state.get("deliveries_last")))
        table.add_row("latency p99, last second", f"{_fmt(state.get('p99_last_ms'), 2)} ms")
        table.add_row("reconnects", _fmt(state.get("reconnects")))
        table.add_row(
            "hub RSS / CPU",
            f"{_fmt(state.get('hub_rss_mib'))} MiB / {_fmt(state.get('hub_cpu'))} %",
        )
        self._live.update(table, refresh=True)


_ROWS = (
    ("connected", ("connect", "connected")),
    ("connect s", ("connect", "seconds")),
    ("events published", ("publish", "events")),
    ("publish events/s", ("publish", "events_per_second")),
    ("publish request p99 ms", ("publish", "request_ms", "p99")),
    ("deliveries", ("delivery", "delivered")),
    ("deliveries/s", ("delivery", "per_second")),
    ("latency p50 ms", ("latency_ms", "p50")),
    ("latency p90 ms", ("latency_ms", "p90")),
    ("latency p99 ms", ("latency_ms", "p99")),
    ("latency p99.9 ms", ("latency_ms", "p99_9")),
    ("latency max ms", ("latency_ms", "max")),
    ("missing", ("loss", "missing")),
    ("duplicates", ("loss", "duplicates")),
    ("out of order", ("loss", "out_of_order")),
    ("declared gaps (seqs)", ("loss", "gap_skipped")),
    ("reconnects", ("connections", "reconnects")),
    ("hub RSS peak MiB", ("hub", "rss_peak_mib")),
    ("hub RSS/conn KiB", ("hub", "rss_per_connection_kib")),
    ("hub CPU %", ("hub", "cpu_percent")),
    ("generator CPU %", ("generator", "worker_cpu_percent")),
    ("ok", ("ok",)),
)


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(
        title=f"{runs[0]['scenario']}: {runs[0]['params']['connections']:,} "
        f"subscribers, {runs[0]['params']['projects']} project(s)"
    )
    table.add_column("metric")
    for run in runs:
        label = run["target"] + (f" #{run['repeat'] + 1}" if run.get("repeats", 1) > 1 else "")
        table.add_column(label, justify="right")
    for name, path in _ROWS:
        cells = []
        for run in runs:
            value = _get(run, path)
            if isinstance(value, list):
                value = " ".join(_fmt(v) for v in value)
            cells.append(_fmt(value, 2 if "ms" in name else 1))
        table.add_row(name, *cells)
    return table


def ratio_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="hub / baseline (medians over repeats, same invocation)")
    for col in ("metric", "hub", "baseline", "hub/baseline"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in rows:
        ratio = row["hub_over_baseline"]
        text = "-" if ratio is None else f"{ratio:.2f}x"
        table.add_row(row["metric"], _fmt(row["hub"], 2), _fmt(row["baseline"], 2), text)
    return table

"""`python -m loadtest SCENARIO` / `hub-loadtest SCENARIO`: run, report, write JSON and PNGs."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from .filters import FilterParams, run_filters
from .keys import KeyParams, run_keys
from .report import LiveProgress, ratio_table, runs_table
from .results import compare, write_json
from .runner import run_once
from .scenarios import PUBLISHERS, SCENARIOS, default_params
from .servers import TARGETS
from .system import NotLoopback, loopback_address, raise_nofile_limit

__all__ = ["build_parser", "main"]

FD_HEADROOM = 200  # files, pipes and listening sockets besides the subscribers
BUSY_WARNING_PERCENT = 15.0  # of all cores, in the second before a run
OTHERS_WARNING_PERCENT = 15.0  # of one core, while measuring


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub-loadtest",
        description="Load the hub (or the naive baseline) on loopback: N WebSocket subscribers "
        "across worker processes, every seq checked, latency from each event's ts.",
    )
    parser.add_argument("scenario", choices=(*SCENARIOS, "filters", "keys"))
    target = parser.add_argument_group("target")
    target.add_argument(
        "--target",
        choices=(*TARGETS, "both"),
        default="hub",
        help="what to start and load; 'both' runs baseline then hub (default hub)",
    )
    target.add_argument(
        "--url",
        action="append",
        help="load an already running server on loopback instead; repeat it for hub "
        "instances sharing Redis: worker processes are spread over them round-robin and "
        "events are published to the first",
    )
    target.add_argument(
        "--server-pid",
        type=int,
        help="pid of the --url server, for RSS/CPU (default: found from the listening port)",
    )
    target.add_argument(
        "--hub-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `hub serve`, repeatable (e.g. --hub-arg=--retention=50000)",
    )
    load = parser.add_argument_group("load (defaults depend on the scenario)")
    load.add_argument("-n", "--connections", type=int, help="subscribers in total")
    load.add_argument("--projects", type=int, help="projects the subscribers are spread over")
    load.add_argument("--events", type=int, help="events to publish in total")
    load.add_argument("--rate", type=float, help="events/s; 0 = as fast as acknowledged")
    load.add_argument("--duration", type=float, help="publishing stops after this many seconds")
    load.add_argument("--batch", type=int, help="most events per publish request (default 1)")
    load.add_argument("--publishers", type=int, help="publish requests in flight (default 1)")
    load.add_argument("--pad", type=int, help="padding bytes per event (default 64)")
    load.add_argument(
        "--publisher",
        choices=PUBLISHERS,
        help="http (default): POST from the generator; inprocess: the server's own loop "
        "publishes, yielding between events (loadtest/inprocess.py)",
    )
    load.add_argument("--types", help="subscription filter, e.g. 'bench.*'")
    load.add_argument("--slow", type=int, help="slow-consumer: subscribers that stop reading")
    load.add_argument("--stall", type=float, help="slow-consumer: seconds they stop reading")
    load.add_argument("--storm-at", type=float, help="reconnect-storm: seconds before the drop")
    load.add_argument("--jitter", type=float, help="reconnect-storm: reconnect spread, seconds")
    load.add_argument("--batches", type=int, help="filters: publish requests of new types")
    load.add_argument("--churners", type=int, help="filters: sockets churning their filter")
    load.add_argument("--churn-rate", type=float, help="filters: ops/s per churning socket")
    load.add_argument("--batch-interval", type=float, help="filters: seconds between batches")
    gen = parser.add_argument_group("generator")
    gen.add_argument("--workers", type=int, help="subscriber processes (default: one per core)")
    gen.add_argument("--connect-concurrency", type=int, help="handshakes in flight per worker")
    gen.add_argument("--connect-timeout", type=float, help="seconds per connection attempt")
    gen.add_argument("--drain-timeout", type=float, help="seconds allowed for delivery to finish")
    gen.add_argument(
        "--read-interval",
        type=float,
        help="ms a worker waits between socket drains (default 0.5; 0 = per wake-up)",
    )
    gen.add_argument("--repeat", type=int, default=1, help="runs per target (medians reported)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("loadtest-results"), help="result directory")
    out.add_argument("--name", help="file name prefix (default: time, scenario, N)")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-live", action="store_true", help="no live display")
    return parser


_PARAM_OPTIONS = (
    "connections",
    "projects",
    "events",
    "rate",
    "duration",
    "batch",
    "publishers",
    "pad",
    "types",
    "slow",
    "stall",
    "storm_at",
    "jitter",
    "workers",
    "connect_concurrency",
    "connect_timeout",
    "drain_timeout",
    "read_interval",
    "publisher",
)


async def _run_all(
    args: argparse.Namespace, targets: list[str], params: Any, prefix: str, console: Console
) -> list[dict[str, Any]]:
    runs = []
    for repeat in range(args.repeat):
        for target in targets:
            name = f"{prefix}-{target}" + (f"-{repeat + 1}" if args.repeat > 1 else "")
            with LiveProgress(console, not args.no_live and console.is_terminal) as progress:
                result = await run_once(
                    target,
                    params,
                    args.out,
                    name,
                    progress,
                    url=args.url,
                    server_pid=args.server_pid,
                    server_args=args.hub_arg,
                )
            result.update(repeat=repeat, repeats=args.repeat)
            busy = result["machine"]["busy_before_percent"]
            others = result["machine"]["others_cpu_percent"]
            if (busy or 0) > BUSY_WARNING_PERCENT or (others or 0) > OTHERS_WARNING_PERCENT:
                console.print(
                    f"[yellow]warning:[/] other processes used the machine ({busy}% busy "
                    f"before, {others}% of a core during the run); figures are skewed"
                )
            path = args.out / f"{name}.json"
            write_json(path, result)
            result["file"] = str(path)
            runs.append(result)
            console.print(
                f"[bold]{target}[/]: {result['delivery']['per_second'] or 0:,.0f} "
                f"deliveries/s, p99 {result['latency_ms']['p99']} ms, "
                f"missing {result['loss']['missing']}, "
                f"duplicates {result['loss']['duplicates']}, ok={result['ok']} "
                f"-> {path}"
            )
    return runs


def _check_fd_budget(params: Any, limit: int, console: Console) -> None:
    per_worker = math.ceil(params.connections / params.workers) + FD_HEADROOM
    if per_worker > limit or params.connections + FD_HEADROOM > limit:
        console.print(
            f"[yellow]warning:[/] RLIMIT_NOFILE is {limit}; {params.connections} "
            f"connections need about {per_worker} per worker and "
            f"{params.connections + FD_HEADROOM} in the server. Add --workers."
        )


def _single_hub_scenario(
    args: argparse.Namespace,
    console: Console,
    scenario: str,
    make_params: Callable[..., Any],
    options: dict[str, Any],
    run: Callable[..., Coroutine[Any, Any, dict[str, Any]]],
) -> tuple[dict[str, Any], Path] | int:
    """The skeleton of `filters` and `keys`: their params, one hub, a JSON result file.
    Returns the result and its path, or the exit status when it could not run."""
    try:
        params = make_params(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        console.print(f"[red]{exc}")
        return 2
    if args.target != "hub" or (args.url is not None and len(args.url) > 1):
        console.print(f"[red]{scenario} runs against one hub: --target hub, at most one --url")
        return 2
    raise_nofile_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario}-{params.connections}"
    url = args.url[0] if args.url else None
    try:
        result = asyncio.run(
            run(params, args.out, url=url, server_pid=args.server_pid, server_args=args.hub_arg)
        )
    except (RuntimeError, OSError) as exc:
        console.print(f"[red]run failed: {exc}")
        return 1
    path = args.out / f"{prefix}-{scenario}.json"
    write_json(path, result)
    return result, path


def _main_filters(args: argparse.Namespace, console: Console) -> int:
    """The `filters` scenario: its own skeleton (hub only), see loadtest/filters.py."""
    options = {
        "connections": args.connections,
        "batches": args.batches,
        "batch": args.batch,
        "churners": args.churners,
        "churn_rate": args.churn_rate,
        "batch_interval": args.batch_interval,
        "connect_concurrency": args.connect_concurrency,
    }
    done = _single_hub_scenario(args, console, "filters", FilterParams, options, run_filters)
    if isinstance(done, int):
        return done
    result, path = done
    for run in result["runs"]:
        ping = run["bystander_ping_ms"]
        console.print(
            f"[bold]{run['variant']}[/]: hub CPU {run['hub_cpu_seconds']} s, batch delivery "
            f"median {run['batch_delivery_ms']['median']} ms (max {run['batch_delivery_ms']['max']}"
            f"), bystander ping p50 {ping['p50']} / p99 {ping['p99']} / max {ping['max']} ms, "
            f"churn ops {run['churn_ops']}, complete={run['complete']}"
        )
    console.print(f"ratios against single: {result['ratios']} -> {path}")
    return 0 if result["ok"] else 1


def _main_keys(args: argparse.Namespace, console: Console) -> int:
    """The `keys` scenario: unfiltered vs one key per subscriber, see loadtest/keys.py."""
    options = {
        "connections": args.connections,
        "events": args.events,
        "rate": args.rate,
        "batch": args.batch,
        "workers": args.workers,
        "pad": args.pad,
        "connect_concurrency": args.connect_concurrency,
    }
    done = _single_hub_scenario(args, console, "keys", KeyParams, options, run_keys)
    if isinstance(done, int):
        return done
    result, path = done
    for run in result["runs"]:
        latency = run["latency_ms"]
        console.print(
            f"[bold]{run['variant']}[/]: {run['deliveries']} deliveries, latency p50 "
            f"{latency['p50']} / p99 {latency['p99']} / max {latency['max']} ms, hub CPU "
            f"{run['hub_cpu_seconds']} s (generator {run['generator_cpu_seconds']} s, others "
            f"{run['others_cpu_seconds']} s, in {run['seconds']} s), exact={run['exact']}"
        )
    console.print(f"ratios keyed / unfiltered: {result['ratios']} -> {path}")
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.scenario == "filters":
        return _main_filters(args, console)
    if args.scenario == "keys":
        return _main_keys(args, console)
    if args.url is not None:
        if args.target == "both":
            console.print("[red]--url names running servers: pick --target hub or baseline")
            return 2
        try:
            for url in args.url:
                loopback_address(url)
        except NotLoopback as exc:
            console.print(f"[red]{exc}")
            return 2
    try:
        params = default_params(args.scenario, **{k: getattr(args, k) for k in _PARAM_OPTIONS})
    except (TypeError, ValueError) as exc:
        console.print(f"[red]{exc}")
        return 2
    _check_fd_budget(params, raise_nofile_limit(), console)
    targets = ["baseline", "hub"] if args.target == "both" else [args.target]
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{args.scenario}-{params.connections}"
    if params.publisher != "http" and not args.name:
        prefix += f"-{params.publisher}"
    try:
        runs = asyncio.run(_run_all(args, targets, params, prefix, console))
    except (RuntimeError, OSError) as exc:  # a server that would not start, a refused --url
        console.print(f"[red]run failed: {exc}")
        return 1

    console.print(runs_table(runs))
    summary: dict[str, Any] = {
        "scenario": args.scenario,
        "params": params.to_json(),
        "runs": [r["file"] for r in runs],
    }
    if len(targets) == 2:
        summary["comparison"] = compare(runs)
        console.print(ratio_table(summary["comparison"]))
    if not args.no_plots:
        from .plots import plot_runs  # matplotlib is slow to import: only when plotting

        summary["plots"] = [str(p) for p in plot_runs(runs, args.out / prefix)]
        console.print("plots: " + ", ".join(summary["plots"]))
    write_json(args.out / f"{prefix}-summary.json", summary)
    failed = [r["target"] for r in runs if not r["ok"]]
    if failed:
        console.print(f"[red]not ok (loss, duplicates, errors or timeout): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

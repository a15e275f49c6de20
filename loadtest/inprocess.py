"""The in-process publisher: events published from inside the server's own process.

Service code publishes with `await hub.publish(...)` and yields to the loop between events;
it sends no HTTP request, so nothing batches events for the fan-out the way 4 publish
requests in flight do. To measure that case the load generator POSTs one plan to
`/bench/publish` on a server started with this route (the hub through `python -m
loadtest.inprocess`, the baseline always has it); the server runs the publish loop itself,
`await asyncio.sleep(0)` after every event, paced or as fast as possible, and answers with
what it published (heads, seq counts, per-publish latency as an encoded HDR histogram).

The route exists only in these bench servers, never in `hub serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import hdr
from .publisher import EVENT_TYPE, HttpConnection, PublishPlan, PublishResult

__all__ = [
    "BENCH_PATH",
    "InProcessPlan",
    "InProcessPublisher",
    "PublishOne",
    "bench_route",
    "publish_loop",
]

BENCH_PATH: Final = "/bench/publish"
MAX_EVENTS: Final = 10_000_000
MAX_SECONDS: Final = 3600.0

# publish(project, type, data) -> seq
PublishOne = Callable[[str, str, dict[str, Any]], Awaitable[int]]


class InProcessPlan(msgspec.Struct, forbid_unknown_fields=True):
    projects: list[str]
    events: int
    rate: float  # events/s over all projects; 0 = as fast as the loop allows
    pad: int
    max_seconds: float
    stamp: bool = False  # data carries `t`: time.monotonic() just before the publish call

    def check(self) -> None:
        if not self.projects or not 0 < self.events <= MAX_EVENTS:
            raise ValueError(f"need projects and 1..{MAX_EVENTS} events")
        if self.rate < 0 or not 0 < self.max_seconds <= MAX_SECONDS or not 0 <= self.pad <= 1 << 20:
            raise ValueError("rate >= 0, max_seconds in (0, 3600], pad in [0, 1 MiB]")


class InProcessAnswer(msgspec.Struct):
    published: int
    errors: dict[str, int]
    heads: dict[str, int]
    seq_counts: dict[str, int]
    seq_mins: dict[str, int]
    started: float
    finished: float
    publish_hist: str  # hdr.encode of per-publish latency, microseconds


async def publish_loop(publish: PublishOne, plan: InProcessPlan) -> InProcessAnswer:
    """Publish `plan.events` events round-robin over the projects, yielding after each."""
    hist = hdr.new_histogram()
    errors: Counter[str] = Counter()
    heads: dict[str, int] = {}
    counts: Counter[str] = Counter()
    mins: dict[str, int] = {}
    pad = "x" * plan.pad
    started = time.time()
    t0 = time.monotonic()
    deadline = t0 + plan.max_seconds
    published = 0
    for i in range(plan.events):
        now = time.monotonic()
        if now >= deadline:
            break
        if plan.rate > 0 and (due := t0 + i / plan.rate) > now:
            await asyncio.sleep(due - now)  # ahead of schedule: wait for this event's slot
        project = plan.projects[i % len(plan.projects)]
        data: dict[str, Any] = {"n": i, "pad": pad}
        if plan.stamp:  # CLOCK_MONOTONIC: comparable across processes on one Linux machine
            data["t"] = time.monotonic()
        t = time.perf_counter()
        try:
            seq = await publish(project, EVENT_TYPE, data)
        except Exception as exc:  # counted and reported; the run is then not ok
            errors[type(exc).__name__] += 1
            continue
        hist.record_value(max(1, int((time.perf_counter() - t) * 1e6)))
        published += 1
        heads[project] = max(heads.get(project, 0), seq)
        counts[project] += 1
        mins[project] = min(mins.get(project, seq), seq)
        await asyncio.sleep(0)  # yield to the loop between events, as service code does
    encoded = hist.encode()
    return InProcessAnswer(
        published,
        dict(errors),
        heads,
        dict(counts),
        mins,
        started,
        time.time(),
        encoded.decode() if isinstance(encoded, bytes) else encoded,
    )


def bench_route(publisher_of: Callable[[Request], PublishOne]) -> Route:
    """POST /bench/publish: run one plan in this process, answer when it is done;
    `publisher_of(request)` is the server's own publish call."""

    async def endpoint(request: Request) -> Response:
        try:
            plan = msgspec.json.decode(await request.body(), type=InProcessPlan)
            plan.check()
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return Response(msgspec.json.encode({"error": str(exc)}), status_code=400)
        answer = await publish_loop(publisher_of(request), plan)
        return Response(msgspec.json.encode(answer), media_type="application/json")

    return Route(BENCH_PATH, endpoint, methods=["POST"])


class InProcessPublisher:
    """The generator's side: send the plan, wait for the server's loop, keep its answer in
    the shape the HTTP Publisher reports (`requests` counts publish calls)."""

    def __init__(self, host: str, port: int, plan: PublishPlan) -> None:
        self.host = host
        self.port = port
        self.plan = plan
        self.result = PublishResult()
        self.result.request_hist = hdr.new_histogram()

    @property
    def published(self) -> int:
        return self.result.published  # known once the server answers

    async def run(self) -> PublishResult:
        plan = self.plan
        body = msgspec.json.encode(
            InProcessPlan(plan.projects, plan.events, plan.rate, plan.pad, plan.max_seconds)
        )
        result = self.result
        result.started = time.time()
        conn = HttpConnection(self.host, self.port)
        try:
            status, payload = await conn.post(BENCH_PATH, body)
        except OSError as exc:
            result.errors[type(exc).__name__] += 1
            result.finished = time.time()
            return result
        finally:
            await conn.close()
        if status != 200:
            result.errors[f"http_{status}"] += 1
            result.finished = time.time()
            return result
        answer = msgspec.json.decode(payload, type=InProcessAnswer)
        result.published = result.requests = answer.published
        result.errors.update(answer.errors)
        result.heads = answer.heads
        result.seq_counts = Counter(answer.seq_counts)
        result.seq_mins = answer.seq_mins
        result.started, result.finished = answer.started, answer.finished
        result.request_hist = hdr.decode(answer.publish_hist)
        return result


async def _serve(args: argparse.Namespace) -> None:
    from hub.app import create_app
    from hub.cli import catalog_from_args, settings_from_args
    from hub.transports.server import serve

    settings = settings_from_args(args)
    route = bench_route(_hub_publish)
    app = create_app(settings, catalog=catalog_from_args(args, settings), routes=[route])
    await serve(app, args.host, args.port, settings)


def _hub_publish(request: Request) -> PublishOne:
    publish: PublishOne = request.app.state.hub.publish
    return publish


def main(argv: list[str] | None = None) -> int:
    """`python -m loadtest.inprocess [hub serve options]`: the hub plus /bench/publish."""
    from hub.cli import add_catalog_arguments, add_settings_arguments
    from hub.cli_exit import run_command
    from hub.logs import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m loadtest.inprocess",
        description="`hub serve` with a /bench/publish route that publishes in-process",
    )
    add_settings_arguments(parser)
    add_catalog_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(str(args.log_level), getattr(args, "log_format", None))
    return run_command(_serve, args, prog=parser.prog, debug=False)


if __name__ == "__main__":
    raise SystemExit(main())

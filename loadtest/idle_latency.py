"""Idle single-event latency: one event at a time on an otherwise idle hub.

`python -m loadtest.idle_latency [--hub-arg=...]` starts the hub with the in-process
publisher's route (loadtest/inprocess.py), opens `-n` subscribers in this process, then
publishes one event every `--interval` seconds from inside the hub (stamped with
CLOCK_MONOTONIC just before `hub.publish`, which every process on the machine shares) and
records, per subscriber, the time from that stamp to the event decoded here. The interval
is longer than the linger cap, so each event finds the hub idle: with the adaptive linger it
must go out on the next loop tick. It also reads the hub's `hub_fanout_lingered_flushes`
before and after (expected: unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from . import hdr
from .hub_metrics import fanout_counters
from .inprocess import BENCH_PATH, InProcessPlan
from .publisher import HttpConnection
from .servers import start_server
from .system import loopback_address

__all__ = ["main", "measure"]


async def _lingered(conn: HttpConnection) -> float | None:
    counters = await fanout_counters(conn.host, conn.port)
    return counters["lingered_flushes"] if counters else None


async def _receive(ws: ClientConnection, latencies: list[float], seen: list[int]) -> None:
    async for message in ws:
        now = time.monotonic()
        frames = msgspec.json.decode(message)
        for frame in frames if isinstance(frames, list) else [frames]:
            if frame.get("op") == "event":
                latencies.append(now - frame["data"]["t"])
                seen[0] += 1


async def measure(url: str, subscribers: int, events: int, interval: float) -> dict[str, Any]:
    host, port = loopback_address(url)
    conn = HttpConnection(host, port)
    project = f"idle-{secrets.token_hex(3)}"
    sockets = [
        await connect(f"ws://{conn.authority.decode()}/v1/projects/{project}/ws", max_size=None)
        for _ in range(subscribers)
    ]
    latencies: list[float] = []
    seen = [0]
    for ws in sockets:
        await ws.recv()  # welcome
    readers = [asyncio.create_task(_receive(ws, latencies, seen)) for ws in sockets]
    lingered_before = await _lingered(conn)
    plan = InProcessPlan([project], 1, 0.0, 64, 10.0, stamp=True)
    body = msgspec.json.encode(plan)
    try:
        for i in range(events):
            await asyncio.sleep(interval)  # pacing: the hub goes idle between events
            status, _ = await conn.post(BENCH_PATH, body)
            if status != 200:
                raise RuntimeError(f"{BENCH_PATH} answered {status}")
            deadline = time.monotonic() + 10
            while seen[0] < (i + 1) * subscribers:  # bounded wait for every subscriber
                if time.monotonic() > deadline:
                    raise RuntimeError(f"event {i + 1} did not reach every subscriber in 10 s")
                await asyncio.sleep(0.001)
        lingered_after = await _lingered(conn)
    finally:
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
        await conn.close()
    hist = hdr.new_histogram()
    for latency in latencies:
        hist.record_value(max(1, int(latency * 1e6)))
    return {
        "subscribers": subscribers,
        "events": events,
        "interval_s": interval,
        "latency_ms": hdr.summary_ms(hist),
        "lingered_flushes": None
        if lingered_before is None or lingered_after is None
        else lingered_after - lingered_before,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    server = await start_server(
        "hub", args.out / f"{args.name}-server.log", args.hub_arg, inprocess=True
    )
    try:
        result = await measure(server.url, args.connections, args.events, args.interval)
    finally:
        await server.stop()
    return {**result, "hub_args": args.hub_arg, "server": server.to_json()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.idle_latency", description=__doc__)
    parser.add_argument("-n", "--connections", type=int, default=1)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between events")
    parser.add_argument("--hub-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--out", type=Path, default=Path("loadtest-results"))
    parser.add_argument("--name", default="idle-latency")
    args = parser.parse_args(argv)
    if not (1 <= args.connections <= 1000 and 1 <= args.events <= 100_000 and args.interval > 0):
        parser.error("-n 1..1000, --events 1..100000, --interval > 0")
    result = asyncio.run(_run(args))
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2))
    lat = result["latency_ms"]
    print(
        f"{args.events} idle events x {args.connections} subscribers: publish -> decoded p50 "
        f"{lat['p50']} / p99 {lat['p99']} / max {lat['max']} ms; lingered flushes "
        f"{result['lingered_flushes']} -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `filters` scenario: what many distinct filters and subscription churn cost the hub.

One hub, three variants run one after the other, each on fresh projects:
- `single`: N subscribers sharing one filter of P patterns (the baseline);
- `distinct`: N subscribers with P patterns each, all different (one group per subscriber);
- `churn`: as `distinct`, plus C sockets that subscribe and unsubscribe P new patterns at
  `churn_rate` ops/s each (under the hub's per-socket op limit).
Each variant publishes B batches (one every `batch_interval` s) of K events whose types are new
(none matches a filter) plus one event every subscriber matches, and waits until every
subscriber has it. A bystander on
another project pings every 80 ms throughout. Reported per variant: hub CPU seconds, time from
each publish to the last delivery, bystander ping p50/p99/max, and the ratios against `single`.
Bounded in count and time; loopback only (the server is started on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .publisher import HttpConnection
from .servers import one_hub
from .system import ProcSampler

__all__ = ["VARIANTS", "FilterParams", "run_filters"]

VARIANTS: Final = ("single", "distinct", "churn")
HIT_TYPE: Final = "bench.hit"
PING_INTERVAL_S: Final = 0.08  # the bystander's pace in the finding this measures


@dataclass(frozen=True)
class FilterParams:
    connections: int = 1000
    batches: int = 10
    batch: int = 1000  # events per publish: batch - 1 new types and one every filter matches
    patterns: int = 32  # per subscriber
    churners: int = 100
    churn_rate: float = 18.0  # ops/s per churning socket
    batch_interval: float = 0.5  # seconds between publishes (churn and pings run meanwhile)
    connect_concurrency: int = 100
    timeout: float = 120.0  # per phase (connect, each batch's delivery)

    def __post_init__(self) -> None:
        if not 1 <= self.connections <= 20_000 or not 1 <= self.batches <= 1000:
            raise ValueError("connections must be 1-20000 and batches 1-1000")
        if not 2 <= self.batch <= 1000 or not 2 <= self.patterns <= 32:
            raise ValueError("batch must be 2-1000 and patterns 2-32 (the hub's limits)")
        if not 0 <= self.churners <= 1000 or not 0 < self.churn_rate <= 20:
            raise ValueError("churners must be 0-1000 and churn_rate in (0, 20]")
        if not 0 <= self.batch_interval <= 10:
            raise ValueError("batch_interval must be 0-10 s")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def subscriber_patterns(variant: str, tag: str, i: int, count: int) -> list[str]:
    """`bench.hit.*` plus count - 1 patterns nothing published matches: shared or own."""
    owner = "all" if variant == "single" else f"s{i}"
    own = [f"{tag}.{owner}.p{j}.*" if j % 2 else f"*.{tag}_{owner}_{j}" for j in range(count - 1)]
    return [f"{HIT_TYPE}.*", *own]


async def _ping_until(url: str, stop: Any) -> dict[str, Any]:
    """The bystander: pings on its own socket every 80 ms until `stop`; round trips in ms."""
    rtts: list[float] = []
    closed = None
    async with connect(url) as ws:
        await ws.recv()  # welcome
        try:
            for i in range(10_000_000):
                if stop.is_set():
                    break
                sent = time.perf_counter()
                await ws.send('{"op":"ping","id":%d}' % i)  # noqa: UP031
                while msgspec.json.decode(await ws.recv())["op"] != "pong":
                    pass
                rtts.append((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(PING_INTERVAL_S)
        except ConnectionClosed as exc:
            closed = str(exc)
    return {"rtts": rtts, "closed": closed}


async def _churn_until(base: str, tag: str, p: FilterParams, stop: Any, out: Any) -> int:
    """The churning sockets, connected, then churning until `stop`; ops sent."""
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(connect(base, max_size=None)) for _ in range(p.churners)
        ]
        for ws in sockets:
            await ws.recv()  # welcome
        out.send("ready")
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            done.set()

        watcher = asyncio.create_task(watch())
        ops = await asyncio.gather(*(_churn(ws, tag, i, p, done) for i, ws in enumerate(sockets)))
        await watcher
        return sum(ops)


def _helper_main(
    role: str, url: str, tag: str, params: dict[str, Any], stop: Any, out: Any
) -> None:
    """A helper process (bystander or churners), so its work and the generator's do not skew
    each other's timing: it reports "ready", then its result."""
    p = FilterParams(**params)
    if role == "bystander":
        out.send("ready")
        out.send(asyncio.run(_ping_until(url, stop)))
    else:
        out.send(asyncio.run(_churn_until(url, tag, p, stop, out)))


class _Helper:
    def __init__(self, role: str, url: str, tag: str, p: FilterParams, stop: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=_helper_main, args=(role, url, tag, p.to_json(), stop, child), daemon=True
        )
        self.proc.start()
        child.close()

    async def receive(self, timeout: float) -> Any:
        if not await asyncio.to_thread(self.conn.poll, timeout):
            raise RuntimeError("a helper process did not answer in time")
        return self.conn.recv()

    async def close(self) -> None:
        await asyncio.to_thread(self.proc.join, 10)
        if self.proc.is_alive():
            self.proc.kill()


class _Subscriber:
    def __init__(self, ws: ClientConnection, hits: Callable[[int], None]) -> None:
        self.ws = ws
        self.closed: str | None = None
        self._hits = hits
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for message in self.ws:
                decoded = msgspec.json.decode(message)
                for frame in decoded if isinstance(decoded, list) else [decoded]:
                    if frame.get("op") == "event" and frame["type"].startswith(HIT_TYPE):
                        self._hits(int(frame["type"].rsplit(".b", 1)[1]))
        except ConnectionClosed as exc:
            self.closed = str(exc)


async def _churn(ws: ClientConnection, tag: str, socket: int, p: FilterParams, stop: Any) -> int:
    """Subscribe `patterns` new patterns, unsubscribe them, again, at churn_rate; ops sent."""
    loop = asyncio.get_running_loop()
    start, op = loop.time(), 0
    reader = asyncio.create_task(_drain(ws))
    try:
        while not stop.is_set():
            group = [f"{tag}.c{socket}.o{op // 2}.p{j}.*" for j in range(p.patterns)]
            kind = "subscribe" if op % 2 == 0 else "unsubscribe"
            await ws.send(msgspec.json.encode({"op": kind, "id": op, "types": group}).decode())
            op += 1
            delay = start + op / p.churn_rate - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    except ConnectionClosed:
        pass
    finally:
        reader.cancel()
    return op


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def _publish(http: HttpConnection, project: str, body: bytes) -> int:
    """POST one batch; once more on a fresh connection if the idle one was closed."""
    try:
        status, _ = await http.post(f"/v1/projects/{project}/events", body)
    except ConnectionError:
        status, _ = await http.post(f"/v1/projects/{project}/events", body)
    return status


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def _variant(
    variant: str, p: FilterParams, host: str, port: int, sampler: ProcSampler | None
) -> dict[str, Any]:
    tag = f"f{secrets.token_hex(3)}"
    project, quiet = f"bench-{tag}", f"bench-{tag}-quiet"
    base = f"ws://{host}:{port}/v1/projects"
    received = [0] * p.batches
    delivered = [asyncio.Event() for _ in range(p.batches)]
    async with contextlib.AsyncExitStack() as stack:
        gate = asyncio.Semaphore(p.connect_concurrency)

        async def open_socket(url: str) -> ClientConnection:
            async with gate:
                ws = await asyncio.wait_for(
                    stack.enter_async_context(connect(url, max_size=None)), p.timeout
                )
                msgspec.json.decode(await ws.recv())  # welcome
                return ws

        def hit(batch: int) -> None:
            received[batch] += 1
            if received[batch] == p.connections:
                delivered[batch].set()

        started = time.perf_counter()
        sockets = await asyncio.gather(
            *(
                open_socket(
                    f"{base}/{project}/ws?types="
                    + ",".join(subscriber_patterns(variant, tag, i, p.patterns))
                )
                for i in range(p.connections)
            )
        )
        connect_s = time.perf_counter() - started
        subscribers = [_Subscriber(ws, hit) for ws in sockets]
        stop = multiprocessing.get_context("spawn").Event()
        helpers = [_Helper("bystander", f"{base}/{quiet}/ws", tag, p, stop)]
        if variant == "churn" and p.churners:
            helpers.append(_Helper("churn", f"{base}/{project}/ws", tag, p, stop))
        for helper in helpers:
            assert await helper.receive(p.timeout) == "ready"
        http = HttpConnection(host, port)
        before = sampler.sample() if sampler else None
        batch_ms: list[float] = []
        complete = True
        next_at = time.perf_counter()
        try:
            for b in range(p.batches):
                events = [{"type": f"{tag}.new.b{b}.t{n}", "data": n} for n in range(p.batch - 1)]
                events.append({"type": f"{HIT_TYPE}.b{b}", "data": b})
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += p.batch_interval
                sent = time.perf_counter()
                status = await _publish(http, project, msgspec.json.encode(events))
                if status != 202:
                    raise RuntimeError(f"publish answered {status}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(delivered[b].wait(), p.timeout)
                complete = complete and delivered[b].is_set()
                batch_ms.append(round((time.perf_counter() - sent) * 1000, 1))
        finally:
            after = sampler.sample() if sampler else None
            stop.set()
            await http.close()
        results = [await helper.receive(p.timeout) for helper in helpers]
        for helper in helpers:
            await helper.close()
        pings: dict[str, Any] = results[0]
        ops: int = results[1] if len(results) > 1 else 0
        rtts: list[float] = pings["rtts"]
        return {
            "variant": variant,
            "connect_seconds": round(connect_s, 2),
            "complete": complete,
            "hits_received": sum(received),
            "hits_expected": p.connections * p.batches,
            "subscribers_closed": sum(s.closed is not None for s in subscribers),
            "bystander_closed": pings["closed"],
            "hub_cpu_seconds": round(after.cpu - before.cpu, 2) if before and after else None,
            "batch_delivery_ms": {
                "median": round(statistics.median(batch_ms), 1),
                "max": max(batch_ms),
            },
            "bystander_ping_ms": {
                "count": len(rtts),
                "p50": _percentile(rtts, 0.5),
                "p99": _percentile(rtts, 0.99),
                "max": round(max(rtts), 1) if rtts else None,
            },
            "churn_ops": ops,
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


async def run_filters(
    p: FilterParams,
    out_dir: Path,
    *,
    url: str | None = None,
    server_pid: int | None = None,
    server_args: list[str] | None = None,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Run the variants against one hub (started here unless `url` names one on loopback)."""
    hub = one_hub("filters", out_dir, url=url, server_pid=server_pid, server_args=server_args)
    async with hub as (host, port, sampler):
        runs = [await _variant(v, p, host, port, sampler) for v in variants]
    single = runs[0] if runs and runs[0]["variant"] == "single" else None
    ratios = {}
    if single is not None:
        for run in runs[1:]:
            ratios[run["variant"]] = {
                "hub_cpu": _ratio(run["hub_cpu_seconds"], single["hub_cpu_seconds"]),
                "batch_delivery_median": _ratio(
                    run["batch_delivery_ms"]["median"], single["batch_delivery_ms"]["median"]
                ),
                "bystander_p99": _ratio(
                    run["bystander_ping_ms"]["p99"], single["bystander_ping_ms"]["p99"]
                ),
            }
    ok = all(
        r["complete"] and not r["subscribers_closed"] and r["bystander_closed"] is None
        for r in runs
    )
    return {"scenario": "filters", "params": p.to_json(), "runs": runs, "ratios": ratios, "ok": ok}

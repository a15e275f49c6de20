"""The `keys` scenario: does a per-entity subscription cost the fan-out per subscriber?

One hub, two variants one after the other, each on a fresh project with the same stream:
E events at `rate` events/s (in requests of `batch`), event i keyed `bench.key/k<i mod N>`.
- `unfiltered`: N subscribers without a filter, each receiving every event (the baseline:
  one group, one frame per flush);
- `keyed`: N subscribers, subscriber s with `keys=bench.key/k<s>`, each receiving only its
  own key's events (N groups: a hub that scanned them per event would cost O(N) per event).
Latency is receive wall clock minus the event's `ts` (publish time at the hub, ms), binned at
0.1 ms; reported per variant: p50/p99/max, deliveries, hub CPU seconds, and whether every
subscriber got exactly its events (the seqs the hub answered for its key, in order, once).
CPU seconds of the generator (its worker processes and the publisher) and of everything else
on the machine over the same window say whether a latency is the hub's or a saturated
machine's: the generator decodes N times more frames in the unfiltered variant.
The ratio `keyed p99 / unfiltered p99` is the figure of issue 14 (acceptance: within 2x).
Subscribers run in `workers` processes reading raw sockets (loadtest/subscriber.py); loopback
only; every phase is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import secrets
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import msgspec

from .mux import ReadMux
from .publisher import EVENT_TYPE, HttpConnection
from .servers import one_hub
from .subscriber import Stats, Subscriber
from .system import ProcSampler, cpu_times

__all__ = ["VARIANTS", "KeyParams", "run_keys"]

VARIANTS: Final = ("unfiltered", "keyed")
KEY_PREFIX: Final = "bench.key/k"
BIN_PER_MS: Final = 10  # latency bins of 0.1 ms
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")  # /proc/stat jiffies per second


@dataclass(frozen=True)
class KeyParams:
    connections: int = 1000
    events: int = 1000
    rate: float = 100.0  # events/s
    batch: int = 10  # events per publish request
    workers: int = 2  # subscriber processes
    pad: int = 64
    connect_concurrency: int = 100  # per worker
    timeout: float = 120.0  # per phase (connect, publish, delivery)

    def __post_init__(self) -> None:
        if not 1 <= self.connections <= 20_000 or not 1 <= self.events <= 1_000_000:
            raise ValueError("connections must be 1-20000 and events 1-1000000")
        if not 0 < self.rate <= 100_000 or not 1 <= self.batch <= 1000:
            raise ValueError("rate must be in (0, 100000] and batch 1-1000")
        if not 1 <= self.workers <= 64 or not 0 <= self.pad <= 65_536:
            raise ValueError("workers must be 1-64 and pad 0-65536")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def key_of(i: int, connections: int) -> str:
    return f"{KEY_PREFIX}{i % connections}"


class _Frame(msgspec.Struct, gc=False):
    op: str
    seq: int = 0
    ts: int = 0


_decode: Final = msgspec.json.Decoder(_Frame | list[_Frame]).decode


class _KeySubscriber(Subscriber):
    """Keeps every seq it receives (to check exactness) and a latency histogram."""

    def __init__(self, project: str, key: str | None, lat: dict[int, int]) -> None:
        super().__init__(project, Stats(), lambda _: None, keys=key)
        self.key = key
        self.seqs: list[int] = []
        self.lat = lat
        self.bad = 0

    def on_text(self, payload: bytes) -> None:
        try:
            decoded = _decode(payload)
        except msgspec.MsgspecError:
            self.bad += 1
            return
        now = time.time() * 1000
        lat = self.lat
        for f in decoded if isinstance(decoded, list) else (decoded,):
            if f.op == "event":
                self.seqs.append(f.seq)
                b = int((now - f.ts) * BIN_PER_MS)
                lat[b] = lat.get(b, 0) + 1
            elif f.op == "welcome" and self._ready is not None and not self._ready.done():
                self.live = True
                self._ready.set_result(None)


def _worker_main(
    host: str, port: int, project: str, keys: list[str | None], p: dict[str, Any], out: Any
) -> None:
    asyncio.run(_worker(host, port, project, keys, KeyParams(**p), out))


async def _worker(
    host: str, port: int, project: str, keys: list[str | None], p: KeyParams, out: Connection
) -> None:
    loop = asyncio.get_running_loop()
    mux = ReadMux(loop, 0.0005)
    lat: dict[int, int] = {}
    subs = [_KeySubscriber(project, key, lat) for key in keys]
    gate = asyncio.Semaphore(p.connect_concurrency)

    async def open_one(sub: _KeySubscriber) -> bool:
        async with gate:
            for _ in range(5):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sub.open(host, port, mux), p.timeout / 5)
                    return True
        return False

    connected = sum(await asyncio.gather(*(open_one(s) for s in subs)))
    out.send(("connected", connected))
    if not await asyncio.to_thread(out.poll, p.timeout * 3):
        return
    expected: dict[str, list[int]] = out.recv()  # key ("" for every event) -> seqs in order

    def want(sub: _KeySubscriber) -> list[int]:
        return expected.get(sub.key or "", [])  # fewer events than keys: some get none

    deadline = loop.time() + p.timeout
    while loop.time() < deadline and any(len(s.seqs) < len(want(s)) for s in subs):
        await asyncio.sleep(0.05)
    summary = {
        "connected": connected,
        "deliveries": sum(len(s.seqs) for s in subs),
        "expected": sum(len(want(s)) for s in subs),
        "inexact": sum(s.seqs != want(s) for s in subs),
        "closed": sum(not s.is_open for s in subs),
        "bad_frames": sum(s.bad for s in subs),
        "lat": lat,
    }
    for sub in subs:
        sub.close()
    mux.close()
    out.send(("summary", summary))


class _Worker:
    def __init__(
        self, host: str, port: int, project: str, keys: list[str | None], p: KeyParams
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main,
            args=(host, port, project, keys, p.to_json(), child),
            daemon=True,
        )
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        return self.proc.pid or 0

    async def receive(self, kind: str, timeout: float) -> Any:
        if not await asyncio.to_thread(self.conn.poll, timeout):
            raise RuntimeError(f"a subscriber worker sent no {kind!r} in time")
        got, payload = self.conn.recv()
        if got != kind:
            raise RuntimeError(f"a subscriber worker sent {got!r}, not {kind!r}")
        return payload

    async def close(self) -> None:
        await asyncio.to_thread(self.proc.join, 10)
        if self.proc.is_alive():
            self.proc.kill()


async def _publish(
    http: HttpConnection, project: str, p: KeyParams, pad: str
) -> dict[str, list[int]]:
    """Publish the stream at the rate; the seqs the hub answered, per key ("" for all)."""
    by_key: dict[str, list[int]] = {"": []}
    started = time.perf_counter()
    for first in range(0, p.events, p.batch):
        due = started + first / p.rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        count = min(p.batch, p.events - first)
        keys = [key_of(i, p.connections) for i in range(first, first + count)]
        body = msgspec.json.encode(
            [{"type": EVENT_TYPE, "key": k, "data": {"pad": pad}} for k in keys]
        )
        status, answer = await http.post(f"/v1/projects/{project}/events", body)
        if status != 202:
            raise RuntimeError(f"publish answered {status}: {answer[:200]!r}")
        seqs: list[int] = msgspec.json.decode(answer)["seqs"]
        for key, seq in zip(keys, seqs, strict=True):
            by_key.setdefault(key, []).append(seq)
            by_key[""].append(seq)
    return by_key


def _percentile(hist: dict[int, int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return round(b / BIN_PER_MS, 1)
    return round(max(hist) / BIN_PER_MS, 1)


async def _variant(
    variant: str, p: KeyParams, host: str, port: int, sampler: ProcSampler | None
) -> dict[str, Any]:
    project = f"bench-keys-{secrets.token_hex(3)}"
    keys: list[str | None] = [
        key_of(s, p.connections) if variant == "keyed" else None for s in range(p.connections)
    ]
    workers = [
        _Worker(host, port, project, keys[w :: p.workers], p)
        for w in range(min(p.workers, p.connections))
    ]
    try:
        started = time.perf_counter()
        connected = sum([await w.receive("connected", p.timeout * 2) for w in workers])
        connect_s = time.perf_counter() - started
        if connected != p.connections:
            raise RuntimeError(f"{variant}: only {connected} of {p.connections} connected")
        http = HttpConnection(host, port)
        generator = [ProcSampler(os.getpid())] + [ProcSampler(w.pid) for w in workers]
        gen_before = [g.sample() for g in generator]
        machine_before = cpu_times()
        before = sampler.sample() if sampler else None
        try:
            by_key = await asyncio.wait_for(_publish(http, project, p, "x" * p.pad), p.timeout)
        finally:
            await http.close()
        for w in workers:
            w.conn.send(by_key)
        summaries = [await w.receive("summary", p.timeout * 2) for w in workers]
        after = sampler.sample() if sampler else None
        machine_after = cpu_times()
        gen_cpu = sum(
            a.cpu - b.cpu
            for a, b in zip([g.sample() for g in generator], gen_before, strict=True)
            if a is not None and b is not None
        )
    finally:
        for w in workers:
            await w.close()
    lat: dict[int, int] = {}
    for summary in summaries:
        for b, n in summary.pop("lat").items():
            lat[b] = lat.get(b, 0) + n
    total = {k: sum(s[k] for s in summaries) for k in summaries[0]}
    hub_cpu = round(after.cpu - before.cpu, 2) if before and after else None
    machine_cpu = (machine_after[0] - machine_before[0]) / CLK_TCK
    return {
        "variant": variant,
        "connect_seconds": round(connect_s, 2),
        **total,
        "exact": total["inexact"] == 0 and total["deliveries"] == total["expected"],
        "hub_cpu_seconds": hub_cpu,
        "generator_cpu_seconds": round(gen_cpu, 2),
        "others_cpu_seconds": round(machine_cpu - gen_cpu - (hub_cpu or 0.0), 2),
        "seconds": round(time.perf_counter() - started - connect_s, 2),
        "latency_ms": {
            "p50": _percentile(lat, 0.5),
            "p99": _percentile(lat, 0.99),
            "max": round(max(lat) / BIN_PER_MS, 1) if lat else None,
        },
    }


async def run_keys(
    p: KeyParams,
    out_dir: Path,
    *,
    url: str | None = None,
    server_pid: int | None = None,
    server_args: list[str] | None = None,
) -> dict[str, Any]:
    """Run both variants against one hub (started here unless `url` names one on loopback)."""
    hub = one_hub("keys", out_dir, url=url, server_pid=server_pid, server_args=server_args)
    async with hub as (host, port, sampler):
        runs = [await _variant(v, p, host, port, sampler) for v in VARIANTS]
    base, keyed = runs
    p99_ratio = None
    if base["latency_ms"]["p99"] and keyed["latency_ms"]["p99"] is not None:
        p99_ratio = round(keyed["latency_ms"]["p99"] / base["latency_ms"]["p99"], 2)
    ok = all(r["exact"] and not r["closed"] and not r["bad_frames"] for r in runs)
    return {
        "scenario": "keys",
        "params": p.to_json(),
        "runs": runs,
        "ratios": {
            "keyed_p99_over_unfiltered": p99_ratio,
            "keyed_hub_cpu_over_unfiltered": (
                round(keyed["hub_cpu_seconds"] / base["hub_cpu_seconds"], 2)
                if keyed["hub_cpu_seconds"] is not None and base["hub_cpu_seconds"]
                else None
            ),
        },
        "ok": ok,
    }

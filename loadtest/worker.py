"""A worker process: holds a share of the subscribers and reports to the coordinator.

Protocol over a multiprocessing Pipe, (kind, payload) tuples. Coordinator -> worker: `final`
({project: last seq published}), `drop` (reconnect storm), `stall` / `unstall` (slow
consumers), `stop`. Worker -> coordinator: `connected`, `tick` (every second: deliveries and an
encoded interval HDR histogram), `storm` (all dropped subscribers welcomed again),
`complete` (every subscriber has seen the final seqs), `summary` (totals, then it exits).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from . import hdr
from .mux import ReadMux
from .subscriber import Stats, Subscriber
from .system import raise_nofile_limit

__all__ = ["NO_RETRY", "WorkerSpec", "worker_main"]

# Close codes after which docs/protocol.md ("WebSocket subscription", its close-code table)
# says not to reconnect (fix the client, or stop).
NO_RETRY: Final = frozenset({1000, 1003, 1007, 1008, 1009, 4001, 4003, 4400})
CONNECT_ATTEMPTS: Final = 5
RECONNECT_ATTEMPTS: Final = 20
POLL_S: Final = 0.05


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    host: str
    port: int
    assignments: list[tuple[str, bool]]  # (project, slow) per subscriber
    types: str | None
    connect_concurrency: int
    connect_timeout_s: float
    max_seconds: float  # safety net: the worker stops by itself after this long
    read_interval_ms: float = 0.0  # see ReadMux
    tick_s: float = 1.0


def _backoff(attempt: int) -> float:
    return min(2.0, 0.05 * 2.0**attempt) * random.uniform(0.5, 1.5)


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.stats = Stats()
        self.slow_stats = Stats()
        self.subs = [
            Subscriber(
                project,
                self.slow_stats if slow else self.stats,
                self._on_lost,
                slow=slow,
                types=spec.types,
            )
            for project, slow in spec.assignments
        ]
        self.total = hdr.new_histogram()
        self.slow_total = hdr.new_histogram()
        self.interval = hdr.new_histogram()
        self.connect_hist = hdr.new_histogram()
        self.final: dict[str, int] | None = None
        self.completed = False
        self.stalled = False
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.closes: Counter[int] = Counter()
        self.reconnects = 0
        self.reconnect_failures = 0
        self.storm_drops = 0
        self.storm_started = 0.0
        self.storm_jitter_s = 0.0
        self.storm_pending: set[Subscriber] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.mux: ReadMux

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        try:
            self.conn.send((kind, payload))
        except OSError:  # coordinator gone: nothing left to report to
            self.stop_event.set()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.mux = ReadMux(loop, self.spec.read_interval_ms / 1000)
        loop.add_reader(self.conn.fileno(), self._on_command)
        deadline = time.monotonic() + self.spec.max_seconds
        started = time.time()
        sem = asyncio.Semaphore(self.spec.connect_concurrency)
        results = await asyncio.gather(*(self._connect(sub, sem) for sub in self.subs))
        gc.collect()
        gc.freeze()  # the subscribers live all run long: keep them out of every collection
        self.send(
            "connected",
            {
                "worker": self.spec.index,
                "connected": sum(results),
                "failed": len(results) - sum(results),
                "seconds": time.time() - started,
                "hist": self.connect_hist.encode(),
            },
        )
        next_tick = time.monotonic() + self.spec.tick_s
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.stop_event.wait(), POLL_S)
            except TimeoutError:
                pass
            if time.monotonic() >= next_tick:
                next_tick += self.spec.tick_s
                self._tick()
            self._check_complete()
        timed_out = not self.stop_event.is_set()
        self.stopping = True
        loop.remove_reader(self.conn.fileno())
        for task in list(self.tasks):
            task.cancel()
        self._tick(final=True)
        for sub in self.subs:
            sub.close()
        self.mux.close()
        self.send("summary", self._summary(timed_out))

    async def _connect(self, sub: Subscriber, sem: asyncio.Semaphore) -> bool:
        async with sem:
            for attempt in range(CONNECT_ATTEMPTS):
                if self.stop_event.is_set():
                    return False
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(
                        sub.open(self.spec.host, self.spec.port, self.mux),
                        self.spec.connect_timeout_s,
                    )
                except Exception:
                    await asyncio.sleep(_backoff(attempt))
                    continue
                self.connect_hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                return True
        return False

    def _on_lost(self, sub: Subscriber) -> None:
        if self.stopping:
            return
        self.closes[sub.close_code] += 1
        if sub.close_code not in NO_RETRY:
            self._schedule_reconnect(sub, _backoff(0))

    def _schedule_reconnect(self, sub: Subscriber, delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._reconnect(sub, delay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reconnect(self, sub: Subscriber, delay: float) -> None:
        for attempt in range(RECONNECT_ATTEMPTS):
            await asyncio.sleep(delay)
            self.reconnects += 1
            try:
                await asyncio.wait_for(
                    sub.open(self.spec.host, self.spec.port, self.mux), self.spec.connect_timeout_s
                )
            except Exception:
                delay = _backoff(attempt + 1)
                continue
            if sub.slow and self.stalled:
                sub.pause()
            if sub in self.storm_pending:
                self.storm_pending.discard(sub)
                if not self.storm_pending:
                    self.send(
                        "storm",
                        {"worker": self.spec.index, "seconds": time.time() - self.storm_started},
                    )
            return
        self.reconnect_failures += 1

    # --- commands ------------------------------------------------------------------------

    def _on_command(self) -> None:
        try:
            while self.conn.poll():
                kind, payload = self.conn.recv()
                self._handle(kind, payload)
        except (EOFError, OSError):
            self.stop_event.set()

    def _handle(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "final":
            self.final = payload["heads"]
        elif kind == "drop":
            self.storm_jitter_s = payload["jitter_s"]
            self.storm_started = time.time()
            live = [sub for sub in self.subs if sub.live]
            self.storm_pending = set(live)
            for sub in live:  # like a network drop: no close frame, then resume with since
                sub.abort()
                self.storm_drops += 1
                self._schedule_reconnect(sub, random.uniform(0, self.storm_jitter_s))
            if not live:
                self.send("storm", {"worker": self.spec.index, "seconds": 0.0})
        elif kind in ("stall", "unstall"):
            self.stalled = kind == "stall"
            for sub in self.subs:
                if sub.slow:
                    if self.stalled:
                        sub.pause()
                    else:
                        sub.resume()
        elif kind == "stop":
            self.stop_event.set()

    # --- reporting -----------------------------------------------------------------------

    def _tick(self, final: bool = False) -> None:
        now = int(time.time() * 100_000)
        for stats in (self.stats, self.slow_stats):
            if final or now >= stats.second_end:
                stats.roll(now)
        seconds = []
        for second, lat in self.stats.done:
            n = hdr.flush_counts(lat, self.interval)
            seconds.append({"second": second, "deliveries": n, "hist": self.interval.encode()})
            self.total.add(self.interval)
            self.interval.reset()
        slow = [
            {"second": second, "deliveries": hdr.flush_counts(lat, self.slow_total)}
            for second, lat in self.slow_stats.done
        ]
        self.stats.done.clear()
        self.slow_stats.done.clear()
        self.send(
            "tick",
            {
                "worker": self.spec.index,
                "seconds": seconds,
                "slow_seconds": slow,
                "live": sum(1 for sub in self.subs if sub.live),
                "reconnects": self.reconnects,
                "closes": dict(self.closes),
            },
        )

    def _check_complete(self) -> None:
        if self.completed or self.final is None:
            return
        final = self.final
        if all(
            sub.tracker.last >= final.get(sub.project, 0)
            for sub in self.subs
            if sub.tracker.started
        ):
            self.completed = True
            self.send("complete", {"worker": self.spec.index, "t": time.time()})

    def _summary(self, timed_out: bool) -> dict[str, Any]:
        final = self.final or {}
        started = [sub for sub in self.subs if sub.tracker.started]

        def loss(subs: list[Subscriber]) -> dict[str, int]:
            return {
                "missing": sum(s.tracker.missing(final.get(s.project, 0)) for s in subs),
                "duplicates": sum(s.tracker.duplicates for s in subs),
                "out_of_order": sum(s.tracker.out_of_order for s in subs),
                "gap_skipped": sum(s.tracker.gap_skipped for s in subs),
                "incomplete": sum(1 for s in subs if s.tracker.last < final.get(s.project, 0)),
            }

        last = max(self.stats.last_delivery, self.slow_stats.last_delivery) / 100_000
        errors = self.stats.errors + self.slow_stats.errors
        return {
            "worker": self.spec.index,
            "timed_out": timed_out,
            "subscribers": len(self.subs),
            "never_connected": len(self.subs) - len(started),
            "deliveries": self.stats.deliveries,
            "slow_deliveries": self.slow_stats.deliveries,
            "last_delivery": last or None,
            "hist": self.total.encode(),
            "slow_hist": self.slow_total.encode(),
            "loss": loss(started),
            "slow_loss": loss([s for s in started if s.slow]),
            "foreign_project": self.stats.foreign + self.slow_stats.foreign,
            "before_welcome": self.stats.early + self.slow_stats.early,
            "bad_frames": self.stats.bad_frames + self.slow_stats.bad_frames,
            "gaps": self.stats.gaps + self.slow_stats.gaps,
            "replays": self.stats.replays + self.slow_stats.replays,
            "errors": dict(errors),
            "closes": {str(code): n for code, n in self.closes.items()},
            "slow_closes": sum(1 for s in self.subs if s.slow and s.welcomes > 1),
            "reconnects": self.reconnects,
            "reconnect_failures": self.reconnect_failures,
            "storm_drops": self.storm_drops,
        }


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Process entry point (multiprocessing spawn target)."""
    raise_nofile_limit()
    try:
        asyncio.run(Worker(conn, spec).run())
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()

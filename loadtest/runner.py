"""One run: one scenario against one target, from server start to the result dict.

Phases, each bounded: start the server, connect every subscriber, publish (with the scenario's
timed actions), tell workers the final seqs, wait until every subscriber has them (or the drain
timeout), collect summaries, stop everything.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import hdr
from .hub_metrics import fanout_counters, fanout_summary
from .inprocess import InProcessPublisher
from .pool import WorkerPool
from .publisher import Publisher, PublishPlan
from .results import MIB, RunRecorder, loss_of, merge_hists, sum_dicts
from .scenarios import RunParams, actions
from .servers import ServerProcess, start_server
from .system import (
    ProcSample,
    ProcSampler,
    busy_percent,
    cpu_times,
    find_listening_pid,
    loopback_address,
    machine_info,
)
from .worker import WorkerSpec

__all__ = ["Progress", "run_once"]

Progress = Callable[[dict[str, Any]], None]  # receives live state for the display


def _specs(p: RunParams, addresses: list[tuple[str, int]], projects: list[str]) -> list[WorkerSpec]:
    per_worker: list[list[tuple[str, bool]]] = [[] for _ in range(p.workers)]
    for i in range(p.connections):  # round-robin, so projects and slow readers spread evenly
        per_worker[i % p.workers].append((projects[i % p.projects], i < p.slow))
    budget = p.connect_timeout * 6 + p.duration + max(p.stall, p.storm_at) + p.drain_timeout + 120
    return [
        WorkerSpec(
            i,
            *addresses[i % len(addresses)],  # several hub instances: workers round-robin
            subs,
            p.types,
            p.connect_concurrency,
            p.connect_timeout,
            budget,
            p.read_interval,
        )
        for i, subs in enumerate(per_worker)
    ]


def _cpu_percent(a: ProcSample | None, b: ProcSample | None) -> float | None:
    if a is None or b is None or b.t <= a.t:
        return None
    return round(100 * (b.cpu - a.cpu) / (b.t - a.t), 1)


async def run_once(
    target: str,
    params: RunParams,
    out_dir: Path,
    run_name: str,
    progress: Progress,
    *,
    url: str | list[str] | None = None,
    server_pid: int | None = None,
    server_args: list[str] | None = None,
) -> dict[str, Any]:
    # Other work on the machine skews every figure: measure it, so the result says so.
    before = cpu_times()
    await asyncio.sleep(1.0)
    busy = busy_percent(before, cpu_times())
    server: ServerProcess | None = None
    if url is None:
        server = await start_server(
            target,
            out_dir / f"{run_name}-server.log",
            server_args,
            inprocess=params.publisher == "inprocess",
        )
        host, port, pid = server.host, server.port, server.pid
        server_json = server.to_json()
        addresses = [(host, port)]
    else:
        urls = [url] if isinstance(url, str) else url
        addresses = [loopback_address(u) for u in urls]
        host, port = addresses[0]
        pid = server_pid or find_listening_pid(port)
        # RSS and CPU are those of the first server (the one events are published to).
        server_json = {
            "target": target,
            "url": urls[0],
            "urls": urls,
            "pid": pid,
            "started_by_tool": False,
        }
    try:
        result = await _Run(target, params, host, port, pid, progress, addresses).execute()
    finally:
        if server is not None:
            await server.stop()
            server_json = server.to_json()
    result["server"] = server_json
    result["machine"]["busy_before_percent"] = busy
    return result


class _Run:
    def __init__(
        self,
        target: str,
        params: RunParams,
        host: str,
        port: int,
        pid: int | None,
        progress: Progress,
        addresses: list[tuple[str, int]] | None = None,
    ) -> None:
        self.target = target
        self.addresses = addresses or [(host, port)]
        self.p = params
        self.host = host
        self.port = port
        self.hub = ProcSampler(pid) if pid else None
        self.progress = progress
        self.recorder = RunRecorder()
        tag = secrets.token_hex(3)  # fresh projects: a reused hub cannot mix old seqs in
        self.projects = [f"bench-{tag}-{i}" for i in range(params.projects)]
        self.state: dict[str, Any] = {
            "target": target,
            "scenario": params.scenario,
            "connections": params.connections,
            "events": params.events,
            "phase": "starting",
            "live": 0,
            "published": 0,
        }
        self.publisher: Publisher | InProcessPublisher | None = None
        self.rss_peak = 0
        self.fanout: dict[str, float | int] | None = None  # the hub's framing, from /metrics

    def _on_tick(self, tick: dict[str, Any]) -> None:
        deliveries, hist = self.recorder.add_tick(tick)
        ticks = self.recorder.last_tick.values()
        self.state["live"] = sum(t["live"] for t in ticks)
        self.state["reconnects"] = sum(t["reconnects"] for t in ticks)
        self.state["deliveries_last"] = deliveries * len(ticks)  # one worker's, scaled
        if hist is not None:
            self.state["p99_last_ms"] = round(hist.get_value_at_percentile(99) / 1000, 2)

    async def _monitor(self) -> None:
        """Once a second: sample the hub, refresh the display (runs until cancelled)."""
        cpu = ProcSampler(self.hub.pid) if self.hub else None
        while True:
            sample = self._sample()
            percent = cpu.cpu_percent() if cpu else None
            published = self.publisher.published if self.publisher else 0
            self.state.update(
                published=published,
                hub_cpu=percent,
                hub_rss_mib=round(sample.rss / MIB, 1) if sample else None,
            )
            self.recorder.add_sample(
                time.time(), sample.rss if sample else None, percent, published
            )
            self.progress(dict(self.state))
            await asyncio.sleep(1.0)

    def _sample(self) -> ProcSample | None:
        sample = self.hub.sample() if self.hub else None
        if sample is not None:
            self.rss_peak = max(self.rss_peak, sample.rss)
        return sample

    async def execute(self) -> dict[str, Any]:
        p = self.p
        pool = WorkerPool(_specs(p, self.addresses, self.projects), self._on_tick)
        monitor = asyncio.create_task(self._monitor())
        rss_start = self._sample()
        started = time.time()
        try:
            pool.start()
            self.state["phase"] = "connecting"
            await pool.wait_until(
                lambda: pool.all_reported(pool.connected),
                p.connect_timeout * 6 + p.connections / 50 + 60,
            )
            connect_s = time.time() - started
            rss_connected = self._sample()
            gen = [ProcSampler(pid) for pid in [*pool.pids, os.getpid()]]
            gen_a = [s.sample() for s in gen]
            hub_a = self._sample()
            fanout_a = await fanout_counters(self.host, self.port)
            sys_a = cpu_times()

            self.state["phase"] = "publishing"
            self.recorder.started = time.time()
            plan = PublishPlan(
                self.projects, p.events, p.rate, p.batch, p.publishers, p.pad, p.duration
            )
            if p.publisher == "inprocess":
                self.publisher = InProcessPublisher(self.host, self.port, plan)
            else:
                self.publisher = Publisher(self.host, self.port, plan)
            timed = asyncio.gather(
                *(self._after(a.at, pool, a.command, a.payload) for a in actions(p))
            )
            published = await self.publisher.run()
            self.state["phase"] = "draining"
            await timed
            if p.scenario == "reconnect-storm":
                await pool.wait_until(lambda: pool.all_reported(pool.storm), p.drain_timeout)
            pool.send_all("final", {"heads": dict(published.heads)})
            drained = await pool.wait_until(
                lambda: pool.all_reported(pool.complete), p.drain_timeout
            )
            drained_at = time.time()
            hub_b = self._sample()
            self.fanout = fanout_summary(fanout_a, await fanout_counters(self.host, self.port))
            gen_b = [s.sample() for s in gen]
            sys_b = cpu_times()
            self.state["phase"] = "collecting"
            pool.send_all("stop")
            await pool.wait_until(lambda: pool.all_reported(pool.summaries), 60)
            rss_end = self._sample()
        finally:
            monitor.cancel()
            await pool.close()
        self.state.update(phase="done", published=published.published)
        self.progress(dict(self.state))
        gen_cpu = [_cpu_percent(a, b) for a, b in zip(gen_a, gen_b, strict=True)]
        result = self._result(
            pool,
            published,
            drained,
            started,
            connect_s,
            drained_at,
            (rss_start, rss_connected, rss_end),
            (hub_a, hub_b),
            gen_cpu,
        )
        # CPU that neither the server nor the generator used while measuring: other work on
        # the machine, which skews every figure of this run (percent of one core).
        machine_busy = busy_percent(sys_a, sys_b)
        ours = [result["hub"]["cpu_percent"], *gen_cpu]
        if machine_busy is not None and None not in ours:
            others = machine_busy * (os.cpu_count() or 1) - sum(v for v in ours if v)
            result["machine"]["others_cpu_percent"] = round(max(0.0, others), 1)
        else:
            result["machine"]["others_cpu_percent"] = None
        return result

    async def _after(
        self, delay: float, pool: WorkerPool, command: str, payload: dict[str, Any]
    ) -> None:
        await asyncio.sleep(delay)
        pool.send_all(command, payload)

    def _result(
        self,
        pool: WorkerPool,
        published: Any,
        drained: bool,
        started: float,
        connect_s: float,
        drained_at: float,
        rss: tuple[ProcSample | None, ...],
        hub_cpu: tuple[ProcSample | None, ProcSample | None],
        gen_cpu: list[float | None],
    ) -> dict[str, Any]:
        p = self.p
        summaries = [pool.summaries[i] for i in sorted(pool.summaries)]
        connected = [pool.connected[i] for i in sorted(pool.connected)]
        n_connected = sum(c["connected"] for c in connected)
        connect_hist = merge_hists([c["hist"] for c in connected])
        latency = merge_hists([s["hist"] for s in summaries])
        slow_latency = merge_hists([s["slow_hist"] for s in summaries])
        deliveries = sum(s["deliveries"] + s["slow_deliveries"] for s in summaries)
        last = max((s["last_delivery"] or 0 for s in summaries), default=0)
        pub_start = self.recorder.started
        window = (last - pub_start) if last > pub_start else None
        heads = published.heads  # fresh projects: every subscriber expects seqs 1..head
        expected = sum(heads.get(self.projects[i % p.projects], 0) for i in range(p.connections))
        loss = loss_of(summaries)
        rss_start, rss_connected, rss_end = rss
        peak = round(self.rss_peak / MIB, 1) if self.rss_peak else None
        per_conn = None
        if rss_start and rss_connected and n_connected:
            per_conn = round((rss_connected.rss - rss_start.rss) / n_connected / 1024, 2)
        errors = sum_dicts([s["errors"] for s in summaries])
        integrity = {
            **loss,
            "foreign_project": sum(s["foreign_project"] for s in summaries),
            "before_welcome": sum(s["before_welcome"] for s in summaries),
            "bad_frames": sum(s["bad_frames"] for s in summaries),
            "publish_seq_anomalies": published.seq_anomalies(),
        }
        ok = (
            drained
            and n_connected == p.connections
            and loss["missing"] == 0
            and loss["duplicates"] == 0
            and loss["out_of_order"] == 0
            and loss["gap_skipped"] == 0
            and integrity["foreign_project"] == 0
            and integrity["before_welcome"] == 0
            and not published.errors
            and not any(s["timed_out"] for s in summaries)
            and len(summaries) == pool.size
        )
        publish_s = published.finished - published.started
        details: dict[str, Any] = {}
        if p.scenario == "reconnect-storm":
            details = {
                "storm_reconnect_seconds": max(pool.storm.values(), default=None),
                "storm_drops": sum(s["storm_drops"] for s in summaries),
                "replays": sum(s["replays"] for s in summaries),
                "gaps": sum(s["gaps"] for s in summaries),
            }
        elif p.scenario == "soak":
            rss_series = [s["hub_rss_mib"] for s in self.recorder.series() if s["hub_rss_mib"]]
            details = {
                "rss_first_mib": rss_series[0] if rss_series else None,
                "rss_last_mib": rss_series[-1] if rss_series else None,
                "rss_growth_mib": round(rss_series[-1] - rss_series[0], 1) if rss_series else None,
            }
        elif p.scenario == "slow-consumer":
            details = {
                "slow_subscribers": p.slow,
                "stall_seconds": p.stall,
                "slow_latency_ms": hdr.summary_ms(slow_latency),
                "slow_loss": loss_of(summaries, "slow_loss"),
                "slow_reconnected": sum(s["slow_closes"] for s in summaries),
                "note": "latency_ms covers only the subscribers that kept reading",
            }
        return {
            "scenario": p.scenario,
            "target": self.target,
            "params": p.to_json(),
            "machine": machine_info(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "projects": self.projects,
            "connect": {
                "connections": p.connections,
                "connected": n_connected,
                "failed": p.connections - n_connected,
                "seconds": round(connect_s, 3),
                "per_connection_ms": hdr.summary_ms(connect_hist),
            },
            "publish": {
                "events": published.published,
                "requests": published.requests,
                "seconds": round(publish_s, 3),
                "events_per_second": round(published.published / publish_s, 1)
                if publish_s > 0
                else None,
                "errors": dict(published.errors),
                "request_ms": hdr.summary_ms(published.request_hist),
            },
            "delivery": {
                "expected": expected,
                "delivered": deliveries,
                "complete": drained,
                "seconds": round(window, 3) if window else None,
                "per_second": round(deliveries / window, 1) if window else None,
            },
            "latency_ms": hdr.summary_ms(latency),
            "loss": integrity,
            "connections": {
                "closes": sum_dicts([s["closes"] for s in summaries]),
                "reconnects": sum(s["reconnects"] for s in summaries),
                "reconnect_failures": sum(s["reconnect_failures"] for s in summaries),
                "errors": errors,
            },
            "hub": {
                "pid": self.hub.pid if self.hub else None,
                "rss_start_mib": _mib(rss_start),
                "rss_connected_mib": _mib(rss_connected),
                "rss_peak_mib": peak,
                "rss_end_mib": _mib(rss_end),
                "rss_per_connection_kib": per_conn,
                "cpu_percent": _cpu_percent(*hub_cpu),
                "cpu_seconds": round(hub_cpu[1].cpu - hub_cpu[0].cpu, 2)
                if hub_cpu[0] and hub_cpu[1]
                else None,
                "fanout": self.fanout,
            },
            "generator": {
                "workers": p.workers,
                "worker_cpu_percent": gen_cpu[:-1],
                "publisher_cpu_percent": gen_cpu[-1],
            },
            "series": self.recorder.series(),
            "scenario_details": details,
            "ok": ok,
        }


def _mib(sample: ProcSample | None) -> float | None:
    return round(sample.rss / MIB, 1) if sample else None

"""The coordinator's view of its worker processes: spawn, command, collect, wait on conditions."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .worker import WorkerSpec, worker_main

__all__ = ["WorkerPool"]

JOIN_TIMEOUT_S = 10.0


class WorkerPool:
    def __init__(
        self, specs: list[WorkerSpec], on_tick: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.specs = specs
        self.on_tick = on_tick
        self.processes: list[BaseProcess] = []
        self.conns: list[Connection] = []
        self.connected: dict[int, dict[str, Any]] = {}
        self.complete: dict[int, float] = {}
        self.storm: dict[int, float] = {}
        self.summaries: dict[int, dict[str, Any]] = {}
        self.gone: set[int] = set()  # pipe closed: finished or died
        self._changed = asyncio.Event()

    @property
    def size(self) -> int:
        return len(self.specs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def start(self) -> None:
        # spawn, not fork: the coordinator runs an event loop, which must not be forked.
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child, spec),
                daemon=True,
                name=f"loadtest-worker-{spec.index}",
            )
            proc.start()
            child.close()
            self.processes.append(proc)
            self.conns.append(parent)
            loop.add_reader(parent.fileno(), self._on_message, spec.index)

    def send_all(self, kind: str, payload: dict[str, Any] | None = None) -> None:
        for i, conn in enumerate(self.conns):
            if i not in self.gone:
                try:
                    conn.send((kind, payload or {}))
                except OSError:
                    self._gone(i)

    def _on_message(self, index: int) -> None:
        conn = self.conns[index]
        try:
            while conn.poll():
                kind, payload = conn.recv()
                if kind == "tick":
                    if self.on_tick is not None:
                        self.on_tick(payload)
                elif kind == "connected":
                    self.connected[index] = payload
                elif kind == "complete":
                    self.complete[index] = payload["t"]
                elif kind == "storm":
                    self.storm[index] = payload["seconds"]
                elif kind == "summary":
                    self.summaries[index] = payload
        except (EOFError, OSError):
            self._gone(index)
        self._changed.set()

    def _gone(self, index: int) -> None:
        if index not in self.gone:
            self.gone.add(index)
            asyncio.get_running_loop().remove_reader(self.conns[index].fileno())
            self._changed.set()

    def all_reported(self, table: dict[int, Any]) -> bool:
        return all(i in table or i in self.gone for i in range(self.size))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds, re-checking on every worker message; False on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return predicate()
        return True

    async def close(self) -> None:
        """Stop everything: ask, wait (bounded, off the loop), then terminate stragglers."""
        self.send_all("stop")
        loop = asyncio.get_running_loop()
        for proc in self.processes:
            await loop.run_in_executor(None, proc.join, JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()
                await loop.run_in_executor(None, proc.join, JOIN_TIMEOUT_S)
        for i, conn in enumerate(self.conns):
            if i not in self.gone:
                self.gone.add(i)
                loop.remove_reader(conn.fileno())
            conn.close()
        for proc in self.processes:
            proc.close()

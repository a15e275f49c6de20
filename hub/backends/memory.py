"""The embedded default backend: everything in this process, nothing else to run.

Publishing calls the listener synchronously, so an event reaches the ConnectionManager in
the same loop tick it got its seq. Idle projects are evicted so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..config import Settings
from ..retention import ProjectLog, RetentionLimits, new_epoch
from .base import EventListener, Position, PublishRequest, ReadResult, StoredEvent

__all__ = ["MemoryBackend"]


class MemoryBackend:
    name = "memory"

    def __init__(
        self, settings: Settings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        settings = settings or Settings()
        self._limits = RetentionLimits(
            settings.retention_events,
            settings.retention_bytes,
            settings.retention_age_s,
            settings.snapshot_keys,
        )
        self._idle_s = settings.project_idle_s
        self._max_projects = settings.max_projects
        self._clock = clock
        # Least recently active first: eviction takes from the front.
        self._logs: OrderedDict[str, ProjectLog] = OrderedDict()
        self._last_active: dict[str, float] = {}
        self._watched: dict[str, int] = {}
        self._listener: EventListener | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, listener: EventListener) -> None:
        self._listener = listener
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-backend-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def ready(self) -> bool:
        return True

    def _log(self, project: str) -> ProjectLog:
        log = self._logs.get(project)
        if log is None:
            log = ProjectLog(project, self._limits, self._clock, new_epoch())
            self._logs[project] = log
            self._last_active[project] = self._clock()
            self._evict_over_capacity(keep=project)
        else:
            self._logs.move_to_end(project)
            self._last_active[project] = self._clock()
        return log

    async def publish(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        log = self._log(project)
        head_before = log.head
        seqs = [log.append(r.type, r.data, r.key, r.id) for r in requests]
        if log.head > head_before and self._listener is not None:
            fresh = log.read(head_before, log.head - head_before)
            self._listener(project, log.epoch, fresh)
        return seqs

    async def position(self, project: str) -> Position:
        return self._log(project).position()

    async def read(self, project: str, since: int, limit: int) -> ReadResult:
        log = self._log(project)
        events = log.read(since, limit)
        return ReadResult(log.position(), events)

    async def snapshot(self, project: str) -> tuple[Position, list[StoredEvent]]:
        log = self._log(project)
        return log.position(), log.snapshot()

    async def watch(self, project: str) -> None:
        self._watched[project] = self._watched.get(project, 0) + 1
        self._log(project)

    async def unwatch(self, project: str) -> None:
        left = self._watched.get(project, 0) - 1
        if left > 0:
            self._watched[project] = left
        else:
            self._watched.pop(project, None)
            if project in self._last_active:
                self._last_active[project] = self._clock()

    # --- bounded memory ------------------------------------------------------------------

    def project_count(self) -> int:
        return len(self._logs)

    def _drop(self, project: str) -> None:
        self._logs.pop(project, None)
        self._last_active.pop(project, None)

    def _evict_over_capacity(self, keep: str) -> None:
        """Drop least recently active unwatched projects (never `keep`, just created)."""
        if len(self._logs) <= self._max_projects:
            return
        for project in list(self._logs):
            if len(self._logs) <= self._max_projects:
                break
            if project != keep and project not in self._watched:
                self._drop(project)

    def sweep(self) -> None:
        """Trim aged events and drop projects idle (unwatched, unpublished) for too long."""
        now = self._clock()
        for project in list(self._logs):
            if project in self._watched:
                self._logs[project].trim()
            elif now - self._last_active.get(project, now) > self._idle_s:
                self._drop(project)
            else:
                self._logs[project].trim()

    async def _sweep_forever(self) -> None:
        interval = min(max(self._idle_s / 4, 1.0), 60.0)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

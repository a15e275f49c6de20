"""The embedded default backend: everything in this process, nothing else to run.

Publishing calls the listener synchronously, so an event reaches the ConnectionManager in
the same loop tick it got its seq. Idle projects are evicted so memory stays bounded.

Only publishing creates a project: reads (position, history, snapshot, watch) of one that
does not exist answer an empty view in the epoch its first publish will have (EpochBook),
so nobody who cannot write can allocate memory or push another project out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..config import Settings
from .base import (
    EventListener,
    Position,
    PublishedSeqs,
    PublishRequest,
    ReadResult,
    SnapshotView,
    StoredEvent,
)
from .memory_budget import enforce_budget
from .memory_epochs import EpochBook
from .memory_log import MemoryLedger, ProjectLog, RetentionLimits

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
            settings.snapshot_bytes,
        )
        self.budget_bytes = settings.memory_budget_bytes
        self.ledger = MemoryLedger()
        self.projects_dropped = {"max_projects": 0, "project_idle": 0}  # by cause, for /metrics
        self._epochs = EpochBook()
        self._idle_s = settings.project_idle_s
        self._max_projects = settings.max_projects
        self._clock = clock
        # Least recently active first: eviction takes from the front.
        self._logs: OrderedDict[str, ProjectLog] = OrderedDict()
        self._last_active: dict[str, float] = {}
        self._watched: dict[str, int] = {}
        # epochs told to subscribers of projects that do not exist yet (bounded by watches)
        self._promised: dict[str, str] = {}
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
        """The project's log, created if need be: for publishing only."""
        log = self._logs.get(project)
        if log is None:
            epoch = self._promised.get(project) or self._epochs.epoch(project)
            log = ProjectLog(project, self._limits, self._clock, epoch, self.ledger)
            self._logs[project] = log
            self._last_active[project] = self._clock()
            self._evict_over_capacity(keep=project)
        else:
            self._logs.move_to_end(project)
            self._last_active[project] = self._clock()
        return log

    def _empty(self, project: str) -> Position:
        """What a project that does not exist looks like: no events, its future epoch."""
        epoch = self._promised.get(project) or self._epochs.epoch(project)
        return Position(epoch, 1, 0)

    async def publish(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        if not requests:
            return []
        log = self._log(project)
        head_before = log.head
        # One ts for one publish, as on Redis (one TIME per script call): the events of a
        # batch leave retention by age together.
        ts = int(self._clock() * 1000)
        seqs = [log.append(r.type, r.data, r.key, r.id, ts) for r in requests]
        if log.head > head_before and self._listener is not None:
            fresh = log.read(head_before, log.head - head_before)
            self._listener(project, log.epoch, fresh)
        # After the listener: live subscribers get every event even if the budget drops it.
        enforce_budget(self._logs.values(), self.ledger, self.budget_bytes)
        return PublishedSeqs(seqs, log.head - head_before)

    async def position(self, project: str) -> Position:
        log = self._logs.get(project)
        return log.position() if log is not None else self._empty(project)

    async def read(self, project: str, since: int, limit: int) -> ReadResult:
        log = self._logs.get(project)
        if log is None:
            return ReadResult(self._empty(project), [])
        events = log.read(since, limit)
        return ReadResult(log.position(), events)

    async def snapshot(self, project: str) -> tuple[Position, list[StoredEvent]]:
        view = await self.snapshot_view(project)
        return view.position, view.events

    async def snapshot_view(self, project: str) -> SnapshotView:
        log = self._logs.get(project)
        if log is None:
            return SnapshotView(self._empty(project), [])
        return SnapshotView(log.position(), log.snapshot(), log.snapshot_truncated)

    async def watch(self, project: str) -> None:
        self._watched[project] = self._watched.get(project, 0) + 1
        if project in self._logs:
            self._logs.move_to_end(project)
            self._last_active[project] = self._clock()
        elif project not in self._promised:
            self._promised[project] = self._epochs.epoch(project)

    async def unwatch(self, project: str) -> None:
        left = self._watched.get(project, 0) - 1
        if left > 0:
            self._watched[project] = left
        else:
            self._watched.pop(project, None)
            self._promised.pop(project, None)
            if project in self._last_active:
                self._last_active[project] = self._clock()

    # --- bounded memory ------------------------------------------------------------------

    def project_count(self) -> int:
        return len(self._logs)

    def _drop(self, project: str, cause: str) -> None:
        self.projects_dropped[cause] += 1
        log = self._logs.pop(project, None)
        self._last_active.pop(project, None)
        if log is not None:
            log.release()
            self._epochs.dropped(project)  # if it comes back, it is in a new epoch

    def _evict_over_capacity(self, keep: str) -> None:
        """Drop least recently active unwatched projects (never `keep`, just created)."""
        if len(self._logs) <= self._max_projects:
            return
        for project in list(self._logs):
            if len(self._logs) <= self._max_projects:
                break
            if project != keep and project not in self._watched:
                self._drop(project, "max_projects")

    def sweep(self) -> None:
        """Trim aged events and drop projects idle (unwatched, unpublished) for too long."""
        now = self._clock()
        for project in list(self._logs):
            if project in self._watched:
                self._logs[project].trim()
            elif now - self._last_active.get(project, now) > self._idle_s:
                self._drop(project, "project_idle")
            else:
                self._logs[project].trim()

    async def _sweep_forever(self) -> None:
        interval = min(max(self._idle_s / 4, 1.0), 60.0)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

"""A table of a service's jobs: current state by id, the task doing the work, cancellation.

A finished job keeps only its state: the task (and with it a failure's traceback, whose
frames hold the job's inputs) is dropped as soon as it is done, and the job's admission
permits are given back. Cancelling is idempotent: a second cancel of a job already being
cancelled does nothing, so it cannot interrupt the first one's cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from services.admission import Permit

__all__ = ["TaskTable"]

S = TypeVar("S")


class _Entry(Generic[S]):
    __slots__ = ("cancelling", "finished", "project", "state", "task")

    def __init__(self, project: str, state: S) -> None:
        self.project = project
        self.state = state
        self.task: asyncio.Task[Any] | None = None
        self.finished = False
        self.cancelling = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.finished


class TaskTable(Generic[S]):
    """Jobs by id. Finished ones are forgotten oldest first beyond `keep` (bounded memory)."""

    def __init__(self, keep: int = 500) -> None:
        self.keep = keep
        self._entries: OrderedDict[str, _Entry[S]] = OrderedDict()

    def add(self, entity_id: str, project: str, state: S) -> None:
        self._forget_finished()
        self._entries[entity_id] = _Entry(project, state)

    def start(
        self,
        entity_id: str,
        work: Coroutine[Any, Any, Any],
        *,
        permits: Sequence[Permit] = (),
    ) -> asyncio.Task[Any]:
        """Run `work` as the job's task; its exceptions are already reported as events.

        `permits` are released when the task ends, however it ends.
        """
        entry = self._entries[entity_id]
        task = asyncio.create_task(work, name=f"job-{entity_id}")

        def done(task: asyncio.Task[Any]) -> None:
            _consume_result(task)
            entry.finished = True
            entry.task = None  # a failure's traceback (and the inputs in its frames) goes now
            for permit in permits:
                permit.release()

        task.add_done_callback(done)
        entry.task = task
        return task

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._entries

    def prune(self, extra: dict[str, Any]) -> None:
        """Drop the keys of `extra` (a side table by job id) whose job was forgotten."""
        for entity_id in [k for k in extra if k not in self._entries]:
            del extra[entity_id]

    def get(self, project: str, entity_id: str) -> S | None:
        entry = self._entries.get(entity_id)
        return entry.state if entry is not None and entry.project == project else None

    def list(self, project: str) -> list[S]:
        return [e.state for e in self._entries.values() if e.project == project]

    def running_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.running)

    def task(self, entity_id: str) -> asyncio.Task[Any] | None:
        entry = self._entries.get(entity_id)
        return entry.task if entry is not None and entry.running else None

    def cancel(self, project: str, entity_id: str) -> bool | None:
        """Cancel a running job: None if unknown, False if it had already finished."""
        entry = self._entries.get(entity_id)
        if entry is None or entry.project != project:
            return None
        if entry.task is None or entry.finished:
            return False
        if not entry.cancelling:  # once: a second cancel would interrupt the first's cleanup
            entry.cancelling = True
            entry.task.cancel()
        return True

    async def aclose(self) -> None:
        """Cancel every running job and wait for them (their cancelled events go out)."""
        entries = [e for e in self._entries.values() if e.running]
        tasks = [e.task for e in entries if e.task is not None]
        for entry in entries:
            if not entry.cancelling and entry.task is not None:
                entry.cancelling = True
                entry.task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_finished(self) -> None:
        excess = len(self._entries) + 1 - self.keep
        if excess <= 0:
            return
        for entity_id in [k for k, e in self._entries.items() if not e.running]:
            if excess <= 0:
                break
            del self._entries[entity_id]
            excess -= 1


def _consume_result(task: asyncio.Task[Any]) -> None:
    # Failures were reported as `failed` events; reading them here avoids "never retrieved".
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()

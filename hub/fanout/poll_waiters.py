"""Long polls waiting for a project's next events (the `wait` of `GET .../events`).

A waiting poll registers a `PollWaiter` here, which watches its project on the backend (so,
with Redis, events published through another hub instance reach this one's listener). The
ConnectionManager's dispatch calls `wake()` with every batch the backend delivers: a waiter
whose filter takes one of the events (or any waiter, on an empty batch, which announces an
epoch change) is set, and its poll reads the new events through the history path. Nothing
here polls the backend. The armed waiters of a project are found through a GroupIndex (the
fan-out's own: by type pattern, by key pattern), not by asking each waiter's filter about
each event, and a woken waiter leaves the index until its poll arms it again: a batch costs
the lookups of its events plus one wake per waiter, whatever the number of waiting polls.
The number of waiting polls is bounded per process; `wake_all()` (the hub drains) answers
every waiting poll, and `close()` (the process shuts down) also keeps later polls from
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from ..backends.base import Backend, StoredEvent
from ..errors import OverCapacity
from ..wire.event_filter import EventFilter
from .fanout_index import GroupIndex

__all__ = ["PollWaiter", "PollWaiters"]


class PollWaiter:
    """One waiting poll: `arm()` before reading, then `wait()` until something may be new;
    once `released` (drain, shutdown, the client left) it should answer with what it has."""

    __slots__ = ("_event", "_filed", "_index", "filter", "project", "released")

    def __init__(
        self, project: str, event_filter: EventFilter, index: GroupIndex[PollWaiter]
    ) -> None:
        self.project = project
        self.filter = event_filter
        self.released = False
        self._event = asyncio.Event()
        self._index = index  # its project's armed waiters
        self._filed = False
        self.arm()

    def arm(self) -> None:
        """Forget earlier wake-ups: call before reading, so a wake during the read counts."""
        self._event.clear()
        if not self._filed and not self.released:
            self._index.add(self, self.filter.types, self.filter.keys)
            self._filed = True

    def wake(self) -> None:
        self._event.set()
        if self._filed:  # woken: no event needs to find it again until it re-arms
            self._index.remove(self, self.filter.types, self.filter.keys)
            self._filed = False

    def release(self) -> None:
        self.released = True
        self.wake()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken within `timeout_s`, False when the time ran out."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class _ProjectWaiters:
    __slots__ = ("index", "waiters")

    def __init__(self) -> None:
        self.waiters: dict[PollWaiter, None] = {}  # every registered waiter
        self.index: GroupIndex[PollWaiter] = GroupIndex()  # the armed ones


class PollWaiters:
    """Every waiting poll of this process, by project."""

    def __init__(self, backend: Backend, limit: int) -> None:
        self._backend = backend
        self.limit = limit
        self._by_project: dict[str, _ProjectWaiters] = {}
        self.count = 0
        self.refused = 0
        self.closing = False

    @contextlib.asynccontextmanager
    async def waiting(self, project: str, event_filter: EventFilter) -> AsyncIterator[PollWaiter]:
        """Register a waiter for the block (OverCapacity beyond `limit`); the project is
        watched while it waits. Register before reading, so nothing published meanwhile is
        missed."""
        if self.count >= self.limit:
            self.refused += 1
            raise OverCapacity(f"{self.limit} long polls waiting; retry shortly")
        entry = self._by_project.get(project)
        if entry is None:
            entry = self._by_project[project] = _ProjectWaiters()
        waiter = PollWaiter(project, event_filter, entry.index)
        self.count += 1
        entry.waiters[waiter] = None
        if self.closing:
            waiter.release()
        try:
            await self._backend.watch(project)  # counted per call by both backends
            try:
                yield waiter
            finally:
                await self._backend.unwatch(project)
        finally:
            self.count -= 1
            waiter.release()  # out of the index
            del entry.waiters[waiter]
            if not entry.waiters:
                del self._by_project[project]

    def wake(self, project: str, events: Sequence[StoredEvent]) -> None:
        """The backend delivered `events` of `project` (synchronous, from the fan-out)."""
        entry = self._by_project.get(project)
        if entry is None:
            return
        if not events:  # an epoch change: every poll of the project answers
            for waiter in list(entry.waiters):
                waiter.wake()
            return
        index = entry.index
        for waiter in list(index.match_all):
            waiter.wake()
        for event in events:
            for waiter in index.groups_for(event.type, event.key):
                waiter.wake()

    def wake_all(self) -> int:
        """Every waiting poll answers now (the hub drains its subscribers); returns how many."""
        for entry in self._by_project.values():
            for waiter in list(entry.waiters):
                waiter.release()
        return self.count

    def close(self) -> int:
        """The process is shutting down: waiting polls answer now and new ones do not wait."""
        self.closing = True
        return self.wake_all()

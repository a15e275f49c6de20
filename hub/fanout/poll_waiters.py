"""Long polls waiting for a project's next events (the `wait` of `GET .../events`).

A waiting poll registers a `PollWaiter` here, which watches its project on the backend (so,
with Redis, events published through another hub instance reach this one's listener). The
ConnectionManager's dispatch calls `wake()` with every batch the backend delivers: a waiter
whose filter takes one of the events (or any waiter, on an empty batch, which announces an
epoch change) is set, and its poll reads the new events through the history path. Nothing
here polls the backend. The number of waiting polls is bounded per process; `shut_down()`
sets every waiter so polls answer at once when the hub drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from ..backends.base import Backend, StoredEvent
from ..errors import OverCapacity

__all__ = ["EventPredicate", "PollWaiter", "PollWaiters"]

EventPredicate = Callable[[StoredEvent], bool]


class PollWaiter:
    """One waiting poll: `arm()` before reading, then `wait()` until something may be new."""

    __slots__ = ("_event", "matches", "project")

    def __init__(self, project: str, matches: EventPredicate) -> None:
        self.project = project
        self.matches = matches
        self._event = asyncio.Event()

    def arm(self) -> None:
        """Forget earlier wake-ups: call before reading, so a wake during the read counts."""
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken within `timeout_s`, False when the time ran out."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class PollWaiters:
    """Every waiting poll of this process, by project."""

    def __init__(self, backend: Backend, limit: int) -> None:
        self._backend = backend
        self.limit = limit
        self._by_project: dict[str, dict[PollWaiter, None]] = {}
        self.count = 0
        self.refused = 0
        self.closing = False

    @contextlib.asynccontextmanager
    async def waiting(self, project: str, matches: EventPredicate) -> AsyncIterator[PollWaiter]:
        """Register a waiter for the block (OverCapacity beyond `limit`); the project is
        watched while it waits. Register before reading, so nothing published meanwhile is
        missed."""
        if self.count >= self.limit:
            self.refused += 1
            raise OverCapacity(f"{self.limit} long polls waiting; retry shortly")
        waiter = PollWaiter(project, matches)
        self.count += 1
        self._by_project.setdefault(project, {})[waiter] = None
        if self.closing:
            waiter.wake()
        try:
            await self._backend.watch(project)  # counted per call by both backends
            try:
                yield waiter
            finally:
                await self._backend.unwatch(project)
        finally:
            self.count -= 1
            waiters = self._by_project[project]
            del waiters[waiter]
            if not waiters:
                del self._by_project[project]

    def wake(self, project: str, events: Sequence[StoredEvent]) -> None:
        """The backend delivered `events` of `project` (synchronous, from the fan-out)."""
        waiters = self._by_project.get(project)
        if not waiters:
            return
        for waiter in waiters:
            if not events or any(waiter.matches(event) for event in events):
                waiter.wake()

    def shut_down(self) -> int:
        """The hub is draining: every poll answers now (and new ones do not wait)."""
        self.closing = True
        for waiters in self._by_project.values():
            for waiter in waiters:
                waiter.wake()
        return self.count

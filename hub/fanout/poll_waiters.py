"""Long polls waiting for a project's next events (the `wait` of `GET .../events`).

A waiting poll registers a `PollWaiter` here, which watches its project on the backend (so,
with Redis, events published through another hub instance reach this one's listener). The
ConnectionManager's dispatch calls `wake()` with every batch the backend delivers: a waiter
whose filter takes one of the events (or any waiter, on an empty batch, which announces an
epoch change) is set, and its poll reads the new events through the history path. Nothing
here polls the backend. The number of waiting polls is bounded per process; `wake_all()`
(the hub drains) answers every waiting poll, and `close()` (the process shuts down) also
keeps later polls from waiting.
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
    """One waiting poll: `arm()` before reading, then `wait()` until something may be new;
    once `released` (drain, shutdown, the client left) it should answer with what it has."""

    __slots__ = ("_event", "matches", "project", "released")

    def __init__(self, project: str, matches: EventPredicate) -> None:
        self.project = project
        self.matches = matches
        self.released = False
        self._event = asyncio.Event()

    def arm(self) -> None:
        """Forget earlier wake-ups: call before reading, so a wake during the read counts."""
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    def release(self) -> None:
        self.released = True
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
            waiter.release()
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

    def wake_all(self) -> int:
        """Every waiting poll answers now (the hub drains its subscribers); returns how many."""
        for waiters in self._by_project.values():
            for waiter in waiters:
                waiter.release()
        return self.count

    def close(self) -> int:
        """The process is shutting down: waiting polls answer now and new ones do not wait."""
        self.closing = True
        return self.wake_all()

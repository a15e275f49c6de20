"""Instrumentation for service code: a few lines emit an entity's whole event lifecycle.

    async with track(emitter, IngestJob(job_id=job_id, source="notes")) as job:
        for batch in batches:
            ...
            await job.update(progress=done / total, documents=n)

emits `ingest.job.created` on entry, `ingest.job.updated` coalesced to at most one per
`min_interval` seconds (so a tight loop cannot flood subscribers; the latest state always
goes out), then `completed` on exit, `failed` with the error on an exception (re-raised), or
`cancelled` when the task is cancelled (the CancelledError propagates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from services.emitters import Emitter
from services.events import ErrorInfo, Tracked

__all__ = ["Throttle", "Tracker", "error_info", "now_ms", "track"]

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Tracked)

DEFAULT_MIN_INTERVAL = 0.1  # seconds between two `updated` events of one entity (10/s)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, TimeoutError):
        return ErrorInfo("Timeout", str(exc) or "timed out")
    return ErrorInfo(type(exc).__name__, str(exc)[:2000] or type(exc).__name__)


class Throttle:
    """Decides when a coalesced update may go out; no I/O, time is passed in.

    `offer(now)` returns 0.0 when an update may be sent now, else the seconds to wait before
    the (coalesced) pending update may be sent.
    """

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._last_sent: float | None = None

    def offer(self, now: float) -> float:
        if self._last_sent is None or now - self._last_sent >= self.min_interval:
            return 0.0
        return self._last_sent + self.min_interval - now

    def sent(self, now: float) -> None:
        self._last_sent = now


class Tracker(Generic[S]):
    """Emits the events of one entity (its `state` Struct) through an emitter.

    Every event carries the whole state and the entity key. Emission is serialised, so
    subscribers see created, updates in order, then exactly one terminal event.
    Errors from the emitter on `created` propagate (the hub is unreachable: better to know
    before doing the work); on updates and terminal events they are logged and counted in
    `emit_errors`, so an observability outage never fails the work itself.
    """

    def __init__(
        self,
        emitter: Emitter,
        state: S,
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emitter = emitter
        self.state = state
        self.lifecycle = type(state).LIFECYCLE
        self.emit_errors = 0
        self.finished = False
        self._throttle = Throttle(min_interval)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._dirty = False
        self._terminal_sent = False
        self._flush_task: asyncio.Task[None] | None = None

    @property
    def status(self) -> str:
        return str(getattr(self.state, self.lifecycle.status_field))

    def set(self, **changes: Any) -> None:
        """Change the state without emitting (the next event carries it)."""
        for name, value in changes.items():
            if name == "progress":
                # Progress only moves forward (0..1); `transition` may reset it (a retry).
                value = min(1.0, max(float(value), self.state.progress))
            setattr(self.state, name, value)

    async def open(self) -> None:
        """Emit `created` with the initial status; if that fails, raise (nothing was done)."""
        self.set(**{self.lifecycle.status_field: self.lifecycle.initial_status})
        timings = self.state.timings
        if not timings.created_ms:  # else set when the entity was made (a 202 answer shows it)
            timings.created_ms = now_ms()
        if self.lifecycle.initial_status == "running" and timings.started_ms is None:
            timings.started_ms = max(now_ms(), timings.created_ms)  # its work starts now
        try:
            await self._emit(self.lifecycle.created, swallow=False)
        except Exception as exc:
            # The state stays inspectable (HTTP API) and must not claim to be running.
            self.finished = True
            self.state.error = error_info(exc)
            setattr(self.state, self.lifecycle.status_field, self.lifecycle.failed_status)
            raise

    async def update(self, **changes: Any) -> None:
        """Apply changes and emit `updated`, coalesced to one per `min_interval`."""
        self.set(**changes)
        if self.finished:
            return
        wait = self._throttle.offer(self._clock())
        if wait <= 0.0:
            self._cancel_flush()
            await self._emit(self.lifecycle.updated)
            return
        self._dirty = True
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later(wait))

    async def transition(self, status: str, **changes: Any) -> None:
        """Move to a non-terminal status (e.g. `running`, `retrying`) and emit it at once."""
        self._cancel_flush()
        for name, value in changes.items():
            setattr(self.state, name, value)
        setattr(self.state, self.lifecycle.status_field, status)
        if status == "running" and self.state.timings.started_ms is None:
            self.state.timings.started_ms = now_ms()
        await self._emit(self.lifecycle.updated)

    async def complete(self, **changes: Any) -> None:
        self.set(**changes)
        self.state.progress = 1.0
        await self._finish(self.lifecycle.completed, self.lifecycle.completed_status)

    async def fail(self, exc: BaseException | ErrorInfo, **changes: Any) -> None:
        self.set(**changes)
        self.state.error = exc if isinstance(exc, ErrorInfo) else error_info(exc)
        await self._finish(self.lifecycle.failed, self.lifecycle.failed_status)

    async def cancel(self, reason: str = "cancelled", **changes: Any) -> None:
        self.set(**changes)
        self.state.error = ErrorInfo("Cancelled", reason)
        await self._finish(self.lifecycle.cancelled, self.lifecycle.cancelled_status)

    async def finish_as(self, status: str, event_type: str | None = None, **changes: Any) -> None:
        """End with a status of the entity's own (a workflow node's `skipped`)."""
        self.set(**changes)
        await self._finish(event_type or self.lifecycle.updated, status)

    async def __aenter__(self) -> Tracker[S]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished:
            return  # the body ended the entity itself (e.g. `finish_as`)
        if exc is None:
            await self.complete()
        elif isinstance(exc, asyncio.CancelledError):
            await self.cancel()
        else:
            await self.fail(exc)
        # Returning None re-raises the exception, if any.

    async def _finish(self, event_type: str, status: str) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_flush()  # the terminal event carries the latest state anyway
        setattr(self.state, self.lifecycle.status_field, status)
        timings = self.state.timings
        timings.finished_ms = now_ms()
        start = timings.started_ms or timings.created_ms
        if start:
            timings.duration_ms = max(0, timings.finished_ms - start)
        # Shielded so that a cancellation arriving now cannot swallow the terminal event.
        await _shielded(self._emit(event_type, terminal=True))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._flush_task = None
        if self._dirty and not self.finished:
            await self._emit(self.lifecycle.updated)

    def _cancel_flush(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None

    async def _emit(self, event_type: str, *, swallow: bool = True, terminal: bool = False) -> None:
        async with self._lock:
            if self._terminal_sent:
                return  # a late coalesced update queued behind the terminal event
            self._terminal_sent = terminal
            self._dirty = False
            self._throttle.sent(self._clock())
            try:
                # Emitters encode `state` before their first await, so the event carries the
                # state as of now even if the service keeps changing it.
                await self.emitter.emit(event_type, self.state, key=self.state.key)
            except Exception:
                if not swallow:
                    raise
                self.emit_errors += 1
                log.exception("could not emit %s for %s", event_type, self.state.key)


async def _shielded(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # Cancelled again while emitting: let the emission finish, then keep cancelling.
        with contextlib.suppress(Exception):
            await task
        raise


def track(
    emitter: Emitter,
    state: S,
    *,
    min_interval: float = DEFAULT_MIN_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
) -> Tracker[S]:
    """`async with track(emitter, state) as t:` emits the entity's lifecycle (module doc)."""
    return Tracker(emitter, state, min_interval=min_interval, clock=clock)

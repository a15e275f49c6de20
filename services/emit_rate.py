"""Publish rate limits for the services' in-process emitters.

`InProcessEmitter` calls `Hub.publish` directly, bypassing the HTTP route's token buckets: a
flood of workflow nodes would publish as fast as the loop runs. `PacedEmitter` waits for room
in a per-project bucket and a process-wide one (backpressure on the work, never a dropped
event), so the services publish no faster than their `emit_rate*` limits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from hub.limits import TokenBucket
from services.emitters import Emitter

__all__ = ["EmitPacer", "PacedEmitter"]

_encoder = msgspec.json.Encoder()


class EmitPacer:
    """Token buckets shared by every paced emitter: one per project, one in total."""

    def __init__(
        self, rate_per_project: float, burst_per_project: float, rate: float, burst: float
    ) -> None:
        self.rate_per_project = rate_per_project
        self.burst_per_project = burst_per_project
        self.total = TokenBucket(rate, burst)
        self._projects: dict[str, TokenBucket] = {}
        self.paused = False  # at shutdown: the terminal events go out at once

    def bucket(self, project: str) -> TokenBucket:
        bucket = self._projects.get(project)
        if bucket is None:
            if len(self._projects) >= 10_000:  # full buckets carry no state: forget them
                self._projects = {k: b for k, b in self._projects.items() if not b.full}
            bucket = self._projects[project] = TokenBucket(
                self.rate_per_project, self.burst_per_project
            )
        return bucket

    async def wait(self, project: str) -> None:
        buckets = (self.bucket(project), self.total)
        while not self.paused:
            wait = max(b.wait_time() for b in buckets)
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        for bucket in buckets:
            bucket.take()


class PacedEmitter:
    """Waits for the pacer's room, then emits through `inner`."""

    def __init__(self, inner: Emitter, project: str, pacer: EmitPacer) -> None:
        self.inner = inner
        self.project = project
        self.pacer = pacer

    async def emit(
        self, type: str, data: Any, *, key: str | None = None, id: str | None = None
    ) -> int:
        # `data` must be encoded before the first await (Emitter contract); the hub validates
        # the raw JSON as it would the Struct.
        snapshot = msgspec.Raw(_encoder.encode(data))
        await self.pacer.wait(self.project)
        return await self.inner.emit(type, snapshot, key=key, id=id)

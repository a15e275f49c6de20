"""Publish into a Redis-backed hub from any process, with no hub in between.

Service code in a worker process publishes straight to Redis through the same Lua script as
the hub (seqs stay contiguous with any number of publishers), validated by the same catalog.
Every event gets an idempotency id before the first attempt, and a failed attempt (Redis
restarting, a reply lost to a timeout) is retried with the same ids, so it publishes once.

    async with RedisPublisher("redis://127.0.0.1:6379/0") as publisher:
        seq = await publisher.publish("p1", "ingest.job.updated", {"progress": 0.5},
                                      key="ingest.job/j17")
        emitter = publisher.emitter("p1")   # what the services' emitters expect
        await emitter.emit("agent.run.created", {...}, key="agent.run/r1")
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import msgspec

from .backends.base import PublishRequest
from .backends.redis import RedisBackend
from .config import Settings
from .errors import BackendUnavailable
from .wire.catalog import EventCatalog, load_catalogs
from .wire.validation import PublishValidator, check_project

__all__ = ["RedisEmitter", "RedisPublisher"]

logger = logging.getLogger("hub.redis_publisher")


class RedisPublisher:
    def __init__(
        self,
        url: str,
        settings: Settings | None = None,
        *,
        catalog: EventCatalog | None = None,
        retries: int = 8,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        settings = settings or Settings(backend=url)
        self.backend = RedisBackend(url, settings)
        # The checks the HTTP publish path runs (hub.wire.validation), without a hub; no
        # catalog given: every installed one, as `hub serve` loads them.
        if catalog is None:
            catalog = load_catalogs(None, strict=settings.strict_types)
        self.validator = PublishValidator(settings, catalog)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.attempts = 0  # publish attempts made, for tests and metrics

    async def __aenter__(self) -> RedisPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.backend.close()

    async def publish(
        self,
        project: str,
        type: str,
        data: Any = None,
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        """Publish one event (a msgspec Struct or JSON-able `data`); return its seq."""
        check_project(project)
        request = self.validator.prepare(type, data, key=key, id=id or uuid.uuid4().hex)
        return (await self._publish(project, [request]))[0]

    async def publish_requests(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        """Publish a batch atomically (contiguous seqs); one seq per request, in order."""
        self.validator.check_batch(project, requests)
        with_ids = [
            r if r.id is not None else msgspec.structs.replace(r, id=uuid.uuid4().hex)
            for r in requests
        ]
        return await self._publish(project, with_ids)

    def emitter(self, project: str) -> RedisEmitter:
        return RedisEmitter(self, project)

    async def _publish(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        attempt = 0
        while True:
            self.attempts += 1
            try:
                return await self.backend.publish(project, requests)
            except BackendUnavailable as exc:
                if attempt >= self.retries:
                    raise
                attempt += 1
                # Full jitter: publishers retrying after the same outage spread out.
                delay = self._rng.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
                logger.warning(
                    "publish to %s failed (attempt %d), retrying in %.2fs: %s",
                    project,
                    attempt,
                    delay,
                    exc.message,
                )
                await self._sleep(delay)


class RedisEmitter:
    """`emit()` for one project, as the services' emitters provide it."""

    def __init__(self, publisher: RedisPublisher, project: str) -> None:
        self.publisher = publisher
        self.project = project

    async def emit(
        self,
        type: str,
        data: Any,
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        return await self.publisher.publish(self.project, type, data, key=key, id=id)

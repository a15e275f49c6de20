"""The Redis Streams backend: several hub instances share one Redis (or Redis Cluster).

Per project a Stream, a seq counter, an epoch, a snapshot hash and idempotency ids, all under
one hash tag (hub/backends/redis_scripts.py). Publishing runs one Lua script that assigns seqs
and appends atomically, so seqs stay contiguous with any number of publishers in any number of
processes (hub.redis_publisher uses the same script). Each hub instance reads the streams of
the projects it has subscribers for with one reader task (hub/backends/redis_reader.py) and
fans out locally through its ConnectionManager.

Redis unreachable: the hub still starts; `ready()` is False, every operation raises
BackendUnavailable (HTTP 503, WebSocket 1013) within the socket timeout, and the reader
reconnects with backoff and resumes where it stopped. `ready()` is False too while the reader
is stalled (hub/backends/redis_reader.py). Behind Sentinel (`redis+sentinel://`,
hub/backends/redis_connect.py) the clients follow a failover; a promoted replica that may lack
acknowledged writes starts a new epoch (hub/backends/redis_scripts.py) unless publishes WAIT
for replicas (`redis_wait_replicas`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Settings
from ..errors import BackendUnavailable
from .base import EventListener, Position, PublishRequest, ReadResult, SnapshotView, StoredEvent
from .redis_reader import StreamReader
from .redis_store import RedisStore

__all__ = ["RedisBackend"]


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        settings = settings or Settings(backend=url)
        self.url = url
        self.settings = settings
        self.store = RedisStore(url, settings)
        self.reader = StreamReader(self.store, settings)

    async def start(self, listener: EventListener) -> None:
        self.reader.start(listener)  # connects in the background: Redis may be down now

    async def close(self) -> None:
        await self.reader.close()
        await self.store.close()

    async def ready(self) -> bool:
        """Redis answers, and the reader is not stalled: a reader with no read round trip for
        redis_reader_stall_s while a watched stream holds events it has not delivered (a
        detached replica, a paused or wedged connection) makes the hub not ready."""
        if not await self.store.ping(min(1.0, self.settings.redis_socket_timeout_s)):
            return False
        if not self.reader.stalled():
            return True
        if self.reader.detached:
            return False
        try:
            return not await self.reader.behind()
        except BackendUnavailable:
            return False

    async def publish(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        return await self.store.publish(project, requests)

    async def position(self, project: str) -> Position:
        # The first position() after watch() pins where this instance starts reading.
        pinned = await self.reader.pin(project)
        if pinned is not None:
            return pinned
        return await self.store.position(project)

    async def read(self, project: str, since: int, limit: int) -> ReadResult:
        return await self.store.read(project, since, limit)

    async def snapshot(self, project: str) -> tuple[Position, list[StoredEvent]]:
        view = await self.store.snapshot(project)
        return view.position, view.events

    async def snapshot_view(self, project: str) -> SnapshotView:
        return await self.store.snapshot(project)

    async def watch(self, project: str) -> None:
        self.reader.watch(project)

    async def unwatch(self, project: str) -> None:
        self.reader.unwatch(project)

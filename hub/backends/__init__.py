"""Backends by URL: `memory://` (embedded default), `redis://host:port/db` or
`redis+sentinel://host:port[,host:port...]/service` (hub/backends/redis_connect.py)."""

from __future__ import annotations

from ..config import Settings
from .base import (
    Backend,
    EventListener,
    Position,
    PublishRequest,
    ReadResult,
    SnapshotView,
    StoredEvent,
)
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "EventListener",
    "MemoryBackend",
    "Position",
    "PublishRequest",
    "ReadResult",
    "SnapshotView",
    "StoredEvent",
    "create_backend",
]


def create_backend(settings: Settings) -> Backend:
    url = settings.backend
    if url in ("memory", "memory://") or url.startswith("memory://"):
        return MemoryBackend(settings)
    if url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        from .redis import RedisBackend  # imported lazily: redis is an optional dependency

        return RedisBackend(url, settings)
    raise ValueError(
        f"unknown backend URL {url!r}: use memory://, redis://host:port/db or "
        "redis+sentinel://host:port[,host:port...]/service"
    )

"""The Hub: settings, backend, catalog and ConnectionManager wired together.

Service code in the hub's process publishes through `await hub.publish(...)`; the HTTP
publish route goes through the same `publish_requests`, so validation is identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .backends.base import Backend, PublishedSeqs, PublishRequest
from .config import Settings
from .fanout.linger import LingerPolicy
from .fanout.manager import ConnectionManager
from .protocol import CloseCode
from .stats import HubStats
from .wire.catalog import EventCatalog, load_catalogs
from .wire.catalog_plugins import catalog_specs
from .wire.validation import PublishValidator, check_project

__all__ = ["Hub"]


class Hub:
    def __init__(
        self, settings: Settings, backend: Backend, catalog: EventCatalog | None = None
    ) -> None:
        self.settings = settings
        self.backend = backend
        # No catalog given: those of settings.catalogs (default: every installed one).
        if catalog is None:
            catalog = load_catalogs(catalog_specs(settings.catalogs), strict=settings.strict_types)
        self.catalog = catalog
        self.validator = PublishValidator(settings, catalog)
        self.manager = ConnectionManager(backend)
        self.manager.slice_s = settings.fanout_slice_ms / 1000
        self.manager.linger = LingerPolicy(settings.fanout_linger_max_ms / 1000)
        self.manager.polls.limit = settings.max_long_polls
        self.stats = HubStats()
        self.started = False

    async def start(self) -> None:
        await self.backend.start(self.manager.dispatch)
        self.started = True

    async def stop(self) -> None:
        self.drain()
        await self.backend.close()
        self.started = False

    def drain(self) -> int:
        """Tell every subscriber the hub is going away (1001: reconnect with since); waiting
        long polls answer now."""
        self.manager.polls.wake_all()
        return self.manager.close_all(
            CloseCode.GOING_AWAY, "shutting_down", "hub shutting down; reconnect with since"
        )

    def check_project(self, project: str) -> None:
        """The project id rule (hub.wire.validation holds every publish check)."""
        check_project(project)

    async def publish(
        self,
        project: str,
        type: str,
        data: Any = None,
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        """Publish one event from service code; returns its seq (the first one, on retry)."""
        request = self.validator.prepare(type, data, key=key, id=id)
        seqs = await self.publish_requests(project, [request], validated=True)
        return seqs[0]

    async def publish_requests(
        self, project: str, requests: Sequence[PublishRequest], *, validated: bool = False
    ) -> list[int]:
        if validated:
            check_project(project)
        else:
            self.validator.check_batch(project, requests)
        seqs = await self.backend.publish(project, requests)
        # an idempotent retry returns its earlier seq: count only the events added
        self.stats.published += seqs.new if isinstance(seqs, PublishedSeqs) else len(seqs)
        return seqs

"""Helpers for testing service code without a hub: an emitter that records what it gets."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from hub.config import Settings
from hub.wire.catalog import EventCatalog
from hub.wire.validation import PublishValidator
from services.events import register_events

__all__ = ["RecordedEvent", "RecordingEmitter"]


class RecordedEvent(msgspec.Struct, frozen=True):
    seq: int
    type: str
    key: str | None
    id: str | None
    data: dict[str, Any]


class RecordingEmitter:
    """Validates each event as the hub would (hub.wire.validation, the service event catalog), then
    keeps it (decoded) in order.

    `fail_with`, when set, is raised by the next emits instead (to test emitter outages).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        catalog = EventCatalog()
        register_events(catalog)
        self.validator = PublishValidator(settings or Settings(), catalog)
        self.events: list[RecordedEvent] = []
        self.fail_with: Exception | None = None
        self.changed = asyncio.Event()

    async def emit(
        self,
        type: str,
        data: Any,  # a msgspec Struct or a dict
        *,
        key: str | None = None,
        id: str | None = None,
    ) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        # Encoded now (the caller may change `data` afterwards); raises EventValidationError
        # naming the bad field's path, as a publish to the hub would.
        request = self.validator.prepare(type, data, key=key, id=id)
        self.events.append(
            RecordedEvent(len(self.events) + 1, type, key, id, msgspec.json.decode(request.data))
        )
        self.changed.set()
        return len(self.events)

    def of(self, key_prefix: str) -> list[RecordedEvent]:
        return [e for e in self.events if (e.key or "").startswith(key_prefix)]

    def types(self, key_prefix: str = "") -> list[str]:
        return [e.type for e in self.of(key_prefix)]

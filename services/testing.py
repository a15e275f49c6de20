"""Helpers for testing service code without a hub: an emitter that records what it gets."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from services.events import EVENT_TYPES

__all__ = ["RecordedEvent", "RecordingEmitter"]


class RecordedEvent(msgspec.Struct, frozen=True):
    seq: int
    type: str
    key: str | None
    id: str | None
    data: dict[str, Any]


class RecordingEmitter:
    """Validates each event as the hub's catalog would, then keeps it (decoded) in order.

    `fail_with`, when set, is raised by the next emits instead (to test emitter outages).
    """

    def __init__(self) -> None:
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
        encoded = msgspec.json.encode(data)  # now: the caller may change `data` afterwards
        payload = EVENT_TYPES.get(type)
        if payload is not None:
            msgspec.json.decode(encoded, type=payload)  # raises ValidationError naming the path
        self.events.append(
            RecordedEvent(len(self.events) + 1, type, key, id, msgspec.json.decode(encoded))
        )
        self.changed.set()
        return len(self.events)

    def of(self, key_prefix: str) -> list[RecordedEvent]:
        return [e for e in self.events if (e.key or "").startswith(key_prefix)]

    def types(self, key_prefix: str = "") -> list[str]:
        return [e.type for e in self.of(key_prefix)]

"""A read's whole filter: its type patterns and its key patterns together.

History and snapshot pages ask `matches(event)` of each stored event; an event passes when
its type matches `types` and, if there is a key filter, its key matches `keys` (an event
without a key never passes a key filter).
"""

from __future__ import annotations

from typing import Protocol

from .keys import KeyFilter
from .topics import TypeFilter

__all__ = ["EventFilter"]


class _Event(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def key(self) -> str | None: ...


class EventFilter:
    __slots__ = ("keys", "types")

    def __init__(self, types: TypeFilter, keys: KeyFilter | None = None) -> None:
        self.types = types
        self.keys = keys

    def matches(self, event: _Event) -> bool:
        if not self.types.matches(event.type):
            return False
        return self.keys is None or self.keys.matches(event.key)

    def __repr__(self) -> str:
        return f"EventFilter({self.types!r}, {self.keys!r})"

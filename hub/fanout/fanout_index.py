"""Which of a project's subscriber groups take an event type.

The fan-out path asks this for every event. Each type is matched once against the project's
distinct patterns (a PatternIndex, refcounted across groups), not once per group's filter, and
the answer (the tuple of groups) is cached per type until the project's groups change. Adding
or removing a group files or unfiles only its own patterns.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from ..wire.patterns import PatternIndex
from ..wire.topics import TypeFilter

__all__ = ["GroupIndex"]

G = TypeVar("G", bound=Hashable)

_TYPES_LIMIT: Final = 4096  # event types remembered per project before the cache restarts


class GroupIndex(Generic[G]):
    __slots__ = ("_by_pattern", "_cache", "_granted", "_patterns", "match_all")

    def __init__(self) -> None:
        self._patterns = PatternIndex()
        self._by_pattern: dict[str, dict[G, None]] = {}
        self._granted: dict[G, TypeFilter] = {}  # groups whose token narrows their patterns
        self._cache: dict[str, tuple[G, ...]] = {}
        self.match_all: dict[G, None] = {}  # groups that take every event, kept in order

    def add(self, group: G, type_filter: TypeFilter) -> None:
        self._cache.clear()
        if type_filter.match_all:
            self.match_all[group] = None
            return
        granted = _granted_of(type_filter)
        if granted is not None:
            self._granted[group] = granted
        for pattern in type_filter.patterns:
            self._patterns.add(pattern)
            self._by_pattern.setdefault(pattern, {})[group] = None

    def remove(self, group: G, type_filter: TypeFilter) -> None:
        self._cache.clear()
        if type_filter.match_all:
            self.match_all.pop(group, None)
            return
        self._granted.pop(group, None)
        for pattern in type_filter.patterns:
            groups = self._by_pattern.get(pattern)
            if groups is None or group not in groups:
                continue
            del groups[group]
            if not groups:
                del self._by_pattern[pattern]
            self._patterns.remove(pattern)

    def groups_for(self, event_type: str) -> tuple[G, ...]:
        """The groups (other than match-all ones) whose filter takes `event_type`."""
        hit = self._cache.get(event_type)
        if hit is None:
            found: dict[G, None] = {}
            granted = self._granted
            for pattern in self._patterns.matching(event_type):
                for group in self._by_pattern[pattern]:
                    if group in found:
                        continue
                    narrowed = granted.get(group)
                    if narrowed is None or narrowed.matches(event_type):
                        found[group] = None
            hit = tuple(found)
            if len(self._cache) >= _TYPES_LIMIT:
                self._cache.clear()
            self._cache[event_type] = hit
        return hit


def _granted_of(type_filter: TypeFilter) -> TypeFilter | None:
    """The token's own filter when it narrows the requested patterns (hub.auth)."""
    granted = getattr(type_filter, "granted", None)
    return granted if isinstance(granted, TypeFilter) else None

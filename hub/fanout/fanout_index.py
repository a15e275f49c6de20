"""Which of a project's subscriber groups take an event.

The fan-out path asks this for every event. Groups without a key filter are found by type:
each type is matched once against the project's distinct type patterns (a PatternIndex,
refcounted across groups), not once per group's filter, and the answer (the tuple of groups)
is cached per type until those groups change. Groups with a key filter (`keys`) are found by
key: the event's key is looked up in a second PatternIndex of the distinct key patterns, where
an exact key is one hash lookup whatever the number of keyed groups and only prefix, suffix
and floating patterns are compared; each candidate's type filter is then asked (a cached
verdict). Keys are too many to cache per key, and keyed groups never clear the type cache.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from ..wire.keys import KeyFilter
from ..wire.patterns import PatternIndex
from ..wire.topics import TypeFilter

__all__ = ["GroupIndex"]

G = TypeVar("G", bound=Hashable)

_TYPES_LIMIT: Final = 4096  # event types remembered per project before the cache restarts


class GroupIndex(Generic[G]):
    __slots__ = (
        "_by_key_pattern",
        "_by_pattern",
        "_cache",
        "_granted",
        "_key_patterns",
        "_keyed",
        "_patterns",
        "match_all",
    )

    def __init__(self) -> None:
        self._patterns = PatternIndex()
        self._by_pattern: dict[str, dict[G, None]] = {}
        self._granted: dict[G, TypeFilter] = {}  # groups whose token narrows their patterns
        self._cache: dict[str, tuple[G, ...]] = {}
        self.match_all: dict[G, None] = {}  # groups that take every event, kept in order
        self._key_patterns = PatternIndex()
        self._by_key_pattern: dict[str, dict[G, None]] = {}
        self._keyed: dict[G, tuple[TypeFilter, KeyFilter]] = {}

    def add(self, group: G, type_filter: TypeFilter, key_filter: KeyFilter | None = None) -> None:
        if key_filter is not None:
            self._keyed[group] = (type_filter, key_filter)
            for pattern in key_filter.patterns:
                self._key_patterns.add(pattern)
                self._by_key_pattern.setdefault(pattern, {})[group] = None
            return
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

    def remove(
        self, group: G, type_filter: TypeFilter, key_filter: KeyFilter | None = None
    ) -> None:
        if key_filter is not None:
            if self._keyed.pop(group, None) is not None:
                _unfile(self._key_patterns, self._by_key_pattern, group, key_filter.patterns)
            return
        self._cache.clear()
        if type_filter.match_all:
            self.match_all.pop(group, None)
            return
        self._granted.pop(group, None)
        _unfile(self._patterns, self._by_pattern, group, type_filter.patterns)

    def groups_for(self, event_type: str, key: str | None = None) -> tuple[G, ...]:
        """The groups (other than match-all ones) whose filter takes an event of `event_type`
        with `key`."""
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
        if key is None or not self._keyed:
            return hit
        keyed = self._keyed_groups(event_type, key)
        return hit + keyed if keyed else hit

    def _keyed_groups(self, event_type: str, key: str) -> tuple[G, ...]:
        found: dict[G, None] = {}
        keyed = self._keyed
        for pattern in self._key_patterns.matching(key):
            for group in self._by_key_pattern[pattern]:
                if group in found:
                    continue
                type_filter, key_filter = keyed[group]
                granted = key_filter.granted
                if type_filter.matches(event_type) and (granted is None or granted.matches(key)):
                    found[group] = None
        return tuple(found)


def _unfile(
    index: PatternIndex, by_pattern: dict[str, dict[G, None]], group: G, patterns: tuple[str, ...]
) -> None:
    for pattern in patterns:
        groups = by_pattern.get(pattern)
        if groups is None or group not in groups:
            continue
        del groups[group]
        if not groups:
            del by_pattern[pattern]
        index.remove(pattern)


def _granted_of(type_filter: TypeFilter) -> TypeFilter | None:
    """The token's own filter when it narrows the requested patterns (hub.auth)."""
    granted = getattr(type_filter, "granted", None)
    return granted if isinstance(granted, TypeFilter) else None

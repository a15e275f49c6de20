"""Event-type patterns: `*` matches any run of characters, everything else is literal.

Pure and synchronous. A TypeFilter caches its verdict per event type, since a project carries
few distinct types and the fan-out path asks the same question for every event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from .errors import BadRequest

__all__ = ["MATCH_ALL", "PATTERN_RE", "TypeFilter", "parse_types_param", "validate_pattern"]

PATTERN_RE: Final = re.compile(r"^[a-z0-9_.*]+$")
_CACHE_LIMIT: Final = 4096  # distinct types remembered per filter before the cache restarts


def validate_pattern(pattern: str, max_length: int = 128) -> str:
    if not pattern:
        raise BadRequest("empty type pattern")
    if len(pattern) > max_length:
        raise BadRequest(f"type pattern longer than {max_length} characters")
    if PATTERN_RE.fullmatch(pattern) is None:
        raise BadRequest(
            f"invalid type pattern {pattern[:40]!r}: "
            "use lowercase letters, digits, '_', '.' and '*'"
        )
    return pattern


def parse_types_param(raw: str | None, max_patterns: int, max_length: int = 128) -> list[str]:
    """Parse the comma-separated `types` query parameter; absent or empty means `*`."""
    if raw is None or raw.strip() == "":
        return ["*"]
    patterns = [p.strip() for p in raw.split(",")]
    if len(patterns) > max_patterns:
        raise BadRequest(f"too many type patterns: {len(patterns)} > {max_patterns}")
    return [validate_pattern(p, max_length) for p in patterns]


class TypeFilter:
    """A set of patterns; `matches(type)` is a dict lookup after the first time."""

    __slots__ = ("_cache", "_regex", "match_all", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(sorted(set(patterns)))
        self.match_all = "*" in self.patterns
        self._cache: dict[str, bool] = {}
        alternatives = [
            "(?:" + ".*".join(map(re.escape, p.split("*"))) + ")" for p in self.patterns
        ]
        self._regex = re.compile("|".join(alternatives)) if alternatives else None

    def matches(self, event_type: str) -> bool:
        if self.match_all:
            return True
        hit = self._cache.get(event_type)
        if hit is None:
            hit = self._regex is not None and self._regex.fullmatch(event_type) is not None
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[event_type] = hit
        return hit

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeFilter) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"TypeFilter({list(self.patterns)!r})"


MATCH_ALL: Final = TypeFilter(["*"])

"""Event-type patterns: `*` matches any run of characters, everything else is literal.

Pure and synchronous. Matching is hub.wire.patterns' linear glob (no regex). A pattern set compiles
once per process, on first use: every TypeFilter with the same patterns shares one compiled
index and one verdict cache, so building a filter on each subscribe/unsubscribe is a sort.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from ..errors import BadRequest
from .patterns import PatternIndex, normalize_pattern

__all__ = ["MATCH_ALL", "PATTERN_RE", "TypeFilter", "parse_types_param", "validate_pattern"]

PATTERN_RE: Final = re.compile(r"^[a-z0-9_.*]+$")
_VERDICTS_LIMIT: Final = 4096  # distinct types remembered per pattern set before it restarts
_SETS_LIMIT: Final = 4096  # pattern sets kept compiled process-wide before the cache restarts


def validate_pattern(pattern: str, max_length: int = 128) -> str:
    """Check one client pattern; returns its canonical spelling (runs of `*` become one)."""
    if not pattern:
        raise BadRequest("empty type pattern")
    if len(pattern) > max_length:
        raise BadRequest(f"type pattern longer than {max_length} characters")
    if PATTERN_RE.fullmatch(pattern) is None:
        raise BadRequest(
            f"invalid type pattern {pattern[:40]!r}: "
            "use lowercase letters, digits, '_', '.' and '*'"
        )
    return normalize_pattern(pattern)


def parse_types_param(raw: str | None, max_patterns: int, max_length: int = 128) -> list[str]:
    """Parse the comma-separated `types` query parameter; absent or empty means `*`."""
    if raw is None or raw.strip() == "":
        return ["*"]
    patterns = [p.strip() for p in raw.split(",")]
    if len(patterns) > max_patterns:
        raise BadRequest(f"too many type patterns: {len(patterns)} > {max_patterns}")
    return [validate_pattern(p, max_length) for p in patterns]


class _CompiledSet:
    """One pattern set's index and its verdict per type (shared by equal filters)."""

    __slots__ = ("index", "verdicts")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.index = PatternIndex(patterns)
        self.verdicts: dict[str, bool] = {}

    def matches(self, event_type: str) -> bool:
        hit = self.verdicts.get(event_type)
        if hit is None:
            hit = self.index.any_match(event_type)
            if len(self.verdicts) >= _VERDICTS_LIMIT:
                self.verdicts.clear()
            self.verdicts[event_type] = hit
        return hit


_compiled_sets: dict[tuple[str, ...], _CompiledSet] = {}


def _compiled_set(patterns: tuple[str, ...]) -> _CompiledSet:
    compiled = _compiled_sets.get(patterns)
    if compiled is None:
        if len(_compiled_sets) >= _SETS_LIMIT:
            _compiled_sets.clear()
        compiled = _compiled_sets[patterns] = _CompiledSet(patterns)
    return compiled


class TypeFilter:
    """A set of patterns; `matches(type)` is a dict lookup after the first time."""

    __slots__ = ("_compiled", "match_all", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(sorted({normalize_pattern(p) for p in patterns}))
        self.match_all = "*" in self.patterns
        # Compiled on first use: the fan-out path never asks a filter (it uses the project's
        # GroupIndex), so a subscribe/unsubscribe op builds nothing here.
        self._compiled: _CompiledSet | None = None

    def matches(self, event_type: str) -> bool:
        if self.match_all:
            return True
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = _compiled_set(self.patterns)
        return compiled.matches(event_type)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeFilter) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"TypeFilter({list(self.patterns)!r})"


MATCH_ALL: Final = TypeFilter(["*"])

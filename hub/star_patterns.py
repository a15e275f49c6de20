"""`*` patterns over whole strings: project grants (`acme-*`), origins, host names.

Patterns come from the operator's settings and from signed tokens, never from a request, but
they are matched against request values: the same linear glob as event types (`hub.patterns`),
never a backtracking regex, so no spelling of a pattern can make one match slow.
"""

from __future__ import annotations

from collections.abc import Iterable

from .patterns import Glob, compile_pattern

__all__ = ["StarPatterns"]


class StarPatterns:
    """Strings matched by `*` patterns: `*` is any run of characters, the rest is literal."""

    __slots__ = ("_globs", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(sorted(set(patterns)))
        self._globs: tuple[Glob, ...] = tuple(compile_pattern(p) for p in self.patterns)

    def matches(self, value: str) -> bool:
        return any(glob.matches(value) for glob in self._globs)

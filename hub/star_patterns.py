"""`*` patterns over whole strings: project grants (`acme-*`), origins, host names.

Patterns come from the operator's settings and from signed tokens, never from a request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["StarPatterns"]


class StarPatterns:
    """Strings matched by `*` patterns: `*` is any run of characters, the rest is literal."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(sorted(set(patterns)))
        alternatives = [
            "(?:" + ".*".join(map(re.escape, p.split("*"))) + ")" for p in self.patterns
        ]
        self._regex = re.compile("|".join(alternatives), re.DOTALL) if alternatives else None

    def matches(self, value: str) -> bool:
        return self._regex is not None and self._regex.fullmatch(value) is not None

"""Glob matching for event-type and key patterns, linear in the value's length whatever the
pattern.

A pattern is literal text with `*` wildcards (any run of characters, dots and none included).
Every other character is itself, whatever the alphabet: type patterns are limited to
`[a-z0-9_.*]` by hub.wire.topics, key patterns (hub.wire.keys) may hold any Unicode, and
nothing here depends on which (no character class, no escape, no regex).
Runs of `*` mean the same as one, so a pattern compiles to its literal segments: a prefix, a
suffix and the middles between stars. A type matches when it starts with the prefix, ends with
the suffix, and holds the middles in order between them; finding each middle at its leftmost
place is always right (a later place only leaves less room for the rest), so nothing is ever
retried: one pass, `O(len(type) * longest segment)` at worst, no backtracking regex.

`PatternIndex` holds many patterns and answers "which of them match this type" by looking up
the type's prefixes, suffixes and short substrings in hash tables, so a type is checked only
against patterns whose literal ends, or one chosen piece of their middle, it already holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

import msgspec

__all__ = [
    "Glob",
    "PatternIndex",
    "StarPatterns",
    "compile_pattern",
    "match_stats",
    "normalize_pattern",
]

_COMPILED_LIMIT: Final = 16_384  # patterns kept compiled process-wide before the cache restarts
_GRAM: Final = 3  # floating patterns (`*x*`) are filed under one piece of their middle this long


class MatchStats:
    """Process-wide counters: how many single-pattern checks the matchers ran."""

    __slots__ = ("checks",)

    def __init__(self) -> None:
        self.checks = 0


match_stats: Final = MatchStats()


def normalize_pattern(pattern: str) -> str:
    """The canonical spelling: every run of `*` becomes one `*` (same meaning)."""
    while "**" in pattern:
        pattern = pattern.replace("**", "*")
    return pattern


class Glob(msgspec.Struct, frozen=True, gc=False):
    """One compiled pattern (`compile_pattern` builds it). Never tracked by the garbage
    collector (it holds only strings): churning subscriptions make many of them, and full
    collections would otherwise scan every one held."""

    pattern: str  # canonical spelling
    exact: bool  # no star: the type must equal the pattern
    prefix: str
    suffix: str
    middles: tuple[str, ...]  # never empty strings: runs of `*` were collapsed
    min_length: int
    match_all: bool

    def matches(self, value: str) -> bool:
        match_stats.checks += 1
        if self.exact:
            return value == self.prefix
        if len(value) < self.min_length:
            return False
        if not value.startswith(self.prefix) or not value.endswith(self.suffix):
            return False
        position, end = len(self.prefix), len(value) - len(self.suffix)
        for middle in self.middles:
            found = value.find(middle, position, end)
            if found < 0:
                return False
            position = found + len(middle)
        return True


def _compile(pattern: str) -> Glob:
    canonical = normalize_pattern(pattern)
    parts = canonical.split("*")
    exact = len(parts) == 1
    return Glob(
        pattern=canonical,
        exact=exact,
        prefix=parts[0],
        suffix="" if exact else parts[-1],
        middles=tuple(parts[1:-1]),
        min_length=sum(map(len, parts)),
        match_all=canonical == "*",
    )


_compiled: dict[str, Glob] = {}


def compile_pattern(pattern: str) -> Glob:
    """The shared compiled form of `pattern` (bounded process-wide cache)."""
    glob = _compiled.get(pattern)
    if glob is None:
        if len(_compiled) >= _COMPILED_LIMIT:
            _compiled.clear()
        glob = _compiled[pattern] = _compile(pattern)
    return glob


class StarPatterns:
    """Whole strings matched by `*` patterns: project grants (`acme-*`), origins, host names.

    They come from settings and signed tokens but are matched against request values, so they
    use the same linear glob as event types: no spelling of a pattern can make a match slow.
    """

    __slots__ = ("_globs", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(sorted(set(patterns)))
        self._globs: tuple[Glob, ...] = tuple(compile_pattern(p) for p in self.patterns)

    def matches(self, value: str) -> bool:
        return any(glob.matches(value) for glob in self._globs)


_Table = dict[int, dict[str, dict[str, Glob]]]  # literal length -> literal -> pattern -> glob


class PatternIndex:
    """A multiset of patterns; `matching(type)` lists those that match.

    A type is compared only with the patterns filed under one of its own prefixes (patterns
    with a literal prefix), or one of its suffixes (patterns starting with `*`), or with the
    patterns that have neither (`*`, `*x*`). Lookups per type are bounded by the number of
    distinct prefix and suffix lengths, at most the pattern length limit each.
    """

    __slots__ = (
        "_by_prefix",
        "_by_suffix",
        "_counts",
        "_exact",
        "_floating",
        "_gram_of",
        "match_all",
    )

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._counts: dict[str, int] = {}
        self._exact: set[str] = set()
        self._by_prefix: _Table = {}
        self._by_suffix: _Table = {}
        self._floating: _Table = {}  # by one short piece of a middle (see _gram_for)
        self._gram_of: dict[str, str] = {}  # floating pattern -> the piece it is filed under
        self.match_all = 0  # how many `*` patterns are held
        for pattern in patterns:
            self.add(pattern)

    def __len__(self) -> int:
        return len(self._counts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def add(self, pattern: str) -> str:
        """Hold one more reference to `pattern`; returns its canonical spelling."""
        glob = compile_pattern(pattern)
        key = glob.pattern
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        if count == 0:
            self._file(glob, add=True)
        return key

    def remove(self, pattern: str) -> None:
        """Drop one reference to `pattern` (added before)."""
        glob = compile_pattern(pattern)
        key = glob.pattern
        count = self._counts.get(key, 0)
        if count <= 1:
            if count == 1:
                del self._counts[key]
                self._file(glob, add=False)
            return
        self._counts[key] = count - 1

    def _file(self, glob: Glob, *, add: bool) -> None:
        if glob.match_all:
            self.match_all += 1 if add else -1
        elif glob.exact:
            (self._exact.add if add else self._exact.discard)(glob.pattern)
        elif glob.prefix:
            _file_in(self._by_prefix, glob.prefix, glob, add)
        elif glob.suffix:
            _file_in(self._by_suffix, glob.suffix, glob, add)
        elif add:
            gram = self._gram_of[glob.pattern] = self._gram_for(glob)
            _file_in(self._floating, gram, glob, True)
        else:
            _file_in(self._floating, self._gram_of.pop(glob.pattern), glob, False)

    def _gram_for(self, glob: Glob) -> str:
        """The piece of the pattern's middles (a substring any match holds) filed under the
        fewest patterns so far: pieces shared by many patterns would make them all candidates."""
        pieces = {m[i : i + _GRAM] for m in glob.middles for i in range(len(m) - _GRAM + 1)}
        pieces.update(m for m in glob.middles if len(m) < _GRAM)

        def load(piece: str) -> int:
            return len(self._floating.get(len(piece), {}).get(piece, ()))

        return min(pieces, key=load)

    def matching(self, value: str) -> list[str]:
        """Every held pattern that matches `value` (canonical spellings)."""
        found: list[str] = []
        if self.match_all:
            found.append("*")
        if value in self._exact:
            found.append(value)
        size = len(value)
        for length, table in self._by_prefix.items():
            if length <= size:
                bucket = table.get(value[:length])
                if bucket:
                    found.extend(p for p, glob in bucket.items() if glob.matches(value))
        for length, table in self._by_suffix.items():
            if length <= size:
                bucket = table.get(value[size - length :])
                if bucket:
                    found.extend(p for p, glob in bucket.items() if glob.matches(value))
        for bucket in self._floating_buckets(value):
            found.extend(p for p, glob in bucket.items() if glob.matches(value))
        return found

    def _floating_buckets(self, value: str) -> Iterator[dict[str, Glob]]:
        """The floating patterns' buckets filed under a substring of `value`, each once."""
        for length, table in self._floating.items():
            pieces = {value[i : i + length] for i in range(len(value) - length + 1)}
            for piece in pieces:
                bucket = table.get(piece)
                if bucket:
                    yield bucket

    def any_match(self, value: str) -> bool:
        if self.match_all or value in self._exact:
            return True
        size = len(value)
        for length, table in self._by_prefix.items():
            if length <= size:
                bucket = table.get(value[:length])
                if bucket and any(glob.matches(value) for glob in bucket.values()):
                    return True
        for length, table in self._by_suffix.items():
            if length <= size:
                bucket = table.get(value[size - length :])
                if bucket and any(glob.matches(value) for glob in bucket.values()):
                    return True
        return any(
            glob.matches(value)
            for bucket in self._floating_buckets(value)
            for glob in bucket.values()
        )


def _file_in(table: _Table, literal: str, glob: Glob, add: bool) -> None:
    by_literal = table.setdefault(len(literal), {})
    bucket = by_literal.setdefault(literal, {})
    if add:
        bucket[glob.pattern] = glob
        return
    bucket.pop(glob.pattern, None)
    if not bucket:
        del by_literal[literal]
        if not by_literal:
            del table[len(literal)]

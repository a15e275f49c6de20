"""Key patterns (`keys`): which entities' events a subscription takes.

A key pattern is literal text with `*` wildcards, matched by hub.wire.patterns' linear glob:
`*` is any run of characters (`/` and `.` included, or none), every other character (any
Unicode) is itself. There is no escape: a key holding `*` is matched by a `*` at that place.
In the `keys` query parameter, `,` separates patterns, so a pattern there cannot hold one
(use `*` in its place, or the `subscribe` op, whose `keys` is a JSON list). Nothing is
trimmed: a space is part of the key.

An event passes a `KeyFilter` when it has a key and the key matches one of the patterns (and
one of the token's, when its `keys` claim narrows the filter); an event without a key never
passes. No filter at all (`None` where a `KeyFilter` is expected) takes every event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_to_bytes

from ..errors import BadRequest
from .patterns import PatternIndex, normalize_pattern

__all__ = [
    "KeyFilter",
    "parse_keys_param",
    "strict_query_param",
    "validate_key_pattern",
    "validate_key_patterns",
]

_SETS_LIMIT: Final = 4096  # pattern sets kept compiled process-wide before the cache restarts


def validate_key_pattern(pattern: str, max_length: int = 256) -> str:
    """Check one key pattern; returns its canonical spelling (runs of `*` become one)."""
    if not pattern:
        raise BadRequest("empty key pattern")
    if len(pattern) > max_length:
        raise BadRequest(f"key pattern longer than {max_length} characters")
    try:
        pattern.encode()
    except UnicodeEncodeError:  # a lone surrogate: no published key can hold one
        raise BadRequest(f"invalid key pattern {pattern[:40]!r}: lone surrogate") from None
    return normalize_pattern(pattern)


def validate_key_patterns(patterns: Iterable[str], max_patterns: int, max_length: int) -> list[str]:
    """Check a list of key patterns (a `subscribe` op); canonical spellings, first
    occurrences only, in the order given. Counted before any is checked: bounded work."""
    if not isinstance(patterns, list):
        patterns = list(patterns)
    if len(patterns) > max_patterns:
        raise BadRequest(f"too many key patterns: {len(patterns)} > {max_patterns}")
    checked: list[str] = []
    for pattern in patterns:
        canonical = validate_key_pattern(pattern, max_length)
        if canonical not in checked:
            checked.append(canonical)
    if len(checked) > max_patterns:
        raise BadRequest(f"too many key patterns: {len(checked)} > {max_patterns}")
    return checked


def parse_keys_param(raw: str | None, max_patterns: int, max_length: int = 256) -> list[str] | None:
    """Parse the comma-separated `keys` query parameter; absent means no key filter (None).

    Present but empty is refused rather than read as "every key": a client that meant to
    watch some entities and sent none must not receive the whole project.
    """
    if raw is None:
        return None
    if raw == "":
        raise BadRequest("empty keys parameter: omit it to receive events of every key")
    return validate_key_patterns(raw.split(","), max_patterns, max_length)


def strict_query_param(query_string: bytes, name: str, max_bytes: int) -> str | None:
    """The value of query parameter `name` decoded as strict UTF-8 (form encoding: `+` is a
    space); several occurrences are joined with `,`. Starlette's parsing replaces invalid
    UTF-8 with U+FFFD, which is a valid key character: a pattern made of it would silently
    match nothing, so the raw bytes are read here and invalid UTF-8 is refused."""
    values: list[str] = []
    wanted = name.encode()
    size = 0
    for field in query_string.split(b"&"):
        field_name, _, raw = field.partition(b"=")
        if unquote_to_bytes(field_name.replace(b"+", b" ")) != wanted:
            continue
        size += len(raw)
        if size > max_bytes:
            raise BadRequest(f"{name} parameter over {max_bytes} bytes")
        try:
            values.append(unquote_to_bytes(raw.replace(b"+", b" ")).decode())
        except UnicodeDecodeError:
            raise BadRequest(f"{name} parameter is not valid UTF-8") from None
    return ",".join(values) if values else None


class _CompiledKeys:
    __slots__ = ("index",)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.index = PatternIndex(patterns)


_compiled_sets: dict[tuple[str, ...], _CompiledKeys] = {}


def _compiled(patterns: tuple[str, ...]) -> _CompiledKeys:
    compiled = _compiled_sets.get(patterns)
    if compiled is None:
        if len(_compiled_sets) >= _SETS_LIMIT:
            _compiled_sets.clear()
        compiled = _compiled_sets[patterns] = _CompiledKeys(patterns)
    return compiled


class KeyFilter:
    """Key patterns, optionally narrowed by a token's (`granted`): `matches(key)` is true for
    a key that matches one of `patterns` and, when granted is set, one of its patterns."""

    __slots__ = ("_index", "granted", "patterns")

    def __init__(self, patterns: Iterable[str], granted: KeyFilter | None = None) -> None:
        self.patterns: tuple[str, ...] = tuple(sorted({normalize_pattern(p) for p in patterns}))
        self.granted = granted
        self._index: PatternIndex | None = None  # compiled on first use (fan-out uses its own)

    def matches(self, key: str | None) -> bool:
        if key is None:
            return False
        index = self._index
        if index is None:
            index = self._index = _compiled(self.patterns).index
        if not index.any_match(key):
            return False
        return self.granted is None or self.granted.matches(key)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KeyFilter)
            and other.patterns == self.patterns
            and other.granted == self.granted
        )

    def __hash__(self) -> int:
        return hash((self.patterns, self.granted))

    def __repr__(self) -> str:
        if self.granted is None:
            return f"KeyFilter({list(self.patterns)!r})"
        return f"KeyFilter({list(self.patterns)!r}, granted={list(self.granted.patterns)!r})"

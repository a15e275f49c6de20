"""What a verified request may do: its projects, its scopes and the events it may read.

`Principal` is the grant of one token (or `OPEN`, everything, on a hub without a secret);
`Principal.check` raises Forbidden, `Principal.type_filter` narrows a subscription to the
token's `types` with a `GrantedTypeFilter`, `Principal.key_filter` narrows it to the token's
`keys` (a `KeyFilter` whose `granted` is the token's), and `schedule_expiry` closes a socket
when the token runs out. Both claims narrow, never refuse: what a subscription asks for
outside them is simply not delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal

from ..errors import Forbidden
from ..wire.keys import KeyFilter
from ..wire.patterns import StarPatterns
from ..wire.topics import TypeFilter

__all__ = ["OPEN", "SCOPES", "GrantedTypeFilter", "Permission", "Principal", "schedule_expiry"]

Permission = Literal["subscribe", "publish"]
SCOPES: Final = frozenset({"subscribe", "publish"})


class GrantedTypeFilter(TypeFilter):
    """The client's requested patterns, intersected with the types its token may read.

    It is a TypeFilter (same `matches`, `match_all`, `patterns`, equality and hash), so the
    connection manager groups and caches it like any other filter.
    """

    __slots__ = ("granted",)

    def __init__(self, patterns: Iterable[str], granted: TypeFilter) -> None:
        super().__init__(patterns)
        self.granted = granted
        self.match_all = self.match_all and granted.match_all

    def matches(self, event_type: str) -> bool:
        return super().matches(event_type) and self.granted.matches(event_type)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GrantedTypeFilter)
            and other.patterns == self.patterns
            and other.granted.patterns == self.granted.patterns
        )

    def __hash__(self) -> int:
        return hash((self.patterns, self.granted.patterns))

    def __repr__(self) -> str:
        granted = list(self.granted.patterns)
        return f"GrantedTypeFilter({list(self.patterns)!r}, granted={granted!r})"


class Principal:
    """What a request may do: the verified token's grant, or everything on an open hub."""

    __slots__ = ("_keys", "_projects", "_types", "expires_at", "scopes", "subject")

    def __init__(
        self,
        subject: str | None,
        projects: Iterable[str],
        scopes: Iterable[str],
        types: Iterable[str] | None = None,
        expires_at: float | None = None,
        keys: Iterable[str] | None = None,
    ) -> None:
        self.subject = subject
        self.scopes = frozenset(scopes) & SCOPES
        self.expires_at = expires_at  # Unix time; None: never
        self._projects = StarPatterns(projects)
        self._types = TypeFilter(types) if types is not None else None
        self._keys = KeyFilter(keys) if keys is not None else None

    @property
    def projects(self) -> tuple[str, ...]:
        return self._projects.patterns

    @property
    def types(self) -> tuple[str, ...] | None:
        return self._types.patterns if self._types is not None else None

    @property
    def keys(self) -> tuple[str, ...] | None:
        return self._keys.patterns if self._keys is not None else None

    def check(self, project: str, permission: Permission) -> None:
        """Raise Forbidden unless this principal may `permission` on `project`."""
        if not self._projects.matches(project):
            raise Forbidden(f"token does not grant project {project[:80]!r}")
        if permission not in self.scopes:
            raise Forbidden(f"token lacks the {permission!r} scope")

    def type_filter(self, patterns: Iterable[str]) -> TypeFilter:
        """The filter for a subscription asking for `patterns`, within the token's `types`."""
        if self._types is None or self._types.match_all:
            return TypeFilter(patterns)
        return GrantedTypeFilter(patterns, self._types)

    def key_filter(self, patterns: Iterable[str] | None) -> KeyFilter | None:
        """The key filter for a subscription asking for `patterns` (None: every key), within
        the token's `keys`: the token's own filter when the subscription asks for none."""
        granted = self._keys
        if patterns is None:
            return granted
        return KeyFilter(patterns, granted)

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        return f"Principal(subject={self.subject!r}, projects={list(self.projects)!r})"


OPEN: Final = Principal(None, ["*"], SCOPES)  # what every request is on a hub without a secret


def schedule_expiry(
    principal: Principal, on_expiry: Callable[[], None]
) -> asyncio.TimerHandle | None:
    """Call `on_expiry` on the loop when the token expires; cancel the handle on disconnect."""
    left = principal.seconds_left()
    if left is None:
        return None
    return asyncio.get_running_loop().call_later(max(left, 0.0), on_expiry)

"""Subscription query parameters (shared by the WebSocket and SSE endpoints)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from ..config import Settings
from ..errors import BadRequest
from ..protocol import is_valid_project
from .topics import parse_types_param

__all__ = ["SubscriptionParams", "parse_subscription"]

_MAX_SEQ = 2**63 - 1


class SubscriptionParams(msgspec.Struct, frozen=True):
    project: str
    since: int | None
    epoch: str | None
    types: list[str]
    explicit_types: bool  # False when the client asked for nothing: `*` until it subscribes


def parse_since(raw: str | None, name: str = "since") -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > _MAX_SEQ:
        raise BadRequest(f"invalid {name} {raw[:40]!r}: expected an integer >= 0")
    return int(raw)


def parse_subscription(
    project: str, query: Mapping[str, str], settings: Settings
) -> SubscriptionParams:
    if not is_valid_project(project):
        raise BadRequest(f"invalid project id {project[:80]!r}")
    since = parse_since(query.get("since"))
    epoch = query.get("epoch") or None
    if epoch is not None and (len(epoch) > 64 or not epoch.isprintable()):
        raise BadRequest("invalid epoch: at most 64 printable characters")
    raw_types = query.get("types")
    types = parse_types_param(raw_types, settings.max_patterns, settings.max_pattern_length)
    return SubscriptionParams(project, since, epoch, types, bool(raw_types and raw_types.strip()))

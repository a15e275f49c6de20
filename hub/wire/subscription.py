"""Subscription query parameters (shared by the WebSocket and SSE endpoints)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from ..config import Settings
from ..errors import BadRequest
from ..protocol import is_valid_project
from .keys import parse_keys_param, strict_query_param
from .topics import parse_types_param

__all__ = ["SubscriptionParams", "parse_keys_query", "parse_subscription"]

_MAX_SEQ = 2**63 - 1


class SubscriptionParams(msgspec.Struct, frozen=True):
    project: str
    since: int | None
    epoch: str | None
    types: list[str]
    explicit_types: bool  # False when the client asked for nothing: `*` until it subscribes
    keys: list[str] | None = None  # key patterns; None: every key (no key filter)


def parse_since(raw: str | None, name: str = "since") -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > _MAX_SEQ:
        raise BadRequest(f"invalid {name} {raw[:40]!r}: expected an integer >= 0")
    return int(raw)


def parse_keys_query(
    query: Mapping[str, str], settings: Settings, raw_query: bytes | None = None
) -> list[str] | None:
    """The `keys` parameter's patterns (None when absent). With `raw_query` (the request's
    undecoded query string) invalid UTF-8 in it is refused instead of read as U+FFFD."""
    if raw_query is None:
        raw = query.get("keys")
    else:
        # Every pattern at most max_key_length characters of up to 4 UTF-8 bytes, each
        # percent-encoded (3 characters), plus a separator.
        limit = settings.max_patterns * (settings.max_key_length * 12 + 1)
        raw = strict_query_param(raw_query, "keys", limit)
    return parse_keys_param(raw, settings.max_patterns, settings.max_key_length)


def parse_subscription(
    project: str, query: Mapping[str, str], settings: Settings, raw_query: bytes | None = None
) -> SubscriptionParams:
    if not is_valid_project(project):
        raise BadRequest(f"invalid project id {project[:80]!r}")
    since = parse_since(query.get("since"))
    epoch = query.get("epoch") or None
    if epoch is not None and (len(epoch) > 64 or not epoch.isprintable()):
        raise BadRequest("invalid epoch: at most 64 printable characters")
    raw_types = query.get("types")
    types = parse_types_param(raw_types, settings.max_patterns, settings.max_pattern_length)
    keys = parse_keys_query(query, settings, raw_query)
    explicit = bool(raw_types and raw_types.strip())
    return SubscriptionParams(project, since, epoch, types, explicit, keys)

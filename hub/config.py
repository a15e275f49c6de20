"""Hub settings: every limit in one place, each bounded, documented and overridable.

`docs/operations.md` lists them; `Settings.from_env()` reads `HUB_<FIELD>` variables and the
CLI flags override both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["Settings"]

KiB = 1024
MiB = 1024 * KiB


class Settings(msgspec.Struct, kw_only=True):
    # Where events live: "memory://" (embedded default) or "redis://host:port/db".
    backend: str = "memory://"

    # Retention per project (memory backend; the Redis backend uses retention_events).
    retention_events: int = 10_000
    retention_bytes: int = 32 * MiB
    retention_age_s: float = 24 * 3600.0
    snapshot_keys: int = 10_000  # latest-event-per-key entries kept per project
    # Idle projects (no subscriber, no publish) are dropped after this long, and the
    # least recently active idle ones go first once there are more than max_projects.
    project_idle_s: float = 3600.0
    max_projects: int = 10_000

    # Per connection outbound queue: overflow closes the connection with 4008.
    queue_events: int = 10_000
    queue_bytes: int = 8 * MiB
    max_frame_bytes: int = 512 * KiB  # coalesced array frames are cut at about this size

    # Inbound limits and client behaviour.
    max_inbound_frame: int = 64 * KiB
    max_patterns: int = 32
    max_pattern_length: int = 128
    error_budget: int = 20  # error frames a connection may earn before it is closed with 1008
    heartbeat_s: float = 20.0  # ping interval; a peer silent for another interval is dropped
    max_connections: int = 15_000

    # Publishing over HTTP.
    max_publish_body: int = 1 * MiB
    max_publish_batch: int = 1_000
    max_key_length: int = 256
    max_id_length: int = 128
    strict_types: bool = False  # refuse well-formed types that are not in the catalog

    # History paging.
    history_max_limit: int = 1_000

    # Shutdown: how long clients get to see their 1001 before the process exits.
    drain_timeout_s: float = 5.0

    # Logs: "text" or "json" (one object per line, hub.logs).
    log_format: str = "text"

    def __post_init__(self) -> None:
        positive = (
            "retention_events",
            "retention_bytes",
            "snapshot_keys",
            "max_projects",
            "queue_events",
            "queue_bytes",
            "max_frame_bytes",
            "max_inbound_frame",
            "max_patterns",
            "max_pattern_length",
            "max_connections",
            "max_publish_body",
            "max_publish_batch",
            "max_key_length",
            "max_id_length",
            "history_max_limit",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("retention_age_s", "project_idle_s", "heartbeat_s", "drain_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.error_budget < 0:
            raise ValueError("error_budget must be >= 0")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `HUB_<FIELD>` variables, then keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            raw = environ.get(f"HUB_{field.name.upper()}")
            if raw is not None:
                values[field.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        # msgspec.convert with strict=False turns "10" into 10 and "true" into True.
        return msgspec.convert(values, cls, strict=False)

    def replace(self, **changes: Any) -> Settings:
        return msgspec.structs.replace(self, **changes)

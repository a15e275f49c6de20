"""Hub settings: every limit in one place, each bounded, documented and overridable.

`docs/operations.md` lists them; `Settings.from_env()` reads `HUB_<FIELD>` variables and the
CLI flags override both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = ["Settings"]

KiB = 1024
MiB = 1024 * KiB


class Settings(msgspec.Struct, kw_only=True):
    # Where events live: "memory://" (embedded default) or "redis://host:port/db".
    backend: str = "memory://"

    # Redis backend (docs/operations.md). Every reply must arrive within the socket timeout,
    # so a dead link is noticed within seconds; the reader's XREAD BLOCK stays below it.
    redis_socket_timeout_s: float = 5.0
    redis_connect_timeout_s: float = 2.0
    redis_block_ms: int = 2_000  # capped at half the socket timeout
    redis_health_check_s: float = 5.0  # a pooled connection idle this long is PINGed first
    redis_reconnect_max_s: float = 2.0  # the reader's reconnect backoff cap
    redis_epoch_check_s: float = 5.0  # how often the reader re-checks watched epochs
    redis_idempotency_ttl_s: float = 24 * 3600.0  # publish ids are honoured this long at most
    redis_key_ttl_s: float = 7 * 24 * 3600.0  # a project's keys outlive its last publish by this
    redis_max_connections: int = 64  # command connections per hub process
    redis_key_prefix: str = "hub"
    redis_cluster: bool = False  # the URL names one node of a Redis Cluster
    redis_cluster_poll_ms: int = 20  # Cluster has no multi-slot XREAD: the reader polls

    # Retention per project, on both backends (Redis: docs/operations.md, Retention on Redis).
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

    # Security and limits (docs/security.md). Without a secret the hub runs open and warns.
    secret: str = ""  # HS256 secret(s), comma-separated for rotation; each >= 32 bytes
    allowed_origins: str = ""  # comma-separated; empty: the request's own host; "*": any
    metrics_public: bool = False  # with a secret, serve /metrics without a token
    dashboard_public: bool = False  # with a secret, serve the dashboard's page and scripts
    max_connections_per_subject: int = 1_000  # per token `sub`; 0: no limit
    max_connections_per_address: int = 0  # per client IP; 0: no limit (proxies share one)
    publish_rate_per_project: float = 0.0  # events/s (token bucket); 0: no limit
    publish_burst_per_project: int = 10_000
    publish_rate_per_token: float = 2_000.0  # events/s per token `sub`; 0: no limit
    publish_burst_per_token: int = 10_000
    client_ops_rate: float = 20.0  # subscribe/unsubscribe/ping frames per second per socket
    client_ops_burst: int = 100  # more than this faster than the rate closes with 4029
    handshake_timeout_s: float = 10.0  # a request head (or upgrade) must arrive within this
    keep_alive_s: float = 5.0  # an idle keep-alive HTTP connection is closed after this
    body_timeout_s: float = 30.0  # a publish body must arrive within this (else 408)
    max_request_head: int = 16 * KiB  # request line + headers

    # Memory bounds (docs/operations.md, "Memory and bounds").
    snapshot_bytes: int = 32 * MiB  # snapshot size per project; least recently updated go
    # Memory backend: every project's retention + snapshot (frames + 256 B/event) together;
    # over it the largest projects lose their oldest data first (subscribers behind: `gap`)
    memory_budget_bytes: int = 512 * MiB

    # Input rules (docs/security.md, "Input rules"): what JSON and names the hub accepts.
    max_json_depth: int = 64  # nesting of one event's data and of a client op (1-256)
    max_event_bytes: int = 1 * MiB  # encoded `data` of one event
    max_type_length: int = 128  # characters of an event type

    # Heavy reads and paged snapshots (docs/operations.md, "Heavy reads and snapshots").
    stall_timeout_s: float = 10.0  # a subscriber taking nothing this long mid-replay/snapshot: 4008
    history_max_bytes: int = 4 * MiB  # a history page stops at about this size (`more`: true)
    snapshot_page_bytes: int = 4 * MiB  # GET .../snapshot pages (`after`=`next`) of about this
    heavy_read_bytes: int = 256 * KiB  # larger history/snapshot responses are heavy: streamed
    max_heavy_reads: int = 16  # heavy reads in flight per process; beyond: 503 + Retry-After
    heavy_read_timeout_s: float = 30.0  # a heavy response not taken within this is cut

    # Edge (docs/security.md: open mode, upgrade deadline, accept backoff).
    allowed_hosts: str = ""  # open hub on loopback: Host names besides loopback ones; "*": any
    accept_error_log_interval_s: float = 10.0  # accept() failures (EMFILE) log once per this

    # Filter work (docs/operations.md): the fan-out matches new event types against patterns
    # for at most this long per loop tick, then yields and continues on the next tick.
    fanout_slice_ms: float = 20.0

    # Garbage collector of `hub serve` / `hub demo` (hub.transports.gc_tuning): young
    # collections every this many allocations after startup objects are frozen; 0 keeps
    # Python's default (700).
    gc_gen0_threshold: int = 50_000

    # Event catalogs (catalog plugins, hub.wire.catalog_plugins): unset = every installed
    # `hub.catalogs` entry point; "" or "none" = none; "MODULE:ATTR,..." = exactly these.
    # What `hub serve` (`--catalog`, `--no-catalogs` win), Hub and RedisPublisher load.
    catalogs: str | None = None
    # Long-poll transport and CORS (docs/protocol.md "Long polling", "CORS"; issue 14).
    long_poll_max_wait_s: float = 30.0  # the largest `wait` a GET .../events may ask for
    max_long_polls: int = 1_000  # long polls waiting at once per process; beyond: 503
    cors_max_age_s: int = 600  # how long a browser may cache a preflight answer
    # Adaptive linger of the fan-out (docs/operations.md, issue 16): under load a flush waits
    # as long as the last one took, at most this long, so events share frames; 0 disables.
    fanout_linger_max_ms: float = 4.0

    # Redis Sentinel, failover and reader health (docs/operations.md, "Redis Sentinel and
    # failover"): publishes wait for this many replicas (WAIT, up to redis_wait_timeout_ms)
    # before they are acknowledged, so a promoted replica holds them (0: no WAIT); /readyz
    # answers 503 when the stream reader has made no progress for redis_reader_stall_s while
    # Redis is reachable and has events past what it delivered.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1_000
    redis_reader_stall_s: float = 10.0

    # Redis TLS (issue 17, docs/operations.md "TLS and ACL users"): used with a rediss:// URL;
    # ACL credentials go in the URL (rediss://user:password@host:port/db). Files are PEM.
    redis_tls_ca_file: str = ""  # CA bundle that signed Redis's certificate; "": system CAs
    redis_tls_cert_file: str = ""  # client certificate (Redis `tls-auth-clients yes`)
    redis_tls_key_file: str = ""  # its private key; "": the key is in the certificate file
    redis_tls_check_hostname: bool = True  # the certificate must name the URL's host

    # Hostile WebSocket peers (red team of issue 16, docs/operations.md "Memory and bounds"):
    # frames of any kind (text, binary, continuation, ping, pong) one socket may send per
    # second, in bursts of twice that; beyond, it is closed with 4029. 0: no limit.
    ws_frame_rate: float = 200.0

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
            "publish_burst_per_project",
            "publish_burst_per_token",
            "client_ops_burst",
            "max_request_head",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.gc_gen0_threshold <= 10_000_000:
            raise ValueError("gc_gen0_threshold must be 0-10000000 (0: Python's default)")
        if not 0.1 <= self.fanout_slice_ms <= 1000:
            raise ValueError("fanout_slice_ms must be between 0.1 and 1000")
        for name in ("retention_age_s", "project_idle_s", "heartbeat_s", "drain_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("handshake_timeout_s", "keep_alive_s", "body_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "max_connections_per_subject",
            "max_connections_per_address",
            "publish_rate_per_project",
            "publish_rate_per_token",
            "client_ops_rate",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit)")
        if self.accept_error_log_interval_s <= 0:
            raise ValueError("accept_error_log_interval_s must be > 0")
        if self.secret and not any(part.strip() for part in self.secret.split(",")):
            # `HUB_SECRET=" , "` is a mistake, not a wish to run open.
            raise ValueError(
                "secret (HUB_SECRET / --secret) is set but holds no secret, only commas and "
                "blanks: set a real one, or unset it to run open"
            )
        if self.error_budget < 0:
            raise ValueError("error_budget must be >= 0")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        self._check_redis()
        for name in ("snapshot_bytes", "memory_budget_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self._check_input_rules()
        self._check_heavy_reads()
        self._check_long_poll_and_cors()
        if self.ws_frame_rate < 0:
            raise ValueError("ws_frame_rate must be >= 0 (0: no limit)")

    def _check_input_rules(self) -> None:
        # msgspec decodes recursively: the depth stays far below Python's recursion limit.
        if not 1 <= self.max_json_depth <= 256:
            raise ValueError("max_json_depth must be 1-256")
        for name in ("max_event_bytes", "max_type_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def _check_redis(self) -> None:
        for name in (
            "redis_socket_timeout_s",
            "redis_connect_timeout_s",
            "redis_health_check_s",
            "redis_reconnect_max_s",
            "redis_epoch_check_s",
            "redis_idempotency_ttl_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("redis_block_ms", "redis_max_connections", "redis_cluster_poll_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.redis_wait_replicas <= 100:
            raise ValueError("redis_wait_replicas must be 0-100 (0: no WAIT)")
        wait_bound = self.redis_socket_timeout_s * 1000 if self.redis_wait_replicas else 60_001
        if not 1 <= self.redis_wait_timeout_ms < wait_bound:
            raise ValueError(
                "redis_wait_timeout_ms must be >= 1 and below redis_socket_timeout_s (a WAIT"
                " that outlasts the socket timeout would look like a dead link)"
            )
        if not 0 < self.redis_reader_stall_s <= 86_400:
            raise ValueError("redis_reader_stall_s must be > 0 and <= 86400")
        if self.redis_key_ttl_s < 0:
            raise ValueError("redis_key_ttl_s must be >= 0 (0: keys never expire)")

    def _check_heavy_reads(self) -> None:
        for name in (
            "history_max_bytes",
            "snapshot_page_bytes",
            "heavy_read_bytes",
            "max_heavy_reads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("stall_timeout_s", "heavy_read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    def _check_long_poll_and_cors(self) -> None:
        if not 0 <= self.fanout_linger_max_ms <= 1000:
            raise ValueError("fanout_linger_max_ms must be between 0 and 1000")
        if not 0 < self.long_poll_max_wait_s <= 3600:
            raise ValueError("long_poll_max_wait_s must be > 0 and <= 3600")
        if self.max_long_polls < 1:
            raise ValueError("max_long_polls must be >= 1")
        if not 0 <= self.cors_max_age_s <= 86_400:
            raise ValueError("cors_max_age_s must be 0-86400")

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

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output: never show the secret.
        fields = msgspec.structs.asdict(self)
        if fields["secret"]:
            fields["secret"] = "<redacted>"
        fields["backend"] = _url_without_password(fields["backend"])
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def _url_without_password(url: str) -> str:
    """A backend URL fit for logs: an ACL password in it becomes <redacted> (issue 17)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, host = parts.netloc.rsplit("@", 1)
    user = credentials.split(":", 1)[0]  # as written (percent-encoded)
    return urlunsplit(parts._replace(netloc=f"{user}:<redacted>@{host}"))

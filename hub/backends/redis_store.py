"""RedisStore: the hub's Redis operations (publish, position, read, snapshot), all through the
one Lua script, with clients that never hang on a dead link.

Shared by the hub's RedisBackend and by `hub.redis_publisher` in other processes, so both
write exactly the same entries. Every Redis failure becomes `BackendUnavailable` (HTTP 503,
WebSocket 1013) with a message that says what went wrong.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ..config import Settings
from ..errors import BackendUnavailable
from ..protocol import EventFrame
from .base import (
    Position,
    PublishedSeqs,
    PublishRequest,
    ReadResult,
    SnapshotView,
    StoredEvent,
    new_epoch,
)
from .redis_connect import is_sentinel_url, parse_sentinel_url, sentinel_client
from .redis_options import tls_options
from .redis_scripts import HUB_SCRIPT, ProjectKeys

__all__ = [
    "REDIS_FAILURES",
    "RedisClient",
    "RedisStore",
    "build_event",
    "event_from_entry",
    "unavailable",
]

logger = logging.getLogger("hub.redis")

RedisClient = Redis | RedisCluster
T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_NO_DATA = msgspec.Raw(b"")
SEEN_PROJECTS = 100_000  # projects whose highest seq a process remembers
MAX_AGE_S = 1e12  # a retention age beyond this (or inf) is the same as none
# What a dead, refusing, restarting or overloaded Redis raises through redis-py.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


def _refused_in_script(detail: str) -> str | None:
    """The command of the script line an ACL refusal inside the script names."""
    found = re.search(r"can't run this command.*@user_script:(\d+)", detail)
    if found is None:
        return None
    lines = HUB_SCRIPT.split("\n")
    line = int(found.group(1))
    command = re.search(r"redis\.call\('(\w+)'", lines[line - 1]) if line <= len(lines) else None
    return f"'{command.group(1).lower()}'" if command else "a command"


def unavailable(exc: BaseException) -> BackendUnavailable:
    detail = str(exc) or type(exc).__name__
    in_script = _refused_in_script(detail)
    if isinstance(exc, NoPermissionError) or in_script:
        # an ACL user without a command or key the hub needs: name the fix
        what = f"the hub's script may not run {in_script}: " if in_script else ""
        return BackendUnavailable(
            f"redis refused the hub's ACL user: {what}{detail[:200]} (the rule the hub "
            "needs: docs/operations.md, TLS and ACL users)"
        )
    if isinstance(exc, AuthenticationError):
        return BackendUnavailable(f"redis refused the credentials in the URL: {detail[:200]}")
    return BackendUnavailable(f"redis unavailable: {detail[:200]}")


def build_event(
    project: str, seq: int, event_type: str, ts: int, key: str | None, data: bytes
) -> StoredEvent:
    """The event and its frame, encoded exactly as the memory backend encodes it."""
    frame = _encoder.encode(EventFrame(project, seq, event_type, ts, msgspec.Raw(data), key))
    return StoredEvent(seq, event_type, key, ts, frame)


def frame_size_less_numbers(project: str, request: PublishRequest) -> int:
    """The size of the event's frame as the memory backend counts it (len(frame)), less the
    digits of its seq and ts, which only the script knows: it adds them."""
    frame = EventFrame(project, 0, request.type, 0, _NO_DATA, request.key)  # data not copied
    return len(_encoder.encode(frame)) + len(request.data) - 2  # less the two zeros


def event_from_entry(project: str, entry_id: bytes, fields: Any) -> tuple[str, StoredEvent]:
    """(epoch, event) of one stream entry `<seq>-0` (fields from XREAD, XRANGE or the script)."""
    packed: bytes = fields[b"v"] if isinstance(fields, dict) else fields[1]
    epoch, ts, event_type, key_length, rest = packed.split(b" ", 4)
    if key_length == b"-":
        key, data = None, rest
    else:
        size = int(key_length)
        key, data = rest[:size].decode(), rest[size:]
    seq = int(entry_id.split(b"-", 1)[0])
    return epoch.decode(), build_event(project, seq, event_type.decode(), int(ts), key, data)


def _snapshot_event(project: str, key: bytes, value: bytes) -> StoredEvent:
    seq, ts, event_type, data = value.split(b" ", 3)
    return build_event(project, int(seq), event_type.decode(), int(ts), key.decode(), data)


def _position(reply: Sequence[Any]) -> Position:
    epoch = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return Position(epoch, int(reply[2]), int(reply[1]))


def _keepalive_options(timeout: float) -> dict[int, int]:
    """Probe an idle connection after about the socket timeout; give up after 3 misses."""
    wanted = {
        "TCP_KEEPIDLE": max(1, int(timeout)),
        "TCP_KEEPINTVL": max(1, int(timeout / 3)),
        "TCP_KEEPCNT": 3,
    }
    return {getattr(socket, n): v for n, v in wanted.items() if hasattr(socket, n)}


class RedisStore:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.prefix = settings.redis_key_prefix
        self.cluster = settings.redis_cluster
        if is_sentinel_url(url):
            parse_sentinel_url(url)  # a bad one fails at startup, with what is wrong
            if self.cluster:
                raise ValueError("redis_cluster and a redis+sentinel:// URL exclude each other")
        if self.cluster and settings.redis_wait_replicas > 0:
            raise ValueError("redis_wait_replicas needs a primary with replicas, not a Cluster")
        self.client = self.new_client(settings.redis_max_connections)
        self._script = self.client.register_script(HUB_SCRIPT)
        self._cluster_lock = asyncio.Lock()
        # project -> (epoch, highest seq this process has seen): bounded, least recent first
        self._seen: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._key_ttl_ms = int(settings.redis_key_ttl_s * 1000)
        self._id_ttl_ms = max(1, int(settings.redis_idempotency_ttl_s * 1000))
        # the memory backend's bounds (redis_scripts): events, frame bytes, age in ms
        age_ms = int(min(settings.retention_age_s, MAX_AGE_S) * 1000)
        self._retention = (settings.retention_events, settings.retention_bytes, age_ms)
        # Tells the script whether a promoted replica holds every acknowledged write.
        self._replication = "wait" if settings.redis_wait_replicas > 0 else "async"

    def new_client(self, max_connections: int) -> RedisClient:
        """A client whose every command fails within the socket timeout instead of hanging.

        redis-py retries failed commands by default; a publish retried after its reply was
        lost could be applied twice, so retries are off here and done where they are safe.
        """
        s = self.settings
        options: dict[str, Any] = {
            "socket_timeout": s.redis_socket_timeout_s,
            "socket_connect_timeout": s.redis_connect_timeout_s,
            "health_check_interval": max(1, round(s.redis_health_check_s)),
            "retry": Retry(NoBackoff(), 0),
            "client_name": "hub",
        }
        options.update(tls_options(self.url, s))  # rediss:// (issue 17)
        if not self.url.startswith("unix:"):  # keepalive is a TCP option
            options["socket_keepalive"] = True
            options["socket_keepalive_options"] = _keepalive_options(s.redis_socket_timeout_s)
        if self.cluster:
            return RedisCluster.from_url(self.url, max_connections=max_connections, **options)
        if is_sentinel_url(self.url):
            return sentinel_client(self.url, max_connections, options)
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=max_connections,
            timeout=s.redis_socket_timeout_s,
            **options,
        )
        return Redis.from_pool(pool)  # closing the client closes its pool

    async def close(self) -> None:
        await self.client.aclose()

    async def drop_idle_connections(self) -> None:
        """After an outage: idle pooled connections most likely died with the old link."""
        if isinstance(self.client, Redis):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    def keys(self, project: str) -> ProjectKeys:
        return ProjectKeys(self.prefix, project)

    def wake_key(self) -> str:
        return f"{self.prefix}:wake:{uuid.uuid4().hex}"

    async def ping(self, timeout: float) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), timeout))
        except REDIS_FAILURES:
            return False

    async def call(self, operation: Callable[[], Awaitable[T]], *, retry_safe: bool) -> T:
        """Run `operation`, turning Redis failures into BackendUnavailable.

        A connection refused or reset (as on the first use of a pooled connection after a
        Redis restart) is retried once when repeating the operation cannot apply it twice.
        """
        try:
            if isinstance(self.client, RedisCluster) and self.client._initialize:
                # redis-py's cluster client breaks if its first commands run concurrently
                async with self._cluster_lock:
                    await self.client.initialize()
            return await operation()
        except RedisConnectionError as exc:
            if not retry_safe:
                raise unavailable(exc) from exc
            logger.debug("redis connection error, retrying once: %s", exc)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc
        try:
            return await operation()
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from exc

    async def _run_script(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = await self._script(keys=keys, args=[*args, self._replication])
        return reply

    async def _run_script_and_wait(self, keys: list[str], args: list[Any]) -> list[Any]:
        """The script, then `WAIT` on the same connection: acknowledged only once
        `redis_wait_replicas` replicas hold the write, so a promoted one has it."""
        s = self.settings
        async with self.client.pipeline(transaction=False) as pipe:  # reset even on failure
            script_args = [*args, self._replication]
            await self._script(keys=keys, args=script_args, client=pipe)  # type: ignore[arg-type]
            pipe.wait(s.redis_wait_replicas, s.redis_wait_timeout_ms)
            reply, replicas = await pipe.execute()
        if int(replicas) < s.redis_wait_replicas:
            raise BackendUnavailable(
                f"redis: the publish reached {int(replicas)} of {s.redis_wait_replicas} "
                f"replicas within {s.redis_wait_timeout_ms} ms; retry it with the same ids"
            )
        return list(reply)

    def _common_args(self, op: str, project: str) -> list[Any]:
        epoch, seq = self._seen.get(project, ("", 0))
        return [op, new_epoch(), self._key_ttl_ms, epoch, seq, *self._retention]

    def note(self, project: str, epoch: str, seq: int) -> None:
        """Remember the highest seq seen in `epoch`: if Redis comes back with a counter below
        it (restored from an older copy), the script starts a new epoch instead of reusing."""
        seen = self._seen
        known = seen.get(project)
        if known is None or known[0] != epoch or known[1] < seq:
            seen[project] = (epoch, seq)
        seen.move_to_end(project)
        if len(seen) > SEEN_PROJECTS:
            seen.popitem(last=False)

    def _position(self, project: str, reply: Sequence[Any]) -> Position:
        position = _position(reply)
        if position.head > 0:  # an empty view is no evidence of a sequence (redis_scripts)
            self.note(project, position.epoch, position.head)
        return position

    async def position(self, project: str) -> Position:
        keys = self.keys(project).script_keys()
        args = self._common_args("position", project)
        reply = await self.call(lambda: self._run_script(keys, args), retry_safe=True)
        return self._position(project, reply)

    async def read(self, project: str, since: int, limit: int) -> ReadResult:
        keys = self.keys(project).script_keys()
        args = [*self._common_args("read", project), max(since, 0), max(limit, 0)]
        reply = await self.call(lambda: self._run_script(keys, args), retry_safe=True)
        events = [event_from_entry(project, i, f)[1] for i, f in reply[3]] if limit > 0 else []
        return ReadResult(self._position(project, reply), events)

    async def snapshot(self, project: str) -> SnapshotView:
        keys = self.keys(project).script_keys()
        args = self._common_args("snapshot", project)
        reply = await self.call(lambda: self._run_script(keys, args), retry_safe=True)
        flat = reply[3]
        events = [_snapshot_event(project, flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        events.sort(key=lambda e: e.seq)
        return SnapshotView(self._position(project, reply), events, bool(int(reply[4])))

    async def publish(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        if not requests:
            return []
        project_keys = self.keys(project)
        keys = project_keys.script_keys()
        id_index: dict[str, int] = {}
        s = self.settings
        args: list[Any] = self._publish_args(self._common_args("publish", project), len(requests))
        for request in requests:
            index = 0
            if request.id is not None:
                index = id_index.get(request.id, 0)
                if not index:
                    keys.append(project_keys.id_key(request.id))
                    index = id_index[request.id] = len(keys)
            has_key = request.key is not None
            args += [
                request.type,
                b"1" if has_key else b"0",
                request.key if has_key else b"",
                index,
                bytes(request.data),
                frame_size_less_numbers(project, request),
            ]
        # Retrying is safe only if every event carries an idempotency id.
        safe = all(r.id is not None for r in requests)
        run = self._run_script_and_wait if s.redis_wait_replicas > 0 else self._run_script
        reply = await self.call(lambda: run(keys, args), retry_safe=safe)
        self._position(project, reply)
        seqs = [int(seq) for seq in reply[3:]]
        return PublishedSeqs([abs(seq) for seq in seqs], sum(1 for seq in seqs if seq > 0))

    def _publish_args(self, common: list[Any], count: int) -> list[Any]:
        """The publish op's arguments before its events (redis_scripts.py, ARGV[9..12])."""
        s = self.settings
        return [
            *common,
            s.snapshot_keys,
            self._id_ttl_ms,
            count,
            s.snapshot_bytes,
        ]

    async def fence(self, project: str, epoch: str) -> Position:
        """End `epoch` if it is still the current one: a publish of no events with evidence
        of a seq no counter reaches, so the script starts a new epoch (redis_scripts.py)."""
        keys = self.keys(project).script_keys()
        common: list[Any] = [
            "publish", new_epoch(), self._key_ttl_ms, epoch, 2**52, *self._retention
        ]  # fmt: skip
        args = self._publish_args(common, 0)
        reply = await self.call(lambda: self._run_script(keys, args), retry_safe=True)
        return self._position(project, reply)

    async def heads(self, projects: Sequence[str]) -> list[int | None]:
        """The counter of each project (None: no live sequence), in one round trip."""

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for project in projects:
                    pipe.get(self.keys(project).seq)
                return list(await pipe.execute())

        replies = await self.call(run, retry_safe=True)
        return [int(r) if r is not None else None for r in replies]

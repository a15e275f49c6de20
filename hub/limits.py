"""Limits that keep one client from taking the hub from the others.

Connections: total, per token subject, per client address (over the limit: 1013 / 503).
Publishing: token buckets per project and per token subject (429 with Retry-After). Client
ops on a socket: a token bucket per connection (4029), not charged for time the loop spent on
other clients. Time comes from an injected clock, so tests move it by hand. Every path calls
these with its Starlette HTTPConnection.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from starlette.requests import HTTPConnection

from .auth import Principal
from .config import Settings
from .errors import OverCapacity, RateLimited, RateLimitExceeded, RequestTimeout
from .fanout.loop_lag import LoopLagMeter

__all__ = [
    "ConnectionLimits",
    "ConnectionSlot",
    "Limits",
    "OpBudget",
    "OverCapacity",
    "PublishLimits",
    "RateLimitExceeded",  # = hub.errors.RateLimited; these three live there, re-exported
    "RateLimiter",
    "RequestTimeout",
    "TokenBucket",
    "admit_connection",
    "check_publish_rate",
    "client_address",
    "limits_of",
]

Clock = Callable[[], float]


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up.

    A request costing more than `burst` passes when the bucket is full and leaves it in debt,
    so a large batch is slowed down, never refused forever.
    """

    __slots__ = ("burst", "clock", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.level = burst
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.stamp:  # a clock stepping back mints nothing, now or later
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until `cost` may be taken; 0 if it may be taken now."""
        self._refill()
        needed = min(cost, self.burst)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.rate

    def take(self, cost: float = 1.0) -> None:
        self._refill()
        self.level -= cost

    def try_take(self, cost: float = 1.0) -> bool:
        if self.wait_time(cost) > 0:
            return False
        self.level -= cost
        return True

    @property
    def full(self) -> bool:
        self._refill()
        return self.level >= self.burst


class RateLimiter:
    """One token bucket per key (project, token subject), made on first use. Full buckets
    hold no information and are forgotten when the table grows, which bounds its memory."""

    def __init__(self, rate: float, burst: float, clock: Clock, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = max_keys

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
        return bucket

    def _sweep(self) -> None:
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
        self._sweep_at = max(self.max_keys, 2 * len(self._buckets))


class PublishLimits:
    """Events per second per project and per token subject; both must have room."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.per_project = RateLimiter(
            settings.publish_rate_per_project, settings.publish_burst_per_project, clock
        )
        self.per_token = RateLimiter(
            settings.publish_rate_per_token, settings.publish_burst_per_token, clock
        )

    def check(self, project: str, subject: str | None, events: int, *, take: bool) -> None:
        """Raise RateLimited if `events` may not be published now; else take them."""
        buckets: list[tuple[str, TokenBucket]] = []
        if self.per_project.enabled:
            buckets.append((f"project {project!r}", self.per_project.bucket(project)))
        if self.per_token.enabled and subject is not None:
            buckets.append(("this token", self.per_token.bucket(subject)))
        for what, bucket in buckets:
            wait = bucket.wait_time(events)
            if wait > 0:
                raise RateLimited(
                    f"publish rate limit for {what} reached ({bucket.rate:g} events/s); "
                    f"retry in {wait:.2f}s",
                    wait,
                )
        if take:
            for _, bucket in buckets:
                bucket.take(events)


class OpBudget:
    """One socket's budget of client frames, counted as they arrived rather than as they are
    read: while the loop ran late (busy with other clients), frames piled up and are read in a
    burst; the time the loop lost is credited back at the bucket's rate, so a client keeping to
    the rate is never closed for that burst. The credit lapses once the bucket is full again.
    """

    __slots__ = ("_bucket", "_credit", "_meter", "_seen")

    def __init__(self, bucket: TokenBucket, meter: LoopLagMeter) -> None:
        self._bucket = bucket
        self._meter = meter
        self._seen = meter.stalled()
        self._credit = 0.0

    def try_take(self) -> bool:
        stalled = self._meter.stalled()
        if self._bucket.full:
            self._credit = 0.0
        self._credit += (stalled - self._seen) * self._bucket.rate
        self._seen = stalled
        if self._bucket.try_take():
            return True
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False


class ConnectionSlot:
    """One admitted subscriber; `release()` (idempotent) gives its place back."""

    __slots__ = ("_limits", "address", "subject")

    def __init__(self, limits: ConnectionLimits, subject: str | None, address: str | None):
        self._limits: ConnectionLimits | None = limits
        self.subject = subject
        self.address = address

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.release(self)


class ConnectionLimits:
    """Open subscriptions (WebSocket and SSE) in total, per token subject, per address."""

    def __init__(self, total: int, per_subject: int, per_address: int) -> None:
        self.total = total
        self.per_subject = per_subject  # 0: no limit
        self.per_address = per_address  # 0: no limit
        self.count = 0
        self.by_subject: Counter[str] = Counter()
        self.by_address: Counter[str] = Counter()

    def acquire(self, subject: str | None, address: str | None) -> ConnectionSlot:
        if self.count >= self.total:
            raise OverCapacity(f"connection limit reached ({self.total})")
        if subject is not None and 0 < self.per_subject <= self.by_subject[subject]:
            raise OverCapacity(f"connection limit per token reached ({self.per_subject})")
        if address is not None and 0 < self.per_address <= self.by_address[address]:
            raise OverCapacity(f"connection limit per address reached ({self.per_address})")
        self.count += 1
        if subject is not None:
            self.by_subject[subject] += 1
        if address is not None:
            self.by_address[address] += 1
        return ConnectionSlot(self, subject, address)

    def release(self, slot: ConnectionSlot) -> None:
        self.count -= 1
        for counter, key in ((self.by_subject, slot.subject), (self.by_address, slot.address)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]


class Limits:
    """Every limit's state for one app (app.state.limits). Replace `clock` to move time."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.connections = ConnectionLimits(
            settings.max_connections,
            settings.max_connections_per_subject,
            settings.max_connections_per_address,
        )
        self.publish = PublishLimits(settings, self.now)
        self.loop_lag = LoopLagMeter()

    def now(self) -> float:
        return self.clock()

    def client_ops(self) -> OpBudget | None:
        """A new socket's budget of subscribe/unsubscribe/ping frames (None: unlimited)."""
        settings = self.settings
        if settings.client_ops_rate <= 0:
            return None
        bucket = TokenBucket(settings.client_ops_rate, settings.client_ops_burst, self.now)
        return OpBudget(bucket, self.loop_lag)


def limits_of(conn: HTTPConnection) -> Limits:
    limits: Limits = conn.app.state.limits
    return limits


def client_address(conn: HTTPConnection) -> str | None:
    return conn.client.host if conn.client is not None else None


def admit_connection(conn: HTTPConnection, principal: Principal) -> ConnectionSlot:
    """Take a subscriber's place (raise OverCapacity: 1013 / 503); release it on disconnect."""
    return limits_of(conn).connections.acquire(principal.subject, client_address(conn))


def check_publish_rate(
    conn: HTTPConnection, project: str, principal: Principal, events: int, *, take: bool = True
) -> None:
    """Raise RateLimited (429 with Retry-After) if `events` may not be published now."""
    limits_of(conn).publish.check(project, principal.subject, events, take=take)

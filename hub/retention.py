"""One project's sequence on the memory backend: seq counter, retained events, snapshot,
idempotency ids. Synchronous and clock-injected, so bounds and ages are unit-testable."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable

import msgspec

from .backends.base import Position, StoredEvent
from .protocol import EventFrame

__all__ = ["ProjectLog", "RetentionLimits", "new_epoch"]

_encoder = msgspec.json.Encoder()


def new_epoch() -> str:
    return secrets.token_hex(6)


class RetentionLimits(msgspec.Struct, frozen=True):
    events: int
    bytes: int
    age_s: float
    snapshot_keys: int


class ProjectLog:
    """Seqs 1, 2, 3... with no holes; retention bounded by count, bytes and age."""

    def __init__(
        self, project: str, limits: RetentionLimits, clock: Callable[[], float], epoch: str
    ) -> None:
        self.project = project
        self.epoch = epoch
        self.head = 0
        self._limits = limits
        self._clock = clock
        self._events: deque[StoredEvent] = deque()
        self._bytes = 0
        self._snapshot: dict[
            str, StoredEvent
        ] = {}  # insertion order = least recently updated first
        self._ids: dict[str, int] = {}  # idempotency id -> seq, insertion order = seq order

    @property
    def oldest(self) -> int:
        return self._events[0].seq if self._events else self.head + 1

    def position(self) -> Position:
        self.trim()
        return Position(self.epoch, self.oldest, self.head)

    def append(self, event_type: str, data: bytes, key: str | None, idem: str | None) -> int:
        self.trim()  # an id is only honoured while its event is retained
        if idem is not None:
            known = self._ids.get(idem)
            if known is not None:
                return known
        self.head += 1
        ts = int(self._clock() * 1000)
        frame = _encoder.encode(
            EventFrame(self.project, self.head, event_type, ts, msgspec.Raw(data), key)
        )
        event = StoredEvent(self.head, event_type, key, ts, frame)
        self._events.append(event)
        self._bytes += len(frame)
        if key is not None:
            self._snapshot.pop(key, None)
            self._snapshot[key] = event
            if len(self._snapshot) > self._limits.snapshot_keys:
                del self._snapshot[next(iter(self._snapshot))]
        if idem is not None:
            self._ids[idem] = self.head
        self.trim()
        return self.head

    def trim(self) -> None:
        """Drop events beyond the count and byte bounds or older than the age bound."""
        events, limits = self._events, self._limits
        horizon = int((self._clock() - limits.age_s) * 1000)
        while events and (
            len(events) > limits.events or self._bytes > limits.bytes or events[0].ts < horizon
        ):
            self._bytes -= len(events.popleft().frame)
        # Idempotency ids live exactly as long as the events they name.
        oldest, ids = self.oldest, self._ids
        while ids:
            first = next(iter(ids))
            if ids[first] >= oldest:
                break
            del ids[first]

    def read(self, since: int, limit: int) -> list[StoredEvent]:
        self.trim()
        events = self._events
        if not events:
            return []
        start = max(since + 1 - events[0].seq, 0)
        stop = min(start + limit, len(events))
        return [events[i] for i in range(start, stop)]

    def snapshot(self) -> list[StoredEvent]:
        return sorted(self._snapshot.values(), key=lambda e: e.seq)

    @property
    def retained_bytes(self) -> int:
        return self._bytes

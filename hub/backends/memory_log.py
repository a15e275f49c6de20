"""One project's sequence on the memory backend: seq counter, retained events, snapshot,
idempotency ids. Synchronous and clock-injected, so bounds and ages are unit-testable.

Memory accounting: `held_bytes` counts every event the log references (retained, in the
snapshot, or both) once, as its frame plus EVENT_OVERHEAD, and each idempotency id, and
reports each change to a shared MemoryLedger, so the process-wide total is a running sum
(O(1) per publish).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import msgspec

from ..protocol import EventFrame
from .base import Position, StoredEvent

__all__ = [
    "EVENT_OVERHEAD",
    "ID_OVERHEAD",
    "MemoryLedger",
    "ProjectLog",
    "RetentionLimits",
]

_encoder = msgspec.json.Encoder()

# Bytes an event costs besides its frame (StoredEvent, bytes header, type and key strings,
# deque and dict slots): tracemalloc measured 163 B unkeyed, 243 B keyed (docs/operations.md).
EVENT_OVERHEAD: Final = 256
ID_OVERHEAD: Final = 128  # an idempotency id's dict entry, str header and seq, beside its text


class RetentionLimits(msgspec.Struct, frozen=True):
    events: int
    bytes: int
    age_s: float
    snapshot_keys: int
    snapshot_bytes: int = 2**62


class MemoryLedger:
    """Running totals shared by every ProjectLog of one backend (read by /metrics)."""

    __slots__ = ("evictions", "held_bytes")

    def __init__(self) -> None:
        self.held_bytes = 0  # frames + overhead of every event some log references
        # cause -> events (or snapshot keys) dropped before their project was
        self.evictions: dict[str, int] = {
            "retention": 0,  # a project's own count, byte or age bound
            "snapshot_keys": 0,
            "snapshot_bytes": 0,
            "budget_events": 0,  # memory_budget_bytes: oldest retained events
            "budget_snapshot": 0,  # memory_budget_bytes: least recently updated keys
        }


def _cost(event: StoredEvent) -> int:
    return len(event.frame) + EVENT_OVERHEAD


class ProjectLog:
    """Seqs 1, 2, 3... with no holes; retention bounded by count, bytes and age."""

    def __init__(
        self,
        project: str,
        limits: RetentionLimits,
        clock: Callable[[], float],
        epoch: str,
        ledger: MemoryLedger | None = None,
    ) -> None:
        self.project = project
        self.epoch = epoch
        self.head = 0
        self._limits = limits
        self._clock = clock
        self._ledger = ledger or MemoryLedger()
        self._events: deque[StoredEvent] = deque()
        self._bytes = 0  # frames of retained events (the retention_bytes bound)
        # insertion order = least recently updated first
        self._snapshot: dict[str, StoredEvent] = {}
        self._snapshot_bytes = 0  # frames of snapshot entries (the snapshot_bytes bound)
        self.held_bytes = 0
        self.snapshot_truncated = False  # a key was dropped from the snapshot in this epoch
        self._ids: dict[str, int] = {}  # idempotency id -> seq, insertion order = seq order

    @property
    def oldest(self) -> int:
        return self._events[0].seq if self._events else self.head + 1

    def position(self) -> Position:
        self.trim()
        return Position(self.epoch, self.oldest, self.head)

    def _hold(self, delta: int) -> None:
        self.held_bytes += delta
        self._ledger.held_bytes += delta

    def append(
        self, event_type: str, data: bytes, key: str | None, idem: str | None, ts: int | None = None
    ) -> int:
        """Append one event stamped `ts` (ms; default now); its seq (an earlier one for a known
        `idem`)."""
        self.trim()  # an id is only honoured while its event is retained
        if idem is not None:
            known = self._ids.get(idem)
            if known is not None:
                return known
        self.head += 1
        if ts is None:
            ts = int(self._clock() * 1000)
        encoded = _encoder.encode(
            EventFrame(self.project, self.head, event_type, ts, msgspec.Raw(data), key)
        )
        # msgspec's output keeps its buffer's slack (about +50%): keep an exact-size copy
        frame = bytes(memoryview(encoded))
        event = StoredEvent(self.head, event_type, key, ts, frame)
        self._events.append(event)
        self._bytes += len(frame)
        self._hold(_cost(event))
        if key is not None:
            self._put_snapshot(key, event)
        if idem is not None:
            self._ids[idem] = self.head
            self._hold(len(idem) + ID_OVERHEAD)
        self.trim()
        return self.head

    def _put_snapshot(self, key: str, event: StoredEvent) -> None:
        replaced = self._snapshot.pop(key, None)
        if replaced is not None:
            self._snapshot_bytes -= len(replaced.frame)
            if replaced.seq < self.oldest:  # no longer retained: nothing else holds it
                self._hold(-_cost(replaced))
        self._snapshot[key] = event
        self._snapshot_bytes += len(event.frame)
        limits = self._limits
        while len(self._snapshot) > limits.snapshot_keys:
            self.drop_snapshot_key("snapshot_keys")
        # The newest entry stays even alone over the byte bound: it is also the live event.
        while self._snapshot_bytes > limits.snapshot_bytes and len(self._snapshot) > 1:
            self.drop_snapshot_key("snapshot_bytes")

    def drop_snapshot_key(self, cause: str) -> bool:
        """Drop the least recently updated snapshot entry; False when there is none."""
        snapshot = self._snapshot
        if not snapshot:
            return False
        dropped = snapshot.pop(next(iter(snapshot)))
        self._snapshot_bytes -= len(dropped.frame)
        if dropped.seq < self.oldest:
            self._hold(-_cost(dropped))
        self.snapshot_truncated = True
        self._ledger.evictions[cause] += 1
        return True

    def drop_oldest_event(self, cause: str) -> bool:
        """Drop the oldest retained event (subscribers behind it get `gap`); False if none."""
        if not self._events:
            return False
        event = self._events.popleft()
        self._bytes -= len(event.frame)
        if event.key is None or self._snapshot.get(event.key) is not event:
            self._hold(-_cost(event))
        self._ledger.evictions[cause] += 1
        return True

    def evict_oldest(self) -> bool:
        """Free the oldest data this log holds (memory budget); False when it holds none.

        Whichever is older goes first: the oldest retained event (subscribers behind it get
        `gap`) or the least recently updated snapshot entry. When both are the same event,
        both go, so every call frees memory.
        """
        events, snapshot = self._events, self._snapshot
        first = events[0] if events else None
        lru = snapshot[next(iter(snapshot))] if snapshot else None
        if first is None and lru is None:
            return False
        if first is not None and (lru is None or first.seq <= lru.seq):
            self.drop_oldest_event("budget_events")
            self.forget_ids()
            if first is lru:
                self.drop_snapshot_key("budget_snapshot")
        else:
            self.drop_snapshot_key("budget_snapshot")
        return True

    def trim(self) -> None:
        """Drop events beyond the count and byte bounds or older than the age bound."""
        events, limits = self._events, self._limits
        horizon = int((self._clock() - limits.age_s) * 1000)
        while events and (
            len(events) > limits.events or self._bytes > limits.bytes or events[0].ts < horizon
        ):
            self.drop_oldest_event("retention")
        self.forget_ids()

    def forget_ids(self) -> None:
        """Idempotency ids live exactly as long as the events they name."""
        oldest, ids = self.oldest, self._ids
        while ids:
            first = next(iter(ids))
            if ids[first] >= oldest:
                break
            del ids[first]
            self._hold(-len(first) - ID_OVERHEAD)

    def release(self) -> None:
        """The log is being dropped: take its bytes off the shared total."""
        self._ledger.held_bytes -= self.held_bytes
        self.held_bytes = 0

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

    @property
    def snapshot_bytes(self) -> int:
        return self._snapshot_bytes

"""The Backend interface: where seqs are assigned, events retained and snapshots kept.

Two implementations stand behind it: `memory` (embedded default) and `redis` (Streams, for
several hub instances). Both pass the same contract tests (tests/test_backend_contract.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from ..errors import BackendUnavailable

__all__ = [
    "Backend",
    "BackendUnavailable",
    "EventListener",
    "Position",
    "PublishRequest",
    "PublishedSeqs",
    "ReadResult",
    "SnapshotView",
    "StoredEvent",
    "new_epoch",
]


def new_epoch() -> str:
    """A fresh epoch id: a project's sequence restarted, so clients' `since` no longer holds."""
    return secrets.token_hex(6)


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """One published event, with its wire frame encoded once for every subscriber."""

    seq: int
    type: str
    key: str | None
    ts: int  # publish time, ms since the Unix epoch
    frame: bytes  # the encoded EventFrame JSON object


class Position(msgspec.Struct, frozen=True):
    """Where a project's sequence stands: `oldest` is head + 1 when nothing is retained."""

    epoch: str
    oldest: int
    head: int


class PublishRequest(msgspec.Struct, frozen=True):
    """One event to publish; `data` is already-validated, already-encoded JSON."""

    type: str
    data: msgspec.Raw
    key: str | None = None
    id: str | None = None  # idempotency id: same id within retention -> same seq


class PublishedSeqs(list[int]):
    """publish()'s seqs, and how many events it added: a retry whose idempotency id was seen
    before gets its earlier seq back and adds nothing, so metrics count it once."""

    __slots__ = ("new",)

    def __init__(self, seqs: Sequence[int], new: int) -> None:
        super().__init__(seqs)
        self.new = new


class ReadResult(msgspec.Struct, frozen=True):
    position: Position
    events: list[StoredEvent]


class SnapshotView(msgspec.Struct, frozen=True):
    """A snapshot and whether its bounds (keys, bytes, memory budget) have dropped keys from
    it in this epoch: then some keys' latest events are missing from `events`."""

    position: Position
    events: list[StoredEvent]
    truncated: bool = False


# Called with (project, epoch, events in seq order) for every project being watched.
EventListener = Callable[[str, str, Sequence[StoredEvent]], None]


class Backend(Protocol):
    """What the hub needs from a store of sequenced events."""

    name: str

    async def start(self, listener: EventListener) -> None:
        """Begin delivering watched projects' new events to `listener`."""

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        """True when publishes and reads can succeed now."""

    async def publish(self, project: str, requests: Sequence[PublishRequest]) -> list[int]:
        """Assign seqs (contiguous per project), retain, update the snapshot; return the seqs.

        A request whose `id` was seen within retention returns its first seq and adds nothing.
        """

    async def position(self, project: str) -> Position:
        """Where `project` stands. Reads never create a project: one that does not exist
        answers head 0 in the epoch its first publish will have."""

    async def read(self, project: str, since: int, limit: int) -> ReadResult:
        """Retained events with seq > since, oldest first, at most `limit` of them."""

    async def snapshot(self, project: str) -> tuple[Position, list[StoredEvent]]:
        """The latest retained-or-not event per key, and the position it was taken at."""

    async def snapshot_view(self, project: str) -> SnapshotView:
        """snapshot(), and whether keys were left out of it by its bounds."""

    async def watch(self, project: str) -> None:
        """Start delivering `project`'s events to the listener: every event with a seq above
        the head of a `position()` made after this call returns reaches it, in order (the
        ConnectionManager calls it once per project it serves, before reading history)."""

    async def unwatch(self, project: str) -> None: ...

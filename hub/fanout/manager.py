"""ConnectionManager: project -> connections, and the fan-out path.

Events arrive from the backend's listener (synchronously, in seq order). They are collected
per project and flushed once per loop tick: for each group of connections sharing a filter
(types and keys), the matching events are joined into one array frame, framed once, and the same
bytes are offered to every connection of the group. Nothing here awaits a socket. Which
groups take an event is asked of the project's GroupIndex: one match per distinct type
pattern per new type, however many filters hold it, and one key lookup for keyed groups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from ..backends.base import Backend, StoredEvent
from ..protocol import CloseCode
from ..stats import ManagerStats
from ..wire.frames import encode_batch, text_frame
from ..wire.keys import KeyFilter
from ..wire.topics import TypeFilter
from .connection import Connection
from .fanout_index import GroupIndex
from .poll_waiters import PollWaiters

__all__ = ["ConnectionManager"]

logger = logging.getLogger("hub.manager")


class _Group:
    """Connections of one project with the same filter: they get byte-identical frames."""

    __slots__ = ("connections", "filter", "keys")

    def __init__(self, type_filter: TypeFilter, key_filter: KeyFilter | None) -> None:
        self.filter = type_filter
        self.keys = key_filter
        self.connections: dict[Connection, None] = {}  # insertion-ordered set


class _Project:
    __slots__ = ("epoch", "groups", "index", "last_seq", "pending", "size")

    def __init__(self) -> None:
        self.groups: dict[tuple[TypeFilter, KeyFilter | None], _Group] = {}
        self.index: GroupIndex[_Group] = GroupIndex()
        self.pending: list[StoredEvent] = []
        self.size = 0
        self.epoch: str | None = None
        self.last_seq: int | None = None  # highest seq dispatched, to notice holes


class ConnectionManager:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._projects: dict[str, _Project] = {}
        self._dirty: list[_Project] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slice_s = 0.02  # matching time per loop tick before the flush yields (Hub sets it)
        self.stats = ManagerStats()
        self.on_epoch_change: Callable[[str, str], None] | None = None
        self.polls = PollWaiters(backend, limit=1_000)  # long polls (Hub sets the limit)

    # --- membership ----------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return sum(p.size for p in self._projects.values())

    def project_connection_count(self, project: str) -> int:
        entry = self._projects.get(project)
        return entry.size if entry else 0

    def connections(self, project: str | None = None) -> list[Connection]:
        projects = [self._projects[project]] if project in self._projects else []
        if project is None:
            projects = list(self._projects.values())
        return [c for p in projects for g in p.groups.values() for c in g.connections]

    async def add(self, connection: Connection) -> None:
        """Register before reading history, so nothing published meanwhile is missed."""
        entry = self._projects.get(connection.project)
        if entry is None:
            entry = self._projects[connection.project] = _Project()
            await self._backend.watch(connection.project)
            # the await may have let another connection of the same project in first
            entry = self._projects.setdefault(connection.project, entry)
        connection.stats = self.stats
        self._join(entry, connection)
        entry.size += 1

    async def remove(self, connection: Connection) -> None:
        entry = self._projects.get(connection.project)
        if entry is None or not self._leave(entry, connection):
            return
        entry.size -= 1
        if entry.size == 0:
            del self._projects[connection.project]
            await self._backend.unwatch(connection.project)

    def set_filter(
        self, connection: Connection, type_filter: TypeFilter, key_filter: KeyFilter | None = None
    ) -> None:
        entry = self._projects.get(connection.project)
        if entry is None or not self._leave(entry, connection):
            connection.filter, connection.keys = type_filter, key_filter
            return
        connection.filter, connection.keys = type_filter, key_filter
        self._join(entry, connection)

    def note_epoch(self, project: str, epoch: str) -> None:
        entry = self._projects.get(project)
        if entry is not None and entry.epoch is None:
            entry.epoch = epoch

    @staticmethod
    def _join(entry: _Project, connection: Connection) -> None:
        identity = (connection.filter, connection.keys)
        group = entry.groups.get(identity)
        if group is None:
            group = entry.groups[identity] = _Group(connection.filter, connection.keys)
            entry.index.add(group, group.filter, group.keys)
        group.connections[connection] = None

    @staticmethod
    def _leave(entry: _Project, connection: Connection) -> bool:
        identity = (connection.filter, connection.keys)
        group = entry.groups.get(identity)
        if group is None or connection not in group.connections:
            return False
        del group.connections[connection]
        if not group.connections:
            del entry.groups[identity]
            entry.index.remove(group, group.filter, group.keys)
        return True

    # --- fan-out -------------------------------------------------------------------------

    def dispatch(self, project: str, epoch: str, events: Sequence[StoredEvent]) -> None:
        """Backend listener: queue `events` for this tick's flush (never awaits)."""
        self.polls.wake(project, events)
        entry = self._projects.get(project)
        if entry is None:
            return
        if entry.epoch is not None and entry.epoch != epoch:
            self._epoch_changed(project, entry, epoch)  # an empty batch can announce it
            return
        if not events:
            return
        entry.epoch = epoch
        if entry.last_seq is not None and events[0].seq > entry.last_seq + 1:
            # The backend skipped seqs (e.g. trimmed before this instance read them): never
            # let clients pass over a hole silently; they resume and are told `gap`.
            self._resync(project, entry, entry.last_seq + 1, events[0].seq - 1)
        entry.last_seq = max(entry.last_seq or 0, events[-1].seq)
        self.stats.events += len(events)
        if not entry.pending:
            self._dirty.append(entry)
        entry.pending.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every project's pending events to its connections, one frame per group.

        Matching new event types costs time that grows with the patterns held: after
        `slice_s` of it the flush stops (having sent what it matched) and continues on the
        next loop tick, so other sockets are served in between.
        """
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        stats = self.stats
        stats.flushes += 1
        now_ms = time.time() * 1000
        clock = time.perf_counter
        deadline = clock() + self.slice_s
        for position, entry in enumerate(dirty):
            pending, entry.pending = entry.pending, []
            matched_by_group: dict[_Group, list[StoredEvent]] = {}
            groups_for = entry.index.groups_for
            taken = len(pending)
            for index, event in enumerate(pending):
                for group in groups_for(event.type, event.key):
                    matched = matched_by_group.get(group)
                    if matched is None:
                        matched_by_group[group] = [event]
                    else:
                        matched.append(event)
                if clock() > deadline:
                    taken = index + 1
                    break
            if taken < len(pending):
                entry.pending = pending[taken:]
                pending = pending[:taken]
            for group in entry.index.match_all:
                matched_by_group[group] = pending
            for group, matched in matched_by_group.items():
                payload = encode_batch([e.frame for e in matched])
                frame = text_frame(payload)
                receivers = len(group.connections)
                stats.frames_built += 1
                stats.delivered += len(matched) * receivers
                stats.latency.observe(now_ms - matched[0].ts, receivers)
                for connection in list(group.connections):
                    connection.deliver(matched, payload, frame)
            if entry.pending or (clock() > deadline and position + 1 < len(dirty)):
                # A project cut short goes last, so it cannot starve the others.
                rest = dirty[position + 1 :] + ([entry] if entry.pending else [])
                self._yield_rest(rest)
                return

    def _yield_rest(self, entries: list[_Project]) -> None:
        """Keep `entries` (those with events left, in order) for a flush on the next tick."""
        self.stats.flush_slices += 1
        self._dirty = [e for e in entries if e.pending] + self._dirty
        if self._dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            loop.call_soon(self.flush)

    def _epoch_changed(self, project: str, entry: _Project, epoch: str) -> None:
        """The backend's sequence restarted (data lost): every seq our clients hold is void.

        Closing with 1001 makes them reconnect with since+epoch and get `gap` + `snapshot`.
        """
        logger.warning("project %s: epoch changed %s -> %s", project, entry.epoch, epoch)
        entry.epoch = epoch
        entry.last_seq = None
        self._close_project(
            entry,
            CloseCode.GOING_AWAY,
            "epoch_changed",
            "the project's sequence restarted; reconnect with since and epoch",
        )
        if self.on_epoch_change is not None:
            self.on_epoch_change(project, epoch)

    def _resync(self, project: str, entry: _Project, first: int, last: int) -> None:
        logger.warning("project %s: seqs %d..%d never reached this hub", project, first, last)
        self._close_project(
            entry,
            CloseCode.SLOW_CONSUMER,
            "resync",
            f"seqs {first}..{last} did not reach this hub in time; reconnect with since",
        )

    def _close_project(self, entry: _Project, code: int, error_code: str, message: str) -> None:
        entry.pending = []
        if entry in self._dirty:
            self._dirty.remove(entry)
        for group in entry.groups.values():
            for connection in list(group.connections):
                connection.close(code, error_code, message, retryable=True)

    def close_all(self, code: int, error_code: str, message: str) -> int:
        """Close every connection (shutdown drain); returns how many were open."""
        count = 0
        for entry in list(self._projects.values()):
            for group in list(entry.groups.values()):
                for connection in list(group.connections):
                    if not connection.closed:
                        count += 1
                    connection.close(code, error_code, message, retryable=True)
        return count

"""ConnectionManager: project -> connections, and the fan-out path.

Events arrive from the backend's listener (synchronously, in seq order). They are collected
per project and flushed on a later loop tick: for each group of connections sharing a filter
(types and keys), the matching events are joined into one array frame, framed once, and the same
bytes are offered to every connection of the group. Nothing here awaits a socket. Which
groups take an event is asked of the project's GroupIndex: one match per distinct type
pattern per new type, however many filters hold it, and one key lookup for keyed groups.

When the flush runs is the LingerPolicy's call (linger.py): on the next tick when the hub is
idle, a little later (at most `fanout_linger_max_ms`) under load, so that a publisher yielding
between events still gets many events per frame. A flush works for at most `slice_s`; matching
or delivery left over continues on the next tick, a project's batch always reaching all its
connections before its next batch starts (each connection sees seqs in order).
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
from .linger import LingerPolicy
from .poll_waiters import PollWaiters

__all__ = ["ConnectionManager"]

logger = logging.getLogger("hub.manager")

_SEND_CHUNK = 64  # connections offered a frame between two looks at the clock


class _Group:
    """Connections of one project with the same filter: they get byte-identical frames."""

    __slots__ = ("connections", "filter", "keys")

    def __init__(self, type_filter: TypeFilter, key_filter: KeyFilter | None) -> None:
        self.filter = type_filter
        self.keys = key_filter
        self.connections: dict[Connection, None] = {}  # insertion-ordered set


class _Send:
    """One group's frame of a batch, and the connections it has yet to reach."""

    __slots__ = ("connections", "events", "frame", "next", "payload")

    def __init__(
        self, events: list[StoredEvent], payload: bytes, frame: bytes, connections: list[Connection]
    ) -> None:
        self.events = events
        self.payload = payload
        self.frame = frame
        self.connections = connections
        self.next = 0  # index of the first connection not yet offered the frame


class _Project:
    __slots__ = ("epoch", "groups", "index", "last_seq", "pending", "sending", "size")

    def __init__(self) -> None:
        self.groups: dict[tuple[TypeFilter, KeyFilter | None], _Group] = {}
        self.index: GroupIndex[_Group] = GroupIndex()
        self.pending: list[StoredEvent] = []
        self.size = 0
        self.epoch: str | None = None
        self.last_seq: int | None = None  # highest seq dispatched, to notice holes
        self.sending: list[_Send] = []  # a batch cut short by the time slice, still going out


class ConnectionManager:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._projects: dict[str, _Project] = {}
        self._dirty: list[_Project] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slice_s = 0.02  # flush work per loop tick before it yields (Hub sets it)
        self.linger = LingerPolicy(0.0)  # no linger unless the Hub sets a policy
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
        if not entry.pending and not entry.sending:  # (a project still sending is in _dirty)
            self._dirty.append(entry)
        entry.pending.extend(events)
        if not self._flush_scheduled:
            self._schedule(self.linger.delay())

    def _schedule(self, delay: float) -> None:
        self._flush_scheduled = True
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if delay > 0:
            self.stats.lingered_flushes += 1
            loop.call_later(delay, self.flush)
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every project's pending events to its connections, one frame per group.

        Matching new event types costs time that grows with the patterns held, delivery
        with the connections: after `slice_s` of work the flush stops (having sent what it
        finished) and continues on the next loop tick, so publish calls and other sockets
        are served in between.
        """
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        self.stats.flushes += 1
        clock = self.linger.clock
        started = clock()
        deadline = started + self.slice_s
        for position, entry in enumerate(dirty):
            prepared = False  # each project gets at least one batch matched per tick
            while True:
                if entry.sending and not self._send(entry, deadline, clock):
                    break  # out of time mid-batch
                if not entry.pending or (prepared and clock() > deadline):
                    break
                prepared = True
                self._prepare(entry, deadline, clock)
            if entry.pending or entry.sending or (clock() > deadline and position + 1 < len(dirty)):
                # A project cut short goes last, so it cannot starve the others.
                left = entry.pending or entry.sending
                rest = dirty[position + 1 :] + ([entry] if left else [])
                self._yield_rest(rest)
                break
        self.linger.flushed(started, clock())

    def _prepare(self, entry: _Project, deadline: float, clock: Callable[[], float]) -> None:
        """Match the project's pending events (as many as the slice allows) to its groups and
        frame one batch per group into `entry.sending`."""
        stats = self.stats
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
        now_ms = time.time() * 1000
        for group, matched in matched_by_group.items():
            payload = encode_batch([e.frame for e in matched])
            receivers = len(group.connections)
            stats.frames_built += 1
            stats.delivered += len(matched) * receivers
            stats.latency.observe(now_ms - matched[0].ts, receivers)
            entry.sending.append(
                _Send(matched, payload, text_frame(payload), list(group.connections))
            )

    @staticmethod
    def _send(entry: _Project, deadline: float, clock: Callable[[], float]) -> bool:
        """Offer the batch in `entry.sending` to its connections until done (True) or out
        of time (False; the rest goes on the next tick). The clock is read every
        `_SEND_CHUNK` connections: a deliver costs microseconds."""
        sending = entry.sending
        while sending:
            send = sending[0]
            connections, events, payload, frame = (
                send.connections,
                send.events,
                send.payload,
                send.frame,
            )
            total = len(connections)
            while send.next < total:
                end = min(total, send.next + _SEND_CHUNK)
                for connection in connections[send.next : end]:
                    connection.deliver(events, payload, frame)
                send.next = end
                if end < total and clock() > deadline:
                    return False
            sending.pop(0)
        return True

    def _yield_rest(self, entries: list[_Project]) -> None:
        """Keep `entries` (those with work left, in order) for a flush on the next tick."""
        self.stats.flush_slices += 1
        self._dirty = [e for e in entries if e.pending or e.sending] + self._dirty
        if self._dirty and not self._flush_scheduled:
            self._schedule(0.0)  # work already waiting: no linger on top of it

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
        entry.sending = []
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

"""StreamReader: one task per hub instance that reads every watched project's stream and hands
new events to the listener, in seq order, with the epoch stored beside them.

Standalone Redis: one blocking `XREAD` over all watched streams on a dedicated connection,
plus this instance's wake-up stream, to which watch() appends so that a new stream is read
at once. `BLOCK` stays below the socket timeout, so a dead link fails the read within the
socket timeout rather than never. Redis Cluster refuses a multi-key XREAD across slots (and
every project has its own slot), so there the reader polls: one pipelined `XRANGE` per watched
project, sent to each node in one round trip, repeated at once while events keep coming and
after `redis_cluster_poll_ms` (or a watch()) when they do not.

Where a project's read starts: its cursor is pinned by the first position() after watch()
(or by the reader itself), to the head that position saw. Every subscriber registers before
asking for the position, so every seq above what it was told is read after it registered.

Faults: on any failure the reader reconnects with jittered exponential backoff and resumes
from each project's cursor. After a reconnect, and every `redis_epoch_check_s`, it compares
each watched epoch with Redis; an entry or an epoch key from another epoch means the counter
was lost, so the cursor restarts at 0 in the new epoch and the listener is told (the manager
closes that project's subscribers, who come back to `gap` + `snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ..config import Settings
from ..errors import BackendUnavailable
from .base import EventListener, Position, StoredEvent
from .redis_store import REDIS_FAILURES, RedisClient, RedisStore, event_from_entry

__all__ = ["Cursor", "StreamReader", "cancel_and_wait"]

logger = logging.getLogger("hub.redis")

READ_COUNT = 1_000  # entries per stream per read


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = 5.0) -> None:
    """Cancel `tasks` and wait for them, cancelling again if one shrugs a cancel off.

    On Python 3.11, `asyncio.wait_for` (which redis-py wraps around every socket write)
    swallows a cancel that lands just as the write completes; the task then runs on.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
    if pending:
        logger.error("%d redis tasks did not stop within %gs", len(pending), timeout)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.debug("redis task ended with %r", task.exception())


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Cursor:
    """Where the reader stands in one watched project: `seq` is None until pinned."""

    __slots__ = ("epoch", "last", "pin", "refs", "seq")

    def __init__(self) -> None:
        self.refs = 1
        self.epoch: str | None = None
        self.seq: int | None = None
        self.last: bytes | None = None  # the stored entry at `seq`, as delivered
        self.pin: asyncio.Task[Position] | None = None


# stream key -> (project, the cursor read for it, the seq the read started after)
_Issued = dict[bytes, tuple[str, Cursor, int]]


class StreamReader:
    def __init__(self, store: RedisStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._listener: EventListener | None = None
        self.cursors: dict[str, Cursor] = {}
        self.healthy = False
        self.reconnects = 0  # how many times the reader lost Redis and got it back
        self.epoch_changes = 0  # watched projects whose sequence restarted
        self.last_read = time.monotonic()  # when a read round trip last completed
        self.lag = 0  # at the last epoch check: most events a watched stream was ahead
        # at the last epoch check: reading a replica cut off from its primary, which serves
        # stale data without an error, so its reads are no progress
        self.detached = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._wake_key = store.wake_key()
        self._wake_id = b"0-0"
        self._blocked = False  # an XREAD is waiting in Redis: a watch() must wake it
        self._kicking = False
        self._kick_tasks: set[asyncio.Task[None]] = set()
        self._delay = 0.0
        self._next_epoch_check = 0.0
        self._closing = False
        # BLOCK well below the socket timeout: a reply that is late means a dead link.
        self._block_ms = min(settings.redis_block_ms, int(settings.redis_socket_timeout_s * 500))

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, listener: EventListener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._run(), name="redis-stream-reader")

    async def close(self) -> None:
        self._closing = True
        tasks = [self._task, *self._kick_tasks, *(c.pin for c in self.cursors.values())]
        await cancel_and_wait([t for t in tasks if t is not None])
        self._task = None
        if not self._store.cluster:
            with contextlib.suppress(*REDIS_FAILURES):
                await asyncio.wait_for(self._store.client.delete(self._wake_key), 1.0)

    # --- watched projects ----------------------------------------------------------------

    def watch(self, project: str) -> None:
        cursor = self.cursors.get(project)
        if cursor is not None:
            cursor.refs += 1
            return
        self.cursors[project] = Cursor()
        self._kick()

    def unwatch(self, project: str) -> None:
        cursor = self.cursors.get(project)
        if cursor is None:
            return
        cursor.refs -= 1
        if cursor.refs <= 0:
            del self.cursors[project]

    async def pin(self, project: str) -> Position | None:
        """Pin an unpinned watched project's cursor to its head now; None if nothing to pin.

        Callers racing for the same project share one position() call, so no caller can be
        told a head below the cursor.
        """
        cursor = self.cursors.get(project)
        if cursor is None or cursor.seq is not None:
            return None
        if cursor.pin is None:
            cursor.pin = asyncio.create_task(self._pin(project, cursor), name="redis-pin")
            cursor.pin.add_done_callback(_retrieve)  # its callers may all have gone
        return await asyncio.shield(cursor.pin)

    async def _pin(self, project: str, cursor: Cursor) -> Position:
        try:
            position = await self._store.position(project)
        except BaseException:
            cursor.pin = None  # the next caller tries again
            raise
        if self.cursors.get(project) is cursor and cursor.seq is None:
            cursor.epoch, cursor.seq = position.epoch, position.head
            self._kick()
        return position

    def _kick(self) -> None:
        """Make the reader pick up a changed set of streams now, not after BLOCK ms."""
        self._wake.set()
        if self._store.cluster or not self._blocked or self._kicking:
            return
        self._kicking = True
        task = asyncio.create_task(self._append_wake(), name="redis-reader-wake")
        self._kick_tasks.add(task)
        task.add_done_callback(self._kick_tasks.discard)

    async def _append_wake(self) -> None:
        try:
            client = self._store.client
            await client.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
            await client.pexpire(self._wake_key, 60_000)
        except REDIS_FAILURES as exc:
            logger.debug("could not wake the stream reader: %s", exc)
        finally:
            self._kicking = False

    # --- the read loop -------------------------------------------------------------------

    async def _run(self) -> None:
        settings = self._settings
        while not self._closing:
            client = self._store.new_client(1)
            try:
                await self._serve(client)
            except asyncio.CancelledError:
                raise
            except (*REDIS_FAILURES, BackendUnavailable) as exc:
                if self.healthy:
                    logger.warning("redis stream reader lost redis: %s", exc)
                self.healthy = False
            except Exception:
                logger.exception("redis stream reader failed; restarting it")
                self.healthy = False
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    await client.aclose()
            if self._closing:
                return
            self._delay = min(max(self._delay * 2, 0.05), settings.redis_reconnect_max_s)
            await asyncio.sleep(self._delay * random.uniform(0.5, 1.0))

    async def _serve(self, client: RedisClient) -> None:
        if isinstance(client, RedisCluster):
            await client.initialize()
        await client.ping()
        await self._verify_cursors(client)
        await self._recheck_positions()
        if not self.healthy:
            self.healthy = True
            self.reconnects += 1
            if self.reconnects > 1:
                logger.info("redis stream reader reconnected")
                await self._store.drop_idle_connections()
        self._delay = 0.0
        while not self._closing:
            await self._pin_unpinned()
            if time.monotonic() >= self._next_epoch_check:
                await self._check_epochs(client)
            if self._store.cluster:
                await self._poll_once(client)
            else:
                await self._block_once(client)

    async def _pin_unpinned(self) -> None:
        unpinned = [p for p, c in self.cursors.items() if c.seq is None]
        if unpinned:
            await asyncio.gather(*(self.pin(p) for p in unpinned))

    def _issue(self) -> _Issued:
        issued: _Issued = {}
        keys = self._store.keys
        for project, cursor in self.cursors.items():
            if cursor.seq is not None:
                issued[keys(project).events.encode()] = (project, cursor, cursor.seq)
        return issued

    async def _block_once(self, client: RedisClient) -> None:
        issued = self._issue()
        streams: dict[Any, Any] = {k: b"%d-0" % seq for k, (_, _, seq) in issued.items()}
        streams[self._wake_key.encode()] = self._wake_id
        self._wake.clear()
        self._blocked = True
        try:
            reply: Any = await client.xread(streams, count=READ_COUNT, block=self._block_ms)
        finally:
            self._blocked = False
        self._read_done()
        for stream, entries in reply or ():
            if stream == self._wake_key.encode():
                self._wake_id = entries[-1][0]
            else:
                self._deliver(issued[stream], entries)

    async def _poll_once(self, client: RedisClient) -> None:
        issued = self._issue()
        self._wake.clear()
        got_any = False
        if issued:
            pipe = client.pipeline(transaction=False)
            for stream, (_, _, seq) in issued.items():
                pipe.xrange(stream, b"%d-0" % (seq + 1), b"+", count=READ_COUNT)
            replies = await pipe.execute()
            self._read_done()
            for (_, read), entries in zip(issued.items(), replies, strict=True):
                if entries:
                    got_any = True
                    self._deliver(read, entries)
        else:
            self._read_done()
        if not got_any:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self._settings.redis_cluster_poll_ms / 1000
                )

    def _deliver(self, read: tuple[str, Cursor, int], entries: Sequence[Any]) -> None:
        project, cursor, after = read
        if self.cursors.get(project) is not cursor or cursor.seq != after or not entries:
            return  # unwatched, re-pinned or reset while the read was out
        events: list[StoredEvent] = []
        epoch = cursor.epoch
        for entry_id, fields in entries:
            entry_epoch, event = event_from_entry(project, entry_id, fields)
            if entry_epoch != epoch:
                # A new life of the sequence (the counter was lost): read it from its start.
                self._epoch_changed(project, cursor, entry_epoch)
                return
            events.append(event)
        if events[0].seq != after + 1:
            logger.warning(
                "project %s: seqs %d..%d were trimmed before this hub read them",
                project,
                after + 1,
                events[0].seq - 1,
            )
        cursor.seq = events[-1].seq
        last = entries[-1][1]
        cursor.last = last[b"v"] if isinstance(last, dict) else last[1]
        assert epoch is not None
        self._store.note(project, epoch, cursor.seq)
        self._notify(project, epoch, events)

    def _epoch_changed(self, project: str, cursor: Cursor, epoch: str) -> None:
        logger.warning("project %s: epoch changed %s -> %s", project, cursor.epoch, epoch)
        cursor.epoch, cursor.seq, cursor.last = epoch, 0, None
        self.epoch_changes += 1
        self._notify(project, epoch, [])

    def _notify(self, project: str, epoch: str, events: Sequence[StoredEvent]) -> None:
        if self._listener is None:
            return
        try:
            self._listener(project, epoch, events)
        except Exception:
            logger.exception("listener failed on project %s", project)

    async def _recheck_positions(self) -> None:
        """After a (re)connect: Redis may have restarted empty or from an older copy. The
        script starts a new epoch when the counter is gone or behind what this process saw."""
        self._next_epoch_check = time.monotonic() + self._settings.redis_epoch_check_s
        pinned = [(p, c) for p, c in self.cursors.items() if c.seq is not None]
        positions = await asyncio.gather(*(self._store.position(p) for p, _ in pinned))
        for (project, cursor), position in zip(pinned, positions, strict=True):
            if self.cursors.get(project) is cursor and position.epoch != cursor.epoch:
                self._epoch_changed(project, cursor, position.epoch)

    async def _check_epochs(self, client: RedisClient) -> None:
        """Compare every pinned epoch with Redis: a missing or other epoch means data loss
        (flushed, expired or evicted keys, with the connection never broken)."""
        self._next_epoch_check = time.monotonic() + self._settings.redis_epoch_check_s
        pinned = [(p, c) for p, c in self.cursors.items() if c.seq is not None]
        if not pinned:
            return
        pipe = client.pipeline(transaction=False)
        for project, _ in pinned:
            keys = self._store.keys(project)
            pipe.get(keys.epoch)
            pipe.get(keys.seq)
        if not self._store.cluster:
            pipe.execute_command("ROLE")
        replies = await pipe.execute()
        if not self._store.cluster:
            role = replies.pop()
            # ROLE of a replica: [b"slave", host, port, link state, offset]
            self.detached = role[0] == b"slave" and role[3] != b"connected"
        stored, heads = replies[0::2], replies[1::2]
        lag = 0
        for (project, cursor), value, head in zip(pinned, stored, heads, strict=True):
            if self.cursors.get(project) is not cursor:
                continue
            if head is not None and cursor.seq is not None:
                lag = max(lag, int(head) - cursor.seq)
            epoch = value.decode() if value is not None else None
            if epoch is None:
                # Gone: start the new epoch now, as the next publish would.
                epoch = (await self._store.position(project)).epoch
            if epoch != cursor.epoch and self.cursors.get(project) is cursor:
                self._epoch_changed(project, cursor, epoch)
        self.lag = lag

    async def _verify_cursors(self, client: RedisClient) -> None:
        """After a (re)connect, possibly to a promoted replica: the entry each cursor stands
        on must still be there, unchanged. One that is gone (the counter went back) or was
        replaced (another event took its seq) was lost with the old primary; clients hold
        it, so its epoch is ended in Redis (the next publish starts a new one) rather than
        continued with reused seqs."""
        held = [(p, c, c.seq) for p, c in self.cursors.items() if c.seq]
        if not held:
            return
        pipe = client.pipeline(transaction=False)
        for project, _, seq in held:
            keys = self._store.keys(project)
            pipe.xrange(keys.events, b"%d-0" % seq, b"%d-0" % seq)
            pipe.get(keys.seq)
            pipe.get(keys.epoch)
        replies = await pipe.execute()
        for i, (project, cursor, seq) in enumerate(held):
            entries, head, epoch = replies[3 * i : 3 * i + 3]
            if self.cursors.get(project) is not cursor or cursor.seq != seq:
                continue
            if epoch is None or epoch.decode() != cursor.epoch:
                continue  # another epoch already: _recheck_positions tells the listener
            if entries:
                fields = entries[0][1]
                value = fields[b"v"] if isinstance(fields, dict) else fields[1]
                if cursor.last is None or value == cursor.last:
                    continue  # unchanged, or pinned from a position: only its counter to check
            elif head is not None and int(head) >= seq:
                continue  # trimmed by retention: nothing to compare, the counter is ahead
            assert cursor.epoch is not None
            logger.warning(
                "project %s: seq %s of epoch %s is gone or replaced (a failover lost it):"
                " ending the epoch",
                project,
                cursor.seq,
                cursor.epoch,
            )
            await self._store.fence(project, cursor.epoch)

    def _read_done(self) -> None:
        if not self.detached:
            self.last_read = time.monotonic()

    def stalled(self, now: float | None = None) -> bool:
        """No read round trip that could make progress (not from a detached replica)
        completed for redis_reader_stall_s; XREAD returns every BLOCK ms when all is well."""
        now = time.monotonic() if now is None else now
        return now - self.last_read > self._settings.redis_reader_stall_s

    async def behind(self, limit: int = 1_000) -> bool:
        """Whether some watched stream (of the first `limit`) has events past the cursor."""
        pinned = [(p, c) for p, c in self.cursors.items() if c.seq is not None][:limit]
        if not pinned:
            return False
        heads = await self._store.heads([p for p, _ in pinned])
        pairs = zip(pinned, heads, strict=True)
        return any(h is not None and h > (c.seq or 0) for (_, c), h in pairs)

"""All subscriber sockets of a worker in one epoll set, drained by one asyncio reader callback.

Why: with an asyncio Protocol per connection, every read costs a selector event, a Handle and
a callback through the loop (several microseconds of Python), and with one event per frame per
subscriber that, not the hub, capped what two shared cores could measure. Registering the
epoll fd itself with the loop turns "N sockets readable" into one callback that recv()s each
ready socket directly. Level-triggered: a socket with more than one read's worth stays ready.
"""

from __future__ import annotations

import asyncio
import select
from typing import Final, Protocol

__all__ = ["ReadMux", "Readable"]

MAX_EVENTS: Final = 1024  # per callback: bounds how long one drain holds the loop


class Readable(Protocol):
    def on_readable(self) -> None: ...


class ReadMux:
    """`min_interval_s` > 0 spaces drains out: after one, the epoll fd is not watched again
    until that much time has passed. On two shared cores a wake-up per frame (context switch,
    loop iteration) costs the generator more than the frame itself; waiting a fraction of a
    millisecond lets several sockets' frames be read per wake-up. It can add up to that
    interval to a measured latency, which is below the millisecond resolution of `ts`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, min_interval_s: float = 0.0) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._readers: dict[int, Readable] = {}
        self._interval = min_interval_s
        self._rearm_handle: asyncio.TimerHandle | None = None
        loop.add_reader(self._epoll.fileno(), self._drain)

    def add(self, fd: int, reader: Readable) -> None:
        self._readers[fd] = reader
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:  # already closed
                pass

    def pause(self, fd: int) -> None:
        """Stop reading fd: data backs up in the kernel, then in the server (slow consumer)."""
        if fd in self._readers:
            self._epoll.modify(fd, 0)

    def resume(self, fd: int) -> None:
        if fd in self._readers:
            self._epoll.modify(fd, select.EPOLLIN)

    def _drain(self) -> None:
        readers = self._readers
        for fd, _ in self._epoll.poll(0, MAX_EVENTS):
            reader = readers.get(fd)
            if reader is not None:
                reader.on_readable()
        if self._interval > 0:
            self._loop.remove_reader(self._epoll.fileno())
            self._rearm_handle = self._loop.call_later(self._interval, self._rearm)

    def _rearm(self) -> None:
        self._rearm_handle = None
        self._loop.add_reader(self._epoll.fileno(), self._drain)

    def close(self) -> None:
        if self._rearm_handle is not None:
            self._rearm_handle.cancel()
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._readers.clear()

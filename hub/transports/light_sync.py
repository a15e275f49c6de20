"""Per-connection stand-ins for asyncio.Event and asyncio.Queue, for the uvicorn adapter.

uvicorn's WebSocket protocol gives every connection an asyncio.Queue (three deques and an
Event with a fourth) and an asyncio.Event (a fifth); CPython allocates each deque eagerly at
760 bytes, about 3.7 KiB per idle connection in all. These keep the subset of the API
uvicorn calls, with waiters and items in lists created only when needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Inbox", "Signal"]

T = TypeVar("T")


class Signal:
    """asyncio.Event's set / clear / is_set / wait."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:  # cancelled before set()
                waiters.remove(waiter)
        return True


class Inbox(Generic[T]):
    """asyncio.Queue's unbounded put_nowait / get / empty / qsize, for one reader."""

    __slots__ = ("_getters", "_head", "_items", "on_put")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._head = 0  # items before it are taken: pops stay O(1) without a deque
        self._getters: list[asyncio.Future[None]] | None = None
        self.on_put: Callable[[], None] | None = None  # a reader that takes items without get()

    def qsize(self) -> int:
        return len(self._items) - self._head

    def empty(self) -> bool:
        return self._head >= len(self._items)

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        getters, self._getters = self._getters, None
        for getter in getters or ():
            if not getter.done():
                getter.set_result(None)
        if self.on_put is not None:
            self.on_put()

    async def get(self) -> T:
        while self.empty():
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            finally:
                getters = self._getters
                if getters is not None and getter in getters:
                    getters.remove(getter)
        return self.get_nowait()

    def get_nowait(self) -> T:
        if self.empty():
            raise asyncio.QueueEmpty
        item = self._items[self._head]
        self._head += 1
        if self._head >= len(self._items):
            self._items.clear()
            self._head = 0
        elif self._head >= 64 and self._head * 2 >= len(self._items):
            del self._items[: self._head]  # a long burst: drop the taken prefix now and then
            self._head = 0
        return item

"""hub.transports.light_sync: the Event and Queue stand-ins every WebSocket connection uses."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.transports.light_sync import Inbox, Signal


@given(st.lists(st.one_of(st.integers(0, 1000), st.none()), max_size=400))
def test_inbox_is_fifo_like_a_deque(ops: list[int | None]) -> None:
    """Puts (ints) and takes (None) in any order: the same items in the same order as a
    deque, across the prefix compaction of long bursts."""
    inbox: Inbox[int] = Inbox()
    model: deque[int] = deque()
    for op in ops:
        if op is not None:
            inbox.put_nowait(op)
            model.append(op)
        elif model:
            assert inbox.get_nowait() == model.popleft()
        else:
            with pytest.raises(asyncio.QueueEmpty):
                inbox.get_nowait()
        assert inbox.qsize() == len(model) and inbox.empty() == (not model)


async def test_inbox_get_waits_for_a_put_and_calls_on_put() -> None:
    inbox: Inbox[str] = Inbox()
    calls: list[int] = []
    inbox.on_put = lambda: calls.append(inbox.qsize())
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait("a")
    assert await asyncio.wait_for(getter, 5) == "a"
    assert calls == [1]


async def test_a_cancelled_inbox_get_leaves_no_waiter() -> None:
    inbox: Inbox[str] = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert not inbox._getters
    inbox.put_nowait("b")
    assert await asyncio.wait_for(inbox.get(), 5) == "b"


async def test_signal_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    signal = Signal()
    assert not signal.is_set()
    waiters = [asyncio.create_task(signal.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    assert signal._waiters is not None and len(signal._waiters) == 2
    signal.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters[1:]), 5) == [True, True]
    assert signal.is_set() and await signal.wait()
    signal.clear()
    late = asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    assert not late.done()
    signal.set()
    assert await asyncio.wait_for(late, 5)

"""The fan-out's adaptive linger (hub/fanout/linger.py) and delivery slicing.

The policy is a pure function of the last flush and a clock, tested with FakeClock. The live
tests read the hub's own accounting (`lingered_flushes`, `frames_built`), never wall time:
timing targets belong in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from hub.backends.base import StoredEvent
from hub.config import Settings
from hub.fanout.connection import Connection
from hub.fanout.linger import LingerPolicy
from hub.fanout.manager import ConnectionManager
from hub.wire.topics import TypeFilter

from .support import FakeClock, RunningHub, wait_for
from .test_fanout import close_all, open_recorders
from .test_fanout_slices import _Backend, _RecordingSink

MS = 0.001


def test_an_idle_hub_does_not_linger() -> None:
    policy = LingerPolicy(4 * MS, clock=FakeClock())
    assert policy.delay() == 0.0  # nothing ever flushed


def test_the_linger_follows_the_last_flush_time() -> None:
    clock = FakeClock()
    policy = LingerPolicy(4 * MS, clock=clock)
    policy.flushed(clock.now, clock.now + 1 * MS)
    clock.advance(1 * MS)  # the flush ends; the next event comes at once
    assert policy.delay() == pytest.approx(1 * MS)
    policy.flushed(clock.now, clock.now + 3 * MS)
    clock.advance(3 * MS)
    assert policy.delay() == pytest.approx(3 * MS)


def test_the_linger_is_scaled_by_its_gain_and_capped() -> None:
    clock = FakeClock()
    policy = LingerPolicy(4 * MS, gain=0.5, clock=clock)
    policy.flushed(clock.now, clock.now + 2 * MS)
    clock.advance(2 * MS)
    assert policy.delay() == pytest.approx(1 * MS)
    policy.flushed(clock.now, clock.now + 50 * MS)  # a huge flush: the cap holds
    clock.advance(50 * MS)
    assert policy.delay() == pytest.approx(4 * MS)


def test_the_linger_resets_once_the_hub_goes_idle() -> None:
    clock = FakeClock()
    policy = LingerPolicy(4 * MS, gather=4, clock=clock)
    policy.flushed(clock.now, clock.now + 3 * MS)
    clock.advance(3 * MS)
    clock.advance(0.7 * MS)  # the next event soon: about 4 more would come within 3 ms
    assert policy.delay() == pytest.approx(3 * MS)
    clock.advance(0.1 * MS)  # longer than linger / gather without a flush: idle
    assert policy.delay() == 0.0


def test_events_sparser_than_the_linger_are_not_held_back() -> None:
    """A steady trickle (an event every 10 ms, flushes of 5 ms, or of 8 ms when the process
    was descheduled mid-flush) gathers nothing by waiting."""
    clock = FakeClock()
    policy = LingerPolicy(4 * MS, clock=clock)
    for cost in (5 * MS, 8 * MS, 5 * MS):
        policy.flushed(clock.now, clock.now + cost)
        clock.advance(10 * MS)  # the flush ended `cost` in; the next event 10 ms after this one
        assert policy.delay() == 0.0


def test_a_zero_cap_disables_lingering() -> None:
    clock = FakeClock()
    policy = LingerPolicy(0.0, clock=clock)
    policy.flushed(clock.now, clock.now + 10 * MS)
    assert policy.delay() == 0.0
    with pytest.raises(ValueError):
        LingerPolicy(-1.0)
    with pytest.raises(ValueError):
        LingerPolicy(1.0, gather=0.5)


def test_the_cap_comes_from_settings_and_is_bounded() -> None:
    assert Settings().fanout_linger_max_ms > 0  # on by default
    assert Settings.from_env({"HUB_FANOUT_LINGER_MAX_MS": "0"}).fanout_linger_max_ms == 0
    for bad in (-1.0, 5000.0):
        with pytest.raises(ValueError, match="fanout_linger_max_ms"):
            Settings(fanout_linger_max_ms=bad)


def _ticking_clock() -> Callable[[], float]:
    """Every read is one second later: with slice_s=0 each look at the clock is over time."""
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    return clock


def _event(seq: int) -> StoredEvent:
    return StoredEvent(seq, "a.b", None, int(time.time() * 1000), b'{"seq":%d}' % seq)


async def _group_member(
    manager: ConnectionManager, name: str, log: list[tuple[str, bytes]]
) -> None:
    connection = Connection(
        "p",
        _RecordingSink(name, log),  # type: ignore[arg-type]
        TypeFilter(["a.*"]),  # the same filter: one group, one shared frame
        queue_events=1000,
        queue_bytes=1 << 20,
        max_frame_bytes=1 << 20,
    )
    await manager.add(connection)
    connection.go_live(0)


async def test_a_delivery_over_its_slice_resumes_next_tick_and_keeps_each_connections_order() -> (
    None
):
    manager = ConnectionManager(_Backend())  # type: ignore[arg-type]
    manager.slice_s = 0.0
    manager.linger = LingerPolicy(0.0, clock=_ticking_clock())
    log: list[tuple[str, bytes]] = []
    n = 150  # more connections than one chunk between looks at the clock
    for i in range(n):
        await _group_member(manager, f"c{i}", log)
    manager.dispatch("p", "e1", [_event(1)])
    manager.flush()  # one tick: framed, then out of time after one chunk of connections
    first_tick = len(log)
    assert 0 < first_tick < n
    manager.dispatch("p", "e1", [_event(2)])  # arrives while the first batch is half sent
    await wait_for(lambda: len(log) == 2 * n, what="both batches to every connection")
    by_connection: dict[str, list[bytes]] = {}
    for name, payload in log:
        by_connection.setdefault(name, []).append(payload)
    assert len(by_connection) == n
    for payloads in by_connection.values():
        assert payloads == [b'{"seq":1}', b'{"seq":2}']  # each connection: in order, once
    # every connection had the first batch before any had the second
    assert all(payload == b'{"seq":1}' for _, payload in log[:n])
    assert manager.stats.flush_slices >= 2


@pytest.mark.hub_settings(heartbeat_s=5.0, fanout_linger_max_ms=50.0)
async def test_a_single_event_on_an_idle_hub_is_flushed_without_linger(
    running_hub: RunningHub,
) -> None:
    (subscriber,) = await open_recorders(running_hub, "p1", 1)
    stats = running_hub.hub.manager.stats
    await running_hub.hub.publish("p1", "bench.tick", {"i": 0})
    await wait_for(lambda: subscriber.seqs == [1], what="the event")
    assert stats.flushes >= 1
    assert stats.lingered_flushes == 0  # sent on the next loop tick, not after the 50 ms cap
    await close_all([subscriber])


@pytest.mark.hub_settings(heartbeat_s=5.0, fanout_linger_max_ms=20.0)
async def test_a_publisher_yielding_between_events_gets_several_events_per_frame(
    running_hub: RunningHub,
) -> None:
    subscribers = await open_recorders(running_hub, "p1", 50)  # a flush costs some time
    hub = running_hub.hub
    stats = hub.manager.stats
    events = 300
    for i in range(events):
        await hub.publish("p1", "bench.tick", {"i": i})
        await asyncio.sleep(0)  # yield to the loop between events, as services do
    await wait_for(
        lambda: all(len(s.seqs) == events for s in subscribers), timeout=30, what="all events"
    )
    for subscriber in subscribers:
        assert subscriber.seqs == list(range(1, events + 1))
    assert stats.lingered_flushes > 0
    # Each lingered flush takes the event that scheduled it and at least one published
    # while it waited; without the linger every event would be its own frame.
    assert stats.frames_built < events
    await close_all(subscribers)

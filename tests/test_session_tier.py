"""The middle tier: the ConnectionManager, the subscription stream and SubscriberSession over
recording sinks, with no sockets. Fast and deterministic; seeds are printed and fixed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import msgspec
import pytest

from hub.backends.memory import MemoryBackend
from hub.config import Settings
from hub.core import Hub
from hub.fanout.connection import AnySink, Connection
from hub.fanout.framers import WebSocketFramer, frame
from hub.fanout.loop_lag import LoopLagMeter
from hub.fanout.outbound import Outbound
from hub.fanout.pull_sink import PullSink
from hub.fanout.session import start_stream
from hub.fanout.subscriber_session import Close, SubscriberSession
from hub.limits import OpBudget, TokenBucket
from hub.protocol import CloseCode, ErrorFrame, PongFrame, SubscribedFrame
from hub.wire.catalog import EventCatalog
from hub.wire.subscription import SubscriptionParams
from hub.wire.topics import TypeFilter

from .support import wait_for

P = "p1"


class RecordingPushSink:
    """A push sink that records what it is given; `congested` makes it refuse direct writes
    (the fan-out queues) until `drain()`."""

    direct: Literal[True] = True

    def __init__(self, *, yields: bool = True) -> None:
        self.payloads: list[bytes] = []
        self.ended: ErrorFrame | None = None
        self.yields = yields
        self.congested = False
        self._drain: Callable[[], None] | None = None
        self._framer = WebSocketFramer()

    def writable(self) -> bool:
        return not self.congested and self.ended is None

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        self.payloads.append(payload)

    def write_item(self, item: Outbound) -> None:
        self.payloads.append(frame(self._framer, item))

    def start(self, drain_queue: Callable[[], None]) -> None:
        self._drain = drain_queue

    def drain(self) -> None:
        self.congested = False
        assert self._drain is not None
        self._drain()

    async def send(self, item: Outbound) -> None:
        if self.yields:
            await asyncio.sleep(0)  # a session send lets the loop (and publishers) run
        self.write_item(item)

    def end(self, error: ErrorFrame) -> None:
        self.ended = error

    async def stop(self) -> None:
        self._drain = None


class RecordingTransport:
    """The awaitable end of a pull sink, recording what the writer task sends."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.closed: ErrorFrame | None = None

    async def send(self, data: bytes) -> None:
        await asyncio.sleep(0)
        self.payloads.append(data)

    async def close(self, error: ErrorFrame) -> None:
        self.closed = error


def frames_of(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    for payload in payloads:
        decoded = msgspec.json.decode(payload)
        frames.extend(decoded if isinstance(decoded, list) else [decoded])
    return frames


def seqs_of(payloads: Sequence[bytes]) -> list[int]:
    return [f["seq"] for f in frames_of(payloads) if f["op"] == "event"]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    # A small replay chunk: a replay of a few hundred events takes many awaits.
    settings = Settings(history_max_limit=16)
    hub = Hub(settings, MemoryBackend(settings), EventCatalog())
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def publish(hub: Hub, count: int, type: str = "a.b") -> None:
    for i in range(count):
        await hub.publish(P, type, {"i": i})


def connect(hub: Hub, sink: AnySink, patterns: Sequence[str] = ("*",)) -> Connection:
    settings = hub.settings
    return Connection(
        P,
        sink,
        TypeFilter(patterns),
        queue_events=settings.queue_events,
        queue_bytes=settings.queue_bytes,
        max_frame_bytes=settings.max_frame_bytes,
    )


def params(since: int | None) -> SubscriptionParams:
    return SubscriptionParams(P, since, None, ["*"], explicit_types=False)


# --- seq continuity: replay and live publishing interleaved ----------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", ["push", "pull"])
async def test_publishing_during_a_replay_loses_and_repeats_nothing(
    hub: Hub, seed: int, shape: str
) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    before, during = rng.randint(50, 300), rng.randint(50, 300)
    since = rng.randint(0, before - 20)  # below head: a replay runs
    await publish(hub, before)
    transport = RecordingTransport()
    sink: AnySink
    if shape == "push":
        sink = push = RecordingPushSink()
    else:
        sink = PullSink(transport, WebSocketFramer(), chunk_bytes=4096, heartbeat_s=60)
    connection = connect(hub, sink)
    await hub.manager.add(connection)
    connection.start()
    stream = asyncio.create_task(start_stream(hub, connection, params(since)))
    published_while_replaying = 0
    for i in range(during):
        await hub.publish(P, "a.b", {"i": i})
        published_while_replaying += not connection.live
        if shape == "push" and rng.random() < 0.2:
            push.congested = not push.congested  # some live events queue behind a full socket
        for _ in range(rng.randint(1, 3)):
            await asyncio.sleep(0)
    await stream
    if shape == "push":
        push.drain()
    payloads = push.payloads if shape == "push" else transport.payloads
    total = before + during
    await wait_for(lambda: len(seqs_of(payloads)) >= total - since, 5, "every seq")
    assert published_while_replaying > 0, "the replay ended before any live publish"
    assert seqs_of(payloads) == list(range(since + 1, total + 1))
    assert connection.last_seq_sent == total and not connection.closed
    await hub.manager.remove(connection)
    await sink.stop()


async def test_an_event_replayed_before_its_fan_out_tick_is_not_sent_again(hub: Hub) -> None:
    await publish(hub, 10)
    sink = RecordingPushSink(yields=False)
    connection = connect(hub, sink)
    await hub.manager.add(connection)
    connection.start()
    await publish(hub, 1)  # seq 11: its fan-out waits for the next loop tick
    await start_stream(hub, connection, params(0))  # replays 1..11 and goes live first
    assert connection.live and seqs_of(sink.payloads) == list(range(1, 12))
    await publish(hub, 1)
    await wait_for(lambda: connection.last_seq_sent == 12, 5, "seq 12")
    await wait_for(lambda: len(seqs_of(sink.payloads)) >= 12, 5, "seq 12 written")
    assert seqs_of(sink.payloads) == list(range(1, 13))
    await hub.manager.remove(connection)


async def test_a_snapshot_gap_then_live_events_continue_from_the_snapshot_head(hub: Hub) -> None:
    await publish(hub, 30)
    sink = RecordingPushSink()
    connection = connect(hub, sink)
    await hub.manager.add(connection)
    connection.start()
    gap_params = SubscriptionParams(P, 5, "another-epoch", ["*"], explicit_types=False)
    stream = asyncio.create_task(start_stream(hub, connection, gap_params))
    await publish(hub, 10)
    await stream
    await wait_for(lambda: connection.last_seq_sent == 40, 5, "live after the snapshot")
    frames = frames_of(sink.payloads)
    ops = [f["op"] for f in frames]
    assert ops[:2] == ["welcome", "gap"] and "snapshot" in ops
    head = next(f for f in frames if f["op"] == "snapshot")["head"]
    live = [f["seq"] for f in frames[ops.index("snapshot") + 1 :] if f["op"] == "event"]
    assert live == list(range(head + 1, 41))
    await hub.manager.remove(connection)


# --- merge rules ---------------------------------------------------------------------------


def session(
    settings: Settings,
    patterns: Sequence[str] = ("*",),
    *,
    explicit: bool = False,
    op_budget: OpBudget | None = None,
) -> tuple[SubscriberSession, list[list[str]]]:
    applied: list[list[str]] = []

    def apply(types: list[str], keys: list[str] | None) -> None:
        assert keys is None  # these tests never set keys (test_keys_live does)
        applied.append(types)

    return (
        SubscriberSession(
            settings, patterns, explicit_types=explicit, op_budget=op_budget, apply=apply
        ),
        applied,
    )


def subscribed(reply: object) -> list[str]:
    assert isinstance(reply, SubscribedFrame), reply
    return reply.types


def test_the_first_subscribe_replaces_the_implicit_star_then_subscribes_merge() -> None:
    s, applied = session(Settings())
    assert subscribed(s.receive('{"op":"subscribe","types":["a.*"]}')) == ["a.*"]
    assert subscribed(s.receive('{"op":"subscribe","types":["b.c","a.*"]}')) == ["a.*", "b.c"]
    assert subscribed(s.receive('{"op":"unsubscribe","types":["a.*","x"]}')) == ["b.c"]
    assert applied == [["a.*"], ["a.*", "b.c"], ["b.c"]]


def test_explicit_types_are_kept_by_a_subscribe_and_an_unsubscribe_first_counts() -> None:
    s, _ = session(Settings(), ["x.y"], explicit=True)
    assert subscribed(s.receive('{"op":"subscribe","types":["z"]}')) == ["x.y", "z"]
    t, _ = session(Settings())
    assert subscribed(t.receive('{"op":"unsubscribe","types":["q"]}')) == ["*"]
    assert subscribed(t.receive('{"op":"subscribe","types":["q"]}')) == ["*", "q"]


def test_too_many_patterns_is_an_error_frame_and_keeps_the_filter() -> None:
    s, applied = session(Settings(max_patterns=2), ["a"], explicit=True)
    reply = s.receive('{"op":"subscribe","id":4,"types":["b","c"]}')
    assert isinstance(reply, ErrorFrame) and reply.id == 4 and "too many" in reply.message
    assert s.patterns == ["a"] and applied == []


async def test_a_subscribe_changes_what_the_manager_delivers(hub: Hub) -> None:
    sink = RecordingPushSink()
    connection = connect(hub, sink)
    await hub.manager.add(connection)
    connection.start()
    await start_stream(hub, connection, params(None))

    def apply(patterns: list[str], keys: list[str] | None) -> None:
        hub.manager.set_filter(connection, TypeFilter(patterns))

    s = SubscriberSession(hub.settings, ["*"], explicit_types=False, op_budget=None, apply=apply)
    assert subscribed(s.receive('{"op":"subscribe","types":["keep.*"]}')) == ["keep.*"]
    await publish(hub, 3, "drop.me")
    await publish(hub, 2, "keep.me")
    await wait_for(lambda: connection.last_seq_sent == 5, 5, "the kept events")
    assert [f["type"] for f in frames_of(sink.payloads) if f["op"] == "event"] == ["keep.me"] * 2
    await hub.manager.remove(connection)


# --- error budget and op rate --------------------------------------------------------------


def test_the_error_budget_closes_with_1008_after_n_errors() -> None:
    s, _ = session(Settings(error_budget=3))
    for i in range(3):
        reply = s.receive(f'{{"op":"nope","id":{i}}}')
        assert isinstance(reply, ErrorFrame) and reply.id == i and not reply.retryable
    assert isinstance(s.receive('{"op":"ping"}'), PongFrame)  # valid frames cost nothing
    closed = s.receive("not json")
    assert isinstance(closed, Close) and closed.code == CloseCode.POLICY_VIOLATION
    assert closed.error_code == "too_many_errors"


def test_a_binary_frame_closes_with_1003() -> None:
    s, _ = session(Settings())
    assert s.receive_binary().code == CloseCode.UNSUPPORTED_DATA


class HandClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_op_rate_closes_with_4029_on_a_hand_moved_clock() -> None:
    clock = HandClock()
    meter = LoopLagMeter(interval_s=3600)  # never ticks: lateness is set by hand below
    budget = OpBudget(TokenBucket(2.0, 3, clock), meter)
    s, _ = session(Settings(), op_budget=budget)
    try:
        for _ in range(3):
            assert isinstance(s.receive('{"op":"ping"}'), PongFrame)
        clock.now += 0.5  # one frame's worth at 2/s
        assert isinstance(s.receive('{"op":"ping"}'), PongFrame)
        meter.total_s += 1.0  # the loop ran 1 s late: two frames' worth credited back
        assert isinstance(s.receive('{"op":"ping"}'), PongFrame)
        assert isinstance(s.receive('{"op":"ping"}'), PongFrame)
        closed = s.receive('{"op":"ping"}')
        assert isinstance(closed, Close) and closed.code == CloseCode.RATE_LIMITED
        assert closed.retryable
    finally:
        meter.stop()


async def test_a_close_sends_one_typed_error_and_drops_the_queue(hub: Hub) -> None:
    sink = RecordingPushSink()
    sink.congested = True
    connection = connect(hub, sink)
    await hub.manager.add(connection)
    connection.start()
    connection.go_live(0)
    await publish(hub, 3)
    await wait_for(lambda: connection.last_seq_sent == 3, 5, "queued events")
    assert len(connection.queue) == 3 and sink.payloads == []
    connection.close(CloseCode.SLOW_CONSUMER, "slow_consumer", "m", retryable=True)
    assert sink.ended == ErrorFrame(code="slow_consumer", message="m", retryable=True, close=4008)
    assert connection.queue == [] and connection.queued_bytes == 0
    await hub.manager.remove(connection)


# --- bounds: overflow and paged snapshots through the bounded queue ----------------------


async def test_a_live_queue_over_its_bound_closes_with_4008(hub: Hub) -> None:
    sink = RecordingPushSink()
    sink.congested = True
    connection = Connection(
        P, sink, TypeFilter(["*"]), queue_events=5, queue_bytes=1 << 20, max_frame_bytes=4096
    )
    await hub.manager.add(connection)
    connection.start()
    connection.go_live(0)
    await publish(hub, 6)
    await wait_for(lambda: sink.ended is not None, 5, "the close")
    assert sink.ended is not None and sink.ended.close == CloseCode.SLOW_CONSUMER
    assert sink.ended.retryable and connection.slow_closes == 1
    await hub.manager.remove(connection)


async def test_snapshot_pages_queue_within_the_byte_bound_and_wait_for_the_socket() -> None:
    settings = Settings(max_frame_bytes=1024, queue_bytes=2048)
    hub = Hub(settings, MemoryBackend(settings), EventCatalog())
    await hub.start()
    try:
        await _page_a_snapshot_through_a_congested_socket(hub)
    finally:
        await hub.stop()


async def _page_a_snapshot_through_a_congested_socket(hub: Hub) -> None:
    for i in range(200):
        await hub.publish(P, "a.b", {"i": i}, key=f"k{i}")  # the snapshot keeps keyed events
    sink = RecordingPushSink()
    sink.congested = True
    connection = connect(hub, sink)
    await hub.manager.add(connection)
    connection.start()
    gap_params = SubscriptionParams(P, 5, "another-epoch", ["*"], explicit_types=False)
    stream = asyncio.create_task(start_stream(hub, connection, gap_params))
    most_queued = 0
    while not stream.done():
        await wait_for(lambda: bool(connection.control) or stream.done(), 5, "a queued page")
        most_queued = max(most_queued, connection.queued_bytes)
        sink.drain()  # the socket takes what is queued
        sink.congested = True
    await stream
    assert not connection.closed, sink.ended
    assert connection.live and most_queued <= 2048
    pages = [f for f in frames_of(sink.payloads) if f["op"] == "snapshot"]
    assert len(pages) > 3 and [p.get("more", False) for p in pages[:-1]] == [True] * (
        len(pages) - 1
    )
    assert "more" not in pages[-1]
    assert [e["seq"] for p in pages for e in p["events"]] == list(range(1, 201))
    await hub.manager.remove(connection)

"""Failover under Redis Sentinel, for real: a primary, a replica and three Sentinels on
loopback, two hubs and two RedisPublishers on the redis+sentinel:// URL, subscribers on both
hubs; the primary is killed with SIGKILL and the Sentinels promote the replica.

Whatever happens, no subscriber ever sees a seq reused or skipped: per epoch the seqs it is
given are contiguous, and every (epoch, seq) anyone was given or acknowledged names one event.
Without WAIT the promoted replica may lack acknowledged writes, so the hubs start a new epoch
(clients get gap + snapshot); with `redis_wait_replicas=1` every acknowledged event survives
in the same epoch and reaches every subscriber exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.backends.redis import RedisBackend
from hub.backends.redis_connect import SENTINEL_SCHEME, parse_sentinel_url
from hub.redis_publisher import RedisPublisher

from .redis_support import fast_settings
from .sentinel_support import ResumingSubscriber, SentinelSetup
from .support import RunningHub, run_hub, wait_for

PROJECT = "p1"


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path)
    setup.start()
    try:
        yield setup
    finally:
        setup.stop()


@contextlib.asynccontextmanager
async def two_hubs(url: str, **overrides: Any) -> AsyncIterator[list[RunningHub]]:
    settings = fast_settings(url, **overrides)
    async with (
        run_hub(settings, backend=RedisBackend(url, settings)) as first,
        run_hub(settings, backend=RedisBackend(url, settings)) as second,
    ):
        yield [first, second]


class Publisher:
    """Publishes `{"w": name, "i": n}` one at a time, recording each acknowledgement with the
    epoch the publish reply named."""

    def __init__(self, name: str, url: str, **overrides: Any) -> None:
        self.name = name
        self.publisher = RedisPublisher(
            url, fast_settings(url, **overrides), retries=200, backoff=0.02, max_backoff=0.1
        )
        self.acks: list[tuple[str, int, dict[str, Any]]] = []
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        i = 0
        while not self.stopping:
            data = {"w": self.name, "i": i}
            seq = await self.publisher.publish(PROJECT, "test.tick", data)
            epoch = self.publisher.backend.store._seen[PROJECT][0]  # the reply's epoch
            self.acks.append((epoch, seq, data))
            i += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.stopping = True
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)  # every retry is bounded
        await self.publisher.aclose()


async def not_ready_time(hub: RunningHub, done: asyncio.Event) -> float:
    """Seconds /readyz answered anything but 200 until `done` (polled every 20 ms)."""
    total = 0.0
    async with hub.http() as http:
        while not done.is_set():
            started = time.monotonic()
            try:
                ok = (await http.get("/readyz", timeout=2.0)).status_code == 200
            except Exception:
                ok = False
            await asyncio.sleep(0.02)
            if not ok:
                total += time.monotonic() - started
    return total


def check_no_reuse(
    subscribers: list[ResumingSubscriber], acks: list[tuple[str, int, dict[str, Any]]]
) -> None:
    named: dict[tuple[str, int], Any] = {}
    for epoch, seq, data in acks:
        assert named.setdefault((epoch, seq), data) == data, f"({epoch}, {seq}) acked twice"
    for sub in subscribers:
        assert sub.violations == [], sub.violations
        for epoch, seq, data in sub.events:
            other = named.setdefault((epoch, seq), data)
            assert other == data, f"({epoch}, {seq}) is {data} here and {other} elsewhere"


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["async", "wait"])
async def test_failover_never_reuses_seqs_and_wait_keeps_every_acknowledged_event(
    sentinel_setup: SentinelSetup, wait_replicas: int
) -> None:
    setup = sentinel_setup
    url = setup.url
    overrides: dict[str, Any] = {"redis_wait_replicas": wait_replicas}
    if wait_replicas:
        overrides["redis_wait_timeout_ms"] = 300
    async with two_hubs(url, **overrides) as hubs:
        await wait_for(lambda: all(h.hub.started for h in hubs), timeout=10, what="hubs up")
        subscribers = [ResumingSubscriber(h.ws_url(PROJECT)) for h in hubs for _ in range(2)]
        for sub in subscribers:
            sub.start()
        await wait_for(
            lambda: all(s.epoch is not None for s in subscribers), timeout=10, what="welcomes"
        )
        publishers = [Publisher(f"w{i}", url, **overrides) for i in range(2)]
        for publisher in publishers:
            publisher.start()

        def acked() -> int:
            return sum(len(p.acks) for p in publishers)

        await wait_for(lambda: acked() >= 40, timeout=10, what="acks before the kill")
        done = asyncio.Event()
        outages = [asyncio.create_task(not_ready_time(h, done)) for h in hubs]
        killed_at = time.monotonic()
        setup.primary.kill()
        await wait_for(
            lambda: asyncio.to_thread(setup.promoted), timeout=20, what="the replica promoted"
        )
        promoted_after = time.monotonic() - killed_at
        # the old primary comes back as a replica of the new one (with WAIT, publishes need
        # a replica to be acknowledged)
        await asyncio.to_thread(setup.rejoin_old_primary)
        before = acked()
        await wait_for(lambda: acked() >= before + 40, timeout=15, what="acks after failover")
        for publisher in publishers:
            await publisher.stop()
        acks = [a for p in publishers for a in p.acks]

        # every hub comes back ready, and every subscriber reaches the final head
        async def all_ready() -> bool:
            for hub in hubs:
                async with hub.http() as http:
                    if (await http.get("/readyz")).status_code != 200:
                        return False
            return True

        await wait_for(all_ready, 15, what="every hub ready again")
        done.set()
        not_ready = [await t for t in outages]
        final = await hubs[0].hub.backend.position(PROJECT)
        await wait_for(
            lambda: all((s.epoch, s.last) == (final.epoch, final.head) for s in subscribers),
            timeout=15,
            what=f"subscribers at {final}",
        )
        for sub in subscribers:
            await sub.stop()

    print(
        f"wait_replicas={wait_replicas}: replica promoted {promoted_after:.2f}s after the kill;"
        f" hubs not ready for {', '.join(f'{t:.2f}s' for t in not_ready)};"
        f" {len(acks)} acks, epochs seen {[len(s.epochs) for s in subscribers]}"
    )
    check_no_reuse(subscribers, acks)
    # every acknowledged event of the final epoch reached every subscriber that was in that
    # epoch before it was published (contiguity above then means exactly once, in order)
    for sub in subscribers:
        delivered = {(e, s) for e, s, _ in sub.events}
        start = min((s for e, s, _ in sub.events if e == final.epoch), default=final.head + 1)
        for epoch, seq, _ in acks:
            if epoch == final.epoch and seq >= start:
                assert (epoch, seq) in delivered, f"acked ({epoch}, {seq}) not delivered"
    if wait_replicas:
        # nothing acknowledged was lost: one epoch throughout, every subscriber got it all
        assert {epoch for epoch, _, _ in acks} == {final.epoch}
        for sub in subscribers:
            assert sub.epochs == [final.epoch]
            assert {(e, s) for e, s, _ in acks} <= {(e, s) for e, s, _ in sub.events}
    else:
        # the promoted replica may lack acknowledged writes: the hubs moved to a new epoch
        assert all(len(sub.epochs) >= 2 for sub in subscribers)
        assert all(sub.gaps and sub.gaps[-1]["reason"] == "epoch" for sub in subscribers)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:1/", "service name is required"),
        ("redis+sentinel:///svc", "at least one Sentinel"),
        ("redis+sentinel://h:1,,h:2/svc", "at least one Sentinel"),
        ("redis+sentinel://h:99999/svc", "bad port"),
        ("redis+sentinel://h:x/svc", "bad port"),
        ("redis+sentinel://[zz]:1/svc", "bad IPv6"),
        ("redis+sentinel://h:1/svc?db=-1", "db must be a number"),
        ("redis+sentinel://h:1/svc?dbx=1", "unknown parameter"),
        ("redis+sentinel://h:1/s/v", "service name is required"),
        ("redis+sentinel://" + ",".join(["h:1"] * 17) + "/svc", "at most 16"),
        ("redis+sentinel://u:secret@h!:1/svc", "bad Sentinel host"),
    ],
)
def test_bad_sentinel_urls_get_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_sentinel_url(url)
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(alphabet="u:p@[]%,/?&=.-19hsv", max_size=40))
def test_any_sentinel_url_parses_or_gets_one_line_without_the_password(
    noise: str, shaped: str
) -> None:
    for url in (SENTINEL_SCHEME + noise, SENTINEL_SCHEME + "user:hunter2@" + shaped):
        try:
            parsed = parse_sentinel_url(url)
        except ValueError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 600
            assert "hunter2" not in message
        else:
            assert 1 <= len(parsed.sentinels) <= 16 and parsed.service
            assert all(1 <= port <= 65535 for _, port in parsed.sentinels)
            assert "hunter2" not in repr(parsed)


def test_sentinel_url_grammar() -> None:
    parsed = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@10.0.0.1:26379,[::1]:26380,sentinel-3/mymaster"
        "?db=2&sentinel_password=s3"
    )
    assert parsed.sentinels == [("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26379)]
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "mymaster",
        2,
        "app",
        "p@ss",
    )
    assert parsed.sentinel_password == "s3"
    assert "p@ss" not in repr(parsed)

"""A promoted replica that is behind, made deterministic with `REPLICAOF NO ONE` (no Sentinel,
no race): it lacks acknowledged writes of the old primary, and the hub must never hand out
their seqs again in the same epoch.

- Without WAIT: the first operation on the promoted replica sees another primary's history
  (its replid2) and starts a new epoch.
- With WAIT (the promoted replica is trusted to hold every acknowledged write): a hub whose
  reader delivered an event the failover lost, then finds another event at that seq, ends
  the epoch, so its subscribers get `gap` instead of a reused seq.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hub.backends.base import PublishRequest
from hub.backends.redis import RedisBackend
from hub.errors import BackendUnavailable
from hub.redis_publisher import RedisPublisher

from .redis_support import BlackholeProxy, RedisServer, fast_settings, running_redis
from .support import FrameRecorder, run_hub, wait_for

FAST_SYNC = ["--repl-diskless-sync-delay", "0"]


def replica_of(directory: Path, primary: RedisServer) -> RedisServer:
    replica = RedisServer(
        directory, extra=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port)]
    )
    replica.start()
    return replica


async def wait_synced(replica: RedisServer, head: int) -> None:
    await wait_for(
        lambda: replica.cli("get", "hub:{p1}:seq").strip() == str(head),
        timeout=5,
        what=f"replica at seq {head}",
    )


async def test_a_promoted_replica_that_is_behind_starts_a_new_epoch(tmp_path: Path) -> None:
    with running_redis(tmp_path / "primary", extra=FAST_SYNC) as primary:
        replica = replica_of(tmp_path / "replica", primary)
        try:
            async with RedisPublisher(primary.url, fast_settings(primary.url)) as old:
                for i in range(3):
                    await old.publish("p1", "test.tick", {"i": i})
                await wait_synced(replica, 3)
                epoch = old.backend.store._seen["p1"][0]
                replica.cli("replicaof", "no", "one")  # promoted, then falls behind:
                assert await old.publish("p1", "test.tick", {"i": 3}) == 4  # acknowledged
                assert await old.publish("p1", "test.tick", {"i": 4}) == 5  # and lost

            # a hub or publisher that never saw seqs 4 and 5 must not reuse them
            backend = RedisBackend(replica.url, fast_settings(replica.url))
            try:
                read = await backend.position("p1")
                assert read.epoch != epoch and read.head == 0
                request = PublishRequest("test.tick", msgspec.Raw(b'{"i":5}'))
                assert await backend.publish("p1", [request]) == [1]
                after = await backend.position("p1")
                assert after.epoch not in (epoch, "") and after.head == 1
            finally:
                await backend.close()
        finally:
            replica.kill()


async def test_a_primary_restarted_from_its_aof_keeps_its_epoch(tmp_path: Path) -> None:
    """A restart gives a new replication id too, with no older history: not a failover."""
    with running_redis(tmp_path / "redis", appendonly=True) as server:
        async with RedisPublisher(server.url, fast_settings(server.url)) as publisher:
            await publisher.publish("p1", "test.tick", {"i": 0})
            epoch = publisher.backend.store._seen["p1"][0]
            server.restart()
            assert await publisher.publish("p1", "test.tick", {"i": 1}) == 2
            assert publisher.backend.store._seen["p1"][0] == epoch


async def test_with_wait_a_reader_that_delivered_a_lost_event_ends_the_epoch(
    tmp_path: Path,
) -> None:
    wait = {"redis_wait_replicas": 1, "redis_wait_timeout_ms": 200}
    with running_redis(tmp_path / "primary", extra=FAST_SYNC) as primary:
        replica = replica_of(tmp_path / "replica", primary)
        proxy = BlackholeProxy(primary.port)
        await proxy.start()
        downstream: RedisServer | None = None
        try:
            settings = fast_settings(proxy.url, **wait)
            async with (
                run_hub(settings, backend=RedisBackend(proxy.url, settings)) as running,
                RedisPublisher(primary.url, fast_settings(primary.url, **wait)) as old,
            ):
                for i in range(3):
                    await old.publish("p1", "test.tick", {"i": i})
                epoch = old.backend.store._seen["p1"][0]
                watcher = await FrameRecorder.open(running.ws_url("p1", since=0, epoch=epoch))
                await wait_for(lambda: len(watcher.events) == 3, timeout=5, what="3 events")

                # the replica is promoted (with a replica of its own, so WAIT can succeed)
                replica.cli("replicaof", "no", "one")
                downstream = replica_of(tmp_path / "downstream", replica)
                # seq 4 reaches the old primary and this hub's subscriber, not the replica:
                # its WAIT fails, so it is never acknowledged
                old.retries = 0
                with pytest.raises(BackendUnavailable, match="replicas"):
                    await old.publish("p1", "test.tick", {"i": "lost"})
                await wait_for(lambda: len(watcher.events) == 4, timeout=5, what="seq 4")
                # on the promoted replica another event takes seq 4, acknowledged with WAIT
                async with RedisPublisher(replica.url, fast_settings(replica.url, **wait)) as new:
                    assert await new.publish("p1", "test.tick", {"i": "other"}) == 4

                # the hub's connections now lead to the promoted replica
                proxy.target_port = replica.port
                primary.kill()
                closed = await watcher.wait_closed(timeout=15)
                assert closed.rcvd is not None
                last = watcher.frames[-1]
                assert last["op"] == "error" and last["code"] == "epoch_changed", last
                back = await FrameRecorder.open(running.ws_url("p1", since=4, epoch=epoch))
                await back.wait_frames(2)
                welcome, gap = back.frames[:2]
                assert welcome["epoch"] != epoch
                assert gap["op"] == "gap" and gap["reason"] == "epoch"
                await back.close()
        finally:
            await proxy.close()
            if downstream is not None:
                downstream.kill()
            replica.kill()

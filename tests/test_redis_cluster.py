"""Redis Cluster (three masters on loopback): projects live in their own slots on different
nodes, and two hub instances still agree on every event and seq of every project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from hub.backends.redis import RedisBackend
from hub.redis_publisher import RedisPublisher

from .redis_support import RedisCluster, fast_settings
from .support import FrameRecorder, run_hub, wait_for

PROJECTS = [f"team-{i}" for i in range(8)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    nodes = RedisCluster(tmp_path / "cluster")
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


async def test_two_hubs_on_a_cluster_agree_on_every_project_across_nodes(
    cluster: RedisCluster,
) -> None:
    settings = fast_settings(cluster.url, redis_cluster=True, redis_cluster_poll_ms=5)
    direct = ClusterClient.from_url(cluster.url)
    await direct.initialize()
    nodes = {direct.get_node_from_key(f"hub:{{{p}}}:seq").name for p in PROJECTS}
    await direct.aclose()
    assert len(nodes) >= 2  # the projects really are spread over the masters

    async with (
        run_hub(settings, backend=RedisBackend(cluster.url, settings)) as a,
        run_hub(settings, backend=RedisBackend(cluster.url, settings)) as b,
    ):
        watchers = {
            (hub.url, p): await FrameRecorder.open(hub.ws_url(p))
            for hub in (a, b)
            for p in PROJECTS
        }
        await wait_for(lambda: all(w.welcome is not None for w in watchers.values()))
        async with httpx.AsyncClient(timeout=10) as http:
            for round_ in range(5):
                for n, project in enumerate(PROJECTS):
                    base = (a, b)[(round_ + n) % 2].url
                    body = {"type": "a.b", "key": "k", "data": {"r": round_, "p": project}}
                    response = await http.post(f"{base}/v1/projects/{project}/events", json=body)
                    assert response.status_code == 202, response.text
        async with RedisPublisher(cluster.url, settings) as publisher:
            for project in PROJECTS:
                assert await publisher.publish(project, "a.b", {"r": 5, "p": project}) == 6

        await wait_for(
            lambda: all(w.seqs == [1, 2, 3, 4, 5, 6] for w in watchers.values()),
            what="six events per project on both hubs",
        )
        for project in PROJECTS:
            on_a, on_b = watchers[(a.url, project)], watchers[(b.url, project)]
            assert on_a.events == on_b.events
            assert [e["data"] for e in on_a.events] == [{"r": r, "p": project} for r in range(6)]
        for watcher in watchers.values():
            await watcher.close()

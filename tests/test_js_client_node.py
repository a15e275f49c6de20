"""hub-client.js in Node 20 (its global WebSocket, fetch) against `hub serve` subprocesses that
are killed (-9) and restarted on the same port: resume with no duplicated or missing event on
every transport, the epoch gap after a memory hub lost its state, connect timeouts and the
WS -> SSE -> long-poll fallback against a server that accepts and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from hub.config import Settings
from hub.redis_publisher import RedisPublisher

from .filtering_proxy import filtering_proxy, path_contains
from .hub_process import HubProcess
from .node_client import CLIENT_JS, NODE_FLAGS, NodeClient, require_node
from .redis_support import running_redis
from .support import run_hub, wait_for

require_node()  # skip without node; fail under CI

P = "jsnode"
TRANSPORTS = ["ws", "sse", "poll"]
DOWNTIME_S = 5.0  # how long the hub stays dead (issue 15's scenario)
# Fast reconnects so the test runs quickly; the timeout well above a loaded machine's latency.
FAST = {"connectTimeoutMs": 2000, "backoffInitial": 100, "backoffMax": 1000, "pollWaitS": 2}


@contextlib.asynccontextmanager
async def node_client(
    url: str, *, bootstrap: bool = False, **options: object
) -> AsyncIterator[NodeClient]:
    client = await NodeClient.start(url, P, bootstrap=bootstrap, **options)
    try:
        yield client
    finally:
        client.kill()


class Ticker:
    """Publishes one event every `interval` s straight into Redis (the hub may be dead)."""

    def __init__(self, publisher: RedisPublisher, interval: float = 0.02) -> None:
        self.publisher = publisher
        self.interval = interval
        self.seqs: list[int] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.seqs.append(await self.publisher.publish(P, "test.clock.tick", {"i": i}))
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)
        return self.seqs


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resumes_with_no_duplicated_or_missing_event_across_a_hub_dead_for_5s(
    transport: str, tmp_path: Path
) -> None:
    with running_redis(tmp_path / "redis") as redis:
        hub = HubProcess(tmp_path, "--backend", redis.url, "--heartbeat", "5")
        await hub.start()
        try:
            async with RedisPublisher(redis.url) as publisher:
                ticker = Ticker(publisher)
                await wait_for(lambda: len(ticker.seqs) >= 10, what="history before the client")
                async with node_client(hub.url, transports=[transport], since=0, **FAST) as client:
                    await client.wait(lambda: len(client.seqs) >= 30, "events before the kill")
                    assert client.states[0]["state"] == "connecting"
                    opened = await client.wait_state("open")

                    hub.kill()
                    loop = asyncio.get_running_loop()
                    died = loop.time()
                    dropped = await client.wait_state("reconnecting", after=opened)
                    # it had delivered events: healthy, so the backoff starts from the bottom
                    assert client.records[dropped]["attempt"] == 1

                    def retries() -> int:
                        return client.count(lambda r: r.get("delay") is not None)

                    # Dead for 5 s while events keep coming (into Redis); meanwhile the client
                    # keeps retrying (refused connections in Node fire `error` and no `close`).
                    await client.wait(
                        lambda: loop.time() - died >= DOWNTIME_S and retries() >= 3,
                        "5 s of downtime with retries",
                        timeout=30,
                    )
                    await hub.start()  # same port, same Redis: the seqs and the epoch survive
                    await client.wait_state("open", after=dropped, timeout=15)
                    published = await ticker.stop()
                    last = published[-1]
                    await client.wait(lambda: client.seqs[-1:] == [last], f"seq {last}")
                    done = await client.close()
        finally:
            hub.kill()
    assert published == list(range(1, last + 1))
    assert client.seqs == published, "events duplicated, missing or out of order"
    assert done["duplicates"] == 0 and done["received"] == last
    assert client.snapshots == [], "the epoch survived in Redis: no gap"
    assert {s["transport"] for s in client.states if s["state"] != "closed"} == {transport}
    delays = [s["delay"] for s in client.states if s["delay"] is not None]
    assert all(0 <= d <= FAST["backoffMax"] for d in delays), delays
    states = [s["state"] for s in client.states]
    assert states[-2:] == ["open", "closed"], states


async def waiting_polls(http: httpx.AsyncClient, url: str) -> bool:
    metrics = (await http.get(f"{url}/metrics")).text
    return re.search(r"^hub_long_polls 1(\.0)?$", metrics, re.MULTILINE) is not None


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_memory_hub_restarted_means_an_epoch_gap_then_the_new_sequence(
    transport: str, tmp_path: Path
) -> None:
    hub = HubProcess(tmp_path)
    await hub.start()
    events = f"{hub.url}/v1/projects/{P}/events"
    ticks = [{"type": "test.clock.tick", "data": {"i": i}} for i in range(5)]
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.post(events, json=ticks)).json() == {"seqs": [1, 2, 3, 4, 5]}
            async with node_client(hub.url, transports=[transport], since=0, **FAST) as client:
                await client.wait(lambda: client.seqs == [1, 2, 3, 4, 5], "the first life")
                opened = await client.wait_state("open")
                first_epoch = {r["epoch"] for r in client.records if "event" in r}

                hub.kill()
                dropped = await client.wait_state("reconnecting", after=opened)
                await hub.start()  # memory backend: a new, empty sequence with a new epoch
                await client.wait(lambda: len(client.snapshots) == 1, "the gap's snapshot")
                if transport == "poll":  # a long poll, not a loop of history reads
                    await wait_for(lambda: waiting_polls(http, hub.url), what="a waiting poll")
                assert (await http.post(events, json=ticks)).json() == {"seqs": [1, 2, 3, 4, 5]}
                await client.wait(lambda: len(client.seqs) == 10, "the second life")
                done = await client.close()
    finally:
        hub.kill()
    assert len(first_epoch) == 1
    (snapshot,) = client.snapshots
    assert snapshot["snapshot"] == "epoch" and snapshot["head"] == 0 and snapshot["seqs"] == []
    assert snapshot["epoch"] not in first_epoch
    assert client.seqs == [1, 2, 3, 4, 5] * 2
    second_life = [r for r in client.records[dropped:] if "event" in r]
    assert {r["epoch"] for r in second_life} == {snapshot["epoch"]}
    assert done["duplicates"] == 0


async def test_a_hub_that_never_answers_times_out_on_each_transport_then_backs_off() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        options = {"connectTimeoutMs": 300, "backoffInitial": 50, "backoffMax": 100}
        async with node_client(f"http://127.0.0.1:{port}", **options) as client:
            # Two whole cycles: ws, sse, poll each time out, then a backoff, then ws again.
            await client.wait(
                lambda: client.count(lambda r: r.get("delay") is not None) >= 2, "two backoffs"
            )
            await client.close()
    finally:
        server.close()
        for writer in connections:
            writer.close()
    attempts = [s for s in client.states if s["state"] in ("connecting", "reconnecting")]
    tried = [s["transport"] for s in attempts if s["delay"] is None]
    assert tried[:6] == ["ws", "sse", "poll", "ws", "sse", "poll"], tried
    assert [s["state"] for s in attempts[:3]] == ["connecting"] * 3
    backoff = next(s for s in attempts if s["delay"] is not None)
    assert "no answer from the hub within 300 ms" in backoff["reason"]
    # each transport had its connection and waited out its timeout before the next (Node's
    # timers may fire a millisecond early on the wall clock: the margin is for that only)
    starts = [s["at"] for s in attempts if s["delay"] is None][:3]
    assert all(b - a >= 295 for a, b in itertools.pairwise(starts)), starts
    assert len(connections) >= 6
    assert not any(s["state"] == "open" for s in client.states)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_live_only_starts_at_head_even_after_retention_moved_on(transport: str) -> None:
    ticks = [{"type": "test.clock.tick", "data": {"i": i}} for i in range(12)]
    # retention 5: oldest is 8, so a read from seq 0 would be a gap; live only must not be
    async with run_hub(Settings(retention_events=5, heartbeat_s=5.0)) as running:
        async with running.http() as http:
            events = f"/v1/projects/{P}/events"
            assert (await http.post(events, json=ticks)).status_code == 202
            async with node_client(running.url, transports=[transport], **FAST) as client:
                await client.wait_state("open")
                if transport == "poll":  # the poll after the handshake waits from seq 12
                    await wait_for(lambda: running.hub.manager.polls.count == 1, what="a poll")
                assert (await http.post(events, json=ticks[:3])).json() == {"seqs": [13, 14, 15]}
                await client.wait(lambda: len(client.seqs) == 3, "the three new events")
                done = await client.close()
    assert client.seqs == [13, 14, 15]
    assert client.snapshots == [] and done["duplicates"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_types_and_keys_go_on_every_request(transport: str) -> None:
    filters = {"types": ["ingest.*", "agent.*"], "keys": ["ingest.job/j17", "agent.run/*"]}
    async with run_hub() as running, filtering_proxy(running.port) as proxy:
        async with node_client(
            proxy.url, bootstrap=True, transports=[transport], **filters, **FAST
        ) as client:
            await client.wait_state("open")
            await client.close()
    path = {"ws": "/ws", "sse": "/sse", "poll": "/events"}[transport]
    targets = [line.split(" ")[1] for line in proxy.requests]
    sent = [
        t
        for t in targets
        if t.startswith((f"/v1/projects/{P}/snapshot", f"/v1/projects/{P}{path}"))
    ]
    assert len(sent) >= 2, targets  # the bootstrap's snapshot and the stream (or first poll)
    for target in sent:
        query = parse_qs(urlsplit(target).query)
        assert query["types"] == ["ingest.*,agent.*"], target
        assert query["keys"] == ["ingest.job/j17,agent.run/*"], target


async def test_a_long_poll_that_never_returns_is_dropped_after_wait_plus_margin() -> None:
    # The handshake (no `wait`) gets through; every waiting poll is held by the network.
    async with (
        run_hub() as running,
        filtering_proxy(running.port, hold=path_contains("wait=")) as proxy,
    ):
        options = {"pollWaitS": 1, "connectTimeoutMs": 500, "backoffMax": 100}
        async with node_client(proxy.url, transports=["poll"], **options) as client:
            first = await client.wait_state("open")
            dropped = await client.wait_state("reconnecting", after=first)
            await client.wait_state("open", after=dropped)
            await client.close()
    opened, lost = client.records[first], client.records[dropped]
    assert lost["reason"].startswith("poll:"), lost
    # held for the whole wait plus the margin, not cut at the connect timeout
    assert lost["at"] - opened["at"] >= 1000 + 500 - 5, (opened, lost)
    assert proxy.held >= 1


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_connections_dropped_right_after_welcome_back_off_instead_of_looping(
    transport: str,
) -> None:
    # Each connection opens (welcome) and is cut at once, never healthy: the backoff must keep
    # growing (issue 15 saw 65 reconnects in 4 s when every welcome reset it).
    async with (
        run_hub() as running,
        filtering_proxy(running.port, cut_after=b'"op":"welcome"') as proxy,
    ):
        options = {"transports": [transport], "backoffInitial": 10, "backoffMax": 40}
        async with node_client(proxy.url, **options) as client:
            await client.wait(
                lambda: client.count(lambda r: r.get("delay") is not None) >= 6, "six backoffs"
            )
            await client.close()
    backoffs = [s for s in client.states if s["delay"] is not None]
    assert [s["attempt"] for s in backoffs[:6]] == [1, 2, 3, 4, 5, 6], backoffs
    assert client.count(lambda r: r.get("state") == "open") >= 6  # each one did open
    assert proxy.cut >= 6


@pytest.mark.parametrize(("healthy_after_ms", "next_attempt"), [(300, 1), (60_000, 4)])
async def test_backoff_starts_over_only_after_a_connection_stayed_healthy(
    healthy_after_ms: int, next_attempt: int
) -> None:
    refusals = 3

    def refuse_first(head: bytes) -> bool:
        nonlocal refusals
        refusals -= 1
        return refusals >= 0

    # Three refused handshakes (attempt 3), then a connection that delivers nothing and is
    # closed by the hub (1001): after 2x healthyAfterMs open it counts as healthy (the next
    # backoff starts at attempt 1); closed sooner, it does not (attempt 4).
    async with (
        run_hub() as running,
        filtering_proxy(running.port, refuse=refuse_first) as proxy,
    ):
        options = {"transports": ["ws"], "backoffInitial": 10, "backoffMax": 40}
        async with node_client(proxy.url, healthyAfterMs=healthy_after_ms, **options) as client:
            opened = await client.wait_state("open")
            loop = asyncio.get_running_loop()
            since_open = loop.time()
            if healthy_after_ms < 1000:
                await client.wait(
                    lambda: loop.time() - since_open >= 2 * healthy_after_ms / 1000,
                    "the connection staying open",
                )
            assert running.hub.drain() == 1
            dropped = await client.wait_state("reconnecting", after=opened)
            await client.close()
    attempts = [s["attempt"] for s in client.states if s["delay"] is not None]
    assert attempts[:3] == [1, 2, 3] and proxy.refused == 3
    assert client.records[dropped]["attempt"] == next_attempt


async def test_bad_options_are_a_type_error_naming_the_option() -> None:
    script = """
      const { HubClient } = await import(process.argv[1]);
      const tries = [
        [{}],
        [{ url: "http://h", transports: ["ws", "carrier-pigeon"] }],
        [{ url: "http://h", transports: [] }],
        [{ url: "http://h", connectTimeoutMs: 0 }],
        [{ url: "http://h", pollWaitS: -1 }],
        [{ url: "http://h", healthyAfterMs: Number.NaN }],
        [{ url: "http://h", keys: ["ingest.job/a,ingest.job/b"] }],
        [{ url: "http://h", types: [""] }],
      ];
      const out = tries.map(([options]) => {
        try { new HubClient("p", options); return "accepted"; }
        catch (error) { return `${error.name}: ${error.message}`; }
      });
      const ok = new HubClient("p", { url: "http://h/", keys: [] });
      out.push([ok.url, ok.keys, ok.transports.join(","), ok.transport, ok.state].join(" "));
      console.log(JSON.stringify(out));
    """
    process = await asyncio.create_subprocess_exec(
        "node",
        *NODE_FLAGS,
        "--input-type=module",
        "-e",
        script,
        CLIENT_JS.as_uri(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert all(line.startswith("TypeError: HubClient: ") for line in out[:-1]), out
    named = ["url", "transports", "transports", "connectTimeoutMs", "pollWaitS"]
    named += ["healthyAfterMs", "keys", "types"]
    for line, name in zip(out, named, strict=False):
        assert name in line, (name, line)
    assert out[-1] == "http://h  ws,sse,poll  idle"

"""The services' HTTP API under hostile requests (issue 12, findings 1, 4, 5, 8): numbers and
strings checked (422 naming the field), one body reader with the hub's deadline and size
limit (408, 413), idempotent cancels, admission control (429) and paced in-process emits.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest

from hub.config import Settings
from services.emit_rate import EmitPacer, PacedEmitter
from services.limits import ServiceLimits
from services.spec_check import SpecInvalid
from services.testing import RecordingEmitter
from services.workflow import NodeSpec, WorkflowSpec

from .support import RunningHub, wait_for
from .test_services_hostile_support import P, assert_unharmed, bystander, hub_with_services

pytestmark = pytest.mark.usefixtures("hub_gc")  # collector as `hub serve` sets it

FINAL_NODE_STATES = ("succeeded", "failed", "skipped", "cancelled")


def delay(node_id: str, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "delay", "params": params}


async def post(http: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
    return await http.post(f"/v1/projects/{P}{path}", **kwargs)


# --- finding 1: every number in a spec is finite and in range ----------------------------


@pytest.mark.parametrize(
    ("node", "field"),
    [
        (delay("d", seconds="nan"), "$.nodes[0].params.seconds"),
        (delay("d", seconds="NaN"), "$.nodes[0].params.seconds"),
        (delay("d", seconds=-1), "$.nodes[0].params.seconds"),
        (delay("d", seconds=301), "$.nodes[0].params.seconds"),
        (delay("d", seconds=1e308), "$.nodes[0].params.seconds"),
        ({**delay("d"), "timeout": 0}, "$.nodes[0].timeout"),
        ({**delay("d"), "timeout": 1e300}, "$.nodes[0].timeout"),
        ({**delay("d"), "backoff": -0.5}, "$.nodes[0].backoff"),
        ({**delay("d"), "backoff": 1e9}, "$.nodes[0].backoff"),
        ({**delay("d"), "retries": 11}, "$.nodes[0].retries"),
        (delay("d", seconds=1, extra=1), "$.nodes[0].params"),
        ({**delay("d"), "depends_on": ["x" * 100_000]}, "$.nodes[0].depends_on[0]"),
        ({"id": "a", "kind": "agent", "params": {"question": "x" * 5000}}, "question"),
        ({"id": "a", "kind": "agent", "params": {"question": "q", "agent": "x" * 200}}, "agent"),
    ],
)
async def test_out_of_range_numbers_and_strings_in_a_spec_are_422_naming_the_field(
    node: dict[str, Any], field: str
) -> None:
    async with hub_with_services() as (running, services):
        async with running.http() as http:
            response = await post(http, "/workflows/runs", json={"nodes": [node]})
        assert response.status_code == 422, response.text
        assert field in response.json()["error"]["message"]
        assert services.workflows.runs.list(P) == []


async def test_nan_specs_never_reach_a_timer_and_other_projects_keep_their_pace() -> None:
    async with hub_with_services() as (running, services):
        async with bystander(running) as watcher, running.http() as http:
            for seconds in ("nan", "inf", "-inf", "1e999"):
                for _ in range(5):
                    nodes = [delay(f"d{i}", seconds=seconds) for i in range(10)]
                    response = await post(http, "/workflows/runs", json={"nodes": nodes})
                    assert response.status_code == 422
            started = time.perf_counter()
            response = await post(
                http, "/workflows/runs", json={"nodes": [delay("d", seconds=0.2)]}
            )
            run_id = response.json()["run"]["run_id"]
            await wait_for(
                lambda: services.workflows.runs.get(P, run_id).state == "succeeded",  # type: ignore[union-attr]
                timeout=5,
                what="a 0.2 s delay run",
            )
            assert time.perf_counter() - started < 3  # was unfinished at 50 s
        loop = asyncio.get_running_loop()
        assert all(math.isfinite(h.when()) for h in loop._scheduled)  # type: ignore[attr-defined]
    assert_unharmed(watcher)


def test_specs_built_in_code_are_checked_too() -> None:
    from services.runtime import Services

    services = Services(emitter_for=lambda project: RecordingEmitter())
    bad = [
        NodeSpec(id="d", kind="delay", params={"seconds": float("nan")}),
        NodeSpec(id="d", kind="delay", timeout=float("nan")),
        NodeSpec(id="d", kind="delay", backoff=float("inf")),
        NodeSpec(id="d", kind="custom", params={"x": [1.0, float("nan")]}),
    ]
    for node in bad:
        with pytest.raises(SpecInvalid, match=r"\$\.nodes\[0\]"):
            services.workflows.new_run(P, WorkflowSpec(nodes=[node]))


# --- finding 4: one body reader, with the hub's deadline and size limit -------------------

ROUTES = ["/ingest/jobs", "/ingest/uploads?name=a.txt", "/agent/runs", "/workflows/runs"]


async def trickle(running: RunningHub, path: str) -> tuple[int, float]:
    """Send a chunked body's first chunk and never the rest; return the status and the delay."""
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    started = time.perf_counter()
    writer.write(
        f"POST /v1/projects/{P}{path} HTTP/1.1\r\nhost: localhost\r\n"
        "content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{\r\n".encode()
    )
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1]), time.perf_counter() - started


async def test_trickled_bodies_get_408_at_the_hubs_body_timeout_on_every_route() -> None:
    settings = Settings(heartbeat_s=5.0, body_timeout_s=0.5)
    async with hub_with_services(settings) as (running, services):
        async with bystander(running) as watcher:
            results = await asyncio.gather(*[trickle(running, ROUTES[i % 4]) for i in range(40)])
        statuses = [status for status, _ in results]
        slowest = max(d for _, d in results)
        print(f"40 trickled bodies: {sorted(set(statuses))}, slowest {slowest:.2f}s")
        # Ingest bodies beyond the uploads in flight are refused before they are read.
        assert set(statuses) <= {408, 429} and statuses.count(408) >= 20
        assert max(delay for _, delay in results) < 0.5 + 3
        assert services.ingest.uploads_in_flight.used == 0  # every slot came back
    assert_unharmed(watcher)


async def test_bodies_over_their_limit_are_413() -> None:
    limits = ServiceLimits(max_upload_bytes=100_000, max_request_bytes=10_000)
    async with hub_with_services(limits=limits) as (running, _):
        async with running.http() as http:
            big = b"x" * 200_000
            assert (await post(http, "/ingest/uploads?name=a.txt", content=big)).status_code == 413

            async def chunks() -> Any:
                for _ in range(20):
                    yield b"x" * 10_000

            response = await post(http, "/ingest/uploads?name=a.txt", content=chunks())
            assert response.status_code == 413
            question = {"question": "q" * 20_000}
            assert (await post(http, "/agent/runs", json=question)).status_code == 413


# --- finding 5: a double cancel leaves every node final ----------------------------------


@pytest.mark.parametrize("trial", range(4))
async def test_concurrent_double_cancel_leaves_every_node_final(trial: int) -> None:
    async with hub_with_services() as (running, services):
        nodes = [delay(f"n{i}", seconds=30) for i in range(200)]
        async with running.http() as http:
            response = await post(
                http, "/workflows/runs", json={"nodes": nodes, "max_concurrency": 64}
            )
            run_id = response.json()["run"]["run_id"]
            await wait_for(
                lambda: (
                    sum(n.state == "running" for n in services.workflows.nodes[run_id].values())
                    >= 64
                ),
                what="64 nodes running",
            )
            first, second = await asyncio.gather(
                post(http, f"/workflows/runs/{run_id}/cancel"),
                post(http, f"/workflows/runs/{run_id}/cancel"),
            )
            assert (first.status_code, second.status_code) == (202, 202)
            services.workflows.cancel(P, run_id)  # a third, in the same tick as the cleanup
            await wait_for(
                lambda: services.workflows.runs.get(P, run_id).state == "cancelled",  # type: ignore[union-attr]
                what="run cancelled",
            )
            body = (await http.get(f"/v1/projects/{P}/workflows/runs/{run_id}")).json()
            states = [node["state"] for node in body["nodes"]]
            assert all(s in FINAL_NODE_STATES for s in states), sorted(set(states))
            assert body["run"]["nodes_cancelled"] == 200

            async def snapshot_final() -> bool:
                events = (await http.get(f"/v1/projects/{P}/snapshot")).json()["events"]
                node_events = [e for e in events if e["type"] == "workflow.node_state.updated"]
                return len(node_events) == 200 and all(
                    e["data"]["state"] in FINAL_NODE_STATES for e in node_events
                )

            await wait_for(snapshot_final, what="every node final in the snapshot")
            assert (await post(http, f"/workflows/runs/{run_id}/cancel")).status_code == 409


# --- finding 8: admission control, paced emits, bounded strings --------------------------


async def test_a_workflow_flood_is_admitted_up_to_its_limits_and_refused_with_429() -> None:
    limits = ServiceLimits(max_workflow_runs_per_project=4, max_workflow_nodes_per_project=400)
    async with hub_with_services(limits=limits) as (running, services):
        hub = running.hub
        async with bystander(running) as watcher, running.http() as http:
            published_before = hub.stats.published
            started = time.perf_counter()
            nodes = [delay(f"n{i}", seconds=0.3) for i in range(200)]
            body = {"nodes": nodes, "max_concurrency": 64}
            responses = await asyncio.gather(
                *[post(http, "/workflows/runs", json=body) for _ in range(60)]
            )
            statuses = [r.status_code for r in responses]
            accepted = [r.json()["run"]["run_id"] for r in responses if r.status_code == 202]
            refused = [r for r in responses if r.status_code == 429]
            assert len(accepted) == 2 and len(refused) == 58, statuses  # 2 x 200 nodes = 400
            assert refused[0].headers["retry-after"] == "1"
            assert "workflow nodes" in refused[0].json()["error"]["message"]
            await wait_for(
                lambda: all(
                    services.workflows.runs.get(P, r).state == "succeeded"  # type: ignore[union-attr]
                    for r in accepted
                ),
                timeout=20,
                what="the admitted runs",
            )
            elapsed = time.perf_counter() - started
            published = hub.stats.published - published_before
            # The permits came back: a new run is admitted again.
            again = await post(http, "/workflows/runs", json=body)
            assert again.status_code == 202
            await post(http, f"/workflows/runs/{again.json()['run']['run_id']}/cancel")
    pacing = limits.emit_burst_per_project + limits.emit_rate_per_project * elapsed
    print(f"flood: {published} events in {elapsed:.2f}s (pace allows {pacing:.0f})")
    assert published <= pacing
    assert_unharmed(watcher)


async def test_agent_runs_are_admitted_up_to_their_limit() -> None:
    limits = ServiceLimits(max_agent_runs_per_project=2)
    async with hub_with_services(limits=limits) as (running, _):
        async with running.http() as http:
            responses = await asyncio.gather(
                *[post(http, "/agent/runs", json={"question": "swarm season?"}) for _ in range(10)]
            )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) >= 2 and 429 in statuses, statuses


async def test_in_process_emits_wait_for_the_publish_pace() -> None:
    recorder = RecordingEmitter()
    pacer = EmitPacer(rate_per_project=200, burst_per_project=50, rate=10_000, burst=10_000)
    emitter = PacedEmitter(recorder, P, pacer)
    started = time.perf_counter()
    for i in range(150):
        await emitter.emit("demo.tick", {"i": i})
    elapsed = time.perf_counter() - started
    assert len(recorder.events) == 150
    assert elapsed >= (150 - 50) / 200 * 0.9  # the burst, then 200 events/s


async def test_the_hubs_own_per_project_publish_rate_paces_in_process_emits() -> None:
    settings = Settings(heartbeat_s=5.0, publish_rate_per_project=50.0)
    async with hub_with_services(settings) as (running, services):
        assert services.pacer.rate_per_project == 50.0
        emitter = services.emitter_for(P)
        assert isinstance(emitter, PacedEmitter)
        del running


@pytest.mark.parametrize(
    ("path", "kwargs", "field"),
    [
        ("/agent/runs", {"json": {"question": "q", "agent": "a" * 100_000}}, "$.agent"),
        ("/agent/runs", {"json": {"question": "q" * 5000}}, "$.question"),
        ("/ingest/jobs", {"json": {"folder": "a" * 5000}}, "$.folder"),
        ("/ingest/jobs", {"json": {"documents": [{"name": "n" * 300, "text": "t"}]}}, "name"),
        ("/ingest/uploads?name=" + "n" * 300 + ".txt", {"content": b"x"}, "name"),
        ("/workflows/runs", {"json": {"name": "w" * 101, "nodes": [delay("d")]}}, "$.name"),
    ],
)
async def test_every_string_of_the_api_is_bounded(
    path: str, kwargs: dict[str, Any], field: str
) -> None:
    async with hub_with_services() as (running, _):
        async with running.http() as http:
            response = await post(http, path, **kwargs)
            search = await http.get(f"/v1/projects/{P}/ingest/search", params={"q": "q" * 5000})
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]
    assert search.status_code == 422


def test_limits_come_from_services_variables_and_must_be_finite_and_positive() -> None:
    limits = ServiceLimits.from_env({"SERVICES_MAX_AGENT_RUNS": "8", "SERVICES_EMIT_RATE": "250"})
    assert (limits.max_agent_runs, limits.emit_rate) == (8, 250.0)
    for name, value in [("SERVICES_EMIT_RATE", "nan"), ("SERVICES_MAX_AGENT_RUNS", "0")]:
        with pytest.raises(ValueError, match="finite number > 0"):
            ServiceLimits.from_env({name: value})

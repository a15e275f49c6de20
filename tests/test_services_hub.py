"""The services in a real hub on loopback: what a WebSocket subscriber sees, exactly.

Each service is driven through its HTTP API to success, failure and cancellation; a raw
WebSocket subscriber (since=0 on a fresh hub) checks the event types and keys in order, the
terminal state, progress and the streamed answer. Typed events are refused, naming the bad
field, on both publish paths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from hub.config import Settings
from hub.errors import EventValidationError
from hub.wire.catalog import EventCatalog
from services.emitters import HttpEmitter, InProcessEmitter
from services.events import EVENT_TYPES, IngestJob, register_events
from services.instrument import track
from services.model import ExtractiveModel, Passage, Task
from services.runtime import Services
from services.store import BatchResult, NewDocument, Store

from .support import FrameRecorder, RunningHub, run_hub, wait_for

P = "p1"
TERMINAL = ("completed", "failed", "cancelled", "succeeded")


Event = dict[str, Any]  # an event frame as it came over the wire


class Subscriber(FrameRecorder):
    """A raw WebSocket subscriber, with the services' view: events by key and their states."""

    def of(self, key: str) -> list[Event]:
        return [e for e in self.events if e["key"] == key]

    def types(self, key: str) -> list[str]:
        return [e["type"] for e in self.of(key)]

    def states(self, key: str) -> list[str]:
        return [e["data"].get("state") or e["data"]["status"] for e in self.of(key)]

    def finished(self, key: str) -> bool:
        states = (e["data"].get("state") or e["data"].get("status") for e in self.of(key))
        return any(state in TERMINAL for state in states)

    async def until_finished(self, key: str) -> list[Event]:
        await wait_for(lambda: self.finished(key), what=f"{key} to finish")
        return self.of(key)


@contextlib.asynccontextmanager
async def hub_with_services(
    **options: Any,
) -> AsyncIterator[tuple[RunningHub, Services, Subscriber]]:
    catalog = EventCatalog()
    register_events(catalog)
    services = Services(min_interval=0, **options)
    async with run_hub(
        Settings(heartbeat_s=5.0),
        catalog=catalog,
        routes=services.routes(),
        lifespan_hooks=[services.lifespan],
    ) as running:
        subscriber = await Subscriber.open(running.ws_url(P, since=0))
        await wait_for(lambda: subscriber.welcome is not None, what="welcome")
        try:
            yield running, services, subscriber
            # Whatever a test did, the subscriber saw every seq once and in order.
            assert subscriber.seqs == list(range(1, len(subscriber.events) + 1))
        finally:
            await subscriber.close()


async def post(running: RunningHub, path: str, **kwargs: Any) -> httpx.Response:
    async with running.http() as http:
        return await http.post(f"/v1/projects/{P}{path}", **kwargs)


async def get(running: RunningHub, path: str) -> httpx.Response:
    async with running.http() as http:
        return await http.get(f"/v1/projects/{P}{path}")


def assert_progress_ends_at_one(events: Sequence[Event]) -> None:
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress), progress
    assert progress[-1] == 1.0


# --- catalog and validation on every publish path -------------------------------------


async def test_schema_serves_every_service_event_type() -> None:
    async with hub_with_services() as (running, _, _):
        async with running.http() as http:
            schema = (await http.get("/v1/schema")).json()
    assert set(EVENT_TYPES) <= set(schema["events"])
    assert "IngestJob" in schema["$defs"]


BAD_JOB = {"job_id": "j1", "source": "s", "progress": 1.5}


async def test_malformed_typed_event_is_refused_in_process_naming_the_field() -> None:
    async with hub_with_services() as (running, _, subscriber):
        hub = running.hub
        with pytest.raises(EventValidationError, match=r"\$\.data\.progress"):
            await hub.publish(P, "ingest.job.updated", BAD_JOB, key="ingest.job/j1")
        with pytest.raises(EventValidationError, match=r"\$\.data\.progress"):
            await InProcessEmitter(hub, P).emit(
                "ingest.job.updated", IngestJob(job_id="j1", source="s", progress=2.0)
            )
        with pytest.raises(EventValidationError, match="job_id"):
            async with track(InProcessEmitter(hub, P), IngestJob(job_id="", source="s")):
                pass
        assert subscriber.events == []


async def test_malformed_typed_event_is_refused_over_http_naming_the_field() -> None:
    async with hub_with_services() as (running, _, subscriber):
        async with running.http() as http:
            response = await http.post(
                f"/v1/projects/{P}/events",
                json={
                    "type": "agent.step.updated",
                    "key": "agent.step/r/0",
                    "data": {"run_id": "r", "index": 0, "name": "plan", "status": "thinking"},
                },
            )
        assert response.status_code == 422
        assert "$.data.status" in response.json()["error"]["message"]
        async with HttpEmitter(running.url, P) as emitter:
            with pytest.raises(EventValidationError, match=r"\$\.data\.progress"):
                await emitter.emit("ingest.job.updated", BAD_JOB, key="ingest.job/j1")
        assert subscriber.events == []


class DropFirstResponse(httpx.AsyncBaseTransport):
    """Delivers every request, but loses the first response: the publisher must retry."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.requests += 1
        if self.requests == 1:
            await response.aclose()
            raise httpx.ReadError("connection reset after the hub answered", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_http_emitter_retry_after_a_lost_response_publishes_once() -> None:
    async with hub_with_services() as (running, _, subscriber):
        transport = DropFirstResponse()
        client = httpx.AsyncClient(transport=transport)
        emitter = HttpEmitter(running.url, P, client=client, backoff=0.01)
        async with track(
            emitter, IngestJob(job_id="remote", source="elsewhere"), min_interval=0
        ) as job:
            await job.update(progress=0.5, documents=1)
        await client.aclose()
        events = await subscriber.until_finished("ingest.job/remote")
        assert transport.requests == 4  # created twice (one lost answer), updated, completed
        assert [e["type"] for e in events] == [
            "ingest.job.created",
            "ingest.job.updated",
            "ingest.job.completed",
        ]
        assert_progress_ends_at_one(events)


# --- ingest ---------------------------------------------------------------------------


async def test_ingest_job_over_http_reports_batches_and_completes() -> None:
    async with hub_with_services() as (running, _services, subscriber):
        response = await post(running, "/ingest/jobs", json={"folder": "."})
        assert response.status_code == 202
        key = response.json()["key"]
        events = await subscriber.until_finished(key)
        # 8 sample files in batches of 4: one update per batch; the last one is `completed`.
        assert [e["type"] for e in events] == [
            "ingest.job.created",
            "ingest.job.updated",
            "ingest.job.completed",
        ]
        assert [e["data"]["progress"] for e in events] == [0.0, 0.5, 1.0]
        assert_progress_ends_at_one(events)
        final = events[-1]["data"]
        assert (final["documents"], final["total_files"], final["status"]) == (8, 8, "completed")
        assert (await get(running, f"/ingest/jobs/{final['job_id']}")).json()["job"] == final
        hits = (await get(running, "/ingest/search?q=varroa")).json()["hits"]
        assert hits and hits[0]["name"] == "varroa-management.md"


async def test_ingest_job_fails_on_an_unsupported_upload_with_policy_fail() -> None:
    async with hub_with_services() as (running, _, subscriber):
        response = await post(
            running, "/ingest/uploads?name=notes.docx&on_error=fail", content=b"PK\x03\x04"
        )
        key = response.json()["key"]
        events = await subscriber.until_finished(key)
        assert [e["type"] for e in events] == ["ingest.job.created", "ingest.job.failed"]
        error = events[-1]["data"]["error"]
        assert error["kind"] == "UnsupportedDocument"
        assert "notes.docx: unsupported file type '.docx'" in error["message"]


async def test_ingest_refuses_folders_outside_the_allowed_roots() -> None:
    async with hub_with_services() as (running, _, subscriber):
        response = await post(running, "/ingest/jobs", json={"folder": "../../.."})
        assert response.status_code == 403
        assert "outside the allowed roots" in response.json()["error"]["message"]
        assert subscriber.events == []


class GatedStore(Store):
    """Stores the first batch, then holds every later one until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.batches = 0

    async def add_batch(
        self, project: str, job_id: str, docs: Sequence[NewDocument]
    ) -> BatchResult:
        self.batches += 1
        if self.batches > 1:
            await self.gate.wait()
        return await super().add_batch(project, job_id, docs)


async def test_cancelling_an_ingest_job_ends_it_cancelled_after_the_batches_done() -> None:
    store = GatedStore()
    async with hub_with_services(store=store) as (running, _, subscriber):
        key = (await post(running, "/ingest/jobs", json={"folder": "."})).json()["key"]
        job_id = key.split("/", 1)[1]
        await wait_for(lambda: "ingest.job.updated" in subscriber.types(key), what="batch 1")
        assert (await post(running, f"/ingest/jobs/{job_id}/cancel")).status_code == 202
        events = await subscriber.until_finished(key)
        assert [e["type"] for e in events] == [
            "ingest.job.created",
            "ingest.job.updated",
            "ingest.job.cancelled",
        ]
        assert events[-1]["data"]["documents"] == 4  # the first batch stays stored
        assert (await post(running, f"/ingest/jobs/{job_id}/cancel")).status_code == 409
        assert (await post(running, "/ingest/jobs/nope/cancel")).status_code == 404
    store.close()


# --- agent ----------------------------------------------------------------------------


class ScriptedModel(ExtractiveModel):
    """The local model, but its answer stops after `deltas` deltas: raising, or hanging."""

    def __init__(self, deltas: int, *, fail: bool) -> None:
        super().__init__()
        self.deltas = deltas
        self.fail = fail

    async def stream(
        self, task: Task, question: str, passages: Sequence[Passage]
    ) -> AsyncIterator[str]:
        count = 0
        async for delta in super().stream(task, question, passages):
            if task == "answer" and count == self.deltas:
                if self.fail:
                    raise RuntimeError("model backend exploded")
                await asyncio.Event().wait()
            count += 1
            yield delta


async def ask(running: RunningHub, services: Services, question: str) -> str:
    await services.ingest.run_folder(P, services.allowed_roots[0])
    response = await post(running, "/agent/runs", json={"question": question})
    assert response.status_code == 202
    return str(response.json()["run"]["run_id"])


async def test_agent_run_streams_an_answer_that_the_deltas_rebuild() -> None:
    async with hub_with_services() as (running, services, subscriber):
        run_id = await ask(running, services, "How do we prepare hives for winter?")
        run = await subscriber.until_finished(f"agent.run/{run_id}")
        assert run[0]["type"] == "agent.run.created" and run[-1]["type"] == "agent.run.completed"
        assert set(e["type"] for e in run[1:-1]) <= {"agent.run.updated"}
        assert_progress_ends_at_one(run)
        steps = [e for e in subscriber.events if e["type"] == "agent.step.updated"]
        names = [(e["key"], e["data"]["name"], e["data"]["status"]) for e in steps]
        assert names[:2] == [
            (f"agent.step/{run_id}/0", "plan", "running"),
            (f"agent.step/{run_id}/0", "plan", "succeeded"),
        ]
        assert [n[1:] for n in names[-2:]] == [("answer", "running"), ("answer", "succeeded")]
        messages = subscriber.of(f"agent.message/{run_id}/answer")
        assert len(messages) > 20 and messages[-1]["data"]["done"] is True
        answer = "".join(e["data"]["delta"] for e in messages)
        assert answer == messages[-1]["data"]["text"]
        assert [e["data"]["index"] for e in messages] == list(range(len(messages)))
        body = (await get(running, f"/agent/runs/{run_id}")).json()
        assert body["answer"] == answer and body["run"]["status"] == "completed"
        assert "20 kg of honey" in answer
        # The message finished before the run did.
        assert messages[-1]["seq"] < run[-1]["seq"]


async def test_agent_run_fails_when_the_model_fails_mid_answer() -> None:
    async with hub_with_services(model=ScriptedModel(3, fail=True)) as (
        running,
        services,
        subscriber,
    ):
        run_id = await ask(running, services, "When do swarms happen?")
        run = await subscriber.until_finished(f"agent.run/{run_id}")
        assert run[-1]["type"] == "agent.run.failed"
        assert run[-1]["data"]["error"] == {
            "kind": "RuntimeError",
            "message": "model backend exploded",
        }
        steps = [e["data"] for e in subscriber.events if e["type"] == "agent.step.updated"]
        assert (steps[-1]["name"], steps[-1]["status"]) == ("answer", "failed")
        messages = subscriber.of(f"agent.message/{run_id}/answer")
        # The three deltas, then the end of the message: `error`, keeping the text received.
        assert len(messages) == 4 and not any(e["data"]["done"] for e in messages[:3])
        end = messages[-1]["data"]
        assert (end["done"], end["finish_reason"]) == (True, "error")
        assert end["text"] == "".join(e["data"]["delta"] for e in messages[:3])


async def test_cancelling_an_agent_run_mid_answer_ends_it_cancelled() -> None:
    async with hub_with_services(model=ScriptedModel(2, fail=False)) as (
        running,
        services,
        subscriber,
    ):
        run_id = await ask(running, services, "When do swarms happen?")
        message_key = f"agent.message/{run_id}/answer"
        await wait_for(lambda: len(subscriber.of(message_key)) == 2, what="two deltas")
        assert (await post(running, f"/agent/runs/{run_id}/cancel")).status_code == 202
        run = await subscriber.until_finished(f"agent.run/{run_id}")
        assert run[-1]["type"] == "agent.run.cancelled"
        assert run[-1]["data"]["status"] == "cancelled"
        steps = [e["data"] for e in subscriber.events if e["type"] == "agent.step.updated"]
        assert (steps[-1]["name"], steps[-1]["status"]) == ("answer", "cancelled")


# --- workflows ------------------------------------------------------------------------


def workflow(folder: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "ingest-then-ask",
        "max_concurrency": 2,
        "nodes": [
            {"id": "ingest", "kind": "ingest", "params": {"folder": folder}},
            {
                "id": "ask",
                "kind": "agent",
                "depends_on": ["ingest"],
                "params": {"question": "What does membership cost?"},
            },
            *extra,
        ],
    }


async def test_workflow_runs_ingest_then_agent_and_succeeds() -> None:
    async with hub_with_services() as (running, _, subscriber):
        response = await post(running, "/workflows/runs", json=workflow("."))
        assert response.status_code == 202
        run_id = response.json()["run"]["run_id"]
        run = await subscriber.until_finished(f"workflow.run/{run_id}")
        assert subscriber.states(f"workflow.run/{run_id}")[:2] == ["pending", "running"]
        assert run[-1]["data"]["state"] == "succeeded"
        assert_progress_ends_at_one(run)
        for node in ("ingest", "ask"):
            states = subscriber.states(f"workflow.node/{run_id}/{node}")
            assert [s for i, s in enumerate(states) if states[i - 1 : i] != [s]] == [
                "pending",
                "running",
                "succeeded",
            ]
        ingest_ref = subscriber.of(f"workflow.node/{run_id}/ingest")[-1]["data"]["output_ref"]
        ask_ref = subscriber.of(f"workflow.node/{run_id}/ask")[-1]["data"]["output_ref"]
        assert subscriber.types(ingest_ref)[-1] == "ingest.job.completed"
        assert subscriber.types(ask_ref)[-1] == "agent.run.completed"
        # The agent started only after the ingest node had succeeded.
        assert (
            subscriber.of(ask_ref)[0]["seq"]
            > subscriber.of(f"workflow.node/{run_id}/ingest")[-1]["seq"]
        )
        body = (await get(running, f"/workflows/runs/{run_id}")).json()
        assert [n["state"] for n in body["nodes"]] == ["succeeded", "succeeded"]


async def test_workflow_fails_when_ingest_fails_and_skips_the_agent() -> None:
    async with hub_with_services() as (running, _, subscriber):
        run_id = (await post(running, "/workflows/runs", json=workflow("missing"))).json()["run"][
            "run_id"
        ]
        run = await subscriber.until_finished(f"workflow.run/{run_id}")
        assert run[-1]["data"]["state"] == "failed"
        assert run[-1]["data"]["error"]["message"] == (
            "node(s) failed: ingest (SourceNotFound: folder not found: 'missing')"
        )
        assert subscriber.states(f"workflow.node/{run_id}/ingest") == [
            "pending",
            "running",
            "failed",
        ]
        assert subscriber.states(f"workflow.node/{run_id}/ask") == ["pending", "skipped"]
        assert not [e for e in subscriber.events if e["type"].startswith("agent.")]


async def test_cancelling_a_workflow_cancels_its_running_nodes() -> None:
    async with hub_with_services() as (running, _, subscriber):
        slow = {"id": "wait", "kind": "delay", "params": {"seconds": 60}}
        run_id = (await post(running, "/workflows/runs", json=workflow(".", slow))).json()["run"][
            "run_id"
        ]
        wait_key = f"workflow.node/{run_id}/wait"
        await wait_for(lambda: "running" in subscriber.states(wait_key), what="delay running")
        assert (await post(running, f"/workflows/runs/{run_id}/cancel")).status_code == 202
        run = await subscriber.until_finished(f"workflow.run/{run_id}")
        assert run[-1]["data"]["state"] == "cancelled"
        assert subscriber.states(wait_key) == ["pending", "running", "cancelled"]
        for node in ("ingest", "ask"):  # these race with the cancel: either end is right
            assert subscriber.states(f"workflow.node/{run_id}/{node}")[-1] in (
                "succeeded",
                "cancelled",
            )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"nodes": [{"id": "a", "kind": "delay", "depends_on": ["a"]}]}, 400, "dependency cycle"),
        ({"nodes": [{"id": "a", "kind": "delay", "colour": "red"}]}, 422, "colour"),
        ({"nodes": []}, 422, "nodes"),
        (
            {"nodes": [{"id": "a", "kind": "ingest", "params": {"folder": "/etc"}}]},
            403,
            "outside the allowed roots",
        ),
    ],
)
async def test_bad_workflow_specs_are_refused_with_a_clear_error(
    body: dict[str, Any], status: int, words: str
) -> None:
    async with hub_with_services() as (running, _, subscriber):
        response = await post(running, "/workflows/runs", json=body)
        assert response.status_code == status
        assert words in response.json()["error"]["message"]
        assert subscriber.events == []

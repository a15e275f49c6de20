"""What the services show a person (issue 15): the 202 answer's `created_ms` is the event's, a
failed ingest keeps the progress it reached, a run's error names each failed node with its
own error, an ingest node mirrors its job's progress, an empty body gets a clear answer; and
hostile bodies and folders always get a JSON error that holds no server path.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.documents import UnreadableDocument
from services.ingest import IngestOptions, IngestService, NoReadableDocuments
from services.runtime import SAMPLE_DOCS, Services
from services.store import Store
from services.testing import RecordingEmitter

from .support import FrameRecorder, RunningHub, wait_for
from .test_services_hostile_support import hub_with_services

P = "p1"
TERMINAL = {"completed", "failed", "cancelled", "succeeded"}


class Live:
    """The services in a real hub, a subscriber from seq 1 and an HTTP client."""

    def __init__(self, running: RunningHub, services: Services, http: httpx.AsyncClient) -> None:
        self.running = running
        self.services = services
        self.http = http
        self.recorder: FrameRecorder

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.post(f"/v1/projects/{P}{path}", **kwargs)

    def of(self, key: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.recorder.events if e["key"] == key]

    async def until_finished(self, key: str) -> list[dict[str, Any]]:
        def done() -> bool:
            return any((d.get("status") or d.get("state")) in TERMINAL for d in self.of(key))

        await wait_for(done, what=f"{key} to end")
        return self.of(key)


@contextlib.asynccontextmanager
async def live(**options: Any) -> AsyncIterator[Live]:
    async with hub_with_services(**{"min_interval": 0, **options}) as (running, services):
        async with running.http() as http:
            state = Live(running, services, http)
            state.recorder = await FrameRecorder.open(running.ws_url(P, since=0))
            try:
                yield state
            finally:
                await state.recorder.close()


@pytest.fixture
def service() -> Iterator[tuple[IngestService, RecordingEmitter]]:
    emitter = RecordingEmitter()
    store = Store()
    yield IngestService(store, lambda project: emitter, IngestOptions(min_interval=0)), emitter
    store.close()


# --- 202 answers carry the created_ms their `created` event carries ------------------------


async def test_start_answers_carry_the_real_created_ms_of_their_event() -> None:
    workflow = {"nodes": [{"id": "d", "kind": "delay", "params": {"seconds": 0}}]}
    async with live() as hub:
        answers = [
            (await hub.post("/ingest/jobs", json={"folder": "."})).json(),
            (await hub.post("/ingest/uploads?name=a.md", content=b"# A\n\nBees.")).json(),
            (await hub.post("/agent/runs", json={"question": "How do swarms start?"})).json(),
            (await hub.post("/workflows/runs", json=workflow)).json(),
        ]
        for answer in answers:
            entity = answer.get("job") or answer["run"]
            events = await hub.until_finished(answer["key"])
            created_ms = entity["timings"]["created_ms"]
            assert created_ms > 1_600_000_000_000, answer  # a wall-clock time, not 0
            assert {e["timings"]["created_ms"] for e in events} == {created_ms}, answer
            final = events[-1]["timings"]
            started_ms = final["started_ms"]  # when the work began: for a job, at `created`
            assert created_ms <= started_ms <= final["finished_ms"], final
            assert final["duration_ms"] == final["finished_ms"] - started_ms, final


# --- a failed ingest keeps the progress it reached ------------------------------------------


async def test_an_unsupported_upload_fails_at_the_progress_it_reached() -> None:
    async with live() as hub:
        answer = (await hub.post("/ingest/uploads?name=slides.docx", content=b"PK\x03")).json()
        events = await hub.until_finished(answer["key"])
    assert [(e["status"], e["progress"]) for e in events] == [("running", 0.0), ("failed", 0.0)]
    assert events[-1]["error"]["kind"] == "NoReadableDocuments"
    assert (events[-1]["files_done"], events[-1]["skipped_files"]) == (1, 1)


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


async def test_a_job_whose_every_file_is_skipped_fails_below_one(
    service: tuple[IngestService, RecordingEmitter], tmp_path: Path
) -> None:
    ingest, emitter = service  # batches of 4 files
    write(tmp_path, {f"{i}.pdf": b"%PDF" for i in range(8)})
    with pytest.raises(NoReadableDocuments, match="none of the 8 files could be read"):
        await ingest.run_folder("p", tmp_path)
    progress = [(e.type, e.data["progress"]) for e in emitter.events]
    assert progress == [
        ("ingest.job.created", 0.0),
        ("ingest.job.updated", 0.5),
        ("ingest.job.failed", 0.5),
    ]
    assert emitter.events[-1].data["files_done"] == 8  # the counts of the last batch are there


async def test_policy_fail_keeps_the_progress_of_the_batches_stored(
    service: tuple[IngestService, RecordingEmitter], tmp_path: Path
) -> None:
    ingest, emitter = service
    files = {f"{i}.txt": f"note number {i}".encode() for i in range(8)}
    write(tmp_path, {**files, "5.txt": b"\xff not utf-8"})
    with pytest.raises(UnreadableDocument, match=r"^5\.txt: not valid UTF-8"):
        await ingest.run_folder("p", tmp_path, on_error="fail")
    assert [e.data["progress"] for e in emitter.events] == [0.0, 0.5, 0.5]
    assert emitter.events[-1].data["status"] == "failed"


# --- a run's error names each failed node with its own error -------------------------------


async def test_a_run_error_names_each_failed_node_with_its_own_error() -> None:
    spec = {
        "nodes": [
            {"id": "flaky", "kind": "delay", "params": {"seconds": 5}, "timeout": 0.05},
            {"id": "fine", "kind": "delay", "params": {"seconds": 0}},
            {
                "id": "badingest",
                "kind": "ingest",
                "params": {"documents": [{"name": "a.docx", "text": "x"}]},
            },
        ]
    }
    async with live() as hub:
        answer = (await hub.post("/workflows/runs", json=spec)).json()
        run = (await hub.until_finished(answer["key"]))[-1]
        nodes = {
            n: hub.of(f"workflow.node/{run['run_id']}/{n}")[-1] for n in ("flaky", "badingest")
        }
    assert nodes["flaky"]["error"] == {"kind": "Timeout", "message": "timed out"}
    bad = nodes["badingest"]["error"]
    assert bad["kind"] == "NoReadableDocuments"
    assert run["error"] == {
        "kind": "WorkflowFailed",
        "message": (
            f"node(s) failed: flaky (Timeout: timed out), badingest ({bad['kind']}: "
            f"{bad['message']})"
        ),
    }


# --- an ingest node mirrors its job's progress ---------------------------------------------


async def test_an_ingest_node_mirrors_its_jobs_progress() -> None:
    documents = [{"name": f"{i}.md", "text": f"# Note {i}\n\nBees number {i}."} for i in range(10)]
    spec = {"nodes": [{"id": "ingest", "kind": "ingest", "params": {"documents": documents}}]}
    async with live() as hub:
        answer = (await hub.post("/workflows/runs", json=spec)).json()
        run_id = answer["run"]["run_id"]
        await hub.until_finished(answer["key"])
        node = hub.of(f"workflow.node/{run_id}/ingest")
        job = hub.of(node[-1]["output_ref"])
    # 10 files in batches of 4: the job reports 0.4, 0.8, then completes; the node follows.
    assert [e["progress"] for e in job] == [0.0, 0.4, 0.8, 1.0]
    assert [(e["state"], e["progress"]) for e in node] == [
        ("pending", 0.0),
        ("running", 0.0),
        ("running", 0.4),
        ("running", 0.8),
        ("succeeded", 1.0),
    ]


async def test_an_agent_node_mirrors_its_runs_progress() -> None:
    question = "How do we treat varroa mites?"
    spec = {
        "nodes": [
            {"id": "ingest", "kind": "ingest", "params": {"folder": "."}},
            {
                "id": "ask",
                "kind": "agent",
                "depends_on": ["ingest"],
                "params": {"question": question},
            },
        ]
    }
    async with live() as hub:
        answer = (await hub.post("/workflows/runs", json=spec)).json()
        await hub.until_finished(answer["key"])
        node = hub.of(f"workflow.node/{answer['run']['run_id']}/ask")
        run = hub.of(node[-1]["output_ref"])
    steps = [e["progress"] for e in run if e["status"] == "running" and e["steps"] > 0]
    assert len(steps) >= 5 and steps == sorted(steps), steps  # one per step
    assert [e["progress"] for e in node if e["state"] == "running"] == [0.0, *steps]
    assert (node[-1]["state"], node[-1]["progress"], run[-1]["status"]) == (
        "succeeded",
        1.0,
        "completed",
    )


# --- folders refused: the message says why, and echoes only what was given ------------------


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        (
            "../..",
            "folder '../..' is outside the allowed roots: give a folder relative to the ingest "
            'root ("." for all of it)',
        ),
        ("a\x00b", "folder 'a\\x00b' is not a usable path"),
        ("x" * 100 + "\x00", "folder '" + "x" * 80 + "'... is not a usable path"),
    ],
)
async def test_a_refused_folder_is_told_why(folder: str, message: str) -> None:
    async with live() as hub:
        response = await hub.post("/ingest/jobs", json={"folder": folder})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == {"code": "forbidden", "message": message, "retryable": False}


# --- an empty body ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b" \r\n\t "])
async def test_an_empty_body_is_told_what_the_body_should_hold(body: bytes) -> None:
    async with live() as hub:
        for path, expected in [
            ("/ingest/jobs", '{"folder": "."}'),
            ("/agent/runs", '{"question": "..."}'),
            ("/workflows/runs", '"nodes": ['),
        ]:
            response = await hub.post(path, content=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "bad_request" and error["retryable"] is False
            assert error["message"].startswith("request body is empty: expected a JSON object")
            assert expected in error["message"]
        response = await hub.post("/ingest/uploads?name=a.md", content=b"")
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert message.startswith("request body is empty: expected the file's bytes")
        assert hub.recorder.events == []  # nothing was started


# --- hostile bodies and folders: a JSON error, never a server path --------------------------

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROOT_PATHS = [str(SAMPLE_DOCS), str(SAMPLE_DOCS.parent)]


@pytest.fixture
async def hostile() -> AsyncIterator[Live]:
    async with live() as hub:
        yield hub


def assert_json_error(response: httpx.Response, statuses: set[int], echo: str = "") -> str:
    """A JSON error in the hub's shape whose message holds no server path (`echo`, the
    client's own input, may be repeated)."""
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "retryable"}, error
    message = str(error["message"])
    assert message, error
    shown = message.replace(echo, "") if echo else message
    assert not any(path in shown for path in ROOT_PATHS), message
    return message


bodies = (
    st.binary(max_size=64)
    | st.sampled_from([b"", b" ", b"\n", b"null", b"[]", b'""', b"0", b"{", b"\xef\xbb\xbf{}"])
    | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


@PROPERTY
@given(
    path=st.sampled_from(
        ["/ingest/jobs", "/agent/runs", "/workflows/runs", "/ingest/uploads?name=a.md"]
    ),
    body=bodies,
)
async def test_any_body_gets_a_json_error_or_starts_work(
    hostile: Live, path: str, body: bytes
) -> None:
    response = await hostile.post(path, content=body)
    if response.status_code == 202:
        return  # e.g. a body that happens to be a valid request, or any upload
    assert_json_error(response, {400, 403, 422, 429})  # 429: admission (jobs still running)


folders = (
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.lists(st.sampled_from(["..", ".", "", "/", "etc", "~", "\x00", "%2e%2e"]), max_size=8).map(
        "/".join
    )
    | st.sampled_from(ROOT_PATHS)
)


@PROPERTY
@given(folder=folders, as_node=st.booleans())
async def test_any_folder_starts_a_job_or_gets_a_json_error_without_a_server_path(
    hostile: Live, folder: str, as_node: bool
) -> None:
    if as_node:
        node = {"id": "i", "kind": "ingest", "params": {"folder": folder}}
        response = await hostile.post("/workflows/runs", json={"nodes": [node]})
    else:
        response = await hostile.post("/ingest/jobs", json={"folder": folder})
    if response.status_code != 202:
        assert_json_error(response, {400, 403, 422}, echo=folder)
        return
    events = await hostile.until_finished(response.json()["key"])
    if as_node:  # the node's job: the one its output_ref names
        node_events = hostile.of(f"workflow.node/{events[-1]['run_id']}/i")
        job_key = node_events[-1]["output_ref"]
        events = await hostile.until_finished(job_key) if job_key else node_events
    for event in events:
        shown = str(event.get("source", "")) + str(event.get("error"))
        assert not any(path in shown for path in ROOT_PATHS), event
        assert not str(event.get("source", "")).startswith("/"), event


async def test_a_fault_of_the_services_is_a_json_500_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with live() as hub:
        hub.services.store.close()  # the corpus is gone under a running hub
        response = await hub.http.get(f"/v1/projects/{P}/ingest/search?q=bees")
        assert response.status_code == 500, response.text
        assert response.json() == {
            "error": {
                "code": "internal",
                "message": "the services failed to handle this request (logged)",
                "retryable": True,
            }
        }
        assert "Traceback" not in response.text
    assert "GET /v1/projects/p1/ingest/search failed" in caplog.text  # the operator is told


@PROPERTY
@given(
    name=st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
    | st.sampled_from(["/etc/passwd", "../../a.md", "a.md\x00.txt", ".md", "a." * 200]),
    body=st.binary(max_size=32),
)
async def test_any_upload_name_starts_a_job_that_ends_or_gets_a_json_error(
    hostile: Live, name: str, body: bytes
) -> None:
    response = await hostile.http.post(
        f"/v1/projects/{P}/ingest/uploads", params={"name": name}, content=body
    )
    if response.status_code != 202:
        assert_json_error(response, {400, 422, 429}, echo=name)
        return
    events = await hostile.until_finished(response.json()["key"])
    assert events[-1]["status"] in {"completed", "failed"}, events[-1]
    assert events[-1]["source"] == "upload"

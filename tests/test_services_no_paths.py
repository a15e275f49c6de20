"""No absolute server path leaves the services (issue 15): events and API answers name folders
relative to the ingest root, files relative to their folder.

The demo runs as a person runs it (`python -m services.demo`), over a copy of the sample
documents with every kind of bad file and folder beside them; the test drives each failure
through the HTTP API, waits for every entity to end, then scans every published event and
every answer body for the root's path, its parents, this checkout and any absolute path.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from services.limits import ServiceLimits

from .support import FrameRecorder, demo_banner, wait_for
from .test_services_hostile_support import hub_with_services

PROJECT = "demo"
REPO = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = REPO / "services" / "sample_docs"
TERMINAL = {"completed", "failed", "cancelled", "succeeded"}
INTERVAL_S = 0.3  # the demo's --interval: time from one workflow's end to the next's start
# An absolute POSIX path of two segments or more, not inside a word, a key or a URL path.
ABSOLUTE = re.compile(r"(?<![\w.:/-])/(?:[\w.-]+/)+[\w.-]*")


def docs_with_failures(tmp_path: Path) -> Path:
    """The sample docs, plus a bad file of each kind and folders that fail a whole job."""
    root = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS, root)
    (root / "notes").mkdir()
    (root / "notes" / "bees.md").write_text("# Bees\n\nWorker bees forage for nectar and pollen.")
    (root / "bad-utf8.txt").write_bytes(b"caf\xe9 au lait\xff")
    (root / "slides.docx").write_bytes(b"PK\x03\x04")
    (root / "empty.md").write_bytes(b"")
    (root / "broken.json").write_bytes(b'{"not": json')
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwords.txt").write_text("root password hunter2")
    os.symlink(secret / "passwords.txt", root / "link-out.txt")
    os.symlink(secret, root / "linked-dir")
    (root / "broken").mkdir()
    (root / "broken" / "a.docx").write_bytes(b"PK\x03\x04")
    (root / "broken" / "b.pdf").write_bytes(b"%PDF-1.4")
    (root / "empty-dir").mkdir()
    (root / "empty-dir" / ".hidden.md").write_text("hidden files are ignored")
    return root


def forbidden_paths(root: Path) -> list[str]:
    """Server paths no answer may hold: the root, each of its parents, the checkout."""
    paths = {root, root.resolve(), REPO, Path(sys.prefix), Path.cwd()}
    paths.update(p for p in root.resolve().parents if p != Path("/"))
    return sorted({str(p) for p in paths}, key=len, reverse=True)


def leaks(text: str, forbidden: list[str]) -> list[str]:
    found = [p for p in forbidden if p in text]
    return found + ABSOLUTE.findall(text)


class Api:
    """The demo's HTTP API; keeps every answer (with what was sent) for the scan."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.answers: list[tuple[str, httpx.Response, str]] = []  # (request, answer, echo ok)

    async def call(
        self, method: str, path: str, *, echo: str = "", **kwargs: Any
    ) -> httpx.Response:
        """`echo`: a client-given absolute path the answer may repeat (nothing else)."""
        response = await self.http.request(method, f"/v1/projects/{PROJECT}{path}", **kwargs)
        self.answers.append((f"{method} {path} {kwargs}", response, echo))
        return response

    async def start(self, path: str, body: dict[str, Any], status: int = 202) -> str:
        response = await self.call("POST", path, json=body)
        assert response.status_code == status, response.text
        return str(response.json()["key"]) if status == 202 else ""

    def errors(self) -> Iterator[tuple[str, httpx.Response]]:
        for request, response, _ in self.answers:
            if response.status_code >= 400:
                yield request, response


def finished(recorder: FrameRecorder, key: str) -> bool:
    return any(
        e["key"] == key and (e["data"].get("status") or e["data"].get("state")) in TERMINAL
        for e in recorder.events
    )


def last(recorder: FrameRecorder, key: str) -> dict[str, Any]:
    data: dict[str, Any] = [e for e in recorder.events if e["key"] == key][-1]["data"]
    return data


def workflow(name: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "max_concurrency": 4, "nodes": list(nodes)}


def ingest_node(node_id: str, folder: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "ingest", "params": {"folder": folder}, **extra}


async def drive_failures(api: Api, root: Path) -> dict[str, str]:
    """Every failure a client can cause with folders and files; returns started keys by name."""
    keys = {
        "all": await api.start("/ingest/jobs", {"folder": "."}),
        "all-fail": await api.start("/ingest/jobs", {"folder": ".", "on_error": "fail"}),
        "broken": await api.start("/ingest/jobs", {"folder": "broken"}),
        "empty-dir": await api.start("/ingest/jobs", {"folder": "empty-dir"}),
        "missing": await api.start("/ingest/jobs", {"folder": "missing"}),
        "notes-abs": await api.start("/ingest/jobs", {"folder": str(root / "notes")}),
        "docx": str(
            (
                await api.call(
                    "POST", "/ingest/uploads?name=slides.docx&on_error=fail", content=b"PK"
                )
            ).json()["key"]
        ),
        "ask": await api.start("/agent/runs", {"question": "How do we treat varroa mites?"}),
        "mixed": await api.start(
            "/workflows/runs",
            workflow(
                "mixed",
                {"id": "flaky", "kind": "delay", "params": {"seconds": 5}, "timeout": 0.05},
                ingest_node("badingest", "broken"),
                ingest_node("nowhere", "missing"),
                ingest_node("notes", "notes"),
                {
                    "id": "ask",
                    "kind": "agent",
                    "depends_on": ["notes"],
                    "params": {"question": "What do worker bees forage for?"},
                },
            ),
        ),
    }
    for folder in ("../..", "linked-dir", "notes/../../secret", "linked-dir/../.."):
        await api.start("/ingest/jobs", {"folder": folder}, status=403)
        await api.start("/workflows/runs", workflow("out", ingest_node("i", folder)), status=403)
    for absolute in ("/etc", str(root.parent / "secret")):
        response = await api.call("POST", "/ingest/jobs", json={"folder": absolute}, echo=absolute)
        assert response.status_code == 403, response.text
    await api.call("POST", "/ingest/jobs", content=b"")
    await api.call("POST", "/ingest/jobs", content=b'{"folder": ')
    await api.call("POST", "/ingest/jobs", json={"folder": ".", "extra": 1})
    await api.call("POST", "/ingest/uploads?name=empty.md", content=b"")
    await api.call("POST", "/ingest/uploads?name=bad.txt", content=b"\xff\xfe")
    await api.call("POST", "/workflows/runs", json=workflow("bad", ingest_node("i", 5)))
    await api.call("GET", "/ingest/jobs/nope")
    await api.call("POST", "/ingest/jobs/nope/cancel")
    await api.call("GET", "/workflows/runs/nope")
    return keys


async def test_no_event_or_answer_of_the_demo_holds_an_absolute_server_path(
    tmp_path: Path,
) -> None:
    root = docs_with_failures(tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.demo",
        "--port",
        "0",
        "--interval",
        str(INTERVAL_S),
        "--token-delay",
        "0",
        "--project",
        PROJECT,
        "--docs",
        str(root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # drive_failures starts 7 ingest jobs at once beside the demo's own: room for all of
        # them, so how fast a loaded machine finishes jobs cannot turn one into a 429
        env={**os.environ, "SERVICES_MAX_INGEST_JOBS_PER_PROJECT": "16"},
    )
    try:
        banner, base = await demo_banner(process)
        # The banner says the real schedule (checked against the runs below).
        assert f"ingesting {root}, then a workflow (ingest -> 2 agent questions)" in banner
        assert f"{INTERVAL_S:g}s after start and {INTERVAL_S:g}s after each one ends" in banner
        recorder = await FrameRecorder.open(
            base.replace("http://", "ws://") + f"/v1/projects/{PROJECT}/ws?since=0"
        )
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
            api = Api(http)
            keys = await drive_failures(api, root)
            await wait_for(
                lambda: all(finished(recorder, key) for key in keys.values()),
                timeout=30,
                what="every started job and run to end",
            )
            demo_runs = "workflow.run/"
            await wait_for(
                lambda: (
                    sum(
                        1
                        for e in recorder.events
                        if e["key"].startswith(demo_runs)
                        and e["data"]["workflow"].startswith("ingest-and-ask-")
                        and e["data"]["state"] in TERMINAL
                    )
                    >= 2
                ),
                timeout=30,
                what="two of the demo's own workflow runs to end",
            )
            for path in ("/snapshot", "/ingest/jobs", "/workflows/runs", "/ingest/documents"):
                await api.call("GET", path)
            for key in keys.values():
                kind, entity_id = key.split("/", 1)
                path = {"ingest.job": "/ingest/jobs/", "agent.run": "/agent/runs/"}.get(
                    kind, "/workflows/runs/"
                )
                await api.call("GET", path + entity_id)
        await recorder.close()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]

    forbidden = forbidden_paths(root)
    events = recorder.events
    assert len(events) > 100, len(events)
    for event in events:
        text = msgspec.json.encode(event).decode()
        assert not leaks(text, forbidden), (leaks(text, forbidden), text[:1000])
    errors = list(api.errors())
    assert len(errors) >= 15, [r for r, _ in errors]
    for request, response, echo in api.answers:
        text = response.text.replace(echo, "<echo>") if echo else response.text
        assert not leaks(text, forbidden), (request, leaks(text, forbidden), text[:1000])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message", "retryable"}, text

    # What the jobs show instead: folders relative to the root, files relative to them.
    assert last(recorder, keys["all"])["source"] == "."
    assert last(recorder, keys["notes-abs"])["source"] == "notes"
    names = {e["name"] for e in last(recorder, keys["all"])["file_errors"]}
    assert {"bad-utf8.txt", "slides.docx", "broken/a.docx", "link-out.txt"} <= names
    assert last(recorder, keys["empty-dir"])["error"]["message"] == "no files in 'empty-dir'"
    assert last(recorder, keys["missing"])["error"]["message"] == "folder not found: 'missing'"
    assert last(recorder, keys["broken"])["progress"] < 1.0
    message = last(recorder, keys["mixed"])["error"]["message"]
    assert message.startswith("node(s) failed: flaky (Timeout: timed out), badingest (No"), message
    assert "nowhere (SourceNotFound: folder not found: 'missing')" in message

    # The demo's schedule as the banner says: one run at a time, INTERVAL_S after the last.
    runs: dict[str, dict[str, Any]] = {}
    for event in events:
        data = event["data"]
        if event["type"] == "workflow.run.updated" and data["workflow"].startswith("ingest-and"):
            runs[data["run_id"]] = data
    ended = sorted(
        (r for r in runs.values() if r["timings"]["finished_ms"]),
        key=lambda r: int(r["workflow"].rsplit("-", 1)[1]),
    )
    assert len(ended) >= 2
    for previous, following in itertools.pairwise(ended):
        gap_ms = following["timings"]["created_ms"] - previous["timings"]["finished_ms"]
        assert gap_ms >= INTERVAL_S * 1000 - 1, (previous, following)


async def test_a_folder_over_the_file_limit_fails_naming_it_relative_to_the_root(
    tmp_path: Path,
) -> None:
    root = tmp_path / "docs"
    (root / "many").mkdir(parents=True)
    for i in range(4):
        (root / "many" / f"{i}.txt").write_text(f"note {i}")
    limits = ServiceLimits(max_job_files=3)
    async with hub_with_services(allowed_roots=[root], limits=limits) as (running, _):
        recorder = await FrameRecorder.open(running.ws_url("p", since=0))
        async with running.http() as http:
            response = await http.post("/v1/projects/p/ingest/jobs", json={"folder": "many"})
        assert response.status_code == 202, response.text
        key = response.json()["key"]
        await wait_for(lambda: finished(recorder, key), what="the job to fail")
        await recorder.close()
    error = last(recorder, key)["error"]
    assert error == {
        "kind": "TooManyFiles",
        "message": "folder 'many' holds more than 3 files (the job limit)",
    }
    for event in recorder.events:
        text = msgspec.json.encode(event).decode()
        assert not leaks(text, forbidden_paths(root)), text

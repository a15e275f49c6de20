"""The ingest service's policy (skip/fail, duplicates, missing folders) and the agent's steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.documents import UnsupportedDocument
from services.ingest import (
    IngestOptions,
    IngestService,
    NoReadableDocuments,
    SourceNotFound,
    Upload,
)
from services.runtime import SAMPLE_DOCS, Services
from services.store import Store
from services.testing import RecordingEmitter


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def service(emitter: RecordingEmitter) -> Iterator[IngestService]:
    store = Store()
    yield IngestService(store, lambda project: emitter, IngestOptions(batch_size=2, min_interval=0))
    store.close()


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


async def test_sample_docs_ingest_with_per_batch_progress_and_then_as_duplicates(
    service: IngestService, emitter: RecordingEmitter
) -> None:
    job = await service.run_folder("p", SAMPLE_DOCS)
    files = len(list(SAMPLE_DOCS.iterdir()))
    assert (job.status, job.documents, job.total_files, job.skipped_files) == (
        "completed",
        files,
        files,
        0,
    )
    assert job.chunks >= files and job.bytes > 0
    # One update per batch of 2 but the last, whose counts the `completed` event carries.
    updates = ["ingest.job.updated"] * (files // 2 - 1)
    assert emitter.types() == ["ingest.job.created", *updates, "ingest.job.completed"]
    progress = [e.data["progress"] for e in emitter.events]
    assert progress == sorted(progress) and progress[-1] == 1.0

    again = await service.run_folder("p", SAMPLE_DOCS)
    assert (again.documents, again.skipped_duplicates, again.status) == (0, files, "completed")


async def test_bad_files_are_skipped_counted_and_listed_by_default(
    service: IngestService, tmp_path: Path
) -> None:
    write(
        tmp_path,
        {
            "good.md": b"# Bees\n\nBees make honey.",
            "copy.txt": b"Bees\n\nBees make honey.",
            "scan.pdf": b"%PDF",
            "broken.json": b"{",
            ".hidden.txt": b"secret",
            ".git/config": b"x",
            "sub/notes.txt": b"Queens lay eggs.",
        },
    )
    job = await service.run_folder("p", tmp_path)
    assert job.status == "completed"
    assert (job.total_files, job.documents, job.skipped_duplicates, job.skipped_files) == (
        5,
        2,
        1,
        2,
    )
    assert [(e.name, e.kind) for e in job.file_errors] == [
        ("broken.json", "UnreadableDocument"),
        ("scan.pdf", "UnsupportedDocument"),
    ]


async def test_policy_fail_fails_the_job_on_the_first_bad_file(
    service: IngestService, emitter: RecordingEmitter, tmp_path: Path
) -> None:
    write(tmp_path, {"a.txt": b"Fine text here.", "b.xlsx": b"PK"})
    with pytest.raises(UnsupportedDocument, match=r"b\.xlsx: unsupported file type '\.xlsx'"):
        await service.run_folder("p", tmp_path, on_error="fail")
    assert emitter.types() == ["ingest.job.created", "ingest.job.failed"]
    error = emitter.events[-1].data["error"]
    assert error["kind"] == "UnsupportedDocument" and "b.xlsx" in error["message"]


@pytest.mark.parametrize(
    ("files", "error", "message"),
    [
        (None, SourceNotFound, "folder not found"),
        ({}, NoReadableDocuments, "no files in"),
        (
            {"a.bin": b"\x00", "b.txt": b"\xff\xfe"},
            NoReadableDocuments,
            "none of the 2 files could be read",
        ),
    ],
)
async def test_a_job_with_nothing_to_ingest_fails_clearly(
    service: IngestService,
    emitter: RecordingEmitter,
    tmp_path: Path,
    files: dict[str, bytes] | None,
    error: type[Exception],
    message: str,
) -> None:
    folder = tmp_path / "docs"
    if files is not None:
        folder.mkdir()
        write(folder, files)
    with pytest.raises(error, match=message):
        await service.run_folder("p", folder)
    failed = emitter.events[-1]
    assert failed.type == "ingest.job.failed"
    assert failed.data["error"]["kind"] == error.__name__


async def test_uploads_are_ingested_like_files(service: IngestService) -> None:
    job = await service.run_uploads(
        "p", [Upload("a.csv", b"hive,kg\nRB-01,20\n"), Upload("b.html", b"<p>Swarms in May.</p>")]
    )
    assert (job.source, job.documents, job.status) == ("upload", 2, "completed")
    hits = await service.store.search("p", "swarms")
    assert [h.name for h in hits] == ["b.html"]


async def test_agent_run_plans_searches_reads_summarises_and_streams_its_answer() -> None:
    emitter = RecordingEmitter()
    services = Services(emitter_for=lambda project: emitter, min_interval=0)
    await services.ingest.run_folder("p", SAMPLE_DOCS)
    emitter.events.clear()
    run, answer = await services.agent.ask("p", "When does swarm season start?")
    steps = [(e.data["name"], e.data["tool"], e.data["status"]) for e in emitter.of("agent.step/")]
    assert steps[:4] == [
        ("plan", None, "running"),
        ("plan", None, "succeeded"),
        ("search", "full_text_search", "running"),
        ("search", "full_text_search", "succeeded"),
    ]
    assert [s for s in steps if s[2] == "succeeded"][-3:] == [
        ("read", "read_chunk", "succeeded"),
        ("summarise", "summarise", "succeeded"),
        ("answer", None, "succeeded"),
    ]
    deltas = [e.data for e in emitter.of("agent.message/")]
    assert len(deltas) > 10
    assert "".join(d["delta"] for d in deltas) == answer == deltas[-1]["text"]
    assert [d["done"] for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert "late April" in answer and "swarm-season.html" in answer
    assert run.status == "completed" and run.usage.completion_tokens > 0
    assert run.output_summary is not None and run.output_summary.startswith(answer[:50])
    await services.aclose()

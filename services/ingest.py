"""The ingest service: documents from a folder or an upload into the store, as a tracked job.

Policy for bad files (`on_error`):
- `"skip"` (default): an unsupported, unreadable (not UTF-8, malformed JSON/CSV, over 5 MiB)
  or empty file is skipped, counted in `skipped_files` and listed in `file_errors` (first 20);
  the job still completes. It fails with `NoReadableDocuments` when every file was skipped.
- `"fail"`: the first such file fails the job with its error (`UnsupportedDocument`,
  `UnreadableDocument`, `EmptyDocument`) and a message naming the file.
A missing folder fails the job (`SourceNotFound`), and so does a folder with no files.
Duplicates (same normalised text as a stored document of the project, or earlier in the same
job) are never errors: they are counted in `skipped_duplicates`. Hidden files and folders
(names starting with ".") are ignored. Files are read in sorted path order, in batches; each
batch is one transaction followed by one progress update. Cancellation takes effect between
batches: batches already stored stay (a batch whose write is under way when the cancel lands
may still be stored, without being counted on the job).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from services.documents import DocumentError, UnreadableDocument, parse_document
from services.emitters import Emitter
from services.events import FileError, IngestJob
from services.instrument import DEFAULT_MIN_INTERVAL, Tracker, track
from services.store import NewDocument, Store, new_document
from services.tasks import TaskTable

__all__ = [
    "IngestError",
    "IngestOptions",
    "IngestService",
    "NoReadableDocuments",
    "OnError",
    "SourceNotFound",
    "Upload",
    "list_folder",
]

OnError = Literal["skip", "fail"]
MAX_FILE_ERRORS = 20  # listed on the job; the count goes on past it


class IngestError(RuntimeError):
    pass


class SourceNotFound(IngestError):
    pass


class NoReadableDocuments(IngestError):
    pass


class Upload(msgspec.Struct, frozen=True):
    name: str
    content: bytes


class IngestOptions(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: int = 4  # files per transaction and per progress update
    max_chunk_chars: int = 800
    on_error: OnError = "skip"
    min_interval: float = DEFAULT_MIN_INTERVAL


def list_folder(folder: Path) -> list[Path]:
    """Regular files under `folder`, recursively, sorted, without hidden files or folders."""
    if not folder.is_dir():
        raise SourceNotFound(f"folder not found: {folder}")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files.append(path)
    return files


# A file to ingest: its name, and how to get its bytes (read lazily, in a worker thread).
_Source = tuple[str, Callable[[], bytes]]


def _reader(content: bytes) -> Callable[[], bytes]:
    return lambda: content


class IngestService:
    def __init__(
        self,
        store: Store,
        emitter_for: Callable[[str], Emitter],
        options: IngestOptions | None = None,
    ) -> None:
        self.store = store
        self.emitter_for = emitter_for
        self.options = options or IngestOptions()
        self.jobs: TaskTable[IngestJob] = TaskTable()

    # --- start in the background (HTTP API) -------------------------------------------

    def start_folder(
        self,
        project: str,
        folder: str | Path,
        *,
        on_error: OnError | None = None,
        job_id: str | None = None,
    ) -> IngestJob:
        state = self.new_job(project, str(folder), job_id)
        self.jobs.start(
            state.job_id, self.run_folder(project, folder, state=state, on_error=on_error)
        )
        return state

    def start_uploads(
        self,
        project: str,
        uploads: Sequence[Upload],
        *,
        on_error: OnError | None = None,
        job_id: str | None = None,
    ) -> IngestJob:
        state = self.new_job(project, "upload", job_id)
        self.jobs.start(
            state.job_id, self.run_uploads(project, uploads, state=state, on_error=on_error)
        )
        return state

    def cancel(self, project: str, job_id: str) -> bool | None:
        return self.jobs.cancel(project, job_id)

    # --- run to the end (workflow nodes, scripts) ---------------------------------------

    async def run_folder(
        self,
        project: str,
        folder: str | Path,
        *,
        state: IngestJob | None = None,
        on_error: OnError | None = None,
    ) -> IngestJob:
        """Ingest a folder; returns the final job state, raises what failed the job."""
        state = state or self.new_job(project, str(folder), None)
        path = Path(folder)

        async def sources() -> list[_Source]:
            files = await asyncio.to_thread(list_folder, path)
            return [(str(f.relative_to(path)), f.read_bytes) for f in files]

        return await self._run(project, state, sources, on_error or self.options.on_error)

    async def run_uploads(
        self,
        project: str,
        uploads: Sequence[Upload],
        *,
        state: IngestJob | None = None,
        on_error: OnError | None = None,
    ) -> IngestJob:
        state = state or self.new_job(project, "upload", None)

        async def sources() -> list[_Source]:
            return [(u.name, _reader(u.content)) for u in uploads]

        return await self._run(project, state, sources, on_error or self.options.on_error)

    # --- the job -----------------------------------------------------------------------

    def new_job(self, project: str, source: str, job_id: str | None) -> IngestJob:
        state = IngestJob(job_id=job_id or uuid.uuid4().hex[:12], source=source[:1000])
        self.jobs.add(state.job_id, project, state)
        return state

    async def _run(
        self,
        project: str,
        state: IngestJob,
        list_sources: Callable[[], Awaitable[list[_Source]]],
        on_error: OnError,
    ) -> IngestJob:
        emitter = self.emitter_for(project)
        async with track(emitter, state, min_interval=self.options.min_interval) as job:
            sources = await list_sources()
            if not sources:
                raise NoReadableDocuments(f"no files in {state.source}")
            job.set(total_files=len(sources))
            size = max(1, self.options.batch_size)
            for start in range(0, len(sources), size):
                await self._batch(project, job, sources[start : start + size], on_error)
            if state.skipped_files == len(sources):
                raise NoReadableDocuments(
                    f"none of the {len(sources)} files could be read; first error: "
                    f"{state.file_errors[0].message if state.file_errors else '?'}"
                )
        return state

    async def _batch(
        self, project: str, job: Tracker[IngestJob], batch: list[_Source], on_error: OnError
    ) -> None:
        state = job.state
        docs, errors = await asyncio.to_thread(self._prepare, batch)
        if errors and on_error == "fail":
            raise errors[0]
        result = await self.store.add_batch(project, state.job_id, docs)
        file_errors = (
            state.file_errors
            + [FileError(e.name, e.kind, str(e)) for e in errors][
                : max(0, MAX_FILE_ERRORS - len(state.file_errors))
            ]
        )
        files_done = state.files_done + len(batch)
        await job.update(
            files_done=files_done,
            progress=files_done / state.total_files,
            documents=state.documents + result.documents,
            chunks=state.chunks + result.chunks,
            bytes=state.bytes + result.bytes,
            skipped_duplicates=state.skipped_duplicates + result.duplicates,
            skipped_files=state.skipped_files + len(errors),
            file_errors=file_errors,
        )

    def _prepare(self, batch: list[_Source]) -> tuple[list[NewDocument], list[DocumentError]]:
        # Runs in a worker thread: file reads, parsing, chunking and hashing are blocking work.
        docs: list[NewDocument] = []
        errors: list[DocumentError] = []
        for name, read in batch:
            try:
                raw = read()
            except OSError as exc:
                errors.append(UnreadableDocument(name, f"cannot read: {exc.strerror or exc}"))
                continue
            try:
                docs.append(new_document(parse_document(name, raw), self.options.max_chunk_chars))
            except DocumentError as exc:
                errors.append(exc)
        return docs, errors

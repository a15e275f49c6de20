"""The ingest service: documents from a folder or an upload into the store, as a tracked job.

Policy for bad files (`on_error`):
- `"skip"` (default): an unsupported, unreadable (not UTF-8, malformed JSON/CSV, over 5 MiB)
  or empty file is skipped, counted in `skipped_files` and listed in `file_errors` (first 20);
  the job still completes. It fails with `NoReadableDocuments` when every file was skipped.
- `"fail"`: the first such file fails the job with its error (`UnsupportedDocument`,
  `UnreadableDocument`, `EmptyDocument`) and a message naming the file.
A missing folder fails the job (`SourceNotFound`), and so does a folder with no files.
Paths: `source` names a folder relative to its ingest root (`.` for the root itself) and file
errors name files relative to the folder, so no absolute server path is ever published.
Progress is the share of files handled, reported after each batch but the last: the terminal
event carries the last batch, so a completed job ends at 1.0 and a failed one keeps the
progress it had reached (a job whose every file was skipped fails below 1.0). `on_progress`
hears each reported value (a workflow node mirrors its job with it).
Duplicates (same normalised text as a stored document of the project, or earlier in the same
job) are never errors: they are counted in `skipped_duplicates`. Hidden files and folders
(names starting with ".") are ignored. Files are read in sorted path order, in batches; each
batch is one transaction followed by one progress update. Cancellation stops the parsing
thread within a row (`ParsePool`) and takes effect between batches: batches already stored
stay (a batch whose write is under way when the cancel lands may still be stored, without
being counted on the job).

Bounds (`ServiceLimits`): the text and chunks one document and one job may produce (a file
past them is a `DocumentTooLarge` file error), the files of a folder, JSON nesting; any other
failure while parsing one file (a `RecursionError`, anything) is that file's error too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from services.admission import Permit, Slots
from services.documents import DocumentError, DocumentTooLarge, UnreadableDocument, parse_document
from services.emitters import Emitter
from services.events import FileError, IngestJob
from services.instrument import DEFAULT_MIN_INTERVAL, Tracker, now_ms, track
from services.limits import ServiceLimits
from services.parse_budget import CancelFlag, ParseBudget, ParseCancelled
from services.parse_pool import ParsePool
from services.sources import (
    IngestError,
    Source,
    SourceNotFound,
    TooManyFiles,
    folder_sources,
    list_folder,
    shown_folder,
    upload_sources,
)
from services.store import NewDocument, Store, new_document
from services.tasks import TaskTable

__all__ = [
    "IngestError",
    "IngestOptions",
    "IngestService",
    "NoReadableDocuments",
    "OnError",
    "OnProgress",
    "SourceNotFound",
    "TooManyFiles",
    "Upload",
    "list_folder",
]

OnError = Literal["skip", "fail"]
OnProgress = Callable[[float], Awaitable[None]]
MAX_FILE_ERRORS = 20  # listed on the job; the count goes on past it


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


class _JobBudget:
    """What is left of a job's text and chunk limits (used by one parsing thread at a time)."""

    def __init__(self, limits: ServiceLimits, cancel: CancelFlag) -> None:
        self.limits = limits
        self.cancel = cancel
        self.chars = limits.max_job_chars
        self.chunks = limits.max_job_chunks

    def for_document(self) -> ParseBudget:
        limits = self.limits
        job_bound = self.chars < limits.max_document_chars or (
            self.chunks < limits.max_document_chunks
        )
        return ParseBudget(
            max_chars=min(limits.max_document_chars, self.chars),
            max_chunks=min(limits.max_document_chunks, self.chunks),
            max_json_depth=limits.max_json_depth,
            cancel=self.cancel,
            limit_name="job" if job_bound else "document",
        )

    def spend(self, doc: NewDocument) -> None:
        self.chars -= len(doc.document.text)
        self.chunks -= len(doc.chunks)


class IngestService:
    def __init__(
        self,
        store: Store,
        emitter_for: Callable[[str], Emitter],
        options: IngestOptions | None = None,
        limits: ServiceLimits | None = None,
        roots: Sequence[Path] = (),
    ) -> None:
        self.store = store
        self.roots = [Path(root).resolve() for root in roots]  # what folder names are shown from
        self.emitter_for = emitter_for
        self.options = options or IngestOptions()
        self.limits = limits = limits or ServiceLimits()
        self.jobs: TaskTable[IngestJob] = TaskTable()
        self.parse_pool = ParsePool(limits.parse_workers)
        self.admission = Slots(
            "ingest jobs", limits.max_ingest_jobs_per_project, limits.max_ingest_jobs
        )
        n, size = limits.max_uploads_in_flight, limits.max_upload_bytes_in_flight
        self.uploads_in_flight = Slots("uploads in flight", n, n)
        self.upload_bytes_in_flight = Slots("upload bytes in flight", size, size)

    # --- start in the background (HTTP API) -------------------------------------------

    def start_folder(
        self,
        project: str,
        folder: str | Path,
        *,
        on_error: OnError | None = None,
        job_id: str | None = None,
    ) -> IngestJob:
        permit = self.admission.take(project)
        state = self.new_job(project, self.shown(Path(folder)), job_id)
        self.jobs.start(
            state.job_id,
            self.run_folder(project, folder, state=state, on_error=on_error),
            permits=[permit],
        )
        return state

    def start_uploads(
        self,
        project: str,
        uploads: Sequence[Upload],
        *,
        on_error: OnError | None = None,
        job_id: str | None = None,
        permits: Sequence[Permit] = (),
    ) -> IngestJob:
        """Start a job on `uploads`; `permits` (upload budget) are given back when it ends."""
        permits = [*permits, self.admission.take(project)]
        state = self.new_job(project, "upload", job_id)
        sources = upload_sources([(u.name, u.content) for u in uploads])
        self.jobs.start(
            state.job_id,
            self._run(project, state, _listed(sources), on_error or self.options.on_error),
            permits=permits,
        )
        return state

    def cancel(self, project: str, job_id: str) -> bool | None:
        return self.jobs.cancel(project, job_id)

    async def aclose(self) -> None:
        """Cancel every job, stop the parsing threads (shutdown)."""
        await self.jobs.aclose()
        self.parse_pool.close()

    # --- run to the end (workflow nodes, scripts) ---------------------------------------

    async def run_folder(
        self,
        project: str,
        folder: str | Path,
        *,
        state: IngestJob | None = None,
        on_error: OnError | None = None,
        on_progress: OnProgress | None = None,
    ) -> IngestJob:
        """Ingest a folder; returns the final job state, raises what failed the job."""
        path = Path(folder)
        shown = self.shown(path)
        state = state or self.new_job(project, shown, None)

        async def sources() -> list[Source]:
            return await asyncio.to_thread(folder_sources, path, self.limits.max_job_files, shown)

        return await self._run(
            project, state, sources, on_error or self.options.on_error, on_progress
        )

    async def run_uploads(
        self,
        project: str,
        uploads: Sequence[Upload],
        *,
        state: IngestJob | None = None,
        on_error: OnError | None = None,
        on_progress: OnProgress | None = None,
    ) -> IngestJob:
        state = state or self.new_job(project, "upload", None)
        sources = upload_sources([(u.name, u.content) for u in uploads])
        del uploads  # the sources hold the bytes now, and drop them once parsed
        return await self._run(
            project, state, _listed(sources), on_error or self.options.on_error, on_progress
        )

    # --- the job -----------------------------------------------------------------------

    def shown(self, folder: Path) -> str:
        """The folder as events and errors name it: relative to its ingest root."""
        return shown_folder(folder, self.roots)

    def new_job(self, project: str, source: str, job_id: str | None) -> IngestJob:
        """A job's state; `source` is "upload" or a folder as `shown` names it."""
        state = IngestJob(job_id=job_id or uuid.uuid4().hex[:12], source=source[:1000])
        state.timings.created_ms = now_ms()  # the 202 answer shows what `created` will carry
        self.jobs.add(state.job_id, project, state)
        return state

    async def _run(
        self,
        project: str,
        state: IngestJob,
        list_sources: Callable[[], Awaitable[list[Source]]],
        on_error: OnError,
        on_progress: OnProgress | None = None,
    ) -> IngestJob:
        emitter = self.emitter_for(project)
        async with track(emitter, state, min_interval=self.options.min_interval) as job:
            sources = await list_sources()
            if not sources:
                raise NoReadableDocuments(f"no files in {state.source!r}")
            total = len(sources)
            job.set(total_files=total)
            budget = _JobBudget(self.limits, CancelFlag())
            size = max(1, self.options.batch_size)
            pending = sources[::-1]  # popped from the end: a parsed file is held by nothing
            del sources
            while pending:
                batch = [pending.pop() for _ in range(min(size, len(pending)))]
                await self._batch(project, job, batch, on_error, budget, last=not pending)
                if pending and on_progress is not None:
                    await on_progress(state.progress)
            if state.skipped_files == total:
                raise NoReadableDocuments(
                    f"none of the {total} files could be read; first error: "
                    f"{state.file_errors[0].message if state.file_errors else '?'}"
                )
        return state

    async def _batch(
        self,
        project: str,
        job: Tracker[IngestJob],
        batch: list[Source],
        on_error: OnError,
        budget: _JobBudget,
        *,
        last: bool,
    ) -> None:
        state = job.state
        size = len(batch)
        docs, errors = await self.parse_pool.run(
            budget.cancel, lambda: self._prepare(batch, budget, stop_at_error=on_error == "fail")
        )
        batch.clear()  # the payloads are parsed: let them go before the write
        if errors and on_error == "fail":
            raise errors[0]
        result = await self.store.add_batch(project, state.job_id, docs)
        file_errors = (
            state.file_errors
            + [FileError(e.name, e.kind, str(e)) for e in errors][
                : max(0, MAX_FILE_ERRORS - len(state.file_errors))
            ]
        )
        files_done = state.files_done + size
        counts = dict(
            files_done=files_done,
            documents=state.documents + result.documents,
            chunks=state.chunks + result.chunks,
            bytes=state.bytes + result.bytes,
            skipped_duplicates=state.skipped_duplicates + result.duplicates,
            skipped_files=state.skipped_files + len(errors),
            file_errors=file_errors,
        )
        if last:
            job.set(**counts)  # the terminal event carries them: 1.0 only if it completes
        else:
            await job.update(progress=files_done / state.total_files, **counts)

    def _prepare(
        self, batch: list[Source], budget: _JobBudget, *, stop_at_error: bool
    ) -> tuple[list[NewDocument], list[DocumentError]]:
        # Runs in a parse pool thread: file reads, parsing, chunking and hashing.
        docs: list[NewDocument] = []
        errors: list[DocumentError] = []
        for source in batch:
            if budget.cancel.is_set():
                raise ParseCancelled
            try:
                doc = self._prepare_one(source, budget)
            except ParseCancelled:
                raise
            except DocumentError as exc:
                errors.append(exc)
            except Exception as exc:  # RecursionError, MemoryError...: still this file's error
                detail = f"{type(exc).__name__}: {exc}"[:300]
                errors.append(UnreadableDocument(source.name, f"cannot parse: {detail}"))
            else:
                budget.spend(doc)
                docs.append(doc)
            if errors and stop_at_error:
                break
        return docs, errors

    def _prepare_one(self, source: Source, budget: _JobBudget) -> NewDocument:
        if budget.chars <= 0 or budget.chunks <= 0:
            raise DocumentTooLarge(source.name, "the job's text or chunk limit is reached")
        try:
            raw = source.take()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__  # str(exc) would hold the absolute path
            raise UnreadableDocument(source.name, f"cannot read: {reason}") from None
        limits = budget.for_document()
        parsed = parse_document(source.name, raw, limits)
        del raw
        return new_document(parsed, self.options.max_chunk_chars, limits)


def _listed(sources: list[Source]) -> Callable[[], Awaitable[list[Source]]]:
    async def listed() -> list[Source]:
        taken = sources.copy()
        sources.clear()  # only the job holds them now
        return taken

    return listed

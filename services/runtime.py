"""`Services`: the store, the three services and the workflow node kinds, wired to one hub.

services = Services(Store("corpus.sqlite3"))
register_events(catalog)
app = create_app(settings, catalog=catalog, routes=services.routes(),
                 lifespan_hooks=[services.lifespan])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

from services.agent import AgentService
from services.emitters import Emitter, InProcessEmitter
from services.events import IngestJob
from services.ingest import IngestOptions, IngestService, Upload
from services.instrument import DEFAULT_MIN_INTERVAL
from services.model import Model
from services.store import Store
from services.workflow import NodeContext, NodeFn, WorkflowEngine

if TYPE_CHECKING:
    from hub.core import Hub

__all__ = ["SAMPLE_DOCS", "FolderNotAllowed", "Services"]

SAMPLE_DOCS = Path(__file__).resolve().parent / "sample_docs"
MAX_DELAY_NODE_SECONDS = 300.0


class FolderNotAllowed(PermissionError):
    """A folder outside the allowed roots: the HTTP API must not read arbitrary paths."""


class Services:
    """Owns the store and the services; `lifespan` binds them to the hub and stops them."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        emitter_for: Callable[[str], Emitter] | None = None,
        model: Model | None = None,
        ingest_options: IngestOptions | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        allowed_roots: Sequence[str | Path] = (SAMPLE_DOCS,),
        node_kinds: dict[str, NodeFn] | None = None,
    ) -> None:
        self._owns_store = store is None
        self.store = store or Store()
        self.hub: Hub | None = None
        self._emitter_for = emitter_for
        self._emitters: dict[str, Emitter] = {}
        self.allowed_roots = [Path(root).resolve() for root in allowed_roots]
        options = ingest_options or IngestOptions(min_interval=min_interval)
        self.ingest = IngestService(self.store, self.emitter_for, options)
        self.agent = AgentService(self.store, self.emitter_for, model, min_interval=min_interval)
        kinds: dict[str, NodeFn] = {
            "ingest": self._ingest_node,
            "agent": self._agent_node,
            "delay": _delay_node,
        }
        kinds.update(node_kinds or {})
        self.workflows = WorkflowEngine(self.emitter_for, kinds, min_interval=min_interval)

    def emitter_for(self, project: str) -> Emitter:
        if self._emitter_for is not None:
            return self._emitter_for(project)
        emitter = self._emitters.get(project)
        if emitter is None:
            if self.hub is None:
                raise RuntimeError("services are not bound to a hub yet (use Services.lifespan)")
            emitter = self._emitters[project] = InProcessEmitter(self.hub, project)
        return emitter

    def routes(self) -> list[BaseRoute]:
        from services.api import service_routes

        return service_routes(self)

    @contextlib.asynccontextmanager
    async def lifespan(self, hub: Hub) -> AsyncIterator[None]:
        """A `create_app(lifespan_hooks=...)` hook: bind to the hub; on shutdown cancel work.

        Jobs still running at shutdown end `cancelled`, and those events reach the hub
        before it stops (hooks exit before the hub does).
        """
        self.hub = hub
        self._emitters.clear()
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel running work (its `cancelled` events go out); close the store if ours."""
        await self.workflows.runs.aclose()
        await asyncio.gather(self.ingest.jobs.aclose(), self.agent.runs.aclose())
        if self._owns_store:
            self.store.close()

    def resolve_folder(self, folder: str) -> Path:
        """A folder to ingest, relative to the first allowed root, inside an allowed root."""
        path = Path(folder)
        if not path.is_absolute() and self.allowed_roots:
            path = self.allowed_roots[0] / path
        path = path.resolve()
        if not any(path == root or root in path.parents for root in self.allowed_roots):
            roots = ", ".join(str(r) for r in self.allowed_roots) or "(none)"
            raise FolderNotAllowed(f"folder {folder!r} is outside the allowed roots: {roots}")
        return path

    # --- workflow node kinds -------------------------------------------------------------

    async def _ingest_node(self, ctx: NodeContext) -> dict[str, Any]:
        """params: `folder` (under an allowed root) or `documents` [{name, text}]."""
        job_id = f"{ctx.run_id}.{ctx.spec.id}.{ctx.attempt}"
        documents = ctx.params.get("documents")
        if documents is not None:
            uploads = [Upload(str(d["name"]), str(d["text"]).encode()) for d in documents]
            state = self.ingest.new_job(ctx.project, "upload", job_id)
            ctx.set_output_ref(state.key)
            await self.ingest.run_uploads(ctx.project, uploads, state=state)
        else:
            folder = self.resolve_folder(str(ctx.params.get("folder", ".")))
            state = self.ingest.new_job(ctx.project, str(folder), job_id)
            ctx.set_output_ref(state.key)
            await self.ingest.run_folder(ctx.project, folder, state=state)
        return _job_summary(state)

    async def _agent_node(self, ctx: NodeContext) -> str:
        """params: `question`; optional `agent` (a name shown on the run)."""
        question = str(ctx.params.get("question", ""))
        run_id = f"{ctx.run_id}.{ctx.spec.id}.{ctx.attempt}"
        state = self.agent.new_run(
            ctx.project, question, run_id=run_id, agent=ctx.params.get("agent")
        )
        ctx.set_output_ref(state.key)
        await self.agent.run(ctx.project, state)
        return self.agent.answers[state.run_id]


async def _delay_node(ctx: NodeContext) -> float:
    """params: `seconds` (default 1, at most 300): waits, reporting progress ten times."""
    seconds = min(float(ctx.params.get("seconds", 1.0)), MAX_DELAY_NODE_SECONDS)
    for step in range(1, 11):
        await asyncio.sleep(seconds / 10)
        await ctx.progress(step / 10)
    return seconds


def _job_summary(job: IngestJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "documents": job.documents,
        "chunks": job.chunks,
        "skipped_duplicates": job.skipped_duplicates,
        "skipped_files": job.skipped_files,
    }

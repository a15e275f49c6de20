"""`Services`: the store, the three services and the workflow node kinds, wired to one hub.

services = Services(Store("corpus.sqlite3"))
register_events(catalog)
app = create_app(settings, catalog=catalog, routes=services.routes(),
                 lifespan_hooks=[services.lifespan])
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.routing import BaseRoute

from services.admission import Permit, Slots
from services.agent import AgentService
from services.emit_rate import EmitPacer, PacedEmitter
from services.emitters import Emitter, InProcessEmitter
from services.events import IngestJob
from services.ingest import IngestOptions, IngestService, Upload
from services.instrument import DEFAULT_MIN_INTERVAL
from services.limits import ServiceLimits
from services.model import Model
from services.spec_check import AgentParams, DelayParams, IngestParams, check_spec
from services.store import Store
from services.workflow import NodeContext, NodeFn, WorkflowEngine, WorkflowSpec

if TYPE_CHECKING:
    from hub.core import Hub

__all__ = ["SAMPLE_DOCS", "FolderNotAllowed", "Services"]

SAMPLE_DOCS = Path(__file__).resolve().parent / "sample_docs"


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
        limits: ServiceLimits | None = None,
    ) -> None:
        self.limits = limits = limits or ServiceLimits()
        self._owns_store = store is None
        self.store = store or Store()
        self.hub: Hub | None = None
        self._emitter_for = emitter_for
        self._emitters: dict[str, Emitter] = {}
        self.allowed_roots = [Path(root).resolve() for root in allowed_roots]
        options = ingest_options or IngestOptions(min_interval=min_interval)
        self.ingest = IngestService(
            self.store, self.emitter_for, options, limits, roots=self.allowed_roots
        )
        self.agent = AgentService(
            self.store, self.emitter_for, model, min_interval=min_interval, limits=limits
        )
        kinds: dict[str, NodeFn] = {
            "ingest": self._ingest_node,
            "agent": self._agent_node,
            "delay": _delay_node,
        }
        kinds.update(node_kinds or {})
        self.workflow_runs = Slots(
            "workflow runs", limits.max_workflow_runs_per_project, limits.max_workflow_runs
        )
        self.workflow_nodes = Slots(
            "workflow nodes", limits.max_workflow_nodes_per_project, limits.max_workflow_nodes
        )
        self.workflows = WorkflowEngine(
            self.emitter_for,
            kinds,
            min_interval=min_interval,
            check=lambda spec: check_spec(spec, limits),
            admit=self._admit_workflow,
        )
        self.pacer = self._new_pacer(0.0)

    def emitter_for(self, project: str) -> Emitter:
        if self._emitter_for is not None:
            return self._emitter_for(project)
        emitter = self._emitters.get(project)
        if emitter is None:
            if self.hub is None:
                raise RuntimeError("services are not bound to a hub yet (use Services.lifespan)")
            emitter = self._emitters[project] = PacedEmitter(
                InProcessEmitter(self.hub, project), project, self.pacer
            )
        return emitter

    def _new_pacer(self, hub_rate_per_project: float) -> EmitPacer:
        limits = self.limits
        rate = limits.emit_rate_per_project
        if hub_rate_per_project > 0:  # the hub's own per-project publish limit, if tighter
            rate = min(rate, hub_rate_per_project)
        return EmitPacer(rate, limits.emit_burst_per_project, limits.emit_rate, limits.emit_burst)

    def _admit_workflow(self, project: str, spec: WorkflowSpec) -> list[Permit]:
        run = self.workflow_runs.take(project)
        try:
            return [run, self.workflow_nodes.take(project, len(spec.nodes))]
        except BaseException:
            run.release()
            raise

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
        self.pacer = self._new_pacer(hub.settings.publish_rate_per_project)
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel running work (its `cancelled` events go out); close the store if ours."""
        self.pacer.paused = True  # shutdown: the terminal events go out without waiting
        await self.workflows.runs.aclose()
        await asyncio.gather(self.ingest.aclose(), self.agent.runs.aclose())
        # The jobs are cancelled, but a batch write they started may still run in its thread.
        self.store.interrupt()
        if self._owns_store:
            self.store.close()

    def resolve_folder(self, folder: str) -> Path:
        """A folder to ingest, relative to the first allowed root, inside an allowed root.

        Its errors go to API clients: they echo the folder given, never a root's path.
        """
        if len(folder) > self.limits.max_string_chars or "\x00" in folder:
            shown = f"{folder[:80]!r}..." if len(folder) > 80 else repr(folder)
            raise FolderNotAllowed(f"folder {shown} is not a usable path")
        path = Path(folder)
        if not path.is_absolute() and self.allowed_roots:
            path = self.allowed_roots[0] / path
        path = path.resolve()
        if not any(path == root or root in path.parents for root in self.allowed_roots):
            raise FolderNotAllowed(
                f"folder {folder[:200]!r} is outside the allowed roots: give a folder relative "
                'to the ingest root ("." for all of it)'
                if self.allowed_roots
                else "no folder may be ingested here (no allowed roots): upload documents instead"
            )
        return path

    # --- workflow node kinds -------------------------------------------------------------

    async def _ingest_node(self, ctx: NodeContext) -> dict[str, Any]:
        """params: `folder` (under an allowed root) or `documents` [{name, text}].

        The node's progress mirrors its job's.
        """
        job_id = f"{ctx.run_id}.{ctx.spec.id}.{ctx.attempt}"
        params = msgspec.convert(ctx.params, IngestParams)
        if params.documents is not None:
            uploads = [Upload(d.name, d.text.encode()) for d in params.documents]
            state = self.ingest.new_job(ctx.project, "upload", job_id)
            ctx.set_output_ref(state.key)
            await self.ingest.run_uploads(
                ctx.project, uploads, state=state, on_progress=ctx.progress
            )
        else:
            folder = self.resolve_folder(params.folder or ".")
            state = self.ingest.new_job(ctx.project, self.ingest.shown(folder), job_id)
            ctx.set_output_ref(state.key)
            await self.ingest.run_folder(ctx.project, folder, state=state, on_progress=ctx.progress)
        return _job_summary(state)

    async def _agent_node(self, ctx: NodeContext) -> str:
        """params: `question`; optional `agent` (a name shown on the run).

        The node's progress mirrors its run's.
        """
        params = msgspec.convert(ctx.params, AgentParams)
        run_id = f"{ctx.run_id}.{ctx.spec.id}.{ctx.attempt}"
        state = self.agent.new_run(ctx.project, params.question, run_id=run_id, agent=params.agent)
        ctx.set_output_ref(state.key)
        await self.agent.run(ctx.project, state, on_progress=ctx.progress)
        return self.agent.answers[state.run_id]


async def _delay_node(ctx: NodeContext) -> float:
    """params: `seconds` (default 1, at most `max_delay_node_s`): waits, reporting progress."""
    seconds = msgspec.convert(ctx.params, DelayParams).seconds
    if not math.isfinite(seconds) or seconds < 0:  # checked at the API too: never sleep(NaN)
        raise ValueError(f"invalid delay {seconds!r}")
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

"""A small DAG engine: nodes with dependencies, bounded concurrency, retries, timeouts.

Semantics:
- A node starts when every node it depends on succeeded, at most `max_concurrency` at once
  (ready nodes start in the order the spec lists them).
- A failing attempt (an exception, or its `timeout` elapsing) is retried up to `retries`
  times after `backoff * 2**(attempt-1)` seconds (capped at 30 s), shown as `retrying`.
- A node that fails for good makes every node downstream of it `skipped`; independent
  branches run on; the run then ends `failed` naming each failed node with its own error
  (`node(s) failed: a (Timeout: timed out), b (NoReadableDocuments: ...)`).
- Cancelling the run cancels the running nodes and marks the rest `cancelled`; the cleanup
  is shielded, so a second cancel cannot leave nodes `pending` under a `cancelled` run.
- `check` (e.g. `spec_check.check_spec`) refuses a spec with a number out of range;
  `admit` takes the run's admission permits (429 beyond), given back when it ends.
Each node is a `workflow.node/<run>/<node>` entity, the run a `workflow.run/<run>` entity.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import msgspec

from services.admission import Permit
from services.emitters import Emitter
from services.events import WorkflowNodeState, WorkflowRun
from services.instrument import DEFAULT_MIN_INTERVAL, Tracker, error_info, now_ms
from services.tasks import TaskTable

__all__ = [
    "NodeContext",
    "NodeFn",
    "NodeSpec",
    "WorkflowEngine",
    "WorkflowFailed",
    "WorkflowSpec",
    "WorkflowSpecError",
    "topological_order",
]

MAX_BACKOFF = 30.0
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class NodeSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: NodeId
    kind: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    depends_on: list[str] = msgspec.field(default_factory=list)
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None  # seconds per attempt
    backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5  # seconds before the first retry


class WorkflowSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nodes: Annotated[list[NodeSpec], msgspec.Meta(min_length=1, max_length=200)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "workflow"
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4


class WorkflowSpecError(ValueError):
    """The spec is not a runnable DAG (unknown kind or dependency, duplicate id, cycle)."""


class WorkflowFailed(RuntimeError):
    pass


class NodeContext:
    """What a node function gets: its spec, the outputs of its dependencies, a progress hook."""

    def __init__(
        self,
        project: str,
        run_id: str,
        spec: NodeSpec,
        inputs: dict[str, Any],
        tracker: Tracker[WorkflowNodeState],
    ) -> None:
        self.project = project
        self.run_id = run_id
        self.spec = spec
        self.params = spec.params
        self.inputs = inputs  # dependency node id -> its result
        self._tracker = tracker

    @property
    def attempt(self) -> int:
        return self._tracker.state.attempt

    async def progress(self, fraction: float) -> None:
        """Report progress in 0..1 (coalesced like every `updated`)."""
        await self._tracker.update(progress=fraction)

    def set_output_ref(self, key: str) -> None:
        """Name the entity this node produced (e.g. `agent.run/<id>`) for clients to follow."""
        self._tracker.set(output_ref=key)


NodeFn = Callable[[NodeContext], Awaitable[Any]]


def topological_order(spec: WorkflowSpec, kinds: Mapping[str, object]) -> list[str]:
    """Node ids in an order where dependencies come first; raises `WorkflowSpecError`."""
    ids = [node.id for node in spec.nodes]
    by_id = {node.id: node for node in spec.nodes}
    if len(by_id) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise WorkflowSpecError(f"duplicate node id(s): {', '.join(duplicates)}")
    for node in spec.nodes:
        if node.kind not in kinds:
            raise WorkflowSpecError(
                f"node {node.id!r}: unknown kind {node.kind!r}; known: {', '.join(sorted(kinds))}"
            )
        for dep in node.depends_on:
            if dep not in by_id:
                raise WorkflowSpecError(f"node {node.id!r} depends on unknown node {dep!r}")
    order: list[str] = []
    placed: set[str] = set()
    pending = list(ids)
    while pending:  # Kahn's algorithm, stable in spec order
        ready = [i for i in pending if all(d in placed for d in by_id[i].depends_on)]
        if not ready:
            raise WorkflowSpecError(f"dependency cycle among: {', '.join(pending)}")
        order.extend(ready)
        placed.update(ready)
        pending = [i for i in pending if i not in placed]
    return order


class WorkflowEngine:
    def __init__(
        self,
        emitter_for: Callable[[str], Emitter],
        kinds: Mapping[str, NodeFn],
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        check: Callable[[WorkflowSpec], None] | None = None,
        admit: Callable[[str, WorkflowSpec], list[Permit]] | None = None,
    ) -> None:
        self.emitter_for = emitter_for
        self.check = check
        self.admit = admit
        self.kinds = dict(kinds)
        self.min_interval = min_interval
        self._sleep = sleep
        self.runs: TaskTable[WorkflowRun] = TaskTable()
        self.nodes: dict[str, dict[str, WorkflowNodeState]] = {}  # run id -> node states

    def new_run(
        self, project: str, spec: WorkflowSpec, *, run_id: str | None = None
    ) -> WorkflowRun:
        if self.check is not None:
            self.check(spec)
        topological_order(spec, self.kinds)  # refuse a bad spec before anything is emitted
        state = WorkflowRun(
            run_id=run_id or uuid.uuid4().hex[:12], workflow=spec.name, nodes_total=len(spec.nodes)
        )
        state.timings.created_ms = now_ms()  # the 202 answer shows what `created` will carry
        self.runs.add(state.run_id, project, state)
        self.runs.prune(self.nodes)
        self.nodes[state.run_id] = {
            n.id: WorkflowNodeState(
                run_id=state.run_id,
                node_id=n.id,
                kind=n.kind,
                max_attempts=n.retries + 1,
                depends_on=list(n.depends_on),
            )
            for n in spec.nodes
        }
        return state

    def start(self, project: str, spec: WorkflowSpec, *, run_id: str | None = None) -> WorkflowRun:
        if self.check is not None:
            self.check(spec)  # before taking permits: a bad spec is a 422, not a 429
        permits = self.admit(project, spec) if self.admit is not None else []
        try:
            state = self.new_run(project, spec, run_id=run_id)
        except BaseException:
            for permit in permits:
                permit.release()
            raise
        self.runs.start(state.run_id, self.run(project, spec, state), permits=permits)
        return state

    def cancel(self, project: str, run_id: str) -> bool | None:
        return self.runs.cancel(project, run_id)

    async def run(self, project: str, spec: WorkflowSpec, state: WorkflowRun) -> WorkflowRun:
        emitter = self.emitter_for(project)
        order = topological_order(spec, self.kinds)
        specs = {n.id: n for n in spec.nodes}
        trackers = {
            node_id: Tracker(emitter, node_state, min_interval=self.min_interval)
            for node_id, node_state in self.nodes[state.run_id].items()
        }
        async with Tracker(emitter, state, min_interval=self.min_interval) as run:
            for node_id in order:
                await trackers[node_id].open()  # every node shows up as pending at once
            await run.transition("running")
            outcome: dict[str, str] = {}  # node id -> succeeded | failed | skipped
            outputs: dict[str, Any] = {}
            running: dict[asyncio.Task[Any], str] = {}
            try:
                while True:
                    await self._schedule(
                        project, spec, order, specs, trackers, outcome, outputs, running
                    )
                    if not running:
                        break
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        node_id = running.pop(task)
                        if not task.cancelled() and task.exception() is None:
                            outcome[node_id], outputs[node_id] = "succeeded", task.result()
                        else:
                            outcome[node_id] = "failed"
                    await self._report(run, outcome)
                await self._report(run, outcome)  # nodes skipped since the last report
            except asyncio.CancelledError:
                cleanup = asyncio.ensure_future(_cancel_nodes(order, trackers, running, run))
                while not cleanup.done():
                    # A second cancel must not interrupt the cleanup (nodes left `pending`).
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(cleanup)
                cleanup.result()
                raise
            failed = [trackers[i].state for i in order if outcome.get(i) == "failed"]
            if failed:
                raise WorkflowFailed(f"node(s) failed: {_failures(failed)}")
        return state

    async def _schedule(
        self,
        project: str,
        spec: WorkflowSpec,
        order: list[str],
        specs: dict[str, NodeSpec],
        trackers: dict[str, Tracker[WorkflowNodeState]],
        outcome: dict[str, str],
        outputs: dict[str, Any],
        running: dict[asyncio.Task[Any], str],
    ) -> None:
        """Skip nodes whose dependency failed; start ready nodes while there is room."""
        started = set(running.values())
        for node_id in order:
            if node_id in outcome or node_id in started:
                continue
            deps = specs[node_id].depends_on
            blocked = [d for d in deps if outcome.get(d) in ("failed", "skipped")]
            if blocked:
                outcome[node_id] = "skipped"
                await trackers[node_id].finish_as("skipped")
                continue
            if len(running) >= spec.max_concurrency:
                continue
            if all(outcome.get(d) == "succeeded" for d in deps):
                context = NodeContext(
                    project,
                    trackers[node_id].state.run_id,
                    specs[node_id],
                    {d: outputs[d] for d in deps},
                    trackers[node_id],
                )
                task = asyncio.create_task(
                    self._attempts(context, trackers[node_id]), name=f"node-{node_id}"
                )
                running[task] = node_id
                started.add(node_id)

    async def _attempts(self, ctx: NodeContext, tracker: Tracker[WorkflowNodeState]) -> Any:
        node = ctx.spec
        fn = self.kinds[node.kind]
        try:
            for attempt in range(1, node.retries + 2):
                await tracker.transition("running", attempt=attempt, progress=0.0, error=None)
                try:
                    async with asyncio.timeout(node.timeout):
                        result = await fn(ctx)
                except Exception as exc:
                    if attempt > node.retries:
                        await tracker.fail(exc)
                        raise
                    await tracker.transition("retrying", error=error_info(exc))
                    await self._sleep(min(MAX_BACKOFF, node.backoff * 2 ** (attempt - 1)))
                    continue
                await tracker.complete()
                return result
        except asyncio.CancelledError:
            await tracker.cancel("workflow run cancelled")
            raise

    async def _report(self, run: Tracker[WorkflowRun], outcome: dict[str, str]) -> None:
        counts = {
            k: sum(1 for v in outcome.values() if v == k)
            for k in ("succeeded", "failed", "skipped")
        }
        await run.update(
            nodes_succeeded=counts["succeeded"],
            nodes_failed=counts["failed"],
            nodes_skipped=counts["skipped"],
            progress=len(outcome) / run.state.nodes_total,
        )


def _failures(nodes: list[WorkflowNodeState], limit: int = 1800) -> str:
    """Each failed node with its own error: `a (Timeout: timed out), b (Kind: message)`."""
    parts: list[str] = []
    for i, node in enumerate(nodes):
        error = node.error
        part = f"{node.node_id} ({error.kind}: {error.message[:200]})" if error else node.node_id
        if sum(len(p) + 2 for p in parts) + len(part) > limit:
            parts.append(f"and {len(nodes) - i} more")
            break
        parts.append(part)
    return ", ".join(parts)


async def _cancel_nodes(
    order: list[str],
    trackers: dict[str, Tracker[WorkflowNodeState]],
    running: dict[asyncio.Task[Any], str],
    run: Tracker[WorkflowRun],
) -> None:
    """Cancel the running nodes, wait for them, and end every other node `cancelled`."""
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for node_id in order:
        if not trackers[node_id].finished:
            await trackers[node_id].cancel("workflow run cancelled")
    run.set(nodes_cancelled=sum(1 for t in trackers.values() if t.state.state == "cancelled"))

"""The workflow DAG engine: order, concurrency bound, retries, timeouts, failure, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.tasks import TaskTable
from services.testing import RecordingEmitter
from services.workflow import (
    NodeContext,
    NodeSpec,
    WorkflowEngine,
    WorkflowFailed,
    WorkflowSpec,
    WorkflowSpecError,
)

from .support import wait_for


class Harness:
    """An engine with recording emitter, test node kinds and an instant, recorded sleep."""

    def __init__(self) -> None:
        self.emitter = RecordingEmitter()
        self.delays: list[float] = []
        self.started: list[str] = []
        self.running = 0
        self.max_running = 0
        self.release = asyncio.Event()
        self.failures_left: dict[str, int] = {}

        async def sleep(delay: float) -> None:
            self.delays.append(delay)

        kinds: dict[str, Callable[[NodeContext], Awaitable[Any]]] = {
            "echo": self.echo,
            "gate": self.gate,
            "flaky": self.flaky,
            "hang": self.hang,
        }
        self.engine = WorkflowEngine(
            lambda project: self.emitter, kinds, min_interval=0, sleep=sleep
        )

    async def echo(self, ctx: NodeContext) -> str:
        self.started.append(ctx.spec.id)
        await ctx.progress(0.5)
        return ctx.spec.id + "(" + ",".join(str(v) for v in ctx.inputs.values()) + ")"

    async def gate(self, ctx: NodeContext) -> str:
        self.started.append(ctx.spec.id)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return ctx.spec.id

    async def flaky(self, ctx: NodeContext) -> int:
        left = self.failures_left.get(ctx.spec.id, 0)
        if left:
            self.failures_left[ctx.spec.id] = left - 1
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    async def hang(self, ctx: NodeContext) -> None:
        self.started.append(ctx.spec.id)
        await asyncio.Event().wait()

    def states(self, node_id: str) -> list[str]:
        return [
            e.data["state"]
            for e in self.emitter.events
            if e.key is not None
            and e.key.endswith(f"/{node_id}")
            and e.key.startswith("workflow.node/")
        ]

    def run_states(self) -> list[str]:
        return [e.data["state"] for e in self.emitter.of("workflow.run/")]


def spec(*nodes: NodeSpec, concurrency: int = 4) -> WorkflowSpec:
    return WorkflowSpec(name="t", nodes=list(nodes), max_concurrency=concurrency)


async def test_nodes_run_after_their_dependencies_and_get_their_outputs() -> None:
    h = Harness()
    wf = spec(
        NodeSpec(id="c", kind="echo", depends_on=["a", "b"]),
        NodeSpec(id="a", kind="echo"),
        NodeSpec(id="b", kind="echo", depends_on=["a"]),
    )
    run = h.engine.new_run("p", wf)
    await h.engine.run("p", wf, run)
    assert h.started == ["a", "b", "c"]
    assert h.engine.nodes[run.run_id]["c"].state == "succeeded"
    for node in "abc":
        assert h.states(node) == ["pending", "running", "running", "succeeded"]
    assert h.run_states()[:2] == ["pending", "running"]
    assert h.run_states()[-1] == "succeeded"
    assert run.progress == 1.0 and run.nodes_succeeded == 3
    progress = [e.data["progress"] for e in h.emitter.of("workflow.run/")]
    assert progress == sorted(progress)


async def test_no_more_than_max_concurrency_nodes_run_at_once() -> None:
    h = Harness()
    wf = spec(*(NodeSpec(id=f"n{i}", kind="gate") for i in range(6)), concurrency=2)
    task = asyncio.create_task(h.engine.run("p", wf, h.engine.new_run("p", wf)))
    await wait_for(lambda: h.running == 2, what="two nodes running")
    h.release.set()
    await task
    assert h.max_running == 2
    assert h.started == [f"n{i}" for i in range(6)]  # ready nodes start in spec order


async def test_a_failing_node_is_retried_with_backoff_then_succeeds() -> None:
    h = Harness()
    h.failures_left["f"] = 2
    wf = spec(NodeSpec(id="f", kind="flaky", retries=3, backoff=0.5))
    run = h.engine.new_run("p", wf)
    await h.engine.run("p", wf, run)
    assert h.states("f") == [
        "pending",
        "running",
        "retrying",
        "running",
        "retrying",
        "running",
        "succeeded",
    ]
    attempts = [e.data["attempt"] for e in h.emitter.of("workflow.node/")]
    assert attempts == [0, 1, 1, 2, 2, 3, 3]
    retrying = [e.data for e in h.emitter.of("workflow.node/") if e.data["state"] == "retrying"]
    assert retrying[0]["error"] == {"kind": "ConnectionError", "message": "attempt 1 failed"}
    assert h.emitter.of("workflow.node/")[-1].data["error"] is None
    assert h.delays == [0.5, 1.0]


async def test_a_node_failing_for_good_skips_its_dependents_and_fails_the_run() -> None:
    h = Harness()
    h.failures_left["bad"] = 5
    wf = spec(
        NodeSpec(id="bad", kind="flaky", retries=1, backoff=0),
        NodeSpec(id="after", kind="echo", depends_on=["bad"]),
        NodeSpec(id="later", kind="echo", depends_on=["after"]),
        NodeSpec(id="side", kind="echo"),
    )
    run = h.engine.new_run("p", wf)
    own_error = r"^node\(s\) failed: bad \(ConnectionError: attempt 2 failed\)$"
    with pytest.raises(WorkflowFailed, match=own_error):
        await h.engine.run("p", wf, run)
    assert h.states("bad")[-1] == "failed"
    assert h.states("after") == ["pending", "skipped"]
    assert h.states("later") == ["pending", "skipped"]
    assert h.states("side")[-1] == "succeeded"  # an independent branch still runs
    final = h.emitter.of("workflow.run/")[-1].data
    assert final["state"] == "failed"
    assert (final["nodes_failed"], final["nodes_skipped"], final["nodes_succeeded"]) == (1, 2, 1)
    assert final["error"]["kind"] == "WorkflowFailed"


async def test_a_node_over_its_timeout_fails_with_a_timeout_error() -> None:
    h = Harness()
    wf = spec(NodeSpec(id="slow", kind="hang", timeout=0.05))
    with pytest.raises(WorkflowFailed):
        await h.engine.run("p", wf, h.engine.new_run("p", wf))
    final = h.emitter.of("workflow.node/")[-1].data
    assert final["state"] == "failed"
    assert final["error"]["kind"] == "Timeout"


async def test_cancelling_the_run_cancels_running_and_pending_nodes() -> None:
    h = Harness()
    wf = spec(
        NodeSpec(id="hang", kind="hang"),
        NodeSpec(id="next", kind="echo", depends_on=["hang"]),
    )
    run = h.engine.start("p", wf)
    await wait_for(lambda: h.started == ["hang"], what="node started")
    assert h.engine.cancel("p", run.run_id) is True
    task = h.engine.runs.task(run.run_id)
    assert task is not None
    await asyncio.wait([task])
    assert h.states("hang") == ["pending", "running", "cancelled"]
    assert h.states("next") == ["pending", "cancelled"]
    assert h.run_states()[-1] == "cancelled"
    assert h.engine.runs.get("p", run.run_id).nodes_cancelled == 2  # type: ignore[union-attr]
    assert h.engine.cancel("p", run.run_id) is False
    assert h.engine.cancel("other", run.run_id) is None


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (
            [
                NodeSpec(id="a", kind="echo", depends_on=["b"]),
                NodeSpec(id="b", kind="echo", depends_on=["a"]),
            ],
            "dependency cycle among: a, b",
        ),
        ([NodeSpec(id="a", kind="echo", depends_on=["zz"])], "depends on unknown node 'zz'"),
        ([NodeSpec(id="a", kind="echo"), NodeSpec(id="a", kind="echo")], "duplicate node id"),
        ([NodeSpec(id="a", kind="teleport")], "unknown kind 'teleport'"),
    ],
)
def test_a_spec_that_is_not_a_dag_is_refused_before_anything_runs(
    nodes: list[NodeSpec], message: str
) -> None:
    h = Harness()
    with pytest.raises(WorkflowSpecError, match=message):
        h.engine.new_run("p", spec(*nodes))
    assert h.emitter.events == []


async def test_finished_jobs_are_forgotten_oldest_first_beyond_the_bound() -> None:
    table: TaskTable[str] = TaskTable(keep=2)
    side: dict[str, str] = {}
    for job_id in ("a", "b", "c"):
        table.add(job_id, "p", job_id)
        await table.start(job_id, asyncio.sleep(0))
        side[job_id] = job_id.upper()
    table.prune(side)
    assert [("a" in table), ("b" in table), ("c" in table)] == [False, True, True]
    assert side == {"b": "B", "c": "C"}
    assert table.list("p") == ["b", "c"] and table.get("other", "b") is None


async def test_a_run_error_names_each_failed_node_with_its_own_error_within_bounds() -> None:
    h = Harness()
    nodes = [NodeSpec(id=f"n{i:03}", kind="flaky") for i in range(120)]
    for i, node in enumerate(nodes):
        h.failures_left[node.id] = 1 if i % 2 else 0  # every other node fails, once
    run = h.engine.new_run("p", WorkflowSpec(nodes=nodes, max_concurrency=8))
    with pytest.raises(WorkflowFailed) as failed:
        await h.engine.run("p", WorkflowSpec(nodes=nodes, max_concurrency=8), run)
    message = str(failed.value)
    # Each node next to its own error, in spec order, bounded: the rest are counted.
    assert message.startswith(
        "node(s) failed: n001 (ConnectionError: attempt 1 failed), "
        "n003 (ConnectionError: attempt 1 failed), "
    )
    assert "n000" not in message and "n002" not in message  # those succeeded
    shown = message.count("(ConnectionError")
    assert 10 < shown < 60 and message.endswith(f"and {60 - shown} more"), message
    assert len(message) <= 1900
    assert run.error is not None and run.error.message == message  # what subscribers see

"""Typed event payloads of the ingest, agent and workflow services, and their catalog entry.

Every entity event carries the entity's whole current state (not a diff), so the hub's
snapshot (latest event per key) is enough to rebuild a dashboard. Wire types evolve by
adding fields with defaults; a field never changes type (msgspec's schema-evolution rule).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Protocol

import msgspec

__all__ = [
    "EVENT_TYPES",
    "AgentMessageAppended",
    "AgentRun",
    "AgentStep",
    "Citation",
    "ErrorInfo",
    "FileError",
    "FinishReason",
    "IngestJob",
    "Lifecycle",
    "Timings",
    "Usage",
    "UsageSource",
    "WorkflowNodeState",
    "WorkflowRun",
    "register_events",
]

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Count = Annotated[int, msgspec.Meta(ge=0)]
Progress = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Millis = Annotated[int, msgspec.Meta(ge=0)]
Excerpt = Annotated[str, msgspec.Meta(max_length=2000)]

JobStatus = Literal["running", "completed", "failed", "cancelled"]
StepStatus = Literal["running", "succeeded", "failed", "cancelled"]
NodeState = Literal["pending", "running", "succeeded", "failed", "skipped", "retrying", "cancelled"]
RunState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
# How a streamed message ended: the model finished (`stop`), hit its token bound (`length`),
# the run was cancelled, or the model or its stream failed (`error`; the text so far is kept).
FinishReason = Literal["stop", "length", "cancelled", "error"]
# Where token counts come from: the model server's own `usage`, or counted by the service.
UsageSource = Literal["server", "counted"]


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)  # shown in /v1/schema


_FINISH_DOC = (
    "How the answer ended: stop (the model finished), length (it hit the token bound), "
    "cancelled (the run was), error (the model or its stream failed; the text received is "
    "kept). Set on the last (done) append."
)
_USAGE_SOURCE_DOC = (
    "server: the model server's own usage report; counted: counted by the service "
    "(a streamed delta counts as a token)."
)


class Lifecycle(msgspec.Struct, frozen=True):
    """Which event type and status value each phase of an entity's life maps to."""

    created: str
    updated: str
    completed: str
    failed: str
    cancelled: str
    status_field: str = "status"
    initial_status: str = "running"
    completed_status: str = "completed"
    failed_status: str = "failed"
    cancelled_status: str = "cancelled"


class ErrorInfo(msgspec.Struct, frozen=True):
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]  # exception class name
    message: Annotated[str, msgspec.Meta(max_length=2000)]


class FileError(msgspec.Struct, frozen=True):
    """One file an ingest job skipped, and why."""

    name: str
    kind: str
    message: str


class Timings(msgspec.Struct, kw_only=True):
    created_ms: Millis = 0  # wall clock, ms since the Unix epoch
    started_ms: Millis | None = None
    finished_ms: Millis | None = None
    duration_ms: Millis | None = None


class Usage(msgspec.Struct, kw_only=True):
    """Tokens a model call (or a run's calls together) spent."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0


class Tracked(Protocol):
    """What the instrumentation needs from an entity state (see services.instrument)."""

    LIFECYCLE: ClassVar[Lifecycle]
    progress: float
    error: ErrorInfo | None
    timings: Timings

    @property
    def key(self) -> str: ...


# --- ingest ------------------------------------------------------------------------------


class IngestJob(msgspec.Struct, kw_only=True):
    """`ingest.job.*` payload; key `ingest.job/<job_id>`."""

    LIFECYCLE: ClassVar[Lifecycle] = Lifecycle(
        "ingest.job.created",
        "ingest.job.updated",
        "ingest.job.completed",
        "ingest.job.failed",
        "ingest.job.cancelled",
    )

    job_id: Id
    source: Annotated[str, msgspec.Meta(max_length=1000)]  # folder path or "upload"
    status: JobStatus = "running"
    progress: Progress = 0.0
    total_files: Count = 0
    files_done: Count = 0
    documents: Count = 0  # new documents stored
    chunks: Count = 0
    bytes: Count = 0
    skipped_duplicates: Count = 0
    skipped_files: Count = 0  # unreadable, unsupported or empty files (policy "skip")
    file_errors: list[FileError] = msgspec.field(default_factory=list)
    timings: Timings = msgspec.field(default_factory=Timings)
    error: ErrorInfo | None = None

    @property
    def key(self) -> str:
        return f"ingest.job/{self.job_id}"


# --- agent -------------------------------------------------------------------------------


class AgentRun(msgspec.Struct, kw_only=True):
    """`agent.run.*` payload; key `agent.run/<run_id>`.

    `model` names the model (`extractive-v1`, or the served model's name); `usage` holds
    the token totals of the run's model calls; `finish_reason` and `usage_source` are the
    answer's (see `agent.message.appended`).
    """

    LIFECYCLE: ClassVar[Lifecycle] = Lifecycle(
        "agent.run.created",
        "agent.run.updated",
        "agent.run.completed",
        "agent.run.failed",
        "agent.run.cancelled",
    )

    run_id: Id
    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    input: Annotated[str, msgspec.Meta(max_length=4000)]
    status: JobStatus = "running"
    progress: Progress = 0.0
    steps: Count = 0
    model: str = ""
    output_summary: Excerpt | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    finish_reason: Annotated[FinishReason | None, _doc(_FINISH_DOC)] = None
    usage_source: Annotated[UsageSource | None, _doc(_USAGE_SOURCE_DOC)] = None
    timings: Timings = msgspec.field(default_factory=Timings)
    error: ErrorInfo | None = None

    @property
    def key(self) -> str:
        return f"agent.run/{self.run_id}"


class AgentStep(msgspec.Struct, kw_only=True):
    """`agent.step.updated` payload; key `agent.step/<run_id>/<index>`."""

    run_id: Id
    index: Count
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    status: StepStatus
    tool: str | None = None
    input_excerpt: Excerpt = ""
    output_excerpt: Excerpt = ""
    duration_ms: Millis | None = None
    error: ErrorInfo | None = None

    @property
    def key(self) -> str:
        return f"agent.step/{self.run_id}/{self.index}"


class Citation(msgspec.Struct, kw_only=True):
    """A source an answer cites as `[n]`: the n-th passage given to the model."""

    n: Annotated[int, msgspec.Meta(ge=1)]
    chunk_id: Count
    name: str  # source file
    title: str = ""


class AgentMessageAppended(msgspec.Struct, kw_only=True):
    """`agent.message.appended`: one delta (token) of a streamed message; key
    `agent.message/<run_id>/<message_id>`.

    Clients concatenate `delta`s in seq order (`index` 0, 1, ...). The last append has
    `done=True` and carries the whole `text` (so the snapshot, latest per key, alone shows
    the full message), the `finish_reason` (`stop`, `length`, `cancelled`, `error`: the text
    received so far is kept), the `usage` (prompt and completion tokens) with its
    `usage_source` (`server`: the model server's usage report; `counted`: counted by the
    service), the `model` and the `citations` the text makes (`[n]` -> the n-th source).
    """

    run_id: Id
    message_id: Id
    role: Literal["assistant", "user", "system", "tool"] = "assistant"
    index: Count = 0  # position of this delta in the message
    delta: str = ""
    done: bool = False
    text: str | None = None
    finish_reason: Annotated[FinishReason | None, _doc(_FINISH_DOC)] = None
    usage: Annotated[
        Usage | None, _doc("Prompt and completion tokens of the answer; on the last append.")
    ] = None
    usage_source: Annotated[UsageSource | None, _doc(_USAGE_SOURCE_DOC)] = None
    model: Annotated[str | None, _doc("The model that wrote it; on the last append.")] = None
    citations: Annotated[
        list[Citation], _doc("The sources the text cites as [n]; on the last append.")
    ] = msgspec.field(default_factory=list)

    @property
    def key(self) -> str:
        return f"agent.message/{self.run_id}/{self.message_id}"


# --- workflow ----------------------------------------------------------------------------


def _workflow_lifecycle(event_type: str) -> Lifecycle:
    # Workflow entities have one event type and a `state` field that says the phase.
    return Lifecycle(
        event_type,
        event_type,
        event_type,
        event_type,
        event_type,
        status_field="state",
        initial_status="pending",
        completed_status="succeeded",
    )


class WorkflowRun(msgspec.Struct, kw_only=True):
    """`workflow.run.updated` payload; key `workflow.run/<run_id>`."""

    LIFECYCLE: ClassVar[Lifecycle] = _workflow_lifecycle("workflow.run.updated")

    run_id: Id
    workflow: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    state: RunState = "pending"
    progress: Progress = 0.0
    nodes_total: Count = 0
    nodes_succeeded: Count = 0
    nodes_failed: Count = 0
    nodes_skipped: Count = 0
    nodes_cancelled: Count = 0
    timings: Timings = msgspec.field(default_factory=Timings)
    error: ErrorInfo | None = None

    @property
    def key(self) -> str:
        return f"workflow.run/{self.run_id}"


class WorkflowNodeState(msgspec.Struct, kw_only=True):
    """`workflow.node_state.updated` payload; key `workflow.node/<run_id>/<node_id>`."""

    LIFECYCLE: ClassVar[Lifecycle] = _workflow_lifecycle("workflow.node_state.updated")

    run_id: Id
    node_id: Id
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    state: NodeState = "pending"
    attempt: Count = 0  # 1 on the first try
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 1
    progress: Progress = 0.0
    depends_on: list[str] = msgspec.field(default_factory=list)
    output_ref: str | None = None  # key of the entity the node produced, e.g. agent.run/<id>
    timings: Timings = msgspec.field(default_factory=Timings)
    error: ErrorInfo | None = None

    @property
    def key(self) -> str:
        return f"workflow.node/{self.run_id}/{self.node_id}"


def _event_types() -> dict[str, type[msgspec.Struct]]:
    types: dict[str, type[msgspec.Struct]] = {}
    for struct in (IngestJob, AgentRun, WorkflowRun, WorkflowNodeState):
        lc = struct.LIFECYCLE
        for name in (lc.created, lc.updated, lc.completed, lc.failed, lc.cancelled):
            types[name] = struct
    types["agent.step.updated"] = AgentStep
    types["agent.message.appended"] = AgentMessageAppended
    return types


# Event type -> payload Struct: what `register_events` puts in the hub's catalog.
EVENT_TYPES: dict[str, type[msgspec.Struct]] = _event_types()


class _Catalog(Protocol):
    def register(self, type_name: str, payload: type[msgspec.Struct]) -> None: ...


def register_events(catalog: _Catalog) -> None:
    """Register every service event type with the hub's `EventCatalog`."""
    for type_name, payload in EVENT_TYPES.items():
        catalog.register(type_name, payload)

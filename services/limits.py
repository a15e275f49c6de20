"""`ServiceLimits`: every bound of the services' API, in one place (README: "Limits").

The services run in the hub's process, so what one request may make them do, it does to every
subscriber of every project: each field below bounds one kind of work. Give them to
`Services(limits=...)`, or set `SERVICES_<FIELD>` variables (`ServiceLimits.from_env`, which
`hub demo` uses).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["ServiceLimits"]

MiB = 1024 * 1024


class ServiceLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Request bodies (read with the hub's deadline, `body_timeout_s`: 408 beyond).
    max_upload_bytes: int = 20 * MiB  # an ingest request body (413 beyond)
    max_request_bytes: int = 1 * MiB  # an agent or workflow request body (413 beyond)
    max_string_chars: int = 4_000  # a question, a folder, a document name... (422 beyond)
    max_name_chars: int = 100  # an agent or workflow name, a file name's stem (422 beyond)
    # Uploads held in memory until parsed (429 with Retry-After beyond).
    max_uploads_in_flight: int = 8
    max_upload_bytes_in_flight: int = 64 * MiB
    # Produced text: what parsing a file may turn into (the file becomes a file error beyond).
    max_document_chars: int = 8_000_000  # normalised text of one document
    max_document_chunks: int = 20_000
    max_job_chars: int = 64_000_000  # a job's documents together
    max_job_chunks: int = 100_000
    max_job_files: int = 10_000  # files listed in one folder (the job fails beyond)
    max_json_depth: int = 64  # nesting of a JSON document
    parse_workers: int = 2  # threads parsing files, for the whole process
    # Admission (429 with Retry-After beyond): work running at once.
    max_ingest_jobs_per_project: int = 4
    max_ingest_jobs: int = 16
    max_agent_runs_per_project: int = 16
    max_agent_runs: int = 64
    max_workflow_runs_per_project: int = 8
    max_workflow_runs: int = 32
    max_workflow_nodes_per_project: int = 400  # nodes of the project's unfinished runs
    max_workflow_nodes: int = 2_000
    # Events the services publish in-process (they wait for room beyond: backpressure).
    emit_rate_per_project: float = 500.0  # events/s; the hub's publish_rate_per_project if lower
    emit_burst_per_project: int = 1_000
    emit_rate: float = 2_000.0  # events/s for the whole process
    emit_burst: int = 4_000
    # Workflow numbers.
    max_node_timeout_s: float = 3_600.0
    max_node_backoff_s: float = 60.0
    max_delay_node_s: float = 300.0

    def __post_init__(self) -> None:
        for name, value in msgspec.structs.asdict(self).items():
            if not value > 0 or value == float("inf"):  # NaN fails `> 0`
                raise ValueError(f"{name} must be a finite number > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceLimits:
        """Build limits from `SERVICES_<FIELD>` variables, then keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            raw = environ.get(f"SERVICES_{field.name.upper()}")
            if raw is not None:
                values[field.name] = raw
        values.update(overrides)
        return msgspec.convert(values, cls, strict=False)

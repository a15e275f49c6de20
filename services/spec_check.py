"""Checking a workflow spec before it runs: every number finite and in range, every string
bounded, each built-in kind's params typed.

A NaN that reaches `asyncio.sleep` corrupts the ordering of the loop's timer heap, stalling
every timer of the process (every project's heartbeats and runs), so a spec is refused with
a `SpecInvalid` (422) naming the field, e.g. `$.nodes[0].params.seconds`, before anything
is emitted. Specs built in code are checked the same way as decoded ones (a Struct's
constructor checks no constraint).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from hub.errors import EventValidationError
from services.limits import ServiceLimits
from services.workflow import WorkflowSpec

__all__ = [
    "AgentParams",
    "DelayParams",
    "IngestDocumentParam",
    "IngestParams",
    "SpecInvalid",
    "check_spec",
    "check_value",
]


class SpecInvalid(EventValidationError):
    """A request or spec field out of its bounds: 422, the message names the field."""

    code = "invalid_request"


class DelayParams(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = 1.0


class AgentParams(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    agent: str | None = None


class IngestDocumentParam(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    text: str


class IngestParams(msgspec.Struct, forbid_unknown_fields=True):
    folder: str | None = None
    documents: list[IngestDocumentParam] | None = None


PARAM_TYPES: dict[str, type[msgspec.Struct]] = {
    "delay": DelayParams,
    "agent": AgentParams,
    "ingest": IngestParams,
}
_AT = re.compile(r"`\$(.*?)`")


def check_value(value: Any, path: str, max_chars: int, depth: int = 0) -> None:
    """Every float finite, every string within `max_chars`, nesting bounded."""
    if depth > 32:
        raise SpecInvalid(f"nested too deeply - at `{path}`")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecInvalid(f"number must be finite - at `{path}`")
    if isinstance(value, str) and len(value) > max_chars:
        raise SpecInvalid(f"string longer than {max_chars} - at `{path}`")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_value(str(key), f"{path}.<key>", max_chars, depth + 1)
            check_value(item, f"{path}.{key}", max_chars, depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_value(item, f"{path}[{i}]", max_chars, depth + 1)


def _in_range(value: float | None, low: float, high: float, path: str, *, open_low: bool) -> None:
    if value is None:
        return
    below = value <= low if open_low else value < low
    if not math.isfinite(value) or below or value > high:
        bound = f"{'>' if open_low else '>='} {low:g} and <= {high:g}"
        raise SpecInvalid(f"must be a finite number {bound}, got {value!r} - at `{path}`")


def check_spec(spec: WorkflowSpec, limits: ServiceLimits) -> None:
    """Raise `SpecInvalid` naming the first field out of bounds."""
    if len(spec.name) > limits.max_name_chars:
        raise SpecInvalid(f"longer than {limits.max_name_chars} characters - at `$.name`")
    if not 1 <= spec.max_concurrency <= 64:
        raise SpecInvalid("must be 1-64 - at `$.max_concurrency`")
    for i, node in enumerate(spec.nodes):
        at = f"$.nodes[{i}]"
        _in_range(node.timeout, 0, limits.max_node_timeout_s, f"{at}.timeout", open_low=True)
        _in_range(node.backoff, 0, limits.max_node_backoff_s, f"{at}.backoff", open_low=False)
        if not 0 <= node.retries <= 10:
            raise SpecInvalid(f"must be 0-10 - at `{at}.retries`")
        if len(node.kind) > 64:
            raise SpecInvalid(f"longer than 64 characters - at `{at}.kind`")
        if len(node.depends_on) > len(spec.nodes):
            raise SpecInvalid(f"more dependencies than nodes - at `{at}.depends_on`")
        for j, dep in enumerate(node.depends_on):
            if len(dep) > 64:  # a node id's bound: error messages echo it
                raise SpecInvalid(f"longer than 64 characters - at `{at}.depends_on[{j}]`")
        # Params strings may be documents: bounded by the request size; typed ones tighter.
        check_value(node.params, f"{at}.params", limits.max_request_bytes)
        params_type = PARAM_TYPES.get(node.kind)
        if params_type is None:
            continue  # a kind added by the application: its own function reads its params
        try:
            params = msgspec.convert(node.params, params_type)
        except msgspec.ValidationError as exc:
            raise SpecInvalid(_rebase(str(exc), f"{at}.params")) from None
        _check_params(params, f"{at}.params", limits)


def _rebase(message: str, at: str) -> str:
    """msgspec's `$.seconds` inside params, as the spec's `$.nodes[0].params.seconds`."""
    match = _AT.search(message)
    if match is None:
        return f"{message} - at `{at}`"
    return f"{message[: match.start()]}`{at}{match.group(1)}`{message[match.end() :]}"


def _check_params(params: msgspec.Struct, at: str, limits: ServiceLimits) -> None:
    if isinstance(params, DelayParams):
        _in_range(params.seconds, 0, limits.max_delay_node_s, f"{at}.seconds", open_low=False)
    elif isinstance(params, AgentParams):
        if not params.question.strip():
            raise SpecInvalid(f"must not be empty - at `{at}.question`")
        if len(params.question) > limits.max_string_chars:
            raise SpecInvalid(f"longer than {limits.max_string_chars} - at `{at}.question`")
        if params.agent is not None and len(params.agent) > limits.max_name_chars:
            raise SpecInvalid(f"longer than {limits.max_name_chars} characters - at `{at}.agent`")
    elif isinstance(params, IngestParams):
        if params.folder is not None and params.documents is not None:
            raise SpecInvalid(f"give one of 'folder' or 'documents' - at `{at}`")
        if params.folder is not None and len(params.folder) > limits.max_string_chars:
            raise SpecInvalid(f"longer than {limits.max_string_chars} - at `{at}.folder`")
        if params.documents is not None:
            if not 1 <= len(params.documents) <= limits.max_job_files:
                raise SpecInvalid(f"must hold 1-{limits.max_job_files} - at `{at}.documents`")
            for j, doc in enumerate(params.documents):
                if not doc.name or len(doc.name) > 255:
                    raise SpecInvalid(f"must be 1-255 characters - at `{at}.documents[{j}].name`")

"""HTTP API of the services, mounted in the hub app: start, inspect and cancel work.

Under `/v1/projects/{project}/`:
    POST ingest/jobs                  {"folder": "..."} or {"documents": [{"name", "text" |
                                      "content_base64"}]}, optional "on_error": skip|fail
    POST ingest/uploads?name=F        the raw file as the body (e.g. curl --data-binary @F)
    GET  ingest/jobs, ingest/jobs/{id}; POST ingest/jobs/{id}/cancel
    GET  ingest/search?q=...&limit=5, ingest/documents
    POST agent/runs                   {"question": "...", "agent": "..."}
    GET  agent/runs, agent/runs/{id}; POST agent/runs/{id}/cancel
    POST workflows/runs               a WorkflowSpec: {"name", "max_concurrency", "nodes": [...]}
    GET  workflows/runs, workflows/runs/{id}; POST workflows/runs/{id}/cancel
Starting answers 202 with the entity and its event `key`; follow it on the WebSocket.
Errors use the hub's shape: {"error": {"code", "message", "retryable"}}; an empty body is a
400 that says what the body should hold. No answer, event or error carries an absolute server
path: folders are named relative to the ingest root.

Every body is read by the hub's own reader, with its deadline (`body_timeout_s`: 408) and a
size limit (413); a field out of bounds is a 422 naming it (`$.nodes[0].params.seconds`);
work over an admission limit (uploads or bytes in flight, runs, nodes) is a 429 with
`Retry-After`, refused before the body is read. The limits: `ServiceLimits`, README.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hub.errors import BadRequest, Forbidden, HubError
from hub.limits import RequestTimeout
from hub.protocol import is_valid_project
from hub.transports.http_api import (
    _read_body,  # the one body reader: deadline (408) and size (413)
    error_response,
)
from services.admission import Permit, TooBusy
from services.ingest import OnError, Upload
from services.spec_check import SpecInvalid, check_spec
from services.workflow import WorkflowSpec, WorkflowSpecError

if TYPE_CHECKING:
    from services.runtime import Services

__all__ = ["service_routes"]

log = logging.getLogger(__name__)

MAX_FILE_NAME = 255
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


class DocumentIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    text: str | None = None
    content_base64: bytes | None = None  # msgspec decodes base64 into bytes


class IngestRequest(msgspec.Struct, forbid_unknown_fields=True):
    folder: str | None = None
    documents: list[DocumentIn] | None = None
    on_error: Literal["skip", "fail"] | None = None


class AgentRequest(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    agent: str | None = None


# What each JSON body holds, for the answer to an empty one.
_EXPECTED_BODIES: dict[type, str] = {
    IngestRequest: '{"folder": "."} or {"documents": [{"name": "a.md", "text": "..."}]}',
    AgentRequest: '{"question": "..."}',
    WorkflowSpec: '{"name": "...", "nodes": [{"id": "a", "kind": "ingest", "params": {}}]}',
}


def _json(content: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(content), status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message, "retryable": False}}, status)


def _project(request: Request) -> str:
    project: str = request.path_params["project"]
    if not is_valid_project(project):
        raise BadRequest(f"invalid project id {project[:80]!r}")
    return project


async def _body(request: Request, limit: int) -> bytes:
    timeout_s = request.app.state.hub.settings.body_timeout_s
    body = await _read_body(request, limit, timeout_s)
    request.state.body_read = True
    return body


async def _discard_body(request: Request, limit: int) -> bool:
    """Read and drop an unread body within the deadline; False if it took longer or more."""
    size = 0
    try:
        async with asyncio.timeout(request.app.state.hub.settings.body_timeout_s):
            while True:
                message = await request.receive()
                if message["type"] != "http.request":
                    return False
                size += len(message.get("body", b""))
                if size > limit:
                    return False
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        return False


def _closing(response: Response) -> Response:
    response.headers["connection"] = "close"
    return response


def _decode(body: bytes, type_: type[T]) -> T:
    if not body.strip():
        expected = _EXPECTED_BODIES.get(type_, type_.__name__)
        raise BadRequest(f"request body is empty: expected a JSON object, {expected}")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise SpecInvalid(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid request body: {exc}") from None


async def _small_body(services: Services, request: Request, type_: type[T]) -> T:
    return _decode(await _body(request, services.limits.max_request_bytes), type_)


async def _upload_body(
    services: Services, request: Request, project: str
) -> tuple[bytes, list[Permit]]:
    """Read an ingest body within the upload budget (429 before reading beyond it).

    The permits stay taken until the job ends (its payloads are parsed and released).
    """
    ingest, limit = services.ingest, services.limits.max_upload_bytes
    declared = request.headers.get("content-length", "")
    valid = declared.isascii() and declared.isdigit() and len(declared) <= 15
    size = int(declared) if valid and int(declared) <= limit else limit
    permits = [ingest.uploads_in_flight.take(project)]
    try:
        permits.append(ingest.upload_bytes_in_flight.take(project, max(1, size)))
        return await _body(request, limit), permits
    except BaseException:
        _release(permits)
        raise


def _release(permits: list[Permit]) -> None:
    for permit in permits:
        permit.release()


def _bounded(value: str | None, limit: int, field: str) -> None:
    if value is not None and len(value) > limit:
        raise SpecInvalid(f"longer than {limit} characters - at `{field}`")


def _started(name: str, state: Any) -> Response:
    return _json({name: state, "key": state.key}, 202)


def _cancelled(result: bool | None, what: str) -> Response:
    if result is None:
        return _error(404, "not_found", f"no such {what}")
    if not result:
        return _error(409, "finished", f"{what} already finished")
    return _json({"cancelling": True}, 202)


Handler = Callable[["Services", Request], Awaitable[Response]]


# --- ingest ------------------------------------------------------------------------------


async def start_ingest(services: Services, request: Request) -> Response:
    project = _project(request)
    raw, permits = await _upload_body(services, request, project)
    try:
        body = _decode(raw, IngestRequest)
        del raw
        if (body.folder is None) == (body.documents is None):
            raise BadRequest("give exactly one of 'folder' or 'documents'")
        if body.folder is not None:
            _release(permits)  # nothing is held in memory for a folder
            _bounded(body.folder, services.limits.max_string_chars, "$.folder")
            try:
                folder = services.resolve_folder(body.folder)
            except PermissionError as exc:
                raise Forbidden(str(exc)) from None
            job = services.ingest.start_folder(project, folder, on_error=body.on_error)
            return _started("job", job)
        documents = body.documents or []
        if not 1 <= len(documents) <= services.limits.max_job_files:
            raise SpecInvalid(
                f"must hold 1-{services.limits.max_job_files} documents - at `$.documents`"
            )
        uploads = []
        for i, doc in enumerate(documents):
            _bounded(doc.name, MAX_FILE_NAME, f"$.documents[{i}].name")
            if (doc.text is None) == (doc.content_base64 is None):
                raise BadRequest(
                    f"document {doc.name!r}: give exactly one of 'text', 'content_base64'"
                )
            uploads.append(Upload(doc.name, doc.content_base64 or (doc.text or "").encode()))
        on_error = body.on_error
        del body, documents
        job = services.ingest.start_uploads(project, uploads, on_error=on_error, permits=permits)
    except BaseException:
        _release(permits)
        raise
    return _started("job", job)


async def upload(services: Services, request: Request) -> Response:
    project = _project(request)
    name = request.query_params.get("name", "")
    if not name:
        raise BadRequest("the 'name' query parameter (a file name with its extension) is required")
    _bounded(name, MAX_FILE_NAME, "name")
    on_error = request.query_params.get("on_error")
    if on_error not in (None, "skip", "fail"):
        raise BadRequest("on_error must be 'skip' or 'fail'")
    raw, permits = await _upload_body(services, request, project)
    try:
        if not raw:
            raise BadRequest(
                "request body is empty: expected the file's bytes "
                "(e.g. curl --data-binary @notes.md '...ingest/uploads?name=notes.md')"
            )
        job = services.ingest.start_uploads(
            project,
            [Upload(name, raw)],
            on_error=cast(OnError | None, on_error),
            permits=permits,
        )
    except BaseException:
        _release(permits)
        raise
    return _started("job", job)


async def list_jobs(services: Services, request: Request) -> Response:
    return _json({"jobs": services.ingest.jobs.list(_project(request))})


async def get_job(services: Services, request: Request) -> Response:
    job = services.ingest.jobs.get(_project(request), request.path_params["id"])
    return _json({"job": job}) if job else _error(404, "not_found", "no such job")


async def cancel_job(services: Services, request: Request) -> Response:
    return _cancelled(services.ingest.cancel(_project(request), request.path_params["id"]), "job")


async def search(services: Services, request: Request) -> Response:
    query = request.query_params.get("q", "")
    _bounded(query, services.limits.max_string_chars, "q")
    try:
        limit = max(1, min(50, int(request.query_params.get("limit", "5"))))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    return _json({"hits": await services.store.search(_project(request), query, limit)})


async def list_documents(services: Services, request: Request) -> Response:
    return _json({"documents": await services.store.documents(_project(request))})


# --- agent -------------------------------------------------------------------------------


async def start_run(services: Services, request: Request) -> Response:
    project = _project(request)
    body = await _small_body(services, request, AgentRequest)
    _bounded(body.question, services.limits.max_string_chars, "$.question")
    _bounded(body.agent, services.limits.max_name_chars, "$.agent")
    try:
        run = services.agent.start(project, body.question, agent=body.agent)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return _started("run", run)


async def list_runs(services: Services, request: Request) -> Response:
    return _json({"runs": services.agent.runs.list(_project(request))})


async def get_run(services: Services, request: Request) -> Response:
    run_id = request.path_params["id"]
    run = services.agent.runs.get(_project(request), run_id)
    if run is None:
        return _error(404, "not_found", "no such run")
    return _json({"run": run, "answer": services.agent.answers.get(run_id, "")})


async def cancel_run(services: Services, request: Request) -> Response:
    return _cancelled(services.agent.cancel(_project(request), request.path_params["id"]), "run")


# --- workflows ---------------------------------------------------------------------------


async def start_workflow(services: Services, request: Request) -> Response:
    project = _project(request)
    spec = await _small_body(services, request, WorkflowSpec)
    check_spec(spec, services.limits)  # 422 naming the field, before anything else
    for node in spec.nodes:
        if node.kind == "ingest" and "folder" in node.params:
            try:
                services.resolve_folder(str(node.params["folder"]))
            except PermissionError as exc:
                raise Forbidden(f"node {node.id!r}: {exc}") from None
    try:
        run = services.workflows.start(project, spec)
    except WorkflowSpecError as exc:
        raise BadRequest(str(exc)) from None
    return _started("run", run)


async def list_workflows(services: Services, request: Request) -> Response:
    return _json({"runs": services.workflows.runs.list(_project(request))})


async def get_workflow(services: Services, request: Request) -> Response:
    run_id = request.path_params["id"]
    run = services.workflows.runs.get(_project(request), run_id)
    if run is None:
        return _error(404, "not_found", "no such workflow run")
    return _json({"run": run, "nodes": list(services.workflows.nodes.get(run_id, {}).values())})


async def cancel_workflow(services: Services, request: Request) -> Response:
    result = services.workflows.cancel(_project(request), request.path_params["id"])
    return _cancelled(result, "workflow run")


def service_routes(services: Services) -> list[BaseRoute]:
    def bind(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(services, request)
            except RequestTimeout as exc:
                # A trickled body: kept open, its connection would hold the drain at shutdown.
                return _closing(error_response(exc))
            except TooBusy as exc:
                response = error_response(exc)
                if not getattr(request.state, "body_read", False):
                    # Refused before its body was read: drop the body (within the deadline),
                    # so the client reads its 429; a trickler's connection is closed.
                    if not await _discard_body(request, services.limits.max_upload_bytes):
                        _closing(response)
                return response
            except HubError:
                raise  # the hub's handler answers it
            except Exception:
                # A fault of ours (the store gone, a bug): logged here; the client gets the
                # JSON shape too, never a traceback or a server path.
                log.exception("%s %s failed", request.method, request.url.path)
                error = {
                    "code": "internal",
                    "message": "the services failed to handle this request (logged)",
                    "retryable": True,
                }
                return _closing(_json({"error": error}, 500))  # its body may be unread

        return endpoint

    base = "/v1/projects/{project}"
    table: list[tuple[str, Handler, str]] = [
        ("/ingest/jobs", start_ingest, "POST"),
        ("/ingest/jobs", list_jobs, "GET"),
        ("/ingest/uploads", upload, "POST"),
        ("/ingest/jobs/{id}", get_job, "GET"),
        ("/ingest/jobs/{id}/cancel", cancel_job, "POST"),
        ("/ingest/search", search, "GET"),
        ("/ingest/documents", list_documents, "GET"),
        ("/agent/runs", start_run, "POST"),
        ("/agent/runs", list_runs, "GET"),
        ("/agent/runs/{id}", get_run, "GET"),
        ("/agent/runs/{id}/cancel", cancel_run, "POST"),
        ("/workflows/runs", start_workflow, "POST"),
        ("/workflows/runs", list_workflows, "GET"),
        ("/workflows/runs/{id}", get_workflow, "GET"),
        ("/workflows/runs/{id}/cancel", cancel_workflow, "POST"),
    ]
    return [Route(base + path, bind(handler), methods=[method]) for path, handler, method in table]

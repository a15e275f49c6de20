"""HTTP API over a real loopback server: publish, validation, limits, idempotency, history
paging, snapshot, schema and health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect

from hub.backends.memory import MemoryBackend
from hub.config import Settings
from hub.wire.catalog import EventCatalog

from .support import RunningHub, run_hub, wait_for

EVENTS = "/v1/projects/p1/events"


class JobUpdated(msgspec.Struct):
    job_id: str
    progress: Annotated[float, msgspec.Meta(ge=0, le=1)]


def catalog_with_job_updated(*, strict: bool = False) -> EventCatalog:
    catalog = EventCatalog(strict=strict)
    catalog.register("ingest.job.updated", JobUpdated)
    return catalog


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(heartbeat_s=5.0, max_publish_body=2048, max_publish_batch=5)
    async with run_hub(settings, catalog=catalog_with_job_updated()) as running:
        async with running.http() as client:
            client.running = running  # type: ignore[attr-defined]
            yield client


def running_of(http: httpx.AsyncClient) -> RunningHub:
    running: RunningHub = http.running  # type: ignore[attr-defined]
    return running


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["retryable"], bool)
    for fragment in fragments:
        assert fragment in error["message"]
    message: str = error["message"]
    return message


async def publish_many(http: httpx.AsyncClient, project: str, events: list[dict[str, Any]]) -> None:
    response = await http.post(f"/v1/projects/{project}/events", json=events)
    assert response.status_code == 202, response.text


# --- publishing --------------------------------------------------------------------------


async def test_publish_one_object_returns_202_with_its_seq(http: httpx.AsyncClient) -> None:
    response = await http.post(EVENTS, json={"type": "agent.run.created", "data": {"a": 1}})
    assert response.status_code == 202
    assert response.json() == {"seqs": [1]}
    response = await http.post(EVENTS, json={"type": "agent.run.created", "data": {"a": 2}})
    assert response.json() == {"seqs": [2]}


async def test_publish_an_array_returns_one_seq_per_event_in_order(
    http: httpx.AsyncClient,
) -> None:
    await http.post(EVENTS, json={"type": "agent.run.created", "data": {}})
    body = [
        {"type": "agent.run.created", "key": "agent.run/r1", "data": {"n": 1}},
        {"type": "agent.message.appended", "data": {"n": 2}},
        {"type": "ingest.job.updated", "data": {"job_id": "j1", "progress": 0.5}},
    ]
    response = await http.post(EVENTS, json=body)
    assert response.status_code == 202
    assert response.json() == {"seqs": [2, 3, 4]}
    history = (await http.get(EVENTS)).json()
    assert [(e["seq"], e["type"], e.get("key")) for e in history["events"]] == [
        (1, "agent.run.created", None),
        (2, "agent.run.created", "agent.run/r1"),
        (3, "agent.message.appended", None),
        (4, "ingest.job.updated", None),
    ]
    assert history["events"][3]["data"] == {"job_id": "j1", "progress": 0.5}


async def test_published_event_carries_project_and_publish_time(http: httpx.AsyncClient) -> None:
    before = int(time.time() * 1000)
    await http.post(EVENTS, json={"type": "agent.run.created", "data": None})
    after = int(time.time() * 1000)
    [event] = (await http.get(EVENTS)).json()["events"]
    assert event["op"] == "event"
    assert event["project"] == "p1"
    assert before <= event["ts"] <= after
    assert event["data"] is None


async def test_http_publish_reaches_a_subscriber(http: httpx.AsyncClient) -> None:
    running = running_of(http)
    async with connect(running.ws_url("p1")) as ws:
        assert msgspec.json.decode(await ws.recv())["op"] == "welcome"
        await http.post(EVENTS, json={"type": "agent.run.created", "data": {"x": 1}})
        event = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 5))
        assert (event["seq"], event["data"]) == (1, {"x": 1})


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b'{"type":"agent.run.created",', ["malformed JSON"]),
        (b"not json at all", ["malformed JSON"]),
        (b"", ["empty body"]),
        (b"[]", ["empty array"]),
        (b'{"data":{}}', ["type"]),
        (b'[{"type":"agent.run.created","data":{}},{"data":{}}]', ["type"]),
        (b'{"type":"Agent.Run","data":{}}', ["invalid event type", "Agent.Run"]),
        (b'{"type":"single","data":{}}', ["invalid event type"]),
        (b'{"type":5,"data":{}}', ["$.type"]),
        (b'{"type":"agent.run.created","key":7,"data":{}}', ["$.key"]),
        (b'{"type":"agent.run.created","id":["x"],"data":{}}', ["$.id"]),
        (b'"agent.run.created"', ["invalid event"]),
    ],
)
async def test_malformed_publish_is_422_with_a_message(
    http: httpx.AsyncClient, body: bytes, fragments: list[str]
) -> None:
    response = await http.post(EVENTS, content=body)
    assert_error(response, 422, "invalid_event", *fragments)
    assert (await http.get(EVENTS)).json()["head"] == 0, "nothing was published"


async def test_a_bad_event_in_an_array_publishes_none_of_them(http: httpx.AsyncClient) -> None:
    body = [{"type": "agent.run.created", "data": {}}, {"type": "BAD", "data": {}}]
    assert (await http.post(EVENTS, json=body)).status_code == 422
    assert (await http.get(EVENTS)).json()["head"] == 0


async def test_bad_type_in_an_array_names_its_index(http: httpx.AsyncClient) -> None:
    body = [{"type": "agent.run.created", "data": {}}, {"type": "BAD", "data": {}}]
    assert_error(await http.post(EVENTS, json=body), 422, "invalid_event", "`$[1].type`")


@pytest.mark.parametrize(
    "envelope",
    [{"key": ""}, {"key": "k" * 257}, {"id": ""}, {"id": "i" * 129}],
    ids=["empty key", "long key", "empty id", "long id"],
)
async def test_out_of_bounds_key_or_id_is_422_naming_the_field(
    http: httpx.AsyncClient, envelope: dict[str, str]
) -> None:
    body = {"type": "agent.run.created", "data": {}, **envelope}
    [field] = envelope
    assert_error(await http.post(EVENTS, json=body), 422, "invalid_event", f"$.{field}")


async def test_key_and_id_at_their_length_limits_are_accepted(http: httpx.AsyncClient) -> None:
    body = {"type": "agent.run.created", "data": {}, "key": "k" * 256, "id": "i" * 128}
    assert (await http.post(EVENTS, json=body)).status_code == 202


# --- size limits -------------------------------------------------------------------------


async def test_body_over_max_publish_body_is_413(http: httpx.AsyncClient) -> None:
    body = {"type": "agent.run.created", "data": {"pad": "x" * 3000}}
    assert_error(await http.post(EVENTS, json=body), 413, "too_large", "2048")
    assert (await http.get(EVENTS)).json()["head"] == 0


async def test_chunked_body_over_max_publish_body_is_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type":"agent.run.created","data":{"pad":"'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}}'

    response = await http.post(EVENTS, content=chunks())
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "too_large")
    assert (await http.get(EVENTS)).json()["head"] == 0


async def test_body_just_under_max_publish_body_is_accepted(http: httpx.AsyncClient) -> None:
    prefix, suffix = b'{"type":"agent.run.created","data":{"pad":"', b'"}}'
    body = prefix + b"x" * (2048 - len(prefix) - len(suffix)) + suffix
    assert len(body) == 2048
    response = await http.post(EVENTS, content=body)
    assert response.status_code == 202


async def test_array_over_max_publish_batch_is_413(http: httpx.AsyncClient) -> None:
    body = [{"type": "agent.run.created", "data": {}} for _ in range(6)]
    assert_error(await http.post(EVENTS, json=body), 413, "too_large", "6 events", "5")
    assert (await http.post(EVENTS, json=body[:5])).json() == {"seqs": [1, 2, 3, 4, 5]}


# --- idempotency -------------------------------------------------------------------------


async def test_publish_with_the_same_id_returns_the_same_seq_and_is_delivered_once(
    http: httpx.AsyncClient,
) -> None:
    running = running_of(http)
    seqs: list[int] = []
    async with connect(running.ws_url("p1")) as ws:
        assert msgspec.json.decode(await ws.recv())["op"] == "welcome"

        async def record() -> None:
            async for message in ws:
                decoded = msgspec.json.decode(message)
                for frame in decoded if isinstance(decoded, list) else [decoded]:
                    if frame["op"] == "event":
                        seqs.append(frame["seq"])

        recorder = asyncio.create_task(record())
        event = {"type": "agent.run.created", "id": "req-1", "data": {"try": 1}}
        first = await http.post(EVENTS, json=event)
        retry = await http.post(EVENTS, json={**event, "data": {"try": 2}})
        assert first.json() == retry.json() == {"seqs": [1]}
        batch = [
            {"type": "agent.run.created", "id": "req-1", "data": {}},
            {"type": "agent.run.created", "id": "req-2", "data": {}},
        ]
        assert (await http.post(EVENTS, json=batch)).json() == {"seqs": [1, 2]}
        # A marker without an id: once it arrives, everything before it has been delivered.
        await http.post(EVENTS, json={"type": "agent.run.created", "data": {}})
        await wait_for(lambda: 3 in seqs, timeout=5, what="marker event")
        await ws.close()
        await recorder
    assert seqs == [1, 2, 3]
    events = (await http.get(EVENTS)).json()["events"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[0]["data"] == {"try": 1}


# --- typed validation --------------------------------------------------------------------


async def test_valid_typed_event_is_accepted(http: httpx.AsyncClient) -> None:
    body = {"type": "ingest.job.updated", "data": {"job_id": "j1", "progress": 1.0}}
    assert (await http.post(EVENTS, json=body)).status_code == 202


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"job_id": "j1", "progress": "half"}, "progress"),
        ({"job_id": "j1", "progress": 1.5}, "progress"),
        ({"job_id": 17, "progress": 0.5}, "job_id"),
    ],
)
async def test_invalid_typed_event_is_422_naming_the_data_field(
    http: httpx.AsyncClient, data: dict[str, Any], field: str
) -> None:
    body = {"type": "ingest.job.updated", "data": data}
    assert_error(await http.post(EVENTS, json=body), 422, "invalid_event", f"`$.data.{field}`")


async def test_missing_typed_field_is_422_naming_it_and_where(http: httpx.AsyncClient) -> None:
    body = {"type": "ingest.job.updated", "data": {"job_id": "j1"}}
    assert_error(await http.post(EVENTS, json=body), 422, "invalid_event", "`progress`", "`$.data`")


async def test_missing_typed_field_in_an_array_names_its_index(http: httpx.AsyncClient) -> None:
    body = [
        {"type": "ingest.job.updated", "data": {"job_id": "j1", "progress": 0.1}},
        {"type": "ingest.job.updated", "data": {"job_id": "j2"}},
    ]
    assert_error(
        await http.post(EVENTS, json=body), 422, "invalid_event", "`progress`", "`$[1].data`"
    )


async def test_invalid_typed_event_in_an_array_names_its_index(http: httpx.AsyncClient) -> None:
    body = [
        {"type": "ingest.job.updated", "data": {"job_id": "j1", "progress": 0.1}},
        {"type": "agent.run.created", "data": {}},
        {"type": "ingest.job.updated", "data": {"job_id": "j1", "progress": -1}},
    ]
    assert_error(await http.post(EVENTS, json=body), 422, "invalid_event", "`$[2].data.progress`")
    assert (await http.get(EVENTS)).json()["head"] == 0


async def test_unknown_well_formed_type_passes_when_not_strict(http: httpx.AsyncClient) -> None:
    body = {"type": "some.unknown.type", "data": {"anything": [1, 2]}}
    assert (await http.post(EVENTS, json=body)).json() == {"seqs": [1]}


@pytest.mark.hub_settings(heartbeat_s=5.0, strict_types=True)
async def test_strict_types_refuse_types_outside_the_catalog(running_hub: RunningHub) -> None:
    running_hub.hub.catalog.register("ingest.job.updated", JobUpdated)
    async with running_hub.http() as http:
        unknown = {"type": "some.unknown.type", "data": {}}
        assert_error(
            await http.post(EVENTS, json=unknown), 422, "invalid_event", "some.unknown.type"
        )
        known = {"type": "ingest.job.updated", "data": {"job_id": "j", "progress": 0}}
        assert (await http.post(EVENTS, json=known)).json() == {"seqs": [1]}


# --- history -----------------------------------------------------------------------------


async def test_history_pages_with_next_and_more(http: httpx.AsyncClient) -> None:
    for i in range(2):
        await publish_many(
            http, "p1", [{"type": "agent.run.created", "data": {"i": i * 5 + j}} for j in range(5)]
        )
    pages: list[list[int]] = []
    since, more = 0, True
    while more:
        page = (await http.get(EVENTS, params={"since": since, "limit": 4})).json()
        assert (page["head"], page["oldest"], page["gap"]) == (10, 1, False)
        pages.append([e["seq"] for e in page["events"]])
        since, more = page["next"], page["more"]
    assert pages == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert since == 10
    assert [e["data"]["i"] for e in (await http.get(EVENTS)).json()["events"]] == list(range(10))


async def test_history_without_since_starts_at_the_oldest_and_has_the_epoch(
    http: httpx.AsyncClient,
) -> None:
    await publish_many(http, "p1", [{"type": "a.b", "data": {}}] * 3)
    page = (await http.get(EVENTS)).json()
    assert [e["seq"] for e in page["events"]] == [1, 2, 3]
    assert (page["next"], page["more"]) == (3, False)
    running = running_of(http)
    assert page["epoch"] == (await running.hub.backend.position("p1")).epoch


async def test_history_of_an_empty_project_is_empty(http: httpx.AsyncClient) -> None:
    page = (await http.get("/v1/projects/fresh/events")).json()
    assert page["events"] == []
    assert (page["head"], page["oldest"], page["next"], page["more"], page["gap"]) == (
        0,
        1,
        0,
        False,
        False,
    )


async def test_history_types_filter_keeps_paging_over_skipped_events(
    http: httpx.AsyncClient,
) -> None:
    types = ["agent.run.created", "ingest.job.failed", "ingest.job.started", "agent.run.failed"]
    for _ in range(2):
        await publish_many(http, "p1", [{"type": t, "data": {}} for t in types])
    page = (await http.get(EVENTS, params={"types": "*.failed", "limit": 3})).json()
    assert [e["seq"] for e in page["events"]] == [2]
    assert (page["next"], page["more"]) == (3, True)
    page = (await http.get(EVENTS, params={"types": "*.failed", "since": 3})).json()
    assert [e["seq"] for e in page["events"]] == [4, 6, 8]
    assert (page["next"], page["more"]) == (8, False)
    page = (await http.get(EVENTS, params={"types": "agent.*,ingest.job.started"})).json()
    assert [e["seq"] for e in page["events"]] == [1, 3, 4, 5, 7, 8]


@pytest.mark.hub_settings(heartbeat_s=5.0, retention_events=5)
async def test_history_reports_a_gap_when_since_is_older_than_retention(
    running_hub: RunningHub,
) -> None:
    async with running_hub.http() as http:
        await publish_many(http, "p1", [{"type": "a.b", "data": {}}] * 12)
        page = (await http.get(EVENTS, params={"since": 3})).json()
        assert page["gap"] is True
        assert (page["oldest"], page["head"]) == (8, 12)
        assert [e["seq"] for e in page["events"]] == [8, 9, 10, 11, 12]
        page = (await http.get(EVENTS, params={"since": 7})).json()
        assert page["gap"] is False
        assert [e["seq"] for e in page["events"]] == [8, 9, 10, 11, 12]


@pytest.mark.hub_settings(heartbeat_s=5.0, history_max_limit=3)
async def test_history_limit_is_capped_at_history_max_limit(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        await publish_many(http, "p1", [{"type": "a.b", "data": {}}] * 5)
        page = (await http.get(EVENTS, params={"limit": 100})).json()
        assert [e["seq"] for e in page["events"]] == [1, 2, 3]
        assert (page["next"], page["more"]) == (3, True)


@pytest.mark.parametrize(
    "params",
    [
        {"since": "abc"},
        {"since": "-1"},
        {"limit": "0"},
        {"limit": "ten"},
        {"types": "Bad"},
        {"types": ",".join(f"t{i}.*" for i in range(40))},
    ],
)
async def test_history_with_an_invalid_parameter_is_400(
    http: httpx.AsyncClient, params: dict[str, str]
) -> None:
    assert_error(await http.get(EVENTS, params=params), 400, "bad_request")


# --- snapshot ----------------------------------------------------------------------------


async def test_snapshot_holds_the_latest_event_per_key(http: httpx.AsyncClient) -> None:
    await publish_many(
        http,
        "p1",
        [
            {"type": "agent.run.updated", "key": "agent.run/r1", "data": {"v": 1}},  # 1
            {
                "type": "ingest.job.updated",
                "key": "ingest.job/j1",
                "data": {"job_id": "j1", "progress": 0.1},
            },  # 2
            {"type": "agent.run.updated", "key": "agent.run/r1", "data": {"v": 2}},  # 3
            {"type": "agent.message.appended", "data": {}},  # 4: no key
            {
                "type": "ingest.job.updated",
                "key": "ingest.job/j2",
                "data": {"job_id": "j2", "progress": 0.2},
            },  # 5
        ],
    )
    snapshot = (await http.get("/v1/projects/p1/snapshot")).json()
    assert (snapshot["head"], snapshot["oldest"]) == (5, 1)
    assert isinstance(snapshot["epoch"], str) and snapshot["epoch"]
    assert [(e["seq"], e["key"]) for e in snapshot["events"]] == [
        (2, "ingest.job/j1"),
        (3, "agent.run/r1"),
        (5, "ingest.job/j2"),
    ]
    assert snapshot["events"][1]["data"] == {"v": 2}

    filtered = (await http.get("/v1/projects/p1/snapshot", params={"types": "agent.*"})).json()
    assert [e["seq"] for e in filtered["events"]] == [3]
    assert filtered["head"] == 5


async def test_snapshot_of_an_empty_project_is_empty(http: httpx.AsyncClient) -> None:
    snapshot = (await http.get("/v1/projects/fresh/snapshot")).json()
    assert (snapshot["head"], snapshot["oldest"], snapshot["events"]) == (0, 1, [])


async def test_snapshot_with_a_bad_types_filter_is_400(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/projects/p1/snapshot", params={"types": "Bad"})
    assert_error(response, 400, "bad_request", "invalid type pattern")


# --- schema, health, project ids ---------------------------------------------------------


async def test_schema_describes_every_registered_type(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/schema")
    assert response.status_code == 200
    schema = response.json()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert list(schema["events"]) == ["ingest.job.updated"]
    ref = schema["events"]["ingest.job.updated"]["$ref"]
    definition = schema["$defs"][ref.rsplit("/", 1)[1]]
    assert definition["properties"]["progress"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert sorted(definition["required"]) == ["job_id", "progress"]


async def test_healthz_and_readyz_are_ok_when_running(http: httpx.AsyncClient) -> None:
    health = await http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "backend": "memory"})


class UnreachableBackend(MemoryBackend):
    async def ready(self) -> bool:
        return False


@pytest.mark.hub_options(backend=UnreachableBackend())
async def test_readyz_is_503_when_the_backend_is_not_ready(running_hub: RunningHub) -> None:
    async with running_hub.http() as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready"


@pytest.mark.parametrize("project", ["-bad", ".hidden", "p" * 129, "sp%20ace"])
async def test_invalid_project_id_is_400_on_every_project_route(
    http: httpx.AsyncClient, project: str
) -> None:
    base = f"/v1/projects/{project}"
    publish = await http.post(f"{base}/events", json={"type": "a.b", "data": {}})
    assert_error(publish, 400, "bad_request", "invalid project id")
    assert_error(await http.get(f"{base}/events"), 400, "bad_request", "invalid project id")
    assert_error(await http.get(f"{base}/snapshot"), 400, "bad_request", "invalid project id")

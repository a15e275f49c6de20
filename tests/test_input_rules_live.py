"""Issue 10, parts 2, 3 and 7, over real sockets: each reproduction is refused with a 4xx (or
an error frame) naming the field, a control subscriber of another project receives every
event in order throughout, and the hub logs no traceback. Then a property: any publish body
is refused with a clean 4xx, or stored as JSON that msgspec, strict stdlib json and HubClient
all decode to the same value."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from hub.backends.base import PublishRequest
from hub.client import HubClient, UndecodableFrame, decode_frames
from hub.config import Settings
from hub.protocol import EventFrame

from .support import FrameRecorder, RunningHub, run_hub, wait_for

CONTROL = "control"


class Guarded:
    """A live hub, an HTTP client, and a control subscriber of another project."""

    def __init__(self, running: RunningHub, http: httpx.AsyncClient, control: FrameRecorder):
        self.running = running
        self.http = http
        self.control = control
        self.control_seqs: list[int] = []

    async def publish_control(self, n: int = 3) -> None:
        for i in range(n):
            self.control_seqs.append(await self.running.hub.publish(CONTROL, "rt.ctl.tick", i))

    async def post(self, body: bytes, project: str = "p1") -> httpx.Response:
        await self.publish_control()
        response = await self.http.post(f"/v1/projects/{project}/events", content=body)
        await self.publish_control()
        return response

    async def ws(self, project: str = "p1") -> FrameRecorder:
        recorder = FrameRecorder(await connect(self.running.ws_url(project), max_size=None))
        await wait_for(lambda: bool(recorder.ops("welcome")), timeout=5, what="welcome")
        return recorder


@contextlib.asynccontextmanager
async def guarded_hub(
    caplog: pytest.LogCaptureFixture, settings: Settings | None = None
) -> AsyncIterator[Guarded]:
    caplog.set_level(logging.INFO)
    uvicorn_logger = logging.getLogger("uvicorn")
    async with run_hub(settings or Settings(heartbeat_s=5.0), log_level="info") as running:
        uvicorn_logger.addHandler(caplog.handler)
        try:
            async with running.http() as http:
                control = FrameRecorder(await connect(running.ws_url(CONTROL)))
                guarded = Guarded(running, http, control)
                await guarded.publish_control()
                yield guarded
                await guarded.publish_control()
                expected = guarded.control_seqs
                await wait_for(lambda: len(control.seqs) >= len(expected), what="control events")
                assert control.seqs == expected == list(range(1, len(expected) + 1))
                assert control.closed is None
                await control.close()
        finally:
            uvicorn_logger.removeHandler(caplog.handler)
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks[:3]]


@pytest.fixture
async def guarded(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Guarded]:
    async with guarded_hub(caplog) as hub:
        yield hub


def refusal(response: httpx.Response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert error["retryable"] is False
    message: str = error["message"]
    return message


def event_body(data: bytes, event_type: bytes = b"rt.a.b") -> bytes:
    return b'{"type":"%s","data":%s}' % (event_type, data)


# --- part 2: poison events ----------------------------------------------------------------

POISON = [
    (b'"\xff\xfe"', "invalid UTF-8", "$.data"),
    (b'{"a":[1,"\\ud800"]}', "lone UTF-16 surrogate", "$.data.a[1]"),
    (b"1e999999", "not finite", "$.data"),
    (b"1" * 5000, "exact range", "$.data"),
    (b'{"big":9007199254740992}', "exact range", "$.data.big"),
    (b"[" * 1000 + b"]" * 1000, "nested deeper than 64 levels", "$.data" + "[0]" * 64),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels", "$.data" + "[0]" * 64),
]


@pytest.mark.parametrize(
    ("data", "reason", "path"),
    POISON,
    ids=["utf8", "surrogate", "1e999999", "5000 digits", "2**53", "depth 1000", "depth 100k"],
)
async def test_poison_data_is_refused_naming_the_field(
    guarded: Guarded, data: bytes, reason: str, path: str
) -> None:
    subscriber = await guarded.ws()
    message = refusal(await guarded.post(event_body(data)))
    assert reason in message
    assert f"- at `{path}" in message
    # Nothing was stored: the project's subscribers decode everything it holds.
    assert (await guarded.running.hub.backend.position("p1")).head == 0
    good = await guarded.post(event_body(b'{"ok":9007199254740991}'))
    assert good.status_code == 202
    await subscriber.wait_frames(2)
    assert subscriber.ops("event")[0]["data"] == {"ok": 2**53 - 1}
    assert subscriber.closed is None
    await subscriber.close()


async def test_a_batch_with_one_poison_event_is_refused_whole_naming_it(guarded: Guarded) -> None:
    good = event_body(b"1")
    message = refusal(await guarded.post(b"[%s,%s]" % (good, event_body(b"1e999999"))))
    assert "- at `$[1].data`" in message
    assert (await guarded.running.hub.backend.position("p1")).head == 0


async def test_curl_reproduction_raw_bytes(guarded: Guarded) -> None:
    # curl -XPOST localhost:P/v1/projects/p/events \
    #   --data-binary $'{"type":"rt.a.b","data":"\xff\xfe"}'
    message = refusal(await guarded.post(b'{"type":"rt.a.b","data":"\xff\xfe"}', project="p"))
    assert message == "invalid event: invalid UTF-8 at byte 0 of a string - at `$.data`"


# --- part 3: deep nesting in client ops ---------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"op":"ping","id":' + "[" * 2000 + "1" + "]" * 2000 + "}",
        '{"op":"subscribe","id":1,"types":' + "[" * 2000 + '"a.*"' + "]" * 2000 + "}",
        '{"op":"unsubscribe","types":["a.*"],"id":' + '{"a":' * 2000 + "1" + "}" * 2001,
    ],
    ids=["ping id", "subscribe types", "unsubscribe id"],
)
async def test_a_deep_ws_op_gets_an_error_frame_and_the_socket_stays_open(
    caplog: pytest.LogCaptureFixture, frame: str
) -> None:
    settings = Settings(heartbeat_s=5.0, max_inbound_frame=64 * 1024, error_budget=2)
    async with guarded_hub(caplog, settings) as guarded:
        offender = await guarded.ws()
        await guarded.publish_control()
        await offender.ws.send(frame)
        await wait_for(lambda: bool(offender.ops("error")), timeout=5, what="error frame")
        [error] = offender.ops("error")
        assert error["code"] == "bad_request" and "close" not in error
        assert "nested deeper than 64 levels" in error["message"]
        await offender.ws.send('{"op":"ping","id":"still-here"}')
        await wait_for(lambda: bool(offender.ops("pong")), timeout=5, what="pong")
        # The error budget still applies: two more and it is closed with 1008.
        await offender.ws.send(frame)
        await offender.ws.send(frame)
        closed = await offender.wait_closed()
        assert closed.rcvd is not None and closed.rcvd.code == 1008
        await guarded.publish_control()


# --- part 7: sizes bounded where they enter -----------------------------------------------


async def test_a_900_kb_type_is_refused_naming_the_field(guarded: Guarded) -> None:
    event_type = b"rt.a." + b"b" * 900_000
    message = refusal(await guarded.post(event_body(b"1", event_type)))
    assert message == ("type of 900005 characters is over the 128 character limit - at `$.type`")


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        (b'{"type":"rt.a.b","data":1,"key":"%s"}' % (b"k" * 257), 422, "`$.key`"),
        (b'{"type":"rt.a.b","data":1,"id":"%s"}' % (b"i" * 129), 422, "`$.id`"),
        (b'[{"type":"rt.a.b","data":1},{"type":"rt.%s","data":1}]' % (b"x" * 200), 422, "$[1]"),
    ],
    ids=["key", "id", "type in a batch"],
)
async def test_long_names_in_a_publish_are_refused_naming_the_field(
    guarded: Guarded, body: bytes, status: int, named: str
) -> None:
    assert named in refusal(await guarded.post(body), status)


async def test_long_names_in_a_url_are_refused_naming_the_parameter(guarded: Guarded) -> None:
    http = guarded.http
    assert "project" in refusal(await http.get(f"/v1/projects/{'p' * 129}/events"), 400)
    pattern = "a" * 129
    assert "pattern" in refusal(await http.get(f"/v1/projects/p1/events?types={pattern}"), 400)
    async with connect(guarded.running.ws_url("p1", since=0, epoch="e" * 65)) as ws:
        error = json.loads(await ws.recv())
        assert error["close"] == 4400 and "epoch" in error["message"]


async def test_long_values_in_read_queries_are_refused_naming_the_parameter(
    guarded: Guarded,
) -> None:
    http = guarded.http
    assert "since" in refusal(await http.get("/v1/projects/p1/events?since=" + "9" * 5000), 400)
    long_id = {"Last-Event-ID": "e" * 100 + ":1"}
    assert "Last-Event-ID" in refusal(await http.get("/v1/projects/p1/sse", headers=long_id), 400)
    many = ",".join(["a.*"] * 1000)
    assert "too many" in refusal(await http.get(f"/v1/projects/p1/snapshot?types={many}"), 400)


async def aborted_publish(running: RunningHub, sent: int, declared: int) -> None:
    """A publish whose client hangs up after `sent` of `declared` body bytes."""
    _, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(
        b"POST /v1/projects/p1/events HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (declared, b'{"type":"rt.a.b","data":"' + b"x" * sent)
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_an_aborted_publish_body_is_counted_quietly(
    guarded: Guarded, caplog: pytest.LogCaptureFixture
) -> None:
    running = guarded.running
    before = len(caplog.records)
    for _ in range(20):
        await aborted_publish(running, 1000, 100_000)
    await wait_for(lambda: running.hub.stats.aborted_bodies == 20, what="20 aborted bodies")
    metrics = (await guarded.http.get("/metrics")).text
    assert "hub_publish_bodies_aborted_total 20.0" in metrics
    assert (await running.hub.backend.position("p1")).head == 0
    lines = caplog.records[before:]
    assert len(lines) <= 20 and all(r.levelno <= logging.INFO for r in lines), [
        r.getMessage() for r in lines
    ]


# --- HubClient against frames it cannot decode ---------------------------------------------


async def test_hub_client_delivers_the_good_events_around_an_undecodable_one(
    guarded: Guarded,
) -> None:
    running = guarded.running
    client = HubClient(running.url, "p1", backoff_initial=0.01)
    frames: list[object] = []

    async def consume() -> None:
        async for frame in client:
            frames.append(frame)
            if isinstance(frame, EventFrame) and frame.seq == 5:
                return

    consumer = asyncio.create_task(consume())
    await wait_for(lambda: client.state == "open", what="client open")
    # Poison stored before the rules existed (straight into the backend, past the checks).
    raw = [b"1", b'"\xff\xfe"', b"1" * 5000, b"1e999999", b"5"]
    await running.hub.backend.publish(
        "p1", [PublishRequest("rt.a.b", msgspec.Raw(data)) for data in raw]
    )
    await asyncio.wait_for(consumer, 10)
    await client.close()
    assert [type(f).__name__ for f in frames] == [
        "EventFrame",
        "UndecodableFrame",
        "UndecodableFrame",
        "UndecodableFrame",
        "EventFrame",
    ]
    assert [getattr(f, "seq", None) for f in frames] == [1, 2, 3, 4, 5]
    assert client.connects == 1 and client.undecodable == 3


# --- property: anything accepted decodes the same everywhere ------------------------------

LIVE = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

numbers = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,5})?\Z")
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec=None), max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


def as_ascii(value: Any) -> bytes:
    return json.dumps(value).encode()


def as_utf8(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


data_texts = (
    values.map(as_ascii)
    | values.map(as_utf8)
    | numbers.map(str.encode)
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"1" + b"]" * n)
    | st.binary(max_size=20).map(lambda b: b'"' + b.replace(b'"', b"").replace(b"\\", b"") + b'"')
)


@pytest.fixture
async def property_hub(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Guarded]:
    async with guarded_hub(caplog) as hub:
        yield hub


@LIVE
@given(data=data_texts)
async def test_any_body_is_refused_naming_a_field_or_decodes_the_same_everywhere(
    property_hub: Guarded, data: bytes
) -> None:
    running, http = property_hub.running, property_hub.http
    body = event_body(data)
    response = await http.post("/v1/projects/p1/events", content=body)
    if response.status_code != 202:
        assert response.status_code in {400, 413, 422}, response.text
        message = refusal(response, response.status_code)
        try:
            json.loads(body, parse_constant=_refuse)
        except ValueError:
            return  # not JSON: "malformed JSON" is the whole answer
        except RecursionError:
            pass  # JSON, too deep for stdlib json itself
        assert "- at `$" in message, message
        return
    [seq] = response.json()["seqs"]
    [stored] = (await running.hub.backend.read("p1", seq - 1, 1)).events
    by_msgspec = msgspec.json.decode(stored.frame)["data"]
    by_stdlib = json.loads(stored.frame, parse_constant=_refuse)["data"]
    [frame] = decode_frames(stored.frame)
    assert not isinstance(frame, UndecodableFrame), frame
    assert isinstance(frame, EventFrame)
    assert by_msgspec == by_stdlib == frame.data


def _refuse(name: str) -> None:
    raise ValueError(name)


# --- property: any client op over a live socket gets a reply, never a dropped socket ------

json_ids = st.recursive(
    st.integers() | st.floats() | st.text(alphabet=st.characters(codec=None), max_size=6),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


def op_text(op: str, id_text: str, types_depth: int) -> str:
    types = (
        "" if types_depth == 0 else ',"types":' + "[" * types_depth + '"a.*"' + "]" * types_depth
    )
    return '{"op":"%s","id":%s%s}' % (op, id_text, types)  # noqa: UP031


op_texts = st.builds(
    op_text,
    st.sampled_from(["ping", "subscribe", "unsubscribe"]),
    json_ids.map(json.dumps) | st.integers(1, 3000).map(lambda n: "[" * n + "1" + "]" * n),
    st.sampled_from([0, 1, 2, 70, 2500]),
)


@pytest.fixture
async def ws_session(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Guarded]:
    settings = Settings(
        heartbeat_s=5.0, error_budget=1_000_000, client_ops_rate=1e6, client_ops_burst=1_000_000
    )
    async with guarded_hub(caplog, settings) as hub:
        yield hub


@LIVE
@given(text=op_texts)
async def test_any_op_gets_a_reply_and_the_socket_stays_open(
    ws_session: Guarded, text: str
) -> None:
    async with connect(ws_session.running.ws_url("p1"), max_size=None) as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        await ws.send(text)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["op"] in {"pong", "subscribed", "error"}, reply
        if reply["op"] == "error":
            assert reply["code"] in {"bad_request", "malformed_json"} and "close" not in reply
        await ws.send('{"op":"ping","id":"after"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"op": "pong", "id": "after"}

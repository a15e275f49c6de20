"""SSE message mode (`?named=0`, docs/protocol.md "SSE subscription"): events arrive as plain
`message` events with their ids, controls keep their names, resume works as in named mode.
The bare-EventSource check in Chromium is in tests/test_cross_origin_browser.py."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.backends.base import StoredEvent
from hub.fanout.framers import SseFramer
from hub.transports.sse_messages import UnnamedEventsFramer, format_message, sse_framer

from .support import RunningHub
from .test_sse import P, epoch_of, publish, sse


def test_an_unnamed_event_block_has_an_id_and_data_only() -> None:
    event = StoredEvent(5, "a.b", None, 1, b'{"op":"event","seq":5}')
    assert format_message(b"e1", event) == b'id: e1:5\ndata: {"op":"event","seq":5}\n\n'


def parse_block(block: bytes) -> tuple[str, str | None, str]:
    """(event name, id, data) of one SSE block, as the EventSource algorithm reads it."""
    name, event_id, data = "message", None, []
    for line in block.decode().splitlines():
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
    return name, event_id, "\n".join(data)


@given(st.text(alphabet=st.sampled_from('ab{}":, \n\r\t1'), max_size=40))
def test_any_frame_reaches_onmessage_whole(text: str) -> None:
    frame = text.encode()
    block = format_message(b"ep", StoredEvent(9, "a.b", None, 1, frame))
    assert block.endswith(b"\n\n") and b"\n\n" not in block[:-2]
    name, event_id, data = parse_block(block)
    assert name == "message" and event_id == "ep:9"
    # Line breaks inside the frame become "\n", as the browser joins data lines.
    assert data == "\n".join(frame.decode().splitlines())


@pytest.mark.parametrize(
    ("raw", "unnamed"),
    [(None, False), ("", False), ("1", False), ("true", False), ("0", True), ("FALSE", True)],
)
def test_the_named_parameter_picks_the_framer(raw: str | None, unnamed: bool) -> None:
    framer = sse_framer({} if raw is None else {"named": raw})
    assert isinstance(framer, SseFramer)
    assert isinstance(framer, UnnamedEventsFramer) is unnamed


async def test_with_named_0_events_are_plain_messages_and_controls_keep_their_names(
    running_hub: RunningHub,
) -> None:
    await publish(running_hub, 2, type="ingest.job.updated")
    epoch = await epoch_of(running_hub)
    async with sse(running_hub, named="0", since=0, epoch=epoch) as stream:
        await stream.until("replayed", lambda: bool(stream.of("replayed")))
        await publish(running_hub, 1, type="agent.step.updated")
        await stream.until("3 events", lambda: len(stream.of("message")) == 3)
        messages = stream.of("message")
        assert [m.data["seq"] for m in messages] == [1, 2, 3]
        assert [m.data["type"] for m in messages] == ["ingest.job.updated"] * 2 + [
            "agent.step.updated"
        ]
        assert [m.id for m in messages] == [f"{epoch}:{s}" for s in (1, 2, 3)]
        assert {m.event for m in stream.messages} == {"welcome", "replayed", "message"}


async def test_a_named_0_stream_resumes_from_last_event_id(running_hub: RunningHub) -> None:
    await publish(running_hub, 3)
    epoch = await epoch_of(running_hub)
    headers = {"Last-Event-ID": f"{epoch}:1"}
    async with sse(running_hub, named="0", headers=headers) as stream:
        await stream.until("replay", lambda: len(stream.of("message")) == 2)
        assert [m.data["seq"] for m in stream.of("message")] == [2, 3]


async def test_a_gap_in_named_0_mode_sends_a_named_snapshot(running_hub: RunningHub) -> None:
    await publish(running_hub, 2)
    async with sse(running_hub, named="0", since=1, epoch="gone") as stream:
        await stream.until("snapshot", lambda: bool(stream.of("snapshot")))
        assert stream.of("gap")[0].data["reason"] == "epoch"
        assert stream.of("message") == []


async def test_a_bad_named_value_is_refused_with_400(running_hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=running_hub.url, timeout=10.0) as http:
        response = await http.get(f"/v1/projects/{P}/sse", params={"named": "maybe"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request" and "named" in error["message"]

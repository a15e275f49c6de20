"""hub.wire.frames builds bytes a WebSocket client and a JSON parser read back unchanged."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from hub.protocol import encode
from hub.wire.frames import encode_batch, http_refusal, text_frame


def parse_client_side(data: bytes) -> Frame:
    """Read `data` as a client does: an unmasked frame from the server, all of it consumed."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        raise AssertionError("the frame was incomplete")
    assert reader.at_eof()
    return frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_lengths_at_each_header_size_read_back(size: int) -> None:
    payload = b"x" * size
    frame = parse_client_side(text_frame(payload))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=70_000))
def test_any_payload_survives_text_framing(payload: bytes) -> None:
    assert bytes(parse_client_side(text_frame(payload)).data) == payload


TEXT = st.text(st.characters(exclude_categories=("Cs",)))  # JSON cannot carry lone surrogates
INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.dictionaries(TEXT, INT64 | TEXT), min_size=1, max_size=20))
def test_a_batch_is_one_frame_as_is_or_a_json_array(frames: list[dict[str, object]]) -> None:
    batch = json.loads(encode_batch([encode(f) for f in frames]))
    assert batch == (frames[0] if len(frames) == 1 else frames)


def test_http_refusal_is_a_whole_response_with_a_json_body() -> None:
    head, _, body = http_refusal(431, "too many headers").partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert f"Content-Length: {len(body)}" in lines and "Connection: close" in lines
    assert json.loads(body)["error"]["code"] == "too_large"

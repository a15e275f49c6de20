"""Wire protocol v1 as pure functions: frames, client ops, close reasons, the resume decision."""

from __future__ import annotations

import msgspec
import pytest

from hub.protocol import (
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    ErrorFrame,
    EventFrame,
    FrameError,
    GapFrame,
    PingOp,
    PongFrame,
    ReplayedFrame,
    ResumePlan,
    SnapshotFrame,
    SubscribedFrame,
    SubscribeOp,
    UnsubscribeOp,
    WelcomeFrame,
    close_reason,
    decode_client_frame,
    decode_server_frames,
    encode,
    encode_batch,
    is_valid_event_type,
    is_valid_project,
    resume_plan,
)

# --- encoding server frames --------------------------------------------------------------


def test_every_server_frame_encodes_with_its_op_tag() -> None:
    frames = [
        (WelcomeFrame("p1", "e1", 10, 3, 20.0), "welcome"),
        (EventFrame("p1", 4, "ingest.job.updated", 1, {"n": 1}), "event"),
        (ReplayedFrame(2, 10), "replayed"),
        (GapFrame("evicted", 1, 3, 10), "gap"),
        (SnapshotFrame(10, []), "snapshot"),
        (SubscribedFrame(1, ["agent.*"]), "subscribed"),
        (PongFrame(7), "pong"),
        (ErrorFrame(code="bad_request", message="nope", retryable=False), "error"),
    ]
    for frame, op in frames:
        assert msgspec.json.decode(encode(frame))["op"] == op


def test_welcome_frame_matches_the_documented_shape() -> None:
    assert msgspec.json.decode(encode(WelcomeFrame("p1", "3f2a9c", 1042, 43, 20))) == {
        "op": "welcome",
        "project": "p1",
        "epoch": "3f2a9c",
        "head": 1042,
        "oldest": 43,
        "heartbeat": 20,
    }


def test_event_frame_carries_raw_data_verbatim_and_omits_absent_key() -> None:
    raw = b'{"b":2,"a":[1,2]}'
    encoded = encode(EventFrame("p1", 5, "agent.run.created", 1763880000123, msgspec.Raw(raw)))
    assert encoded == (
        b'{"op":"event","project":"p1","seq":5,"type":"agent.run.created",'
        b'"ts":1763880000123,"data":' + raw + b"}"
    )
    keyed = msgspec.json.decode(
        encode(EventFrame("p1", 6, "agent.run.created", 1, msgspec.Raw(b"{}"), "agent.run/r1"))
    )
    assert keyed["key"] == "agent.run/r1"


def test_error_frame_always_carries_retryable_and_omits_absent_id_and_close() -> None:
    assert msgspec.json.decode(
        encode(ErrorFrame(code="bad_request", message="x", retryable=False))
    ) == {
        "op": "error",
        "code": "bad_request",
        "message": "x",
        "retryable": False,
    }
    full = ErrorFrame(code="slow_consumer", message="y", id=3, retryable=True, close=4008)
    assert msgspec.json.decode(encode(full)) == {
        "op": "error",
        "code": "slow_consumer",
        "message": "y",
        "id": 3,
        "retryable": True,
        "close": 4008,
    }


def test_encode_batch_keeps_one_frame_as_is_and_joins_several_into_an_array() -> None:
    one = encode(PongFrame(1))
    two = encode(PongFrame(2))
    assert encode_batch([one]) == one
    assert msgspec.json.decode(encode_batch([one, two])) == [
        {"op": "pong", "id": 1},
        {"op": "pong", "id": 2},
    ]


def test_close_codes_have_the_documented_values() -> None:
    documented = {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "UNSUPPORTED_DATA": 1003,
        "INVALID_PAYLOAD": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "TRY_AGAIN_LATER": 1013,
        "UNAUTHORIZED": 4001,
        "FORBIDDEN": 4003,
        "SLOW_CONSUMER": 4008,
        "RATE_LIMITED": 4029,
        "BAD_REQUEST": 4400,
    }
    assert {code.name: int(code) for code in CloseCode} == documented


# --- project ids and event types ---------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "valid"),
    [
        ("p1", True),
        ("A", True),
        ("acme-prod.eu_1", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("-leading-dash", False),
        (".hidden", False),
        ("has space", False),
        ("slash/inside", False),
        ("ünicode", False),
    ],
)
def test_project_id_validation(project: str, valid: bool) -> None:
    assert is_valid_project(project) is valid


@pytest.mark.parametrize(
    ("event_type", "valid"),
    [
        ("ingest.job.updated", True),
        ("workflow.node_state.updated", True),
        ("a.b", True),
        ("a.b.c.d.e.f", True),
        ("a.b.c.d.e.f.g", False),  # at most six segments
        ("single", False),
        ("Agent.run", False),
        ("agent.9run", False),
        ("agent..run", False),
        ("agent.run.", False),
        ("agent-run.x", False),
        ("", False),
    ],
)
def test_event_type_validation(event_type: str, valid: bool) -> None:
    assert is_valid_event_type(event_type) is valid


# --- client ops --------------------------------------------------------------------------


def test_decode_client_frame_accepts_each_op() -> None:
    assert decode_client_frame('{"op":"subscribe","id":1,"types":["agent.*","*.failed"]}') == (
        SubscribeOp(["agent.*", "*.failed"], 1)
    )
    assert decode_client_frame(b'{"op":"unsubscribe","id":"u2","types":["agent.*"]}') == (
        UnsubscribeOp(["agent.*"], "u2")
    )
    assert decode_client_frame('{"op":"ping","id":7}') == PingOp(7)
    assert decode_client_frame('{"op":"ping"}') == PingOp(None)


def _frame_error(data: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_client_frame(data)
    return info.value


@pytest.mark.parametrize("data", ["{", '{"op":"ping"', "not json", "", b"\xff\xfe"])
def test_malformed_json_is_a_malformed_json_error(data: str | bytes) -> None:
    error = _frame_error(data)
    assert error.code == "malformed_json"
    assert error.message.startswith("malformed JSON")
    assert error.frame_id is None


@pytest.mark.parametrize("data", ["[1,2]", '"ping"', "42", "null", '[{"op":"ping"}]'])
def test_non_object_frame_is_a_bad_request(data: str) -> None:
    error = _frame_error(data)
    assert error.code == "bad_request"
    assert "object" in error.message


def test_unknown_op_message_names_the_op_and_echoes_the_id() -> None:
    error = _frame_error('{"op":"subscrbe","id":3,"types":["a.*"]}')
    assert error.code == "bad_request"
    assert error.message == "unknown op 'subscrbe'"
    assert error.frame_id == 3


def test_unknown_op_name_is_trimmed_in_the_message() -> None:
    error = _frame_error('{"op":"' + "x" * 500 + '"}')
    assert error.message == f"unknown op {'x' * 40!r}"


def test_missing_op_or_non_string_op_is_a_bad_request_with_the_id() -> None:
    missing = _frame_error('{"id":4,"types":[]}')
    assert missing.code == "bad_request"
    assert "op" in missing.message
    assert missing.frame_id == 4
    wrong_type = _frame_error('{"op":5,"id":"x"}')
    assert wrong_type.code == "bad_request"
    assert wrong_type.frame_id == "x"


def test_missing_required_field_names_the_op_and_the_field() -> None:
    error = _frame_error('{"op":"subscribe","id":1}')
    assert error.code == "bad_request"
    assert error.message.startswith("invalid subscribe")
    assert "types" in error.message
    assert error.frame_id == 1


def test_wrong_field_type_names_the_path() -> None:
    error = _frame_error('{"op":"unsubscribe","id":2,"types":"agent.*"}')
    assert error.code == "bad_request"
    assert error.message.startswith("invalid unsubscribe")
    assert "$.types" in error.message
    assert error.frame_id == 2


def test_extra_field_is_refused_with_its_name() -> None:
    error = _frame_error('{"op":"ping","id":7,"extra":true}')
    assert error.code == "bad_request"
    assert "extra" in error.message
    assert error.frame_id == 7


@pytest.mark.parametrize(("raw_id", "expected"), [("7", 7), ('"abc"', "abc"), ("null", None)])
def test_error_echoes_int_string_and_null_ids(raw_id: str, expected: object) -> None:
    error = _frame_error('{"op":"nope","id":' + raw_id + "}")
    assert error.frame_id == expected


def test_unusable_id_is_not_echoed() -> None:
    error = _frame_error('{"op":"nope","id":[1]}')
    assert error.frame_id is None


# --- decoding server frames --------------------------------------------------------------


def test_decode_server_frames_accepts_one_object() -> None:
    frames = decode_server_frames(b'{"op":"pong","id":7}')
    assert frames == [PongFrame(7)]


def test_decode_server_frames_accepts_an_array_in_order() -> None:
    data = (
        b'[{"op":"event","project":"p1","seq":1,"type":"a.b","ts":5,"data":{"x":1}},'
        b'{"op":"event","project":"p1","seq":2,"type":"a.c","ts":6,"key":"k","data":null},'
        b'{"op":"replayed","count":2,"head":2}]'
    )
    frames = decode_server_frames(data)
    assert frames == [
        EventFrame("p1", 1, "a.b", 5, {"x": 1}),
        EventFrame("p1", 2, "a.c", 6, None, "k"),
        ReplayedFrame(2, 2),
    ]


def test_decode_server_frames_round_trips_every_frame_type() -> None:
    frames = [
        WelcomeFrame("p1", "e1", 10, 3, 20.0),
        GapFrame("epoch", 1, 3, 10),
        SnapshotFrame(10, [EventFrame("p1", 9, "a.b", 1, {"v": 1}, "k1")]),
        SubscribedFrame(1, ["agent.*"]),
        ErrorFrame(code="bad_request", message="x", id=1, retryable=False, close=4400),
    ]
    assert decode_server_frames(encode_batch([encode(f) for f in frames])) == frames


def test_decode_server_frames_rejects_an_unknown_op() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_server_frames(b'{"op":"bogus"}')


# --- close reasons -----------------------------------------------------------------------


def test_short_close_reason_is_unchanged() -> None:
    assert close_reason("slow consumer") == "slow consumer"
    exact = "r" * MAX_CLOSE_REASON_BYTES
    assert close_reason(exact) == exact


def test_long_ascii_close_reason_is_cut_at_123_bytes() -> None:
    assert MAX_CLOSE_REASON_BYTES == 123
    assert close_reason("r" * 500) == "r" * 123


@pytest.mark.parametrize(("char", "kept"), [("é", 61), ("€", 41), ("😀", 30)])
def test_close_reason_is_cut_on_a_utf8_boundary(char: str, kept: int) -> None:
    trimmed = close_reason(char * 100)
    assert trimmed == char * kept
    assert len(trimmed.encode()) <= 123


def test_close_reason_keeps_the_whole_prefix_before_a_split_character() -> None:
    message = "a" * 122 + "é" + "tail"  # the 2-byte é straddles byte 123
    assert close_reason(message) == "a" * 122


# --- the resume decision -----------------------------------------------------------------

EPOCH = "e1"


@pytest.mark.parametrize(
    ("case", "since", "epoch", "oldest", "head", "expected"),
    [
        ("live: no since", None, None, 43, 1042, ResumePlan("live", 1042)),
        ("live: no since, stale epoch ignored", None, "old", 43, 1042, ResumePlan("live", 1042)),
        ("replay from 0, all retained", 0, EPOCH, 1, 50, ResumePlan("replay", 0)),
        ("replay from the middle", 500, EPOCH, 43, 1042, ResumePlan("replay", 500)),
        ("replay without an epoch", 500, None, 43, 1042, ResumePlan("replay", 500)),
        ("since == head: nothing to replay", 1042, EPOCH, 43, 1042, ResumePlan("replay", 1042)),
        ("since == oldest - 1: replay all", 42, EPOCH, 43, 1042, ResumePlan("replay", 42)),
        ("since < oldest - 1: evicted", 41, EPOCH, 43, 1042, ResumePlan("gap", 41, "evicted")),
        ("since 0, oldest evicted", 0, EPOCH, 43, 1042, ResumePlan("gap", 0, "evicted")),
        ("epoch mismatch", 500, "other", 43, 1042, ResumePlan("gap", 500, "epoch")),
        ("epoch mismatch beats ahead", 5000, "other", 43, 1042, ResumePlan("gap", 5000, "epoch")),
        ("ahead of head", 1043, EPOCH, 43, 1042, ResumePlan("gap", 1043, "ahead")),
        ("empty project: since 0", 0, EPOCH, 1, 0, ResumePlan("replay", 0)),
        ("empty project: live", None, None, 1, 0, ResumePlan("live", 0)),
        ("empty project: ahead", 5, EPOCH, 1, 0, ResumePlan("gap", 5, "ahead")),
        ("all evicted: since == head", 1042, EPOCH, 1043, 1042, ResumePlan("replay", 1042)),
        ("all evicted: since < head", 1000, EPOCH, 1043, 1042, ResumePlan("gap", 1000, "evicted")),
    ],
)
def test_resume_plan(
    case: str,
    since: int | None,
    epoch: str | None,
    oldest: int,
    head: int,
    expected: ResumePlan,
) -> None:
    assert resume_plan(since, epoch, EPOCH, oldest, head) == expected, case

"""The OpenAI-compatible wire format without I/O (services/openai_stream.py), the model
settings (services/model_settings.py) and the Retry-After reader."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.cli_exit import CliError, ExitStatus
from hub.wire.catalog import EventCatalog
from services.events import register_events
from services.model import ExtractiveModel, Passage, citations_in
from services.model_settings import ModelSettings, add_model_arguments, model_from_args
from services.openai_model import OpenAIChatModel, _retry_after
from services.openai_stream import (
    ChatChunk,
    SseDecoder,
    StreamProtocolError,
    chat_request,
    parse_chunk,
)

STREAM = (
    b": a comment\r\n"
    b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\r\n\r\n'
    b'data: {"choices": [{"index": 0, "delta": {"content": "Bees \\u00e9"}}]}\n\n'
    b"event: message\nid: 7\n"
    b'data: {"choices": [{"index": 0, "delta": {"content": "fly"}, "finish_reason": null}]}\r\r'
    b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)


def decode_all(pieces: list[bytes], max_line_bytes: int = 4096) -> list[str]:
    decoder = SseDecoder(max_line_bytes)
    events = [e for piece in pieces for e in decoder.feed(piece)]
    return events + decoder.close()


def test_the_decoder_reads_every_event_of_a_stream_with_any_line_ending() -> None:
    chunks = [parse_chunk(e) for e in decode_all([STREAM])]
    assert chunks == [
        ChatChunk(),
        ChatChunk(content="Bees é"),
        ChatChunk(content="fly"),
        ChatChunk(finish_reason="stop"),
        ChatChunk(usage=(9, 2)),
        ChatChunk(done=True),
    ]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_the_decoder_gives_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode_all(pieces) == decode_all([STREAM])


def test_multi_line_data_joins_with_newlines_and_a_last_event_without_blank_line_counts() -> None:
    assert decode_all([b"data: a\ndata:b\n\ndata: tail"]) == ["a\nb", "tail"]


@pytest.mark.parametrize("split", [0, 3, 4000, 5000])
def test_a_line_over_the_bound_is_an_error_however_it_arrives(split: int) -> None:
    line = b"data: " + b"x" * 5000
    decoder = SseDecoder(4096)
    with pytest.raises(StreamProtocolError, match="line longer than 4096 bytes"):
        decoder.feed(line[:split])
        decoder.feed(line[split:] + b"\n")


def test_bytes_that_are_not_utf8_are_an_error() -> None:
    with pytest.raises(StreamProtocolError, match="not UTF-8"):
        SseDecoder(4096).feed(b'data: {"x": "\xc3\x28"}\n\n')


@given(st.binary(max_size=300))
def test_any_bytes_either_decode_or_raise_a_protocol_error(data: bytes) -> None:
    try:
        for event in decode_all([data], max_line_bytes=128):
            parse_chunk(event)
    except StreamProtocolError:
        pass


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", "malformed chunk"),
        ('{"choices": [{"delta": {"content": 5}}]}', "malformed chunk"),
        ('{"usage": {"prompt_tokens": -1}}', "malformed chunk"),
        ('{"error": "quota"}', "reported an error: quota"),
        ("not json", "malformed chunk"),
    ],
)
def test_a_bad_chunk_is_an_error_naming_what_is_wrong(data: str, message: str) -> None:
    with pytest.raises(StreamProtocolError, match=message):
        parse_chunk(data)


def test_finish_reasons_other_than_length_end_the_answer_as_stop() -> None:
    for raw, expected in [("stop", "stop"), ("length", "length"), ("content_filter", "stop")]:
        chunk = parse_chunk(json.dumps({"choices": [{"delta": {}, "finish_reason": raw}]}))
        assert chunk.finish_reason == expected
    other_choice = parse_chunk('{"choices": [{"index": 1, "delta": {"content": "no"}}]}')
    assert other_choice.content == ""  # only choice 0 is read


def test_the_request_numbers_the_sources_and_asks_for_citations_and_usage() -> None:
    passages = [Passage(4, "a.md", "Winter", "Leave 20 kg."), Passage(9, "b.md", "", "Swarms.")]
    body = chat_request("m", "How much?", passages, 100)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 100
    user = body["messages"][1]["content"]
    assert "[1] Winter (file a.md, chunk 4)\nLeave 20 kg." in user
    assert "[2] b.md (file b.md, chunk 9)\nSwarms." in user
    assert user.endswith("Question: How much?")
    assert "[1], [2]" in body["messages"][0]["content"]


def test_citations_keep_first_use_order_and_ignore_unknown_numbers() -> None:
    assert citations_in("A [2]. B [1][2]. C [7] [0] [99999].", 3) == [2, 1]


def test_settings_come_from_the_environment_and_never_show_the_key() -> None:
    environ = {
        "HUB_MODEL": "llama",
        "HUB_MODEL_URL": "http://h:8080/v1/",
        "HUB_MODEL_API_KEY": "sk-secret",
        "HUB_MODEL_IDLE_TIMEOUT_S": "2.5",
        "HUB_MODEL_MAX_ATTEMPTS": "5",
    }
    settings = ModelSettings.from_env(environ)
    assert (settings.model, settings.idle_timeout_s, settings.max_attempts) == ("llama", 2.5, 5)
    assert settings.endpoint == "http://h:8080/v1/chat/completions"
    assert ModelSettings(url="http://h:1").endpoint == "http://h:1/v1/chat/completions"
    assert "sk-secret" not in repr(settings) and "api_key=<set>" in repr(settings)
    assert ModelSettings.from_env(environ, model="other").model == "other"
    shown = ModelSettings(url="https://u:pw@h:1/v1").shown_endpoint
    assert shown == "https://h:1/v1/chat/completions"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HUB_MODEL_IDLE_TIMEOUT_S", "nan"),
        ("HUB_MODEL_IDLE_TIMEOUT_S", "inf"),
        ("HUB_MODEL_MAX_ATTEMPTS", "0"),
        ("HUB_MODEL_MAX_LINE_BYTES", "lots"),
        ("HUB_MODEL_URL", "file:///etc/passwd"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        ModelSettings.from_env({name: value})


def test_demo_arguments_select_the_model_and_refuse_a_model_without_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HUB_MODEL", "HUB_MODEL_URL"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert isinstance(model_from_args(parser.parse_args([])), ExtractiveModel)
    assert isinstance(
        model_from_args(parser.parse_args(["--model", "extractive"])), ExtractiveModel
    )
    model = model_from_args(parser.parse_args(["--model", "q", "--model-url", "http://h:1"]))
    assert isinstance(model, OpenAIChatModel) and model.name == "q"
    with pytest.raises(CliError, match="--model q needs --model-url") as refused:
        model_from_args(parser.parse_args(["--model", "q"]))
    assert refused.value.status == ExitStatus.USAGE


def test_retry_after_reads_seconds_and_dates_and_ignores_garbage() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("9" * 40) is None


def test_the_schema_documents_the_token_event_fields() -> None:
    catalog = EventCatalog()
    register_events(catalog)
    defs = catalog.json_schema()["$defs"]
    message = defs["AgentMessageAppended"]["properties"]
    for field in ("finish_reason", "usage", "usage_source", "model", "citations"):
        assert message[field].get("description"), field
    assert "cancelled" in message["finish_reason"]["description"]
    run = defs["AgentRun"]["properties"]
    assert {"model", "usage", "finish_reason", "usage_source"} <= run.keys()
    assert defs["Citation"]["required"] == ["n", "chunk_id", "name"]


@pytest.mark.parametrize("command", [["hub", "demo"], ["services.demo"]])
def test_a_bad_model_setting_is_one_line_and_status_2_from_both_demo_commands(
    command: list[str],
) -> None:
    """`hub demo` and `python -m services.demo` alike: one line naming the variable."""
    module = ["-m", "hub", "demo"] if command[0] == "hub" else ["-m", "services.demo"]
    env = {**os.environ, "HUB_MODEL_IDLE_TIMEOUT_S": "soon"}
    done = subprocess.run(
        [sys.executable, *module, "--port", "0", "--model", "m", "--model-url", "http://h:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == ExitStatus.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert "HUB_MODEL_IDLE_TIMEOUT_S" in done.stderr.strip().splitlines()[-1]

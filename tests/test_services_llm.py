"""The agent on an OpenAI-compatible streaming model server (a loopback one, written in the
tests: tests/test_services_llm_support.py): the token events, and each failure mode's end.

Every test runs the real adapter (httpx, real sockets) inside the real agent service, whose
events are validated against the catalog as the hub would (`RecordingEmitter`). Each test's
teardown scans every event and every log record (DEBUG, all loggers) for the API key.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from services.agent import AgentService
from services.events import AgentRun
from services.model_settings import ModelSettings
from services.openai_model import (
    ModelRejected,
    ModelStreamError,
    ModelTimeout,
    ModelUnavailable,
    OpenAIChatModel,
)
from services.runtime import SAMPLE_DOCS, Services
from services.testing import RecordedEvent, RecordingEmitter

from .support import wait_for
from .test_services_llm_support import ChatServer, Reply, by_question, in_turn

API_KEY = "sk-test-0123456789-SECRET-KEY"
QUESTION = "How much honey does a colony need for winter?"
FAST = {
    "connect_timeout_s": 0.5,
    "first_token_timeout_s": 0.5,
    "idle_timeout_s": 0.5,
    "retry_backoff_s": 0.01,
}


class Rig:
    """The services (sample docs ingested) with the adapter pointed at a `ChatServer`."""

    def __init__(self, emitter: RecordingEmitter, services: Services, server: ChatServer) -> None:
        self.emitter = emitter
        self.services = services
        self.server = server

    @property
    def agent(self) -> AgentService:
        return self.services.agent

    def use(self, **settings: Any) -> OpenAIChatModel:
        values = {"url": self.server.url, "model": "test-model", "api_key": API_KEY, **FAST}
        model = OpenAIChatModel(ModelSettings(**(values | settings)))
        self.agent.model = model
        return model

    async def run(self, question: str = QUESTION) -> AgentRun:
        """Run to its end; returns the final state (the run's exception is kept there)."""
        state = self.agent.new_run("p", question)
        try:
            await self.agent.run("p", state)
        except Exception:
            pass
        return state

    def messages(self, run: AgentRun) -> list[dict[str, Any]]:
        return [e.data for e in self.emitter.of(f"agent.message/{run.run_id}/")]

    def final(self, run: AgentRun) -> RecordedEvent:
        return self.emitter.of(run.key)[-1]


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


@pytest.fixture
async def rig(caplog_debug: pytest.LogCaptureFixture) -> AsyncIterator[Rig]:
    emitter = RecordingEmitter()
    services = Services(emitter_for=lambda project: emitter, min_interval=0)
    await services.ingest.run_folder("p", SAMPLE_DOCS)
    emitter.events.clear()
    async with ChatServer(in_turn(Reply())) as server:
        rig = Rig(emitter, services, server)
        rig.use()
        yield rig
        await services.aclose()
    # The key went to the server, and nowhere else.
    assert all(r.headers.get("authorization") == f"Bearer {API_KEY}" for r in server.requests)
    for event in emitter.events:
        assert API_KEY not in msgspec.json.encode(event).decode(), event
    for record in caplog_debug.records:
        assert API_KEY not in record.getMessage(), record
        assert API_KEY not in str(record.exc_info), record


def error_of(run: AgentRun) -> tuple[str, str]:
    assert run.error is not None
    return run.error.kind, run.error.message


# --- a good answer ---------------------------------------------------------------------


async def test_answer_streams_the_servers_tokens_then_its_finish_reason_and_usage(
    rig: Rig,
) -> None:
    run = await rig.run()
    assert run.status == "completed", run.error
    messages = rig.messages(run)
    tokens = list(Reply().tokens)
    assert [m["delta"] for m in messages[:-1]] == tokens
    assert [m["index"] for m in messages] == list(range(len(tokens) + 1))
    end = messages[-1]
    assert end["done"] is True and end["text"] == "".join(tokens)
    assert (end["finish_reason"], end["usage_source"], end["model"]) == (
        "stop",
        "server",
        "test-model",
    )
    assert end["usage"] == {"prompt_tokens": 42, "completion_tokens": 6}
    # `[1]` in the answer maps back to the first source given to the model.
    request = rig.server.requests[0]
    prompt = request.question
    first = end["citations"][0]
    assert [c["n"] for c in end["citations"]] == [1]
    assert f"[1] {first['title'] or first['name']} (file {first['name']}" in prompt
    # The run carries the model, the finish reason and the totals (plan/summary are local).
    assert (run.model, run.finish_reason, run.usage_source) == ("test-model", "stop", "server")
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (42, 6)
    body = request.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "test-model" and body["max_tokens"] == 2048
    assert "Cite the sources" in body["messages"][0]["content"]
    assert QUESTION in prompt and "20 kg" in prompt  # the retrieved passages are in the prompt


async def test_usage_is_counted_and_says_so_when_the_server_sends_none(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(usage=None))
    run = await rig.run()
    end = rig.messages(run)[-1]
    assert (end["finish_reason"], end["usage_source"]) == ("stop", "counted")
    assert end["usage"]["completion_tokens"] == len(Reply().tokens)  # one delta, one token
    assert end["usage"]["prompt_tokens"] > 100  # the prompt holds the passages
    assert run.status == "completed" and run.usage_source == "counted"


async def test_the_servers_length_finish_ends_the_message_with_length(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(finish_reason="length"))
    run = await rig.run()
    assert run.status == "completed" and run.finish_reason == "length"
    assert rig.messages(run)[-1]["finish_reason"] == "length"


async def test_an_endless_stream_is_cut_at_max_answer_tokens_with_length(rig: Rig) -> None:
    rig.use(max_answer_tokens=50)
    rig.server.choose = in_turn(Reply(endless=True))
    run = await rig.run()
    messages = rig.messages(run)
    assert len(messages) == 51 and messages[-1]["finish_reason"] == "length"
    assert run.status == "completed" and run.finish_reason == "length"
    request = rig.server.requests[0]
    await asyncio.wait_for(request.closed.wait(), 5)  # we hung up: the server stops
    assert request.body["max_tokens"] == 50


# --- retries ---------------------------------------------------------------------------


async def test_500s_are_retried_before_any_token_then_the_answer_streams(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(status=500), Reply(status=502), Reply())
    run = await rig.run()
    assert run.status == "completed", run.error
    assert len(rig.server.requests) == 3
    assert rig.messages(run)[-1]["text"] == "".join(Reply().tokens)


async def test_429_retry_after_is_honoured(rig: Rig) -> None:
    # Backoff alone would wait 0.01 s: only honouring Retry-After makes the gap >= 1 s.
    rig.server.choose = in_turn(Reply(status=429, headers={"Retry-After": "1"}), Reply())
    run = await rig.run()
    assert run.status == "completed", run.error
    first, second = rig.server.requests
    assert second.opened_at - first.opened_at >= 1.0


async def test_5xx_on_every_attempt_fails_the_run_naming_the_status(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(status=503))
    run = await rig.run()
    assert run.status == "failed" and len(rig.server.requests) == 3
    kind, message = error_of(run)
    assert kind == ModelUnavailable.__name__
    assert message.startswith("the model server answered 503 on attempt 3 of 3")
    end = rig.messages(run)[-1]
    assert (end["done"], end["finish_reason"], end["text"]) == (True, "error", "")
    assert rig.final(run).type == "agent.run.failed"


async def test_a_retry_after_beyond_the_bound_fails_at_once(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(status=429, headers={"Retry-After": "3600"}))
    run = await rig.run()
    assert run.status == "failed" and len(rig.server.requests) == 1
    assert error_of(run)[1].startswith("the model server answered 429 on attempt 1 of 3")


async def test_a_401_fails_at_once_and_its_echoed_key_is_redacted(rig: Rig) -> None:
    echo = b'{"error": {"message": "invalid key ' + API_KEY.encode() + b'"}}'
    rig.server.choose = in_turn(Reply(status=401, error_body=echo))
    run = await rig.run()
    kind, message = error_of(run)
    assert kind == ModelRejected.__name__ and len(rig.server.requests) == 1
    assert "answered 401" in message and "invalid key [redacted]" in message


# --- timeouts --------------------------------------------------------------------------


async def test_connect_timeout_fails_the_run() -> None:
    # A listener whose accept queue is full: the kernel drops new SYNs, connect() hangs.
    emitter = RecordingEmitter()
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        fast = FAST | {"first_token_timeout_s": 5.0}
        settings = ModelSettings(url=f"http://127.0.0.1:{port}", model="m", **fast)
        services = Services(emitter_for=lambda project: emitter, min_interval=0)
        services.agent.model = OpenAIChatModel(settings)
        state = services.agent.new_run("p", QUESTION)
        started = time.monotonic()
        with pytest.raises(ModelTimeout):
            await services.agent.run("p", state)
        assert time.monotonic() - started < 5
        assert state.status == "failed"
        assert error_of(state) == (
            "Timeout",
            "no connection to the model server within 0.5 s "
            "(connect timeout, HUB_MODEL_CONNECT_TIMEOUT_S)",
        )
        await services.aclose()
    finally:
        for s in (listener, *fillers):
            s.close()


async def test_a_server_stalling_before_its_headers_is_a_first_token_timeout(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(stall="headers"))
    run = await rig.run()
    assert run.status == "failed"
    assert error_of(run) == (
        "Timeout",
        "no token from the model server within 0.5 s "
        "(first-token timeout, HUB_MODEL_FIRST_TOKEN_TIMEOUT_S)",
    )
    await asyncio.wait_for(rig.server.requests[0].closed.wait(), 5)


async def test_a_server_stalling_before_its_first_token_is_a_first_token_timeout(
    rig: Rig,
) -> None:
    rig.server.choose = in_turn(Reply(stall="first_token"))
    run = await rig.run()
    assert run.status == "failed" and "first-token timeout" in error_of(run)[1]
    assert rig.messages(run)[-1]["finish_reason"] == "error"


async def test_a_server_stalling_mid_answer_is_an_idle_timeout_keeping_the_text(
    rig: Rig,
) -> None:
    rig.server.choose = in_turn(Reply(stall="mid", stall_after=3))
    run = await rig.run()
    assert run.status == "failed"
    assert error_of(run) == (
        "Timeout",
        "the model server sent nothing for 0.5 s mid-answer (idle timeout, "
        "HUB_MODEL_IDLE_TIMEOUT_S)",
    )
    end = rig.messages(run)[-1]
    assert (end["finish_reason"], end["text"]) == ("error", "".join(Reply().tokens[:3]))
    await asyncio.wait_for(rig.server.requests[0].closed.wait(), 5)


# --- broken and hostile streams ----------------------------------------------------------


async def test_a_stream_cut_mid_answer_fails_the_run_keeping_the_text(rig: Rig) -> None:
    rig.server.choose = in_turn(Reply(cut=True, stall_after=2))
    run = await rig.run()
    assert run.status == "failed" and rig.final(run).type == "agent.run.failed"
    kind, message = error_of(run)
    assert kind == ModelStreamError.__name__
    assert message.startswith("the model server's stream broke: RemoteProtocolError")
    end = rig.messages(run)[-1]
    assert (end["done"], end["finish_reason"]) == (True, "error")
    assert end["text"] == "".join(Reply().tokens[:2])
    steps = [e.data for e in rig.emitter.of(f"agent.step/{run.run_id}/")]
    assert (steps[-1]["name"], steps[-1]["status"]) == ("answer", "failed")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'data: {"choices": [{"delta": \n\n', "the model server sent a malformed chunk: "),
        (b'data: {"choices": "no"}\n\n', "the model server sent a malformed chunk: "),
        (b"data: " + b"x" * 10_000_000 + b"\n\n", "the model server sent a line longer than"),
        (
            b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n',
            "the model server sent bytes that are not UTF-8",
        ),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "the model server reported an"),
        (b"data: [DONE]\n\n", "the model server ended the stream without a finish reason"),
    ],
    ids=["malformed-json", "wrong-shape", "10MB-chunk", "not-utf8", "error-chunk", "early-done"],
)
async def test_a_hostile_stream_fails_the_run_with_a_clear_error(
    rig: Rig, raw: bytes, expected: str
) -> None:
    rig.server.choose = in_turn(Reply(raw_after_tokens=raw, stall_after=2))
    run = await rig.run()
    assert run.status == "failed"
    kind, message = error_of(run)
    assert kind == ModelStreamError.__name__ and message.startswith(expected), message
    end = rig.messages(run)[-1]
    assert (end["finish_reason"], end["text"]) == ("error", "".join(Reply().tokens[:2]))
    # We hung up on it rather than reading on.
    await asyncio.wait_for(rig.server.requests[0].closed.wait(), 5)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(content_type="application/json"),
            "the model server answered 'application/json', not text/event-stream",
        ),
        (
            Reply(content_encoding="gzip"),
            "the model server compressed its stream (gzip); it must not",
        ),
    ],
    ids=["not-a-stream", "compressed"],
)
async def test_an_answer_that_is_not_a_plain_event_stream_fails_the_run(
    rig: Rig, reply: Reply, expected: str
) -> None:
    rig.server.choose = in_turn(reply)
    run = await rig.run()
    assert run.status == "failed" and error_of(run) == (ModelStreamError.__name__, expected)
    await asyncio.wait_for(rig.server.requests[0].closed.wait(), 5)


async def test_a_10mb_chunk_is_refused_holding_at_most_about_one_line_bound(rig: Rig) -> None:
    def ten_megabytes() -> Iterator[bytes]:
        yield b"data: "
        for _ in range(160):
            yield b"x" * 65_536  # sent piece by piece: the server holds none of it

    rig.server.choose = in_turn(Reply(raw_pieces=ten_megabytes, stall_after=2))
    tracemalloc.start()
    try:
        run = await rig.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error_of(run) == (
        ModelStreamError.__name__,
        "the model server sent a line longer than 1048576 bytes",
    )
    print(f"peak traced memory while refusing a 10 MB chunk: {peak / 2**20:.2f} MiB")
    assert peak < 4 * 2**20  # the 1 MiB line bound, not the 10 MB


async def test_a_stream_over_max_response_bytes_fails_the_run(rig: Rig) -> None:
    rig.use(max_response_bytes=64 * 1024)
    # Chunks without content (no token, no progress) forever: only the byte bound ends it.
    keepalive = b'data: {"choices": [{"delta": {}}]}\n\n' * 100_000
    rig.server.choose = in_turn(Reply(raw_after_tokens=keepalive, stall_after=1))
    run = await rig.run()
    assert error_of(run) == (
        ModelStreamError.__name__,
        "the model server sent more than 65536 bytes (HUB_MODEL_MAX_RESPONSE_BYTES)",
    )


async def test_an_unreachable_server_fails_the_run_at_once(rig: Rig) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connection refused
        rig.use(url=f"http://127.0.0.1:{port}")
        run = await rig.run()
    kind, message = error_of(run)
    assert kind == ModelUnavailable.__name__ and message.startswith(
        "cannot reach the model server: ConnectError"
    )


# --- cancel ------------------------------------------------------------------------------


async def test_cancelling_a_run_closes_the_upstream_stream_at_once(rig: Rig) -> None:
    rig.server.choose = by_question({"bees": Reply(endless=True, token_interval=0.005)})
    run = rig.agent.start("p", "Tell me about bees, forever")
    await wait_for(
        lambda: len(rig.messages(run)) >= 5, timeout=10, what="tokens streaming from the server"
    )
    request = rig.server.requests[0]
    cancelled_at = time.monotonic()
    assert rig.agent.cancel("p", run.run_id) is True
    await asyncio.wait_for(request.closed.wait(), 5)
    assert request.closed_at is not None and request.closed_at - cancelled_at < 0.1
    await wait_for(
        lambda: rig.final(run).type == "agent.run.cancelled", what="the run's cancelled event"
    )
    end = rig.messages(run)[-1]
    assert (end["done"], end["finish_reason"]) == (True, "cancelled")
    assert end["text"] == "".join(m["delta"] for m in rig.messages(run)[:-1])
    assert run.finish_reason == "cancelled"

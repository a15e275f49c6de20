"""The OpenAI-compatible streaming chat wire format, without I/O: the request body, the
server-sent-events decoder and the chunk parser.

`POST /v1/chat/completions` with `"stream": true` answers `text/event-stream`: events of
`data: {json}` lines separated by blank lines, ending with `data: [DONE]`. The JSON chunks
are a role chunk (`choices[0].delta.role`), content deltas (`choices[0].delta.content`), a
chunk with `choices[0].finish_reason`, and (with `stream_options.include_usage`) a last chunk
whose `choices` is empty and whose `usage` counts the prompt and completion tokens.

Everything here is bounded: a line longer than `max_line_bytes` and bytes that are not UTF-8
are `StreamProtocolError`s, so a hostile server cannot make the decoder buffer without end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from services.events import FinishReason
from services.model import Passage

__all__ = [
    "ChatChunk",
    "SseDecoder",
    "StreamProtocolError",
    "chat_request",
    "parse_chunk",
    "prompt_messages",
]

Count = Annotated[int, msgspec.Meta(ge=0)]


class StreamProtocolError(ValueError):
    """The server's stream does not follow the wire format (or breaks a bound)."""


# --- request ---------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You answer questions about a project's documents. Use only the numbered sources "
    "given with the question. Cite the sources you use as [1], [2], ... right after the "
    "sentence that uses them. If the sources do not answer the question, say so."
)


def prompt_messages(question: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
    """The chat messages of an answer: the sources, numbered from 1, then the question."""
    if passages:
        sources = "\n\n".join(
            f"[{n}] {p.title or p.name} (file {p.name}, chunk {p.chunk_id})\n{p.text}"
            for n, p in enumerate(passages, start=1)
        )
    else:
        sources = "(no source matched the question)"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"},
    ]


def chat_request(
    model: str, question: str, passages: Sequence[Passage], max_tokens: int
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": prompt_messages(question, passages),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
    }


# --- server-sent events ----------------------------------------------------------------


class SseDecoder:
    """Bytes in, the `data` of each complete event out (`feed` returns them in order).

    Lines end with LF, CRLF or CR; `data:` lines of one event are joined with LF; comments
    (`:`) and other fields (`event`, `id`, `retry`) are ignored, as the SSE spec says a
    client without a use for them may.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        events: list[str] = []
        start = 0
        while True:
            end = _line_end(self._buffer, start)
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            step = 2 if self._buffer[end : end + 2] == b"\r\n" else 1
            start = end + step
            self._line(line, events)
        del self._buffer[:start]
        if len(self._buffer) > self.max_line_bytes:
            raise StreamProtocolError(
                f"the model server sent a line longer than {self.max_line_bytes} bytes"
            )
        return events

    def _line(self, raw: bytes, events: list[str]) -> None:
        if len(raw) > self.max_line_bytes:
            raise StreamProtocolError(
                f"the model server sent a line longer than {self.max_line_bytes} bytes"
            )
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamProtocolError(
                f"the model server sent bytes that are not UTF-8 (at byte {exc.start} of a line)"
            ) from None
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        """End of stream: an event not followed by a blank line still counts."""
        events: list[str] = []
        if self._buffer:
            self._line(bytes(self._buffer).rstrip(b"\r"), events)
            self._buffer.clear()
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events


def _line_end(buffer: bytearray, start: int) -> int:
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
    if cr >= 0 and cr + 1 == len(buffer):
        return -1  # a CR at the very end: wait, an LF may follow in the next read
    return cr if cr >= 0 else lf


# --- chunks ----------------------------------------------------------------------------


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _UsageIn(msgspec.Struct):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0


class _ErrorIn(msgspec.Struct):
    message: str = ""


class _ChunkIn(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _UsageIn | None = None
    error: _ErrorIn | str | None = None


class ChatChunk(msgspec.Struct, frozen=True):
    """What one `data:` payload says: text to append, how the answer ended, the usage."""

    content: str = ""
    finish_reason: FinishReason | None = None
    usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens)
    done: bool = False  # `[DONE]`


_decoder = msgspec.json.Decoder(_ChunkIn)
DONE = ChatChunk(done=True)


def parse_chunk(data: str) -> ChatChunk:
    """One event's data: `[DONE]` or a JSON chunk; anything else is a StreamProtocolError.

    Only choice 0 is read (the request asks for one). A finish reason other than `length`
    (`stop`, `content_filter`, `tool_calls`...) ends the answer as `stop`.
    """
    if data.strip() == "[DONE]":
        return DONE
    try:
        chunk = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise StreamProtocolError(f"the model server sent a malformed chunk: {exc}") from None
    if chunk.error is not None:
        message = chunk.error if isinstance(chunk.error, str) else chunk.error.message
        raise StreamProtocolError(f"the model server reported an error: {message[:500]}")
    content = ""
    finish: FinishReason | None = None
    for choice in chunk.choices:
        if choice.index != 0:
            continue
        content = choice.delta.content or ""
        if choice.finish_reason is not None:
            finish = "length" if choice.finish_reason == "length" else "stop"
    usage = None
    if chunk.usage is not None:
        usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return ChatChunk(content, finish, usage)

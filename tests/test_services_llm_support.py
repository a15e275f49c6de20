"""A loopback OpenAI-compatible streaming chat server for the tests, on raw asyncio.

It speaks the documented wire format of `POST /v1/chat/completions` with `stream: true`:
HTTP/1.1 chunked `text/event-stream`, a role chunk, one chunk per content token, a chunk with
`finish_reason`, a usage chunk with empty `choices`, then `data: [DONE]`. A `Reply` says how
to misbehave: answer 429/500, stall (before headers, before the first token, mid-stream), cut
the connection, send raw bytes (malformed JSON, a huge line, non-UTF-8), or never end.

Each request is recorded with its headers, JSON body, and when the client closed the
connection (`closed_at`, time.monotonic(), observed by a read that returns EOF): that is how
a test measures that cancelling a run closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Stall = Literal["headers", "first_token", "mid"]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error_body: bytes = b'{"error": {"message": "try later"}}'
    tokens: Sequence[str] = ("The ", "hive ", "is ", "strong ", "[1]", ".")
    finish_reason: str | None = "stop"
    usage: tuple[int, int] | None = (42, 6)  # (prompt_tokens, completion_tokens)
    done: bool = True
    stall: Stall | None = None
    stall_after: int = 2  # tokens sent before a "mid" stall or a cut
    cut: bool = False  # close the connection after `stall_after` tokens, no terminating chunk
    endless: bool = False  # tokens without end (cycling through `tokens`)
    token_interval: float = 0.0  # seconds between tokens: a model generating at a pace
    raw_after_tokens: bytes | None = None  # raw SSE bytes sent after `stall_after` tokens
    raw_pieces: Callable[[], Iterator[bytes]] | None = None  # like raw_after_tokens, lazily
    content_type: str = "text/event-stream; charset=utf-8"
    content_encoding: str | None = None  # a header only: the body is never compressed


@dataclass
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]
    opened_at: float
    closed_at: float | None = None
    tokens_sent: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def question(self) -> str:
        return str(self.body["messages"][-1]["content"])


class ChatServer:
    """`choose(request body) -> Reply` decides each answer."""

    def __init__(self, choose: Callable[[dict[str, Any]], Reply]) -> None:
        self.choose = choose
        self.requests: list[Recorded] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> ChatServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        request = Recorded(headers, body, time.monotonic())
        self.requests.append(request)
        watcher = asyncio.create_task(self._watch_close(reader, request))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        reply = self.choose(body)

        if reply.stall == "headers":
            await request.closed.wait()
            return
        if reply.status != 200:
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            head = (
                f"HTTP/1.1 {reply.status} Error\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(reply.error_body)}\r\n{extra}Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + reply.error_body)
            await writer.drain()
            return
        encoding = (
            f"Content-Encoding: {reply.content_encoding}\r\n" if reply.content_encoding else ""
        )
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {reply.content_type}\r\n{encoding}"
            "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode())
        model = body.get("model", "")
        await self._event(writer, _chunk(model, {"role": "assistant", "content": ""}, None))
        if reply.stall == "first_token":
            await request.closed.wait()
            return
        tokens = itertools.cycle(reply.tokens) if reply.endless else iter(reply.tokens)
        for i, token in enumerate(tokens):
            if i == reply.stall_after:
                if reply.stall == "mid":
                    await request.closed.wait()
                    return
                if reply.cut:
                    writer.transport.abort()  # no terminating chunk: the stream is cut
                    return
                if reply.raw_after_tokens is not None:
                    await self._send(writer, reply.raw_after_tokens)
                    await request.closed.wait()
                    return
                if reply.raw_pieces is not None:
                    for piece in reply.raw_pieces():
                        await self._send(writer, piece)
                    await request.closed.wait()
                    return
            if reply.token_interval:
                await asyncio.sleep(reply.token_interval)  # the model's pace, not a test wait
            await self._event(writer, _chunk(model, {"content": token}, None))
            request.tokens_sent += 1
            if request.closed.is_set():
                return
        if reply.finish_reason is not None:
            await self._event(writer, _chunk(model, {}, reply.finish_reason))
        if reply.usage is not None:
            prompt, completion = reply.usage
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            await self._event(writer, {"id": "chatcmpl-t", "choices": [], "usage": usage})
        if reply.done:
            await self._send(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _event(self, writer: asyncio.StreamWriter, chunk: dict[str, Any]) -> None:
        await self._send(writer, b"data: " + json.dumps(chunk).encode() + b"\n\n")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()

    @staticmethod
    async def _watch_close(reader: asyncio.StreamReader, request: Recorded) -> None:
        # The client sends nothing after its request: a read returns only at EOF (or reset).
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        request.closed_at = time.monotonic()
        request.closed.set()


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-t",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def by_question(
    replies: dict[str, Reply], default: Reply | None = None
) -> Callable[[dict[str, Any]], Reply]:
    """Choose the reply whose marker appears in the question (the last user message)."""

    def choose(body: dict[str, Any]) -> Reply:
        question = str(body["messages"][-1]["content"]).rsplit("Question:", 1)[-1]
        for marker, reply in replies.items():
            if marker in question:
                return reply
        return default or Reply()

    return choose


def in_turn(*replies: Reply) -> Callable[[dict[str, Any]], Reply]:
    """The replies in order, one per request; the last one repeats."""
    queue = list(replies)

    def choose(body: dict[str, Any]) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return choose

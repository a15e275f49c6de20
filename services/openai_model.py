"""The agent's model on an OpenAI-compatible server: `POST /v1/chat/completions`, streamed.

One adapter reaches OpenAI, vLLM, llama.cpp's server, Ollama, LM Studio and LiteLLM. The
answer is the server's; planning and the summary notes stay local (the `ExtractiveModel`'s):
one model call per run. What a user relies on:

- cancelling the run closes the HTTP response at once, so the server stops generating;
- a connect, first-token or idle timeout fails the run with a `Timeout` error naming it;
- 429 and 5xx answers are retried (`Retry-After` honoured, bounded attempts) before any token
  streamed; after that, or once tokens flowed, the run fails;
- a stream cut mid-answer, a malformed chunk, a line over `max_line_bytes`, bytes that are not
  UTF-8 or a stream over `max_response_bytes` fail it (`ModelStreamError`), keeping the text
  received; more than `max_answer_tokens` deltas ends the answer with `length`;
- the API key is sent in the Authorization header only: no error message, event or log line
  carries it (error bodies echoing it are redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, Sequence

import httpx

from services.events import Usage
from services.model import ExtractiveModel, Generation, Passage, Task
from services.model_settings import ModelSettings
from services.openai_stream import SseDecoder, StreamProtocolError, chat_request, parse_chunk

__all__ = [
    "ModelError",
    "ModelRejected",
    "ModelStreamError",
    "ModelTimeout",
    "ModelUnavailable",
    "OpenAIChatModel",
]

log = logging.getLogger(__name__)


class ModelError(Exception):
    """The model server could not give an answer; the message says why, without secrets."""


class ModelTimeout(ModelError, TimeoutError):
    """Connect, first-token, idle or total timeout (the run's error kind is `Timeout`)."""


class ModelUnavailable(ModelError):
    """Unreachable, or 429/5xx on every attempt."""


class ModelRejected(ModelError):
    """A 4xx other than 429: the request itself is wrong (model name, key...)."""


class ModelStreamError(ModelError):
    """The stream broke: cut, malformed, over a bound."""


class OpenAIChatModel:
    """`Model` on an OpenAI-compatible streaming chat server (module doc)."""

    def __init__(self, settings: ModelSettings, *, rng: random.Random | None = None) -> None:
        if not settings.url or not settings.model:
            raise ValueError("an OpenAI-compatible model needs a URL and a model name")
        self.settings = settings
        self.name = settings.model
        self.local = ExtractiveModel()  # plans the searches and writes the summary notes
        self._rng = rng or random.Random()

    def plan(self, question: str) -> list[str]:
        return self.local.plan(question)

    def count_tokens(self, text: str) -> int:
        # Counted usage when the server sends none: about 4 characters a token (English).
        return max(1, round(len(text) / 4)) if text else 0

    def generate(self, task: Task, question: str, passages: Sequence[Passage]) -> Generation:
        if task == "summarise":
            notes = self.local.generate(task, question, passages)
            notes.usage = Usage()  # local notes: no model tokens spent
            return notes
        generation = Generation()
        generation.deltas = self._answer(generation, question, passages)
        return generation

    async def _answer(
        self, generation: Generation, question: str, passages: Sequence[Passage]
    ) -> AsyncGenerator[str, None]:
        s = self.settings
        body = chat_request(s.model, question, passages, s.max_answer_tokens)
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        timeout = httpx.Timeout(None, connect=s.connect_timeout_s, write=s.connect_timeout_s)
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + s.total_timeout_s
        # One client per answer: closing it closes the one connection, nothing pooled lingers.
        # (The environment's proxy and CA settings apply, as for any httpx client.)
        async with httpx.AsyncClient(timeout=timeout) as client:
            streamed = 0
            try:
                response, deadline = await self._open(client, body, headers, total_deadline)
                try:
                    reader = self._read(response, generation, deadline, total_deadline)
                    async with contextlib.aclosing(reader) as deltas:
                        async for delta in deltas:
                            streamed += 1
                            yield delta
                finally:
                    # Cancelled or abandoned: closing the response closes the connection,
                    # which is how the server learns to stop generating.
                    await response.aclose()
            finally:
                if generation.usage is None:  # no usage chunk: count (a delta ~ a token)
                    prompt = "\n".join(m["content"] for m in body["messages"])
                    generation.usage = Usage(
                        prompt_tokens=self.count_tokens(prompt), completion_tokens=streamed
                    )

    async def _open(
        self,
        client: httpx.AsyncClient,
        body: object,
        headers: dict[str, str],
        total_deadline: float,
    ) -> tuple[httpx.Response, float]:
        """Send the request until a 200 answers; retry 429/5xx (nothing streamed yet).
        Returns the response and the first token's deadline."""
        s = self.settings
        loop = asyncio.get_running_loop()
        for attempt in range(1, s.max_attempts + 1):
            request = client.build_request("POST", s.endpoint, json=body, headers=headers)
            deadline = min(loop.time() + s.first_token_timeout_s, total_deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    response = await client.send(request, stream=True)
            except TimeoutError:
                raise self._timeout(deadline, total_deadline, "first token") from None
            except httpx.ConnectTimeout:
                raise ModelTimeout(
                    f"no connection to the model server within {s.connect_timeout_s:g} s "
                    "(connect timeout, HUB_MODEL_CONNECT_TIMEOUT_S)"
                ) from None
            except httpx.TransportError as exc:
                raise ModelUnavailable(
                    self._redact(f"cannot reach the model server: {_describe(exc)}")
                ) from None
            if response.status_code == 200:
                return response, deadline
            detail = await self._error_detail(response)
            status = response.status_code
            if status != 429 and status < 500:
                raise ModelRejected(f"the model server answered {status}: {detail}")
            wait = self._retry_wait(response, attempt)
            if attempt == s.max_attempts or wait is None or loop.time() + wait > total_deadline:
                raise ModelUnavailable(
                    f"the model server answered {status} on attempt {attempt} of "
                    f"{s.max_attempts}: {detail}"
                )
            log.warning(
                "model server answered %d; retry %d of %d in %.2f s",
                status,
                attempt + 1,
                s.max_attempts,
                wait,
            )
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _read(
        self,
        response: httpx.Response,
        generation: Generation,
        deadline: float,
        total_deadline: float,
    ) -> AsyncGenerator[str, None]:
        s = self.settings
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise ModelStreamError(
                f"the model server compressed its stream ({encoding[:40]}); it must not"
            )
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise ModelStreamError(
                f"the model server answered {content_type[:80]!r}, not text/event-stream"
            )
        loop = asyncio.get_running_loop()
        decoder = SseDecoder(s.max_line_bytes)
        raw = response.aiter_raw()
        received = tokens = chars = 0
        finished = False
        phase = "first token"
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await anext(raw, b"")
                except TimeoutError:
                    raise self._timeout(deadline, total_deadline, phase) from None
                except httpx.TransportError as exc:
                    raise ModelStreamError(
                        self._redact(f"the model server's stream broke: {_describe(exc)}")
                    ) from None
                received += len(data)
                if received > s.max_response_bytes:
                    raise ModelStreamError(
                        f"the model server sent more than {s.max_response_bytes} bytes "
                        "(HUB_MODEL_MAX_RESPONSE_BYTES)"
                    )
                try:
                    events = decoder.feed(data) if data else decoder.close()
                    chunks = [parse_chunk(e) for e in events]
                except StreamProtocolError as exc:
                    raise ModelStreamError(self._redact(str(exc))) from None
                for chunk in chunks:
                    if chunk.done:
                        if not finished:
                            raise ModelStreamError(
                                "the model server ended the stream without a finish reason"
                            )
                        return
                    if chunk.usage is not None:
                        generation.usage = Usage(
                            prompt_tokens=chunk.usage[0], completion_tokens=chunk.usage[1]
                        )
                        generation.usage_source = "server"
                    if chunk.content and not finished:
                        tokens += 1
                        chars += len(chunk.content)
                        if tokens > s.max_answer_tokens or chars > s.max_answer_chars:
                            generation.finish_reason = "length"
                            return  # the caller closes the stream: the server stops
                        yield chunk.content
                        phase = "idle"
                    if chunk.finish_reason is not None:
                        finished = True
                        generation.finish_reason = chunk.finish_reason
                if phase == "idle":
                    deadline = min(loop.time() + s.idle_timeout_s, total_deadline)
                if not data:
                    if finished:
                        return  # no `[DONE]`, but the answer was complete
                    raise ModelStreamError(
                        "the model server closed the stream before the answer finished"
                    )
        finally:
            await raw.aclose()  # type: ignore[attr-defined]  # httpx's is an async generator

    def _timeout(self, deadline: float, total_deadline: float, phase: str) -> ModelTimeout:
        s = self.settings
        if deadline >= total_deadline:
            return ModelTimeout(
                f"the answer took longer than {s.total_timeout_s:g} s "
                "(total timeout, HUB_MODEL_TOTAL_TIMEOUT_S)"
            )
        if phase == "first token":
            return ModelTimeout(
                f"no token from the model server within {s.first_token_timeout_s:g} s "
                "(first-token timeout, HUB_MODEL_FIRST_TOKEN_TIMEOUT_S)"
            )
        return ModelTimeout(
            f"the model server sent nothing for {s.idle_timeout_s:g} s mid-answer "
            "(idle timeout, HUB_MODEL_IDLE_TIMEOUT_S)"
        )

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds before the next attempt: Retry-After if given, else jittered backoff;
        None when the server asks for longer than `max_retry_wait_s`."""
        s = self.settings
        after = _retry_after(response.headers.get("retry-after"))
        if after is None:
            after = s.retry_backoff_s * 2 ** (attempt - 1) * (0.5 + self._rng.random() / 2)
        return after if after <= s.max_retry_wait_s else None

    async def _error_detail(self, response: httpx.Response) -> str:
        """A short, key-free excerpt of an error answer's body (read within bounds)."""
        s = self.settings
        body = bytearray()
        try:
            async with asyncio.timeout(s.idle_timeout_s):
                async for data in response.aiter_raw():
                    body += data
                    if len(body) > s.max_error_body_bytes:
                        break
        except (TimeoutError, httpx.TransportError):
            pass
        finally:
            await response.aclose()
        text = bytes(body[: s.max_error_body_bytes]).decode("utf-8", "replace")
        text = " ".join(text.split())[:300] or response.reason_phrase or "(no body)"
        return self._redact(text)

    def _redact(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "[redacted]") if key else text


def _retry_after(value: str | None) -> float | None:
    """`Retry-After`: delay-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and len(value) <= 9:
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__

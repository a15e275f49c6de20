"""The agent service: answers a question over a project's corpus, step by visible step.

A run plans, searches the full-text index, reads the best chunks, summarises them, then
streams its answer as `agent.message.appended` deltas. Each step is an `agent.step.updated`
entity (running, then succeeded/failed/cancelled); the run is tracked as `agent.run.*`.

The answer's last append (`done`) always goes out, however the answer ends: with the model's
finish reason (`stop`, `length`), `cancelled` or `error` (the text received so far is kept),
the usage (the model server's report, else counted) and the sources the text cites.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from services.admission import Slots
from services.emitters import Emitter
from services.events import (
    AgentMessageAppended,
    AgentRun,
    AgentStep,
    Citation,
    FinishReason,
    Usage,
)
from services.instrument import DEFAULT_MIN_INTERVAL, Tracker, error_info, now_ms, track
from services.limits import ServiceLimits
from services.model import ExtractiveModel, Generation, Model, Passage, citations_in
from services.store import SearchHit, Store
from services.tasks import TaskTable

__all__ = ["AgentService", "excerpt"]

MESSAGE_ID = "answer"


def excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Steps:
    """Emits one `agent.step.updated` entity per step of a run."""

    def __init__(
        self,
        emitter: Emitter,
        run: Tracker[AgentRun],
        on_progress: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.emitter = emitter
        self.run = run
        self.on_progress = on_progress
        self.count = 0
        self.planned = 0  # for progress: steps expected in total

    @contextlib.asynccontextmanager
    async def step(self, name: str, tool: str | None, input_text: str) -> AsyncIterator[AgentStep]:
        step = AgentStep(
            run_id=self.run.state.run_id,
            index=self.count,
            name=name,
            tool=tool,
            status="running",
            input_excerpt=excerpt(input_text),
        )
        self.count += 1
        started = time.monotonic()
        await self._emit(step)
        try:
            yield step  # the body sets step.output_excerpt
        except BaseException as exc:
            step.status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
            step.error = error_info(exc)
            step.duration_ms = int((time.monotonic() - started) * 1000)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._emit(step))
            raise
        step.status = "succeeded"
        step.duration_ms = int((time.monotonic() - started) * 1000)
        await self._emit(step)
        await self.run.update(steps=self.count, progress=self.count / max(self.planned, 1))
        if self.on_progress is not None:
            await self.on_progress(self.run.state.progress)

    async def _emit(self, step: AgentStep) -> None:
        await self.emitter.emit("agent.step.updated", step, key=step.key)


class AgentService:
    def __init__(
        self,
        store: Store,
        emitter_for: Callable[[str], Emitter],
        model: Model | None = None,
        *,
        top_k: int = 3,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        agent_name: str = "researcher",
        limits: ServiceLimits | None = None,
    ) -> None:
        self.limits = limits = limits or ServiceLimits()
        self.admission = Slots(
            "agent runs", limits.max_agent_runs_per_project, limits.max_agent_runs
        )
        self.store = store
        self.emitter_for = emitter_for
        self.model: Model = model or ExtractiveModel()
        self.top_k = top_k
        self.min_interval = min_interval
        self.agent_name = agent_name
        self.runs: TaskTable[AgentRun] = TaskTable()
        self.answers: dict[str, str] = {}  # run id -> answer so far (inspection API)

    def new_run(
        self, project: str, question: str, *, run_id: str | None = None, agent: str | None = None
    ) -> AgentRun:
        question = question.strip()
        if not question:
            raise ValueError("question must not be empty")
        if len(question) > self.limits.max_string_chars:
            raise ValueError(f"question is longer than {self.limits.max_string_chars} characters")
        if agent is not None and len(agent) > self.limits.max_name_chars:
            raise ValueError(f"agent is longer than {self.limits.max_name_chars} characters")
        state = AgentRun(
            run_id=run_id or uuid.uuid4().hex[:12],
            agent=agent or self.agent_name,
            input=question,
            model=self.model.name,
        )
        state.timings.created_ms = now_ms()  # the 202 answer shows what `created` will carry
        self.runs.add(state.run_id, project, state)
        self.runs.prune(self.answers)
        return state

    def start(
        self, project: str, question: str, *, run_id: str | None = None, agent: str | None = None
    ) -> AgentRun:
        permit = self.admission.take(project)  # 429 beyond: before anything is emitted
        try:
            state = self.new_run(project, question, run_id=run_id, agent=agent)
        except BaseException:
            permit.release()
            raise
        self.runs.start(state.run_id, self.run(project, state), permits=[permit])
        return state

    def cancel(self, project: str, run_id: str) -> bool | None:
        return self.runs.cancel(project, run_id)

    async def ask(self, project: str, question: str, **kwargs: Any) -> tuple[AgentRun, str]:
        """Run to the end here; returns the final run state and the answer."""
        state = self.new_run(project, question, **kwargs)
        await self.run(project, state)
        return state, self.answers[state.run_id]

    async def run(
        self,
        project: str,
        state: AgentRun,
        on_progress: Callable[[float], Awaitable[None]] | None = None,
    ) -> AgentRun:
        """Run to the end; `on_progress` hears the run's progress after each step."""
        emitter = self.emitter_for(project)
        model = self.model
        question = state.input
        async with track(emitter, state, min_interval=self.min_interval) as run:
            steps = _Steps(emitter, run, on_progress)
            steps.planned = 4 + self.top_k  # plan, search, reads, summarise, answer

            async with steps.step("plan", None, question) as step:
                queries = model.plan(question)
                step.output_excerpt = excerpt("; ".join(queries) or "(no search terms)")

            async with steps.step("search", "full_text_search", " | ".join(queries)) as step:
                hits = await self._search(project, queries)
                step.output_excerpt = excerpt(
                    "; ".join(f"#{h.chunk_id} {h.title}: {h.snippet}" for h in hits) or "no matches"
                )
            steps.planned = 4 + len(hits)

            passages: list[Passage] = []
            for hit in hits:
                async with steps.step("read", "read_chunk", f"chunk {hit.chunk_id}") as step:
                    chunk = await self.store.read_chunk(project, hit.chunk_id)
                    if chunk is not None:
                        passages.append(Passage(chunk.id, chunk.name, chunk.title, chunk.text))
                    step.output_excerpt = excerpt(chunk.text if chunk else "(chunk gone)")

            async with steps.step("summarise", "summarise", f"{len(passages)} passages") as step:
                generation = model.generate("summarise", question, passages)
                async with contextlib.aclosing(generation.deltas) as deltas:
                    notes = "".join([d async for d in deltas])
                self._add_usage(run, self._usage(generation, question, passages, notes))
                step.output_excerpt = excerpt(notes or "(nothing relevant)")

            async with steps.step("answer", None, question) as step:
                answer = await self._stream_answer(emitter, run, passages)
                step.output_excerpt = excerpt(answer)
            run.set(output_summary=excerpt(answer, 500))
        return state

    def _usage(
        self, generation: Generation, question: str, passages: list[Passage], text: str
    ) -> Usage:
        """The generation's usage as the model reported it, else counted here."""
        if generation.usage is not None:
            return generation.usage
        count = self.model.count_tokens
        prompt = count(question) + sum(count(p.text) for p in passages)
        return Usage(prompt_tokens=prompt, completion_tokens=count(text))

    @staticmethod
    def _add_usage(run: Tracker[AgentRun], usage: Usage) -> None:
        total = run.state.usage
        run.set(
            usage=Usage(
                prompt_tokens=total.prompt_tokens + usage.prompt_tokens,
                completion_tokens=total.completion_tokens + usage.completion_tokens,
            )
        )

    async def _search(self, project: str, queries: list[str]) -> list[SearchHit]:
        hits: dict[int, SearchHit] = {}
        for query in queries:
            for hit in await self.store.search(project, query, limit=self.top_k):
                hits.setdefault(hit.chunk_id, hit)
        return sorted(hits.values(), key=lambda h: (h.score, h.chunk_id))[: self.top_k]

    async def _stream_answer(
        self, emitter: Emitter, run: Tracker[AgentRun], passages: list[Passage]
    ) -> str:
        state = run.state
        parts: list[str] = []
        self.answers[state.run_id] = ""
        generation = self.model.generate("answer", state.input, passages)
        finish: FinishReason = "error"
        try:
            # aclosing: however this ends, the model's stream (its HTTP response) is closed
            # before anything else happens, so a cancelled answer stops the server at once.
            async with contextlib.aclosing(generation.deltas) as deltas:
                async for delta in deltas:
                    message = AgentMessageAppended(
                        run_id=state.run_id, message_id=MESSAGE_ID, index=len(parts), delta=delta
                    )
                    parts.append(delta)
                    self.answers[state.run_id] += delta
                    await emitter.emit("agent.message.appended", message, key=message.key)
            finish = generation.finish_reason
        except asyncio.CancelledError:
            finish = "cancelled"
            raise
        finally:
            text = "".join(parts)
            usage = self._usage(generation, state.input, passages, text)
            self._add_usage(run, usage)
            run.set(finish_reason=finish, usage_source=generation.usage_source)
            done = AgentMessageAppended(
                run_id=state.run_id,
                message_id=MESSAGE_ID,
                index=len(parts),
                done=True,
                text=text,
                finish_reason=finish,
                usage=usage,
                usage_source=generation.usage_source,
                model=self.model.name,
                citations=[
                    Citation(n=n, chunk_id=p.chunk_id, name=p.name, title=p.title)
                    for n in citations_in(text, len(passages))
                    for p in [passages[n - 1]]
                ],
            )
            publish = emitter.emit("agent.message.appended", done, key=done.key)
            if finish in ("cancelled", "error"):
                # Shielded: a cancellation must not swallow the message's end; a failure to
                # publish it must not hide the answer's own error.
                with contextlib.suppress(Exception):
                    await asyncio.shield(publish)
            else:
                await publish
        return text

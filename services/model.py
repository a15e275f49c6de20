"""The agent's model interface, and its offline default: a deterministic extractive model.

A model plans search queries and writes text as a stream of small deltas (`generate`
returns a `Generation`: iterate it for the deltas, then read how it ended and what it cost).
The default
`ExtractiveModel` writes only sentences taken from the passages it is given, ranked by how
many of the question's terms they contain (rarer terms weigh more), so answers are
reproducible, need no weights and never say anything the corpus does not.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Literal, Protocol

import msgspec

from services.events import FinishReason, Usage, UsageSource
from services.terms import terms, words

__all__ = [
    "ExtractiveModel",
    "Generation",
    "Model",
    "Passage",
    "Task",
    "citations_in",
    "split_sentences",
    "tokens",
]

Task = Literal["summarise", "answer"]


class Passage(msgspec.Struct, frozen=True):
    chunk_id: int
    name: str  # source file
    title: str
    text: str


class Generation:
    """One text being written: `deltas` yields its pieces; once they are exhausted,
    `finish_reason` says how it ended and `usage` what it cost (`usage_source`: "server" when
    the model server reported it, "counted" when counted here).

    Close `deltas` (`contextlib.aclosing`) when stopping early: that closes the upstream.
    """

    def __init__(self, deltas: AsyncGenerator[str, None] | None = None) -> None:
        self.deltas: AsyncGenerator[str, None] = deltas or _nothing()
        self.finish_reason: FinishReason = "stop"
        self.usage: Usage | None = None  # None: the caller counts
        self.usage_source: UsageSource = "counted"


async def _nothing() -> AsyncGenerator[str, None]:
    return
    yield  # an async generator that yields nothing


class Model(Protocol):
    name: str

    def plan(self, question: str) -> list[str]:
        """Full-text search queries worth running for `question`."""

    def generate(self, task: Task, question: str, passages: Sequence[Passage]) -> Generation:
        """Write the summary notes or the answer as deltas that concatenate to the text."""

    def count_tokens(self, text: str) -> int: ...


_CITATION = re.compile(r"\[(\d{1,4})\]")


def citations_in(text: str, sources: int) -> list[int]:
    """The source numbers (1-based) `text` cites as `[n]`, in order of first use; numbers
    that name no source are ignored."""
    cited: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= sources and n not in cited:
            cited.append(n)
    return cited


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"\S+\s*")
_SUFFIXES = ("ations", "ation", "ments", "ment", "ings", "ing", "ies", "ed", "es", "s")


def split_sentences(text: str) -> list[str]:
    """Sentences worth quoting: a line's sentences, without list markers; a line that does
    not end like a sentence (a heading) counts only when long (a CSV row, a JSON note)."""
    sentences = []
    for line in text.split("\n"):
        line = line.strip().lstrip("-*\u2022 ").strip()
        for sentence in _SENTENCE_BREAK.split(line):
            n_words = len(sentence.split())
            if n_words >= 8 or (n_words >= 3 and sentence[-1] in ".!?"):
                sentences.append(sentence)
    return sentences


def tokens(text: str) -> list[str]:
    """Word-and-trailing-space pieces: the unit the local model streams."""
    return _TOKEN.findall(text)


def _stem(word: str) -> str:
    # Crude suffix stripping: enough for "swarms"/"swarming" to meet "swarm".
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terminated(sentence: str) -> str:
    return sentence if sentence[-1] in ".!?" else sentence + "."


class _Scored(msgspec.Struct, frozen=True, order=True):
    neg_score: float
    passage_rank: int
    position: int
    sentence: str


class ExtractiveModel:
    """Deterministic, offline: picks the passages' sentences that best match the question."""

    name = "extractive-v1"

    def __init__(self, *, answer_sentences: int = 3, token_delay: float = 0.0) -> None:
        self.answer_sentences = answer_sentences
        self.token_delay = token_delay  # seconds between deltas; the demo slows it to be seen

    def plan(self, question: str) -> list[str]:
        query_terms = terms(question)
        if not query_terms:
            return []
        queries = [" ".join(query_terms)]
        if len(query_terms) > 3:
            # Also search for the rarest-looking (longest) terms alone: a broad OR query can be
            # dominated by one common word.
            queries.append(" ".join(sorted(query_terms, key=lambda t: (-len(t), t))[:2]))
        return queries

    def count_tokens(self, text: str) -> int:
        return len(words(text))

    def generate(self, task: Task, question: str, passages: Sequence[Passage]) -> Generation:
        return Generation(self.stream(task, question, passages))

    async def stream(
        self, task: Task, question: str, passages: Sequence[Passage]
    ) -> AsyncGenerator[str, None]:
        text = self._write(task, question, passages)
        for piece in tokens(text):
            # Yield to the loop between deltas even without a delay: cancellation lands here.
            await asyncio.sleep(self.token_delay)
            yield piece

    def _write(self, task: Task, question: str, passages: Sequence[Passage]) -> str:
        ranked = self._rank(question, passages)
        if task == "summarise":
            best_per_passage: dict[int, str] = {}
            for item in sorted(ranked, key=lambda s: (s.passage_rank, s.neg_score, s.position)):
                best_per_passage.setdefault(item.passage_rank, item.sentence)
            return "\n".join(
                f"- {passages[rank].title}: {sentence}"
                for rank, sentence in sorted(best_per_passage.items())
            )
        if not ranked:
            wanted = ", ".join(terms(question)) or question.strip()
            return f"I found nothing about {wanted} in this project's documents."
        chosen = sorted(ranked)[: self.answer_sentences]
        chosen.sort(key=lambda s: (s.passage_rank, s.position))  # read in document order
        sources: list[str] = []
        for item in chosen:
            passage = passages[item.passage_rank]
            label = f"{passage.title} ({passage.name})" if passage.title else passage.name
            if label not in sources:
                sources.append(label)
        body = " ".join(_terminated(item.sentence) for item in chosen)
        return f"{body}\n\nSources: {'; '.join(sources)}."

    def _rank(self, question: str, passages: Sequence[Passage]) -> list[_Scored]:
        wanted = {_stem(t) for t in terms(question)}
        candidates: list[tuple[int, int, str, set[str]]] = []
        for rank, passage in enumerate(passages):
            for position, sentence in enumerate(split_sentences(passage.text)):
                stems = {_stem(w) for w in terms(sentence)}
                candidates.append((rank, position, sentence, stems))
        if not wanted or not candidates:
            return []
        # Inverse document frequency over candidate sentences: rare matching terms weigh more.
        frequency = {t: sum(1 for c in candidates if t in c[3]) for t in wanted}
        total = len(candidates)
        scored = []
        for rank, position, sentence, stems in candidates:
            matched = wanted & stems
            if not matched:
                continue
            score = sum(1.0 + math.log(total / frequency[t]) for t in matched)
            score /= 1.0 + 0.02 * max(0, len(sentence.split()) - 25)  # prefer crisp sentences
            scored.append(_Scored(-round(score, 9), rank, position, sentence))
        return scored

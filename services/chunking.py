"""Chunking normalised text: whole paragraphs, else whole sentences, else cut at a space.

Linear in the text: a sentence longer than a chunk is cut by moving an index, never by
copying the rest of it for every piece (a 5 MB paragraph once cost seconds of CPU).
"""

from __future__ import annotations

import re

from services.parse_budget import ParseBudget

__all__ = ["TooManyChunks", "chunk_text"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class TooManyChunks(ValueError):
    """More chunks than the budget allows (the caller names the file)."""


class _Chunks(list[str]):
    """The chunks of one document, counted against the budget as they are made."""

    def __init__(self, budget: ParseBudget | None) -> None:
        super().__init__()
        self.budget = budget

    def add(self, chunk: str) -> None:
        if self.budget is not None:
            self.budget.check()
            if len(self) >= self.budget.max_chunks:
                raise TooManyChunks(f"over {self.budget.max_chunks} chunks")
        self.append(chunk)


def _split_long(paragraph: str, max_chars: int, chunks: _Chunks) -> None:
    """Add a paragraph longer than a chunk as chunks of whole sentences, in linear time."""
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        pos, end = 0, len(sentence)
        while end - pos > max_chars:  # a sentence longer than a chunk: cut at a space
            if current:
                chunks.add(current)
                current = ""
            cut = sentence.rfind(" ", pos, pos + max_chars)
            cut = cut if cut > pos else pos + max_chars
            chunks.add(sentence[pos:cut].strip())
            pos = cut
            while pos < end and sentence[pos].isspace():  # an index, never a copy of the rest
                pos += 1
        rest = sentence[pos:] if pos else sentence
        if current and len(current) + 1 + len(rest) > max_chars:
            chunks.add(current)
            current = rest
        else:
            current = f"{current} {rest}".strip()
    if current:
        chunks.add(current)


def chunk_text(text: str, max_chars: int = 800, budget: ParseBudget | None = None) -> list[str]:
    """Split normalised text into chunks of whole paragraphs (or sentences) <= max_chars.

    Paragraph boundaries are kept where possible, so a chunk reads as a unit when an agent
    quotes it. With a `budget`: `TooManyChunks` past its chunk limit, `ParseCancelled` when
    its job is cancelled.
    """
    chunks = _Chunks(budget)
    current = ""
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) > max_chars:
            if current:
                chunks.add(current)
                current = ""
            _split_long(paragraph, max_chars, chunks)
            continue
        if current and len(current) + 2 + len(paragraph) > max_chars:
            chunks.add(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.add(current)
    return list(chunks)

"""What parsing one file may produce, and the flag that stops it.

Parsing runs in worker threads. A CSV repeating its header on every row, or a JSON document
repeating its key path on every line, turns kilobytes into gigabytes, so every reader counts
the text it produces against a `ParseBudget` and checks the job's `CancelFlag` between rows,
nodes and chunks: a cancelled job's thread stops within one row, not at the end of the file.
"""

from __future__ import annotations

import threading

__all__ = ["CancelFlag", "ParseBudget", "ParseCancelled"]


class ParseCancelled(Exception):
    """The job was cancelled while this file was being parsed (not a file error)."""


class CancelFlag:
    """Set by the event loop, read by the parsing thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class ParseBudget:
    """Counts one document's produced characters and chunks; raises past the limits."""

    def __init__(
        self,
        *,
        max_chars: int = 8_000_000,
        max_chunks: int = 20_000,
        max_json_depth: int = 64,
        cancel: CancelFlag | None = None,
        limit_name: str = "document",
    ) -> None:
        self.max_chars = max_chars
        self.max_chunks = max_chunks
        self.max_json_depth = max_json_depth
        self.cancel = cancel
        self.limit_name = limit_name  # "document" or "job": which limit a refusal names
        self.chars = 0

    def check(self) -> None:
        """Raise `ParseCancelled` if the job was cancelled (called between rows, nodes...)."""
        if self.cancel is not None and self.cancel.is_set():
            raise ParseCancelled

    def add(self, chars: int) -> bool:
        """Count produced text; False once over the limit (the caller raises, naming the file)."""
        self.check()
        self.chars += chars
        return self.chars <= self.max_chars

    def over(self) -> str:
        return f"produces over {self.max_chars} characters of text (the {self.limit_name} limit)"

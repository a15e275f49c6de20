"""A small pool of threads for CPU-heavy parsing, shared by every ingest job of the process.

At most `workers` files are parsed at once whatever the number of jobs, so parsing takes at
most that many cores from the event loop. Cancelling the awaiting task sets the job's
`CancelFlag` and waits for the thread to notice (the parser checks it between rows, nodes
and chunks): a cancelled job leaves no thread behind burning a core.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from services.parse_budget import CancelFlag, ParseCancelled

__all__ = ["ParsePool"]

T = TypeVar("T")


class ParsePool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._flags: set[CancelFlag] = set()
        self._lock = threading.Lock()
        self.active = 0  # parses running in a thread now
        self.runs = 0  # parses started, in total
        self.finished_cancelled = 0  # parses stopped by a cancel (their thread is free again)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="parse")
        return self._executor

    async def run(self, cancel: CancelFlag, fn: Callable[[], T]) -> T:
        """Run `fn` in a pool thread; on cancellation, stop it (via `cancel`) before raising.

        A parse stopped by `close()` (shutdown) ends the awaiting task as cancelled too.
        """
        self.runs += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool(), self._counted, fn)
        self._flags.add(cancel)
        try:
            return await asyncio.shield(future)
        except ParseCancelled:
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([future])  # the parser stops at its next check
            if not future.cancelled():
                future.exception()  # retrieved: never "exception was never retrieved"
            self.finished_cancelled += 1
            raise
        finally:
            self._flags.discard(cancel)

    def _counted(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self.active += 1
        try:
            return fn()
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        """Stop every parse under way and drop queued ones (shutdown)."""
        for flag in list(self._flags):
            flag.set()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

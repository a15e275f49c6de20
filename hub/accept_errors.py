"""Accept failures (out of file descriptors) logged once per interval, not once per attempt.

When `accept()` fails with EMFILE/ENFILE/ENOBUFS/ENOMEM, asyncio stops watching the listening
socket and retries a second later (its backoff), but it reports every failed attempt through
the loop's exception handler, with a traceback, and tries up to `backlog` times per wake-up:
a hub out of descriptors wrote 122,387 tracebacks in 9 s. `AcceptErrorLog` is that handler: one
warning per interval with the count, everything else passed to the previous handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ACCEPT_FAILURE", "AcceptErrorLog"]

logger = logging.getLogger("hub.server")

# The message asyncio's selector loop reports a failed accept() with.
ACCEPT_FAILURE: Final = "socket.accept() out of system resource"

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorLog:
    """A loop exception handler: accept failures logged once per `interval_s`, with a count."""

    def __init__(
        self,
        interval_s: float,
        previous: ExceptionHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.previous = previous
        self.clock = clock
        self.failures = 0  # since the process started
        self.logged = 0  # warnings written
        self._unlogged = 0
        self._next_log = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILURE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failures += 1
        self._unlogged += 1
        now = self.clock()
        if now < self._next_log:
            return
        logger.warning(
            "cannot accept connections: %s (%d failed attempt(s) since the last warning); "
            "retrying every second, next warning in %gs at the earliest",
            context.get("exception"),
            self._unlogged,
            self.interval_s,
        )
        self.logged += 1
        self._unlogged = 0
        self._next_log = now + self.interval_s

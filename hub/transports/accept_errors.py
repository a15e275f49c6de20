"""Accept failures (out of file descriptors): one attempt a second, one log line an interval.

When `accept()` fails with EMFILE/ENFILE/ENOBUFS/ENOMEM, asyncio's selector loop stops
watching the listening socket and schedules a retry a second later, but it goes on calling
`accept()` up to `backlog` (4096) times in the same wake-up, scheduling a retry and reporting
a traceback through the loop's exception handler for each: a hub out of descriptors wrote
122,387 tracebacks in 9 s and burned a core. `BackoffListener` is the listening socket: after
a resource failure, the rest of that wake-up's attempts see an empty queue, so one attempt a
second fails. `AcceptErrorLog` is the loop's exception handler: one warning per interval with
the count, everything else passed to the previous handler.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ACCEPT_FAILURE", "RESOURCE_ERRNOS", "AcceptErrorLog", "BackoffListener"]

logger = logging.getLogger("hub.server")

# The message asyncio's selector loop reports a failed accept() with.
ACCEPT_FAILURE: Final = "socket.accept() out of system resource"

# The errors asyncio answers by pausing the listener (selector_events._accept_connection).
RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Shorter than asyncio's retry delay (1 s), longer than one wake-up's attempts take.
_QUIET_S: Final = 0.5


class BackoffListener(socket.socket):
    """A listening socket whose `accept()`, after a resource failure, reports an empty queue
    (BlockingIOError, which ends asyncio's accept loop) until asyncio's own retry."""

    __slots__ = ("failed_at",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_at = float("-inf")  # monotonic time of the last resource failure

    @classmethod
    def adopt(cls, sock: socket.socket) -> BackoffListener:
        # No `proto`: read from the descriptor (IPPROTO_TCP) rather than copied from a socket
        # made with proto 0. Accepted sockets inherit it, and asyncio sets TCP_NODELAY only on
        # sockets whose proto says TCP: without it, every answer after the first on a
        # keep-alive connection waited ~40 ms (Nagle against the client's delayed ACK).
        return cls(sock.family, sock.type, fileno=sock.detach())

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() - self.failed_at < _QUIET_S:
            raise BlockingIOError(errno.EAGAIN, "accept paused after a resource failure")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self.failed_at = time.monotonic()
            raise


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

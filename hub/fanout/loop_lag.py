"""How long the event loop ran behind: the summed lateness of a periodic timer.

A client's frames that waited while the loop worked for others arrive at the app in a burst;
rate limits use this to avoid charging the client for that wait (see limits.OpBudget). The
timer runs only while someone asks (it stops after `idle_stop_s` without a reading) and
restarts on the running loop if the previous one is gone.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["LoopLagMeter"]

_INTERVAL_S: Final = 0.05
_IDLE_STOP_S: Final = 10.0


class LoopLagMeter:
    def __init__(self, interval_s: float = _INTERVAL_S, idle_stop_s: float = _IDLE_STOP_S):
        self.interval_s = interval_s
        self.idle_stop_s = idle_stop_s
        self.total_s = 0.0  # seconds the timer fired late, summed since creation
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._last_read = 0.0

    def stalled(self) -> float:
        """Seconds of loop lateness so far (starts the timer on the running loop if needed)."""
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        if self._handle is None or self._loop is not loop:
            if self._handle is not None:
                self._handle.cancel()
            self._loop = loop
            self._arm()
        return self.total_s

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.total_s += max(0.0, now - self._due)
        if now - self._last_read > self.idle_stop_s:
            self._handle = None
            return
        self._arm()

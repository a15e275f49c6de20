"""Adaptive linger: how long the next flush waits so more events share its frames.

A flush costs about the same for one event as for a hundred (one write per connection), so
under load it pays to let events gather for a moment. The wait follows the cost: after a
flush that took `t`, the next one lingers `L = min(max_s, gain * t)`. Lingering only pays
when more events are coming within it: when the first event after a flush comes later than
`L` after that flush ended, events are sparser than the linger (or the hub was idle) and it
goes out on the next loop tick, so a lone event, or a steady trickle, is never held back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LingerPolicy"]


class LingerPolicy:
    __slots__ = ("_last_cost", "_last_end", "clock", "gain", "max_s")

    def __init__(
        self,
        max_s: float,
        *,
        gain: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_s < 0 or gain < 0:
            raise ValueError("linger max and gain must be >= 0")
        self.max_s = max_s  # 0 disables lingering
        self.gain = gain
        self.clock = clock
        self._last_end = float("-inf")  # when the last flush ended (never: idle)
        self._last_cost = 0.0  # seconds the last flush took

    def delay(self) -> float:
        """Seconds the flush being scheduled now should wait (0: next loop tick)."""
        if self.max_s <= 0:
            return 0.0
        linger = min(self.max_s, self.gain * self._last_cost)
        if self.clock() - self._last_end > linger:
            return 0.0  # idle, or events sparser than the linger: it would gather nothing
        return linger

    def flushed(self, started: float, ended: float) -> None:
        """Record one flush (its times read from the same clock)."""
        self._last_cost = max(0.0, ended - started)
        self._last_end = ended

"""Adaptive linger: how long the next flush waits so more events share its frames.

A flush costs about the same for one event as for a hundred (one write per connection), so
under load it pays to let events gather for a moment. The wait follows the cost: after a
flush that took `t`, the next one lingers `L = min(max_s, gain * t)`. Lingering only pays
when several more events are coming within it: the gap between the end of the last flush and
the first event after it estimates the time between events, and unless about `gather` of them
fit in `L` (gap <= L / gather) the event goes out on the next loop tick. So a lone event on an
idle hub, or a steady trickle, is never held back; a flush that took long only because the
process was descheduled does not make the next event wait for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LingerPolicy"]


class LingerPolicy:
    __slots__ = ("_last_cost", "_last_end", "clock", "gain", "gather", "max_s")

    def __init__(
        self,
        max_s: float,
        *,
        gain: float = 1.0,
        gather: float = 4.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_s < 0 or gain < 0 or gather < 1:
            raise ValueError("linger max and gain must be >= 0, gather >= 1")
        self.max_s = max_s  # 0 disables lingering
        self.gain = gain
        self.gather = gather  # events expected within the linger before it is worth it
        self.clock = clock
        self._last_end = float("-inf")  # when the last flush ended (never: idle)
        self._last_cost = 0.0  # seconds the last flush took

    def delay(self) -> float:
        """Seconds the flush being scheduled now should wait (0: next loop tick)."""
        if self.max_s <= 0:
            return 0.0
        linger = min(self.max_s, self.gain * self._last_cost)
        if (self.clock() - self._last_end) * self.gather > linger:
            return 0.0  # idle, or events too sparse for the linger to gather several
        return linger

    def flushed(self, started: float, ended: float) -> None:
        """Record one flush (its times read from the same clock)."""
        self._last_cost = max(0.0, ended - started)
        self._last_end = ended

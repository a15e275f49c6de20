"""Garbage-collector settings for a hub process: far fewer full collections.

A full collection walks every object the collector tracks, and with a thousand sockets and
subscription churn one took 100-250 ms: a stall for every socket of every project. Python's
default thresholds ran one every second or two under that load (`python -m loadtest filters`,
churn variant: bystander ping max 190-270 ms). After startup the import-time objects are frozen
(never scanned again), and young collections run every `gc_gen0_threshold` allocations instead
of 700, so full ones become rare: the same run's bystander max fell to 52-68 ms, for about 25 %
more peak RSS (cyclic garbage lives longer). docs/benchmarks.md §7 has the figures.

Only processes the hub owns (`hub serve`, `hub demo`) apply it; an application that embeds the
hub with `create_app` keeps its own collector settings.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["OLDER_GENERATIONS", "tune_gc"]

OLDER_GENERATIONS: Final = (20, 20)  # young collections per middle one, middle per full one


def tune_gc(gen0_threshold: int) -> bool:
    """Freeze what exists now and raise the thresholds; 0 leaves Python's defaults. Returns
    whether anything changed."""
    if gen0_threshold <= 0:
        return False
    gc.collect()  # freeze survivors only: garbage of the startup must not become immortal
    gc.freeze()
    gc.set_threshold(gen0_threshold, *OLDER_GENERATIONS)
    return True

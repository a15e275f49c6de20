"""hub.transports.gc_tuning: what `hub serve` and `hub demo` do to the collector (in child
processes, so this test process keeps its own settings)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hub.config import Settings

_PROBE = """
import gc, sys
from hub.transports.gc_tuning import tune_gc
before = gc.get_threshold()
changed = tune_gc(int(sys.argv[1]))
print(before, gc.get_threshold(), gc.get_freeze_count() > 0, changed)
"""


def _probe(threshold: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(threshold)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_tuning_freezes_startup_objects_and_raises_the_thresholds() -> None:
    assert _probe(50_000) == "(700, 10, 10) (50000, 20, 20) True True"


def test_zero_keeps_pythons_defaults() -> None:
    assert _probe(0) == "(700, 10, 10) (700, 10, 10) False False"


def test_the_threshold_setting_is_bounded() -> None:
    assert Settings.from_env({"HUB_GC_GEN0_THRESHOLD": "0"}).gc_gen0_threshold == 0
    for bad in (-1, 10_000_001):
        with pytest.raises(ValueError, match="gc_gen0_threshold"):
            Settings(gc_gen0_threshold=bad)

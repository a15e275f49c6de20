"""The `keys` load scenario end to end at a tiny size: both variants run against a real hub,
every subscriber gets exactly its events (all of them, or its key's), and the p99 ratio is
reported. Nothing here asserts speed (the figures are in docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.cli import main


def test_keys_scenario_runs_both_variants_exactly_and_reports_the_ratio(tmp_path: Path) -> None:
    argv = "keys -n 12 --events 60 --rate 500 --batch 7 --workers 2 --name ks --no-live"
    exit_code = main([*argv.split(), "--out", str(tmp_path)])

    result = json.loads((tmp_path / "ks-keys.json").read_text())
    unfiltered, keyed = result["runs"]
    assert (unfiltered["variant"], keyed["variant"]) == ("unfiltered", "keyed")
    assert unfiltered["deliveries"] == unfiltered["expected"] == 12 * 60  # every event each
    assert keyed["deliveries"] == keyed["expected"] == 60  # each event to its key's one
    for run in (unfiltered, keyed):
        assert run["exact"] is True and run["inexact"] == 0 and run["closed"] == 0
        assert run["latency_ms"]["p99"] is not None and run["hub_cpu_seconds"] is not None
    assert result["ratios"]["keyed_p99_over_unfiltered"] is not None
    assert result["ok"] is True and exit_code == 0


def test_keys_scenario_refuses_parameters_out_of_bounds(tmp_path: Path) -> None:
    assert main(["keys", "-n", "0", "--out", str(tmp_path), "--no-live"]) == 2
    assert main(["keys", "--rate", "0", "--out", str(tmp_path), "--no-live"]) == 2


def test_keys_with_no_event_expect_none(tmp_path: Path) -> None:
    argv = "keys -n 6 --events 4 --rate 500 --workers 1 --name few --no-live"
    assert main([*argv.split(), "--out", str(tmp_path)]) == 0
    keyed = json.loads((tmp_path / "few-keys.json").read_text())["runs"][1]
    assert keyed["deliveries"] == keyed["expected"] == 4 and keyed["exact"] is True

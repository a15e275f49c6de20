"""The load generator end to end (fanout, 100 subscribers, a real hub on loopback), plus the
pure pieces whose mistakes would make that end-to-end check vacuous: seq accounting and frame
parsing. Nothing here asserts speed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loadtest.cli import main
from loadtest.results import RESULT_KEYS
from loadtest.scenarios import default_params
from loadtest.system import NotLoopback, loopback_address
from loadtest.tracker import SeqTracker
from loadtest.wsclient import (
    OP_CLOSE,
    OP_PING,
    FrameReader,
    HandshakeError,
    ProtocolError,
    accept_key,
    parse_handshake_response,
)

CONNECTIONS = 100
EVENTS = 300


def test_fanout_100_connections_delivers_every_seq_once(tmp_path: Path) -> None:
    argv = f"fanout -n {CONNECTIONS} --events {EVENTS} --target hub --workers 2 --name smoke"
    exit_code = main([*argv.split(), "--out", str(tmp_path), "--no-live", "--drain-timeout", "20"])

    result = json.loads((tmp_path / "smoke-hub.json").read_text())
    assert set(RESULT_KEYS) <= result.keys()
    assert result["scenario"] == "fanout" and result["target"] == "hub"
    assert result["connect"]["connected"] == CONNECTIONS
    assert result["publish"]["events"] == EVENTS
    assert result["delivery"]["complete"] is True
    assert result["delivery"]["expected"] == result["delivery"]["delivered"] == CONNECTIONS * EVENTS
    loss = result["loss"]
    assert loss["missing"] == 0
    assert loss["duplicates"] == 0
    assert loss["out_of_order"] == 0
    assert loss["gap_skipped"] == 0
    assert loss["foreign_project"] == 0
    latency = result["latency_ms"]
    assert latency["count"] == CONNECTIONS * EVENTS
    for key in ("p50", "p90", "p99", "p99_9", "max"):
        assert latency[key] is not None and latency[key] >= 0
    assert result["hub"]["pid"] and result["hub"]["rss_peak_mib"]
    assert result["hub"]["cpu_percent"] is not None
    assert result["machine"]["cpus"] and result["series"]
    assert result["delivery"]["per_second"] > 0
    assert result["ok"] is True and exit_code == 0

    summary = json.loads((tmp_path / "smoke-summary.json").read_text())
    for plot in summary["plots"]:
        assert Path(plot).read_bytes().startswith(b"\x89PNG")


def test_inprocess_publisher_reaches_every_subscriber_of_hub_and_baseline(tmp_path: Path) -> None:
    """The in-process scenario (loadtest/inprocess.py) at tiny size: both servers publish
    from their own loop, the generator's subscribers get every seq once."""
    n, events = 20, 200
    argv = f"fanout -n {n} --events {events} --target both --publisher inprocess --workers 1"
    exit_code = main(
        [*argv.split(), "--name", "inproc", "--out", str(tmp_path), "--no-live", "--no-plots"]
    )
    for target in ("baseline", "hub"):
        result = json.loads((tmp_path / f"inproc-{target}.json").read_text())
        assert result["params"]["publisher"] == "inprocess"
        assert result["server"]["command"][1:3] == (
            ["-m", "loadtest.inprocess"] if target == "hub" else ["-m", "loadtest.baseline"]
        )
        assert result["publish"]["events"] == events and not result["publish"]["errors"]
        assert result["publish"]["request_ms"]["count"] == events  # one publish call each
        assert result["delivery"]["expected"] == result["delivery"]["delivered"] == n * events
        loss = result["loss"]
        assert loss["missing"] == loss["duplicates"] == loss["out_of_order"] == 0
        assert result["ok"] is True
        fanout = result["hub"]["fanout"]  # the hub's own framing counters, from /metrics
        if target == "hub":
            assert fanout["delivered"] == n * events
            assert 0 < fanout["frames_built"] <= events  # one frame per event at most
            assert fanout["deliveries_per_frame"] >= n
        else:
            assert fanout is None
    assert exit_code == 0


def test_idle_latency_tool_measures_every_event_and_sees_no_linger(tmp_path: Path) -> None:
    """`python -m loadtest.idle_latency` at tiny size: every (event, subscriber) measured, and
    the hub's own counter says no flush of an idle hub lingered."""
    from loadtest.idle_latency import main as idle_main

    argv = ["-n", "2", "--events", "3", "--interval", "0.05", "--out", str(tmp_path)]
    assert idle_main([*argv, "--name", "idle"]) == 0
    result = json.loads((tmp_path / "idle.json").read_text())
    assert result["latency_ms"]["count"] == 6
    assert result["lingered_flushes"] == 0


def test_inprocess_publisher_takes_one_event_per_call() -> None:
    with pytest.raises(ValueError, match="one event at a time"):
        default_params("fanout", publisher="inprocess", batch=10)
    with pytest.raises(ValueError, match="publisher must be"):
        default_params("fanout", publisher="carrier-pigeon")


# --- seq accounting ------------------------------------------------------------------------


def test_tracker_counts_missing_duplicate_and_late_seqs() -> None:
    t = SeqTracker()
    t.start(head=10)
    for seq in (11, 12, 15, 13, 13, 17, 11):
        t.observe(seq)
    # 14 and 16 never came, 13 came late (once) then again, 11 came twice
    assert t.out_of_order == 1
    assert t.duplicates == 2
    assert t.received == 5
    assert t.missing(final=18) == 3  # 14, 16 and the tail 18


def test_tracker_gap_skips_declared_seqs_without_calling_them_missing() -> None:
    t = SeqTracker()
    t.start(head=0)
    t.observe(1)
    t.gap(head=5)
    t.observe(6)
    assert t.gap_skipped == 4
    assert t.missing(final=6) == 0


def test_tracker_resume_welcome_keeps_position() -> None:
    t = SeqTracker()
    t.start(head=3)
    t.observe(4)
    t.start(head=9)  # a later welcome (resume) must not move the expectation
    assert t.last == 4
    assert t.missing(final=9) == 5


# --- frames ---------------------------------------------------------------------------------


class _Collect(FrameReader):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[bytes] = []
        self.controls: list[tuple[int, bytes]] = []

    def on_text(self, payload: bytes) -> None:
        self.texts.append(bytes(payload))

    def on_control(self, opcode: int, payload: bytes) -> None:
        self.controls.append((opcode, payload))


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def test_frame_reader_handles_every_length_form_split_anywhere() -> None:
    payloads = [b"a", b"b" * 200, b"c" * 70000]
    stream = b"".join(_frame(0x1, p) for p in payloads) + _frame(OP_PING, b"hi")
    for step in (1, 7, 4096, len(stream)):
        reader = _Collect()
        for i in range(0, len(stream), step):
            reader.feed(stream[i : i + step])
        assert reader.texts == payloads
        assert reader.controls == [(OP_PING, b"hi")]


def test_frame_reader_joins_fragments_around_control_frames() -> None:
    reader = _Collect()
    reader.feed(
        _frame(0x1, b"[1,", fin=False)
        + _frame(OP_PING, b"")
        + _frame(0x0, b"2]")
        + _frame(OP_CLOSE, b"\x0f\xa8")
    )
    assert reader.texts == [b"[1,2]"]
    assert reader.controls == [(OP_PING, b""), (OP_CLOSE, b"\x0f\xa8")]


def test_frame_reader_refuses_masked_server_frames() -> None:
    with pytest.raises(ProtocolError):
        _Collect().feed(bytes((0x81, 0x81)) + b"mask" + b"x")


def test_handshake_checks_status_and_accept_key() -> None:
    good = accept_key(b"key")
    parse_handshake_response(
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + good, good
    )
    with pytest.raises(HandshakeError) as refused:
        parse_handshake_response(b"HTTP/1.1 403 Forbidden", good)
    assert refused.value.status == 403
    with pytest.raises(HandshakeError):
        parse_handshake_response(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope", good)


def test_only_loopback_targets_are_accepted() -> None:
    assert loopback_address("http://127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert loopback_address("http://[::1]:9") == ("::1", 9)
    for url in ("http://10.0.0.1:80", "http://example.com:80", "https://127.0.0.1:1"):
        with pytest.raises(NotLoopback):
            loopback_address(url)


def test_filters_scenario_runs_every_variant_and_reports_ratios(tmp_path: Path) -> None:
    argv = "filters -n 10 --batches 2 --batch 20 --churners 2 --batch-interval 0.2 --name fs"
    exit_code = main([*argv.split(), "--out", str(tmp_path), "--no-live"])

    result = json.loads((tmp_path / "fs-filters.json").read_text())
    assert [r["variant"] for r in result["runs"]] == ["single", "distinct", "churn"]
    for run in result["runs"]:
        assert run["complete"] is True
        assert run["hits_received"] == run["hits_expected"] == 20
        assert run["subscribers_closed"] == 0 and run["bystander_closed"] is None
        assert run["hub_cpu_seconds"] is not None
        assert run["bystander_ping_ms"]["count"] >= 1
    assert result["runs"][2]["churn_ops"] > 0
    assert set(result["ratios"]) == {"distinct", "churn"}
    assert result["ok"] is True and exit_code == 0


def test_types_must_match_the_bench_events_with_the_hubs_own_patterns() -> None:
    assert default_params("fanout", types="bench.*,x.y").types == "bench.*,x.y"
    assert default_params("fanout", types="*tick").types == "*tick"
    with pytest.raises(ValueError, match="does not match the bench events"):
        default_params("fanout", types="bench.tock,*.x")

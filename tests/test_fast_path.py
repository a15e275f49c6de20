"""The direct write path is what `hub serve` runs, and losing it costs speed, never the hub:
a broken or unfit uvicorn adapter logs one warning and serves on uvicorn's stock protocol."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from hub.config import Settings
from hub.fanout.pull_sink import PullSink
from hub.fanout.push_sink import PushSink
from hub.transports import uvicorn_ws
from hub.transports.fast_path import STOCK_PROTOCOL, websocket_protocol

from .edge_support import hub_process
from .support import FrameRecorder, run_hub, wait_for


def direct_connections(metrics_text: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "hub_connections_direct":
                return sample.value
    raise AssertionError("no hub_connections_direct in /metrics")


@pytest.fixture
def fresh_choice() -> Iterator[None]:
    """Forget the cached protocol choice before and after: the next hub chooses again."""
    websocket_protocol.cache_clear()
    yield
    websocket_protocol.cache_clear()


def no_fast_path_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("no fast path")]


async def test_hub_serve_puts_websockets_on_the_direct_path() -> None:
    async with hub_process("--log-level", "info") as hub:
        async with connect(f"ws://127.0.0.1:{hub.port}/v1/projects/p1/ws") as ws:
            await ws.recv()  # welcome
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub.port}") as http:
                response = await http.get("/metrics")
        assert response.status_code == 200, response.text[:300]
        assert direct_connections(response.text) == 1
        assert "no fast path" not in hub.stderr, hub.stderr[-2000:]


def test_the_installed_uvicorn_fits_the_adapter() -> None:
    uvicorn_ws.check_internals()
    assert websocket_protocol() is uvicorn_ws.HubWebSocketProtocol


def test_a_class_without_the_internals_is_refused_by_name() -> None:
    with pytest.raises(RuntimeError, match=r"handle_connect.*conn"):
        uvicorn_ws.check_internals(asyncio.Protocol)


def test_changed_uvicorn_internals_mean_the_stock_protocol_and_one_warning(
    fresh_choice: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uvicorn_ws, "PARENT_STATE", (*uvicorn_ws.PARENT_STATE, "renamed_state"))
    with caplog.at_level(logging.WARNING, logger="hub"):
        assert websocket_protocol() == STOCK_PROTOCOL
        assert websocket_protocol() == STOCK_PROTOCOL
    [warning] = no_fast_path_warnings(caplog)
    assert "renamed_state" in warning


async def test_a_broken_adapter_import_serves_events_on_the_asgi_path_after_one_warning(
    fresh_choice: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # None in sys.modules: the import raises ImportError.
    monkeypatch.setitem(sys.modules, "hub.transports.uvicorn_ws", None)
    with caplog.at_level(logging.WARNING, logger="hub"):
        async with run_hub(Settings(heartbeat_s=5.0)) as running:
            rec = FrameRecorder(await connect(running.ws_url("p1")))
            try:
                await wait_for(lambda: bool(rec.ops("welcome")), timeout=5, what="welcome")
                [connection] = running.hub.manager.connections("p1")
                assert isinstance(connection.sink, PullSink)
                await running.hub.publish("p1", "ingest.job.updated", {"i": 1})
                await wait_for(lambda: rec.seqs == [1], timeout=5, what="the event")
            finally:
                await rec.close()
        async with run_hub(Settings(heartbeat_s=5.0)):
            pass  # a second server in the process chooses nothing again
    [warning] = no_fast_path_warnings(caplog)
    assert "ImportError" in warning or "ModuleNotFoundError" in warning, warning


async def test_run_hub_in_process_takes_the_direct_sink() -> None:
    async with run_hub(Settings(heartbeat_s=5.0)) as running:
        rec = FrameRecorder(await connect(running.ws_url("p1")))
        try:
            await wait_for(lambda: bool(rec.ops("welcome")), timeout=5, what="welcome")
            [connection] = running.hub.manager.connections("p1")
            assert isinstance(connection.sink, PushSink)
        finally:
            await rec.close()


def test_the_core_imports_without_loading_the_uvicorn_adapter() -> None:
    core = (
        "hub.protocol hub.wire.frames hub.transports.direct hub.fanout.manager "
        "hub.fanout.connection hub.fanout.session "
        "hub.transports.ws_endpoint hub.transports.sse_endpoint hub.app hub.transports.server"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {core.split()!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'hub.transports.uvicorn_ws'"
        " or m.startswith('uvicorn.protocols.websockets')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

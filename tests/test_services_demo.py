"""`hub demo` as a new user runs it: a real process that prints where to watch, live events."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import hub
from services.demo import QUESTIONS, register
from services.runtime import SAMPLE_DOCS

from .support import FrameRecorder, demo_banner, wait_for


def test_demo_command_registers_with_its_options_and_defaults() -> None:
    parser = argparse.ArgumentParser(prog="hub")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo"])
    assert (args.project, args.host, args.docs) == ("demo", "127.0.0.1", SAMPLE_DOCS)
    args = parser.parse_args(["demo", "--host", "0.0.0.0", "--port", "9000", "--project", "x"])
    assert (args.host, args.port, args.project) == ("0.0.0.0", 9000, "x")
    assert callable(args.func)


async def test_demo_prints_where_to_watch_and_publishes_a_workflow_within_seconds() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.demo",
        "--port",
        "0",
        "--interval",
        "0.2",
        "--token-delay",
        "0",
        "--project",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        banner, base = await demo_banner(process)
        assert f"hub tail --url {base} --project demo" in banner
        assert f"dashboard: {base}/" in banner

        ws_url = base.replace("http://", "ws://") + "/v1/projects/demo/ws?since=0"
        watcher = await FrameRecorder.open(ws_url)
        await wait_for(
            lambda: any(
                e["type"] == "workflow.run.updated" and e["data"]["state"] == "succeeded"
                for e in watcher.events
            ),
            timeout=20,
            what="a workflow run that succeeded",
        )
        await watcher.close()
        types = {e["type"] for e in watcher.events}
        assert {
            "ingest.job.completed",
            "agent.message.appended",
            "agent.run.completed",
            "workflow.node_state.updated",
        } <= types
        assert watcher.seqs == list(range(1, len(watcher.seqs) + 1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]


def test_the_dashboard_starts_the_workflows_the_demo_runs() -> None:
    """hub/static/dashboard-actions.js keeps its own copy of the demo's questions (hub/ may
    not import services/): it must stay the same as services.demo.QUESTIONS."""
    source = (Path(hub.__file__).parent / "static" / "dashboard-actions.js").read_text()
    found = re.search(r"const DEMO_QUESTIONS = (\[.*?\n\]);", source, re.S)
    assert found, "DEMO_QUESTIONS not found in dashboard-actions.js"
    copied = json.loads(re.sub(r",(\s*\])", r"\1", found.group(1)))  # JS allows a last comma
    assert [tuple(pair) for pair in copied] == list(QUESTIONS)

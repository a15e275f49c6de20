"""Acceptance: `hub demo --model NAME --model-url URL` as a real process, on a loopback
OpenAI-compatible server (tests/test_services_llm_support.py), watched over the WebSocket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from .support import FrameRecorder, demo_banner, wait_for
from .test_services_llm_support import ChatServer, Reply, by_question

API_KEY = "sk-demo-9876543210-SECRET"
TOKENS = (*(f"word{i} " for i in range(30)), "[1].")
STREAMED = Reply(tokens=TOKENS, usage=(321, 31))
ENDLESS = Reply(endless=True, token_interval=0.01)


class Demo:
    def __init__(self, process: asyncio.subprocess.Process, base: str, server: ChatServer):
        self.process = process
        self.base = base
        self.server = server
        self.http = httpx.AsyncClient(base_url=f"{base}/v1/projects/demo", timeout=10)

    async def ask(self, question: str) -> str:
        response = await self.http.post("/agent/runs", json={"question": question})
        assert response.status_code == 202, response.text
        return str(response.json()["run"]["run_id"])


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    async with ChatServer(by_question({"cancel-me": ENDLESS}, default=STREAMED)) as server:
        env = os.environ | {
            "HUB_MODEL_API_KEY": API_KEY,
            "HUB_MODEL_FIRST_TOKEN_TIMEOUT_S": "5",
            "HUB_MODEL_IDLE_TIMEOUT_S": "5",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.demo",
            "--port",
            "0",
            "--interval",
            "3600",
            "--token-delay",
            "0",
            "--log-level",
            "debug",
            "--model",
            "test-model",
            "--model-url",
            server.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            banner, base = await demo_banner(process)
            running = Demo(process, base, server)
            yield running
            await running.http.aclose()
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            async with asyncio.timeout(20):
                stdout, stderr = await process.communicate()
        output = banner + stdout.decode() + stderr.decode()
        assert process.returncode == 0, output[-3000:]
        assert API_KEY not in output
        assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in server.requests)


def messages(watcher: FrameRecorder, run_id: str) -> list[dict[str, Any]]:
    key = f"agent.message/{run_id}/answer"
    return [e for e in watcher.events if e.get("key") == key]


async def test_demo_streams_the_model_servers_tokens_in_order_with_its_usage(demo: Demo) -> None:
    ws_url = demo.base.replace("http://", "ws://") + "/v1/projects/demo/ws?since=0"
    watcher = await FrameRecorder.open(ws_url)
    run_id = await demo.ask("Which hive gave the best honey yield?")
    await wait_for(
        lambda: any(e["data"]["done"] for e in messages(watcher, run_id)),
        timeout=20,
        what="the answer's last append",
    )
    await wait_for(
        lambda: any(
            e["type"] == "agent.run.completed" and e["key"] == f"agent.run/{run_id}"
            for e in watcher.events
        ),
        timeout=10,
        what="the run completed",
    )
    await watcher.close()
    appended = [e["data"] for e in messages(watcher, run_id)]
    assert [m["delta"] for m in appended[:-1]] == list(TOKENS)  # every token, in order
    end = appended[-1]
    assert end["text"] == "".join(TOKENS)
    assert (end["finish_reason"], end["usage_source"], end["model"]) == (
        "stop",
        "server",
        "test-model",
    )
    assert end["usage"] == {"prompt_tokens": 321, "completion_tokens": 31}
    assert [c["n"] for c in end["citations"]] == [1]
    run = [e["data"] for e in watcher.events if e["key"] == f"agent.run/{run_id}"][-1]
    assert (run["model"], run["finish_reason"], run["usage"]["completion_tokens"]) == (
        "test-model",
        "stop",
        31,
    )
    assert API_KEY not in msgspec.json.encode(watcher.events).decode()


async def test_cancelling_a_demo_run_closes_the_model_servers_connection_within_100ms(
    demo: Demo,
) -> None:
    ws_url = demo.base.replace("http://", "ws://") + "/v1/projects/demo/ws?since=0"
    watcher = await FrameRecorder.open(ws_url)
    run_id = await demo.ask("cancel-me: tell me everything about bees")
    await wait_for(
        lambda: len(messages(watcher, run_id)) >= 10, timeout=20, what="tokens streaming"
    )
    [request] = [r for r in demo.server.requests if "cancel-me" in r.question]
    cancelled_at = time.monotonic()  # before the cancel request is even sent
    response = await demo.http.post(f"/agent/runs/{run_id}/cancel")
    assert response.status_code == 202
    await asyncio.wait_for(request.closed.wait(), 5)
    assert request.closed_at is not None
    took = request.closed_at - cancelled_at
    print(f"cancel -> model server saw its connection closed in {took * 1000:.1f} ms")
    assert took < 0.1
    await wait_for(
        lambda: any(
            e["type"] == "agent.run.cancelled" and e["key"] == f"agent.run/{run_id}"
            for e in watcher.events
        ),
        timeout=10,
        what="the run cancelled",
    )
    await watcher.close()
    end = messages(watcher, run_id)[-1]["data"]
    assert (end["done"], end["finish_reason"]) == (True, "cancelled")
    tokens_streamed = len(messages(watcher, run_id)) - 1
    assert tokens_streamed <= request.tokens_sent  # nothing invented; the server stopped

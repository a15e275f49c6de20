"""The baseline: the naive connection manager the seed designs start from, written plainly.

A dict project -> list of Starlette WebSockets, and `for ws in conns: await ws.send_json(event)`
inside the publish request. It speaks just enough of docs/protocol.md for the load generator
(welcome, event frames with seq and ts, POST publish answering seqs, and the in-process
publisher's /bench/publish, loadtest/inprocess.py) and keeps no history:
a resume that missed anything gets a `gap`, so reconnect scenarios show what retention buys.
Run it with `python -m loadtest.baseline --port 0`; it prints its address like the hub does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .inprocess import PublishOne, bench_route

__all__ = ["NaiveManager", "create_app", "main"]


class NaiveManager:
    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self.connections: dict[str, list[WebSocket]] = {}
        self.heads: dict[str, int] = {}
        # One publish at a time per project, or overlapping fan-outs could reorder seqs.
        self.locks: dict[str, asyncio.Lock] = {}

    async def publish(self, project: str, events: list[dict[str, Any]]) -> list[int]:
        seqs = []
        async with self.locks.setdefault(project, asyncio.Lock()):
            for item in events:
                seq = self.heads.get(project, 0) + 1
                self.heads[project] = seq
                event = {
                    "op": "event",
                    "project": project,
                    "seq": seq,
                    "type": item["type"],
                    "ts": int(time.time() * 1000),
                    "key": item.get("key"),
                    "data": item.get("data"),
                }
                for ws in list(self.connections.get(project, [])):
                    try:
                        await ws.send_json(event)
                    except Exception:  # a dead socket: drop it and carry on
                        self.remove(project, ws)
                seqs.append(seq)
        return seqs

    def remove(self, project: str, ws: WebSocket) -> None:
        conns = self.connections.get(project, [])
        if ws in conns:
            conns.remove(ws)


async def subscribe(ws: WebSocket) -> None:
    manager: NaiveManager = ws.app.state.manager
    project = ws.path_params["project"]
    await ws.accept()
    head = manager.heads.get(project, 0)
    manager.connections.setdefault(project, []).append(ws)  # before any await: no seq slips by
    try:
        await ws.send_json(
            {
                "op": "welcome",
                "project": project,
                "epoch": manager.epoch,
                "head": head,
                "oldest": head + 1,
                "heartbeat": 20,
            }
        )
        since = ws.query_params.get("since")
        if since is not None:
            epoch = ws.query_params.get("epoch")
            if int(since) != head or (epoch and epoch != manager.epoch):
                reason = "epoch" if epoch and epoch != manager.epoch else "evicted"
                await ws.send_json(
                    {
                        "op": "gap",
                        "reason": reason,
                        "since": int(since),
                        "oldest": head + 1,
                        "head": head,
                    }
                )
                await ws.send_json({"op": "snapshot", "head": head, "events": []})
            else:
                await ws.send_json({"op": "replayed", "count": 0, "head": head})
        while True:
            await ws.receive_text()  # client ops are not part of the baseline
    except (WebSocketDisconnect, ValueError):
        pass
    finally:
        manager.remove(project, ws)


async def publish(request: Request) -> Response:
    manager: NaiveManager = request.app.state.manager
    body = json.loads(await request.body())
    events = body if isinstance(body, list) else [body]
    seqs = await manager.publish(request.path_params["project"], events)
    return JSONResponse({"seqs": seqs}, status_code=202)


def _publish_one(request: Request) -> PublishOne:
    """The in-process publisher's call (loadtest/inprocess.py): one event, its seq."""
    manager: NaiveManager = request.app.state.manager

    async def publish_one(project: str, type_: str, data: dict[str, Any]) -> int:
        (seq,) = await manager.publish(project, [{"type": type_, "data": data}])
        return seq

    return publish_one


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    app = Starlette(
        routes=[
            WebSocketRoute("/v1/projects/{project}/ws", subscribe),
            Route("/v1/projects/{project}/events", publish, methods=["POST"]),
            Route("/healthz", healthz),
            bench_route(_publish_one),
        ]
    )
    app.state.manager = NaiveManager()
    return app


async def serve(host: str, port: int, log_level: str) -> None:
    # Same uvicorn settings as the hub where they touch speed: no access log, no compression.
    config = uvicorn.Config(
        create_app(),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        ws_per_message_deflate=False,
        lifespan="off",
        backlog=4096,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        bound = server.servers[0].sockets[0].getsockname()[1]
        display = f"[{host}]" if ":" in host else host
        print(f"baseline listening on http://{display}:{bound}", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.baseline", description="naive fan-out server for comparison runs"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.log_level))


if __name__ == "__main__":
    main()

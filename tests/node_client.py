"""hub/static/hub-client.js run by Node (tests/node/client_driver.mjs), watched from a test.

Node 20 with `--experimental-websocket` gives the global WebSocket whose refused connections
fire `error` and never `close`; fetch and streams are built in, so the client needs nothing
from npm. The driver prints one JSON record per line; `NodeClient` collects them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from .support import require, wait_for

__all__ = ["CLIENT_JS", "NODE_FLAGS", "NodeClient", "require_node"]

DRIVER = Path(__file__).parent / "node" / "client_driver.mjs"
CLIENT_JS = Path(__file__).resolve().parent.parent / "hub" / "static" / "hub-client.js"
# detect-module: hub-client.js is ESM in a directory that may have no package.json yet.
NODE_FLAGS = ["--experimental-websocket", "--experimental-detect-module", "--no-warnings"]


def require_node() -> None:
    require(None if shutil.which("node") else "node is not installed (apt-get install nodejs)")


class NodeClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.records: list[dict[str, Any]] = []
        self.stderr = b""
        self._reader = asyncio.create_task(self._read())
        self._errors = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(
        cls, url: str, project: str, *, bootstrap: bool = False, **options: Any
    ) -> Self:
        config = {"url": url, "project": project, "options": options, "bootstrap": bootstrap}
        process = await asyncio.create_subprocess_exec(
            "node",
            *NODE_FLAGS,
            str(DRIVER),
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.records.append(json.loads(line))

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = await self.process.stderr.read()

    # --- views of the records ------------------------------------------------------------

    @property
    def states(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "state" in r]

    @property
    def seqs(self) -> list[int]:
        return [r["event"] for r in self.records if "event" in r]

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "snapshot" in r]

    def count(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for r in self.records if predicate(r))

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self._reader.done():
                raise AssertionError(f"node exited early: {self.stderr.decode()[-2000:]}")
            return predicate()

        await wait_for(ready, timeout=timeout, what=f"{what}; records: {self.records[-5:]}")

    async def wait_state(self, state: str, after: int = 0, timeout: float = 20.0) -> int:
        """Wait for a `state` record past record index `after`; return its index."""

        def found() -> int | None:
            for i in range(after, len(self.records)):
                if self.records[i].get("state") == state:
                    return i
            return None

        await self.wait(lambda: found() is not None, f"state {state!r}", timeout)
        index = found()
        assert index is not None
        return index

    async def close(self) -> dict[str, Any]:
        """End stdin: the driver closes the client and prints its totals."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), 10)
        await asyncio.wait_for(asyncio.gather(self._reader, self._errors), 10)
        assert self.process.returncode == 0, self.stderr.decode()[-2000:]
        done = self.records[-1]
        assert done.get("done"), self.records[-5:]
        return done

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

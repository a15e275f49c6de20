"""`hub publish --file -` fed by a hostile producer: a line that never ends is refused once
it passes MAX_LINE_BYTES, before the rest is read (memory bounded), with a usage error."""

from __future__ import annotations

import asyncio
import sys

from hub.cli_exit import ExitStatus
from hub.cli_publish import MAX_LINE_BYTES

from .support import RunningHub

MiB = 1024 * 1024


async def test_an_endless_stdin_line_is_refused_after_max_line_bytes(
    running_hub: RunningHub,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "publish", "--url", running_hub.url, "--project", "p1",
        "--file", "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    chunk = b'{"type": "note.added", "data": "' + b"x" * MiB
    bound = 4 * MAX_LINE_BYTES  # what a hub publish that reads the whole line would take
    written = 0
    async with asyncio.timeout(60):
        try:
            while written < bound and process.returncode is None:
                process.stdin.write(chunk)
                await process.stdin.drain()
                written += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: what this test wants
        finished = process.returncode is not None or written < bound
        if process.returncode is None and not finished:
            process.kill()  # it still reads: fail below, with the figures
        out, err = await process.communicate()
    assert finished, f"hub publish read {written} bytes of one line and still waited for more"
    assert process.returncode == ExitStatus.USAGE, err.decode()
    assert f"line 1: longer than {MAX_LINE_BYTES} bytes" in err.decode()
    assert out == b""

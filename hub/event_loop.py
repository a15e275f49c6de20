"""`--loop {auto,uvloop,asyncio}`: which event loop `hub serve` and `hub demo` run on.

uvloop (a dependency wherever it installs) is the default: the fan-out writes to thousands of
sockets per tick, and uvloop's transports make those writes cheaper (docs/benchmarks.md).
`asyncio` keeps the standard library's loop, e.g. to compare or to debug.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
from collections.abc import Callable

__all__ = ["LOOPS", "add_loop_argument", "loop_factory", "loop_name"]

LOOPS = ("auto", "uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> LoopFactory | None:
    """The factory for `asyncio.Runner`; None means the standard library's loop.

    `auto` is uvloop if it imports, else asyncio. `uvloop` when it does not import raises
    ValueError saying so.
    """
    if choice not in LOOPS:
        raise ValueError(f"unknown event loop {choice!r}: choose one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "auto":
            return None
        raise ValueError(
            f"--loop uvloop: uvloop does not import here ({exc}); install it or use --loop asyncio"
        ) from None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """`uvloop` or `asyncio`: what the running (or given) loop is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"


def add_loop_argument(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("HUB_LOOP", "auto")
    parser.add_argument(
        "--loop",
        default=default,
        choices=LOOPS,
        help="event loop: uvloop, asyncio (the standard library's) or auto, uvloop where it "
        f"imports (default {default}; env HUB_LOOP)",
    )

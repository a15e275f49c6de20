"""How a `hub` command ends: one line on stderr saying what to do, and a distinct status.

Commands raise `CliError(status, message)` for anything a person can cause; `run_command`
turns it (and Ctrl-C, a closed stdout, a taken port, an unexpected bug) into that line and
the status of `ExitStatus`. Tracebacks are printed only with `--debug` (or HUB_DEBUG=1).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT_STATUS_EPILOG", "CliError", "ExitStatus", "debug_requested", "run_command"]


class ExitStatus(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: rerun with --debug and report the traceback
    USAGE = 2  # bad arguments or settings (argparse's own status too)
    CANNOT_BIND = 3  # the port is taken or not ours (uvicorn's startup failure status too)
    UNAUTHORIZED = 4  # token missing, invalid or expired (401 / close 4001)
    FORBIDDEN = 5  # the token does not allow this project, type or scope (403 / 4003)
    REFUSED = 6  # the hub refused the request as invalid (400 / 413 / 422 / close 4400)
    UNREACHABLE = 7  # no hub answered in time: --give-up-after, or the publisher's retries
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    BROKEN_PIPE = 141  # stdout closed by the reader, e.g. `| head` (128 + SIGPIPE)


EXIT_STATUS_EPILOG = """\
exit statuses:
    0  done (serve and demo: stopped by SIGTERM / Ctrl-C after draining)
    1  internal error: rerun with --debug and report the traceback
    2  bad arguments or settings
    3  cannot listen: the port is in use or not allowed (--port, --host)
    4  token missing, invalid or expired (--token / HUB_TOKEN; `hub token` mints one)
    5  the token does not allow this project, type or scope
    6  the hub refused the request as invalid (project id, --types, event)
    7  no hub answered: gave up (--give-up-after, publish retries)
  130  interrupted (Ctrl-C)
  141  output closed by the reader (e.g. piped into head)
--debug (before or after the command) or HUB_DEBUG=1 prints tracebacks."""


class CliError(Exception):
    """A failure a person can fix: `message` says how, `status` is the exit status."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def run_command(func: Callable[[Any], Any], args: Any, *, prog: str, debug: bool) -> int:
    """Run a command's function (sync or async); return its exit status."""
    from .transports.server import CannotBind

    try:
        if inspect.iscoroutinefunction(func):
            with asyncio.Runner(loop_factory=_loop_factory(args)) as runner:
                runner.run(func(args))
        else:
            func(args)
    except CliError as exc:
        return _fail(prog, exc.message, exc.status)
    except CannotBind as exc:
        return _fail(prog, exc.strerror or str(exc), ExitStatus.CANNOT_BIND)
    except KeyboardInterrupt:
        if debug:
            raise
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(f"{prog}: {exc.code}", file=sys.stderr)
        return ExitStatus.INTERNAL
    except Exception as exc:
        if debug:
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        message = f"unexpected {type(exc).__name__}{': ' + detail if detail else ''}"
        return _fail(prog, f"{message} (rerun with --debug for the traceback)", 1)
    return ExitStatus.OK


def _fail(prog: str, message: str, status: int) -> int:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return status


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def debug_requested(argv: list[str]) -> bool:
    """`--debug` anywhere on the command line (before or after the command), or HUB_DEBUG."""
    return "--debug" in argv or os.environ.get("HUB_DEBUG", "") not in ("", "0")


def _loop_factory(args: Any) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a command that runs a hub asked for (`--loop`); others: asyncio's."""
    from .event_loop import loop_factory

    try:
        return loop_factory(getattr(args, "loop", "asyncio"))
    except ValueError as exc:
        raise CliError(ExitStatus.USAGE, str(exc)) from None

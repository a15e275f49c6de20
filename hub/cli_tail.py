"""`hub tail`: print a project's events as they arrive; the connection's state on stderr.

stdout carries only events (and gap / snapshot markers), so it can be piped; stderr says
`connecting`, `retrying in N s` and `live`. A refusal by the hub ends the command with the
status of hub.cli_exit (4 token, 5 forbidden, 6 invalid request, 7 gave up).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from .cli_exit import CliError, ExitStatus
from .protocol import CloseCode, EventFrame, GapFrame, SnapshotFrame, is_valid_project

if TYPE_CHECKING:  # websockets loads only when `hub tail` runs
    from .client import HubClientError, StateChange

__all__ = ["add_tail_parser", "tail"]


def add_tail_parser(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    tail_parser: argparse.ArgumentParser = sub.add_parser(
        "tail", help="print a project's events as they arrive"
    )
    tail_parser.add_argument("--url", default="http://127.0.0.1:8080", help="hub base URL")
    tail_parser.add_argument("--project", default="demo")
    tail_parser.add_argument(
        "--types", help="comma-separated type patterns, e.g. 'agent.*,*.failed'"
    )
    tail_parser.add_argument(
        "--keys", help="comma-separated key patterns, e.g. 'ingest.job/j17,agent.run/*'"
    )
    tail_parser.add_argument("--since", type=int, help="replay everything after this seq first")
    tail_parser.add_argument("--token", help="access token (or HUB_TOKEN)")
    tail_parser.add_argument(
        "--give-up-after",
        type=_seconds,
        dest="give_up_after",
        metavar="SECONDS",
        help="exit (status 7) after this long without a connection (default: retry forever)",
    )
    tail_parser.add_argument(
        "--quiet", "-q", action="store_true", help="do not print the connection state on stderr"
    )
    tail_parser.set_defaults(func=tail)
    return tail_parser


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {raw!r}") from None
    if not 0 < value < 10**9:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {raw!r}")
    return value


def _check_arguments(args: argparse.Namespace) -> list[str] | None:
    if not is_valid_project(args.project):
        raise CliError(
            ExitStatus.USAGE,
            f"invalid --project {args.project[:80]!r}: use letters, digits, '.', '_' and '-' "
            "(1-128 characters, starting with a letter or digit)",
        )
    if args.since is not None and args.since < 0:
        raise CliError(ExitStatus.USAGE, "--since must be 0 or more")
    if not args.url.startswith(("http://", "https://", "ws://", "wss://")):
        raise CliError(ExitStatus.USAGE, f"--url {args.url!r} must start with http:// or https://")
    if args.types is None:
        return None
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if not types:
        raise CliError(
            ExitStatus.USAGE, "--types is empty: name at least one pattern, e.g. 'agent.*'"
        )
    return types


def _checked_keys(args: argparse.Namespace) -> list[str] | None:
    if args.keys is None:
        return None
    keys = [k for k in args.keys.split(",") if k]
    if not keys:
        raise CliError(
            ExitStatus.USAGE, "--keys is empty: name at least one key, e.g. 'ingest.job/j17'"
        )
    return keys


def _print_state(change: StateChange) -> None:
    if change.state == "connecting":
        line = "connecting" if change.attempt == 0 else f"connecting (attempt {change.attempt + 1})"
    elif change.state == "reconnecting":
        line = f"{change.reason or 'disconnected'}; retrying in {change.delay or 0:.1f} s"
    elif change.state == "open":
        line = "live"
    else:
        return
    print(f"hub tail: {line}", file=sys.stderr, flush=True)


async def tail(args: argparse.Namespace) -> None:
    from .client import HubClient, HubClientError, HubUnreachable

    types = _check_arguments(args)
    keys = _checked_keys(args)
    token = args.token or os.environ.get("HUB_TOKEN") or None
    client = HubClient(
        args.url,
        args.project,
        types=types,
        keys=keys,
        since=args.since,
        token=token,
        give_up_after=args.give_up_after,
        on_state=None if args.quiet else _print_state,
    )
    try:
        async with client:
            async for frame in client:
                _print_frame(frame)
    except HubUnreachable as exc:
        raise CliError(
            ExitStatus.UNREACHABLE,
            f"{exc}; is a hub running at {args.url}? (start one with `hub serve`)",
        ) from None
    except HubClientError as exc:
        raise _refusal(exc, args) from None


def _print_frame(frame: object) -> None:
    if isinstance(frame, EventFrame):
        data = msgspec.json.encode(frame.data).decode()
        print(f"{frame.seq:>7} {frame.type:<28} {frame.key or '-':<34} {data}", flush=True)
    elif isinstance(frame, GapFrame):
        print(f"--- gap ({frame.reason}): since {frame.since}, oldest {frame.oldest}", flush=True)
    elif isinstance(frame, SnapshotFrame):
        print(f"--- snapshot at head {frame.head}: {len(frame.events)} keys", flush=True)


def _refusal(exc: HubClientError, args: argparse.Namespace) -> CliError:
    """The hub's refusal as one line saying what to do, with its exit status."""
    detail = exc.detail or str(exc)
    if exc.code == CloseCode.UNAUTHORIZED or exc.status == 401:
        hint = "pass a valid token with --token or HUB_TOKEN (`hub token` mints one)"
        return CliError(ExitStatus.UNAUTHORIZED, f"{detail}: {hint}")
    if exc.code == CloseCode.FORBIDDEN or exc.status == 403:
        hint = f"use a token that allows project {args.project!r} and these types"
        return CliError(ExitStatus.FORBIDDEN, f"{detail}: {hint}")
    if exc.status == 404:
        return CliError(
            ExitStatus.REFUSED, f"no hub WebSocket endpoint at {args.url} (HTTP 404): check --url"
        )
    return CliError(
        ExitStatus.REFUSED, f"refused by the hub: {detail}: check --project, --types and --keys"
    )

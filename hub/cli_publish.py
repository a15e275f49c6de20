"""`hub publish`: publish one event, or a JSON-lines file (or stdin), through HubPublisher.

    hub publish --project demo note.added '{"text": "hello"}' --key note/1
    hub publish --project demo --file events.jsonl      # {"type", "data", "key"?, "id"?} a line
    producer | hub publish --project demo --file -

Prints one seq a line, in input order. Lines are sent in batches (HubPublisher), each with
an idempotency id (its own `id`, or one made up when the line is read), so retries never
publish twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
from typing import IO, TYPE_CHECKING, Any

import msgspec

from .cli_exit import CliError, ExitStatus
from .errors import EventValidationError
from .protocol import is_valid_project

if TYPE_CHECKING:  # httpx loads only when `hub publish` runs
    from .publisher import HubPublisher, PublishRejected

__all__ = ["add_publish_parser", "publish"]

_AHEAD = 5000  # lines read ahead of their seqs at most: memory stays bounded on stdin
# The longest line read: far above what a hub takes in one event (max_publish_body, 1 MiB by
# default), so a longer one is refused before the rest of it is read into memory.
MAX_LINE_BYTES = 16 * 1024 * 1024


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    data: msgspec.Raw = msgspec.Raw(b"null")
    key: str | None = None
    id: str | None = None


_line_decoder = msgspec.json.Decoder(_Line)


def add_publish_parser(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "publish",
        help="publish an event (or a JSON-lines file) over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("type", nargs="?", help="event type, e.g. note.added")
    parser.add_argument("data", nargs="?", help="event data as JSON (default null)")
    parser.add_argument("--key", help="entity key, e.g. note/1")
    parser.add_argument("--id", help="idempotency id (default: a random one)")
    parser.add_argument(
        "--file",
        metavar="PATH",
        help='JSON lines to publish, \'-\' for stdin: {"type", "data", "key"?, "id"?}',
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="hub base URL")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--token", help="token with the publish scope (or HUB_TOKEN)")
    parser.add_argument(
        "--retry-for",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="keep retrying an unreachable or unavailable hub this long (default 30)",
    )
    parser.set_defaults(func=publish)
    return parser


async def publish(args: argparse.Namespace) -> None:
    from .publisher import HubPublisher, PublishFailed, PublishRejected

    _check_arguments(args)
    token = args.token or os.environ.get("HUB_TOKEN") or None
    publisher = HubPublisher(
        args.url,
        args.project,
        token=token,
        retries=1000,  # bounded by time instead
        max_retry_time=args.retry_for,
    )
    try:
        async with publisher:
            if args.file is None:
                data = _json(args.data, "the data argument") if args.data is not None else None
                seq = await publisher.publish(args.type, data, key=args.key, id=args.id)
                print(seq, flush=True)
                return
            await _publish_lines(publisher, args.file)
    except EventValidationError as exc:
        raise CliError(ExitStatus.REFUSED, f"invalid event: {exc}") from None
    except PublishRejected as exc:
        raise _rejection(exc) from None
    except PublishFailed as exc:
        raise CliError(
            ExitStatus.UNREACHABLE, f"{exc}; is a hub running at {args.url}? (--retry-for)"
        ) from None


def _check_arguments(args: argparse.Namespace) -> None:
    if not is_valid_project(args.project):
        raise CliError(ExitStatus.USAGE, f"invalid --project {args.project[:80]!r}")
    if args.file is None and args.type is None:
        raise CliError(ExitStatus.USAGE, "give an event TYPE [DATA], or --file PATH ('-': stdin)")
    if args.file is not None and args.type is not None:
        raise CliError(ExitStatus.USAGE, "give either TYPE [DATA] or --file, not both")
    if not 0 <= args.retry_for <= 86400:
        raise CliError(ExitStatus.USAGE, "--retry-for must be 0..86400 seconds")


def _json(text: str, what: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise CliError(ExitStatus.USAGE, f"{what} is not JSON: {exc}") from None


def _open(path: str) -> IO[bytes]:
    try:
        return sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise CliError(ExitStatus.USAGE, f"cannot read --file {path}: {exc.strerror}") from None


async def _publish_lines(publisher: HubPublisher, path: str) -> None:
    """Queue each line as it is read (a slow producer's events go out at once), print the
    seqs in input order; at most `_AHEAD` lines wait for their seq."""
    pending: collections.deque[asyncio.Future[int]] = collections.deque()
    try:
        with _open(path) as stream:
            number = 0
            while True:
                raw = await _read_line(stream, path)
                if not raw:
                    break
                number += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise CliError(
                        ExitStatus.USAGE,
                        f"{path}, line {number}: longer than {MAX_LINE_BYTES} bytes",
                    )
                if raw.strip():
                    pending.append(publisher.enqueue(_encode_line(publisher, raw, path, number)))
                while pending and (pending[0].done() or len(pending) >= _AHEAD):
                    print(await pending.popleft(), flush=True)
        while pending:
            print(await pending.popleft(), flush=True)
    finally:
        for future in pending:  # after a failure: retrieve or drop the rest, quietly
            if future.done() and not future.cancelled():
                future.exception()
            else:
                future.cancel()


async def _read_line(stream: IO[bytes], path: str) -> bytes:
    """One line, cut after MAX_LINE_BYTES + 1 bytes (the caller refuses a cut line)."""
    if path == "-":  # stdin may be a slow pipe: read it off the loop, so batches go out
        return await asyncio.to_thread(stream.readline, MAX_LINE_BYTES + 1)
    return stream.readline(MAX_LINE_BYTES + 1)


def _encode_line(publisher: HubPublisher, raw: bytes, path: str, number: int) -> bytes:
    try:
        line = _line_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CliError(ExitStatus.USAGE, f"{path}, line {number}: {exc}") from None
    try:
        data = msgspec.json.decode(line.data)
        return publisher.encode(line.type, data, key=line.key, id=line.id)
    except EventValidationError as exc:
        raise CliError(ExitStatus.REFUSED, f"{path}, line {number}: invalid event: {exc}") from None


def _rejection(exc: PublishRejected) -> CliError:
    if exc.status == 401:
        hint = "pass a token with the publish scope (--token or HUB_TOKEN; `hub token`)"
        return CliError(ExitStatus.UNAUTHORIZED, f"{exc.message}: {hint}")
    if exc.status == 403:
        return CliError(ExitStatus.FORBIDDEN, f"{exc.message}: the token must allow publish here")
    return CliError(ExitStatus.REFUSED, f"refused by the hub ({exc.status}): {exc.message}")

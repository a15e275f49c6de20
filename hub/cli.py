"""The `hub` command: `serve`, `tail`, `token`, `publish`, and subcommands other packages
register.

Every failure a person can cause ends with one line on stderr and a status of
hub.cli_exit.ExitStatus (listed by `hub --help`); tracebacks only with `--debug`.

Packages add subcommands through the entry-point group `hub.commands`: each entry point is
`register(subparsers)`, which adds a parser and sets `func` (sync or async, taking the args).
That is how `hub demo` comes from `services/` without the hub depending on it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import msgspec

from .cli_exit import EXIT_STATUS_EPILOG, CliError, ExitStatus, debug_requested, run_command
from .cli_publish import add_publish_parser
from .cli_tail import add_tail_parser
from .config import Settings
from .event_loop import add_loop_argument
from .logs import configure_logging
from .wire.catalog_plugins import ENTRY_POINT_GROUP, catalog_specs

if TYPE_CHECKING:
    from .wire.catalog import EventCatalog

__all__ = [
    "add_catalog_arguments",
    "add_codegen_parser",
    "add_settings_arguments",
    "build_parser",
    "catalog_from_args",
    "log_catalogs",
    "main",
    "settings_from_args",
]

logger = logging.getLogger("hub")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a hub (serve, demo)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8080, help="port (0 picks a free one)")
    parser.add_argument(
        "--backend",
        help="memory:// (default), redis://HOST:PORT/DB or"
        " redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        dest="redis_cluster",
        help="the redis:// URL names one node of a Redis Cluster (or HUB_REDIS_CLUSTER=1)",
    )
    parser.add_argument(
        "--redis-key-prefix",
        dest="redis_key_prefix",
        help="prefix of every Redis key (default hub): several hubs can share one Redis",
    )
    parser.add_argument(
        "--redis-socket-timeout",
        type=float,
        dest="redis_socket_timeout_s",
        help="seconds a Redis reply may take before Redis counts as down (default 5)",
    )
    parser.add_argument(
        "--retention",
        type=int,
        dest="retention_events",
        help="events retained per project (default 10000)",
    )
    parser.add_argument(
        "--heartbeat", type=float, dest="heartbeat_s", help="ping interval in seconds (default 20)"
    )
    parser.add_argument("--max-connections", type=int, dest="max_connections")
    parser.add_argument(
        "--queue-events",
        type=int,
        dest="queue_events",
        help="per-connection outbound queue bound, in events",
    )
    parser.add_argument(
        "--strict-types",
        action="store_true",
        default=None,
        dest="strict_types",
        help="refuse event types that are not in the catalog",
    )
    parser.add_argument(
        "--secret",
        help="token secret(s), comma-separated for rotation; turns auth on (or HUB_SECRET; "
        "the environment keeps it out of `ps`)",
    )
    parser.add_argument(
        "--allowed-origins",
        dest="allowed_origins",
        help="browser origins allowed to open sockets, comma-separated, '*' patterns allowed "
        "(default: the hub's own host)",
    )
    parser.add_argument(
        "--allowed-hosts",
        dest="allowed_hosts",
        help="open hub on loopback: Host names to answer besides loopback ones, comma-separated "
        "(DNS rebinding guard; default: none)",
    )
    add_log_level_argument(parser, "info")
    add_loop_argument(parser)  # issue 16: uvloop by default
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        dest="log_format",
        help="text (default) or json: one object per line (or HUB_LOG_FORMAT)",
    )


def port_number(raw: str) -> int:
    """argparse type of --port: 0..65535."""
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0..65535 (0 picks a free one)")
    return port


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def add_log_level_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """`--log-level`: the level of every logger in the process, uvicorn's included."""
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.lower,
        choices=LOG_LEVELS,
        help=f"level of every logger in the process (default {default})",
    )


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to read more), status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(ExitStatus.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = (
        "backend",
        "redis_cluster",
        "redis_key_prefix",
        "redis_socket_timeout_s",
        "retention_events",
        "heartbeat_s",
        "max_connections",
        "queue_events",
        "strict_types",
        "log_format",
        "secret",
        "allowed_origins",
        "allowed_hosts",
    )
    return Settings.from_env(**{n: getattr(args, n, None) for n in names})


async def _serve(args: argparse.Namespace) -> None:
    from .app import create_app
    from .transports.server import serve

    try:
        settings = settings_from_args(args)
        catalog = catalog_from_args(args, settings)
        app = create_app(settings, catalog=catalog)
    except (ValueError, msgspec.ValidationError) as exc:
        raise CliError(ExitStatus.USAGE, str(exc)) from None
    log_catalogs(catalog, getattr(args, "catalogs", None))  # only once the settings hold
    await serve(app, args.host, args.port, settings)  # a taken port: CannotBind, status 3


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """`--catalog` / `--no-catalogs`: which event catalogs validate publishes (default: all
    installed ones, the `hub.catalogs` entry points)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--catalog",
        action="append",
        dest="catalogs",
        metavar="MODULE:ATTR",
        help="load this event catalog (an EventCatalog or a register(catalog) function) "
        "instead of the installed ones; repeatable",
    )
    choice.add_argument(
        "--no-catalogs",
        action="store_const",
        const=[],
        dest="catalogs",
        help="load no event catalog: payloads of every type pass unchecked",
    )


def catalog_from_args(args: argparse.Namespace, settings: Settings) -> EventCatalog:
    """The catalogs `--catalog`/`--no-catalogs` name (default: every installed one). A
    catalog that cannot load raises CatalogLoadError (a ValueError)."""
    from .wire.catalog import load_catalogs

    specs: list[str] | None = getattr(args, "catalogs", None)
    if specs is None:  # no flag: HUB_CATALOGS, else every installed catalog
        specs = catalog_specs(settings.catalogs)
    return load_catalogs(specs, strict=settings.strict_types)


def log_catalogs(catalog: EventCatalog, chosen: list[str] | None) -> None:
    """One log line per loaded catalog (or one saying none is)."""
    for name, types in catalog.sources.items():
        logger.info("event catalog %s: %d type%s", name, len(types), "" if len(types) == 1 else "s")
    if not catalog.sources:
        how = "none chosen" if chosen is not None else f"no {ENTRY_POINT_GROUP!r} entry point"
        logger.info("no event catalog loaded (%s): payloads are not validated", how)


def add_codegen_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """`hub codegen ts`: TypeScript declarations of the frames and of every catalog event."""
    codegen = sub.add_parser("codegen", help="generate client code from the hub's types")
    languages = codegen.add_subparsers(dest="language", required=True)
    ts = languages.add_parser(
        "ts",
        help="TypeScript declarations (.d.ts): the frames, and every event type's payload "
        "with HubEventMap",
        description="TypeScript declarations of the protocol's frames and close codes and, for "
        "every event type of the catalogs chosen as for `hub serve` (default: every installed "
        "one; --no-catalogs: none, an empty HubEventMap), its payload interface and HubEventMap.",
    )
    add_catalog_arguments(ts)
    ts.add_argument(
        "--protocol-only",
        action="store_true",
        help="only the frames and close codes (what hub/static/hub-protocol.d.ts holds)",
    )
    ts.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (left untouched when unchanged) instead of printing",
    )
    ts.add_argument(
        "--check",
        action="store_true",
        help="write nothing: exit 1 if FILE (-o) differs from what would be written (for CI)",
    )
    add_log_level_argument(ts, "warning")
    ts.set_defaults(func=_codegen_ts)


def _codegen_ts(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .codegen.command import is_current, typescript_for, write_if_changed

    try:
        if args.check and not args.output:
            raise ValueError("--check compares with a file: name it with -o FILE")
        text = typescript_for(args.catalogs, protocol_only=args.protocol_only)
        if args.check:
            if not is_current(Path(args.output), text):
                print(f"hub codegen ts: {args.output} is out of date", file=sys.stderr)
                sys.exit(1)
        elif args.output:
            write_if_changed(Path(args.output), text)
        else:
            sys.stdout.write(text)
    except (ValueError, OSError) as exc:
        raise CliError(ExitStatus.USAGE, str(exc)) from None


def _token(args: argparse.Namespace) -> None:
    import secrets as random_secrets

    from .auth import mint_token, parse_secrets

    if args.generate_secret:
        print(random_secrets.token_urlsafe(48))
        return
    try:
        secrets = parse_secrets(args.secret or os.environ.get("HUB_SECRET", ""))
    except ValueError as exc:
        raise CliError(ExitStatus.USAGE, str(exc)) from None
    if not secrets:
        raise CliError(ExitStatus.USAGE, "no secret: pass --secret or set HUB_SECRET")
    projects = _split(args.project)
    scopes = _split(args.scope) or ["subscribe"]
    if not projects:
        raise CliError(ExitStatus.USAGE, "name at least one --project (e.g. --project demo)")
    unknown = sorted(set(scopes) - {"subscribe", "publish"})
    if unknown:
        raise CliError(ExitStatus.USAGE, f"unknown scope {unknown[0]!r}: use subscribe, publish")
    if not 0 < args.ttl <= 10 * 365 * 24 * 3600:
        raise CliError(ExitStatus.USAGE, f"--ttl {args.ttl:g}: give 1 to 315360000 seconds")
    types = _split(args.types) if args.types else None
    # With several secrets (a rotation), the first is the current one: sign with it.
    print(
        mint_token(
            secrets[0],
            subject=args.sub,
            projects=projects,
            scopes=scopes,
            ttl_s=args.ttl,
            types=types,
            keys=args.keys.split(",") if args.keys else None,
        )
    )


def _split(values: list[str] | str | None) -> list[str]:
    """Repeated and comma-separated option values, flattened."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="hub",
        description="Real-time event hub",
        epilog=EXIT_STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_debug_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub")
    add_settings_arguments(serve)
    add_catalog_arguments(serve)
    serve.set_defaults(func=_serve)

    add_log_level_argument(add_tail_parser(sub), "warning")
    add_log_level_argument(add_publish_parser(sub), "warning")

    token = sub.add_parser("token", help="mint an access token (HS256 JWT)")
    token.add_argument("--secret", help="signing secret (default: the first of HUB_SECRET)")
    token.add_argument(
        "--project",
        action="append",
        help="project id or pattern such as 'acme-*' (repeat or comma-separate)",
    )
    token.add_argument(
        "--scope", action="append", help="subscribe and/or publish (default subscribe)"
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    token.add_argument("--sub", default="cli", help="subject: who the token is for")
    token.add_argument("--types", help="event types it may read, e.g. 'agent.*' (default all)")
    token.add_argument("--keys", help="key patterns it may read, e.g. 'ingest.job/*' (default all)")
    token.add_argument(
        "--generate-secret",
        action="store_true",
        help="print a new random secret instead (for --secret / HUB_SECRET)",
    )
    add_log_level_argument(token, "warning")
    token.set_defaults(func=_token)

    add_codegen_parser(sub)

    for entry in entry_points(group="hub.commands"):
        try:
            entry.load()(sub)
        except Exception as exc:  # a broken plugin must not take the core commands down
            print(f"hub: cannot load command {entry.name!r}: {exc}", file=sys.stderr)
    _finish_subparsers(sub)
    return parser


def _add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print tracebacks of failures (or HUB_DEBUG=1)",
    )


def _finish_subparsers(sub: argparse._SubParsersAction[Any]) -> None:
    """Every subcommand (plugins' too) takes --debug and lists the exit statuses."""
    for command in sub.choices.values():
        if "--debug" not in command._option_string_actions:
            _add_debug_argument(command)
        if command.epilog is None:
            command.epilog = EXIT_STATUS_EPILOG
            command.formatter_class = argparse.RawDescriptionHelpFormatter


def main(argv: list[str] | None = None) -> None:
    """Run `hub`; exit with a status of ExitStatus (`hub --help` lists them)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = debug_requested(argv)
    args = build_parser().parse_args(argv)
    try:
        configure_logging(str(args.log_level), getattr(args, "log_format", None))
    except ValueError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        sys.exit(ExitStatus.USAGE)
    prog = " ".join(["hub", args.command, *([args.language] if args.command == "codegen" else [])])
    status = run_command(args.func, args, prog=prog, debug=debug or getattr(args, "debug", False))
    if status != ExitStatus.OK:
        sys.exit(status)


if __name__ == "__main__":
    main()

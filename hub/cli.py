"""The `hub` command: `serve`, `tail`, and subcommands other packages register.

Packages add subcommands through the entry-point group `hub.commands`: each entry point is
`register(subparsers)`, which adds a parser and sets `func` (sync or async, taking the args).
That is how `hub demo` comes from `services/` without the hub depending on it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import msgspec

from .config import Settings
from .logs import configure_logging
from .wire.catalog_plugins import ENTRY_POINT_GROUP, catalog_specs

if TYPE_CHECKING:
    from .wire.catalog import EventCatalog

__all__ = [
    "add_catalog_arguments",
    "add_settings_arguments",
    "build_parser",
    "catalog_from_args",
    "main",
    "settings_from_args",
]

logger = logging.getLogger("hub")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a hub (serve, demo)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
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
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        dest="log_format",
        help="text (default) or json: one object per line (or HUB_LOG_FORMAT)",
    )


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
        app = create_app(settings, catalog=catalog_from_args(args, settings))
    except (ValueError, msgspec.ValidationError) as exc:
        print(f"hub: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        sys.exit(2)
    await serve(app, args.host, args.port, settings)


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
    """The catalogs `--catalog`/`--no-catalogs` name (default: every installed one), each
    listed in the log. A catalog that cannot load raises CatalogLoadError (a ValueError)."""
    from .wire.catalog import load_catalogs

    specs: list[str] | None = getattr(args, "catalogs", None)
    if specs is None:  # no flag: HUB_CATALOGS, else every installed catalog
        specs = catalog_specs(settings.catalogs)
    catalog = load_catalogs(specs, strict=settings.strict_types)
    for name, types in catalog.sources.items():
        logger.info("event catalog %s: %d type%s", name, len(types), "" if len(types) == 1 else "s")
    if not catalog.sources:
        how = "none chosen" if specs is not None else f"no {ENTRY_POINT_GROUP!r} entry point"
        logger.info("no event catalog loaded (%s): payloads are not validated", how)
    return catalog


def _token(args: argparse.Namespace) -> None:
    import secrets as random_secrets

    from .auth import mint_token, parse_secrets

    if args.generate_secret:
        print(random_secrets.token_urlsafe(48))
        return
    try:
        secrets = parse_secrets(args.secret or os.environ.get("HUB_SECRET", ""))
    except ValueError as exc:
        print(f"hub token: {exc}", file=sys.stderr)
        sys.exit(2)
    if not secrets:
        print("hub token: no secret: pass --secret or set HUB_SECRET", file=sys.stderr)
        sys.exit(2)
    projects = _split(args.project)
    scopes = _split(args.scope) or ["subscribe"]
    if not projects:
        print("hub token: name at least one --project", file=sys.stderr)
        sys.exit(2)
    unknown = sorted(set(scopes) - {"subscribe", "publish"})
    if unknown:
        print(f"hub token: unknown scope {unknown[0]!r} (subscribe, publish)", file=sys.stderr)
        sys.exit(2)
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
        )
    )


def _split(values: list[str] | str | None) -> list[str]:
    """Repeated and comma-separated option values, flattened."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


async def _tail(args: argparse.Namespace) -> None:
    from .client import HubClient
    from .protocol import EventFrame, GapFrame, SnapshotFrame

    types = args.types.split(",") if args.types else None
    async with HubClient(
        args.url, args.project, types=types, since=args.since, token=args.token
    ) as client:
        async for frame in client:
            if isinstance(frame, EventFrame):
                data = msgspec.json.encode(frame.data).decode()
                print(f"{frame.seq:>7} {frame.type:<28} {frame.key or '-':<34} {data}", flush=True)
            elif isinstance(frame, GapFrame):
                print(
                    f"--- gap ({frame.reason}): since {frame.since}, oldest {frame.oldest}",
                    flush=True,
                )
            elif isinstance(frame, SnapshotFrame):
                print(f"--- snapshot at head {frame.head}: {len(frame.events)} keys", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="Real-time event hub")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub")
    add_settings_arguments(serve)
    add_catalog_arguments(serve)
    serve.set_defaults(func=_serve)

    tail = sub.add_parser("tail", help="print a project's events as they arrive")
    tail.add_argument("--url", default="http://127.0.0.1:8080", help="hub base URL")
    tail.add_argument("--project", default="demo")
    tail.add_argument("--types", help="comma-separated type patterns, e.g. 'agent.*,*.failed'")
    tail.add_argument("--since", type=int, help="replay everything after this seq first")
    tail.add_argument("--token", help="access token (or HUB_TOKEN)")
    tail.add_argument("--log-level", default="warning")
    tail.set_defaults(func=_tail)

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
    token.add_argument(
        "--generate-secret",
        action="store_true",
        help="print a new random secret instead (for --secret / HUB_SECRET)",
    )
    token.add_argument("--log-level", default="warning")
    token.set_defaults(func=_token)

    for entry in entry_points(group="hub.commands"):
        try:
            entry.load()(sub)
        except Exception as exc:  # a broken plugin must not take the core commands down
            print(f"hub: cannot load command {entry.name!r}: {exc}", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(str(args.log_level), getattr(args, "log_format", None))
    func: Any = args.func
    try:
        if inspect.iscoroutinefunction(func):
            asyncio.run(func(args))
        else:
            func(args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""Sentinel URLs: `redis+sentinel://[user:password@]host:port[,host:port...]/service[?db=N]`.

Every `host:port` is a Sentinel (port 26379 if left out; IPv6 in brackets); `service` is the
name the Sentinels monitor (`sentinel monitor <service> ...`). `user:password` authenticate
to the Redis primary, not to the Sentinels; those take `sentinel_username` and
`sentinel_password` query parameters when they need auth. `db` is the database number.

The client asks the Sentinels for the primary's address on every new connection, and drops
a connection that finds itself on a demoted primary (READONLY), so the hub follows a
failover without a restart: commands fail (BackendUnavailable, 503) until the Sentinels have
promoted a replica, then reconnect to it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["SENTINEL_SCHEME", "SentinelURL", "is_sentinel_url", "parse_sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel://"
MAX_SENTINELS = 16
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
_QUERY_KEYS = frozenset({"db", "sentinel_username", "sentinel_password"})
_GRAMMAR = "redis+sentinel://[user:password@]host:port[,host:port...]/service[?db=N]"


class SentinelURL:
    """A parsed Sentinel URL (the password never shows in repr)."""

    __slots__ = (
        "db",
        "password",
        "sentinel_password",
        "sentinel_username",
        "sentinels",
        "service",
        "username",
    )

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        service: str,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.sentinels = sentinels
        self.service = service
        self.db = db
        self.username = username
        self.password = password
        self.sentinel_username = sentinel_username
        self.sentinel_password = sentinel_password

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelURL({hosts}/{self.service}?db={self.db})"


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def _bad(url: str, why: str) -> ValueError:
    shown = url if "@" not in url else SENTINEL_SCHEME + "***@" + url.rsplit("@", 1)[1]
    return ValueError(f"bad Sentinel URL {shown[:200]!r}: {why} (expected {_GRAMMAR})")


def _host_port(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise _bad(url, f"bad IPv6 address in {item!r}")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise _bad(url, f"unexpected {rest!r} after ]")
    else:
        host, _, port_text = item.partition(":")
        if not _HOST.fullmatch(host):
            raise _bad(url, f"bad Sentinel host {host[:80]!r}")
    if not port_text:
        return host, 26379
    if not _is_number(port_text, 5) or not 1 <= int(port_text) <= 65535:
        raise _bad(url, f"bad port {port_text[:20]!r}: 1-65535")
    return host, int(port_text)


def _is_number(text: str, digits: int) -> bool:
    """ASCII digits only: str.isdigit() also takes other scripts' digits ('١٢' is 12)."""
    return text.isascii() and text.isdigit() and len(text) <= digits


def _unquote(url: str, text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:  # else read as U+FFFD: a wrong password, failing much later
        raise _bad(url, "a %-escape in user:password is not UTF-8") from None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a `redis+sentinel://` URL; ValueError says what is wrong with a bad one."""
    if not is_sentinel_url(url):
        raise _bad(url, f"must start with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME) :]
    rest, _, query = rest.partition("?")
    authority, slash, service = rest.partition("/")
    if not slash or not _SERVICE.fullmatch(service):
        raise _bad(url, "a service name is required after '/': 1-64 of A-Z a-z 0-9 . _ -")
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, has_password, secret = userinfo.partition(":")
        username = _unquote(url, user) or None
        password = _unquote(url, secret) if has_password else None
    items = authority.split(",")
    if not authority or any(not i for i in items):
        raise _bad(url, "at least one Sentinel host:port is required, separated by ','")
    if len(items) > MAX_SENTINELS:
        raise _bad(url, f"at most {MAX_SENTINELS} Sentinels")
    parsed = SentinelURL([_host_port(url, i) for i in items], service, 0, username, password)
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=10, errors="strict")
    except UnicodeDecodeError:
        raise _bad(url, "a %-escape in the query is not UTF-8") from None
    except ValueError:
        raise _bad(url, "at most 10 query parameters") from None
    if len({key for key, _ in fields}) < len(fields):
        raise _bad(url, "a query parameter is given twice")
    for key, value in fields:
        if key not in _QUERY_KEYS:
            known = ", ".join(sorted(_QUERY_KEYS))
            raise _bad(url, f"unknown parameter {key[:40]!r}: only {known}")
        if key == "db":
            if not _is_number(value, 5):
                raise _bad(url, f"db must be a number 0-99999, not {value[:20]!r}")
            parsed.db = int(value)
        elif key == "sentinel_username":
            parsed.sentinel_username = value or None
        else:
            parsed.sentinel_password = value or None
    return parsed


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel-managed connections in a pool that waits for a free connection (up to its
    timeout) rather than failing at once, as the hub's pool does without Sentinel."""


class _SentinelRedis(Redis):
    """Closing the client closes its connections to the Sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            pool = self.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                await pool.sentinel_manager.aclose()


def sentinel_client(url: str, max_connections: int, options: dict[str, Any]) -> Redis:
    """A client of the primary the Sentinels of `url` name, following failovers."""
    parsed = parse_sentinel_url(url)
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    if parsed.sentinel_username:
        sentinel_options["username"] = parsed.sentinel_username
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(
        parsed.service,
        redis_class=_SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=options.get("socket_timeout"),
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return client

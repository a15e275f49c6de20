"""Which browser origins and `Host` names may reach the hub.

`OriginPolicy` stops cross-site WebSocket hijacking (and, on an open hub, any cross-site
request); `HostPolicy` stops DNS rebinding on an open hub bound to loopback. Both read their
lists from settings (`allowed_origins`, `allowed_hosts`; `*` patterns, `*` alone: any).
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

from ..errors import HostRefused, OriginRefused
from ..wire.patterns import StarPatterns

__all__ = ["HostPolicy", "HostRefused", "OriginPolicy", "OriginRefused", "is_loopback_host"]


_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class OriginPolicy:
    """Which browser origins may open sockets (cross-site WebSocket hijacking).

    A request without `Origin` is not from a browser page and passes. Otherwise, by default the
    origin's host and port must be the request's own `Host`; an explicit list (`*` patterns
    allowed, e.g. `https://*.example.com`) replaces that; `*` alone allows every origin.
    """

    def __init__(self, allowed: str = "") -> None:
        entries = [e.strip().lower().rstrip("/") for e in allowed.split(",") if e.strip()]
        self.any = "*" in entries
        self.allowlist = StarPatterns(entries) if entries else None

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        origin = origin.strip().lower().rstrip("/")
        if self.allowlist is not None:
            return self.allowlist.matches(origin)
        return host is not None and _same_host(origin, host.strip().lower())


def _same_host(origin: str, host: str) -> bool:
    try:
        parsed = urlsplit(origin)
        served = urlsplit("//" + host)
        default = _DEFAULT_PORTS.get(parsed.scheme)
        if default is None or not parsed.hostname or not served.hostname:
            return False
        origin_port = parsed.port or default
        host_port = served.port or default
    except ValueError:  # a port that is not a number
        return False
    return parsed.hostname == served.hostname and origin_port == host_port


def is_loopback_host(hostname: str) -> bool:
    """`localhost` (and `*.localhost`, which browsers resolve to loopback), 127.0.0.0/8, ::1."""
    name = hostname.strip().lower().rstrip(".").strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host_header: str) -> str | None:
    """The name in a `Host` header without its port, or None when it does not parse."""
    try:
        parsed = urlsplit("//" + host_header.strip())
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parsed.hostname or None


class HostPolicy:
    """Which `Host` names a request that arrived on loopback may carry: loopback names and
    addresses, plus `allowed_hosts` (comma-separated names, `*` patterns; `*` alone: any)."""

    def __init__(self, allowed: str = "") -> None:
        entries = [e.strip().lower().rstrip(".") for e in allowed.split(",") if e.strip()]
        self.any = "*" in entries
        self.extra = StarPatterns(entries)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None or self.any:  # HTTP/1.0 without Host: not a browser
            return True
        name = _hostname(host_header)
        if name is None:
            return False
        return is_loopback_host(name) or self.extra.matches(name.rstrip("."))

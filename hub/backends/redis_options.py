"""Settings -> the TLS keyword arguments of redis-py clients, and the ACL the hub needs.

Every client the hub builds (RedisStore's command pool, the reader's connection, a
RedisPublisher's) takes `tls_options(url, settings)`, so the scheme and the files are checked
in one place. ACL credentials travel in the URL (`rediss://user:password@host:port/db`,
percent-encoded); redis-py sends `AUTH user password` on every new connection.

`acl_rule(prefix)` is the least the hub needs from an ACL user (docs/operations.md, "TLS and
ACL users"); tests/test_redis_tls.py runs the whole hub with exactly this rule.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings

__all__ = ["HUB_COMMANDS", "acl_rule", "tls_options"]

# What the hub sends itself (connection set-up, the reader, health checks, the script) and
# what its one Lua script calls (hub/backends/redis_scripts.py): ACL checks both.
HUB_COMMANDS = (
    # connection: AUTH needs no permission; redis-py names its connections (its CLIENT SETINFO,
    # Redis 7.2+, may be refused: redis-py ignores that)
    "ping", "client|setname",
    # the script, loaded once per server (EVALSHA; SCRIPT LOAD after a NOSCRIPT reply)
    "evalsha", "script|load",
    # the reader: XREAD over the watched streams, its wake-up stream (XADD, PEXPIRE, DEL),
    # epochs and heads (GET, XRANGE), whether its Redis is a detached replica (ROLE)
    "xread", "xadd", "del", "get", "role",
    # publishes with redis_wait_replicas > 0: WAIT for the replicas
    "wait",
    # inside the script; INFO replication tells a promoted replica (a failover) apart
    "info", "set", "pexpire", "pttl", "time", "xrange", "xrevrange", "xlen", "xtrim",
    "hset", "hget", "hgetall", "hdel", "hexists", "hincrby", "hstrlen", "zadd", "zcard",
    "zpopmin",
)  # fmt: skip


def acl_rule(prefix: str = "hub", user: str = "hub", password: str = "<password>") -> str:
    """The ACL line (`ACL SETUSER` arguments, or a users.acl line) for a hub user."""
    commands = " ".join(f"+{c}" for c in HUB_COMMANDS)
    return f"user {user} on >{password} resetkeys ~{prefix}:* resetchannels -@all {commands}"


def tls_options(url: str, settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments for the TLS settings (none for a `redis://` URL).

    A CA file, certificate or key given for a plain URL is refused rather than ignored:
    whoever set them meant the link to be encrypted.
    """
    s = settings
    files = {
        "redis_tls_ca_file": s.redis_tls_ca_file,
        "redis_tls_cert_file": s.redis_tls_cert_file,
        "redis_tls_key_file": s.redis_tls_key_file,
    }
    if urlsplit(url).scheme != "rediss":
        given = [name for name, path in files.items() if path]
        if given and urlsplit(url).scheme == "redis+sentinel":
            raise ValueError(
                f"{', '.join(given)} set with a redis+sentinel:// URL: TLS to Sentinel-managed "
                "Redis is not supported (docs/operations.md), unset them"
            )
        if given:
            raise ValueError(
                f"{', '.join(given)} set but the Redis URL is not rediss:// (TLS): use "
                "rediss://host:port/db, or unset them"
            )
        return {}
    for name, path in files.items():
        if path and not os.path.isfile(path):
            raise ValueError(f"{name}: no such file: {path}")
    if s.redis_tls_key_file and not s.redis_tls_cert_file:
        raise ValueError("redis_tls_key_file needs redis_tls_cert_file (the client certificate)")
    options: dict[str, Any] = {
        "ssl_cert_reqs": "required",  # the server's certificate is always verified
        "ssl_check_hostname": s.redis_tls_check_hostname,
    }
    if s.redis_tls_ca_file:
        options["ssl_ca_certs"] = s.redis_tls_ca_file  # else: the system's CA store
    if s.redis_tls_cert_file:
        options["ssl_certfile"] = s.redis_tls_cert_file
        options["ssl_keyfile"] = s.redis_tls_key_file or None  # None: the key is in the cert file
    return options

"""The hub's own fan-out counters, read from its /metrics (hub target only).

Sampled before publishing and after delivery, their difference says how the events were
framed: frames built, flushes, flushes that lingered (issue 16), deliveries per frame.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

__all__ = ["COUNTERS", "fanout_counters", "fanout_summary", "http_get"]

COUNTERS: Final = {
    "frames_built": "hub_frames_built",
    "flushes": "hub_fanout_flushes",
    "lingered_flushes": "hub_fanout_lingered_flushes",
    "delivered": "hub_events_delivered",
}
_LINE: Final = re.compile(rb"^([a-z_]+?)(?:_total)? ([0-9.e+]+)$", re.M)


async def http_get(host: str, port: int, path: str, timeout: float = 10.0) -> bytes:
    """The body of a GET on a fresh connection (`Connection: close`), bounded in time."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
        )
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return response.partition(b"\r\n\r\n")[2]


async def fanout_counters(host: str, port: int) -> dict[str, float] | None:
    """The COUNTERS now, or None when the server has no such metrics (the baseline). A hub
    from before the linger has no `lingered_flushes`: it reads as 0."""
    try:
        body = await http_get(host, port, "/metrics")
    except (OSError, TimeoutError):
        return None
    values = {m.group(1).decode(): float(m.group(2)) for m in _LINE.finditer(body)}
    values.setdefault(COUNTERS["lingered_flushes"], 0.0)
    if not all(name in values for name in COUNTERS.values()):
        return None
    return {key: values[name] for key, name in COUNTERS.items()}


def fanout_summary(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float | int] | None:
    if before is None or after is None:
        return None
    diff = {key: int(after[key] - before[key]) for key in COUNTERS}
    frames = diff["frames_built"]
    return {**diff, "deliveries_per_frame": round(diff["delivered"] / frames, 1) if frames else 0}

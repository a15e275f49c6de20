"""The fan-out flush bounds its matching work per loop tick: past `slice_s` it sends what it
matched, yields, and continues on the next tick, taking the projects in turn."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hub.backends.base import StoredEvent
from hub.config import Settings
from hub.core import Hub
from hub.fanout.connection import Connection
from hub.fanout.manager import ConnectionManager
from hub.wire.catalog import EventCatalog
from hub.wire.topics import TypeFilter

from .support import wait_for


class _Backend:
    async def watch(self, project: str) -> None:
        pass

    async def unwatch(self, project: str) -> None:
        pass


class _RecordingSink:
    """A socket that always takes frames; every write goes to one shared log."""

    direct = True
    framed = False

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log

    def writable(self) -> bool:
        return True

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        self.log.append((self.name, payload))

    async def send(self, payload: bytes) -> None:
        self.write(payload)

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed with {code}: {reason}")

    def start(self, connection: Any) -> None:
        pass

    async def stop(self) -> None:
        pass


def _event(seq: int, type_: str) -> StoredEvent:
    return StoredEvent(seq, type_, None, int(time.time() * 1000), b'{"seq":%d}' % seq)


async def _subscriber(
    manager: ConnectionManager, project: str, patterns: list[str], log: list[tuple[str, bytes]]
) -> Connection:
    name = f"{project}:{','.join(patterns)}"
    connection = Connection(
        project,
        _RecordingSink(name, log),  # type: ignore[arg-type]
        TypeFilter(patterns),
        queue_events=1000,
        queue_bytes=1 << 20,
        max_frame_bytes=1 << 20,
    )
    await manager.add(connection)
    connection.go_live(0)
    return connection


async def test_a_flush_over_its_slice_yields_and_takes_projects_in_turn() -> None:
    manager = ConnectionManager(_Backend())  # type: ignore[arg-type]
    manager.slice_s = 0.0  # every event is over the slice: one event per project per tick
    log: list[tuple[str, bytes]] = []
    await _subscriber(manager, "heavy", ["a.*"], log)
    await _subscriber(manager, "heavy", ["*.b"], log)
    await _subscriber(manager, "light", ["*"], log)
    manager.dispatch("heavy", "e1", [_event(seq, f"a.t{seq}.b") for seq in range(1, 6)])
    manager.dispatch("light", "e1", [_event(1, "x.y")])
    await wait_for(lambda: len(log) == 11, what="every frame")
    # the light project's event went out before the heavy project's second one
    heavy_a = [i for i, (name, _) in enumerate(log) if name == "heavy:a.*"]
    light = [i for i, (name, _) in enumerate(log) if name == "light:*"]
    assert light[0] < heavy_a[1]
    for name in ("heavy:a.*", "heavy:*.b"):
        payloads = [p for n, p in log if n == name]
        assert payloads == [b'{"seq":%d}' % seq for seq in range(1, 6)]  # in order, all
    assert manager.stats.flush_slices >= 4


async def test_a_flush_within_its_slice_sends_one_frame_per_group() -> None:
    manager = ConnectionManager(_Backend())  # type: ignore[arg-type]
    log: list[tuple[str, bytes]] = []
    await _subscriber(manager, "p", ["a.*"], log)
    manager.dispatch("p", "e1", [_event(seq, "a.b") for seq in range(1, 4)])
    await wait_for(lambda: len(log) == 1, what="one frame")
    assert log == [("p:a.*", b'[{"seq":1},{"seq":2},{"seq":3}]')]
    assert manager.stats.flush_slices == 0


def test_the_slice_comes_from_settings_and_is_bounded() -> None:
    with pytest.raises(ValueError, match="fanout_slice_ms"):
        Settings(fanout_slice_ms=0)
    with pytest.raises(ValueError, match="fanout_slice_ms"):
        Settings(fanout_slice_ms=5000)
    settings = Settings.from_env({"HUB_FANOUT_SLICE_MS": "5"})
    hub = Hub(settings, _Backend(), EventCatalog())  # type: ignore[arg-type]
    assert hub.manager.slice_s == 0.005

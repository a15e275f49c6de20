"""Scenarios: their parameters, defaults and the timed actions that make them differ.

Every scenario is the same skeleton (connect N subscribers, publish a bounded number of events,
wait for delivery, check every seq); a scenario picks defaults and adds actions at fixed
offsets from the start of publishing (drop everyone, stall some readers).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from hub.wire.patterns import compile_pattern

from .publisher import EVENT_TYPE

__all__ = ["PUBLISHERS", "SCENARIOS", "Action", "RunParams", "actions", "default_params"]

SCENARIOS: Final = ("fanout", "projects", "reconnect-storm", "slow-consumer", "soak")
PUBLISHERS: Final = ("http", "inprocess")

_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    # N subscribers of one project; events as fast as the hub acknowledges them.
    "fanout": {"connections": 1000, "projects": 1, "rate": 0.0, "duration": 60.0},
    # P projects sharing N subscribers (N/P each); requests round-robin over the projects.
    "projects": {"connections": 1000, "projects": 10, "rate": 0.0, "duration": 60.0},
    # A steady stream; at storm_at every subscriber drops and resumes with since, jittered.
    "reconnect-storm": {
        "connections": 1000,
        "projects": 1,
        "rate": 200.0,
        "duration": 10.0,
        "storm_at": 3.0,
        "jitter": 1.0,
    },
    # S subscribers stop reading for `stall` seconds while the others are measured.
    "slow-consumer": {
        "connections": 1000,
        "projects": 1,
        "rate": 200.0,
        "duration": 10.0,
        "slow": 10,
        "stall": 5.0,
    },
    # Steady load for a bounded time: watch latency and hub RSS drift.
    "soak": {"connections": 1000, "projects": 1, "rate": 100.0, "duration": 60.0},
}


@dataclass(frozen=True)
class RunParams:
    scenario: str
    connections: int
    projects: int
    events: int
    rate: float  # events/s over all projects; 0 = as fast as acknowledged
    duration: float  # publishing stops after this many seconds even if events remain
    batch: int = 1  # most events per publish request
    publishers: int = 1  # publish requests in flight
    pad: int = 64  # padding bytes in each event's data
    workers: int = 0  # 0 = one per core
    slow: int = 0
    stall: float = 0.0
    storm_at: float = 0.0
    jitter: float = 0.0  # seconds: reconnect delays are uniform in [0, jitter]
    types: str | None = None  # subscription filter sent by every subscriber
    connect_concurrency: int = 200  # handshakes in flight per worker
    connect_timeout: float = 15.0
    drain_timeout: float = 60.0  # after the last publish, how long delivery may take
    read_interval: float = 0.5  # ms between a worker's socket drains (see ReadMux)
    publisher: str = "http"  # "inprocess": the server publishes itself (loadtest/inprocess.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _default_events(connections: int, rate: float, duration: float) -> int:
    if rate > 0:
        return max(1, int(rate * duration))
    return max(200, min(5000, 1_000_000 // max(1, connections)))  # about a million deliveries


def default_params(scenario: str, **overrides: Any) -> RunParams:
    """The scenario's defaults with every non-None override applied."""
    if scenario not in _DEFAULTS:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = {**_DEFAULTS[scenario], **given}
    if "events" not in values:
        values["events"] = _default_events(
            values["connections"], values["rate"], values["duration"]
        )
    if not values.get("workers"):
        values["workers"] = os.cpu_count() or 1
    params = RunParams(scenario=scenario, **values)
    return _validated(params)


def _validated(p: RunParams) -> RunParams:
    if p.connections < 1 or p.projects < 1 or p.events < 1:
        raise ValueError("connections, projects and events must be at least 1")
    if p.projects > p.connections:
        raise ValueError("need at least one subscriber per project")
    if p.slow >= p.connections:
        raise ValueError("slow subscribers must leave some measured ones")
    if p.types is not None and not any(
        compile_pattern(t.strip()).matches(EVENT_TYPE) for t in p.types.split(",")
    ):
        # every bench event must match, or the filtered-out seqs would count as missing
        raise ValueError(f"--types {p.types!r} does not match the bench events ({EVENT_TYPE})")
    if p.publisher not in PUBLISHERS:
        raise ValueError(f"publisher must be one of {', '.join(PUBLISHERS)}")
    if p.publisher == "inprocess" and (p.batch != 1 or p.publishers != 1):
        raise ValueError("the in-process publisher publishes one event at a time, in one loop")
    if p.batch < 1 or p.publishers < 1 or p.duration <= 0:
        raise ValueError("batch and publishers must be >= 1 and duration > 0")
    return replace(p, workers=max(1, min(p.workers, p.connections)))


@dataclass(frozen=True)
class Action:
    at: float  # seconds after publishing starts
    command: str  # worker command
    payload: dict[str, Any]


def actions(p: RunParams) -> list[Action]:
    if p.scenario == "reconnect-storm":
        return [Action(p.storm_at, "drop", {"jitter_s": p.jitter})]
    if p.scenario == "slow-consumer" and p.slow:
        return [Action(0.0, "stall", {}), Action(p.stall, "unstall", {})]
    return []

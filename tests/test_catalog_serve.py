"""`hub serve` as a new user runs it: every installed catalog validates publishes (the services'
14 types here), `--catalog MODULE:ATTR` and `--no-catalogs` choose, and a catalog that cannot
load stops the hub with one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from services.events import EVENT_TYPES

from .edge_support import REPO, hub_process

MALFORMED_JOB = {
    "type": "ingest.job.updated",
    "key": "ingest.job/j17",
    "data": {"job_id": "j17", "source": "upload", "progress": "half"},
}
GOOD_JOB = {**MALFORMED_JOB, "data": {"job_id": "j17", "source": "upload", "progress": 0.5}}


async def post(port: int, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        return await http.post("/v1/projects/p1/events", json=body)


async def schema_types(port: int) -> list[str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        response = await http.get("/v1/schema")
    assert response.status_code == 200, response.text
    return sorted(response.json()["events"])


def serve_and_exit(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a `hub serve` expected to stop at once."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--port", "0", *args],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


async def test_plain_hub_serve_validates_the_installed_service_types() -> None:
    async with hub_process() as hub:
        response = await post(hub.port, MALFORMED_JOB)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_event"
        assert "`$.data.progress`" in error["message"], error
        assert (await post(hub.port, GOOD_JOB)).status_code == 202
        assert (await post(hub.port, {"type": "team.thing.done", "data": 1})).status_code == 202
        assert await schema_types(hub.port) == sorted(EVENT_TYPES)
        assert len(EVENT_TYPES) == 14
        log = hub.stderr
    assert "event catalog demo: 14 types" in log, log
    assert "Traceback" not in log, log


async def test_no_catalogs_accepts_any_payload() -> None:
    async with hub_process("--no-catalogs") as hub:
        assert (await post(hub.port, MALFORMED_JOB)).status_code == 202
        assert await schema_types(hub.port) == []
        log = hub.stderr
    assert "no event catalog loaded (none chosen)" in log, log
    assert "event catalog demo" not in log, log


async def test_catalog_flags_load_exactly_the_named_catalogs() -> None:
    args = ("--catalog", "tests.catalog_fixtures:register_geo")
    async with hub_process(*args, "--catalog", "tests.catalog_fixtures:geo_catalog") as hub:
        assert await schema_types(hub.port) == ["geo.point.created", "geo.point.moved"]
        assert (await post(hub.port, MALFORMED_JOB)).status_code == 202  # not loaded
        off_the_map = {"type": "geo.point.moved", "data": {"lat": 91, "lon": 0}}
        response = await post(hub.port, off_the_map)
        assert response.status_code == 422 and "`$.data.lat`" in response.text, response.text
        log = hub.stderr
    assert "event catalog tests.catalog_fixtures:register_geo: 2 types" in log, log
    assert "event catalog tests.catalog_fixtures:geo_catalog: 1 type" in log, log


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module:register", "ModuleNotFoundError: No module named 'no_such_module'"),
        ("tests.catalog_fixtures:register_broken", "RuntimeError: the catalog's own bug"),
        ("not a spec", "expected MODULE:ATTR"),
    ],
)
def test_a_catalog_that_cannot_load_stops_serve_with_one_line(spec: str, fragment: str) -> None:
    result = serve_and_exit("--catalog", spec)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hub serve: ") and fragment in lines[0], lines


def test_catalog_and_no_catalogs_exclude_each_other() -> None:
    result = serve_and_exit("--no-catalogs", "--catalog", "services.events:register_events")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


async def test_hub_catalogs_chooses_like_the_flags_and_a_flag_wins() -> None:
    env = {"HUB_CATALOGS": "tests.catalog_fixtures:register_geo"}
    async with hub_process(env=env) as hub:
        assert await schema_types(hub.port) == ["geo.point.created", "geo.point.moved"]
    async with hub_process("--no-catalogs", env=env) as hub:
        assert await schema_types(hub.port) == []
    async with hub_process(env={"HUB_CATALOGS": "none"}) as hub:
        assert await schema_types(hub.port) == []
    result = serve_and_exit(env={"HUB_CATALOGS": "tests.catalog_fixtures:nope"})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "has no attribute nope" in result.stderr

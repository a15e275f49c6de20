"""Event catalogs as plugins: `load_catalogs` finds the `hub.catalogs` entry points (the
services declare theirs in pyproject.toml) or loads `MODULE:ATTR` specs, and every publish path
given no catalog (Hub, create_app, RedisPublisher) validates with what is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.backends.memory import MemoryBackend
from hub.config import Settings
from hub.core import Hub
from hub.errors import EventValidationError
from hub.redis_publisher import RedisPublisher
from hub.wire.catalog import CatalogLoadError, EventCatalog, load_catalogs
from hub.wire.catalog_plugins import ENTRY_POINT_GROUP
from services.events import EVENT_TYPES, IngestJob

from .catalog_fixtures import GeoPoint

FIXTURES = "tests.catalog_fixtures"
MALFORMED_JOB = {"job_id": "j17", "source": "upload", "progress": "half"}


def install_distribution(root: Path, name: str, entry_points: dict[str, str]) -> None:
    """A distribution's metadata as pip writes it (a .dist-info folder), under `root`."""
    dist_info = root / f"{name}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{n} = {value}" for n, value in entry_points.items()]
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines))


def test_the_installed_services_catalog_is_loaded_by_default() -> None:
    catalog = load_catalogs(None)
    assert catalog.types() == sorted(EVENT_TYPES)
    assert len(catalog.types()) == 14
    assert catalog.sources == {"demo": tuple(sorted(EVENT_TYPES))}
    assert catalog.payload_type("ingest.job.updated") is IngestJob
    assert not catalog.strict and load_catalogs(None, strict=True).strict


def test_no_specs_is_the_empty_catalog() -> None:
    catalog = load_catalogs([])
    assert catalog.types() == [] and catalog.sources == {}


def test_a_spec_may_name_a_catalog_or_a_register_function() -> None:
    catalog = load_catalogs([f"{FIXTURES}:geo_catalog", f"{FIXTURES}:register_geo"])
    assert catalog.types() == ["geo.point.created", "geo.point.moved"]
    assert catalog.sources == {
        f"{FIXTURES}:geo_catalog": ("geo.point.moved",),
        f"{FIXTURES}:register_geo": ("geo.point.created", "geo.point.moved"),
    }
    assert catalog.payload_type("geo.point.moved") is GeoPoint


def test_the_same_type_twice_with_the_same_payload_is_one_registration() -> None:
    spec = "services.events:register_events"
    catalog = load_catalogs([spec, spec])
    assert len(catalog.types()) == 14
    catalog.register("ingest.job.updated", IngestJob)  # again: still no conflict


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("no_such_module:register", ["'no_such_module:register'", "ModuleNotFoundError"]),
        (f"{FIXTURES}:no_such_name", ["has no attribute no_such_name"]),
        (f"{FIXTURES}:NOT_A_CATALOG", ["is a dict, not an EventCatalog"]),
        (f"{FIXTURES}:GeoPoint", ["is a StructMeta, not an EventCatalog"]),
        (f"{FIXTURES}:register_broken", ["RuntimeError: the catalog's own bug with a second"]),
        (f"{FIXTURES}:register_conflicting_job", ["registers ingest.job.updated as JobProgress"]),
        ("services.events", ["expected MODULE:ATTR"]),
        ("services.events:", ["expected MODULE:ATTR"]),
        ("../etc/passwd:x", ["expected MODULE:ATTR"]),
        ("a:b" + ".c" * 500, ["expected MODULE:ATTR"]),
        ("", ["expected MODULE:ATTR"]),
    ],
)
def test_a_catalog_that_cannot_load_is_a_one_line_error(spec: str, fragments: list[str]) -> None:
    specs = ["services.events:register_events", spec]
    with pytest.raises(CatalogLoadError) as caught:
        load_catalogs(specs)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(caught.value, ValueError)  # what `hub serve` reports and exits 2 on


def test_a_conflict_names_both_catalogs() -> None:
    with pytest.raises(CatalogLoadError) as caught:
        load_catalogs(["services.events:register_events", f"{FIXTURES}:register_conflicting_job"])
    assert str(caught.value) == (
        f"event catalog '{FIXTURES}:register_conflicting_job' registers ingest.job.updated as "
        "JobProgress, but catalog 'services.events:register_events' registered it as IngestJob"
    )


def test_every_installed_distribution_adds_its_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(tmp_path, "geo_plugin", {"geo": f"{FIXTURES}:register_geo"})
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog = load_catalogs(None)
    assert list(catalog.sources) == ["demo", "geo"]
    assert catalog.sources["geo"] == ("geo.point.created", "geo.point.moved")
    assert len(catalog.types()) == 16


def test_a_broken_installed_catalog_fails_loudly_rather_than_being_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(tmp_path, "broken_plugin", {"broken": f"{FIXTURES}:register_broken"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CatalogLoadError, match=r"^cannot load event catalog 'broken' \(entry"):
        load_catalogs(None)


async def test_a_hub_given_no_catalog_validates_the_installed_types() -> None:
    settings = Settings()
    hub = Hub(settings, MemoryBackend(settings))
    with pytest.raises(EventValidationError, match=r"`\$\.data\.progress`"):
        await hub.publish("p1", "ingest.job.updated", MALFORMED_JOB, key="ingest.job/j17")
    assert await hub.publish("p1", "control.tick.sent", {"any": "thing"}) == 1
    explicit = Hub(settings, MemoryBackend(settings), EventCatalog())
    assert explicit.catalog.types() == []  # a given catalog is used as it is


async def test_a_redis_publisher_given_no_catalog_validates_before_any_connection() -> None:
    # Port 1: nothing listens; the refusal comes from the catalog, before Redis is asked.
    async with RedisPublisher("redis://127.0.0.1:1/0", retries=0) as publisher:
        with pytest.raises(EventValidationError) as caught:
            await publisher.publish("p1", "ingest.job.updated", MALFORMED_JOB)
        assert "`$.data.progress`" in caught.value.message
        assert publisher.attempts == 0

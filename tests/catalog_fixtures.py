"""Event catalogs that tests load by spec (`tests.catalog_fixtures:ATTR`), in-process and in
`hub serve --catalog` subprocesses (which run from the repository root)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from hub.wire.catalog import EventCatalog

__all__ = [
    "NOT_A_CATALOG",
    "GeoPoint",
    "JobProgress",
    "geo_catalog",
    "register_broken",
    "register_conflicting_job",
    "register_geo",
]


class GeoPoint(msgspec.Struct):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class JobProgress(msgspec.Struct):
    """Not the services' IngestJob: registering it as ingest.job.updated conflicts."""

    progress: float


geo_catalog = EventCatalog()
geo_catalog.register("geo.point.moved", GeoPoint)


def register_geo(catalog: EventCatalog) -> None:
    catalog.register("geo.point.moved", GeoPoint)
    catalog.register("geo.point.created", GeoPoint)


def register_conflicting_job(catalog: EventCatalog) -> None:
    catalog.register("ingest.job.updated", JobProgress)


def register_broken(catalog: EventCatalog) -> None:
    raise RuntimeError("the catalog's own bug\nwith a second line")


NOT_A_CATALOG = {"geo.point.moved": GeoPoint}

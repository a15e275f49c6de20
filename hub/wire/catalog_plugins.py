"""Event catalogs as plugins: the `hub.catalogs` entry-point group and `MODULE:ATTR` specs.

A package declares its catalog in its pyproject.toml:

    [project.entry-points."hub.catalogs"]
    billing = "billing.events:register_events"

and the entry point loads to an `EventCatalog` or to a callable `register(catalog)` that
registers its types. This module finds and imports them; `hub.wire.catalog.load_catalogs`
merges them into one catalog (it imports this module, never the other way round).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import entry_points
from typing import Any, Final, NamedTuple

__all__ = [
    "ENTRY_POINT_GROUP",
    "CatalogLoadError",
    "CatalogPlugin",
    "find_catalog_plugins",
    "resolve_spec",
]

ENTRY_POINT_GROUP: Final = "hub.catalogs"

_NAME: Final = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC: Final = re.compile(rf"({_NAME}(?:\.{_NAME})*):({_NAME}(?:\.{_NAME})*)")
_MAX_SPEC: Final = 300  # a spec comes from the command line; nothing longer is a real one


class CatalogLoadError(ValueError):
    """A catalog that cannot be loaded: a bad spec, an import error, a conflicting type.

    The message is one line (`hub serve` prints it as its only output before exiting).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @classmethod
    def caused_by(cls, what: str, exc: BaseException) -> CatalogLoadError:
        return cls(f"{what}: {type(exc).__name__}: {exc}")


def resolve_spec(spec: str) -> Any:
    """The object a `MODULE:ATTR` spec names (ATTR may be dotted), imported."""
    match = _SPEC.fullmatch(spec) if len(spec) <= _MAX_SPEC else None
    if match is None:
        raise CatalogLoadError(
            f"bad catalog spec {spec[:80]!r}: expected MODULE:ATTR, "
            "e.g. services.events:register_events"
        )
    module_name, attr_path = match.groups()
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises at import
        raise CatalogLoadError.caused_by(f"cannot load event catalog {spec!r}", exc) from None
    for attr in attr_path.split("."):
        if not hasattr(found, attr):
            raise CatalogLoadError(
                f"cannot load event catalog {spec!r}: module {module_name} has no attribute "
                f"{attr_path}"
            )
        found = getattr(found, attr)
    return found


class CatalogPlugin(NamedTuple):
    name: str  # the entry point's name, or the spec itself
    origin: str  # where it comes from, for messages: "entry point pkg.mod:attr" or the spec
    load: Callable[[], object]  # imports it: an EventCatalog or a register(catalog) callable

    def describe(self) -> str:
        return repr(self.name) if self.name == self.origin else f"{self.name!r} ({self.origin})"


def find_catalog_plugins(specs: Sequence[str] | None) -> list[CatalogPlugin]:
    """The catalogs to load: every installed one (None), or exactly `specs` (MODULE:ATTR)."""
    if specs is not None:
        return [CatalogPlugin(spec, spec, partial(resolve_spec, spec)) for spec in specs]
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value))
    return [CatalogPlugin(e.name, f"entry point {e.value}", e.load) for e in found]

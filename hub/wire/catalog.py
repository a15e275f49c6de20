"""Registry of typed events: validation on every publish path and JSON Schema for clients.

The hub core registers no domain types itself; services call `register()` with their
msgspec Structs, or declare a catalog plugin (`hub.catalogs` entry points, see
hub.wire.catalog_plugins) that `load_catalogs` finds. Unknown-but-well-formed types pass
through unless `strict` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import EventValidationError
from ..protocol import is_valid_event_type
from .catalog_plugins import CatalogLoadError, CatalogPlugin, find_catalog_plugins
from .json_rules import JsonRuleError, encode_value

__all__ = ["CatalogLoadError", "EventCatalog", "load_catalogs"]


class EventCatalog:
    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._payloads: dict[str, type[msgspec.Struct]] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        # Catalog name -> the event types it brought, in load order (filled by load_catalogs).
        self.sources: dict[str, tuple[str, ...]] = {}

    def register(self, event_type: str, payload: type[msgspec.Struct]) -> None:
        if not is_valid_event_type(event_type):
            raise ValueError(f"invalid event type name {event_type!r}")
        known = self._payloads.get(event_type)
        if known is not None and known is not payload:
            raise ValueError(f"{event_type} is already registered with {known.__name__}")
        self._payloads[event_type] = payload
        self._decoders[event_type] = msgspec.json.Decoder(payload)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._payloads

    def types(self) -> list[str]:
        return sorted(self._payloads)

    def payload_type(self, event_type: str) -> type[msgspec.Struct] | None:
        return self._payloads.get(event_type)

    def check_type(self, event_type: str, path: str = "$") -> None:
        if not is_valid_event_type(event_type):
            raise EventValidationError(
                f"invalid event type {event_type[:80]!r}: expected dot-separated lowercase "
                f"names such as 'ingest.job.updated' - at `{path}.type`"
            )
        if self.strict and event_type not in self._payloads:
            raise EventValidationError(
                f"unknown event type {event_type!r} (the hub runs with strict types) "
                f"- at `{path}.type`"
            )

    def validate_json(self, event_type: str, data: bytes, path: str = "$.data") -> None:
        """Check already-encoded `data` against its registered type, if any."""
        self.check_type(event_type, path.removesuffix(".data"))
        decoder = self._decoders.get(event_type)
        if decoder is None:
            return
        try:
            decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise EventValidationError(f"invalid {event_type}: {_rebase(str(exc), path)}") from None

    def encode_data(self, event_type: str, data: Any, *, validate: bool = True) -> bytes:
        """Encode in-process `data` (a Struct, a dict, ...) and validate it; return JSON bytes.

        With `validate=False` the caller runs `validate_json` itself (the hub checks the input
        rules first, so that no decoder sees deep data).
        """
        self.check_type(event_type)
        payload = self._payloads.get(event_type)
        if payload is not None and isinstance(data, msgspec.Struct):
            if not isinstance(data, payload):
                raise EventValidationError(
                    f"invalid {event_type}: expected {payload.__name__}, "
                    f"got {type(data).__name__} - at `$.data`"
                )
        try:
            encoded = encode_value(data, path="$.data")
        except JsonRuleError as exc:
            raise EventValidationError(f"invalid {event_type}: {exc.message}") from None
        # Structs are validated on construction only for types; decode checks constraints too.
        if validate:
            self.validate_json(event_type, encoded)
        return encoded

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of every registered payload, keyed by event type."""
        names = self.types()
        schemas, components = msgspec.json.schema_components(
            [self._payloads[n] for n in names], ref_template="#/$defs/{name}"
        )
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "hub event catalog",
            "events": dict(zip(names, schemas, strict=True)),
            "$defs": components,
        }


def load_catalogs(specs: Sequence[str] | None = None, *, strict: bool = False) -> EventCatalog:
    """One catalog with the types of every installed catalog (`specs` None: the `hub.catalogs`
    entry points), or of exactly the `MODULE:ATTR` specs given (`[]`: the empty catalog).

    A catalog that cannot be loaded raises CatalogLoadError (one line), never is skipped: a hub
    that silently dropped one would accept the malformed events it exists to refuse.
    """
    catalog = EventCatalog(strict=strict)
    for plugin in find_catalog_plugins(specs):
        part = EventCatalog()
        try:
            _apply(plugin, part)
        except CatalogLoadError:
            raise
        except Exception as exc:  # importing or running a plugin can raise anything
            what = f"cannot load event catalog {plugin.describe()}"
            raise CatalogLoadError.caused_by(what, exc) from None
        for event_type in part.types():
            payload = part._payloads[event_type]
            known = catalog._payloads.get(event_type)
            if known is not None and known is not payload:
                owner = next(n for n, types in catalog.sources.items() if event_type in types)
                raise CatalogLoadError(
                    f"event catalog {plugin.describe()} registers {event_type} "
                    f"as {payload.__name__}, but catalog {owner!r} registered it as "
                    f"{known.__name__}"
                )
            catalog.register(event_type, payload)
        catalog.sources[plugin.name] = tuple(part.types())
    return catalog


def _apply(plugin: CatalogPlugin, catalog: EventCatalog) -> None:
    """Register what one plugin holds into `catalog`."""
    found = plugin.load()
    if isinstance(found, EventCatalog):
        for event_type, payload in found._payloads.items():
            catalog.register(event_type, payload)
    elif callable(found) and not isinstance(found, type):
        found(catalog)
    else:
        raise CatalogLoadError(
            f"event catalog {plugin.describe()} is a {type(found).__name__}, "
            "not an EventCatalog or a register(catalog) callable"
        )


def _rebase(message: str, path: str) -> str:
    """Put msgspec's `$...` path under the event's data path, e.g. `$.data.progress`."""
    if "`$" not in message:  # an error about data itself, e.g. a missing required field
        return f"{message} - at `{path}`"
    return message.replace("`$", f"`{path}", 1)

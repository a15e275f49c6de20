"""What a publish must satisfy before it reaches a backend: pure checks on settings and catalog.

Every publish path runs these same checks: the HTTP route and in-process service code (through
`Hub`), a worker publishing straight to Redis (`RedisPublisher`), and the services' test
recorder. No I/O and no hub object: a `PublishValidator` holds only `Settings` and an
`EventCatalog`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..backends.base import PublishRequest
from ..config import Settings
from ..errors import BadRequest, EventValidationError, PayloadTooLarge
from ..protocol import is_valid_project
from .catalog import EventCatalog
from .json_rules import JsonRuleError, check_json

__all__ = ["PublishValidator", "check_project"]

_NO_DATA = msgspec.Raw(b"null")


def check_project(project: str) -> None:
    if not is_valid_project(project):
        raise BadRequest(
            f"invalid project id {project[:80]!r}: use letters, digits, '.', '_' and '-' "
            "(1-128 characters, starting with a letter or digit)"
        )


class PublishValidator:
    """The envelope limits, the input rules and the catalog's types, for one settings/catalog."""

    def __init__(self, settings: Settings, catalog: EventCatalog) -> None:
        self.settings = settings
        self.catalog = catalog

    def check_batch(self, project: str, requests: Sequence[PublishRequest]) -> None:
        """A publish of `requests` to `project`: paths name `$[i]` when there are several."""
        check_project(project)
        for i, request in enumerate(requests):
            self.check_request(request, f"$[{i}]" if len(requests) > 1 else "$")

    def check_request(self, request: PublishRequest, path: str = "$") -> None:
        """Validate one publish request: envelope, input rules, and for known types its data."""
        self.check_envelope(request, path)
        self.check_data(request.data, f"{path}.data")
        self.catalog.validate_json(request.type, request.data, path=f"{path}.data")

    def check_data(self, data: bytes | msgspec.Raw, path: str = "$.data") -> None:
        """The input rules (hub/wire/json_rules.py) and the size limit, on encoded event data."""
        limit = self.settings.max_event_bytes
        if len(data) > limit:
            raise PayloadTooLarge(
                f"data of {len(data)} bytes is over the {limit} byte limit - at `{path}`"
            )
        try:
            check_json(data, self.settings.max_json_depth, path)
        except JsonRuleError as exc:
            raise EventValidationError(f"invalid event: {exc.message}") from None

    def check_envelope(self, request: PublishRequest, path: str = "$") -> None:
        settings = self.settings
        if len(request.type) > settings.max_type_length:
            raise EventValidationError(
                f"type of {len(request.type)} characters is over the "
                f"{settings.max_type_length} character limit - at `{path}.type`"
            )
        if request.key is not None and not 0 < len(request.key) <= settings.max_key_length:
            raise EventValidationError(
                f"key must be 1-{settings.max_key_length} characters - at `{path}.key`"
            )
        if request.id is not None and not 0 < len(request.id) <= settings.max_id_length:
            raise EventValidationError(
                f"id must be 1-{settings.max_id_length} characters - at `{path}.id`"
            )
        for name, text in (("key", request.key), ("id", request.id)):
            if text is not None and not _is_unicode(text):
                raise EventValidationError(f"{name} holds a lone surrogate - at `{path}.{name}`")

    def prepare(
        self, type: str, data: Any = None, *, key: str | None = None, id: str | None = None
    ) -> PublishRequest:
        """Encode in-process `data` and check the event exactly as an HTTP publish is checked."""
        self.check_envelope(PublishRequest(type, _NO_DATA, key, id))  # cheap checks first
        encoded = self.catalog.encode_data(type, data, validate=False)
        request = PublishRequest(type, msgspec.Raw(encoded), key, id)
        self.check_request(request)
        return request


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: no client could decode it
        return False
    return True

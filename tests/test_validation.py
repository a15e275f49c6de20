"""The publish checks as a pure module: the same rules for the hub, a worker's RedisPublisher
and the services' test recorder, with no hub object and no I/O."""

from __future__ import annotations

import msgspec
import pytest

from hub.backends.base import PublishRequest
from hub.config import Settings
from hub.errors import BadRequest, EventValidationError, PayloadTooLarge
from hub.redis_publisher import RedisPublisher
from hub.wire.catalog import EventCatalog
from hub.wire.validation import PublishValidator, check_project
from services.testing import RecordingEmitter


class Point(msgspec.Struct):
    x: int


def validator(**settings: int) -> PublishValidator:
    catalog = EventCatalog()
    catalog.register("geo.point", Point)
    return PublishValidator(Settings(**settings), catalog)  # type: ignore[arg-type]


def request(type: str = "geo.point", data: bytes = b'{"x":1}', **kw: str) -> PublishRequest:
    return PublishRequest(type, msgspec.Raw(data), kw.get("key"), kw.get("id"))


def test_a_project_id_is_checked_alone() -> None:
    check_project("acme-1")
    with pytest.raises(BadRequest, match="invalid project id"):
        check_project("no spaces")


def test_a_batch_names_the_bad_request_by_its_index() -> None:
    checks = validator(max_key_length=8)
    checks.check_batch("p1", [request(), request(key="k")])
    with pytest.raises(EventValidationError, match=r"`\$\[1\]\.key`"):
        checks.check_batch("p1", [request(), request(key="k" * 9)])
    with pytest.raises(EventValidationError, match=r"`\$\[0\]\.data\.x`"):
        checks.check_batch("p1", [request(data=b'{"x":"one"}'), request()])
    with pytest.raises(BadRequest, match="invalid project id"):
        checks.check_batch("", [request()])


def test_a_single_request_is_named_by_the_root_path() -> None:
    with pytest.raises(EventValidationError, match=r"`\$\.key`"):
        validator(max_key_length=8).check_batch("p1", [request(key="k" * 9)])


def test_data_over_the_limit_is_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match=r"over the 16 byte limit - at `\$\.data`"):
        validator(max_event_bytes=16).check_request(request(data=b'{"x":' + b"1" * 20 + b"}"))


def test_prepare_encodes_in_process_data_and_checks_it_as_a_publish() -> None:
    checks = validator()
    prepared = checks.prepare("geo.point", Point(3), key="k1", id="i1")
    assert (prepared.type, bytes(prepared.data), prepared.key, prepared.id) == (
        "geo.point",
        b'{"x":3}',
        "k1",
        "i1",
    )
    with pytest.raises(EventValidationError, match=r"lone surrogate - at `\$\.id`"):
        checks.prepare("geo.point", {"x": 1}, id="\ud800")
    with pytest.raises(EventValidationError, match=r"\$\.data\.x"):
        checks.prepare("geo.point", {"x": "one"})


async def test_a_redis_publisher_refuses_bad_events_before_any_attempt() -> None:
    # Nothing listens on port 1: a refusal that reached the backend would be a retry loop.
    async with RedisPublisher("redis://127.0.0.1:1/0", retries=0) as publisher:
        with pytest.raises(BadRequest, match="invalid project id"):
            await publisher.publish("bad project", "a.b", {})
        with pytest.raises(EventValidationError, match=r"`\$\[1\]\.key`"):
            await publisher.publish_requests("p1", [request("a.b"), request("a.b", key="")])
        assert publisher.attempts == 0


async def test_the_services_recorder_refuses_what_the_hub_refuses() -> None:
    recorder = RecordingEmitter()
    data = {"job_id": "j1", "source": "upload", "progress": 2.0}
    with pytest.raises(EventValidationError, match=r"\$\.data\.progress"):
        await recorder.emit("ingest.job.updated", data, key="ingest.job/j1")
    with pytest.raises(EventValidationError, match=r"`\$\.key`"):
        await recorder.emit("ingest.job.updated", {**data, "progress": 0.5}, key="k" * 257)
    assert recorder.events == []
    assert await recorder.emit("ingest.job.updated", {**data, "progress": 0.5}) == 1

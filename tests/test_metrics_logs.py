"""Structured JSON logs (`--log-format json`): one parseable object per line."""

from __future__ import annotations

import logging
import sys

import msgspec
import pytest

from hub.config import Settings
from hub.logs import JsonFormatter, configure_logging


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("hub.sse", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_has_time_level_logger_message_and_extras() -> None:
    line = JsonFormatter().format(record("closed %d of %s", 3, "p1", project="p1", n=3))
    assert "\n" not in line
    entry = msgspec.json.decode(line)
    assert entry["level"] == "warning" and entry["logger"] == "hub.sse"
    assert entry["message"] == "closed 3 of p1"
    assert entry["project"] == "p1" and entry["n"] == 3
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]


def test_exceptions_and_odd_values_still_make_one_json_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("failed", thing=object())
        rec.exc_info = sys.exc_info()
    entry = msgspec.json.decode(JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exc"]
    assert entry["thing"].startswith("<object object")


def test_configure_logging_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        logging.getLogger("hub.test").info("hello %s", "there", extra={"project": "p1"})
        entry = msgspec.json.decode(capsys.readouterr().err.strip().splitlines()[-1])
        assert entry["message"] == "hello there" and entry["project"] == "p1"
        configure_logging("info", "text")
        logging.getLogger("hub.test").info("plain")
        assert capsys.readouterr().err.strip().endswith("INFO hub.test: plain")
        with pytest.raises(ValueError):
            configure_logging("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_settings_refuse_an_unknown_log_format() -> None:
    assert Settings(log_format="json").log_format == "json"
    with pytest.raises(ValueError):
        Settings(log_format="yaml")

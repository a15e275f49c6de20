"""Logs as text (default) or as one JSON object per line (`--log-format json`).

A JSON line has `ts` (UTC, ISO 8601 with milliseconds), `level`, `logger`, `message`, any
`extra={...}` fields the call passed, and `exc` with the traceback when there is one. With
JSON, uvicorn's own loggers are left unconfigured (`log_config=None`) so they reach the root
handler and come out as JSON too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Final, Literal

import msgspec

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "configure_logging"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)
_encoder: Final = msgspec.json.Encoder(enc_hook=repr)  # anything odd in `extra`: its repr


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_text:  # already formatted (and redacted: hub.auth.redaction)
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _encoder.encode(entry).decode()


def configure_logging(level: str = "info", log_format: str | None = None) -> None:
    """Set the root logger's one handler (stderr) to the level and format asked for
    (default: `HUB_LOG_FORMAT`, else text)."""
    log_format = log_format or os.environ.get("HUB_LOG_FORMAT") or "text"
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))

"""Which model the agent uses, and the bounds of an OpenAI-compatible model server.

`hub demo --model NAME --model-url URL` (or `HUB_MODEL`, `HUB_MODEL_URL`) selects a model
served by any OpenAI-compatible server (OpenAI, vLLM, llama.cpp's server, Ollama, LM Studio,
LiteLLM); without them the agent uses the offline `ExtractiveModel`. The API key comes only
from `HUB_MODEL_API_KEY` (never a command-line argument: `ps` would show it), and no repr,
log line, event or error message contains it. Every other field is `HUB_MODEL_<FIELD>`
(`HUB_MODEL_IDLE_TIMEOUT_S=10`); services/README.md, "Agent on a model server", lists them.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from services.model import Model

log = logging.getLogger(__name__)

__all__ = ["EXTRACTIVE", "ModelSettings", "add_model_arguments", "model_from_args"]

EXTRACTIVE = "extractive"  # `--model extractive`: the offline default
MiB = 1024 * 1024


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = ""  # `http://host:port` or `.../v1`: requests go to `.../v1/chat/completions`
    model: str = ""  # the served model's name, sent as `model`
    api_key: str = ""  # sent as `Authorization: Bearer ...` when set; never logged
    # Timeouts, seconds: each fails the run with a `Timeout` error naming it.
    connect_timeout_s: float = 10.0  # TCP (and TLS) connection to the server
    first_token_timeout_s: float = 60.0  # request sent -> first content token (incl. headers)
    idle_timeout_s: float = 30.0  # between two reads once tokens flow
    total_timeout_s: float = 600.0  # a whole answer, retries included
    # Retries of 429 and 5xx answers, only before any token streamed.
    max_attempts: int = 3
    retry_backoff_s: float = 0.5  # backoff * 2**(attempt-1), unless Retry-After says
    max_retry_wait_s: float = 30.0  # a longer Retry-After fails the run at once
    # Bounds of one answer (beyond: the answer ends with finish reason `length`).
    max_answer_tokens: int = 2_048  # sent as `max_tokens`, and enforced on the deltas
    max_answer_chars: int = 64_000
    # Bounds of what the server may send (beyond: the run fails).
    max_line_bytes: int = 1 * MiB  # one SSE line, i.e. one chunk
    max_response_bytes: int = 16 * MiB  # the whole stream, every chunk included
    max_error_body_bytes: int = 64 * 1024  # an error answer's body, read for its message

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, str):
                continue
            if not value > 0 or value == float("inf"):  # NaN fails `> 0`
                raise ValueError(f"{_variable(field.name)} must be a finite number > 0")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("HUB_MODEL_URL must start with http:// or https://")

    def __repr__(self) -> str:
        # The key must not reach a log line through a repr.
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f != "api_key"}
        key = "set" if self.api_key else "unset"
        fields = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"ModelSettings(api_key=<{key}>, {fields})"

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"

    @property
    def shown_endpoint(self) -> str:
        """The endpoint without any user:password@ part: what logs may show."""
        scheme, _, rest = self.endpoint.partition("://")
        host, slash, path = rest.partition("/")
        return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ModelSettings:
        """`HUB_MODEL` (the name), `HUB_MODEL_URL`, `HUB_MODEL_API_KEY` and
        `HUB_MODEL_<FIELD>` for the bounds; then keyword overrides (None: not given)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            raw = environ.get(_variable(field.name))
            if raw is not None:
                values[field.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            # Name the variable and the expected type, never the value (it may be the key).
            message = re.sub(r"`\$\.(\w+)`", lambda m: _variable(m.group(1)), str(exc))
            raise ValueError(f"model settings: {message}") from None


def _variable(field: str) -> str:
    return "HUB_MODEL" if field == "model" else f"HUB_MODEL_{field.upper()}"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="the agent's model: 'extractive' (offline, the default) or the name of a model "
        "served by an OpenAI-compatible server at --model-url (env HUB_MODEL)",
    )
    parser.add_argument(
        "--model-url",
        default=None,
        help="base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8080 "
        "(env HUB_MODEL_URL; the API key only from HUB_MODEL_API_KEY)",
    )


def model_from_args(args: argparse.Namespace, *, token_delay: float = 0.0) -> Model:
    """The model `--model`/`--model-url` (or the environment) select."""
    from hub.cli_exit import CliError, ExitStatus
    from services.model import ExtractiveModel
    from services.openai_model import OpenAIChatModel

    try:
        settings = ModelSettings.from_env(model=args.model, url=args.model_url)
    except ValueError as exc:  # `hub demo` prints the one line and exits 2
        raise CliError(ExitStatus.USAGE, str(exc)) from None
    if settings.model in ("", EXTRACTIVE, ExtractiveModel.name):
        return ExtractiveModel(token_delay=token_delay)
    if not settings.url:
        raise CliError(
            ExitStatus.USAGE, f"--model {settings.model} needs --model-url (or HUB_MODEL_URL)"
        )
    log.info("the agent answers with %s at %s", settings.model, settings.shown_endpoint)
    return OpenAIChatModel(settings)

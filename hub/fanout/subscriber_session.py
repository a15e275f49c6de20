"""One subscriber's client ops, with no I/O: text in, replies or a close out.

Holds the rules the WebSocket endpoint applies to what a client sends: the per-socket op
rate (an `OpBudget`, whose bucket runs on an injected clock), the subscribe/unsubscribe
merge rules, and the error budget. The endpoint moves bytes; a test drives this directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..config import Settings
from ..errors import BadRequest
from ..protocol import (
    CloseCode,
    ErrorFrame,
    FrameError,
    PingOp,
    PongFrame,
    SubscribedFrame,
    SubscribeOp,
    decode_client_frame,
)
from ..wire.keys import validate_key_patterns
from ..wire.topics import validate_pattern
from .outbound import ControlMessage

if TYPE_CHECKING:
    from ..limits import OpBudget  # a type only: limits.py loads starlette

__all__ = ["Close", "SubscriberSession", "merge_patterns"]


class Close(NamedTuple):
    """End the connection: one error frame saying why, then this close code."""

    code: int
    error_code: str
    message: str
    retryable: bool = False


class SubscriberSession:
    """The op rules of one subscriber. `apply` is called with the new type patterns and key
    patterns (None: no key filter) whenever a subscribe or unsubscribe may change them (the
    endpoint sets the connection's filter)."""

    def __init__(
        self,
        settings: Settings,
        patterns: Sequence[str],
        *,
        keys: Sequence[str] | None = None,
        explicit_types: bool,
        op_budget: OpBudget | None,
        apply: Callable[[list[str], list[str] | None], None],
    ) -> None:
        self._settings = settings
        self.patterns = list(patterns)
        # Without a key filter the connection takes every key; the first `keys` it subscribes
        # to narrows it to those (as a first subscribe replaces the implicit `*` of types).
        self.keys = None if keys is None else list(keys)
        # A client that connected without `types` got `*`; its first subscribe says what it
        # actually wants.
        self._implicit_default = not explicit_types
        self._op_budget = op_budget
        self._apply = apply
        self.errors = 0

    def receive_binary(self) -> Close:
        return Close(CloseCode.UNSUPPORTED_DATA, "binary_frame", "binary frames are not accepted")

    def receive(self, text: str) -> ControlMessage | Close:
        """The reply to one client text frame, or the close it earns."""
        settings = self._settings
        if self._op_budget is not None and not self._op_budget.try_take():
            return Close(
                CloseCode.RATE_LIMITED,
                "rate_limited",
                f"more than {settings.client_ops_rate:g} frames per second; slow down",
                retryable=True,
            )
        try:
            return self._apply_op(text)
        except (FrameError, BadRequest) as exc:
            self.errors += 1
            if self.errors > settings.error_budget:
                return Close(
                    CloseCode.POLICY_VIOLATION,
                    "too_many_errors",
                    f"more than {settings.error_budget} invalid frames",
                )
            frame_id = exc.frame_id if isinstance(exc, FrameError) else _id_of(text)
            return ErrorFrame(code=exc.code, message=exc.message, id=frame_id, retryable=False)

    def _apply_op(self, text: str) -> ControlMessage:
        settings = self._settings
        op = decode_client_frame(text, settings.max_json_depth)
        if isinstance(op, PingOp):
            return PongFrame(op.id)
        patterns, keys = self.patterns, self.keys
        if op.types is not None:
            new = [validate_pattern(p, settings.max_pattern_length) for p in op.types]
            if isinstance(op, SubscribeOp):
                base = [] if self._implicit_default else self.patterns
                patterns = merge_patterns(base, new)
                if len(patterns) > settings.max_patterns:
                    raise BadRequest(
                        f"too many type patterns: {len(patterns)} > {settings.max_patterns}"
                    )
            else:
                patterns = [p for p in self.patterns if p not in new]
        if op.keys is not None:
            if not op.keys and isinstance(op, SubscribeOp):
                # Would narrow a connection that takes every key to none: a subscribe adds.
                raise BadRequest("subscribe with an empty `keys` list: give a key pattern")
            new_keys = validate_key_patterns(
                op.keys, settings.max_patterns, settings.max_key_length
            )
            if isinstance(op, SubscribeOp):
                keys = merge_patterns(self.keys or [], new_keys)
                if len(keys) > settings.max_patterns:
                    raise BadRequest(
                        f"too many key patterns: {len(keys)} > {settings.max_patterns}"
                    )
            elif self.keys is not None:
                # Down to none, the filter stays and takes nothing: unsubscribing never
                # widens a subscription to every key.
                keys = [k for k in self.keys if k not in new_keys]
        self.patterns, self.keys = patterns, keys
        if op.types is not None:
            self._implicit_default = False
        self._apply(patterns, keys)
        return SubscribedFrame(op.id, patterns, keys)


def merge_patterns(held: list[str], added: list[str]) -> list[str]:
    """`held`, then those of `added` not held yet, in the order given."""
    return held + [p for p in added if p not in held]


def _id_of(text: str) -> int | str | None:
    try:
        op = decode_client_frame(text)
    except FrameError as exc:
        return exc.frame_id
    return op.id

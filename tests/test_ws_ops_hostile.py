"""Client ops built to surprise the op rules (hub.fanout.subscriber_session), driven without
I/O: each gets an error frame and leaves the subscription as it was."""

from __future__ import annotations

from hub.config import Settings
from hub.fanout.subscriber_session import SubscriberSession
from hub.protocol import ErrorFrame, SubscribedFrame


def session(applied: list[tuple[list[str], list[str] | None]]) -> SubscriberSession:
    return SubscriberSession(
        Settings(),
        ["*"],
        keys=None,
        explicit_types=False,
        op_budget=None,
        apply=lambda types, keys: applied.append((types, keys)),
    )


def test_a_subscribe_with_no_keys_does_not_narrow_every_key_to_none() -> None:
    """A connection without `keys` takes every key; `subscribe` adds patterns. An empty
    `keys` list used to turn its filter into one that takes nothing (as the `keys=`
    parameter, an empty list is refused rather than read either way)."""
    applied: list[tuple[list[str], list[str] | None]] = []
    ops = session(applied)
    reply = ops.receive('{"op":"subscribe","id":1,"keys":[]}')
    assert isinstance(reply, ErrorFrame), reply
    assert reply.code == "bad_request" and reply.id == 1 and "empty `keys`" in reply.message
    assert applied == [] and ops.keys is None  # still every key
    # with types beside it, the whole op is refused: nothing half-applied
    reply = ops.receive('{"op":"subscribe","id":2,"types":["a.*"],"keys":[]}')
    assert isinstance(reply, ErrorFrame) and reply.id == 2
    assert applied == [] and ops.patterns == ["*"]
    # a real key still narrows, and an empty unsubscribe removes nothing
    assert ops.receive('{"op":"subscribe","id":3,"keys":["k1"]}') == SubscribedFrame(
        3, ["*"], ["k1"]
    )
    assert ops.receive('{"op":"unsubscribe","id":4,"keys":[]}') == SubscribedFrame(4, ["*"], ["k1"])

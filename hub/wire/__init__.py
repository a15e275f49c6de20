"""The wire format and its pure rules: framing, JSON rules, type patterns, subscription
parameters, publish validation and the event catalog. No I/O and no web stack (see
docs/architecture.md); the frame types themselves are `hub.protocol`."""

__all__: list[str] = []  # the modules are the API: import from them

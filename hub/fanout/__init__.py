"""Fan-out: the connection manager, per-connection queues, the filter index, the two sink
shapes (push and pull) and their framers, and the subscriber session's rules. It moves typed
frames to sinks and awaits no socket (see docs/architecture.md)."""

__all__: list[str] = []  # the modules are the API: import from them

"""Transports: the WebSocket, SSE and HTTP endpoints, the uvicorn adapter behind the direct
write path, and the server that runs them (see docs/architecture.md)."""

__all__: list[str] = []  # the modules are the API: import from them

"""Run the hub's ASGI app on uvicorn with the fast WebSocket protocol (if it loads, see
hub.transports.fast_path) and a clean drain.

On SIGTERM/SIGINT every subscriber first gets an error frame and close 1001 (reconnect with
since), then uvicorn stops; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import sys
from collections.abc import Generator
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..auth import install_log_redaction
from ..config import Settings
from ..core import Hub
from ..event_loop import loop_name
from ..wire.frames import error_body
from .accept_errors import AcceptErrorLog, BackoffListener
from .fast_path import websocket_protocol
from .gc_tuning import tune_gc

__all__ = [
    "CannotBind",
    "HeadLimitedConnection",
    "HeadTimeoutH11Protocol",
    "HubServer",
    "head_timeout_protocol",
    "listen_socket",
    "raise_open_files_limit",
    "request_head_size",
    "serve",
    "uvicorn_config",
    "uvicorn_log_level",
]

logger = logging.getLogger("hub")

OPEN_MODE_NOTICE = (
    "hub: WARNING: no secret: the hub is OPEN to every client that can reach it (browser pages "
    "of other sites and other Host names are refused). Set HUB_SECRET or --secret."
)


def uvicorn_config(
    app: Starlette, host: str, port: int, settings: Settings, **overrides: Any
) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "ws": websocket_protocol(),
        "ws_max_size": settings.max_inbound_frame,
        "ws_per_message_deflate": False,  # no compression bombs, and frames stay shareable
        "ws_ping_interval": settings.heartbeat_s,
        "ws_ping_timeout": settings.heartbeat_s,
        "lifespan": "on",
        "access_log": False,  # the access log prints query strings, which may hold tokens
        "log_level": uvicorn_log_level(),  # `--log-level` governs uvicorn's loggers too
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "backlog": 4096,
        # Slowloris: each request head (a WebSocket upgrade too) must arrive in time, idle
        # keep-alive connections are closed, and a head may not grow without bound.
        "http": head_timeout_protocol(settings.handshake_timeout_s),
        "timeout_keep_alive": settings.keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_request_head,
    }
    if settings.log_format == "json":
        options["log_config"] = None  # uvicorn's loggers reach the root's JSON handler
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    install_log_redaction()  # after Config: it (re)configures uvicorn's loggers
    return config


def uvicorn_log_level() -> str:
    """The root logger's level (set from `--log-level`), as uvicorn spells it."""
    level = logging.getLogger().getEffectiveLevel()
    if level <= logging.DEBUG:
        return "debug"
    return {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}.get(
        level, "critical" if level > logging.ERROR else "warning"
    )


class CannotBind(OSError):
    """The address to listen on is taken (or not ours to take): the message says what to do."""


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a taken port fails before any work starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        display = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise CannotBind(
                exc.errno,
                f"port {port} on {host} is already in use: stop what listens on {display} "
                "or pick another port with --port (0 picks a free one)",
            ) from None
        if exc.errno == errno.EACCES:
            raise CannotBind(
                exc.errno, f"no permission to listen on {display}: use a port above 1023"
            ) from None
        raise CannotBind(
            exc.errno or 0, f"cannot listen on {display} ({exc.strerror or exc}): check --host"
        ) from None
    sock.set_inheritable(True)
    return sock


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request head.

    uvicorn arms no timer until a first response is sent, and its keep-alive timer stops at
    the first byte of the next request: a client sending a head a byte at a time, or nothing,
    would hold the connection forever. The deadline runs from the connection (or the previous
    response) to a complete head; a client still sending a request after its response is cut
    too. Slow bodies are bounded in the app (settings.body_timeout_s).
    """

    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        max_head = self.config.h11_max_incomplete_event_size
        self.conn = HeadLimitedConnection(max_head if max_head is not None else 16 * 1024)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The deadline stays armed: the WebSocket protocol that takes the socket over may
        # still refuse the request or wait for the app. It is re-armed on the transport
        # alone, so this protocol (h11 state, request buffers: ~3 KiB) is freed now rather
        # than when the deadline passes.
        super().handle_websocket_upgrade(event)
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            self._head_timer = self.loop.call_at(
                timer.when(), _close_unless_handshake, self.transport, self.head_timeout
            )

    def send_400_response(self, msg: str) -> None:
        """Refuse a request h11 (or `HeadLimitedConnection`) could not take, as JSON."""
        refusal = getattr(self.conn, "refusal", None)
        status, message = refusal if refusal is not None else (400, msg)
        body = error_body(message, "too_large" if status == 431 else "bad_request")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        reason = HTTPStatus(status).phrase.encode()
        try:
            self.transport.write(
                self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
                or b""
            )
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # h11 cannot frame a response now: just hang up
            pass
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:
            _close_unless_handshake(self.transport, self.head_timeout)
            return
        waiting_for_head = self.conn.their_state is h11.IDLE
        answered_but_sending = self.conn.our_state in (h11.DONE, h11.MUST_CLOSE) and (
            self.conn.their_state is h11.SEND_BODY
        )
        if waiting_for_head or answered_but_sending:
            logger.info(
                "closing %s: no complete request within %gs", self.client, self.head_timeout
            )
            self.transport.close()


def _close_unless_handshake(transport: asyncio.Transport, head_timeout: float) -> None:
    """An upgraded socket's deadline: the WebSocket handshake must have completed (or been
    answered) by now."""
    if transport.is_closing():
        return
    if not getattr(transport.get_protocol(), "handshake_complete", True):
        client = transport.get_extra_info("peername")
        logger.info("closing %s: no WebSocket handshake within %gs", client, head_timeout)
        transport.close()


def request_head_size(event: h11.Request) -> int:
    """Bytes of the request line and headers as sent, give or take optional whitespace."""
    line = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in event.headers) + 2


class HeadLimitedConnection(h11.Connection):
    """h11's server side, refusing a complete request head over `max_head` bytes (431).

    h11 bounds only a head that is still incomplete, so a 60 KB head sent in one write
    passed whatever `max_incomplete_event_size` said.
    """

    def __init__(self, max_head: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head)
        self.max_head = max_head
        self.refusal: tuple[int, str] | None = None

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request) and request_head_size(event) > self.max_head:
            message = f"request head over {self.max_head} bytes (request line and headers)"
            self.refusal = (431, message)
            raise h11.RemoteProtocolError(message, error_status_hint=431)
        return event


def head_timeout_protocol(head_timeout: float) -> type[HeadTimeoutH11Protocol]:
    """The protocol class for uvicorn's `http` option, with this deadline."""
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout": head_timeout})


class HubServer(uvicorn.Server):
    """uvicorn.Server that drains subscribers with 1001 before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, *, install_signal_handlers: bool = True) -> None:
        super().__init__(config)
        self._install_signal_handlers = install_signal_handlers
        self.accept_errors: AcceptErrorLog | None = None

    @property
    def hub(self) -> Hub:
        app = self.config.loaded_app
        while not isinstance(app, Starlette):  # unwrap uvicorn's middleware
            app = app.app
        hub: Hub = app.state.hub
        return hub

    @property
    def port(self) -> int:
        sockets = [s for server in self.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._install_signal_handlers:
            yield
            return
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the captured signal on exit, which would turn a clean
                # drain into death by SIGTERM (exit status -15): the drain is the handling.
                self._captured_signals.clear()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None and self.config.uds is None and self.config.fd is None:
            sockets = [self.config.bind_socket()]  # uvicorn's own bind, as for workers
        if sockets is not None:
            sockets = [BackoffListener.adopt(s) for s in sockets]
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        logger.info("event loop: %s", loop_name(loop))  # `--loop` (tests assert this line)
        interval = self.hub.settings.accept_error_log_interval_s
        self.accept_errors = AcceptErrorLog(interval, loop.get_exception_handler())
        loop.set_exception_handler(self.accept_errors)
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.manager.polls.close()  # a long poll arriving from now on does not wait
        drained = self.hub.drain()
        if drained:
            logger.info("closed %d subscriber(s) with 1001", drained)
            await asyncio.sleep(0)  # let close frames reach the transports
        try:
            await super().shutdown(sockets)
        finally:
            if self.accept_errors is not None:
                asyncio.get_running_loop().set_exception_handler(self.accept_errors.previous)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one: each connection is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open files limit above %d: %s", soft, exc)
    return soft


async def serve(app: Starlette, host: str, port: int, settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; print the address once listening.

    Raises `CannotBind` (before anything starts) when the address is taken.
    """
    sock = listen_socket(host, port)
    if not app.state.security.enabled and not logger.isEnabledFor(logging.WARNING):
        # The app logs this warning at startup; `--log-level error` must not hide it.
        print(OPEN_MODE_NOTICE, file=sys.stderr, flush=True)
    limit = raise_open_files_limit()
    if limit < settings.max_connections + 100:
        logger.warning(
            "open files limit %d is below max_connections %d: raise it (ulimit -n)",
            limit,
            settings.max_connections,
        )
    server = HubServer(uvicorn_config(app, host, port, settings))
    task = asyncio.create_task(server.serve([sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        display = f"[{host}]" if ":" in host else host
        print(f"hub listening on http://{display}:{server.port}", flush=True)
        tune_gc(settings.gc_gen0_threshold)
    await task
    if not server.started:
        sys.exit(1)

"""An ASGI app on a guarded listener: Hypercorn's HTTP/1.1 protocol, our listener and guard.

The REST services of the Fachdienste (HTTPS) and the console (plain HTTP) are Starlette apps.
Hypercorn speaks HTTP for them, one ``hypercorn.trio.tcp_server.TCPServer`` per connection, but
its own ``serve`` owns the accept loop, where no connection cap and no guard can go. So this
module binds the listeners itself (the ``trio.serve_listeners`` shape: bind, report the bound
``(host, port)`` through ``task_status.started``, serve until cancelled) and hands each
connection to Hypercorn's connection server under a :class:`~.guard.ListenerGuard`: a cap with
``503 Service Unavailable`` beyond it, a TLS handshake deadline, a deadline for the first
request (Hypercorn's idle timer runs from the accept until a request head is complete, so a
silent or slow-loris client is closed after it), and no exception past the connection. At the
cap, the connection idle longest between requests is closed to make room (as nginx does with
keep-alive connections): clients with connection pools keep idle connections open, and they
must not lock out a client that has a request to make.

This module must never build TLS contexts, hold KIM policy or know the apps it serves.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from starlette.types import ASGIApp

from kim_appliance.serving.guard import (
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    ListenerLimits,
    serve_guarded,
)

#: what a client over the connection cap reads before the close
BUSY_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 5\r\nconnection: close\r\ncontent-length: 46\r\n\r\n"
    b"too many connections; try again in 5 seconds\r\n"
)


#: a connection must have been idle this long (seconds) since its last response to be evicted
MIN_IDLE_TO_EVICT: Final = 0.5


class _TrackedStream:
    """A connection's stream that knows whether it sits idle between requests: idle from the
    accept and after each write, busy from the first bytes a client sends. Everything else is
    the inner stream's (Hypercorn asks for ``do_handshake``, ``transport_stream``, ...)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.idle_since: float | None = trio.current_time()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if data:
            self.idle_since = None
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.idle_since = trio.current_time()

    def evict(self) -> None:
        """Shut the socket down: the pending receive ends and Hypercorn closes as after EOF."""
        inner: Any = self.inner
        while isinstance(inner, trio.SSLStream):
            inner = inner.transport_stream
        sock = getattr(inner, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.idle_since = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class HttpListenerSettings:
    """The HTTP side's own limits, beside the listener's :class:`ListenerLimits`."""

    #: seconds an idle kept-alive connection stays open (Hypercorn's default): clients that
    #: open a connection per request must not fill the connection cap with idle ones
    keep_alive_seconds: float = 5.0
    #: largest request head (request line and headers) in bytes
    max_head_bytes: int = 16 * 1024
    #: seconds open requests get to finish when the listener stops
    graceful_seconds: float = 1.0


async def serve_asgi(
    app: ASGIApp,
    *,
    bind: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    name: str = "https",
    limits: ListenerLimits | None = None,
    budget: ConnectionBudget | None = None,
    log: logging.Logger | None = None,
    settings: HttpListenerSettings = HttpListenerSettings(),
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind``:``port`` (0: a free port) over HTTPS with ``ssl_context``, or
    plain HTTP when it is None, until cancelled; report the bound ``(host, port)``. ``name``
    starts the guard's log lines; ``limits`` and ``budget`` are the guard's (defaults: the
    named defaults, and a budget of this listener's own).

    Error handling: an ``OSError`` from binding (port taken) propagates before ``started``; an
    exception in the app is Hypercorn's 500; anything else in a connection is the guard's."""
    limits = limits or ListenerLimits()
    budget = budget or ConnectionBudget.from_nofile_limit()
    log = log or logging.getLogger("kim_appliance.web")
    config = _config(limits, settings)
    listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=bind)
    if port == 0:
        # "localhost" gives one listener per address, each with its own free port: keep one
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    host, bound_port = listeners[0].socket.getsockname()[:2]
    serving: list[trio.abc.Listener[Any]] = list(listeners)
    if ssl_context is not None:
        serving = [trio.SSLListener(s, ssl_context, https_compatible=True) for s in listeners]
    open_streams: set[_TrackedStream] = set()

    def evict_idle() -> bool:
        now = trio.current_time()
        idle = [
            s for s in open_streams
            if s.idle_since is not None and now - s.idle_since >= MIN_IDLE_TO_EVICT
        ]  # fmt: skip
        if not idle:
            return False
        min(idle, key=lambda s: s.idle_since or now).evict()
        return True

    guard = ListenerGuard(
        name,
        log=log,
        limits=limits,
        budget=budget,
        farewells=Farewells(busy=BUSY_RESPONSE),
        evict_idle=evict_idle,
    )
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    context = WorkerContext(None)
    state: dict[str, Any] = {}

    async def connection(stream: trio.abc.Stream) -> None:
        # the guard did the TLS handshake: Hypercorn's own (under ssl_handshake_timeout) is a
        # no-op on a finished handshake
        tracked = _TrackedStream(stream)
        open_streams.add(tracked)
        try:
            await TCPServer(wrapped, config, context, ConnectionState(state), tracked)  # type: ignore[arg-type]
        finally:
            open_streams.discard(tracked)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_guarded, connection, serving, guard=guard))
        task_status.started((str(host), int(bound_port)))


def _config(limits: ListenerLimits, settings: HttpListenerSettings) -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("kim_appliance.web.hypercorn")
    config.include_server_header = False
    config.graceful_timeout = settings.graceful_seconds
    # Hypercorn's idle timer starts at the accept and again after each response, and stops once
    # a request head is complete: the first request (and each next one on a kept-alive
    # connection) must arrive within it, so it is also the first-command deadline. Not
    # ``read_timeout``: that also runs while a long response is being sent and would cut a
    # large KAS download.
    config.keep_alive_timeout = min(settings.keep_alive_seconds, limits.first_command_seconds)
    config.h11_max_incomplete_size = settings.max_head_bytes
    config.ssl_handshake_timeout = limits.handshake_seconds
    return config

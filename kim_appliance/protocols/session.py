"""The trio side of one server session: moves bytes between a TLS stream and a sans-IO core.

The four mail servers (the Fachdienst's SMTP and POP3, the Clientmodul's SMTP and POP3 proxies)
differ only in their decisions; the plumbing is here, once: the TLS handshake under a timeout,
the receive loop with ONE idle cancel scope per session whose deadline is moved before each
receive and lifted while a decision runs (a new ``fail_after`` per TLS record costs measurably
on a 35 MB message, bench/fachdienst.py), reply batching, the idle-timeout reply, a broken
connection logged as "connection lost", a bug in one session answered with the protocol's
"internal error" line and logged (never taking the listener down), and the forceful close.

This module knows nothing of the components above it (DESIGN.md: arrows point one way): it must
never import from ``fachdienst`` or ``clientmodul``, and never decides anything about a message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import trio

#: the errors of a broken or closed peer connection: the session ends quietly
NETWORK_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


class ServerCore(Protocol):
    """What the loop needs of a sans-IO server core (SmtpServer, Pop3Server): its events are
    instances, its NEED_DATA a class."""

    def next_event(self) -> object: ...

    def receive_data(self, data: bytes) -> None: ...

    def data_to_send(self) -> bytes: ...


class SessionIO:
    """The stream of one session: sends (optionally batched) and receives under the session's
    idle deadline, which :func:`run_core` moves."""

    def __init__(self, stream: trio.abc.Stream, *, timeout: float, receive_size: int) -> None:
        self.stream = stream
        self.timeout = timeout
        self.receive_size = receive_size
        self._out = bytearray()
        self._idle: trio.CancelScope | None = None

    def queue(self, data: bytes) -> None:
        """Add bytes to the batch written before the next receive (or the next send_all)."""
        self._out += data

    @property
    def queued(self) -> bytes:
        """The batch not yet written."""
        return bytes(self._out)

    def replace_queued(self, data: bytes) -> None:
        """Rewrite the batch (a proxy correcting its core's own replies)."""
        self._out[:] = data

    async def flush(self) -> None:
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            await self.stream.send_all(data)

    async def send_all(self, data: bytes) -> None:
        """Write the batch, then ``data``, in one send."""
        if self._out:
            data = bytes(self._out) + data
            self._out.clear()
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        """The next bytes from the peer (``b""`` at EOF), within the idle timeout when called
        from :func:`run_core`; the deadline is lifted again as soon as the bytes are here."""
        idle = self._idle
        if idle is None:
            data = await self.stream.receive_some(self.receive_size)
        else:
            idle.deadline = trio.current_time() + self.timeout
            data = await self.stream.receive_some(self.receive_size)
            idle.deadline = math.inf
        return data if isinstance(data, bytes) else bytes(data)


async def run_core(
    io: SessionIO,
    core: ServerCore,
    # Any: each core has its own event union; the handler is typed at its definition
    handle: Callable[[Any], Awaitable[bool]],
    *,
    idle_reply: Callable[[], bytes],
    outgoing: Callable[[bytes], bytes] | None = None,
) -> None:
    """Feed ``core`` from ``io`` and hand each decision event to ``handle`` until it returns
    False; the bytes the core queued itself go out (through ``outgoing``, if given) before
    each receive. When the peer stays silent for ``io.timeout``, ``idle_reply()`` is written
    and the loop ends."""
    with trio.CancelScope() as idle:
        io._idle = idle
        try:
            while True:
                event = core.next_event()
                if isinstance(event, type):  # NEED_DATA
                    io.queue(core.data_to_send())
                    if outgoing is not None and io.queued:
                        io.replace_queued(outgoing(io.queued))
                    await io.flush()
                    core.receive_data(await io.receive())
                    continue
                if not await handle(event):
                    break
        finally:
            io._idle = None
    if idle.cancelled_caught:
        await io.send_all(idle_reply())
    else:
        await io.flush()


async def serve_session(
    stream: trio.SSLStream[trio.SocketStream],
    *,
    name: str,
    peer: str,
    log: logging.Logger,
    timeout: float,
    run: Callable[[], Awaitable[None]],
    internal_error: bytes,
    cleanup: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One connection: TLS handshake within ``timeout``, then ``run()``; whatever happens,
    ``cleanup()`` and a forceful close. ``name`` starts every log line ("smtp", "cm pop3")."""
    try:
        with trio.fail_after(timeout):
            await stream.do_handshake()
        await run()
    except NETWORK_ERRORS as exc:
        log.info("%s %s connection lost: %s", name, peer, exc.__class__.__name__)
    except trio.TooSlowError:
        log.info("%s %s TLS handshake timed out", name, peer)
    except Exception:
        # a bug in one session must not take the listener (and the appliance) down: the client
        # hears the protocol's temporary error and may try again
        log.exception("%s %s internal error", name, peer)
        with trio.move_on_after(5), contextlib.suppress(*NETWORK_ERRORS):
            await stream.send_all(internal_error)
    finally:
        if cleanup is not None:
            await cleanup()
        await trio.aclose_forcefully(stream)


def peer_name(stream: trio.SSLStream[trio.SocketStream]) -> str:
    """``host:port`` of the peer, or ``?`` when the socket no longer knows."""
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"

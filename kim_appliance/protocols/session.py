"""The trio side of one server session: moves bytes between a TLS stream and a sans-IO core.

The four mail servers (the Fachdienst's SMTP and POP3, the Clientmodul's SMTP and POP3 proxies)
differ only in their decisions; the plumbing is here, once: the receive loop with ONE idle
cancel scope per session whose deadline is moved before each receive and lifted while a
decision runs (a new ``fail_after`` per TLS record costs measurably on a 35 MB message,
bench/fachdienst.py), a shorter deadline for the client's first bytes, reply batching, the
idle-timeout reply, a broken connection logged as "connection lost", and the cleanup.

What is not here is the listener's: the TLS handshake deadline, the connection cap and the
answer to a bug in a session (the protocol's "internal error" line, logged once) belong to the
guard every connection runs under (:mod:`kim_appliance.serving.guard`).

This module knows nothing of the components above it (DESIGN.md: arrows point one way): it must
never import from ``fachdienst`` or ``clientmodul``, and never decides anything about a message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from kim_appliance.serving.guard import NETWORK_ERRORS as NETWORK_ERRORS  # re-exported
from kim_appliance.serving.guard import peer_of


class ServerCore(Protocol):
    """What the loop needs of a sans-IO server core (SmtpServer, Pop3Server): its events are
    instances, its NEED_DATA a class."""

    def next_event(self) -> object: ...

    def receive_data(self, data: bytes) -> None: ...

    def data_to_send(self) -> bytes: ...


class SessionIO:
    """The stream of one session: sends (optionally batched) and receives under the session's
    idle deadline, which :func:`run_core` moves. Until the client has sent its first bytes the
    deadline is ``first_timeout`` (seconds, not the minutes of an idle session: a connection
    that never speaks is closed early), after that ``timeout``."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        timeout: float,
        receive_size: int,
        first_timeout: float | None = None,
    ) -> None:
        self.stream = stream
        self.timeout = timeout
        self.first_timeout = timeout if first_timeout is None else min(first_timeout, timeout)
        self.receive_size = receive_size
        self._out = bytearray()
        self._idle: trio.CancelScope | None = None
        self._heard = False

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
            wait = self.timeout if self._heard else self.first_timeout
            idle.deadline = trio.current_time() + wait
            data = await self.stream.receive_some(self.receive_size)
            idle.deadline = math.inf
        if data:
            self._heard = True
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
    *,
    name: str,
    peer: str,
    log: logging.Logger,
    run: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One connection's session: ``run()``, a broken peer logged as "connection lost", and
    ``cleanup()`` whatever happens. ``name`` starts every log line ("smtp", "cm pop3").

    Error handling: any other exception propagates to the listener's guard, which answers the
    protocol's "internal error" line, logs it once and closes the stream."""
    try:
        await run()
    except NETWORK_ERRORS as exc:
        log.info("%s %s connection lost: %s", name, peer, exc.__class__.__name__)
    finally:
        if cleanup is not None:
            await cleanup()


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer, or ``?`` when the socket no longer knows."""
    return peer_of(stream)

"""The one guard every connection of every listener runs under: fault isolation by construction.

Structured concurrency makes an exception that leaves a connection handler fatal for the whole
nursery, and so for the appliance (DESIGN.md). :class:`ListenerGuard` stands between
``trio.serve_listeners`` and a protocol's handler, and makes three promises for every listener
(SMTP, POP3, LDAP, the Konnektor's HTTPS, the REST services, the console):

- **Nothing a client sends ends more than its own connection.** An unexpected exception in the
  handler is logged once with its traceback, the client hears the protocol's "internal error"
  line where it has one (``421 4.3.0``, ``-ERR [SYS/TEMP]``, an LDAP Notice of Disconnection),
  and the stream is closed; the exception never reaches the nursery. A broken peer is quiet.
- **Bounded connections.** At most ``max_connections`` per listener, and all listeners of the
  process together at most what :class:`ConnectionBudget` allows (file descriptors, after
  :func:`raise_nofile_limit`). A connection over the cap hears the protocol's "busy" line
  (SMTP ``421``, POP3 ``-ERR [SYS/TEMP]``, LDAP busy, HTTP ``503``) and is closed; past
  :data:`MAX_REFUSING` refusals in flight, further ones are closed without a word, so a flood
  cannot pin file descriptors in refusal handshakes either (Postfix's anvil, in trio terms).
- **Short deadlines before a client has proven anything.** The TLS handshake must finish within
  ``handshake_seconds``; the protocol handlers apply ``first_command_seconds`` to the client's
  first bytes (see :class:`ListenerLimits`), so an idle connection costs seconds, not minutes.

This module knows nothing of the protocols it guards: it gets the bytes to say from the
listener's owner. It must never swallow ``trio.Cancelled`` (cancellation is how the appliance
stops) and never let a handler's exception propagate.
"""

from __future__ import annotations

import logging
import math
import resource
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio

#: the errors of a broken or closed peer connection: the connection ends quietly
NETWORK_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
#: refusals that may be in their TLS handshake at once; beyond, excess connections are closed
MAX_REFUSING: Final = 32
#: file descriptors kept back from the connection budget: stores, blobs, spools, outgoing
#: connections (Clientmodul to Fachdienst, relay), log files
RESERVED_FDS: Final = 256
#: seconds to write a refusal or an internal-error line before the stream is closed anyway
_FAREWELL_SECONDS: Final = 2.0
#: at most one "cap reached" warning per listener in this many seconds
_CAP_LOG_INTERVAL: Final = 60.0


@dataclass(frozen=True)
class ListenerLimits:
    """The named limits of one listener (``[limits]`` in config.toml)."""

    #: connections served at once by this listener
    max_connections: int = 256
    #: seconds for a TLS handshake
    handshake_seconds: float = 10.0
    #: seconds a client may stay silent before its first command (or first request/PDU)
    first_command_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections: {self.max_connections} is below 1")
        for name in ("handshake_seconds", "first_command_seconds"):
            value = getattr(self, name)
            if not (0 < value < math.inf):
                raise ValueError(f"{name}: {value} is not a positive number of seconds")


class ConnectionBudget:
    """The connections all listeners of the process may hold together, so that a flood on one
    listener cannot take the file descriptors every other listener (and the stores) need."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"connection budget: {total} is below 1")
        self.total = total
        self.in_use = 0

    def try_take(self) -> bool:
        if self.in_use >= self.total:
            return False
        self.in_use += 1
        return True

    def give_back(self) -> None:
        self.in_use -= 1

    @classmethod
    def from_nofile_limit(cls) -> ConnectionBudget:
        """What the soft ``RLIMIT_NOFILE`` leaves after :data:`RESERVED_FDS` (at least 64)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return cls(max(64, soft - RESERVED_FDS))


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (what a server is allowed, and 1,024 is
    a common soft default); returns the new ``(soft, hard)``. Never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass(frozen=True)
class Farewells:
    """What a listener's protocol says before the guard closes a connection (``None``: close
    without a word, e.g. HTTP after a response has begun is the handler's own business)."""

    #: over the connection cap
    busy: bytes | None = None
    #: an unexpected exception in the handler
    internal_error: bytes | None = None


Handler = Callable[[Any], Awaitable[None]]


class ListenerGuard:
    """Runs one listener's handler for each connection under the promises of the module
    docstring. One instance per listener (it counts that listener's connections)."""

    def __init__(
        self,
        name: str,
        *,
        log: logging.Logger,
        limits: ListenerLimits,
        budget: ConnectionBudget,
        farewells: Farewells = Farewells(),
        evict_idle: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self.limits = limits
        self.budget = budget
        self.farewells = farewells
        self.active = 0
        self.refusing = 0
        self.refused = 0
        self.evicted = 0
        self.internal_errors = 0
        #: frees a slot at the cap by closing the longest-idle connection (HTTP keep-alive:
        #: a server may close an idle connection at any time, RFC 9112 §9.3); True if it did
        self.evict_idle = evict_idle
        self._cap_logged_at = -math.inf

    async def run(self, handler: Handler, stream: trio.abc.Stream) -> None:
        """Serve ``stream`` with ``handler`` (the ``trio.serve_listeners`` handler shape)."""
        try:
            if not self._admit():
                await self._refuse(stream)
                return
            self.active += 1
            try:
                if await self._handshake(stream):
                    await handler(stream)
            except NETWORK_ERRORS as exc:
                self.log.debug("%s %s: connection lost: %r", self.name, peer_of(stream), exc)
            except trio.TooSlowError:
                self.log.info("%s %s: timed out", self.name, peer_of(stream))
            except Exception:
                self.internal_errors += 1
                self.log.exception("%s %s: internal error, connection closed",
                                   self.name, peer_of(stream))  # fmt: skip
                await self._say(stream, self.farewells.internal_error)
            finally:
                self.active -= 1
                self.budget.give_back()
        finally:
            await trio.aclose_forcefully(stream)

    def _admit(self) -> bool:
        """Take a slot of this listener and of the process budget; at the cap, a connection
        evicted by ``evict_idle`` makes room (the budget overshoots by one until it has gone)."""
        if self.active < self.limits.max_connections and self.budget.try_take():
            return True
        if self.evict_idle is not None and self.evict_idle():
            self.evicted += 1
            self.budget.in_use += 1
            return True
        return False

    async def _handshake(self, stream: trio.abc.Stream) -> bool:
        """The TLS handshake within ``handshake_seconds``; False (logged) when it failed."""
        if not isinstance(stream, trio.SSLStream):
            return True
        with trio.move_on_after(self.limits.handshake_seconds) as scope:
            try:
                await stream.do_handshake()
            except NETWORK_ERRORS as exc:
                self.log.info("%s %s: TLS handshake failed: %s",
                              self.name, peer_of(stream), _reason(exc))  # fmt: skip
                return False
        if scope.cancelled_caught:
            self.log.info("%s %s: TLS handshake timed out after %.0f s",
                          self.name, peer_of(stream), self.limits.handshake_seconds)  # fmt: skip
            return False
        return True

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        self.refused += 1
        now = trio.current_time()
        if now - self._cap_logged_at >= _CAP_LOG_INTERVAL:
            self._cap_logged_at = now
            self.log.warning(
                "%s: connection cap reached (%d on this listener, %d/%d in the process); "
                "refusing new connections",
                self.name, self.active, self.budget.in_use, self.budget.total,
            )  # fmt: skip
        if self.farewells.busy is None or self.refusing >= MAX_REFUSING:
            return
        self.refusing += 1
        try:
            with trio.move_on_after(min(self.limits.handshake_seconds, _FAREWELL_SECONDS * 2)):
                with suppress(*NETWORK_ERRORS):
                    if isinstance(stream, trio.SSLStream):
                        await stream.do_handshake()
                    await stream.send_all(self.farewells.busy)
        finally:
            self.refusing -= 1

    async def _say(self, stream: trio.abc.Stream, line: bytes | None) -> None:
        if line is None:
            return
        with trio.move_on_after(_FAREWELL_SECONDS), suppress(*NETWORK_ERRORS):
            await stream.send_all(line)


async def serve_guarded(
    handler: Handler,
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    guard: ListenerGuard,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``trio.serve_listeners`` with every connection under ``guard``.

    Resource handling: running out of file descriptors while accepting is trio's policy (it
    pauses accepting and logs); the guard's caps keep the process below that point."""
    await trio.serve_listeners(
        partial(guard.run, handler), list(listeners), task_status=task_status
    )


def peer_of(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer of a socket or TLS stream, or ``?``."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    try:
        host, port = inner.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        exc = cause
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

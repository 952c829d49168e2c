"""The Clientmodul as a task: SMTPS and POP3S listeners for the practice software.

:func:`serve_clientmodul` has the ``trio.serve_listeners`` shape: it binds, reports its bound
addresses through ``task_status.started(...)`` and serves until cancelled; every connection runs
under the listener's guard (:mod:`kim_appliance.serving.guard`). Both listeners use implicit TLS
with the Clientmodul's server certificate (TLS towards the PVS is mandatory in the ILF-PS,
KOM-LE-A_2066/2067).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Final

import trio

from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.pop3_proxy import serve_cm_pop3_connection
from kim_appliance.clientmodul.smtp_proxy import serve_cm_smtp_connection
from kim_appliance.serving import ConnectionBudget, Farewells, ListenerGuard, serve_guarded

#: what the guard says: over the connection cap, and after a bug in a session
SMTP_FAREWELLS: Final = Farewells(
    busy=b"421 4.3.2 too many connections to the Clientmodul, try again later\r\n",
    internal_error=b"421 4.3.0 internal error, closing the session\r\n",
)
POP3_FAREWELLS: Final = Farewells(
    busy=b"-ERR [SYS/TEMP] too many connections to the Clientmodul, try again later\r\n",
    internal_error=b"-ERR [SYS/TEMP] internal error of the Clientmodul, closing\r\n",
)


@dataclass(frozen=True)
class ClientmodulAddresses:
    smtp: tuple[str, int]
    pop3: tuple[str, int]


def _address(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    host, port = listeners[0].socket.getsockname()[:2]
    return str(host), int(port)


async def serve_clientmodul(
    ctx: ClientmodulContext,
    *,
    bind: str,
    smtp_port: int,
    pop3_port: int,
    budget: ConnectionBudget | None = None,
    task_status: trio.TaskStatus[ClientmodulAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the practice software on ``bind`` until cancelled; ``budget`` is the process's
    connection budget (its own one when None)."""
    budget = budget or ConnectionBudget.from_nofile_limit()
    smtp = await trio.open_tcp_listeners(smtp_port, host=bind)
    pop3 = await trio.open_tcp_listeners(pop3_port, host=bind)
    addresses = ClientmodulAddresses(_address(smtp), _address(pop3))
    guards = {
        protocol: ListenerGuard(
            f"cm {protocol}",
            log=ctx.log,
            limits=ctx.listener_limits,
            budget=budget,
            farewells=farewells,
        )
        for protocol, farewells in (("smtp", SMTP_FAREWELLS), ("pop3", POP3_FAREWELLS))
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                serve_guarded,
                partial(serve_cm_smtp_connection, ctx),
                [trio.SSLListener(s, ctx.server_ssl, https_compatible=False) for s in smtp],
                guard=guards["smtp"],
            )
        )
        nursery.start_soon(
            partial(
                serve_guarded,
                partial(serve_cm_pop3_connection, ctx),
                [trio.SSLListener(s, ctx.server_ssl, https_compatible=False) for s in pop3],
                guard=guards["pop3"],
            )
        )
        ctx.log.info("clientmodul: smtps %s:%d, pop3s %s:%d", *addresses.smtp, *addresses.pop3)
        task_status.started(addresses)

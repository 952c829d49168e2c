"""The Clientmodul as a task: SMTPS and POP3S listeners for the practice software.

:func:`serve_clientmodul` has the ``trio.serve_listeners`` shape: it binds, reports its bound
addresses through ``task_status.started(...)``, serves until cancelled; each connection handler
closes its stream in ``finally``. Both listeners use implicit TLS with the Clientmodul's server
certificate (TLS towards the PVS is mandatory in the ILF-PS, KOM-LE-A_2066/2067).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import trio

from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.pop3_proxy import serve_cm_pop3_connection
from kim_appliance.clientmodul.smtp_proxy import serve_cm_smtp_connection


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
    task_status: trio.TaskStatus[ClientmodulAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    smtp = await trio.open_tcp_listeners(smtp_port, host=bind)
    pop3 = await trio.open_tcp_listeners(pop3_port, host=bind)
    addresses = ClientmodulAddresses(_address(smtp), _address(pop3))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                trio.serve_listeners,
                partial(serve_cm_smtp_connection, ctx),
                [trio.SSLListener(s, ctx.server_ssl, https_compatible=False) for s in smtp],
            )
        )
        nursery.start_soon(
            partial(
                trio.serve_listeners,
                partial(serve_cm_pop3_connection, ctx),
                [trio.SSLListener(s, ctx.server_ssl, https_compatible=False) for s in pop3],
            )
        )
        ctx.log.info("clientmodul: smtps %s:%d, pop3s %s:%d", *addresses.smtp, *addresses.pop3)
        task_status.started(addresses)

"""One Fachdienst as a task: its SMTPS and POP3S listeners, the relay worker and retention.

:func:`serve_fachdienst` has the ``trio.serve_listeners`` shape: it binds, reports the bound
addresses through ``task_status.started(...)``, serves until cancelled, and each connection
handler closes its stream in ``finally``. Running out of file descriptors is handled by
``trio.serve_listeners`` itself (it pauses accepting and logs). Both listeners use implicit TLS
(SMTPS 465 / POP3S 995 style, digest §3.1) with the C.FD.TLS-S certificate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial

import trio

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.pop3_session import serve_pop3_connection
from kim_appliance.fachdienst.relay import relay_worker
from kim_appliance.fachdienst.smtp_session import serve_smtp_connection


@dataclass(frozen=True)
class FachdienstAddresses:
    smtp: tuple[str, int]
    pop3: tuple[str, int]


def _address(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    host, port = listeners[0].socket.getsockname()[:2]
    return str(host), int(port)


async def serve_fachdienst(
    fd: Fachdienst,
    *,
    bind: str,
    smtp_port: int,
    pop3_port: int,
    task_status: trio.TaskStatus[FachdienstAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    smtp = await trio.open_tcp_listeners(smtp_port, host=bind)
    pop3 = await trio.open_tcp_listeners(pop3_port, host=bind)
    addresses = FachdienstAddresses(_address(smtp), _address(pop3))
    # another Fachdienst of this process relays to us at the bound port (stands in for MX)
    fd.endpoints.add(fd.domain, *addresses.smtp)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                trio.serve_listeners,
                partial(serve_smtp_connection, fd),
                [trio.SSLListener(s, fd.server_ssl, https_compatible=False) for s in smtp],
            )
        )
        nursery.start_soon(
            partial(
                trio.serve_listeners,
                partial(serve_pop3_connection, fd),
                [trio.SSLListener(s, fd.server_ssl, https_compatible=False) for s in pop3],
            )
        )
        nursery.start_soon(relay_worker, fd)
        nursery.start_soon(retention_worker, fd)
        fd.log.info("fachdienst %s: smtps %s:%d, pop3s %s:%d", fd.domain, *addresses.smtp,
                    *addresses.pop3)  # fmt: skip
        task_status.started(addresses)


async def retention_worker(fd: Fachdienst) -> None:
    """Delete delivered mail past its dataTimeToLive (digest §3.2, default 90 days)."""
    while True:
        removed = await trio.to_thread.run_sync(fd.store.expire, dt.datetime.now(dt.UTC))
        if removed:
            fd.log.info("fachdienst %s: %d expired messages deleted", fd.domain, removed)
        await trio.sleep(fd.config.retention_interval_seconds)

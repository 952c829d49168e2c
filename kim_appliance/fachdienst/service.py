"""One Fachdienst as a task: its SMTPS and POP3S listeners, the relay worker and retention.

:func:`serve_fachdienst` has the ``trio.serve_listeners`` shape: it binds, reports the bound
addresses through ``task_status.started(...)``, serves until cancelled, and each connection
handler closes its stream in ``finally``. Running out of file descriptors is handled by
``trio.serve_listeners`` itself (it pauses accepting and logs). Both listeners use implicit TLS
(SMTPS 465 / POP3S 995 style, digest §3.1) with the C.FD.TLS-S certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import trio

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.pop3_session import serve_pop3_connection
from kim_appliance.fachdienst.relay import relay_worker
from kim_appliance.fachdienst.retention import retention_pass
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


async def retention_worker(fd: Fachdienst, *, interval_seconds: float | None = None) -> None:
    """Every ``retention_interval_seconds``: delete mail past its dataTimeToLive (digest §3.2,
    default 90 days) and purge deregistered accounts past their retention (KOM-LE-A_2155), at
    the Fachdienst's clock (:func:`kim_appliance.fachdienst.retention.retention_pass`).

    Error handling: a failing pass is logged and the next one runs on time; the task only ends
    when cancelled.
    """
    interval = interval_seconds or fd.config.retention_interval_seconds
    while True:
        try:
            result = await trio.to_thread.run_sync(retention_pass, fd, fd.clock())
        except Exception:
            fd.log.exception("fachdienst %s: retention pass failed", fd.domain)
        else:
            if result.expired_messages:
                fd.log.info(
                    "fachdienst %s: %d expired messages deleted", fd.domain, result.expired_messages
                )
        await trio.sleep(interval)

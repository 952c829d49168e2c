"""One Fachdienst as a task: its SMTPS and POP3S listeners, the relay worker, retention and the
renewal of its POP3 maildrop locks.

:func:`serve_fachdienst` has the ``trio.serve_listeners`` shape: it binds, reports the bound
addresses through ``task_status.started(...)`` and serves until cancelled. Every connection runs
under the listener's guard (:mod:`kim_appliance.serving.guard`: connection cap, TLS handshake
deadline, a bug in one session answered with the protocol's internal-error line), and the
relay and retention workers under a supervisor, so that neither a client nor a failing worker
takes the Fachdienst down. Both listeners use implicit TLS (SMTPS 465 / POP3S 995 style, digest
§3.1) with the C.FD.TLS-S certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Final

import trio

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.jobs import take_turn
from kim_appliance.fachdienst.pop3_session import serve_pop3_connection
from kim_appliance.fachdienst.relay import relay_worker
from kim_appliance.fachdienst.retention import retention_pass
from kim_appliance.fachdienst.smtp_session import serve_smtp_connection
from kim_appliance.serving import (
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    Supervisor,
    serve_guarded,
)

#: what the guard says: over the connection cap, and after a bug in a session
SMTP_FAREWELLS: Final = Farewells(
    busy=b"421 4.3.2 too many connections, try again later\r\n",
    internal_error=b"421 4.3.0 internal error, closing the session\r\n",
)
POP3_FAREWELLS: Final = Farewells(
    busy=b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
    internal_error=b"-ERR [SYS/TEMP] internal error, closing the session\r\n",
)


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
    budget: ConnectionBudget | None = None,
    task_status: trio.TaskStatus[FachdienstAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fd`` on ``bind`` until cancelled; ``budget`` is the process's connection
    budget (its own one when None)."""
    budget = budget or ConnectionBudget.from_nofile_limit()
    smtp = await trio.open_tcp_listeners(smtp_port, host=bind)
    pop3 = await trio.open_tcp_listeners(pop3_port, host=bind)
    addresses = FachdienstAddresses(_address(smtp), _address(pop3))
    # another Fachdienst of this process relays to us at the bound port (stands in for MX)
    fd.endpoints.add(fd.domain, *addresses.smtp)
    name = fd.domain.split(".")[0]
    guards = {
        protocol: ListenerGuard(
            f"{name} {protocol}",
            log=fd.log,
            limits=fd.listener_limits,
            budget=budget,
            farewells=farewells,
        )
        for protocol, farewells in (("smtp", SMTP_FAREWELLS), ("pop3", POP3_FAREWELLS))
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                serve_guarded,
                partial(serve_smtp_connection, fd),
                [trio.SSLListener(s, fd.server_ssl, https_compatible=False) for s in smtp],
                guard=guards["smtp"],
            )
        )
        nursery.start_soon(
            partial(
                serve_guarded,
                partial(serve_pop3_connection, fd),
                [trio.SSLListener(s, fd.server_ssl, https_compatible=False) for s in pop3],
                guard=guards["pop3"],
            )
        )
        workers = Supervisor(nursery, fd.log)
        workers.start_soon(f"{name} relay worker", partial(relay_worker, fd))
        workers.start_soon(f"{name} retention", partial(retention_worker, fd))
        workers.start_soon(f"{name} maildrop locks", fd.maildrops.run)
        fd.log.info("fachdienst %s: smtps %s:%d, pop3s %s:%d", fd.domain, *addresses.smtp,
                    *addresses.pop3)  # fmt: skip
        task_status.started(addresses)


async def retention_worker(fd: Fachdienst, *, interval_seconds: float | None = None) -> None:
    """Every ``retention_interval_seconds``: delete mail past its dataTimeToLive (digest §3.2,
    default 90 days) and purge deregistered accounts past their retention (KOM-LE-A_2155), at
    the Fachdienst's clock (:func:`kim_appliance.fachdienst.retention.retention_pass`).

    Several nodes: only the node holding the domain's retention lease runs a pass
    (:func:`kim_appliance.fachdienst.jobs.take_turn`). Error handling: a failing pass is
    logged and the next one runs on time; the task only ends when cancelled.
    """
    interval = interval_seconds or fd.config.retention_interval_seconds
    while True:
        # once per cluster: the node holding the lease runs the pass (fachdienst.jobs)
        if not await take_turn(fd, "retention", interval):
            await trio.sleep(interval)
            continue
        try:
            result = await retention_pass(fd, fd.clock())
        except Exception:
            fd.log.exception("fachdienst %s: retention pass failed", fd.domain)
        else:
            if result.expired_messages:
                fd.log.info(
                    "fachdienst %s: %d expired messages deleted", fd.domain, result.expired_messages
                )
        await trio.sleep(interval)

"""What every part of one Fachdienst shares: its domain, configuration, store and TLS contexts.

One :class:`Fachdienst` exists per KIM domain the appliance serves. The SMTP and POP3 sessions,
the delivery code and the relay worker receive it instead of reaching into each other. This
module holds state only; it never opens a socket.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from kim_appliance.config import FachdienstConfig
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.quota import QuotaLedger
from kim_appliance.serving import ListenerLimits
from kim_appliance.store import MailStore

if TYPE_CHECKING:
    from kim_appliance.directory.store import DirectoryStore
    from kim_appliance.fachdienst.kas_store import KasStore


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RelayEndpoints:
    """Where the Fachdienst of a domain listens for SMTP: stands in for MX + port 465.

    Filled with the bound ports of the Fachdienste of this process as they start, and with the
    ``relay_map`` of the configuration for the others. ``complete`` is set by whoever starts
    the Fachdienste once every one of them has registered (the appliance, after binding them
    all); the relay workers wait for it, so that none looks up a sibling that has not bound yet
    (issue 11: after a restart fd1's worker bounced fd2's queued mail).
    """

    by_domain: dict[str, tuple[str, int]] = field(default_factory=dict)
    complete: trio.Event = field(default_factory=trio.Event)

    def add(self, domain: str, host: str, port: int) -> None:
        self.by_domain[domain.lower()] = (host, port)

    def lookup(self, domain: str) -> tuple[str, int] | None:
        return self.by_domain.get(domain.lower())

    def __contains__(self, domain: object) -> bool:
        return isinstance(domain, str) and domain.lower() in self.by_domain


@dataclass
class Fachdienst:
    domain: str
    config: FachdienstConfig
    store: MailStore
    auth: Authenticator
    endpoints: RelayEndpoints
    #: C.FD.TLS-S; asks for (but does not require) a client certificate, so that another
    #: Fachdienst can present its C.FD.TLS-C when it relays (KOM-LE-A_2186)
    server_ssl: ssl.SSLContext
    #: C.FD.TLS-C for relaying; verifies the other Fachdienst against the TLS CA
    client_ssl: ssl.SSLContext
    log: logging.Logger
    #: mailboxes with an open POP3 session (RFC 1939: one maildrop lock per mailbox)
    pop3_locks: set[str] = field(default_factory=set)
    relay_wakeup: trio.Event = field(default_factory=trio.Event)
    #: (mailbox, sender, note start) pairs already answered with the absence note (RFC 3834)
    auto_replied: set[tuple[str, str, str]] = field(default_factory=set)
    #: scrypt needs 16 MiB and a core per check: at most two at a time, so that ten parallel
    #: logins neither spike the memory nor starve the sessions (bench/fachdienst.py)
    auth_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(2))
    #: per-mailbox quota locks and KAS reservations (digest §3.2/§3.5, fachdienst.quota)
    quota: QuotaLedger = field(default_factory=QuotaLedger)
    #: the KAS store, whose uploads count in the quota and are purged with the account; set by
    #: whoever opens it (``kas_routes`` does, if it is still None)
    kas: KasStore | None = None
    #: the VZD the Account Manager writes (§4.2); the retention purge removes a purged
    #: account's address from it. Set by ``account_manager_routes`` if still None
    directory: DirectoryStore | None = None
    #: the time for retention and purge decisions (tests inject a clock)
    clock: Callable[[], dt.datetime] = utcnow
    #: connection cap and deadlines of its listeners (``[limits]``, kim_appliance.serving)
    listener_limits: ListenerLimits = field(default_factory=ListenerLimits)

    @property
    def hostname(self) -> str:
        return self.domain

    def wake_relay(self) -> None:
        """Tell the relay worker that new entries are queued (call from the trio thread)."""
        self.relay_wakeup.set()

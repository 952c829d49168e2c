"""What every part of one Fachdienst shares: its domain, configuration, store and TLS contexts.

One :class:`Fachdienst` exists per KIM domain the appliance serves; they share the appliance's
one :class:`~kim_appliance.store.Store` (every durable or shared piece of state is there:
accounts, mail, relay queue, KAS, quota reservations, maildrop locks, the reply ledger). The
SMTP and POP3 sessions, the delivery code and the relay worker receive it instead of reaching
into each other; they record the hops of each message through its observer (issue 15). This
module holds references only; it never opens a socket or a file.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from kim_appliance.config import RELAY_LEASE_SECONDS, FachdienstConfig
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.maildrops import MaildropLeases
from kim_appliance.observe.observer import Observer
from kim_appliance.serving import ListenerLimits
from kim_appliance.store import LOCAL_NODE, Account, Store, domain_of

if TYPE_CHECKING:
    from kim_appliance.directory.store import DirectoryStore


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
    #: in a cluster (kim_appliance.cluster): the SMTP listeners of a domain on the other live
    #: nodes, in random order; None for a single process
    others: Callable[[str], list[tuple[str, int]]] | None = None

    def add(self, domain: str, host: str, port: int) -> None:
        self.by_domain[domain.lower()] = (host, port)

    def lookup(self, domain: str) -> tuple[str, int] | None:
        found = self.candidates(domain)
        return found[0] if found else None

    def candidates(self, domain: str) -> list[tuple[str, int]]:
        """Where to try ``domain``, in order: this process's listener (or ``relay_map``)
        first, then the other live nodes serving it (equal-preference MX records: the relay
        moves on to the next when a connection fails)."""
        own = self.by_domain.get(domain.lower())
        found = [own] if own else []
        if self.others is not None:
            found += [target for target in self.others(domain) if target != own]
        return found

    def __contains__(self, domain: object) -> bool:
        return isinstance(domain, str) and domain.lower() in self.by_domain


@dataclass
class Fachdienst:
    domain: str
    config: FachdienstConfig
    #: the appliance's store, shared by every Fachdienst (rows carry their domain)
    store: Store
    auth: Authenticator
    endpoints: RelayEndpoints
    #: C.FD.TLS-S; asks for (but does not require) a client certificate, so that another
    #: Fachdienst can present its C.FD.TLS-C when it relays (KOM-LE-A_2186)
    server_ssl: ssl.SSLContext
    #: C.FD.TLS-C for relaying; verifies the other Fachdienst against the TLS CA
    client_ssl: ssl.SSLContext
    log: logging.Logger
    relay_wakeup: trio.Event = field(default_factory=trio.Event)
    #: the VZD the Account Manager writes (§4.2); the retention purge removes a purged
    #: account's address from it. Set by ``account_manager_routes`` if still None
    directory: DirectoryStore | None = None
    #: the time for retention and purge decisions (tests inject a clock)
    clock: Callable[[], dt.datetime] = utcnow
    #: connection cap and deadlines of its listeners (``[limits]``, kim_appliance.serving)
    listener_limits: ListenerLimits = field(default_factory=ListenerLimits)
    #: the node this process is (relay claims, maildrop lock holders, job leases)
    node: str = LOCAL_NODE
    #: records every hop of a message (trace and metrics, issue 15); shared by the appliance
    observer: Observer = field(default_factory=Observer)
    #: how long a relay claim lasts unless renewed (``[cluster] relay_lease_seconds``)
    relay_lease: dt.timedelta = dt.timedelta(seconds=RELAY_LEASE_SECONDS)
    #: the maildrop locks of this Fachdienst's open POP3 sessions (renewed by a worker)
    maildrops: MaildropLeases = field(init=False)

    def __post_init__(self) -> None:
        self.domain = self.domain.lower()
        self.maildrops = MaildropLeases(self.store, self.log)

    @property
    def hostname(self) -> str:
        return self.domain

    def is_local(self, address: str) -> bool:
        """True if ``address`` belongs to this Fachdienst's domain."""
        return domain_of(address) == self.domain

    async def local_account(self, address: str) -> Account | None:
        """The account of ``address`` if it is one of this Fachdienst's (the store holds every
        Fachdienst's accounts: another domain's is None here, as if it did not exist)."""
        if not self.is_local(address):
            return None
        return await self.store.accounts.get(address)

    def wake_relay(self) -> None:
        """Tell the relay worker that new entries are queued (call from the trio thread)."""
        self.relay_wakeup.set()

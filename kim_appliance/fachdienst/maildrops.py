"""The POP3 maildrop locks this process holds, kept alive together (RFC 1939 §8 across nodes).

A POP3 session locks its mailbox in the store (``store.maildrops``) for :data:`MAILDROP_TTL`;
:meth:`MaildropLeases.run`, one task per Fachdienst, renews every lock of the process every
:data:`MAILDROP_RENEW` seconds while its session is open. The lock of a session whose node died
lapses after the TTL, so a crashed node blocks a mailbox no longer than that. A lock that could
not be renewed in time (another session took it after it lapsed) is marked lost; the session
then removes nothing at QUIT. This module keeps only which locks this process holds (the locks
themselves are the store's); it never speaks POP3.
"""

from __future__ import annotations

import datetime as dt
import logging

import trio

from kim_appliance.store import Store, StoreError

#: a maildrop lock lasts this long unless renewed
MAILDROP_TTL = dt.timedelta(seconds=90)
#: the locks are renewed this often (a third of the TTL: two renewals in a row may fail)
MAILDROP_RENEW = 30.0


def holder_prefix(node: str) -> str:
    """What the lock holders of node ``node``'s POP3 sessions start with (a session is
    ``NODE/random``): a node restarted after its process died frees them at once."""
    return f"{node}/"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MaildropLeases:
    """The maildrop locks of one Fachdienst's open POP3 sessions (holder -> mailbox)."""

    def __init__(self, store: Store, log: logging.Logger, *, ttl: dt.timedelta = MAILDROP_TTL):
        self._store = store
        self._log = log
        self.ttl = ttl
        self._held: dict[str, str] = {}
        self._lost: set[str] = set()

    async def lock(self, mailbox: str, holder: str) -> bool:
        """Take the lock of ``mailbox`` for the session ``holder``; False if it is in use."""
        if not await self._store.maildrops.lock(mailbox, holder, _now(), self.ttl):
            return False
        self._held[holder] = mailbox
        return True

    def lost(self, holder: str) -> bool:
        """True if ``holder``'s lock lapsed while its session was open."""
        return holder in self._lost

    async def unlock(self, holder: str) -> None:
        """Give ``holder``'s lock back (shielded: a cancelled session still unlocks)."""
        mailbox = self._held.pop(holder, None)
        self._lost.discard(holder)
        if mailbox is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await self._store.maildrops.unlock(mailbox, holder)
            except StoreError as exc:  # the lock lapses after the TTL
                self._log.warning("pop3: unlock of %s failed: %s", mailbox, exc)

    async def renew(self) -> None:
        """Renew every lock held (one store call each)."""
        for holder, mailbox in list(self._held.items()):
            try:
                held = await self._store.maildrops.renew(mailbox, holder, _now(), self.ttl)
            except StoreError as exc:
                self._log.warning("pop3: renewing the lock of %s failed: %s", mailbox, exc)
                continue
            if not held and holder in self._held:
                self._lost.add(holder)
                self._log.warning("pop3: the maildrop lock of %s lapsed", mailbox)

    async def run(self, interval: float = MAILDROP_RENEW) -> None:
        """Renew the locks every ``interval`` seconds until cancelled."""
        while True:
            await trio.sleep(interval)
            await self.renew()

"""The POP3 maildrop locks a Fachdienst holds (RFC 1939 §8 across nodes, issue 12): taken in
the store, renewed together while the sessions are open, lost when they lapsed meanwhile."""

from __future__ import annotations

import datetime as dt
import logging

import trio

from kim_appliance.fachdienst.maildrops import MaildropLeases
from kim_appliance.store import Store

MAILBOX = "praxis.weber@fd1.kim.telematik-test"
LOG = logging.getLogger("tests.maildrops")


async def test_a_second_session_gets_in_use_until_the_first_unlocks(kim_store: Store) -> None:
    """Two nodes (two MaildropLeases on one store): the second session is refused ([IN-USE])
    while the first holds the maildrop, and gets it once the first has unlocked."""
    node1, node2 = MaildropLeases(kim_store, LOG), MaildropLeases(kim_store, LOG)
    assert await node1.lock(MAILBOX, "node1/a")
    assert not await node2.lock(MAILBOX.upper(), "node2/b")
    await node1.renew()
    assert not node1.lost("node1/a")
    await node1.unlock("node1/a")
    assert await node2.lock(MAILBOX, "node2/b")


async def test_renewal_keeps_a_lock_alive_past_its_ttl(kim_store: Store) -> None:
    ttl = dt.timedelta(milliseconds=300)
    holder, other = MaildropLeases(kim_store, LOG, ttl=ttl), MaildropLeases(kim_store, LOG)
    assert await holder.lock(MAILBOX, "node1/a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.run, 0.05)
        await trio.sleep(0.6)  # twice the TTL, renewed all along
        assert not await other.lock(MAILBOX, "node2/b")
        nursery.cancel_scope.cancel()
    assert not holder.lost("node1/a")


async def test_a_lapsed_lock_taken_by_another_session_is_lost(kim_store: Store) -> None:
    """A node that could not renew in time (it hung, the store was away) finds the maildrop
    taken: its lock is lost, so its session removes nothing at QUIT."""
    ttl = dt.timedelta(milliseconds=100)
    slow, other = MaildropLeases(kim_store, LOG, ttl=ttl), MaildropLeases(kim_store, LOG)
    assert await slow.lock(MAILBOX, "node1/a")
    await trio.sleep(0.15)
    assert await other.lock(MAILBOX, "node2/b")
    await slow.renew()
    assert slow.lost("node1/a")
    await slow.unlock("node1/a")  # does not touch the other session's lock
    assert not await slow.lock(MAILBOX, "node1/c")

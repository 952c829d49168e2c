"""The relay worker after a restart (issue 11 §5), on a real store without a network: it starts
working only once every domain of the appliance is registered, and a queued entry whose domain
has no known Fachdienst is retried (temporary) unless the domain is outside the TI."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
from fd_support import _quick_hash, fachdienst_on, read_message

from kim_appliance.config import FachdienstConfig
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.relay import no_route_reply, relay_worker
from kim_appliance.store import Account, RelayRecipient, Store

FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"
SENDER = f"praxis.weber@{FD1}"


@pytest.mark.parametrize(
    ("domain", "code", "enhanced"),
    [
        (FD2, 451, "4.4.3"),  # a TI domain (test environment) not known yet: try again
        ("kim-praxis.kim.telematik", 451, "4.4.3"),  # production TI domain
        ("FD2.KIM.TELEMATIK-TEST", 451, "4.4.3"),
        ("example.org", 550, "5.1.2"),  # outside the TI: can never be reached
        ("kim.telematik-test.example.org", 550, "5.1.2"),
    ],
)
def test_no_route_is_temporary_inside_the_ti(domain: str, code: int, enhanced: str) -> None:
    """Digest §3.2 (relay by MX), KOM-LE-A_2185 (TI only): like an MTA whose MX lookup fails
    (SERVFAIL: try again) or finds no such domain (NXDOMAIN: bounce)."""
    reply = no_route_reply(domain)
    assert (reply.code, reply.enhanced) == (code, enhanced)
    assert domain in reply.text


@pytest.fixture
async def fd(kim_store: Store) -> Fachdienst:
    await kim_store.accounts.create(Account(SENDER, _quick_hash("x"), "1-SMC-B-1", "Praxis Weber"))
    config = FachdienstConfig(domains=(), relay_retry_seconds=(60,))
    return fachdienst_on(kim_store, FD1, config=config)


async def _queue(fd: Fachdienst, domain: str) -> int:
    now = dt.datetime.now(dt.UTC)
    async with fd.store.blobs.writer() as writer:
        await writer.write(b"Message-ID: <q@x>\r\nSubject: Befund\r\n\r\nHallo\r\n")
        entry = await fd.store.relay.enqueue(
            await writer.commit(),
            sender=SENDER,
            recipients=[RelayRecipient(f"apotheke.sonne@{domain}")],
            envid=None,
            ret=None,
            source_domain=fd.domain,
            domain=domain,
            not_after=now + dt.timedelta(days=2),
            now=now,
        )
    return entry.id


async def test_worker_waits_until_every_domain_is_registered(fd: Fachdienst) -> None:
    """Issue 11: after a restart fd1's worker ran before fd2 had bound and bounced fd2's queued
    mail ("no Fachdienst known"). Now nothing is attempted before ``complete``; after it, a TI
    domain still unknown is deferred per relay_retry_seconds and the sender gets no report."""
    entry_id = await _queue(fd, FD2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay_worker, fd)
        await trio.sleep(0.3)
        [waiting] = await fd.store.relay.pending(FD1, limit=10)
        assert (waiting.id, waiting.attempts) == (entry_id, 0)
        fd.endpoints.complete.set()
        with trio.fail_after(10):
            while True:
                [entry] = await fd.store.relay.pending(FD1, limit=10)
                if entry.attempts:
                    break
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert entry.id == entry_id
    assert entry.last_error is not None
    assert entry.last_error.startswith("451 4.4.3 no Fachdienst known for domain " + FD2)
    assert entry.next_attempt > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=50)
    assert await fd.store.mail.list(SENDER) == []


async def test_a_domain_outside_the_ti_is_bounced_at_once(fd: Fachdienst) -> None:
    """Outside the TI there is nothing to wait for: 550 5.1.2 and a failure report to the
    sender, as before issue 11."""
    await _queue(fd, "example.org")
    fd.endpoints.complete.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay_worker, fd)
        with trio.fail_after(10):
            while not await fd.store.mail.list(SENDER):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    [report] = await fd.store.mail.list(SENDER)
    text = await read_message(fd.store, report.id)
    assert b"5.1.2" in text
    assert b"not a TI domain" in text
    assert await fd.store.relay.pending(FD1, limit=10) == []


async def _listener() -> tuple[trio.SocketListener, int]:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener, listener.socket.getsockname()[1]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_target_that_refuses_is_skipped_for_the_next_live_node(fd: Fachdienst) -> None:
    """Several nodes serve a domain (equal-preference MX records): when the first target
    refuses the connection (a node that died and is still listed), the attempt goes on to the
    next one instead of deferring the entry."""
    listener, port = await _listener()
    fd.endpoints.add(FD2, "127.0.0.1", _closed_port())
    fd.endpoints.others = lambda domain: [("127.0.0.1", port)] if domain == FD2 else []
    assert fd.endpoints.candidates(FD2)[1] == ("127.0.0.1", port)
    entry_id = await _queue(fd, FD2)
    fd.endpoints.complete.set()
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(relay_worker, fd)
        with trio.fail_after(10):
            stream = await listener.accept()  # the second target was tried
        await stream.aclose()  # no TLS: this attempt fails, temporarily
        with trio.fail_after(10):
            while not (entry := (await fd.store.relay.pending(FD1, limit=1))[0]).attempts:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert entry.id == entry_id
    assert await fd.store.mail.list(SENDER) == []  # deferred, not bounced


async def test_a_claim_is_renewed_while_its_attempt_runs(fd: Fachdienst) -> None:
    """The relay lease is short (a dead node's entries come back soon), so a live node renews
    the claims of the attempts it runs: an attempt that takes several leases keeps its entry,
    and no other node's claim gets it meanwhile."""
    fd.relay_lease = dt.timedelta(seconds=0.3)
    listener, port = await _listener()
    fd.endpoints.add(FD2, "127.0.0.1", port)
    await _queue(fd, FD2)
    fd.endpoints.complete.set()
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(relay_worker, fd)
        with trio.fail_after(10):
            stream = await listener.accept()  # the attempt hangs in the TLS handshake
        await trio.sleep(1.0)  # more than three leases
        now = dt.datetime.now(dt.UTC)
        assert await fd.store.relay.claim("other", FD1, now, limit=9, lease=fd.relay_lease) == []
        [entry] = await fd.store.relay.pending(FD1, limit=1)
        assert entry.attempts == 0  # still the first attempt
        await stream.aclose()
        with trio.fail_after(10):
            while not (await fd.store.relay.pending(FD1, limit=1))[0].attempts:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()

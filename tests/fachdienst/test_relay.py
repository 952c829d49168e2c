"""The relay worker after a restart (issue 11 §5), on a real store without a network: it starts
working only once every domain of the appliance is registered, and a queued entry whose domain
has no known Fachdienst is retried (temporary) unless the domain is outside the TI."""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path

import pytest
import trio
from fd_support import _quick_hash, fachdienst_on, read_message
from selfsigned import tls_contexts

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


async def _smtps_without_pipelining(
    stream: trio.SSLStream[trio.SocketStream], seen: list[tuple[bytes, bool]], body: list[bytes]
) -> None:
    """An SMTP server that offers no PIPELINING (RFC 2920): records each command and whether
    more bytes had already arrived behind it (a client that pipelines anyway)."""
    buffer = b""

    async def line() -> bytes | None:
        nonlocal buffer
        while b"\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                return None
            buffer += data
        first, buffer = buffer.split(b"\r\n", 1)
        return first

    await stream.send_all(b"220 fd2 ESMTP\r\n")
    while (command := await line()) is not None:
        seen.append((command, bool(buffer)))
        verb = command.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            await stream.send_all(b"250-fd2\r\n250 SIZE 1000000\r\n")
        elif verb == b"DATA":
            await stream.send_all(b"354 go ahead\r\n")
            while (data := await line()) != b".":
                if data is None:
                    return
                body.append(data)
            await stream.send_all(b"250 2.0.0 stored\r\n")
        elif verb == b"QUIT":
            await stream.send_all(b"221 2.0.0 bye\r\n")
            return
        else:
            await stream.send_all(b"250 2.0.0 ok\r\n")


async def test_a_server_without_pipelining_gets_one_command_at_a_time(
    kim_store: Store, tmp_path: Path
) -> None:
    """RFC 2920 §3.1: the relay pipelines MAIL, RCPT and DATA only to a server that offers
    PIPELINING (issue 13); to one that does not, it sends each command after the reply to the
    one before, and the message is delivered with its relay id (KIM-Relay-ID) and dequeued."""
    server_ssl, client_ssl = tls_contexts(tmp_path)
    client_ssl.check_hostname = False  # a self-signed "localhost", reached as fd2's domain
    await kim_store.accounts.create(Account(SENDER, _quick_hash("x"), "1-SMC-B-1", "Praxis W"))
    config = FachdienstConfig(domains=(), relay_retry_seconds=(60,))
    fd = fachdienst_on(kim_store, FD1, config=config)
    fd.client_ssl = client_ssl
    seen: list[tuple[bytes, bool]] = []
    body: list[bytes] = []
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            partial(
                trio.serve_ssl_over_tcp,
                partial(_smtps_without_pipelining, seen=seen, body=body),
                0,
                server_ssl,
                host="127.0.0.1",
            )
        )
        fd.endpoints.add(FD2, "127.0.0.1", listener.transport_listener.socket.getsockname()[1])
        await _queue(fd, FD2)
        fd.endpoints.complete.set()
        nursery.start_soon(relay_worker, fd)
        with trio.fail_after(20):
            while await fd.store.relay.pending(FD1, limit=1):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    verbs = [command.split(b" ", 1)[0].upper() for command, _ in seen]
    start = verbs.index(b"MAIL")
    assert verbs[start : start + 3] == [b"MAIL", b"RCPT", b"DATA"]
    assert not any(behind for _, behind in seen[start : start + 3])  # one at a time
    assert any(line.startswith(b"KIM-Relay-ID:") for line in body)
    assert b"Subject: Befund" in body

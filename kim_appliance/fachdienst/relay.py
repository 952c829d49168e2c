"""The relay worker: sends queued mail to the Fachdienst of another domain over SMTPS.

Each queue entry is one message for the recipients of one domain. The worker connects with
implicit TLS, presents C.FD.TLS-C and verifies the other side against the TLS CA, and offers
the message with the sender's DSN parameters (RFC 3461: NOTIFY, ORCPT, RET, ENVID). Per
recipient: accepted -> done; refused 5xx -> a bounce to the sender (RFC 3464, if NOTIFY allows
it); 4xx or no connection -> tried again after the configured waits, and bounced when
``relay_give_up_seconds`` have passed. An entry is removed from the queue only after the other
Fachdienst has acknowledged or the sender has been told, so a crash repeats a delivery rather
than losing it.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from functools import partial

import trio

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.delivery import send_report
from kim_appliance.mail.dsn import DsnRecipient
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.protocols.smtp import (
    NEED_DATA,
    OriginalRecipient,
    RemoteProtocolError,
    ServerReply,
    SmtpClient,
)
from kim_appliance.store import RelayEntry, RelayRecipient

#: the worker looks at the queue at least this often, and whenever a message is queued
POLL_SECONDS = 5.0
#: one attempt (connect, send, QUIT) may take this long
ATTEMPT_TIMEOUT = 300.0
PARALLEL_ATTEMPTS = 4
READ_SIZE = 1024 * 1024


class _TemporaryFailure(Exception):
    pass


@dataclass
class _Outcome:
    delivered: list[RelayRecipient] = field(default_factory=list)
    failed: list[tuple[RelayRecipient, ServerReply]] = field(default_factory=list)
    deferred: list[RelayRecipient] = field(default_factory=list)
    error: str | None = None


async def relay_worker(fd: Fachdienst) -> None:
    """Run forever (until cancelled): attempt every due queue entry.

    Between rounds it sleeps until woken, until the earliest retry it scheduled, or at most
    ``POLL_SECONDS`` (so a retry wait shorter than the poll interval is kept).
    """
    limiter = trio.CapacityLimiter(PARALLEL_ATTEMPTS)
    while True:
        fd.relay_wakeup = trio.Event()
        now = dt.datetime.now(dt.UTC)
        due = await trio.to_thread.run_sync(fd.store.due_relays, now)
        retries: list[dt.datetime] = []
        async with trio.open_nursery() as nursery:
            for entry in due:
                nursery.start_soon(_attempt_limited, fd, entry, limiter, retries)
        if not due:
            with trio.move_on_after(POLL_SECONDS):
                await fd.relay_wakeup.wait()
        elif retries:
            wait = (min(retries) - dt.datetime.now(dt.UTC)).total_seconds()
            if wait > 0:
                with trio.move_on_after(min(wait, POLL_SECONDS)):
                    await fd.relay_wakeup.wait()


async def _attempt_limited(
    fd: Fachdienst,
    entry: RelayEntry,
    limiter: trio.CapacityLimiter,
    retries: list[dt.datetime],
) -> None:
    async with limiter:
        outcome = await attempt(fd, entry)
    try:
        next_attempt = await trio.to_thread.run_sync(_settle, fd, entry, outcome)
    except Exception:
        # a bug or a store failure must not stop the worker (and with it the Fachdienst):
        # log it and try the entry again after the next wait
        fd.log.exception("relay %s -> %s: settling the attempt failed", entry.id, entry.domain)
        waits = fd.config.relay_retry_seconds
        next_attempt = dt.datetime.now(dt.UTC) + dt.timedelta(
            seconds=waits[min(entry.attempts, len(waits) - 1)]
        )
        await trio.to_thread.run_sync(
            partial(fd.store.relay_attempted, entry.id, next_attempt=next_attempt, error="internal")
        )
    if next_attempt is not None:
        retries.append(next_attempt)


async def attempt(fd: Fachdienst, entry: RelayEntry) -> _Outcome:
    """One delivery attempt of ``entry``; never raises for network or protocol trouble."""
    target = fd.endpoints.lookup(entry.domain)
    outcome = _Outcome()
    if target is None:
        reply = ServerReply(550, "5.1.2", (f"no Fachdienst known for domain {entry.domain}",))
        outcome.failed = [(r, reply) for r in entry.recipients]
        return outcome
    host, port = target
    try:
        with trio.fail_after(ATTEMPT_TIMEOUT):
            await _send(fd, entry, host, port, outcome)
    except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError,
            RemoteProtocolError, _TemporaryFailure) as exc:  # fmt: skip
        done = {r.address for r in outcome.delivered} | {r.address for r, _ in outcome.failed}
        outcome.deferred = [r for r in entry.recipients if r.address not in done]
        outcome.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return outcome


async def _send(fd: Fachdienst, entry: RelayEntry, host: str, port: int, outcome: _Outcome) -> None:
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, fd.client_ssl, server_hostname=entry.domain)
    client = SmtpClient(hostname=fd.hostname)
    try:
        greeting = await _reply(stream, client)
        if greeting.code != 220:
            raise _TemporaryFailure(f"greeting {greeting.code} {greeting.text}")
        await stream.send_all(client.ehlo())
        ehlo = await _reply(stream, client)
        if ehlo.code != 250:
            raise _TemporaryFailure(f"EHLO {ehlo.code} {ehlo.text}")
        size = entry.blob.size
        await stream.send_all(
            client.mail(
                entry.sender,
                size=size if "SIZE" in client.extensions else None,
                ret=entry.ret if "DSN" in client.extensions else None,
                envid=entry.envid if "DSN" in client.extensions else None,
            )
        )
        mail = await _reply(stream, client)
        if mail.code >= 500:
            outcome.failed = [(r, mail) for r in entry.recipients]
            return
        if mail.code >= 400:
            raise _TemporaryFailure(f"MAIL {mail.code} {mail.text}")
        accepted: list[RelayRecipient] = []
        for r in entry.recipients:
            orcpt = (
                OriginalRecipient(*r.orcpt.split(";", 1)) if r.orcpt and ";" in r.orcpt else None
            )
            dsn = "DSN" in client.extensions
            await stream.send_all(
                client.rcpt(
                    r.address, notify=r.notify if dsn else None, orcpt=orcpt if dsn else None
                )
            )
            reply = await _reply(stream, client)
            if reply.code < 400:
                accepted.append(r)
            elif reply.code >= 500:
                outcome.failed.append((r, reply))
            else:
                outcome.deferred.append(r)
        if not accepted:
            await stream.send_all(client.quit())
            return
        await stream.send_all(client.data())
        go = await _reply(stream, client)
        if go.code != 354:
            raise _TemporaryFailure(f"DATA {go.code} {go.text}")
        blob = await trio.to_thread.run_sync(fd.store.open_blob, entry.blob)
        try:
            while chunk := await trio.to_thread.run_sync(blob.read, READ_SIZE):
                await stream.send_all(client.body(chunk))
        finally:
            blob.close()
        await stream.send_all(client.end_body())
        final = await _reply(stream, client)
        if final.code < 400:
            outcome.delivered.extend(accepted)
        elif final.code >= 500:
            outcome.failed.extend((r, final) for r in accepted)
        else:
            outcome.deferred.extend(accepted)
        await stream.send_all(client.quit())
        fd.log.info(
            "relay %s -> %s: %d delivered, %d refused, %d deferred",
            entry.id, entry.domain, len(outcome.delivered), len(outcome.failed),
            len(outcome.deferred),
        )  # fmt: skip
    finally:
        await trio.aclose_forcefully(stream)


async def _reply(stream: trio.SSLStream[trio.SocketStream], client: SmtpClient) -> ServerReply:
    while True:
        event = client.next_event()
        if event is NEED_DATA:
            data = await stream.receive_some(65536)
            client.receive_data(bytes(data))
            continue
        if isinstance(event, ServerReply):
            return event
        raise _TemporaryFailure("the other Fachdienst closed the connection")


def _settle(fd: Fachdienst, entry: RelayEntry, outcome: _Outcome) -> dt.datetime | None:
    """Record the attempt, reschedule what is deferred, bounce what failed (worker thread).

    Returns when the entry is next due, or None if it is done.
    """
    now = dt.datetime.now(dt.UTC)
    if outcome.error:
        fd.log.info("relay %s -> %s deferred: %s", entry.id, entry.domain, outcome.error)
    failed = list(outcome.failed)
    deferred = outcome.deferred
    if deferred and now >= entry.not_after:
        reply = ServerReply(
            450, "4.4.7", (f"gave up after {entry.attempts + 1} attempts: {outcome.error}",)
        )
        failed += [(r, reply) for r in deferred]
        deferred = []
    if failed and entry.sender:
        reports = [
            DsnRecipient(
                final_recipient=r.address,
                original_recipient=r.orcpt,
                action="failed",
                status=_final_status(reply),
                diagnostic=" ".join(
                    part for part in (str(reply.code), reply.enhanced, reply.text) if part
                ),
                remote_mta=entry.domain,
            )
            for r, reply in failed
            if r.notify is None or "FAILURE" in r.notify
        ]
        if reports:
            original_header = _original_header(fd, entry)
            send_report(
                fd,
                to=entry.sender,
                original_header=original_header,
                # KOM-LE-A_2130/2147: In-Reply-To = the outer Message-ID, bounces included
                message_id=_message_id(original_header),
                envid=entry.envid,
                arrival=entry.not_after - dt.timedelta(seconds=fd.config.relay_give_up_seconds),
                recipients=reports,
            )
    if deferred and len(deferred) < len(entry.recipients):
        # some recipients are done: queue the rest as a new entry, finish this one
        fd.store.enqueue_relay(
            entry.blob,
            sender=entry.sender,
            recipients=deferred,
            envid=entry.envid,
            ret=entry.ret,
            domain=entry.domain,
            not_after=entry.not_after,
        )
        fd.store.relay_attempted(entry.id, next_attempt=None, error=None)
        return now
    if deferred:
        waits = fd.config.relay_retry_seconds
        wait = waits[min(entry.attempts, len(waits) - 1)]
        next_attempt = now + dt.timedelta(seconds=wait)
        fd.store.relay_attempted(entry.id, next_attempt=next_attempt, error=outcome.error)
        return next_attempt
    fd.store.relay_attempted(entry.id, next_attempt=None, error=None)
    return None


def _final_status(reply: ServerReply) -> str:
    status = reply.enhanced or f"{reply.code // 100}.0.0"
    return "5" + status[1:] if status.startswith("4") else status


def _original_header(fd: Fachdienst, entry: RelayEntry) -> bytes:
    """The header of the relayed message (RET=HDRS: reports carry headers only)."""
    blob = fd.store.open_blob(entry.blob)
    try:
        head = blob.read(256 * 1024)
    finally:
        blob.close()
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            return head[: end + len(separator)]
    return head


def _message_id(header: bytes) -> str | None:
    """The Message-ID of a header block, or None if it has none or cannot be parsed."""
    try:
        value = parse_header_block(header.rstrip(b"\r\n") + b"\r\n").get("Message-ID")
    except MailFormatError:
        return None
    return value.strip() if value else None

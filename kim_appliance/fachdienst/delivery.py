"""Storing and routing an accepted message: local mailboxes, the relay queue, delivery reports.

:func:`accept` runs once the body is in a blob. It commits the blob (durable), delivers to
this Fachdienst's mailboxes with a trace prefix each
(Return-Path + Received, RFC 5321 §4.4), queues the other domains' recipients for the relay
worker, and writes the delivery confirmations asked for with NOTIFY=SUCCESS (RFC 3461; the
receiving Fachdienst reports, with In-Reply-To = the outer Message-ID, digest §3.2). Only when
it returns does the SMTP session answer 250: an acknowledged message is durable.

Exactly once between Fachdienste: the relay worker puts a ``KIM-Relay-ID`` field first in every
message it relays, random per queue entry and the same on every attempt. A message from another
Fachdienst (no AUTH: its C.FD.TLS-C identified it) that carries one is delivered to each
mailbox at most once per relay id (the store remembers them, ``deliver(relay_id=...)``): if
the sender crashed after our ``250`` and before removing its queue entry, its repeat is
answered ``250`` again and stored nowhere (docs/decisions.md).

Every store call is one transaction of the store (kim_appliance.store); the quota check is the
store's too (``check_quota=True``: atomic with the delivery). This module never reads the body.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.quota import QuotaExceeded as QuotaExceeded  # re-exported
from kim_appliance.mail.autoreply import build_auto_reply, wants_auto_reply
from kim_appliance.mail.dsn import DsnRecipient, build_dsn
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.mail.trace import trace_prefix
from kim_appliance.observe import FACHDIENST, Stage, relay_key, stored_key
from kim_appliance.store import Account, BlobRef, BlobWriter, RelayRecipient, StoredMessage

#: the header field that carries the relay id (see the module docstring); not ``X-`` (RFC 6648)
#: and not ``X-KIM-`` (gematik's, copied by Clientmodule)
RELAY_ID_FIELD = "KIM-Relay-ID"
_RELAY_ID = re.compile(rb"KIM-Relay-ID:[ \t]*(<[0-9a-f]{32}@[A-Za-z0-9.-]{1,253}>)\r\n", re.I)


@dataclass(frozen=True)
class Recipient:
    address: str
    notify: frozenset[str] | None
    orcpt: str | None
    #: the local account as RCPT TO read it (its absence note answers the message without a
    #: second store read, issue 13); None: read at delivery
    account: Account | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Envelope:
    mail_from: str  # "" for the null sender of delivery reports
    recipients: tuple[Recipient, ...]
    ret: str | None
    envid: str | None
    helo: str
    peer: str
    authenticated: bool
    message_id: str | None
    original_header: bytes


@dataclass(frozen=True)
class AcceptResult:
    queue_id: str
    relayed: bool


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def new_queue_id() -> str:
    return secrets.token_hex(8).upper()


def relay_id_field(relay_id: str, domain: str) -> bytes:
    """The ``KIM-Relay-ID`` line the relay puts before a message (``relay_id``: 32 hex)."""
    return f"{RELAY_ID_FIELD}: <{relay_id}@{domain}>\r\n".encode("ascii")


def relay_id_of(envelope: Envelope) -> str | None:
    """The relay id of a message another Fachdienst relayed, or None. Only the first header
    field counts, and only from a relaying Fachdienst (no AUTH: participants must AUTH, so an
    unauthenticated session is one whose C.FD.TLS-C was verified): a participant cannot make
    us drop a message by writing the field itself."""
    if envelope.authenticated:
        return None
    match = _RELAY_ID.match(envelope.original_header)
    return match.group(1).decode("ascii").lower() if match else None


async def accept(fd: Fachdienst, envelope: Envelope, blob: BlobWriter) -> AcceptResult:
    """Commit, deliver, queue and report one message; QuotaExceeded (552 5.2.2) if a local
    mailbox has no room: then nothing is delivered or queued.

    The quota check and the delivery are one transaction of the store: two messages that each
    fit but together overshoot cannot both pass the check (kim_appliance.fachdienst.quota).
    """
    now = dt.datetime.now(dt.UTC)
    started = trio.current_time()
    queue_id = new_queue_id()
    local = [r for r in envelope.recipients if domain_of(r.address) == fd.domain]
    remote = [r for r in envelope.recipients if domain_of(r.address) != fd.domain]
    relay_id = relay_id_of(envelope)
    by_domain: dict[str, list[Recipient]] = {}
    trace = _Trace(fd, envelope, relay_id)
    # leaving the block releases the blob: removed unless a delivery or queue entry holds it;
    # the trace records its hops on the way out, the acceptance first
    async with blob, trace:
        ref = await blob.commit()
        local = await _deliver_local(fd, envelope, ref, local, queue_id, now, relay_id, trace)
        for r in remote:
            by_domain.setdefault(domain_of(r.address), []).append(r)
        for domain, recipients in by_domain.items():
            entry = await fd.store.relay.enqueue(
                ref,
                sender=envelope.mail_from,
                recipients=[RelayRecipient(r.address, r.notify, r.orcpt) for r in recipients],
                envid=envelope.envid,
                ret=envelope.ret,
                source_domain=fd.domain,
                domain=domain,
                not_after=now + dt.timedelta(seconds=fd.config.relay_give_up_seconds),
                now=now,
            )
            trace.queued(entry.relay_id, domain, recipients, ref.size)
        trace.accepted(queue_id, ref.size, trio.current_time() - started)
    relayed = bool(by_domain)
    relayed |= await _absence_notes(fd, envelope, local, now)
    confirmed = [r for r in local if r.notify and "SUCCESS" in r.notify]
    if confirmed and envelope.mail_from:
        trace.reported(Stage.DSN, [r.address for r in confirmed], "delivered: 2.0.0")
        relayed |= await _report_quietly(
            fd,
            to=envelope.mail_from,
            envelope=envelope,
            arrival=now,
            recipients=[
                DsnRecipient(
                    final_recipient=r.address,
                    original_recipient=r.orcpt,
                    action="delivered",
                    status="2.0.0",
                )
                for r in confirmed
            ],
        )
    return AcceptResult(queue_id, relayed)


async def _deliver_local(
    fd: Fachdienst,
    envelope: Envelope,
    ref: BlobRef,
    local: Sequence[Recipient],
    queue_id: str,
    now: dt.datetime,
    relay_id: str | None,
    trace: _Trace | None = None,
) -> list[Recipient]:
    """Store the committed body in each local mailbox with its own trace prefix; returns the
    recipients stored now (with a relay id: not those an earlier attempt delivered)."""
    if not local:
        return []
    protocol = "ESMTPSA" if envelope.authenticated else "ESMTPS"
    deliveries = [
        (
            r.address,
            trace_prefix(
                mail_from=envelope.mail_from,
                from_host=envelope.helo or "unknown",
                from_ip=envelope.peer.rpartition(":")[0],
                by_host=fd.hostname,
                protocol=protocol,
                recipient=r.address,
                queue_id=queue_id,
                when=now,
                tls="TLS",
            ),
        )
        for r in local
    ]
    delivered = await fd.store.mail.deliver(
        ref, deliveries, now, check_quota=True, relay_id=relay_id
    )
    stored = {m.mailbox for m in delivered}
    fresh = [r for r in local if r.address.lower() in stored]
    if trace is not None and delivered:
        trace.stored(delivered)
    if len(fresh) < len(local):
        repeated = [r.address for r in local if r.address.lower() not in stored]
        fd.log.info("relay %s repeated: already delivered to %s", relay_id, ", ".join(repeated))
    return fresh


async def _report_quietly(
    fd: Fachdienst,
    *,
    to: str,
    envelope: Envelope,
    arrival: dt.datetime,
    recipients: Sequence[DsnRecipient],
) -> bool:
    """:func:`send_report` for a message that is already delivered: a failing report is logged
    and never turns the delivery into an error (the client would send the message again)."""
    try:
        return await send_report(
            fd, to=to, envelope=envelope, arrival=arrival, recipients=recipients
        )
    except Exception:
        fd.log.exception("delivery report to %s failed", to)
        return False


async def send_report(
    fd: Fachdienst,
    *,
    to: str,
    envelope: Envelope | None = None,
    original_header: bytes = b"",
    message_id: str | None = None,
    envid: str | None = None,
    arrival: dt.datetime,
    recipients: Sequence[DsnRecipient],
) -> bool:
    """Write a delivery report (RFC 3464) to ``to`` with the null sender; True if relayed.

    A report is never itself reported on (NOTIFY=NEVER, RFC 3461 §5.2).
    """
    if envelope is not None:
        original_header, message_id, envid = (
            envelope.original_header, envelope.message_id, envelope.envid,
        )  # fmt: skip
    report = build_dsn(
        reporting_mta=fd.hostname,
        dsn_from=f"mds@{fd.domain}",
        to=to,
        original_header=original_header,
        original_message_id=message_id,
        envid=envid,
        arrival=arrival,
        recipients=recipients,
    )
    return await deliver_system_message(fd, report, to)


async def deliver_system_message(fd: Fachdienst, message: bytes, to: str) -> bool:
    """Deliver a message from the null sender locally or queue it; True if queued for relay.

    System messages (delivery reports, absence notes) are not held to the quota: a full
    mailbox must still learn that its mail bounced."""
    now = dt.datetime.now(dt.UTC)
    domain = domain_of(to)
    local = domain == fd.domain
    if local and await fd.store.accounts.get(to) is None:
        fd.log.warning("report for unknown local mailbox %s dropped", to)
        return False
    async with fd.store.blobs.writer() as writer:
        await writer.write(message)
        return await _deliver_committed(fd, await writer.commit(), to, local, now)


async def _deliver_committed(
    fd: Fachdienst, ref: BlobRef, to: str, local: bool, now: dt.datetime
) -> bool:
    domain = domain_of(to)
    if local:
        prefix = trace_prefix(
            mail_from="",
            from_host=fd.hostname,
            from_ip="127.0.0.1",
            by_host=fd.hostname,
            # made here, not received: RFC 3848 has no "local" type and mail.trace accepts
            # the registered ones only
            protocol="ESMTP",
            recipient=to,
            queue_id=new_queue_id(),
            when=now,
            tls=None,
        )
        await fd.store.mail.deliver(ref, [(to, prefix)], now, check_quota=False)
        return False
    await fd.store.relay.enqueue(
        ref,
        sender="",
        recipients=[RelayRecipient(to, frozenset({"NEVER"}), None)],
        envid=None,
        ret=None,
        source_domain=fd.domain,
        domain=domain,
        not_after=now + dt.timedelta(seconds=fd.config.relay_give_up_seconds),
        now=now,
    )
    return True


async def _absence_notes(
    fd: Fachdienst, envelope: Envelope, local: Sequence[Recipient], now: dt.datetime
) -> bool:
    """Answer the sender for each local recipient with an active absence note, at most once
    per sender and note (KOM-LE-A_2223, A_2277, A_2278; RFC 3834). True if a reply is relayed.

    The "once" is the store's reply ledger (``autoreplies.remember``): durable, so it holds
    across restarts and across the nodes sharing the store.
    """
    if not local or not envelope.mail_from:
        return False
    try:
        header = parse_header_block(_header_block(envelope.original_header))
    except MailFormatError:
        return False
    if not wants_auto_reply(header, mail_from=envelope.mail_from):
        return False
    relayed = False
    for r in local:
        # the note as RCPT TO saw it, milliseconds ago (docs/decisions.md)
        account = r.account if r.account is not None else await fd.store.accounts.get(r.address)
        if account is None:
            continue
        note = account.out_of_office
        if not note.running(now) or note.message is None or note.start is None:
            continue
        if envelope.mail_from.lower() == account.address.lower():
            continue
        if not await fd.store.autoreplies.remember(
            account.address, envelope.mail_from, note.start, now
        ):
            continue
        reply = build_auto_reply(
            absent=account.address,
            display_name=account.display_name,
            to=envelope.mail_from,
            message=note.message,
            in_reply_to=envelope.message_id,
            domain=fd.domain,
        )
        try:
            relayed |= await deliver_system_message(fd, reply, envelope.mail_from)
        except Exception:
            fd.log.exception("absence note of %s to %s failed", account.address, envelope.mail_from)
    return relayed


class _Trace:
    """The hops of :func:`accept` in the message trace (issue 15): accepted, stored in each
    mailbox (linked by the stored copies' keys, which the POP3 server's hop names), queued for
    each other Fachdienst (linked by the relay key, which the relay worker's and the receiving
    Fachdienst's hops name), delivery reports. Envelope and header metadata only."""

    def __init__(self, fd: Fachdienst, envelope: Envelope, relay_id: str | None) -> None:
        self.fd = fd
        self.envelope = envelope
        self.ids: list[str | None] = [envelope.message_id]
        if relay_id is not None:
            self.ids.append(relay_key(relay_id))
        #: hops held back until the acceptance is recorded (it comes first in the trace)
        self._held: list[tuple[Stage, dict[str, Any]]] | None = []

    async def __aenter__(self) -> _Trace:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # what was stored or queued stays in the trace even if a later step failed
        held, self._held = self._held or [], None
        for stage, fields in held:
            self._record(stage, **fields)

    def _record(self, stage: Stage, **fields: Any) -> None:
        if self._held is not None and stage is not Stage.ACCEPTED:
            self._held.append((stage, fields))
            return
        self.fd.observer.record(
            FACHDIENST, stage, domain=self.fd.domain, sender=self.envelope.mail_from, **fields
        )

    def accepted(self, queue_id: str, size: int, duration: float) -> None:
        source = "from another Fachdienst" if not self.envelope.authenticated else "submitted"
        self._record(
            Stage.ACCEPTED,
            ids=self.ids,
            recipients=[r.address for r in self.envelope.recipients],
            result=250,
            size=size,
            facts={"queue_id": queue_id},
            detail=f"{source} via {self.envelope.peer}",
            duration=duration,
        )

    def stored(self, delivered: Sequence[StoredMessage]) -> None:
        self._record(
            Stage.STORED,
            ids=[*self.ids, *(stored_key(m.id) for m in delivered)],
            recipients=[m.mailbox for m in delivered],
            size=max(m.size for m in delivered),
            # the trace is kept as long as a stored copy may be (the account's dataTimeToLive)
            expires_at=max(m.expires_at for m in delivered),
        )

    def queued(
        self, relay_id: str, domain: str, recipients: Sequence[Recipient], size: int
    ) -> None:
        self._record(
            Stage.QUEUED,
            ids=[*self.ids, relay_key(relay_id)],
            recipients=[r.address for r in recipients],
            size=size,
            facts={"to_domain": domain},
        )

    def reported(self, stage: Stage, recipients: Sequence[str], detail: str) -> None:
        self._record(stage, ids=self.ids, recipients=recipients, detail=detail)


def _header_block(original_header: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = original_header.find(separator)
        if end >= 0:
            return original_header[:end]
    return original_header

"""Storing and routing an accepted message: local mailboxes, the relay queue, delivery reports.

:func:`accept` runs in a worker thread once the body is in a blob file. It commits the blob
(fsync + rename), delivers to this Fachdienst's mailboxes with a trace prefix each
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

It must never be called from the trio thread (it blocks on disk) and never reads the body.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from kim_appliance.fachdienst import quota
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.quota import QuotaExceeded as QuotaExceeded  # re-exported
from kim_appliance.mail.autoreply import build_auto_reply, wants_auto_reply
from kim_appliance.mail.dsn import DsnRecipient, build_dsn
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.mail.trace import trace_prefix
from kim_appliance.store import BlobRef, BlobWriter, RelayRecipient

#: the header field that carries the relay id (see the module docstring); not ``X-`` (RFC 6648)
#: and not ``X-KIM-`` (gematik's, copied by Clientmodule)
RELAY_ID_FIELD = "KIM-Relay-ID"
_RELAY_ID = re.compile(rb"KIM-Relay-ID:[ \t]*(<[0-9a-f]{32}@[A-Za-z0-9.-]{1,253}>)\r\n", re.I)


@dataclass(frozen=True)
class Recipient:
    address: str
    notify: frozenset[str] | None
    orcpt: str | None


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


def accept(fd: Fachdienst, envelope: Envelope, blob: BlobWriter) -> AcceptResult:
    """Commit, deliver, queue and report one message; QuotaExceeded (552 5.2.2) if a local
    mailbox has no room: then nothing is delivered or queued.

    The quota check and the delivery run under the local mailboxes' locks (fachdienst.quota):
    two messages that each fit but together overshoot cannot both pass the check.
    """
    now = dt.datetime.now(dt.UTC)
    queue_id = new_queue_id()
    local = [r for r in envelope.recipients if domain_of(r.address) == fd.domain]
    remote = [r for r in envelope.recipients if domain_of(r.address) != fd.domain]
    relay_id = relay_id_of(envelope)
    # leaving the block releases the blob: removed unless a delivery or queue entry holds it
    with blob:
        ref = blob.commit()  # the fsync outside the mailbox locks; refused -> released below
        with quota.room_for_delivery(fd, [r.address for r in local], blob.size):
            local = _deliver_local(fd, envelope, ref, local, queue_id, now, relay_id)
        by_domain: dict[str, list[Recipient]] = {}
        for r in remote:
            by_domain.setdefault(domain_of(r.address), []).append(r)
        for domain, recipients in by_domain.items():
            fd.store.enqueue_relay(
                ref,
                sender=envelope.mail_from,
                recipients=[RelayRecipient(r.address, r.notify, r.orcpt) for r in recipients],
                envid=envelope.envid,
                ret=envelope.ret,
                domain=domain,
                not_after=now + dt.timedelta(seconds=fd.config.relay_give_up_seconds),
            )
    relayed = bool(by_domain)
    relayed |= _absence_notes(fd, envelope, local, now)
    confirmed = [r for r in local if r.notify and "SUCCESS" in r.notify]
    if confirmed and envelope.mail_from:
        relayed |= _report_quietly(
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


def _deliver_local(
    fd: Fachdienst,
    envelope: Envelope,
    ref: BlobRef,
    local: Sequence[Recipient],
    queue_id: str,
    now: dt.datetime,
    relay_id: str | None,
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
    stored = {m.mailbox for m in fd.store.deliver(ref, deliveries, relay_id=relay_id)}
    fresh = [r for r in local if r.address.lower() in stored]
    if len(fresh) < len(local):
        repeated = [r.address for r in local if r.address.lower() not in stored]
        fd.log.info("relay %s repeated: already delivered to %s", relay_id, ", ".join(repeated))
    return fresh


def _report_quietly(
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
        return send_report(fd, to=to, envelope=envelope, arrival=arrival, recipients=recipients)
    except Exception:
        fd.log.exception("delivery report to %s failed", to)
        return False


def send_report(
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
    return deliver_system_message(fd, report, to)


def deliver_system_message(fd: Fachdienst, message: bytes, to: str) -> bool:
    """Deliver a message from the null sender locally or queue it; True if queued for relay."""
    now = dt.datetime.now(dt.UTC)
    domain = domain_of(to)
    local = domain == fd.domain
    if local and fd.store.get_account(to) is None:
        fd.log.warning("report for unknown local mailbox %s dropped", to)
        return False
    with fd.store.new_blob() as writer:
        writer.write(message)
        return _deliver_committed(fd, writer.commit(), to, local, now)


def _deliver_committed(
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
        fd.store.deliver(ref, [(to, prefix)])
        return False
    fd.store.enqueue_relay(
        ref,
        sender="",
        recipients=[RelayRecipient(to, frozenset({"NEVER"}), None)],
        envid=None,
        ret=None,
        domain=domain,
        not_after=now + dt.timedelta(seconds=fd.config.relay_give_up_seconds),
    )
    return True


def _absence_notes(
    fd: Fachdienst, envelope: Envelope, local: Sequence[Recipient], now: dt.datetime
) -> bool:
    """Answer the sender for each local recipient with an active absence note, at most once
    per sender and note (KOM-LE-A_2223, A_2277, A_2278; RFC 3834). True if a reply is relayed.

    The "once" is remembered in memory per Fachdienst: after a restart a sender may get the
    note once more (a harmless repeat, RFC 3834 §2 allows it).
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
        account = fd.store.get_account(r.address)
        if account is None:
            continue
        note = account.out_of_office
        if not note.active or note.message is None or note.start is None or note.end is None:
            continue
        if not note.start <= now <= note.end:
            continue
        key = (account.address.lower(), envelope.mail_from.lower(), note.start.isoformat())
        if key in fd.auto_replied or envelope.mail_from.lower() == account.address.lower():
            continue
        fd.auto_replied.add(key)
        reply = build_auto_reply(
            absent=account.address,
            display_name=account.display_name,
            to=envelope.mail_from,
            message=note.message,
            in_reply_to=envelope.message_id,
            domain=fd.domain,
        )
        try:
            relayed |= deliver_system_message(fd, reply, envelope.mail_from)
        except Exception:
            fd.log.exception("absence note of %s to %s failed", account.address, envelope.mail_from)
    return relayed


def _header_block(original_header: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = original_header.find(separator)
        if end >= 0:
            return original_header[:end]
    return original_header

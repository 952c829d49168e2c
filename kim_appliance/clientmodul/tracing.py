"""The Clientmodul's hops of the message trace (issue 15), one function per point of the pipeline.

The SMTP proxy calls :func:`sent` or :func:`refused` once a mail of the PVS is sealed or
refused, :func:`submitted` when the MTA has answered, :func:`reported` after a report to the
sender; the POP3 proxy calls :func:`received` once a message is processed. Each turns what the
pipeline already knows into events of :class:`kim_appliance.observe.observer.Observer` (which
never blocks and never raises for a full queue). Ids: the PVS's Message-ID and the KIM
Message-ID (the same unless the PVS gave none, KOM-LE-A_2101-01). This module must never put a
subject or body into an event: addresses, sizes, codes, key types and reasons only.
"""

from __future__ import annotations

from collections.abc import Sequence

from kim_appliance.clientmodul.receive import ReceivedMessage
from kim_appliance.clientmodul.send import Dropped, Prepared, Transmitted
from kim_appliance.mail.headers import HeaderBlock
from kim_appliance.observe import CLIENTMODUL, Stage
from kim_appliance.observe.observer import Observer
from kim_appliance.protocols.smtp import Reply, ServerReply

#: the Clientmodul's stage for each kind of processed message (receive.Kind)
_RECEIVED_STAGE = {"passthrough": Stage.FETCHED, "delivered": Stage.OPENED}


def _pvs_id(header: HeaderBlock) -> str | None:
    return (header.get("Message-ID") or "").strip() or None


def _dropped(
    observer: Observer, account: str, ids: Sequence[str | None], dropped: Sequence[Dropped]
) -> None:
    for d in dropped:
        observer.record(
            CLIENTMODUL,
            Stage.DROPPED,
            ids=ids,
            sender=account,
            recipients=[d.address],
            result=d.code,
            detail=d.reason,
        )


def refused(
    observer: Observer,
    *,
    account: str,
    recipients: Sequence[str],
    size: int,
    reply: Reply,
    original_header: HeaderBlock | None = None,
    dropped: Sequence[Dropped] = (),
    duration: float | None = None,
) -> None:
    """The mail was taken from the PVS and refused: nothing went to the Fachdienst."""
    ids = [_pvs_id(original_header)] if original_header is not None else []
    observer.record(
        CLIENTMODUL, Stage.ACCEPTED, ids=ids, sender=account, recipients=recipients, size=size
    )
    _dropped(observer, account, ids, dropped)
    observer.record(
        CLIENTMODUL,
        Stage.REFUSED,
        ids=ids,
        sender=account,
        recipients=recipients,
        result=reply.code,
        detail=reply.text,
        duration=duration,
    )


def sent(
    observer: Observer,
    *,
    account: str,
    recipients: Sequence[str],
    size: int,
    prepared: Prepared,
    duration: float,
) -> None:
    """The mail was taken from the PVS and sealed (or forwarded as it is, KOM-LE-A_2029)."""
    pvs_id = _pvs_id(prepared.original_header)
    ids = [prepared.message_id, pvs_id]
    observer.record(
        CLIENTMODUL, Stage.ACCEPTED, ids=ids, sender=account, recipients=recipients, size=size
    )
    _dropped(observer, account, ids, prepared.dropped)
    facts = {"transport": "kas" if prepared.kas_link else "direct"}
    if prepared.key_types:
        facts["keys"] = ",".join(prepared.key_types)
    if prepared.forwarded:
        facts["forwarded"] = "yes"
    observer.record(
        CLIENTMODUL,
        Stage.SEALED,
        ids=ids,
        sender=account,
        recipients=prepared.recipients,
        size=prepared.outer_size,
        facts=facts,
        duration=duration,
    )


def submitted(
    observer: Observer,
    *,
    account: str,
    prepared: Prepared,
    transmitted: Transmitted,
    duration: float,
) -> None:
    """The Fachdienst's MTA answered the message (only 250 is success for the PVS)."""
    ids = [prepared.message_id, _pvs_id(prepared.original_header)]
    _dropped(observer, account, ids, transmitted.refused)
    reply = transmitted.reply
    observer.record(
        CLIENTMODUL,
        Stage.SUBMITTED,
        ids=ids,
        sender=account,
        recipients=prepared.recipients,
        result=reply.code,
        size=prepared.outer_size,
        detail=reply.text,
        duration=duration,
    )


def reported(
    observer: Observer,
    *,
    account: str,
    original_header: HeaderBlock,
    dropped: int,
    answer: ServerReply | None,
) -> None:
    """A report about ``dropped`` recipients went to the sender (KOM-LE-A_2024-01)."""
    observer.record(
        CLIENTMODUL,
        Stage.ERROR_MAIL,
        ids=[_pvs_id(original_header)],
        sender=account,
        recipients=[account],
        result=None if answer is None else answer.code,
        detail=f"report to the sender on {dropped} dropped recipient(s)",
    )


def received(
    observer: Observer, *, account: str, message: ReceivedMessage, duration: float
) -> None:
    """A message fetched from the Fachdienst and processed for the PVS: decrypted and verified
    (with DecryptionResult and IntegrityCheckResult), passed through, or an error mail."""
    facts: dict[str, str] = {"kind": message.kind}
    if message.integrity_results:
        facts["integrity"] = "/".join(message.integrity_results)
    if message.error_codes:
        facts["error_codes"] = "/".join(message.error_codes)
    observer.record(
        CLIENTMODUL,
        _RECEIVED_STAGE.get(message.kind, Stage.ERROR_MAIL),
        ids=[message.message_id],
        sender=message.sender,
        recipients=[account],
        result=message.decryption_result,
        size=message.size,
        facts=facts,
        detail="; ".join(message.problems[:2]),
        duration=duration,
    )

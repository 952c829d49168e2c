"""Data deletion of a Fachdienst: mail past its dataTimeToLive and accounts past their retention.

One :func:`retention_pass` (the retention task in :mod:`kim_appliance.fachdienst.service` runs it
every ``retention_interval_seconds``) does, at the time ``now`` it is given:

* deletes every stored message older than its account's ``dataTimeToLive`` (digest §3.2:
  10-365 days, default 90);
* purges every deregistered account of this Fachdienst whose ``deregDate`` plus its retention
  has passed (KOM-LE-A_2155 "all data is deleted after the retention period"): its address in
  the VZD (if still there), then in one store transaction its mailbox with the blobs, its KAS
  uploads and the account row. The store keeps a tombstone (address + Telematik-ID) so that
  the Account Manager never gives the address to another Telematik-ID (A_19464-02);
* deletes KAS uploads whose uploader has no account any more (left by a data dir of an earlier
  version, whose KAS was a store of its own);
* forgets bookkeeping that has served its time: failed-login counters idle for
  :data:`LOGIN_FAILURE_KEEP`, the reply ledger of absence notes that no longer run, and the
  message trace events past their expiry (issue 15: a trace is kept with the mail's retention;
  an event expires with the stored copy it describes, others after the Fachdienst's
  ``data_ttl_days``).

Spec gap (digest §7.1): the "Löschfrist nach der endgültigen Deregistrierung" is a configuration
value whose default gematik does not publish. Here the retention after ``deregDate`` is the
account's own ``dataTimeToLive`` (default 90 days), the period the participant chose for their
data; ``retention_after_deregistration`` overrides it for every account.

It never speaks SMTP or HTTP and never touches an account that is not deregistered.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from kim_appliance.directory.store import DirectoryError
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.store.base import Account, AccountNotFound

#: a failed-login counter with no failure for this long and no lock running is forgotten (the
#: lockout policy itself starts again at zero after its forget_after, 24 h)
LOGIN_FAILURE_KEEP = dt.timedelta(days=2)


@dataclass(frozen=True)
class RetentionResult:
    """What one pass deleted."""

    expired_messages: int = 0
    purged_accounts: tuple[str, ...] = ()
    purged_messages: int = 0
    purged_attachments: int = 0
    orphan_attachments: int = 0
    expired_trace_events: int = 0
    errors: tuple[str, ...] = field(default=())


def purge_due(
    account: Account, now: dt.datetime, retention: dt.timedelta | None = None
) -> dt.datetime | None:
    """When the deregistered ``account`` is purged (None: it is not deregistered)."""
    if account.status != "deregistered" or account.dereg_date is None:
        return None
    keep = retention if retention is not None else dt.timedelta(days=account.data_ttl_days)
    return account.dereg_date + keep


async def purge_account(fd: Fachdienst, account: Account, now: dt.datetime) -> tuple[int, int]:
    """Delete every piece of ``account``'s data (KOM-LE-A_2155); (messages, attachments).

    Order: the VZD address first, then the store's purge (mailbox, KAS uploads, account row,
    tombstone: one transaction), so that a crash in between leaves a deregistered account that
    the next pass purges again.
    """
    if fd.directory is not None:
        try:
            await fd.directory.remove_address(account.telematik_id, fd.domain, account.address)
        except DirectoryError as exc:
            if exc.status != 404:  # the Account Manager took it out at deregistration
                raise
    try:
        purged = await fd.store.accounts.purge(account.address, now=now)
    except AccountNotFound:
        return 0, 0
    return purged.messages, purged.attachments


async def retention_pass(
    fd: Fachdienst,
    now: dt.datetime,
    *,
    retention_after_deregistration: dt.timedelta | None = None,
) -> RetentionResult:
    """One pass of the retention task at ``now`` (see the module docstring)."""
    store = fd.store
    expired = await store.mail.expire(now)
    purged: list[str] = []
    purged_messages = purged_attachments = 0
    errors: list[str] = []
    for account in await store.accounts.list(fd.domain):
        due = purge_due(account, now, retention_after_deregistration)
        if due is None or due > now:
            continue
        try:
            messages, attachments = await purge_account(fd, account, now)
        except Exception as exc:  # one broken account must not stop the others' deletion
            errors.append(f"{account.address}: {exc}")
            fd.log.exception("fachdienst %s: purge of %s failed", fd.domain, account.address)
            continue
        purged.append(account.address)
        purged_messages += messages
        purged_attachments += attachments
        fd.log.info(
            "fachdienst %s: deregistered account %s purged (%d messages, %d attachments)",
            fd.domain, account.address, messages, attachments,
        )  # fmt: skip
    orphans = 0
    for uploader in await store.kas.uploaders(fd.domain):
        if await store.accounts.get(uploader) is None:
            orphans += await store.kas.delete_uploads_of(uploader)
    await store.logins.expire(now, LOGIN_FAILURE_KEEP)
    await store.autoreplies.expire(now)
    # the message traces go with the mail's retention (each event carries its expiry)
    traces = await store.traces.expire(now)
    return RetentionResult(
        expired_messages=expired,
        purged_accounts=tuple(purged),
        purged_messages=purged_messages,
        purged_attachments=purged_attachments,
        orphan_attachments=orphans,
        expired_trace_events=traces,
        errors=tuple(errors),
    )

"""Data deletion (KOM-LE-A_2155, digest §3.2) and the shared quota (digest §3.2/§3.5) on a
Fachdienst with a real store (mail, KAS and VZD in the embedded store), the clock injected
(no sleeping for days). The retention task itself runs as a trio task with a fake clock."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import trio
import trio.testing
from fd_support import _quick_hash, fachdienst_on

from kim_appliance.config import FachdienstConfig
from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.directory.store import DirectoryStore
from kim_appliance.fachdienst import delivery, quota
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.retention import retention_pass
from kim_appliance.fachdienst.service import retention_worker
from kim_appliance.store import Account, AttachmentNotFound
from kim_appliance.store.sqlite import SQLiteStore, _mail

DOMAIN = "fd1.kim.telematik-test"
TID = "1-SMC-B-Testkarte-883110000100"
GONE = f"alt.praxis@{DOMAIN}"
STAYS = f"praxis.weber@{DOMAIN}"
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def fd(kim_store: SQLiteStore) -> Fachdienst:
    directory = await DirectoryStore.open(kim_store.directory)
    await directory.put_entry(DirectoryEntry(uid=TID, telematik_id=TID, display_name="Praxis Alt"))
    for address in (GONE, STAYS):
        await kim_store.accounts.create(Account(address, _quick_hash("x"), TID, "Praxis"))
        await directory.set_address(TID, DOMAIN, KimAddress(address, "1.5+"))
    return fachdienst_on(
        kim_store,
        DOMAIN,
        config=FachdienstConfig(domains=()),
        directory=directory,
        clock=Clock(NOW),
    )


async def _deliver(fd: Fachdienst, to: str, body: bytes, when: dt.datetime) -> None:
    async with fd.store.blobs.writer() as writer:
        await writer.write(body)
        blob = await writer.commit()
        await fd.store.mail.deliver(blob, [(to, b"Return-Path: <>\r\n")], when, check_quota=True)


async def _upload(fd: Fachdienst, uploader: str, size: int, expires: dt.datetime) -> str:
    async with fd.store.blobs.writer(compress=False) as writer:
        await writer.write(b"k" * size)
        blob = await writer.commit()
        attachment = await fd.store.kas.commit(
            blob,
            reservation_id=None,
            domain=DOMAIN,
            uploader=uploader,
            recipients=[STAYS],
            message_id="<m@x>",
            filename="a.enc",
            expires_at=expires,
            now=NOW - dt.timedelta(days=1),
        )
    return attachment.id


def _blob_files(fd: Fachdienst) -> int:
    assert isinstance(fd.store, SQLiteStore)
    return sum(1 for p in (fd.store.root / "blobs").rglob("*") if p.is_file())


async def _deregister(fd: Fachdienst, address: str, dereg_date: dt.datetime) -> None:
    await fd.store.accounts.update(address, status="deregistered", dereg_date=dereg_date)


async def _kas_usage(fd: Fachdienst, address: str) -> int:
    """The uploads of ``address`` counted in its quota (its mailbox is empty in these tests)."""
    return await fd.store.mail.usage(address, NOW)


async def test_messages_past_the_data_time_to_live_are_deleted(fd: Fachdienst) -> None:
    """digest §3.2: mail on the server follows dataTimeToLive (default 90 days); the retention
    pass deletes the older messages and keeps the younger ones."""
    await _deliver(fd, STAYS, b"old\r\n", NOW - dt.timedelta(days=91))
    await _deliver(fd, STAYS, b"young\r\n", NOW - dt.timedelta(days=89))
    result = await retention_pass(fd, NOW)
    assert result.expired_messages == 1
    sizes = [m.size for m in await fd.store.mail.list(STAYS)]
    assert sizes == [len(b"Return-Path: <>\r\nyoung\r\n")]


async def test_deregistered_account_past_its_retention_is_purged(fd: Fachdienst) -> None:
    """KOM-LE-A_2155: once deregDate + the retention (the account's dataTimeToLive, 90 days)
    has passed, all data goes: mailbox and blob files, KAS uploads, the VZD address and the
    account row. The other account and its data stay."""
    dereg = NOW - dt.timedelta(days=91)
    await _deliver(fd, GONE, b"for the old practice\r\n", NOW - dt.timedelta(days=1))
    await _deliver(fd, STAYS, b"for weber\r\n", NOW - dt.timedelta(days=1))
    gone_upload = await _upload(fd, GONE, 100, NOW + dt.timedelta(days=30))
    kept_upload = await _upload(fd, STAYS, 50, NOW + dt.timedelta(days=30))
    await _deregister(fd, GONE, dereg)
    assert fd.directory is not None
    assert _blob_files(fd) == 4  # two messages, two uploads

    result = await retention_pass(fd, NOW)

    assert result.purged_accounts == (GONE,)
    assert (result.purged_messages, result.purged_attachments) == (1, 1)
    assert await fd.store.accounts.get(GONE) is None
    assert await fd.store.accounts.get(STAYS) is not None
    assert _blob_files(fd) == 2
    assert fd.directory.find_by_mail(GONE) is None
    assert fd.directory.find_by_mail(STAYS) is not None
    with pytest.raises(AttachmentNotFound):
        await fd.store.kas.get(gone_upload, DOMAIN, NOW)
    assert (await fd.store.kas.get(kept_upload, DOMAIN, NOW)).uploader == STAYS
    # the address stays reserved for its Telematik-ID (A_19464-02)
    assert await fd.store.accounts.retired_telematik_id(GONE) == TID
    assert await fd.store.accounts.retired_telematik_id(STAYS) is None


async def test_deregistered_account_within_its_retention_is_kept(fd: Fachdienst) -> None:
    """KOM-LE-A_2155: nothing is deleted before deregDate + retention; revokeDeregistration
    still finds everything (digest §3.2)."""
    await _deliver(fd, GONE, b"keep me\r\n", NOW - dt.timedelta(days=1))
    await _deregister(fd, GONE, NOW - dt.timedelta(days=89))
    result = await retention_pass(fd, NOW)
    assert result.purged_accounts == ()
    assert len(await fd.store.mail.list(GONE)) == 1


async def test_retention_override_and_a_short_data_time_to_live(fd: Fachdienst) -> None:
    """The retention after deregDate is the account's dataTimeToLive (10..365 days): with 10
    days the purge comes 10 days after deregDate."""
    await fd.store.accounts.update(GONE, data_ttl_days=10)
    await _deregister(fd, GONE, NOW - dt.timedelta(days=10, seconds=1))
    assert (await retention_pass(fd, NOW)).purged_accounts == (GONE,)


async def test_kas_uploads_without_an_account_are_removed(fd: Fachdienst) -> None:
    """KAS data whose uploader has no account (left by a data dir of an earlier version, whose
    KAS was a store of its own and missed a purge) goes on the next pass (KOM-LE-A_2155)."""
    ghost = f"ehemals@{DOMAIN}"
    await _upload(fd, ghost, 10, NOW + dt.timedelta(days=5))
    kept = await _upload(fd, STAYS, 10, NOW + dt.timedelta(days=5))
    assert (await retention_pass(fd, NOW)).orphan_attachments == 1
    assert await fd.store.kas.uploaders(DOMAIN) == {STAYS}
    assert (await fd.store.kas.get(kept, DOMAIN, NOW)).size == 10


async def test_the_retention_task_purges_at_the_fachdienst_clock(fd: Fachdienst) -> None:
    """KOM-LE-A_2155 through the retention task of the running Fachdienst: with the clock moved
    past deregDate + retention, the next pass purges the account; nothing waits for days."""
    clock = Clock(NOW)
    fd.clock = clock
    await _deregister(fd, GONE, NOW + dt.timedelta(days=30))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: retention_worker(fd, interval_seconds=0.05))
        await trio.sleep(0.2)
        # 30 days to deregDate, then 90 more
        assert await fd.store.accounts.get(GONE) is not None
        clock.now = NOW + dt.timedelta(days=121)
        with trio.fail_after(30):
            while await fd.store.accounts.get(GONE) is not None:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert await fd.store.accounts.get(STAYS) is not None


# -- the quota: KAS uploads count, check and reserve are atomic ---------------------------------


async def test_kas_uploads_count_in_the_quota(fd: Fachdienst) -> None:
    """digest §3.2/§3.5: one quota per account for mailbox and KAS: an upload of the account
    leaves less room for mail to it, and remainQuota says so."""
    await fd.store.accounts.update(STAYS, quota_bytes=1000)
    await _upload(fd, STAYS, 700, NOW + dt.timedelta(days=1))
    account = await fd.store.accounts.get(STAYS)
    assert account is not None
    assert await quota.usage(fd, account) == 700
    assert await quota.remaining(fd, account) == 300
    body = b"x" * (300 - len(b"Return-Path: <>\r\n"))
    with pytest.raises(quota.QuotaExceeded, match="700 of 1000 bytes used"):
        await _deliver(fd, STAYS, body + b"!", NOW)
    await _deliver(fd, STAYS, body, NOW)
    assert await quota.remaining(fd, account) == 0


async def test_upload_reservations_are_atomic(fd: Fachdienst) -> None:
    """digest §3.5: a KAS upload reserves its size at once; a second upload that would overshoot
    the quota together with the first one in flight is refused (507 in the KAS)."""
    await fd.store.accounts.update(STAYS, quota_bytes=1000)
    ttl = quota.UPLOAD_RESERVATION_TTL
    first = await fd.store.kas.reserve(STAYS, 600, NOW, ttl)
    with pytest.raises(quota.QuotaExceeded):
        await fd.store.kas.reserve(STAYS, 600, NOW, ttl)
    await fd.store.kas.release(first)
    await fd.store.kas.reserve(STAYS, 600, NOW, ttl)


def _envelope(to: str) -> delivery.Envelope:
    return delivery.Envelope(
        mail_from=GONE,
        recipients=(delivery.Recipient(to, None, None),),
        ret=None,
        envid=None,
        helo="test",
        peer="127.0.0.1:1",
        authenticated=True,
        message_id=None,
        original_header=b"Subject: x\r\n\r\n",
    )


async def test_two_concurrent_deliveries_never_overshoot_the_quota(
    fd: Fachdienst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """digest §3.2: two messages that each fit but not together, delivered at the same time
    into one mailbox: one is stored, the other refused (552 5.2.2). The store's usage query is
    slowed down so that both checks would overlap if the check and the insert were not one
    transaction."""
    await fd.store.accounts.update(STAYS, quota_bytes=1500)
    real_usage = _mail.usage_of

    def slow_usage(*args: object) -> int:
        used = real_usage(*args)  # type: ignore[arg-type]
        time.sleep(0.2)
        return used

    monkeypatch.setattr(_mail, "usage_of", slow_usage)
    outcomes: list[str] = []

    async def send() -> None:
        writer = fd.store.blobs.writer()
        await writer.write(b"x" * 1000)
        try:
            await delivery.accept(fd, _envelope(STAYS), writer)
            outcomes.append("stored")
        except quota.QuotaExceeded:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
    assert sorted(outcomes) == ["refused", "stored"]
    assert len(await fd.store.mail.list(STAYS)) == 1
    assert _blob_files(fd) == 1  # the refused body left no file

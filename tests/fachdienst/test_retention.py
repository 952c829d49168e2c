"""Data deletion (KOM-LE-A_2155, digest §3.2) and the shared quota (digest §3.2/§3.5) on a
Fachdienst with real stores: a SQLite mail store, a KAS store and a VZD, the clock injected
(no sleeping for days). The retention task itself runs as a trio task with a fake clock."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from fd_support import _quick_hash

from kim_appliance.config import FachdienstConfig
from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.directory.store import DirectoryStore
from kim_appliance.fachdienst import delivery, quota
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.context import Fachdienst, RelayEndpoints
from kim_appliance.fachdienst.kas_store import KasStore
from kim_appliance.fachdienst.retention import retention_pass
from kim_appliance.fachdienst.service import retention_worker
from kim_appliance.store import Account, open_store

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
def fd(tmp_path: Path) -> Iterator[Fachdienst]:
    store = open_store(tmp_path / "fd")
    kas = KasStore.open(tmp_path / "kas")
    directory = DirectoryStore()
    directory.put_entry(DirectoryEntry(uid=TID, telematik_id=TID, display_name="Praxis Alt"))
    for address in (GONE, STAYS):
        store.create_account(Account(address, _quick_hash("x"), TID, "Praxis"))
        directory.set_address(TID, DOMAIN, KimAddress(address, "1.5+"))
    fachdienst = Fachdienst(
        domain=DOMAIN,
        config=FachdienstConfig(domains=()),
        store=store,
        auth=Authenticator(store, max_failed_logins=5, lockout_seconds=60),
        endpoints=RelayEndpoints(),
        server_ssl=ssl.create_default_context(),
        client_ssl=ssl.create_default_context(),
        log=logging.getLogger("tests.retention"),
        kas=kas,
        directory=directory,
        clock=Clock(NOW),
    )
    yield fachdienst
    kas.close()
    store.close()


def _deliver(fd: Fachdienst, to: str, body: bytes, when: dt.datetime) -> None:
    with fd.store.new_blob() as writer:
        writer.write(body)
        fd.store.deliver(writer.commit(), [(to, b"Return-Path: <>\r\n")], now=when)


def _upload(fd: Fachdienst, uploader: str, size: int, expires: dt.datetime) -> str:
    assert fd.kas is not None
    with fd.kas.new_upload(declared_size=size) as upload:
        upload.write(b"k" * size)
        return upload.commit(
            uploader=uploader,
            recipients=[STAYS],
            message_id="<m@x>",
            filename="a.enc",
            expires_at=expires,
            now=NOW - dt.timedelta(days=1),
        ).id


def _blob_files(fd: Fachdienst) -> int:
    return sum(1 for p in (fd.store.data_dir / "blobs").rglob("*") if p.is_file())  # type: ignore[attr-defined]


def _deregister(fd: Fachdienst, address: str, dereg_date: dt.datetime) -> None:
    fd.store.update_account(address, status="deregistered", dereg_date=dereg_date)


def test_messages_past_the_data_time_to_live_are_deleted(fd: Fachdienst) -> None:
    """digest §3.2: mail on the server follows dataTimeToLive (default 90 days); the retention
    pass deletes the older messages and keeps the younger ones."""
    _deliver(fd, STAYS, b"old\r\n", NOW - dt.timedelta(days=91))
    _deliver(fd, STAYS, b"young\r\n", NOW - dt.timedelta(days=89))
    result = retention_pass(fd, NOW)
    assert result.expired_messages == 1
    assert [m.size for m in fd.store.list_messages(STAYS)] == [len(b"Return-Path: <>\r\nyoung\r\n")]


def test_deregistered_account_past_its_retention_is_purged(fd: Fachdienst) -> None:
    """KOM-LE-A_2155: once deregDate + the retention (the account's dataTimeToLive, 90 days)
    has passed, all data goes: mailbox and blob files, KAS uploads, the VZD address and the
    account row. The other account and its data stay."""
    dereg = NOW - dt.timedelta(days=91)
    _deliver(fd, GONE, b"for the old practice\r\n", NOW - dt.timedelta(days=1))
    _deliver(fd, STAYS, b"for weber\r\n", NOW - dt.timedelta(days=1))
    gone_upload = _upload(fd, GONE, 100, NOW + dt.timedelta(days=30))
    kept_upload = _upload(fd, STAYS, 50, NOW + dt.timedelta(days=30))
    _deregister(fd, GONE, dereg)
    assert fd.directory is not None
    assert fd.kas is not None
    assert _blob_files(fd) == 2

    result = retention_pass(fd, NOW)

    assert result.purged_accounts == (GONE,)
    assert (result.purged_messages, result.purged_attachments) == (1, 1)
    assert fd.store.get_account(GONE) is None
    assert fd.store.get_account(STAYS) is not None
    assert _blob_files(fd) == 1
    assert fd.directory.find_by_mail(GONE) is None
    assert fd.directory.find_by_mail(STAYS) is not None
    assert fd.kas.usage(GONE) == 0
    assert not fd.kas.blob_path(gone_upload).exists()
    assert fd.kas.blob_path(kept_upload).exists()
    # the address stays reserved for its Telematik-ID (A_19464-02)
    assert fd.store.retired_telematik_id(GONE) == TID
    assert fd.store.retired_telematik_id(STAYS) is None


def test_deregistered_account_within_its_retention_is_kept(fd: Fachdienst) -> None:
    """KOM-LE-A_2155: nothing is deleted before deregDate + retention; revokeDeregistration
    still finds everything (digest §3.2)."""
    _deliver(fd, GONE, b"keep me\r\n", NOW - dt.timedelta(days=1))
    _deregister(fd, GONE, NOW - dt.timedelta(days=89))
    result = retention_pass(fd, NOW)
    assert result.purged_accounts == ()
    assert len(fd.store.list_messages(GONE)) == 1


def test_retention_override_and_a_short_data_time_to_live(fd: Fachdienst) -> None:
    """The retention after deregDate is the account's dataTimeToLive (10..365 days): with 10
    days the purge comes 10 days after deregDate."""
    fd.store.update_account(GONE, data_ttl_days=10)
    _deregister(fd, GONE, NOW - dt.timedelta(days=10, seconds=1))
    assert retention_pass(fd, NOW).purged_accounts == (GONE,)


def test_kas_uploads_of_an_account_purged_earlier_are_removed(fd: Fachdienst) -> None:
    """KAS data left behind by a purge that ran without the KAS (an orphan) goes on the next
    pass (KOM-LE-A_2155)."""
    _upload(fd, GONE, 10, NOW + dt.timedelta(days=5))
    kas = fd.kas
    fd.kas = None
    _deregister(fd, GONE, NOW - dt.timedelta(days=100))
    assert retention_pass(fd, NOW).purged_accounts == (GONE,)
    fd.kas = kas
    assert kas is not None
    assert kas.usage(GONE) == 10
    assert retention_pass(fd, NOW).orphan_attachments == 1
    assert kas.usage(GONE) == 0


async def test_the_retention_task_purges_at_the_fachdienst_clock(fd: Fachdienst) -> None:
    """KOM-LE-A_2155 through the retention task of the running Fachdienst: with the clock moved
    past deregDate + retention, the next pass purges the account; nothing waits for days."""
    clock = Clock(NOW)
    fd.clock = clock
    _deregister(fd, GONE, NOW + dt.timedelta(days=30))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: retention_worker(fd, interval_seconds=0.05))
        await trio.sleep(0.2)
        assert fd.store.get_account(GONE) is not None  # 30 days to deregDate, then 90 more
        clock.now = NOW + dt.timedelta(days=121)
        with trio.fail_after(30):
            while fd.store.get_account(GONE) is not None:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert fd.store.get_account(STAYS) is not None


# -- the quota: KAS uploads count, check and reserve are atomic ---------------------------------


def test_kas_uploads_count_in_the_quota(fd: Fachdienst) -> None:
    """digest §3.2/§3.5: one quota per account for mailbox and KAS: an upload of the account
    leaves less room for mail to it, and remainQuota says so."""
    fd.store.update_account(STAYS, quota_bytes=1000)
    _upload(fd, STAYS, 700, NOW + dt.timedelta(days=1))
    account = fd.store.get_account(STAYS)
    assert account is not None
    assert quota.usage(fd, account) == 700
    assert quota.remaining(fd, account) == 300
    with (
        pytest.raises(quota.QuotaExceeded, match="700 of 1000 bytes used"),
        quota.room_for_delivery(fd, [STAYS], 301),
    ):
        pass
    with quota.room_for_delivery(fd, [STAYS], 300):
        pass


def test_upload_reservations_are_atomic(fd: Fachdienst) -> None:
    """digest §3.5: a KAS upload reserves its size at once; a second upload that would overshoot
    the quota together with the first one in flight is refused (507 in the KAS)."""
    fd.store.update_account(STAYS, quota_bytes=1000)
    quota.reserve_upload(fd, STAYS, 600)
    with pytest.raises(quota.QuotaExceeded):
        quota.reserve_upload(fd, STAYS, 600)
    fd.quota.release(STAYS, 600)
    quota.reserve_upload(fd, STAYS, 600)


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


def test_two_concurrent_deliveries_never_overshoot_the_quota(
    fd: Fachdienst, monkeypatch: pytest.MonkeyPatch
) -> None:
    """digest §3.2: two messages that each fit but not together, delivered at the same time
    into one mailbox: one is stored, the other refused (552 5.2.2). The usage query is slowed
    down so that both checks would overlap without the per-mailbox lock."""
    fd.store.update_account(STAYS, quota_bytes=1500)
    slow_usage = fd.store.mailbox_usage

    def usage(mailbox: str) -> int:
        used = slow_usage(mailbox)
        time.sleep(0.2)
        return used

    monkeypatch.setattr(fd.store, "mailbox_usage", usage)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        writer = fd.store.new_blob()
        writer.write(b"x" * 1000)
        barrier.wait()
        try:
            delivery.accept(fd, _envelope(STAYS), writer)
            outcomes.append("stored")
        except quota.QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["refused", "stored"]
    assert len(fd.store.list_messages(STAYS)) == 1
    assert _blob_files(fd) == 1  # the refused body left no file

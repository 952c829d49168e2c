"""Contract: one quota per account over its mailbox, its KAS uploads and its uploads in flight
(digest §3.2, §3.5), checked in the same transaction as the delivery or the reservation, so
concurrent deliveries never overshoot it, also on several nodes."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
import trio
from store_helpers import address, put

from kim_appliance.store import QuotaExceeded, Store

NOW = datetime(2025, 5, 1, 12, tzinfo=UTC)
ALICE = address("alice")


async def _attachment(store: Store, size: int, reservation: str | None = None) -> None:
    async with store.blobs.writer(compress=False) as writer:
        await writer.write(b"k" * size)
        blob = await writer.commit()
        await store.kas.commit(
            blob, reservation_id=reservation, domain="test1.kim.telematik-test", uploader=ALICE,
            recipients=[address("bob")], message_id="<m@x>", filename=None,
            expires_at=NOW + timedelta(days=30), now=NOW,
        )  # fmt: skip


async def test_a_delivery_that_does_not_fit_is_refused_with_the_figures(store: Store) -> None:
    await store.accounts.update(ALICE, quota_bytes=1000)
    await put(store, b"x" * 600, [(ALICE, b"P:")], now=NOW, check_quota=True)
    with pytest.raises(QuotaExceeded) as refused:
        await put(store, b"y" * 399, [(ALICE, b"P:")], now=NOW, check_quota=True)
    assert (refused.value.quota, refused.value.used, refused.value.size) == (1000, 602, 401)
    assert "602 of 1000 bytes used" in str(refused.value)
    assert len(await store.mail.list(ALICE)) == 1
    await put(store, b"y" * 396, [(ALICE, b"P:")], now=NOW, check_quota=True)  # exactly full
    assert await store.mail.usage(ALICE, NOW) == 1000


async def test_one_full_mailbox_refuses_the_whole_delivery(store: Store) -> None:
    """The check covers every mailbox of the delivery: nothing is stored anywhere."""
    await store.accounts.update(address("bob"), quota_bytes=10)
    with pytest.raises(QuotaExceeded, match=address("bob")):
        await put(store, b"x" * 100, [(ALICE, b""), (address("bob"), b"")], check_quota=True)
    assert await store.mail.list(ALICE) == []


async def test_unchecked_deliveries_and_unlimited_accounts(store: Store) -> None:
    """check_quota=False (delivery reports, absence notes) and quota -1 store regardless."""
    await store.accounts.update(ALICE, quota_bytes=10)
    await put(store, b"x" * 100, [(ALICE, b"")], check_quota=False)
    await put(store, b"x" * 10_000, [(address("bob"), b"")], check_quota=True)
    assert await store.mail.usage(ALICE, NOW) == 100


async def test_concurrent_deliveries_together_never_exceed_the_quota(store: Store) -> None:
    """digest §3.2: ten deliveries of 300 bytes at once into a mailbox with room for three:
    exactly three are stored, seven refused."""
    await store.accounts.update(ALICE, quota_bytes=1000)
    outcomes: list[str] = []

    async def deliver() -> None:
        try:
            await put(store, b"x" * 300, [(ALICE, b"")], now=NOW, check_quota=True)
            outcomes.append("stored")
        except QuotaExceeded:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(deliver)
    assert sorted(outcomes) == ["refused"] * 7 + ["stored"] * 3
    assert await store.mail.usage(ALICE, NOW) == 900


async def test_kas_uploads_and_reservations_count(store: Store) -> None:
    """digest §3.5: a reservation counts from the moment the upload starts; committing turns
    it into the stored upload without counting it twice; a released or lapsed one is gone."""
    await store.accounts.update(ALICE, quota_bytes=1000)
    reservation = await store.kas.reserve(ALICE, 600, NOW, timedelta(hours=1))
    assert await store.mail.usage(ALICE, NOW) == 600
    with pytest.raises(QuotaExceeded) as refused:
        await store.kas.reserve(ALICE, 500, NOW, timedelta(hours=1))
    assert refused.value.what == "attachment"
    with pytest.raises(QuotaExceeded):
        await put(store, b"x" * 401, [(ALICE, b"")], now=NOW, check_quota=True)
    await _attachment(store, 600, reservation)
    assert await store.mail.usage(ALICE, NOW) == 600
    lapsing = await store.kas.reserve(ALICE, 400, NOW, timedelta(minutes=5))
    assert await store.mail.usage(ALICE, NOW) == 1000
    assert await store.mail.usage(ALICE, NOW + timedelta(minutes=5)) == 600  # lapsed
    await store.kas.release(lapsing)
    assert await store.mail.usage(ALICE, NOW) == 600
    await store.kas.release("no-such-reservation")


async def test_concurrent_reservations_together_never_exceed_the_quota(store: Store) -> None:
    await store.accounts.update(ALICE, quota_bytes=1000)
    granted: list[str] = []

    async def reserve() -> None:
        with contextlib.suppress(QuotaExceeded):
            granted.append(await store.kas.reserve(ALICE, 400, NOW, timedelta(hours=1)))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(reserve)
    assert len(granted) == 2
    assert len(set(granted)) == 2

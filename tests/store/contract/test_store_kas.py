"""Contract: the KAS attachments (digest §3.5) on the shared blob store: per Fachdienst, with
recipients, expiry, download counts and the uploader's purge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio
from store_helpers import address, drain

from kim_appliance.store import Attachment, AttachmentNotFound, Store

NOW = datetime(2025, 4, 1, 9, tzinfo=UTC)
FD1, FD2 = "test1.kim.telematik-test", "test2.kim.telematik-test"


async def _upload(
    store: Store, data: bytes, *, domain: str = FD1, uploader: str = "alice", days: int = 30
) -> Attachment:
    async with store.blobs.writer(compress=False) as writer:
        await writer.write(data)
        blob = await writer.commit()
        return await store.kas.commit(
            blob,
            reservation_id=None,
            domain=domain.upper(),
            uploader=address(uploader).upper(),
            recipients=[f"Dr.X@{FD2}", f"dr.x@{FD2}", f"apo@{FD2}"],
            message_id="<kas@praxis>",
            filename="a.enc",
            expires_at=NOW + timedelta(days=days),
            now=NOW,
        )


async def test_an_attachment_reads_back_with_its_metadata(store: Store) -> None:
    data = bytes(range(256)) * 1000
    stored = await _upload(store, data)
    assert str(uuid.UUID(stored.id)) == stored.id
    got = await store.kas.get(stored.id, FD1, NOW)
    assert got == stored
    assert (got.uploader, got.domain, got.size) == (address("alice"), FD1, len(data))
    assert got.recipients == (f"dr.x@{FD2}", f"apo@{FD2}")  # lower case, once each, in order
    assert got.is_recipient(f"APO@{FD2}")
    async with store.kas.reader(got) as reader:
        assert await drain(reader, 1000) == data


async def test_unknown_foreign_expired_and_malformed_ids_are_not_found(store: Store) -> None:
    """Each Fachdienst's KAS sees its own attachments; expiry hides one at once."""
    stored = await _upload(store, b"abc", days=1)
    for attachment_id, domain, at in (
        (str(uuid.uuid4()), FD1, NOW),
        (stored.id, FD2, NOW),
        (stored.id, FD1, NOW + timedelta(days=1)),
        (stored.id.upper(), FD1, NOW),
        ("../../etc/passwd", FD1, NOW),
    ):
        with pytest.raises(AttachmentNotFound):
            await store.kas.get(attachment_id, domain, at)


async def test_delete_and_expire(store: Store) -> None:
    gone = await _upload(store, b"gone")
    short = await _upload(store, b"short", days=1)
    kept = await _upload(store, b"kept")
    other = await _upload(store, b"fd2", domain=FD2, days=1)
    with pytest.raises(AttachmentNotFound):
        await store.kas.delete(gone.id, FD2)
    await store.kas.delete(gone.id, FD1)
    with pytest.raises(AttachmentNotFound):
        await store.kas.get(gone.id, FD1, NOW)
    with pytest.raises(AttachmentNotFound):
        await store.kas.delete(gone.id, FD1)
    assert await store.kas.expire(NOW + timedelta(days=1), FD1) == 1
    with pytest.raises(AttachmentNotFound):
        async with store.kas.reader(short) as reader:
            await reader.read(10)
    assert (await store.kas.get(other.id, FD2, NOW)).size == 3  # other Fachdienst untouched
    assert await store.kas.expire(NOW + timedelta(days=1)) == 1
    assert (await store.kas.get(kept.id, FD1, NOW)).size == 4


async def test_uploaders_and_delete_uploads_of(store: Store) -> None:
    await _upload(store, b"a1")
    await _upload(store, b"a2")
    await _upload(store, b"b1", uploader="bob", domain=FD2)
    assert await store.kas.uploaders() == {address("alice"), address("bob")}
    assert await store.kas.uploaders(FD2) == {address("bob")}
    assert await store.kas.delete_uploads_of(address("ALICE")) == 2
    assert await store.kas.uploaders() == {address("bob")}


async def test_download_counts_are_limited_per_recipient_and_window(store: Store) -> None:
    """KAS-ref max-attachment-requests within time-to-keep-request-record (digest §3.5); the
    count is one atomic step, also for downloads at the same moment."""
    stored = await _upload(store, b"x")
    window = timedelta(minutes=5)
    results: list[bool] = []

    async def download() -> None:
        results.append(
            await store.kas.record_download(
                stored.id, f"dr.x@{FD2}", now=NOW, limit=3, window=window
            )
        )

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(download)
    assert sorted(results) == [False, False, True, True, True]
    assert await stored_download(store, stored.id, f"apo@{FD2}", NOW, window)
    assert await stored_download(store, stored.id, f"DR.X@{FD2}", NOW + window, window)


async def stored_download(
    store: Store, attachment_id: str, recipient: str, at: datetime, window: timedelta
) -> bool:
    return await store.kas.record_download(attachment_id, recipient, now=at, limit=3, window=window)

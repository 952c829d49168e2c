"""`store copy` (store.copy): an embedded store with state of every kind copied into PostgreSQL
and read back through the store interface: the same accounts, mailboxes with the same UIDs and
bodies, relay queue, KAS uploads, ledger, codes, lockouts, tombstones and directory; verified by
counts and SHA-256; a target with data and a running appliance refused."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import account, address, body_for, prefix_for, put, read

from kim_appliance.store import (
    DirectoryRow,
    LockoutPolicy,
    OtpCheck,
    OutOfOffice,
    RegistrationCode,
    RelayRecipient,
    Store,
    StoreError,
    StoreInUse,
    open_store,
)
from kim_appliance.store.copy import TABLES, copy_store
from kim_appliance.store.sqlite import open_sqlite_store

NOW = datetime(2025, 10, 1, 8, tzinfo=UTC)
FD1, FD2 = "test1.kim.telematik-test", "test2.kim.telematik-test"
ALICE, BOB, GONE = address("alice"), address("bob"), address("gone")


async def _fill(store: Store) -> dict[str, object]:
    """State of every kind; returns what the copy must show again."""
    for local in ("alice", "bob", "gone"):
        await store.accounts.create(account(local))
    note = OutOfOffice(True, NOW, NOW + timedelta(days=9), "Urlaub")
    await store.accounts.update(BOB, quota_bytes=50_000_000, out_of_office=note)
    # mail: shared, large (several chunk rows), deleted newest (its id must never come back)
    await put(store, body_for("shared"), [(ALICE, prefix_for("s", ALICE)), (BOB, b"B:")], now=NOW)
    await put(store, body_for("large", 3 * 1024 * 1024 + 7), [(ALICE, b"L:")], now=NOW)
    _, [deleted] = await put(store, b"deleted", [(ALICE, b"")], now=NOW)
    await store.mail.delete(ALICE, [deleted.id])
    await put(store, b"relayed in", [(BOB, b"R:")], now=NOW, relay_id="<" + "ab" * 16 + "@x>")
    # the relay queue: one fresh, one attempted with one recipient done
    for n in range(2):
        async with store.blobs.writer() as writer:
            await writer.write(body_for(f"relay{n}", 40_000))
            blob = await writer.commit()
            entry = await store.relay.enqueue(
                blob, sender=ALICE, recipients=[RelayRecipient(f"x@{FD2}", frozenset({"SUCCESS"}),
                "rfc822;x@" + FD2), RelayRecipient(f"y@{FD2}")], envid=f"env{n}", ret="HDRS",
                source_domain=FD1, domain=FD2, not_after=NOW + timedelta(days=2), now=NOW,
            )  # fmt: skip
    await store.relay.attempted(
        entry.id, next_attempt=NOW + timedelta(minutes=5), error="451 later", done=[f"x@{FD2}"]
    )
    # KAS: an attachment with a download counted, and a reservation
    async with store.blobs.writer(compress=False) as writer:
        await writer.write(b"\x00encrypted" * 5000)
        blob = await writer.commit()
        attachment = await store.kas.commit(
            blob, reservation_id=None, domain=FD1, uploader=ALICE, recipients=[BOB],
            message_id="<kas@x>", filename="a.enc", expires_at=NOW + timedelta(days=30), now=NOW,
        )  # fmt: skip
    assert await store.kas.record_download(
        attachment.id, BOB, now=NOW, limit=1, window=timedelta(days=1)
    )
    # small parts
    await store.autoreplies.remember(BOB, "sender@x.de", NOW, NOW)
    await store.registrations.put_code(RegistrationCode(FD1, "REF-1", "scrypt$1", "1-t"))
    await store.registrations.put_code(RegistrationCode(FD1, "REF-2", "scrypt$2"))
    await store.accounts.create(account("neu"), reference_id="REF-2")
    await store.registrations.put_otp(ALICE, "otp-digest", NOW + timedelta(days=7))
    await store.logins.record_failure(ALICE, "192.0.2.7", NOW, LockoutPolicy())
    await store.accounts.purge(GONE, now=NOW)
    version = await store.directory.version()
    version = await store.directory.put(
        DirectoryRow("u1", "1-a", '{"cn": "ä"}'), expected_version=version
    )
    version = await store.directory.put(DirectoryRow("u2", "1-b", "{}"), expected_version=version)
    await store.directory.delete("u2", expected_version=version)
    await store.meta.put_if_absent("demo", "demo.json")
    return {"attachment": attachment, "deleted_uid": deleted.uid}


async def _picture(store: Store) -> dict[str, object]:
    """Everything the interface shows of the filled store (for the before/after comparison)."""
    mail = {}
    for who in (ALICE, BOB, address("neu")):
        messages = await store.mail.list(who)
        mail[who] = [(m.uid, m.size, m.received_at, m.expires_at, await read(store, m.id))
                     for m in messages]  # fmt: skip
    return {
        "accounts": await store.accounts.list(),
        "mail": mail,
        "usage": await store.mail.usage(ALICE, NOW),
        "relay": [
            (e.id, e.relay_id, e.recipients, e.attempts, e.last_error, e.next_attempt, e.envid)
            for e in await store.relay.pending(limit=100)
        ],
        "uploaders": await store.kas.uploaders(),
        "code": await store.registrations.code_of(address("neu")),
        "unused": await store.registrations.get_code(FD1, "REF-1"),
        "lockout": await store.logins.state(ALICE, "192.0.2.7"),
        "tombstone": await store.accounts.retired_telematik_id(GONE),
        "directory": await store.directory.snapshot(),
        "demo": await store.meta.get("demo"),
    }


async def test_every_kind_of_state_is_copied_and_verified(tmp_path: Path, pg_url: str) -> None:
    data_dir = tmp_path / "kim-data"
    async with open_sqlite_store(data_dir, compress=True) as embedded:
        facts = await _fill(embedded)
        before = await _picture(embedded)
    out = io.StringIO()
    report = await copy_store(data_dir, pg_url, out=out)
    assert report.verified, out.getvalue()
    assert set(report.counts) == {*TABLES, "blobs"}
    assert report.counts["messages"] == (4, 4)
    assert report.blobs == 6  # shared, large, relayed-in, two queued, one KAS upload
    printed = out.getvalue()
    assert "verified: every count and every SHA-256 matches" in printed
    assert pg_url.split(":")[2].split("@")[0] not in printed  # the password
    async with open_store(pg_url, tmp_path / "node") as copied:
        assert await _picture(copied) == before
        attachment = facts["attachment"]
        got = await copied.kas.get(attachment.id, FD1, NOW)  # type: ignore[attr-defined]
        assert got == attachment
        # the download count came along (limit 1 within a day: the second is refused)
        assert not await copied.kas.record_download(
            got.id, BOB, now=NOW, limit=1, window=timedelta(days=1)
        )
        assert not await copied.autoreplies.remember(BOB, "sender@x.de", NOW, NOW)
        assert await copied.registrations.take_otp(ALICE, "otp-digest", NOW) is OtpCheck.OK
        # new mail continues the ids: no UID of the embedded store comes back, not even the
        # one of the message deleted before the copy (KOM-LE-A_2151)
        _, [new] = await put(copied, b"after the move", [(ALICE, b"")], now=NOW)
        old_uids = {uid for _, box in before["mail"].items() for uid, *_ in box}  # type: ignore[attr-defined]
        assert new.uid not in old_uids | {facts["deleted_uid"]}
        [entry, _] = await copied.relay.claim("node1", FD1, NOW + timedelta(hours=1), limit=9,
                                             lease=timedelta(minutes=5))  # fmt: skip
        async with copied.blobs.reader(entry.blob) as reader:
            assert (await reader.read(100)).startswith(body_for("relay0", 40_000)[:100])


async def test_a_target_with_data_is_refused_unless_forced(tmp_path: Path, pg_url: str) -> None:
    data_dir = tmp_path / "kim-data"
    async with open_sqlite_store(data_dir) as embedded:
        await embedded.accounts.create(account("alice"))
        await put(embedded, b"first", [(ALICE, b"")], now=NOW)
    async with open_store(pg_url, tmp_path) as target:
        await target.accounts.create(account("other"))
    with pytest.raises(StoreError, match=r"holds data \(1 accounts\).*--force"):
        await copy_store(data_dir, pg_url)
    async with open_store(pg_url, tmp_path) as target:  # untouched
        assert [a.address for a in await target.accounts.list()] == [address("other")]
    report = await copy_store(data_dir, pg_url, force=True)
    assert report.verified
    async with open_store(pg_url, tmp_path) as target:
        assert [a.address for a in await target.accounts.list()] == [ALICE]
        [msg] = await target.mail.list(ALICE)
        assert await read(target, msg.id) == b"first"


async def test_the_copy_is_refused_while_an_appliance_runs_on_the_data_dir(
    tmp_path: Path, pg_url: str
) -> None:
    data_dir = tmp_path / "kim-data"
    async with open_sqlite_store(data_dir) as running:
        await running.accounts.create(account("alice"))
        with pytest.raises(StoreInUse, match="in use by another process"):
            await copy_store(data_dir, pg_url)
    async with open_store(pg_url, tmp_path) as target:
        assert await target.accounts.list() == []


async def test_only_a_postgresql_target_and_a_data_dir_with_a_store(
    tmp_path: Path, pg_url: str
) -> None:
    with pytest.raises(StoreError, match="postgresql://"):
        await copy_store(tmp_path, "sqlite")
    with pytest.raises(StoreError, match="holds no appliance data"):
        await copy_store(tmp_path / "nothing-here", pg_url)

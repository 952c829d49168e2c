"""The one-time import of a data dir made before issue 12 (store.legacy): per-Fachdienst stores
with their blobs, the KAS, registration-codes.json and directory.json become the one store,
nothing lost, the old files kept with a ``.imported`` suffix, nothing imported twice.

The old data dir (tests/data/legacy/kim-data) was written by the code of that version
(tests/data/legacy/make_legacy_datadir.py)."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import drain, put, read

from kim_appliance import demo
from kim_appliance.directory import DirectoryStore
from kim_appliance.fachdienst.account_lifecycle import AccountManagerState
from kim_appliance.store import RelayRecipient, StoreError, open_store
from kim_appliance.store.legacy import SUFFIX

LEGACY = Path(__file__).parents[1] / "data" / "legacy" / "kim-data"
FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"
WEBER, KLEIN, SONNE = f"praxis.weber@{FD1}", f"Zahnarzt.Klein@{FD1}", f"apotheke.sonne@{FD2}"
NOW = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)
OLD_FILES = (
    f"fachdienst/{FD1}/mail.sqlite3",
    f"fachdienst/{FD1}/blobs",
    f"fachdienst/{FD1}/kas",
    f"fachdienst/{FD1}/registration-codes.json",
    f"fachdienst/{FD2}/mail.sqlite3",
    f"fachdienst/{FD2}/blobs",
    "directory.json",
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    target = tmp_path / "kim-data"
    shutil.copytree(LEGACY, target)
    return target


def _old_messages(data_dir: Path) -> dict[str, list[tuple[str, bytes]]]:
    """mailbox -> [(uid, prefix)] as the old stores had them (UID = id.instance)."""
    found: dict[str, list[tuple[str, bytes]]] = {}
    for domain in (FD1, FD2):
        with sqlite3.connect(data_dir / "fachdienst" / domain / "mail.sqlite3") as conn:
            instance = conn.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0]
            for mid, mailbox, prefix in conn.execute(
                "SELECT id, mailbox, prefix FROM messages ORDER BY id"
            ):
                found.setdefault(mailbox, []).append((f"{mid}.{instance}", bytes(prefix)))
    return found


async def test_mail_accounts_kas_and_directory_survive_the_import(data_dir: Path) -> None:
    old = _old_messages(data_dir)
    async with open_store(None, data_dir) as store:
        # accounts, with what they were set to, and the tombstone of a purged one
        weber = await store.accounts.get(WEBER)
        klein = await store.accounts.get(KLEIN)
        assert weber is not None
        assert klein is not None
        assert (weber.quota_bytes, klein.address, klein.data_ttl_days) == (50_000, KLEIN, 365)
        assert klein.out_of_office.message == "Urlaub"
        assert [a.address for a in await store.accounts.list(FD2)] == [SONNE]
        assert await store.accounts.retired_telematik_id(f"alt@{FD1}") == "1-alt"
        # every message, byte for byte, under its old UID (KOM-LE-A_2152: clients keep them)
        for mailbox in (WEBER, KLEIN, SONNE):
            listed = await store.mail.list(mailbox)
            assert [(m.uid) for m in listed] == [uid for uid, _ in old[mailbox.lower()]]
            for message, (_, prefix) in zip(listed, old[mailbox.lower()], strict=True):
                data = await read(store, message.id)
                assert data.startswith(prefix)
                assert len(data) == message.size
        [first, second] = await store.mail.list(WEBER)
        assert await read(store, first.id) == b"Received: w\r\nSubject: an beide\r\n\r\nHallo\r\n"
        assert (await read(store, second.id)).endswith(b"Befund\r\n" * 2000)
        [relayed] = await store.mail.list(SONNE)
        assert (await read(store, relayed.id)).endswith(b"komprimiert " * 5000)  # was zstd
        # the relay queue keeps its relay id, attempts and error; due for fd1's worker
        [entry] = await store.relay.pending(FD1, limit=9)
        assert (entry.source_domain, entry.domain, entry.sender) == (FD1, FD2, WEBER)
        assert (entry.attempts, entry.last_error, len(entry.relay_id)) == (1, "451 4.4.3 later", 32)
        assert entry.recipients == (
            RelayRecipient(SONNE, frozenset({"SUCCESS", "FAILURE"}), f"rfc822;{SONNE}"),
        )
        async with store.blobs.reader(entry.blob) as reader:
            assert await drain(reader) == b"Subject: an beide\r\n\r\nHallo\r\n"
        # fd2 still recognises the relay it delivered (exactly once between Fachdienste)
        rid = "<" + "ab" * 16 + f"@{FD1}>"
        assert (await put(store, b"again", [(SONNE, b"")], relay_id=rid))[1] == []
        # the lockout counter
        state = await store.logins.state(WEBER, "198.51.100.7")
        assert state is not None
        assert state.failures == 1
        # the KAS upload with its recipients and download count
        [uploader] = await store.kas.uploaders(FD1)
        assert uploader == WEBER
        ids = await _kas_ids(data_dir)
        attachment = await store.kas.get(ids[0], FD1, NOW)
        assert (attachment.size, attachment.filename) == (4096, "befund.enc")
        assert attachment.recipients == (SONNE, f"dr.meyer@{FD2}")
        async with store.kas.reader(attachment) as reader:
            assert await drain(reader) == bytes(range(256)) * 16
        assert await store.mail.usage(WEBER, NOW) == first.size + second.size + 4096
        allowed = await store.kas.record_download(
            attachment.id, SONNE, now=NOW, limit=1, window=timedelta(days=1)
        )
        assert not allowed  # the one download before the import still counts
        # registration codes (the unused one still works) and the VZD
        codes = AccountManagerState(store, FD1)
        assert await codes.check_code("REF-FD1-0001", "Start-Kennwort-1!") is not None
        used = await codes.code_of(KLEIN)
        assert used is not None
        assert used.reference_id == "REF-FD1-0002"
        directory = await DirectoryStore.open(store.directory)
        found = directory.find_by_mail(SONNE)
        assert found is not None
        assert (found.telematik_id, found.uid) == ("3-sonne", "uid-3-sonne")
        # the demo state counts as written: a start does not seed the demo accounts again
        assert not await demo.populate(store, data_dir)
    for name in OLD_FILES:
        assert not (data_dir / name).exists(), name
        assert (data_dir / (name + SUFFIX)).exists(), name


async def _kas_ids(data_dir: Path) -> list[str]:
    db = data_dir / "fachdienst" / FD1 / ("kas" + SUFFIX) / "kas.sqlite3"
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM attachments")]


async def test_the_import_happens_once(data_dir: Path) -> None:
    """A second open imports nothing; a crash after the import's commit and before its
    renames (simulated: the old files put back) is finished without a second import."""
    async with open_store(None, data_dir) as store:
        counts = {str(i) for i in store.imported}  # type: ignore[attr-defined]
        assert len(counts) == 3  # two Fachdienste and directory.json
        messages = len(await store.mail.list(WEBER))
    for name in OLD_FILES:
        (data_dir / (name + SUFFIX)).rename(data_dir / name)
    async with open_store(None, data_dir) as store:
        assert store.imported == []  # type: ignore[attr-defined]
        assert len(await store.mail.list(WEBER)) == messages
        assert len(await store.accounts.list()) == 3
    for name in OLD_FILES:
        assert (data_dir / (name + SUFFIX)).exists(), name


async def test_an_import_that_cannot_finish_changes_nothing(data_dir: Path) -> None:
    """A body the old store references is missing: the import of that Fachdienst stops and
    says which file, nothing of it is committed and its old files stay as they were (the
    appliance does not start); once the file is back, it goes through."""
    [blob] = list((data_dir / "fachdienst" / FD2 / "blobs").rglob("*.zst"))
    hidden = blob.with_name("hidden")
    blob.rename(hidden)
    with pytest.raises(StoreError, match=blob.name):
        async with open_store(None, data_dir):
            pass
    assert (data_dir / "fachdienst" / FD2 / "mail.sqlite3").exists()
    hidden.rename(blob)
    async with open_store(None, data_dir) as store:
        assert [a.address for a in await store.accounts.list(FD2)] == [SONNE]
        assert len(await store.mail.list(SONNE)) == 1

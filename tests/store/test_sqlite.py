"""The embedded backend itself (store.sqlite): what lies where in the data dir, file modes,
compression, damaged blobs, one process per data dir, the sweep at open, and the versioned
schema. The contract it shares with every backend is tested in tests/store/contract/."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from store_helpers import account, address, body_for, put, read

from kim_appliance.store import (
    AccountExists,
    StoreCorrupted,
    StoreError,
    StoreInUse,
    open_store,
)
from kim_appliance.store.sqlite import DB_NAME, SCHEMA_VERSION, SQLiteStore, open_sqlite_store
from kim_appliance.store.sqlite._blobs import READ_AHEAD

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)

T = TypeVar("T")


def _blob_files(root: Path) -> list[Path]:
    return [p for p in (root / "blobs").glob("??/*") if p.is_file()]


def _modes(root: Path) -> dict[str, str]:
    """Every path under ``root`` that group or others may read or enter."""
    return {
        str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in [root, *root.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    }


async def test_one_database_and_blob_files_under_store(tmp_path: Path) -> None:
    """DIR/store/kim.sqlite3 and DIR/store/blobs/<2 hex>/<name>: one store for the appliance,
    WAL with synchronous=FULL, all of it private (issue 11), whatever the umask."""
    old = os.umask(0o022)
    try:
        async with open_sqlite_store(tmp_path / "kim-data") as store:
            await store.accounts.create(account("alice"))
            await put(store, body_for("x", 5000), [(address("alice"), b"P:")])
            root = store.root
            assert root == tmp_path / "kim-data" / "store"
            [blob] = _blob_files(root)
            assert blob.stat().st_size == 5000
            assert _modes(tmp_path / "kim-data") == {}
            assert (root / f"{DB_NAME}-wal").exists()
        with sqlite3.connect(root / DB_NAME) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    finally:
        os.umask(old)


async def test_a_blob_file_goes_with_its_last_reference(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path) as store:
        for local in ("alice", "bob"):
            await store.accounts.create(account(local))
        _, [m1, m2] = await put(
            store, b"shared", [(address("alice"), b"a"), (address("bob"), b"b")]
        )
        assert len(_blob_files(store.root)) == 1
        await store.mail.delete(address("alice"), [m1.id])
        assert len(_blob_files(store.root)) == 1
        await store.mail.delete(address("bob"), [m2.id])
        assert _blob_files(store.root) == []
        # refused and released bodies leave no file either
        async with store.blobs.writer() as w:
            await w.write(b"refused")
            await w.commit()
        assert _blob_files(store.root) == []
        assert list((store.root / "blobs" / "tmp").iterdir()) == []


async def test_compressed_and_plain_blobs_coexist(tmp_path: Path) -> None:
    """Blobs keep their own compression flag; a store reopened either way reads both; KAS
    blobs (encrypted data) are never compressed."""
    plain_body, zstd_body = body_for("plain", 100_000), body_for("zstd", 100_000)
    async with open_sqlite_store(tmp_path) as s:
        await s.accounts.create(account("alice"))
        plain_blob, [plain] = await put(s, plain_body, [(address("alice"), b"P:")])
    async with open_sqlite_store(tmp_path, compress=True) as s:
        zstd_blob, [packed] = await put(s, zstd_body, [(address("alice"), b"Z:")])
        assert await read(s, plain.id) == b"P:" + plain_body
        async with s.blobs.writer(compress=False) as w:
            await w.write(zstd_body)
            assert not (await w.commit()).compressed
    assert not plain_blob.compressed
    assert zstd_blob.compressed
    assert zstd_blob.stored_size < zstd_blob.size // 2  # this text compresses well
    for compress in (False, True):
        async with open_sqlite_store(tmp_path, compress=compress) as s:
            assert await read(s, plain.id) == b"P:" + plain_body
            assert await read(s, packed.id) == b"Z:" + zstd_body
            assert await s.verify() == []


async def test_a_short_blob_is_reported_not_served(tmp_path: Path) -> None:
    """A damaged blob file raises StoreCorrupted instead of handing out a truncated mail."""
    async with open_sqlite_store(tmp_path) as store:
        await store.accounts.create(account("alice"))
        _, [msg] = await put(store, body_for("damaged", 100_000), [(address("alice"), b"P:")])
        [path] = _blob_files(store.root)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        assert len(await store.verify()) == 1
        with pytest.raises(StoreCorrupted, match=r"blob .*(short|damaged)"):
            await read(store, msg.id)


async def test_a_reader_reads_ahead_in_the_call_that_opens_it(tmp_path: Path) -> None:
    """Issue 13: a small message is opened, read and found to end in one worker-thread call;
    a larger one comes back whole and in order whatever the read sizes around READ_AHEAD."""
    async with open_sqlite_store(tmp_path) as store:
        await store.accounts.create(account("alice"))
        small_body, large_body = body_for("small", 20_000), body_for("large", READ_AHEAD + 7)
        _, [small] = await put(store, small_body, [(address("alice"), b"S:")])
        _, [large] = await put(store, large_body, [(address("alice"), b"L:")])
        db = store._db
        calls = 0
        real_run = db.run

        async def counting_run(fn: Callable[[], T]) -> T:
            nonlocal calls
            calls += 1
            return await real_run(fn)

        db.run = counting_run  # type: ignore[method-assign]
        async with store.mail.reader(small.id) as reader:
            assert await reader.read(1024 * 1024) == b"S:" + small_body
            assert await reader.read(1024 * 1024) == b""
        assert calls == 1
        for size in (1, 4096, READ_AHEAD - 1, READ_AHEAD, 1024 * 1024):
            async with store.mail.reader(large.id) as reader:
                got = b""
                while piece := await reader.read(size):
                    assert len(piece) <= size
                    got += piece
            assert got == b"L:" + large_body, size


async def test_one_process_per_data_dir(tmp_path: Path) -> None:
    async with open_store(None, tmp_path):
        with pytest.raises(StoreInUse, match="in use by another process"):
            async with open_store("sqlite", tmp_path):
                pass
    async with open_store("", tmp_path):
        pass  # released on close


async def test_urls_no_backend_understands_are_refused(tmp_path: Path) -> None:
    # (postgresql:// URLs are the PostgreSQL backend's: tests/store/postgres/)
    with pytest.raises(StoreError, match="not a store URL"):
        async with open_store("mysql://x", tmp_path):
            pass


async def test_the_open_sweeps_crash_orphans_and_drops_dead_claims(tmp_path: Path) -> None:
    """Crash-safety rule 3: a temp file, a final blob no row references (a crash between
    rename and commit) go at the next open; what rows reference stays (messages, relay
    entries, KAS attachments). Relay claims, maildrop locks and upload reservations of the
    process that died are dropped (one process per data dir)."""
    async with open_sqlite_store(tmp_path) as store:
        await store.accounts.create(account("alice"))
        _, [msg] = await put(store, b"kept mail", [(address("alice"), b"P:")])
        async with store.blobs.writer(compress=False) as w:
            await w.write(b"kept kas")
            attachment = await store.kas.commit(
                await w.commit(), reservation_id=None, domain="test1.kim.telematik-test",
                uploader=address("alice"), recipients=[address("alice")], message_id="<m>",
                filename=None, expires_at=NOW + timedelta(days=1), now=NOW,
            )  # fmt: skip
        orphan = store.blobs.writer()
        await orphan.write(b"never delivered")
        await orphan.commit()  # durable, but the process "dies" before the delivery
        half = store.blobs.writer()
        await half.write(b"half written")  # and this one is still in tmp/
        await store.kas.reserve(address("alice"), 10, NOW, timedelta(days=1))
        assert await store.maildrops.lock(address("alice"), "dead/s1", NOW, timedelta(days=1))
        root = store.root
        assert len(_blob_files(root)) == 3
    async with open_sqlite_store(tmp_path) as store:
        assert len(store.swept) == 2
        assert len(_blob_files(root)) == 2
        assert list((root / "blobs" / "tmp").iterdir()) == []
        assert await read(store, msg.id) == b"P:kept mail"
        assert (await store.kas.get(attachment.id, "test1.kim.telematik-test", NOW)).size == 8
        assert await store.mail.usage(address("alice"), NOW) == len(b"P:kept mail") + 8
        assert await store.maildrops.lock(address("alice"), "live/s2", NOW, timedelta(days=1))


async def test_the_schema_is_versioned_and_a_newer_one_refused(tmp_path: Path) -> None:
    """Versioned migrations: schema_migrations lists every version applied; a database a newer
    kim-appliance wrote is refused with what to do, and left as it was."""
    async with open_sqlite_store(tmp_path):
        pass
    db = tmp_path / "store" / DB_NAME
    with sqlite3.connect(db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        async with open_sqlite_store(tmp_path):
            pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == (
            SCHEMA_VERSION + 1
        )


async def test_a_store_used_after_close_says_so(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path) as store:
        pass
    assert isinstance(store, SQLiteStore)
    with pytest.raises(StoreError, match="closed"):
        await store.accounts.get(address("alice"))


async def test_writes_that_queue_up_share_one_commit_and_keep_their_own_errors(
    tmp_path: Path,
) -> None:
    """Group commit (issue 13): writes that arrive while the write lock is taken run in ONE
    transaction (one WAL fsync) when it is free; each caller returns after that commit, and a
    write that fails (an account that exists) fails alone: the others are committed."""
    async with open_sqlite_store(tmp_path) as store:
        await store.accounts.create(account("taken"))
        db = store._db
        before = (db.writes, db.commits)
        names = ["a1", "a2", "taken", "a3", "a4"]
        errors: dict[str, BaseException] = {}

        async def create(local: str) -> None:
            try:
                await store.accounts.create(account(local))
            except StoreError as exc:
                errors[local] = exc

        db.lock.acquire()  # as a long write would hold it
        try:
            async with trio.open_nursery() as nursery:
                for local in names:
                    nursery.start_soon(create, local)
                with trio.fail_after(10):
                    while len(db._queue) < len(names):
                        await trio.sleep(0.01)
                db.lock.release()
        finally:
            if db.lock._is_owned():  # type: ignore[attr-defined]
                db.lock.release()
        assert (db.writes - before[0], db.commits - before[1]) == (5, 1)
        assert list(errors) == ["taken"]
        assert isinstance(errors["taken"], AccountExists)
        for local in ("a1", "a2", "a3", "a4"):
            assert await store.accounts.get(address(local)) is not None

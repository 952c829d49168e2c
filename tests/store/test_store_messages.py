"""Delivery, reading, UIDs, deletion, expiry and usage of mailboxes (digest §3.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from store_helpers import address, body_for, put, read

from kim_appliance.store import (
    AccountNotFound,
    BlobUnavailable,
    MessageNotFound,
    SQLiteMailStore,
    StoreCorrupted,
    StoreError,
    open_store,
)


def _blob_files(store: SQLiteMailStore) -> list[Path]:
    return [p for p in store.files.root.glob("??/*") if p.is_file()]


def test_deliver_to_several_mailboxes_with_own_prefixes(store: SQLiteMailStore) -> None:
    body = body_for("one", 300_000)
    prefixes = {"alice": b"Received: for alice\r\n", "bob": b"Received: for bob, longer\r\n"}
    blob, msgs = put(store, body, [(address(k), v) for k, v in prefixes.items()])
    assert blob.size == len(body)
    assert [m.mailbox for m in msgs] == [address("alice"), address("bob")]
    for msg, prefix in zip(msgs, prefixes.values(), strict=True):
        assert msg.size == len(prefix) + len(body)
        assert read(store, msg.id) == prefix + body
    assert len(_blob_files(store)) == 1  # one blob, two messages


def test_open_message_streams_in_small_reads(store: SQLiteMailStore) -> None:
    body = body_for("stream", 200_003)
    _, [msg] = put(store, body, [(address("alice"), b"Return-Path: <a@b>\r\n")])
    out = bytearray()
    with store.open_message(msg.id) as stream:
        while chunk := stream.read(4093):
            out += chunk
    assert bytes(out) == b"Return-Path: <a@b>\r\n" + body


def test_empty_body(store: SQLiteMailStore) -> None:
    _, [msg] = put(store, b"", [(address("alice"), b"P\r\n")])
    assert read(store, msg.id) == b"P\r\n"
    assert msg.size == 3


def test_list_is_oldest_first_and_per_mailbox(store: SQLiteMailStore) -> None:
    ids = [put(store, body_for(str(i), 100), [(address("alice"), b"")])[1][0].id for i in range(3)]
    put(store, b"other", [(address("bob"), b"")])
    assert [m.id for m in store.list_messages(address("ALICE"))] == ids


def test_uids_unique_and_never_reused(store: SQLiteMailStore) -> None:
    """KOM-LE-A_2151 (UIDL): deleting the newest message does not free its UID."""
    msgs = [put(store, body_for(str(i), 50), [(address("alice"), b"")])[1][0] for i in range(3)]
    uids = {m.uid for m in msgs}
    assert len(uids) == 3
    store.delete_messages(address("alice"), [msgs[-1].id])
    _, [again] = put(store, b"new", [(address("alice"), b"")])
    assert again.uid not in uids
    assert again.id > msgs[-1].id
    assert all(0x21 <= c <= 0x7E for c in again.uid.encode())
    assert len(again.uid) <= 70


def test_uids_survive_reopen(tmp_path: Path) -> None:
    """KOM-LE-A_2151: the UID of a message is the same after a restart; none is reused."""
    from store_helpers import account

    with open_store(tmp_path) as s:
        s.create_account(account("alice"))
        _, [msg] = put(s, b"x", [(address("alice"), b"")])
        s.delete_messages(address("alice"), [msg.id])
        _, [kept] = put(s, b"y", [(address("alice"), b"")])
    with open_store(tmp_path) as s:
        assert [m.uid for m in s.list_messages(address("alice"))] == [kept.uid]
        _, [new] = put(s, b"z", [(address("alice"), b"")])
        assert new.uid not in {msg.uid, kept.uid}


def test_blob_file_goes_with_the_last_reference(store: SQLiteMailStore) -> None:
    _, [m1, m2] = put(store, b"shared", [(address("alice"), b"a"), (address("bob"), b"b")])
    assert len(_blob_files(store)) == 1
    store.delete_messages(address("alice"), [m1.id])
    assert len(_blob_files(store)) == 1
    assert read(store, m2.id) == b"bshared"
    with pytest.raises(MessageNotFound):
        store.open_message(m1.id)
    store.delete_messages(address("bob"), [m2.id])
    assert _blob_files(store) == []


def test_delete_ignores_ids_of_other_mailboxes(store: SQLiteMailStore) -> None:
    _, [bobs] = put(store, b"for bob", [(address("bob"), b"")])
    store.delete_messages(address("alice"), [bobs.id, 99999])
    assert read(store, bobs.id) == b"for bob"


def test_usage_counts_prefix_and_body(store: SQLiteMailStore) -> None:
    """Quota accounting in bytes (digest §3.2)."""
    assert store.mailbox_usage(address("alice")) == 0
    put(store, b"x" * 1000, [(address("alice"), b"12345"), (address("bob"), b"1")])
    put(store, b"y" * 10, [(address("alice"), b"")])
    assert store.mailbox_usage(address("Alice")) == 1005 + 10
    assert store.mailbox_usage(address("bob")) == 1001
    with pytest.raises(AccountNotFound):
        store.mailbox_usage(address("nobody"))


def test_expire_removes_only_old_messages(store: SQLiteMailStore) -> None:
    """dataTimeToLive, default 90 days (digest §3.2)."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    store.update_account(address("bob"), data_ttl_days=10)
    with store.new_blob() as w:
        w.write(b"old")
        blob = w.commit()
        old = store.deliver(blob, [(address("alice"), b""), (address("bob"), b"")], now=t0)
    with store.new_blob() as w:
        w.write(b"new")
        new = store.deliver(w.commit(), [(address("alice"), b"")], now=t0 + timedelta(days=50))
    assert old[0].expires_at == t0 + timedelta(days=90)
    assert old[1].expires_at == t0 + timedelta(days=10)
    assert store.expire(t0 + timedelta(days=9)) == 0
    assert store.expire(t0 + timedelta(days=10)) == 1  # bob's
    assert store.list_messages(address("bob")) == []
    assert read(store, old[0].id) == b"old"
    assert store.expire(t0 + timedelta(days=100)) == 1
    assert [m.id for m in store.list_messages(address("alice"))] == [new[0].id]
    assert len(_blob_files(store)) == 1


def test_unknown_mailbox_delivers_nothing(store: SQLiteMailStore) -> None:
    with store.new_blob() as w:
        w.write(b"body")
        blob = w.commit()
        with pytest.raises(AccountNotFound, match="nobody"):
            store.deliver(blob, [(address("alice"), b""), (address("nobody"), b"")])
    assert store.list_messages(address("alice")) == []
    assert _blob_files(store) == []  # released unreferenced at the end of the block


def test_writer_left_without_commit_leaves_nothing(store: SQLiteMailStore) -> None:
    def fail_midway() -> None:
        with store.new_blob() as w:
            w.write(b"half")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="went away"):
        fail_midway()
    assert list((store.files.root / "tmp").iterdir()) == []
    assert _blob_files(store) == []


def test_released_blob_cannot_be_delivered(store: SQLiteMailStore) -> None:
    with store.new_blob() as w:
        w.write(b"x")
        blob = w.commit()
    with pytest.raises(BlobUnavailable, match=blob.name):
        store.deliver(blob, [(address("alice"), b"")])


def test_duplicate_mailbox_in_one_delivery_is_refused(store: SQLiteMailStore) -> None:
    with store.new_blob() as w:
        w.write(b"x")
        blob = w.commit()
        with pytest.raises(ValueError, match="twice"):
            store.deliver(blob, [(address("alice"), b""), (address("ALICE"), b"")])


def test_compressed_and_plain_blobs_coexist(tmp_path: Path) -> None:
    """Blobs keep their own compression flag; a store reopened either way reads both."""
    from store_helpers import account

    plain_body, zstd_body = body_for("plain", 100_000), body_for("zstd", 100_000)
    with open_store(tmp_path) as s:
        s.create_account(account("alice"))
        plain_blob, [plain] = put(s, plain_body, [(address("alice"), b"P:")])
    with open_store(tmp_path, compress=True) as s:
        zstd_blob, [packed] = put(s, zstd_body, [(address("alice"), b"Z:")])
        assert read(s, plain.id) == b"P:" + plain_body
    assert not plain_blob.compressed
    assert zstd_blob.compressed
    assert zstd_blob.stored_size < zstd_blob.size // 2  # this text compresses well
    for compress in (False, True):
        with open_store(tmp_path, compress=compress) as s:
            assert read(s, plain.id) == b"P:" + plain_body
            assert read(s, packed.id) == b"Z:" + zstd_body
            assert s.verify() == []


def test_short_blob_is_reported_not_served(store: SQLiteMailStore) -> None:
    """A damaged blob file raises StoreCorrupted instead of handing out a truncated mail."""
    _, [msg] = put(store, body_for("damaged", 100_000), [(address("alice"), b"P:")])
    [path] = _blob_files(store)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert len(store.verify()) == 1
    with pytest.raises(StoreCorrupted, match=r"blob .*(short|damaged)"):
        read(store, msg.id)


def test_data_dir_is_locked_against_a_second_store(store: SQLiteMailStore) -> None:
    with pytest.raises(StoreError, match="in use"):
        open_store(store.data_dir)


async def test_deliveries_from_trio_worker_threads(plain_store: SQLiteMailStore) -> None:
    """The intended use: trio code calls the store through trio.to_thread.run_sync."""
    ids: list[int] = []

    async def one(i: int) -> None:
        body = body_for(f"trio{i}", 2000)
        _, [msg] = await trio.to_thread.run_sync(put, plain_store, body, [(address("carol"), b"")])
        ids.append(msg.id)

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(one, i)
    listed = await trio.to_thread.run_sync(plain_store.list_messages, address("carol"))
    assert sorted(ids) == [m.id for m in listed]

"""Contract: bodies and mailboxes: delivery, streamed reading, UIDs, deletion, expiry and usage
(digest §3.2; KOM-LE-A_2151/2152 for UIDL)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import CHUNK, account, address, body_for, drain, put, read

from kim_appliance.store import (
    AccountNotFound,
    BlobUnavailable,
    MessageNotFound,
    Store,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
Opener = Callable[[], AbstractAsyncContextManager[Store]]


async def test_deliver_to_several_mailboxes_with_own_prefixes(store: Store) -> None:
    body = body_for("one", 300_000)
    prefixes = {"alice": b"Received: for alice\r\n", "bob": b"Received: for bob, longer\r\n"}
    blob, msgs = await put(store, body, [(address(k), v) for k, v in prefixes.items()])
    assert blob.size == len(body)
    assert [m.mailbox for m in msgs] == [address("alice"), address("bob")]
    for msg, prefix in zip(msgs, prefixes.values(), strict=True):
        assert msg.size == len(prefix) + len(body)
        assert await read(store, msg.id) == prefix + body
        assert await store.mail.get(msg.id) == msg


async def test_a_large_body_streams_in_and_out_in_small_pieces(store: Store) -> None:
    """A 5 MB body goes in 64 KiB writes and comes back in odd-sized reads, byte for byte."""
    body = body_for("stream", 5 * 1024 * 1024 + 3)
    _, [msg] = await put(store, body, [(address("alice"), b"Return-Path: <a@b>\r\n")])
    async with store.mail.reader(msg.id) as reader:
        got = await drain(reader, 4093)
    assert got == b"Return-Path: <a@b>\r\n" + body


async def test_empty_body(store: Store) -> None:
    _, [msg] = await put(store, b"", [(address("alice"), b"P\r\n")])
    assert await read(store, msg.id) == b"P\r\n"
    assert msg.size == 3


async def test_list_is_oldest_first_and_per_mailbox(store: Store) -> None:
    ids = []
    for i in range(3):
        _, [msg] = await put(store, body_for(str(i), 100), [(address("alice"), b"")])
        ids.append(msg.id)
    await put(store, b"other", [(address("bob"), b"")])
    assert [m.id for m in await store.mail.list(address("ALICE"))] == ids
    with pytest.raises(AccountNotFound):
        await store.mail.list(address("nobody"))


async def test_uids_unique_and_never_reused(store: Store) -> None:
    """KOM-LE-A_2151 (UIDL): deleting the newest message does not free its UID."""
    msgs = []
    for i in range(3):
        msgs += (await put(store, body_for(str(i), 50), [(address("alice"), b"")]))[1]
    uids = {m.uid for m in msgs}
    assert len(uids) == 3
    await store.mail.delete(address("alice"), [msgs[-1].id])
    _, [again] = await put(store, b"new", [(address("alice"), b"")])
    assert again.uid not in uids
    assert all(0x21 <= c <= 0x7E for c in again.uid.encode())
    assert len(again.uid) <= 70


async def test_uids_and_bodies_survive_a_reopen(opener: Opener) -> None:
    """KOM-LE-A_2151: the UID of a message is the same after a restart; none is reused."""
    async with opener() as s:
        await s.accounts.create(account("alice"))
        _, [msg] = await put(s, b"x", [(address("alice"), b"")])
        await s.mail.delete(address("alice"), [msg.id])
        _, [kept] = await put(s, b"y", [(address("alice"), b"P:")])
    async with opener() as s:
        assert [m.uid for m in await s.mail.list(address("alice"))] == [kept.uid]
        assert await read(s, kept.id) == b"P:y"
        _, [new] = await put(s, b"z", [(address("alice"), b"")])
        assert new.uid not in {msg.uid, kept.uid}


async def test_a_body_stays_until_its_last_message_goes(store: Store) -> None:
    _, [m1, m2] = await put(store, b"shared", [(address("alice"), b"a"), (address("bob"), b"b")])
    await store.mail.delete(address("alice"), [m1.id])
    assert await read(store, m2.id) == b"bshared"
    with pytest.raises(MessageNotFound):
        await read(store, m1.id)
    assert await store.mail.get(m1.id) is None
    await store.mail.delete(address("bob"), [m2.id])
    with pytest.raises(MessageNotFound):
        await read(store, m2.id)


async def test_delete_ignores_ids_of_other_mailboxes(store: Store) -> None:
    _, [bobs] = await put(store, b"for bob", [(address("bob"), b"")])
    await store.mail.delete(address("alice"), [bobs.id, 99999])
    assert await read(store, bobs.id) == b"for bob"


async def test_usage_counts_prefix_and_body(store: Store) -> None:
    """Quota accounting in bytes (digest §3.2)."""
    assert await store.mail.usage(address("alice"), T0) == 0
    await put(store, b"x" * 1000, [(address("alice"), b"12345"), (address("bob"), b"1")])
    await put(store, b"y" * 10, [(address("alice"), b"")])
    assert await store.mail.usage(address("Alice"), T0) == 1005 + 10
    assert await store.mail.usage(address("bob"), T0) == 1001
    with pytest.raises(AccountNotFound):
        await store.mail.usage(address("nobody"), T0)


async def test_expire_removes_only_old_messages(store: Store) -> None:
    """dataTimeToLive, default 90 days (digest §3.2)."""
    await store.accounts.update(address("bob"), data_ttl_days=10)
    _, old = await put(store, b"old", [(address("alice"), b""), (address("bob"), b"")], now=T0)
    _, new = await put(store, b"new", [(address("alice"), b"")], now=T0 + timedelta(days=50))
    assert old[0].expires_at == T0 + timedelta(days=90)
    assert old[1].expires_at == T0 + timedelta(days=10)
    assert await store.mail.expire(T0 + timedelta(days=9)) == 0
    assert await store.mail.expire(T0 + timedelta(days=10)) == 1  # bob's
    assert await store.mail.list(address("bob")) == []
    assert await read(store, old[0].id) == b"old"
    assert await store.mail.expire(T0 + timedelta(days=100)) == 1
    assert [m.id for m in await store.mail.list(address("alice"))] == [new[0].id]


async def test_unknown_mailbox_delivers_nothing(store: Store) -> None:
    async with store.blobs.writer() as w:
        await w.write(b"body")
        blob = await w.commit()
        with pytest.raises(AccountNotFound, match="nobody"):
            await store.mail.deliver(
                blob, [(address("alice"), b""), (address("nobody"), b"")], T0, check_quota=False
            )
    assert await store.mail.list(address("alice")) == []


async def test_a_released_blob_cannot_be_delivered_or_read(store: Store) -> None:
    """Leaving the writer's block releases a blob nothing references (a refused delivery)."""
    async with store.blobs.writer() as w:
        await w.write(b"x")
        blob = await w.commit()
    with pytest.raises(BlobUnavailable, match=blob.name):
        await store.mail.deliver(blob, [(address("alice"), b"")], T0, check_quota=False)
    with pytest.raises(BlobUnavailable):
        async with store.blobs.reader(blob) as reader:
            await reader.read(10)


async def test_a_writer_left_without_commit_leaves_nothing(store: Store) -> None:
    writer = store.blobs.writer()

    async def fail_midway() -> None:
        async with writer:
            await writer.write(b"half")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="went away"):
        await fail_midway()
    with pytest.raises(ValueError, match="after commit or abort"):
        await writer.write(b"more")


async def test_a_committed_blob_reads_back_until_released(store: Store) -> None:
    body = body_for("blob", 3 * CHUNK + 5)
    async with store.blobs.writer() as w:
        for i in range(0, len(body), 1000):
            await w.write(body[i : i + 1000])
        assert w.size == len(body)
        blob = await w.commit()
        async with store.blobs.reader(blob) as reader:
            assert await drain(reader, 777) == body
    space = await store.blobs.space()
    assert space is None or space > 0


async def test_duplicate_mailbox_in_one_delivery_is_refused(store: Store) -> None:
    async with store.blobs.writer() as w:
        await w.write(b"x")
        blob = await w.commit()
        with pytest.raises(ValueError, match="twice"):
            await store.mail.deliver(
                blob, [(address("alice"), b""), (address("ALICE"), b"")], T0, check_quota=False
            )


async def test_deliver_with_a_relay_id_stores_each_mailbox_once(store: Store) -> None:
    """The receiving side of exactly-once relay (issue 11): a second delivery with the same
    relay id stores nothing for the mailboxes that have it, and still delivers to a mailbox
    that did not get it the first time; another relay id is a new message."""
    rid = "<" + "ab" * 16 + "@fd1.kim.telematik-test>"
    _, first = await put(store, b"relayed", [(address("alice"), b"P:")], relay_id=rid)
    assert [m.mailbox for m in first] == [address("alice")]
    both = [(address("alice"), b"P:"), (address("bob"), b"P:")]
    _, repeat = await put(store, b"relayed", both, relay_id=rid)
    assert [m.mailbox for m in repeat] == [address("bob")]
    _, nothing = await put(store, b"relayed", [(address("ALICE"), b"P:")], relay_id=rid)
    assert nothing == []
    assert len(await store.mail.list(address("alice"))) == 1
    assert len(await store.mail.list(address("bob"))) == 1
    other = rid.replace("ab", "cd")
    assert len((await put(store, b"relayed", [(address("alice"), b"P:")], relay_id=other))[1]) == 1


async def test_expire_forgets_relay_ids_long_after_senders_retry(store: Store) -> None:
    """Relay ids are kept far longer than a sender retries (relay_give_up_seconds, 2 days):
    still known after a week, forgotten after a year."""
    rid = "<" + "ef" * 16 + "@fd1.kim.telematik-test>"
    await put(store, b"old", [(address("carol"), b"P:")], now=T0, relay_id=rid)
    await store.mail.expire(T0 + timedelta(days=7))
    assert (await put(store, b"old", [(address("carol"), b"P:")], relay_id=rid))[1] == []
    await store.mail.expire(T0 + timedelta(days=365))
    assert len((await put(store, b"old", [(address("carol"), b"P:")], relay_id=rid))[1]) == 1
